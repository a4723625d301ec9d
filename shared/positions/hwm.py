"""High-water marks for the soft-exit tick: read, raise from minute bars, save, and rebuild when lost.

- `load_states` reads every open position's `PositionState` in one Redis round trip (the same key
  and JSON as `shared.position_store.load_state`; an unreadable record counts as lost).
- `highs_since` turns one batched minute-bar answer into "the highest price each symbol traded at
  since its state was last advanced", so a spike between two ticks raises the mark.
- `save_advanced` writes an advanced state only if nobody changed the stored one meanwhile (compare
  and set in Lua): a fill that changed the average entry while the tick was deciding must not be
  overwritten with the tick's older view. The tick re-reads and re-advances the few that lost.
- `rebuild` recreates lost states from the broker alone: the first fill from the order history, the
  high-water mark from the minute bars since that fill. Two requests for all lost symbols together.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import redis
from pydantic import ValidationError

from shared import logs
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.exits import ExitRules, PositionState, advance_state
from shared.models import AnyBar, Order, Position, Side, Timeframe
from shared.money import ZERO
from shared.ownership import is_our_entry

log = logging.getLogger(__name__)

#: How far back the order history is searched for a lost position's first fill. Beyond the time
#: stop: a position held longer than that is sold by the time stop whatever its exact age.
HISTORY_LOOKBACK_EXTRA = timedelta(days=7)
#: The earliest a tick asks bars from, however old a state's last update (a weekend plus a holiday).
MAX_BAR_LOOKBACK = timedelta(days=4)

_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
    if current then return 0 end
elseif current ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredState:
    """A state as read from Redis, with the exact bytes read (the compare in compare-and-set)."""

    state: PositionState | None
    raw: str | None


def minute_floor(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def load_states(client: redis.Redis, keys: Keys, symbols: Iterable[str]) -> dict[str, StoredState]:
    symbols = list(symbols)
    if not symbols:
        return {}
    raws = client.mget([keys.position_state(s) for s in symbols])
    result = {}
    for symbol, raw in zip(symbols, raws, strict=True):
        state = None
        if raw is not None:
            try:
                state = PositionState.from_json(raw)
            except ValidationError:
                state = None
        result[symbol] = StoredState(state, raw)
    return result


def save_advanced(client: redis.Redis, keys: Keys, updates: Mapping[str, tuple[str | None, PositionState]]) -> set[str]:
    """Write each symbol's new state if the stored bytes are still `old_raw` (None: still absent).
    Returns the symbols whose write lost a race (someone changed or cleared the state meanwhile)."""
    if not updates:
        return set()
    pipe = client.pipeline(transaction=False)
    symbols = list(updates)
    for symbol in symbols:
        old_raw, state = updates[symbol]
        pipe.eval(_COMPARE_AND_SET, 1, keys.position_state(symbol), old_raw or "", state.to_json())
    return {s for s, ok in zip(symbols, pipe.execute(), strict=True) if not ok}


def bars_start(states: Iterable[PositionState], now: datetime) -> datetime:
    """Where the tick's one bar request starts: the oldest last update, floored to its minute (the
    bar of that minute was not complete then), but never more than MAX_BAR_LOOKBACK ago."""
    oldest = min((s.updated_at for s in states), default=now)
    return max(minute_floor(oldest), now - MAX_BAR_LOOKBACK)


def highs_since(bars: Mapping[str, Sequence[AnyBar]], since: Mapping[str, datetime]) -> dict[str, Decimal]:
    """Each symbol's highest minute-bar high in bars starting at or after its own `since`."""
    highs: dict[str, Decimal] = {}
    for symbol, start in since.items():
        seen = [bar.h for bar in bars.get(symbol, ()) if bar.t >= start and bar.h > ZERO]
        if seen:
            highs[symbol] = max(seen)
    return highs


def first_fill_times(orders: Iterable[Order], symbols: Iterable[str]) -> dict[str, datetime]:
    """The first buy fill of each symbol's current position, from the broker's order history.

    Fills are walked in time order keeping a running quantity; a sell that takes it to zero (or
    below: the history window started mid-position) ends a holding, and the next buy starts one.
    """
    wanted = set(symbols)
    fills: dict[str, list[tuple[datetime, Side, Decimal]]] = {}
    for parent in orders:
        for order in parent.all_orders():
            if order.symbol in wanted and order.filled_qty > ZERO and order.filled_at is not None:
                fills.setdefault(order.symbol, []).append((order.filled_at, order.side, order.filled_qty))
    first: dict[str, datetime] = {}
    for symbol, events in fills.items():
        running, start = ZERO, None
        for when, side, qty in sorted(events, key=lambda e: e[0]):
            if side is Side.BUY:
                if running <= ZERO:
                    start = when
                running += qty
            else:
                running -= qty
                if running <= ZERO:
                    running, start = ZERO, None
        if start is not None:
            first[symbol] = start
    return first


def entered_by_the_line(history: Iterable[Order], first_fills: Mapping[str, datetime], namespace: str) -> set[str]:
    """Symbols whose current holding (bought since its first fill) includes one of the line's entries."""
    found = set()
    for parent in history:
        for order in parent.all_orders():
            start = first_fills.get(order.symbol)
            if (order.side is Side.BUY and order.filled_qty > ZERO and order.filled_at is not None
                    and (start is None or order.filled_at >= start)
                    and is_our_entry(order.client_order_id, order.symbol, namespace)):
                found.add(order.symbol)
    return found


def rebuild(
    executor: OrderExecutor,
    positions: Mapping[str, Position],
    prices: Mapping[str, Decimal],
    now: datetime,
    rules: ExitRules,
    *,
    namespace: str,
) -> dict[str, PositionState]:
    """States for positions whose state was lost: entry and quantity from the broker's position,
    first fill from its order history, high-water mark and armed flags from the minute bars since.

    Only positions one of the line's entries bought are rebuilt: any other is not the line's, and
    the manager's reconcile adopts it under FL_FOREIGN_POSITIONS (no soft exits, ever). A first fill
    older than the history searched (or not found) is taken as the start of the window: the time
    stop then fires as it would have, and the bars cover the whole window.
    """
    if not positions:
        return {}
    window_start = now - rules.time_stop - HISTORY_LOOKBACK_EXTRA
    history = executor.get_orders_updated_since(window_start)
    first = first_fill_times(history, positions)
    ours = entered_by_the_line(history, first, namespace)
    for symbol in sorted(set(positions) - ours):
        logs.event(log, "position_state_not_rebuilt", level=logging.WARNING, symbol=symbol,
                   reason="no entry of the line in the order history: left to the reconcile's adoption")
    positions = {s: p for s, p in positions.items() if s in ours}
    if not positions:
        return {}
    since = {s: first.get(s, window_start) for s in positions}
    # Only bars that started at or after the first fill: the fill's own minute may have traded
    # higher before we owned the shares, and must not arm an exit.
    bar_since = {s: t if t == minute_floor(t) else minute_floor(t) + timedelta(minutes=1) for s, t in since.items()}
    bars = executor.get_bar_rows(list(positions), Timeframe.MINUTE, min(bar_since.values()), now)
    highs = highs_since(bars, bar_since)
    rebuilt = {}
    for symbol, position in positions.items():
        state = PositionState.at_entry(symbol, position.avg_entry_price, position.qty, since[symbol])
        price = prices.get(symbol) or position.avg_entry_price
        rebuilt[symbol] = advance_state(state, high_since_last=highs.get(symbol), price=price, now=now, rules=rules)
        logs.event(log, "position_state_rebuilt", level=logging.WARNING, symbol=symbol,
                   first_fill_at=since[symbol].isoformat(), found_first_fill=symbol in first,
                   high_water_mark=rebuilt[symbol].high_water_mark,
                   breakeven_armed=rebuilt[symbol].breakeven_armed, trailing_armed=rebuilt[symbol].trailing_armed)
    return rebuilt
