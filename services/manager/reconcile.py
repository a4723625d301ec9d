"""The manager's protective reconcile: make the broker hold exactly the protection each position needs.

Reads: the broker's position and open orders of the symbol (after taking the symbol's lock), the
position's state and protection record in Redis.
Decides: `shared.protection` (pure) says which sell orders the position should have and what to
cancel, keep and place; closed protective orders that sold shares become ledger entries.
Writes: cancels, then (once the broker confirms the shares are released) new protective orders;
the ledger; the position's state; WARNING logs and notifications for every fix.

A fill event, the manager's start, its timer and `factoryline reconcile` all run this same code, so
a duplicate, a missed event or a crash all converge to one protective set per symbol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import redis

from services.manager import locks
from shared import bus, ledger, logs
from shared import position_store as store
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.client_ids import make_client_order_id
from shared.errors import (
    BrokerError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    MarketClosed,
    NotCancelable,
    NotFound,
    WashTrade,
)
from shared.exits import ExitReason, ExitRules, PositionState
from shared.ledger import ClosedTrade
from shared.models import Order, OrderType, Position, Side, TradeEventType, TradeUpdate
from shared.money import ZERO
from shared.protection import DesiredOrder, ProtectionKind, desired_protection, reconcile

log = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")

#: Why a reconcile runs; anything but FILL means the manager found the broker out of line with the
#: desired state, so each change it makes is a fix and is reported loudly.
FILL = "fill"
START = "start"
TIMER = "timer"
MANUAL = "manual"

#: Read, cancel and confirm rounds before giving up on a symbol for now (each round re-reads the
#: broker, so a cancel that lost a race against a fill is seen as the fill it became).
MAX_ROUNDS = 4
#: From this many symbols on, one listing of positions and one of open orders replace the per-symbol
#: reads (fewer requests against Alpaca's 200 a minute; a listing costs about as much as 15 small reads).
LISTING_MIN_SYMBOLS = 16
RELEASE_TIMEOUT_SECONDS = 10.0
MAX_ID_ATTEMPTS = 3


@dataclass
class SymbolReport:
    """What one reconcile of one symbol saw and did."""

    symbol: str
    reason: str
    position_qty: Decimal = ZERO
    kept: list[str] = field(default_factory=list)
    placed: list[Order] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    closed: list[ClosedTrade] = field(default_factory=list)
    adopted: bool = False
    deferred: list[str] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def changed(self) -> bool:
        return bool(self.placed or self.canceled or self.closed or self.adopted)

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.symbol}: FAILED {type(self.error).__name__}: {self.error}"
        parts = [f"{self.symbol}: position {self.position_qty}"]
        if self.adopted:
            parts.append("adopted")
        if self.canceled:
            parts.append(f"canceled {len(self.canceled)}")
        parts += [f"placed {o.order_class.value} {o.qty} (stop {_stop_of(o)}"
                  f"{f', target {o.limit_price}' if o.type is OrderType.LIMIT else ''}) {o.client_order_id}"
                  for o in self.placed]
        if self.kept:
            parts.append(f"kept {len(self.kept)} protective order(s)")
        parts += [f"closed {t.qty} {t.exit_reason.value} at {t.exit_price} (P/L {t.realized_pl})" for t in self.closed]
        parts += [f"deferred: {d}" for d in self.deferred]
        if len(parts) == 1:
            parts.append("nothing to do")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Hint:
    """What the trade events that triggered the reconcile tell us beyond the broker's state."""

    first_fill_at: datetime | None = None
    entry_client_order_id: str | None = None


# -- public entry points ----------------------------------------------------------------------------


def reconcile_symbol(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    symbol: str,
    rules: ExitRules,
    reason: str,
    *,
    updates: Iterable[TradeUpdate] = (),
    lock_wait_seconds: float = locks.WAIT_SECONDS,
) -> SymbolReport:
    """Reconcile one symbol under its lock (waiting for it). Errors are returned in the report."""
    try:
        with locks.symbol_lock(client, keys, symbol, wait_seconds=lock_wait_seconds):
            return _reconcile_held(executor, client, keys, [symbol], rules, reason, list(updates), None)[symbol]
    except Exception as exc:  # noqa: BLE001 - reported per symbol; the caller decides (retry, print)
        return _failed(symbol, reason, exc)


def reconcile_symbols(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    symbols: Iterable[str],
    rules: ExitRules,
    reason: str,
    *,
    updates: Iterable[TradeUpdate] = (),
    pool: ThreadPoolExecutor | None = None,
    lock_wait_seconds: float = locks.WAIT_SECONDS,
) -> dict[str, SymbolReport]:
    """Reconcile many symbols at once (a burst of fills at the open, reconcile-all).

    The free locks are taken in one round trip; symbols another process holds are done one by one
    once it lets go (it may have read the broker before our fill). Broker calls of different symbols
    overlap in `pool`."""
    wanted = list(dict.fromkeys(s for s in symbols if s))
    updates = list(updates)
    run = pool.map if pool is not None else map
    tokens = locks.try_acquire_many(client, keys, wanted)
    reports: dict[str, SymbolReport] = {}
    try:
        if tokens:
            reports.update(_reconcile_held(executor, client, keys, list(tokens), rules, reason, updates, pool))
    finally:
        lost = locks.release_many(client, keys, tokens)
        if lost:
            logs.event(log, "symbol_lock_lost", level=logging.WARNING, symbols=",".join(lost))
    busy = [s for s in wanted if s not in tokens]
    reports.update(zip(busy, run(lambda s: reconcile_symbol(executor, client, keys, s, rules, reason,
                                                            updates=updates, lock_wait_seconds=lock_wait_seconds),
                                 busy), strict=True))
    return {s: reports[s] for s in wanted}


def _reconcile_held(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    symbols: list[str],
    rules: ExitRules,
    reason: str,
    updates: list[TradeUpdate],
    pool: ThreadPoolExecutor | None,
) -> dict[str, SymbolReport]:
    """Symbols whose locks we hold: new positions straight from their fills, the rest after reading the
    broker (one listing each of positions and open orders for many symbols, small reads for a few)."""
    run = pool.map if pool is not None else map
    reports: dict[str, SymbolReport] = {}
    if reason == FILL:
        try:
            reports.update(_first_protections(executor, client, keys, symbols, rules, updates, pool))
        except Exception as exc:  # noqa: BLE001 - the full reconcile below covers every symbol
            logs.event(log, "first_protection_failed", level=logging.WARNING, error=type(exc).__name__,
                       reason=str(exc))
    rest = [s for s in symbols if s not in reports]
    if not rest:
        return reports
    if len(rest) >= LISTING_MIN_SYMBOLS:
        try:
            positions, open_orders = _read_all(executor, pool)
        except Exception as exc:  # noqa: BLE001
            reports.update({s: _failed(s, reason, exc) for s in rest})
            return reports
        by_symbol: dict[str, list[Order]] = {}
        for order in open_orders:
            by_symbol.setdefault(order.symbol, []).append(order)

        def read(symbol: str) -> tuple[Position | None, list[Order]]:
            return positions.get(symbol), by_symbol.get(symbol, [])
    else:
        def read(symbol: str) -> tuple[Position | None, list[Order]]:
            return _read_symbol(executor, symbol)

    def locked(symbol: str) -> SymbolReport:
        try:
            position, orders = read(symbol)
            return _reconcile_locked(executor, client, keys, symbol, rules, reason, _hint(symbol, updates),
                                     position, orders)
        except Exception as exc:  # noqa: BLE001
            return _failed(symbol, reason, exc)

    reports.update(zip(rest, run(locked, rest), strict=True))
    return reports


def reconcile_all(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    rules: ExitRules,
    reason: str,
    *,
    pool: ThreadPoolExecutor | None = None,
) -> dict[str, SymbolReport]:
    """Every symbol the broker or we know of: positions (adopting those opened by hand), symbols with
    open sell orders (cancelled when flat) and symbols we hold state for (closed while we were away)."""
    positions, open_orders = _read_all(executor, pool)
    symbols = set(positions)
    symbols |= {o.symbol for o in open_orders if o.side is Side.SELL}
    symbols |= set(store.tracked_symbols(client, keys))
    return reconcile_symbols(executor, client, keys, sorted(symbols), rules, reason, pool=pool)


# -- the reconcile of one locked symbol --------------------------------------------------------------


def _reconcile_locked(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    symbol: str,
    rules: ExitRules,
    reason: str,
    hint: _Hint,
    position: Position | None,
    orders: list[Order],
) -> SymbolReport:
    report = SymbolReport(symbol, reason)
    caps = executor.capabilities
    for _round in range(MAX_ROUNDS):
        report.position_qty = position.qty if position is not None else ZERO
        record = store.load_record(client, keys, symbol)
        state = store.load_state(client, keys, symbol)
        record = _settle_closed_protection(executor, client, keys, symbol, state, record, orders, report)
        if position is None or position.qty <= ZERO:
            if position is not None and position.qty < ZERO:
                logs.event(log, "position_short", level=logging.ERROR, symbol=symbol, qty=position.qty,
                           reason="a short position is never expected; the manager leaves it to a person")
            stale = _open_sells(orders)
            if not stale:
                if state is not None or record.client_order_ids:
                    _close_out(executor, client, keys, symbol, state, record, report)
                return report
            _cancel(executor, client, keys, symbol, reason, stale, report, why="no position to protect")
            position, orders = _wait_released(executor, symbol, kept_hold=ZERO)
            continue
        previous = state
        state, adopted = _current_state(executor, symbol, state, position, hint, reason)
        report.adopted = report.adopted or adopted
        record_changed = bool(hint.entry_client_order_id and record.entry_client_order_id is None)
        if record_changed:
            record = record.model_copy(update={"entry_client_order_id": hint.entry_client_order_id})
        if state is not previous or record_changed:
            # Written only when it changed: the soft-exit tick owns the high-water mark and armed flags.
            store.save(client, keys, state if state is not previous else None, record)
        plan = desired_protection(position.qty, position.avg_entry_price, rules, symbol=symbol,
                                  fractional_allowed=caps.fractional_stop_orders, oco_allowed=caps.oco_exits)
        if plan.unprotected_qty > ZERO:
            logs.event(log, "shares_unprotectable", level=logging.WARNING, symbol=symbol, qty=plan.unprotected_qty,
                       reason="the broker takes no protective order for a fractional remainder")
        actions = reconcile(plan, orders)
        if actions.cancel:
            _cancel(executor, client, keys, symbol, reason, actions.cancel, report, why="not the desired protection")
            kept_hold = sum((_remaining(o) for o in orders if o.id in set(actions.keep)), ZERO)
            position, orders = _wait_released(executor, symbol, kept_hold=kept_hold)
            continue
        report.kept = [o.client_order_id for o in orders if o.id in set(actions.keep)]
        for desired in actions.place:
            record = _place(executor, client, keys, symbol, reason, desired, state, record, orders, report)
        if report.adopted:
            _fix(client, keys, symbol, reason, "position_adopted",
                 f"adopted {position.qty} {symbol} at {position.avg_entry_price} (no state: opened outside the "
                 f"manager or while it was down)", qty=position.qty, entry_price=position.avg_entry_price)
        return report
    raise BrokerUnavailable(f"{symbol}: protection still changing after {MAX_ROUNDS} rounds of cancel and re-read")


def _entry_fill(symbol: str, updates: list[TradeUpdate]) -> TradeUpdate | None:
    """The symbol's latest buy fill that says the whole position is this one entry, or None."""
    fills = [u for u in updates if u.order.symbol == symbol and u.order.side is Side.BUY
             and u.event in (TradeEventType.FILL, TradeEventType.PARTIAL_FILL)
             and u.position_qty is not None and u.position_qty > ZERO and u.position_qty == u.order.filled_qty
             and u.order.filled_avg_price is not None]
    return max(fills, key=lambda u: u.order.filled_qty) if fills else None


def _first_protections(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbols: list[str],
                       rules: ExitRules, updates: list[TradeUpdate],
                       pool: ThreadPoolExecutor | None) -> dict[str, SymbolReport]:
    """The first protection of brand-new positions, straight from their fills, without reading the broker.

    Only where the fill itself says what the broker holds: `position_qty` equals the entry's filled
    quantity (the whole position is this entry, so its average entry price is the order's
    filled_avg_price), and we never placed protection for the symbol (no state, no recorded orders),
    so no protective sell of ours can be open. Whatever else is open for the symbol, the broker itself
    refuses a sell beyond the shares held and free, so this can neither oversell nor add a second set;
    a symbol whose order is refused, or whose answer is lost, is left out of the result and gets the
    full read-and-reconcile. In a burst of fills at the open this saves two broker reads per symbol
    (latency, and requests against Alpaca's 200 a minute) and does its Redis work in a few round trips
    for the whole batch.
    """
    fills = {s: fill for s in symbols if (fill := _entry_fill(s, updates)) is not None}
    if not fills:
        return {}
    known = store.load_many(client, keys, list(fills))
    caps = executor.capabilities
    work: dict[str, tuple[TradeUpdate, PositionState, store.ProtectionRecord, list[tuple[DesiredOrder, str]]]] = {}
    for symbol, fill in fills.items():
        record, has_state = known[symbol]
        if record.client_order_ids or has_state:
            continue
        qty, entry_price = fill.order.filled_qty, fill.order.filled_avg_price
        plan = desired_protection(qty, entry_price, rules, symbol=symbol,
                                  fractional_allowed=caps.fractional_stop_orders, oco_allowed=caps.oco_exits)
        revision = record.revision
        state = PositionState.at_entry(symbol, entry_price, qty, _hint(symbol, updates).first_fill_at or fill.timestamp)
        orders: list[tuple[DesiredOrder, str]] = []
        for desired in plan.orders:
            revision += 1
            orders.append((desired, protective_client_order_id(keys, symbol, desired.kind, revision, state)))
        # Written before the orders are sent, so a crash right after the broker accepted one still
        # leaves its client order id to find its fill by.
        record = record.model_copy(update={"revision": revision, "client_order_ids": [cid for _d, cid in orders],
                                           "entry_client_order_id": fill.order.client_order_id})
        work[symbol] = (fill, state, record, orders)
    if not work:
        return {}
    store.save_many(client, keys, [(state, record) for _f, state, record, _o in work.values()])

    def send(symbol: str) -> tuple[str, list[Order], list[tuple[str, str]], BaseException | None]:
        fill, _state, _record, orders = work[symbol]
        placed: list[Order] = []
        deferred: list[tuple[str, str]] = []
        for desired, cid in orders:
            try:
                placed.append(executor.submit_protective_exit(symbol, desired.qty, desired.stop_price,
                                                              desired.target_price, cid))
            except (WashTrade, MarketClosed) as exc:
                if not _deferrable(exc, desired, [fill.order]):
                    return symbol, placed, deferred, exc
                deferred.append((cid, f"{desired.describe()}: {exc.message}; placed again by the next fill or "
                                      f"the timer reconcile"))
            except Exception as exc:  # noqa: BLE001 - the full reconcile sorts out what exists
                return symbol, placed, deferred, exc
        return symbol, placed, deferred, None

    run = pool.map if pool is not None and len(work) > 1 else map
    reports: dict[str, SymbolReport] = {}
    corrected: list[tuple[None, store.ProtectionRecord]] = []
    pipe = client.pipeline(transaction=False)
    for symbol, placed, deferred, error in run(send, list(work)):
        fill, _state, record, orders = work[symbol]
        if deferred:
            dropped = {cid for cid, _note in deferred}
            corrected.append((None, record.model_copy(update={"client_order_ids": [
                c for c in record.client_order_ids if c not in dropped]})))
            for cid, note in deferred:
                logs.event(log, "protection_deferred", level=logging.WARNING, symbol=symbol, client_order_id=cid,
                           reason=note)
        if error is not None:
            logs.event(log, "first_protection_refused", symbol=symbol, error=type(error).__name__,
                       reason=getattr(error, "message", str(error)))
            continue
        logs.event(log, "position_opened", symbol=symbol, qty=fill.order.filled_qty,
                   entry_price=fill.order.filled_avg_price, client_order_id=fill.order.client_order_id)
        report = SymbolReport(symbol, FILL, position_qty=fill.order.filled_qty, placed=placed,
                              deferred=[note for _cid, note in deferred])
        desired_by_id = {cid: desired for desired, cid in orders}
        for order in placed:
            _announce_placed(pipe, keys, symbol, FILL, desired_by_id[order.client_order_id], order.client_order_id)
        reports[symbol] = report
    pipe.execute()
    if corrected:
        store.save_many(client, keys, corrected)
    return reports


def _current_state(executor: OrderExecutor, symbol: str, state: PositionState | None, position: Position,
                   hint: _Hint, reason: str) -> tuple[PositionState, bool]:
    """The position's state brought up to the broker's figures; adopted=True when we had none and no
    entry fill explains the position."""
    if state is None:
        adopted = hint.first_fill_at is None
        first_fill_at = hint.first_fill_at or executor.get_clock().timestamp
        new_state = PositionState.at_entry(symbol, position.avg_entry_price, position.qty, first_fill_at)
        if not adopted:
            logs.event(log, "position_opened", symbol=symbol, qty=position.qty, entry_price=position.avg_entry_price,
                       client_order_id=hint.entry_client_order_id)
        return new_state, adopted
    if state.entry_price != position.avg_entry_price or state.qty != position.qty:
        # updated_at stays: the next tick still counts the bars since the last one (a spike in between).
        return state.with_entry(position.avg_entry_price, position.qty, state.updated_at), False
    return state, False


# -- applying: cancel, confirm the release, place ----------------------------------------------------


def _cancel(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str, reason: str,
            order_ids: Iterable[str], report: SymbolReport, *, why: str) -> None:
    for order_id in order_ids:
        try:
            executor.cancel_order(order_id)
        except (NotCancelable, NotFound):
            # It filled or ended meanwhile: the re-read after the release shows what it became.
            pass
        report.canceled.append(order_id)
        level = logging.INFO if reason == FILL else logging.WARNING
        logs.event(log, "protective_order_canceled", level=level, symbol=symbol, order_id=order_id, why=why,
                   trigger=reason)
        if reason != FILL:
            _fix(client, keys, symbol, reason, "order_canceled", f"canceled sell order {order_id}: {why}",
                 order_id=order_id, log_it=False)


def _wait_released(executor: OrderExecutor, symbol: str, *, kept_hold: Decimal,
                   timeout: float = RELEASE_TIMEOUT_SECONDS) -> tuple[Position | None, list[Order]]:
    """Poll until no canceled sell is still open and the position's shares are free again (qty_available
    == qty minus what kept orders hold). Alpaca reserves the shares of every open sell: placing before
    the release is refused with insufficient qty."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        position, orders = _read_symbol(executor, symbol)
        hold = sum((_remaining(o) for o in _open_sells(orders, objects=True)), ZERO)
        released = position is None or position.qty_available + kept_hold >= position.qty
        if released and hold <= kept_hold:
            return position, orders
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"{symbol}: shares still held by sell orders {timeout:g} s after canceling them")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _place(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str, reason: str,
           desired: DesiredOrder, state: PositionState, record: store.ProtectionRecord, orders: list[Order],
           report: SymbolReport) -> store.ProtectionRecord:
    """Place one protective order under a fresh client order id (written to the record first, so a
    crash right after the broker accepted it still leaves a way to find its fill)."""
    for _attempt in range(MAX_ID_ATTEMPTS):
        revision = record.revision + 1
        client_order_id = protective_client_order_id(keys, symbol, desired.kind, revision, state)
        record = record.model_copy(update={"revision": revision,
                                           "client_order_ids": [*record.client_order_ids, client_order_id]})
        store.save(client, keys, None, record)
        try:
            order = executor.submit_protective_exit(symbol, desired.qty, desired.stop_price, desired.target_price,
                                                    client_order_id)
        except DuplicateClientOrderId:
            # Used before (a lost answer, or Redis lost our counter): is it the order we want?
            existing = executor.get_order_by_client_id(client_order_id)
            if existing is not None and existing.status.is_open and existing.side is Side.SELL:
                order = existing
            else:
                record = _forget(record, client_order_id)
                continue
        except BrokerUnavailable:
            existing = executor.get_order_by_client_id(client_order_id)
            if existing is None:
                store.save(client, keys, None, _forget(record, client_order_id))
                raise
            order = existing
        except (WashTrade, MarketClosed) as exc:
            record = _forget(record, client_order_id)
            store.save(client, keys, None, record)
            if not _deferrable(exc, desired, orders):
                raise
            note = f"{desired.describe()}: {exc.message}; placed again by the next fill or the timer reconcile"
            report.deferred.append(note)
            logs.event(log, "protection_deferred", level=logging.WARNING, symbol=symbol,
                       client_order_id=client_order_id, reason=exc.message)
            return record
        except BrokerError:
            store.save(client, keys, None, _forget(record, client_order_id))
            raise
        report.placed.append(order)
        _announce_placed(client, keys, symbol, reason, desired, client_order_id)
        if reason != FILL:
            _fix(client, keys, symbol, reason, "protection_rearmed", f"placed {desired.describe()}",
                 client_order_id=client_order_id, log_it=False)
        return record
    raise DuplicateClientOrderId(f"{symbol}: no unused protective client order id after {MAX_ID_ATTEMPTS} tries")


def _announce_placed(client: redis.Redis, keys: Keys, symbol: str, reason: str, desired: DesiredOrder,
                     client_order_id: str) -> None:
    level = logging.INFO if reason == FILL else logging.WARNING
    logs.event(log, "protection_placed", level=level, symbol=symbol, client_order_id=client_order_id,
               kind=desired.kind.value, qty=desired.qty, stop_price=desired.stop_price,
               target_price=desired.target_price, time_in_force=desired.time_in_force.value, trigger=reason)
    bus.publish(client, keys, "protected", symbol=symbol, qty=desired.qty, stop_price=desired.stop_price,
                target_price=desired.target_price, order_class=desired.kind.value,
                client_order_id=client_order_id, trigger=reason)


def _deferrable(exc: BrokerError, desired: DesiredOrder, orders: list[Order]) -> bool:
    """A fractional day stop refused while the entry buy is still open (wash-trade rule) or outside the
    session is placed later; a refusal of the whole-share OCO is never waved through."""
    if desired.kind is not ProtectionKind.STOP:
        return False
    if isinstance(exc, MarketClosed):
        return True
    return any(o.side is Side.BUY and o.status.is_open for o in orders)


def protective_client_order_id(keys: Keys, symbol: str, kind: ProtectionKind, revision: int,
                               state: PositionState) -> str:
    """`<ns>-<YYYYMMDD>-<SYMBOL>-<oco|stop>-r<revision>`, dated by the position's first fill (broker
    time, New York date). The revision counter is per symbol and only grows, so an id is never
    reused (Alpaca keeps them unique for the life of the account)."""
    return make_client_order_id(kind.value, symbol, f"r{revision}",
                                day=state.first_fill_at.astimezone(NEW_YORK).date(), namespace=keys.ns)


# -- closing fills and the ledger ---------------------------------------------------------------------


def _settle_closed_protection(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str,
                              state: PositionState | None, record: store.ProtectionRecord, orders: list[Order],
                              report: SymbolReport) -> store.ProtectionRecord:
    """Protective orders in the record that are no longer open: write what they sold to the ledger (once
    per closing order) and drop them from the record."""
    open_ids = {o.client_order_id for parent in orders for o in parent.all_orders() if o.status.is_open}
    gone = [cid for cid in record.client_order_ids if cid not in open_ids]
    if not gone:
        return record
    still_open: list[str] = []
    for cid in gone:
        order = executor.get_order_by_client_id(cid)
        if order is not None and order.status.is_open:
            still_open.append(cid)  # opened since our read (or listed late): keep tracking it
            continue
        if order is not None and state is not None:
            for trade in _closing_trades(order, state, record, cid):
                if ledger.append_once(client, keys, trade):
                    report.closed.append(trade)
                    ledger.announce(client, keys, trade)
    record = record.model_copy(update={"client_order_ids": [c for c in record.client_order_ids
                                                            if c not in gone or c in still_open]})
    store.save(client, keys, None, record)
    return record


def _closing_trades(order: Order, state: PositionState, record: store.ProtectionRecord,
                    protective_cid: str) -> list[ClosedTrade]:
    trades = []
    for part in order.all_orders():
        if part.side is not Side.SELL or part.filled_qty <= ZERO or part.filled_avg_price is None:
            continue
        reason = ExitReason.TAKE_PROFIT if part.type is OrderType.LIMIT else ExitReason.STOP_LOSS
        trades.append(ClosedTrade.of(
            symbol=state.symbol, qty=part.filled_qty, entry_price=state.entry_price,
            exit_price=part.filled_avg_price, exit_reason=reason, opened_at=state.first_fill_at,
            closed_at=part.filled_at or part.updated_at, closing_order_id=part.id,
            closing_client_order_id=part.client_order_id, protective_client_order_id=protective_cid,
            entry_client_order_id=record.entry_client_order_id,
        ))
    return trades


def _close_out(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str, state: PositionState | None,
               record: store.ProtectionRecord, report: SymbolReport) -> None:
    """The position is gone: sells we did not place (by hand at the broker) go to the ledger as MANUAL,
    unless their exit is already recorded (a soft exit writes its own), then the state is cleared."""
    if state is not None:
        since = state.first_fill_at
        for order in executor.get_orders_updated_since(since):
            for part in order.all_orders():
                if (part.symbol != symbol or part.side is not Side.SELL or part.filled_qty <= ZERO
                        or part.filled_avg_price is None or ledger.is_recorded(client, keys, part.id)):
                    continue
                trade = ClosedTrade.of(
                    symbol=symbol, qty=part.filled_qty, entry_price=state.entry_price,
                    exit_price=part.filled_avg_price, exit_reason=ExitReason.MANUAL, opened_at=state.first_fill_at,
                    closed_at=part.filled_at or part.updated_at, closing_order_id=part.id,
                    closing_client_order_id=part.client_order_id,
                    entry_client_order_id=record.entry_client_order_id,
                )
                if ledger.append_once(client, keys, trade):
                    report.closed.append(trade)
                    ledger.announce(client, keys, trade)
                    logs.event(log, "position_sold_outside_manager", level=logging.WARNING, symbol=symbol,
                               client_order_id=part.client_order_id, qty=part.filled_qty)
    store.clear(client, keys, symbol)
    logs.event(log, "position_state_cleared", symbol=symbol, trades=len(report.closed))


# -- small helpers -------------------------------------------------------------------------------------


def _read_symbol(executor: OrderExecutor, symbol: str) -> tuple[Position | None, list[Order]]:
    return executor.get_position(symbol), executor.get_open_orders(symbol)


def _read_all(executor: OrderExecutor, pool: ThreadPoolExecutor | None) -> tuple[dict[str, Position], list[Order]]:
    if pool is None:
        positions, orders = executor.get_positions(), executor.get_open_orders()
    else:
        positions_f = pool.submit(executor.get_positions)
        orders = executor.get_open_orders()
        positions = positions_f.result()
    return {p.symbol: p for p in positions}, orders


def _open_sells(orders: Iterable[Order], *, objects: bool = False) -> list:
    sells = [o for o in orders if o.side is Side.SELL and o.status.is_open]
    return sells if objects else [o.id for o in sells]


def _remaining(order: Order) -> Decimal:
    remaining = order.remaining_qty
    return remaining if remaining is not None else ZERO


def _stop_of(order: Order) -> Decimal | None:
    if order.stop_price is not None:
        return order.stop_price
    return next((leg.stop_price for leg in order.legs if leg.stop_price is not None), None)


def _forget(record: store.ProtectionRecord, client_order_id: str) -> store.ProtectionRecord:
    return record.model_copy(update={"client_order_ids": [c for c in record.client_order_ids if c != client_order_id]})


def _hint(symbol: str, updates: Iterable[TradeUpdate]) -> _Hint:
    buys = [u for u in updates if u.order.symbol == symbol and u.order.side is Side.BUY
            and u.event in (TradeEventType.FILL, TradeEventType.PARTIAL_FILL)]
    if not buys:
        return _Hint()
    first = min(buys, key=lambda u: u.timestamp)
    return _Hint(first_fill_at=first.order.filled_at or first.timestamp,
                 entry_client_order_id=first.order.client_order_id)


def _fix(client: redis.Redis, keys: Keys, symbol: str, reason: str, action: str, message: str, *,
         log_it: bool = True, **fields: object) -> None:
    """A fix the reconcile made: loud in the log, and published for `factoryline watch`."""
    if log_it:
        logs.event(log, "reconcile_fix", level=logging.WARNING, symbol=symbol, action=action, trigger=reason,
                   detail=message, **fields)
    bus.publish(client, keys, "reconcile_fix", symbol=symbol, action=action, trigger=reason, message=message,
                at=_now().isoformat(), **fields)


def _failed(symbol: str, reason: str, exc: BaseException) -> SymbolReport:
    logs.event(log, "reconcile_failed", level=logging.WARNING, symbol=symbol, trigger=reason,
               error=type(exc).__name__, reason=str(exc))
    return SymbolReport(symbol, reason, error=exc)


def _now() -> datetime:
    return datetime.now(UTC)

