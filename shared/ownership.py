"""Which orders and positions belong to the line: the only ones it may cancel, replace or sell.

An order is the line's when its client order id is one the line makes (`shared.client_ids`):
`<namespace tag>-<YYYYMMDD>-...` (or the hashed long form, which keeps the same beginning). Every
other order in the account (placed by hand, by the Alpaca dashboard, by another program, or by a
second deployment under another FL_NAMESPACE) is the user's: listed by `factoryline status`, never
cancelled or replaced, and the shares it holds are left to it.

A position is the line's when one of its entry orders bought it; any other long position is
"foreign" and follows FL_FOREIGN_POSITIONS (docs/operations.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

from shared.client_ids import ENTRY, namespace_tag
from shared.models import Order


class ForeignPolicy(StrEnum):
    """What the manager does with a long position the line did not enter (FL_FOREIGN_POSITIONS)."""

    #: A stop below the current price (never an immediate sale), no target, no soft exits.
    PROTECT = "protect"
    #: Leave the position and every order of it alone; `status` lists it as the user's.
    IGNORE = "ignore"


def _pattern(namespace: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(namespace_tag(namespace))}-\d{{8}}-")


_PATTERNS: dict[str, re.Pattern[str]] = {}


def is_ours(client_order_id: str | None, namespace: str) -> bool:
    """True when the line made this client order id under `namespace`."""
    if not client_order_id:
        return False
    pattern = _PATTERNS.get(namespace)
    if pattern is None:
        pattern = _PATTERNS[namespace] = _pattern(namespace)
    return pattern.match(client_order_id) is not None


def is_our_entry(client_order_id: str | None, symbol: str, namespace: str) -> bool:
    """True for one of the line's entry orders of `symbol` (the entry and its whole-share retry)."""
    return is_ours(client_order_id, namespace) and f"-{symbol}-{ENTRY}" in (client_order_id or "")


def split_by_owner(orders: Iterable[Order], namespace: str) -> tuple[list[Order], list[Order]]:
    """(the line's orders, the user's orders), each in the order given."""
    ours: list[Order] = []
    theirs: list[Order] = []
    for order in orders:
        (ours if is_ours(order.client_order_id, namespace) else theirs).append(order)
    return ours, theirs
