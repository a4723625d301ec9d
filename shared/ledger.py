"""Closed trades: the ledger in Redis, written once per closing order; read by the reporter, the
scanner (black sheep) and `factoryline status`.

`Keys.ledger` is a stream (`redis-cli XRANGE fl:ledger - +`) whose entries carry `closing_order_id`,
`symbol` and `trade` (a `ClosedTrade` as JSON). A set beside it (`<ledger>:order-ids`) holds every
closing order id already written; the check and the append run in one Lua script, so a redelivered
fill, a restart or two manager replicas can never write the same exit twice.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import redis
from pydantic import ValidationError

from shared import bus, logs
from shared.bus import Keys
from shared.exits import ExitReason
from shared.models import AwareDatetime, Model

log = logging.getLogger(__name__)

LEDGER_SCHEMA_VERSION = 1

_APPEND_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
    return false
end
return redis.call('XADD', KEYS[1], '*', 'closing_order_id', ARGV[1], 'symbol', ARGV[2], 'trade', ARGV[3])
"""


class ClosedTrade(Model):
    """One exit: `qty` shares bought at `entry_price` (the position's average) sold at `exit_price`."""

    schema_version: int = LEDGER_SCHEMA_VERSION
    symbol: str
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pl: Decimal
    exit_reason: ExitReason
    opened_at: AwareDatetime
    closed_at: AwareDatetime
    #: The broker's id of the order that sold (an OCO's filled leg, a stop, a market sell).
    closing_order_id: str
    closing_client_order_id: str
    #: The client order id of the protective set the closing order belongs to, if it was one.
    protective_client_order_id: str | None = None
    entry_client_order_id: str | None = None

    @classmethod
    def of(cls, *, symbol: str, qty: Decimal, entry_price: Decimal, exit_price: Decimal, **fields) -> ClosedTrade:
        """A closed trade with its realized P/L computed: (exit - entry) x qty, in Decimal."""
        return cls(symbol=symbol, qty=qty, entry_price=entry_price, exit_price=exit_price,
                   realized_pl=(exit_price - entry_price) * qty, **fields)


def order_ids_key(keys: Keys) -> str:
    return f"{keys.ledger}:order-ids"


def append_once(client: redis.Redis, keys: Keys, trade: ClosedTrade) -> bool:
    """Append the trade unless its closing order is already in the ledger. True when written."""
    entry_id = client.eval(_APPEND_ONCE, 2, keys.ledger, order_ids_key(keys), trade.closing_order_id, trade.symbol,
                           trade.model_dump_json())
    return bool(entry_id)


def is_recorded(client: redis.Redis, keys: Keys, closing_order_id: str) -> bool:
    return bool(client.sismember(order_ids_key(keys), closing_order_id))


def read(client: redis.Redis, keys: Keys, *, symbol: str | None = None) -> list[ClosedTrade]:
    """Every closed trade, oldest first (entries that fail validation are skipped, not fatal)."""
    trades = []
    for _entry_id, fields in client.xrange(keys.ledger, "-", "+"):
        if symbol is not None and fields.get("symbol") != symbol:
            continue
        try:
            trades.append(ClosedTrade.model_validate_json(fields["trade"]))
        except (KeyError, ValidationError):
            continue
    return trades


def announce(client: redis.Redis, keys: Keys, trade: ClosedTrade) -> None:
    """Tell operators and watchers a position closed: one structured log line and a notification."""
    logs.event(log, "position_closed", symbol=trade.symbol, client_order_id=trade.closing_client_order_id,
               exit_reason=trade.exit_reason.value, qty=trade.qty, entry_price=trade.entry_price,
               exit_price=trade.exit_price, realized_pl=trade.realized_pl)
    bus.publish(client, keys, "position_closed", symbol=trade.symbol, exit_reason=trade.exit_reason.value,
                qty=trade.qty, entry_price=trade.entry_price, exit_price=trade.exit_price,
                realized_pl=trade.realized_pl, client_order_id=trade.closing_client_order_id)
