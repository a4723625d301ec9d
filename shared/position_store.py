"""What the manager remembers about each open position, in Redis (the broker cannot tell us these).

- `Keys.position_state(symbol)`: the exits' `PositionState` as JSON (entry price, first fill time,
  high-water mark, armed soft exits), read and advanced by the soft-exit tick.
- `<ns>:protection:<symbol>`: the manager's own record of the protective orders it placed for the
  position (their client order ids, so a closing fill can be found and written to the ledger), the
  revision counter that makes each new protective set's client order id unique, and the entry's
  client order id when a fill event told us.

When the position is gone (`clear`) its state is deleted, and its protection record is emptied but
kept: no order ids, only the revision counter, so a position reopened later never reuses a client
order id (the broker refuses a reused one, and the new position would stay unprotected).
`redis-cli GET fl:position:AAPL` and `redis-cli GET fl:protection:AAPL` show them.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from pydantic import Field, ValidationError

from shared.bus import Keys
from shared.exits import PositionState
from shared.models import Model


class ProtectionRecord(Model):
    """The manager's bookkeeping for one position's protective orders."""

    schema_version: int = 1
    symbol: str
    #: Client order ids of protective orders placed and not yet seen closed (oldest first).
    client_order_ids: list[str] = Field(default_factory=list)
    #: The last revision used in a protective client order id for this symbol.
    revision: int = 0
    entry_client_order_id: str | None = None




def load_state(client: redis.Redis, keys: Keys, symbol: str) -> PositionState | None:
    """The position's state, or None when absent. A record we cannot read is treated as absent (the
    reconcile then adopts the position from the broker's figures) rather than blocking protection."""
    raw = client.get(keys.position_state(symbol))
    if raw is None:
        return None
    try:
        return PositionState.from_json(raw)
    except ValidationError:
        return None


def load_record(client: redis.Redis, keys: Keys, symbol: str) -> ProtectionRecord:
    raw = client.get(keys.protection(symbol))
    if raw is not None:
        try:
            return ProtectionRecord.model_validate_json(raw)
        except ValidationError:
            pass
    return ProtectionRecord(symbol=symbol)


def load_many(client: redis.Redis, keys: Keys, symbols: list[str]) -> dict[str, tuple[ProtectionRecord, bool]]:
    """Each symbol's protection record and whether it has a position state, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.get(keys.protection(symbol))
        pipe.exists(keys.position_state(symbol))
    replies = pipe.execute()
    result = {}
    for i, symbol in enumerate(symbols):
        raw, has_state = replies[2 * i], replies[2 * i + 1]
        record = ProtectionRecord(symbol=symbol)
        if raw is not None:
            try:
                record = ProtectionRecord.model_validate_json(raw)
            except ValidationError:
                pass
        result[symbol] = (record, bool(has_state))
    return result


def save(client: redis.Redis, keys: Keys, state: PositionState | None, record: ProtectionRecord) -> None:
    save_many(client, keys, [(state, record)])


def save_many(client: redis.Redis, keys: Keys,
              items: list[tuple[PositionState | None, ProtectionRecord]]) -> None:
    """Write states (None: leave as is) and records in one atomic round trip."""
    pipe = client.pipeline(transaction=True)
    for state, record in items:
        if state is not None:
            pipe.set(keys.position_state(record.symbol), state.to_json())
        pipe.set(keys.protection(record.symbol), record.model_dump_json())
    pipe.execute()


def clear(client: redis.Redis, keys: Keys, symbol: str) -> None:
    """Forget the position. The revision counter survives in a small key of its own, so a position
    reopened later never reuses a client order id (Alpaca keeps them unique forever)."""
    record = load_record(client, keys, symbol)
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.position_state(symbol))
    pipe.set(keys.protection(symbol), ProtectionRecord(symbol=symbol, revision=record.revision).model_dump_json())
    pipe.execute()


def tracked_symbols(client: redis.Redis, keys: Keys) -> Iterator[str]:
    """Symbols we hold state or open protective bookkeeping for (positions may have closed while the
    manager was down: reconcile-all must still look at them)."""
    seen: set[str] = set()
    prefix = keys.position_state("")
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        symbol = key[len(prefix):]
        if symbol and symbol not in seen:
            seen.add(symbol)
            yield symbol
    prefix = keys.protection("")
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        symbol = key[len(prefix):]
        if symbol and symbol not in seen and load_record(client, keys, symbol).client_order_ids:
            seen.add(symbol)
            yield symbol
