"""Deterministic client order ids: the same intent always gets the same id, so a retried, restarted or
duplicated run can ask the broker "did I already send this?" and the broker itself refuses a second
order with the id (Alpaca keeps client order ids unique for the life of the account).

Scheme: `<namespace tag>-<YYYYMMDD>-<SYMBOL>-<kind>[-<part>...]`, at most 48 characters, only
`[A-Za-z0-9._-]`:

    fl-20261124-AAPL-entry          the day's entry for a signal
    fl-20261124-AAPL-entry-whole    its whole-share retry after a "not fractionable" refusal
    fl-20261124-AAPL-stop-r2        (manager) a protective order, revision 2

- The namespace tag is FL_NAMESPACE when it has at most 16 characters, otherwise its first 9
  characters, a dot and 6 hex digits of its hash: two deployments trading one account never claim
  each other's ids.
- The date is the New York date of the session the order is meant for.
- Anything outside the allowed characters, or an id longer than 48 characters, is replaced by a
  deterministic form ending in `-h<8 hex digits of the full id's hash>`, so distinct intents stay
  distinct and the length limit always holds.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date

from shared.broker.contract import MAX_CLIENT_ORDER_ID_LEN

DEFAULT_NAMESPACE = "fl"
#: 16 keeps the longest entry id (10-character ticker, `-entry-whole`) within 48 characters.
MAX_NAMESPACE_TAG_LEN = 16
ENTRY = "entry"
WHOLE_SHARE_RETRY = "whole"

_ALLOWED = re.compile(r"^[A-Za-z0-9._-]+$")
_DISALLOWED_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_HASH_SUFFIX_LEN = 10  # "-h" + 8 hex digits


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def namespace_tag(namespace: str) -> str:
    """The namespace as it appears in ids: itself when short, else a short prefix plus a hash."""
    if len(namespace) <= MAX_NAMESPACE_TAG_LEN and _ALLOWED.match(namespace):
        return namespace
    prefix = _DISALLOWED_CHAR.sub("_", namespace[:9]).rstrip("-.")
    return f"{prefix}.{_digest(namespace, 6)}"


def make_client_order_id(
    kind: str,
    symbol: str,
    *parts: object,
    day: date | None = None,
    namespace: str = DEFAULT_NAMESPACE,
) -> str:
    """`<ns>[-YYYYMMDD]-<SYMBOL>-<kind>[-<part>...]`, deterministic, <= 48 characters, safe characters.

    Other services reuse this for their own intents (protective stops, exits) with their own `kind`.
    """
    if not kind or not symbol:
        raise ValueError("a client order id needs a kind and a symbol")
    fields = [namespace_tag(namespace)]
    if day is not None:
        fields.append(day.strftime("%Y%m%d"))
    fields += [symbol, kind, *(str(part) for part in parts)]
    raw = "-".join(fields)
    if len(raw) <= MAX_CLIENT_ORDER_ID_LEN and _ALLOWED.match(raw):
        return raw
    # Hash the raw id so two intents that differ only in a replaced character or in the cut-off tail
    # still get different ids.
    keep = MAX_CLIENT_ORDER_ID_LEN - _HASH_SUFFIX_LEN
    return f"{_DISALLOWED_CHAR.sub('_', raw)[:keep]}-h{_digest(raw, 8)}"


def entry_id(day: date, symbol: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The one entry a signal may get on `day`."""
    return make_client_order_id(ENTRY, symbol, day=day, namespace=namespace)


def whole_share_entry_id(day: date, symbol: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The whole-share retry of that entry: its own id, because the refused notional order's id may
    not be reused (Alpaca keeps ids unique forever) and the retry must be just as findable."""
    return make_client_order_id(ENTRY, symbol, WHOLE_SHARE_RETRY, day=day, namespace=namespace)
