"""Closed trades: the ledger in Redis, written once per closing order; read by the reporter, the
scanner (black sheep) and `factoryline status`.

`Keys.ledger` is a stream (`redis-cli XRANGE fl:ledger - +`) whose entries carry `closing_order_id`
(the entry's primary closing order), `symbol` and `trade` (a `ClosedTrade` as JSON, with every closing
order id it covers in `closing_order_ids`). A set beside it (`<ledger>:order-ids`) holds every closing
order id already written; the check and the append run in one Lua script, so a redelivered fill, a
restart or two manager replicas can never write the same exit twice, nor a sell both on its own and
inside a merged entry.

One position close is one trade for a person: a 10.4-share position is protected by an OCO for the 10
whole shares and a day stop for the 0.4 remainder, and when the stop price is hit both fill and are
written as two entries. `read` returns the entries as written (one per closing order); `read_closes`
returns the ledger as a person reads it, with such parts merged into one trade (`merge_closes`,
`ClosedTrade.merge`). Everything that shows closed trades to a person reads `read_closes`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from decimal import Decimal, localcontext
from typing import Any

import redis
from pydantic import Field, ValidationError, model_validator

from shared import bus, logs
from shared.bus import Keys
from shared.exits import ExitReason
from shared.models import AwareDatetime, Model

log = logging.getLogger(__name__)

LEDGER_SCHEMA_VERSION = 1

#: Parts of one position's close written as separate entries are one trade when their closing times lie
#: within this much of each other (see `merge_closes`).
MERGE_WINDOW = timedelta(seconds=60)

# KEYS: the stream, the id set. ARGV: the primary closing order id, the symbol, the trade JSON, then
# every closing order id the trade covers. Nothing is written if any one of them is already recorded.
_APPEND_ONCE = """
for i = 4, #ARGV do
    if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 1 then
        return false
    end
end
for i = 4, #ARGV do
    redis.call('SADD', KEYS[2], ARGV[i])
end
return redis.call('XADD', KEYS[1], '*', 'closing_order_id', ARGV[1], 'symbol', ARGV[2], 'trade', ARGV[3])
"""


class ClosedTrade(Model):
    """One exit: `qty` shares bought at `entry_price` (the position's average) sold at `exit_price`.

    Written per closing order (`closing_order_id`); `merge` makes one trade of several parts of the
    same position's close, covering all their closing orders (`closing_order_ids`)."""

    schema_version: int = LEDGER_SCHEMA_VERSION
    symbol: str
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pl: Decimal
    exit_reason: ExitReason
    opened_at: AwareDatetime
    closed_at: AwareDatetime
    #: The broker's id of the order that sold (an OCO's filled leg, a stop, a market sell); for a merged
    #: trade, the primary part's.
    closing_order_id: str
    #: Every broker order id whose sells this trade covers, `closing_order_id` first (always included,
    #: also for entries written before the field existed).
    closing_order_ids: list[str] = Field(default_factory=list)
    closing_client_order_id: str
    #: The client order id of the protective set the closing order belongs to, if it was one.
    protective_client_order_id: str | None = None
    entry_client_order_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _primary_id_included(cls, data: Any) -> Any:
        """`closing_order_ids` = the primary id first, then the others once each, in their order."""
        if isinstance(data, dict) and isinstance(data.get("closing_order_id"), str):
            primary = data["closing_order_id"]
            ids = [primary]
            for order_id in data.get("closing_order_ids") or ():
                if order_id not in ids:
                    ids.append(order_id)
            data = {**data, "closing_order_ids": ids}
        return data

    @classmethod
    def of(cls, *, symbol: str, qty: Decimal, entry_price: Decimal, exit_price: Decimal, **fields) -> ClosedTrade:
        """A closed trade with its realized P/L computed: (exit - entry) x qty, in Decimal."""
        return cls(symbol=symbol, qty=qty, entry_price=entry_price, exit_price=exit_price,
                   realized_pl=(exit_price - entry_price) * qty, **fields)

    @classmethod
    def merge(cls, parts: Sequence[ClosedTrade]) -> ClosedTrade:
        """One trade of several parts of the same symbol's exit. The first part is the primary one: its
        `closing_order_id` and client order ids are kept. qty = the sum; entry and exit price = the
        qty-weighted averages (unrounded); realized P/L = the sum of the parts' (not recomputed);
        opened_at = the earliest, closed_at = the latest; exit reason = the parts' when they agree,
        else the largest part's (the first of equal ones); `closing_order_ids` = all of them."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to merge")
        if len({p.symbol for p in parts}) > 1:
            raise ValueError(f"cannot merge trades of different symbols: {sorted({p.symbol for p in parts})}")
        if len(parts) == 1:
            return parts[0]
        qty = sum((p.qty for p in parts), Decimal(0))
        if qty <= 0:
            raise ValueError(f"merged quantity must be positive, not {qty}")
        reasons = {p.exit_reason for p in parts}
        reason = parts[0].exit_reason if len(reasons) == 1 else max(parts, key=lambda p: p.qty).exit_reason
        ids: list[str] = []
        for part in parts:
            ids.extend(i for i in part.closing_order_ids if i not in ids)
        with localcontext() as ctx:
            ctx.prec = 50  # exact for any sum of a few fills; unrounded otherwise (e.g. a division by 3)
            entry = sum((p.entry_price * p.qty for p in parts), Decimal(0)) / qty
            exit_price = sum((p.exit_price * p.qty for p in parts), Decimal(0)) / qty
            realized = sum((p.realized_pl for p in parts), Decimal(0))
        primary = parts[0]
        return cls(
            schema_version=max(p.schema_version for p in parts), symbol=primary.symbol, qty=qty,
            entry_price=entry, exit_price=exit_price, realized_pl=realized, exit_reason=reason,
            opened_at=min(p.opened_at for p in parts), closed_at=max(p.closed_at for p in parts),
            closing_order_id=primary.closing_order_id, closing_order_ids=ids,
            closing_client_order_id=primary.closing_client_order_id,
            protective_client_order_id=primary.protective_client_order_id,
            entry_client_order_id=primary.entry_client_order_id,
        )




def append_once(client: redis.Redis, keys: Keys, trade: ClosedTrade) -> bool:
    """Append the trade unless one of its closing orders (`closing_order_ids`, all of them) is already in
    the ledger; then nothing is written. Atomic: the check, the ids and the entry go in one script.
    True when written."""
    entry_id = client.eval(_APPEND_ONCE, 2, keys.ledger, keys.ledger_order_ids, trade.closing_order_id, trade.symbol,
                           trade.model_dump_json(), *trade.closing_order_ids)
    return bool(entry_id)


def is_recorded(client: redis.Redis, keys: Keys, closing_order_id: str) -> bool:
    return bool(client.sismember(keys.ledger_order_ids, closing_order_id))


def read(client: redis.Redis, keys: Keys, *, symbol: str | None = None) -> list[ClosedTrade]:
    """Every ledger entry as written (one per closing order, or per merged trade), oldest first; entries
    that fail validation are skipped, not fatal. For what a person sees, `read_closes`."""
    trades = []
    for _entry_id, fields in client.xrange(keys.ledger, "-", "+"):
        if symbol is not None and fields.get("symbol") != symbol:
            continue
        try:
            trades.append(ClosedTrade.model_validate_json(fields["trade"]))
        except (KeyError, ValidationError):
            continue
    return trades


def read_closes(client: redis.Redis, keys: Keys, *, symbol: str | None = None) -> list[ClosedTrade]:
    """The ledger as a person reads it: one trade per position close (`merge_closes` over `read`)."""
    return merge_closes(read(client, keys, symbol=symbol))


def merge_closes(trades: Iterable[ClosedTrade], window: timedelta = MERGE_WINDOW) -> list[ClosedTrade]:
    """Merge the parts of one position's close into one trade each.

    Entries of the same position (same symbol and `opened_at`), taken in closing-time order, are one
    trade when they are consecutive, share the exit reason and all close within `window` of the first
    of them (a whole-share OCO leg and a fractional day stop hit by the same price, written separately).
    Two positions of the same symbol, or a stop-out and a later exit for another reason, stay apart.
    Parts are merged in ledger order (the first written is the primary); trades come out in the
    ledger order of their first part."""
    trades = list(trades)
    order = sorted(range(len(trades)), key=lambda i: (trades[i].symbol, trades[i].opened_at,
                                                      trades[i].closed_at, i))
    groups: list[list[int]] = []
    for i in order:
        trade = trades[i]
        if groups:
            first = trades[groups[-1][0]]  # the group's earliest close
            if (trade.symbol == first.symbol and trade.opened_at == first.opened_at
                    and trade.exit_reason is first.exit_reason and trade.closed_at - first.closed_at <= window):
                groups[-1].append(i)
                continue
        groups.append([i])
    groups.sort(key=min)
    return [ClosedTrade.merge([trades[i] for i in sorted(group)]) for group in groups]


def announce(client: redis.Redis, keys: Keys, trade: ClosedTrade) -> None:
    """Tell operators and watchers a position closed: one structured log line and a notification."""
    logs.event(log, "position_closed", symbol=trade.symbol, client_order_id=trade.closing_client_order_id,
               exit_reason=trade.exit_reason.value, qty=trade.qty, entry_price=trade.entry_price,
               exit_price=trade.exit_price, realized_pl=trade.realized_pl)
    bus.publish(client, keys, "position_closed", symbol=trade.symbol, exit_reason=trade.exit_reason.value,
                qty=trade.qty, entry_price=trade.entry_price, exit_price=trade.exit_price,
                realized_pl=trade.realized_pl, client_order_id=trade.closing_client_order_id,
                at=trade.closed_at.isoformat())
