"""The manager's reconcile: make the broker hold exactly what each position needs, for every trigger.

Reads: the symbol's position and open orders (after taking its lock), or, for a fill that says the
whole position is this entry and nothing of ours exists yet, the fill itself (a hint that saves two
broker reads, nothing more); the position's state and protection record in Redis.
Decides: `shared.protection.plan_position` (pure), the one decision every trigger runs: protect
(cancel, keep, place), exit at market (the price is through a level in the session), leave alone
(a foreign position under `ignore`, a halted asset), or forget (flat).
Writes: cancels of the line's own orders, then (once the broker released the shares) new
protective orders, or the safe exit; the ledger (`settle`); the position's state; WARNING logs,
notifications and the per-symbol notes `factoryline status` shows.

A fill, the manager's start, its timer, the pre-open check, an exit and `factoryline reconcile`
all run this same code (`Trigger`), so a duplicate, a missed event or a crash converge to one
protective set per symbol. The user's orders are never cancelled (`shared.ownership`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from shared import bus, logs, metrics
from shared import position_store as store
from shared.broker import procedures
from shared.client_ids import make_client_order_id
from shared.errors import (
    BrokerError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    MarketClosed,
    NotTradable,
    OrderRejected,
    WashTrade,
)
from shared.exits import PositionState
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK
from shared.models import Order, OrderType, Position, Side, TradeEventType, TradeUpdate
from shared.money import ZERO
from shared.ownership import is_ours
from shared.positions import exiting, locks, settle
from shared.positions.context import ManagerContext
from shared.positions.hwm import HISTORY_LOOKBACK_EXTRA, entered_by_the_line, first_fill_times
from shared.protection import (
    DesiredOrder,
    PositionPlan,
    ProtectionKind,
    Trigger,
    Verdict,
    plan_position,
    through_a_level,
)

log = logging.getLogger(__name__)

#: Read, plan and apply rounds before giving up on a symbol for now (each round re-reads the broker,
#: so a cancel that lost a race against a fill is seen as the fill it became).
MAX_ROUNDS = 4
#: From this many symbols on, one listing of positions and one of open orders replace the per-symbol
#: reads (fewer requests against Alpaca's 200 a minute; a listing costs about as much as 15 small reads).
LISTING_MIN_SYMBOLS = 16
#: A protective order or exit the broker refused is not sent again, unchanged, for this long.
REFUSED_RETRY_SECONDS = 300


@dataclass
class SymbolReport:
    """What one reconcile of one symbol saw and did."""

    symbol: str
    trigger: Trigger
    position_qty: Decimal = ZERO
    verdict: Verdict | None = None
    kept: list[str] = field(default_factory=list)
    placed: list[Order] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    closed: list[ClosedTrade] = field(default_factory=list)
    adopted: bool = False
    split_ratio: Decimal | None = None
    deferred: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exit: exiting.ExitResult | None = None
    error: BaseException | None = None

    @property
    def changed(self) -> bool:
        return bool(self.placed or self.canceled or self.closed or self.adopted or self.exit or self.split_ratio)

    def summary(self) -> str:
        if self.error is not None:
            return f"{self.symbol}: FAILED {type(self.error).__name__}: {self.error}"
        parts = [f"{self.symbol}: position {self.position_qty}"]
        if self.adopted:
            parts.append("adopted")
        if self.split_ratio is not None:
            parts.append(f"re-based for a split (x{self.split_ratio.normalize()})")
        if self.canceled:
            parts.append(f"canceled {len(self.canceled)}")
        parts += [f"placed {o.order_class.value} {o.qty} (stop {_stop_of(o)}"
                  f"{f', target {o.limit_price}' if o.type is OrderType.LIMIT else ''}) {o.client_order_id}"
                  for o in self.placed]
        if self.kept:
            parts.append(f"kept {len(self.kept)} protective order(s)")
        if self.exit is not None:
            parts.append(self.exit.summary())
        parts += [f"closed {t.qty} {t.exit_reason.value} at {t.exit_price} (P/L {t.realized_pl:.2f})"
                  for t in self.closed]
        parts += [f"deferred: {d}" for d in self.deferred]
        parts += self.notes
        if len(parts) == 1:
            parts.append("nothing to do")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Seed:
    """What the trade events that triggered the reconcile tell beyond the broker's state."""

    first_fill_at: datetime | None = None
    entry_client_order_id: str | None = None
    #: The entry fill, when it says the whole position is this one entry (position_qty == filled_qty).
    whole_position_fill: TradeUpdate | None = None
    #: The newest buy fill's time (trade update): the start of the fill-to-protection latency.
    fill_at: datetime | None = None


# -- public entry points ----------------------------------------------------------------------------


def reconcile_symbol(ctx: ManagerContext, symbol: str, trigger: Trigger, *, updates: Iterable[TradeUpdate] = (),
                     splits: dict[str, Decimal] | None = None) -> SymbolReport:
    """Reconcile one symbol under its lock (waiting for it). Errors are returned in the report."""
    try:
        with locks.symbol_lock(ctx.client, ctx.keys, symbol, wait_seconds=ctx.lock_wait_seconds):
            return _reconcile_held(ctx, [symbol], trigger, list(updates), splits or {})[symbol]
    except Exception as exc:  # noqa: BLE001 - reported per symbol; the caller decides (retry, print)
        return _failed(symbol, trigger, exc)


def reconcile_symbols(ctx: ManagerContext, symbols: Iterable[str], trigger: Trigger, *,
                      updates: Iterable[TradeUpdate] = (),
                      splits: dict[str, Decimal] | None = None) -> dict[str, SymbolReport]:
    """Reconcile many symbols at once (a burst of fills at the open, reconcile-all).

    The free locks are taken in one round trip; symbols another process holds are done one by one
    once it lets go (it may have read the broker before our fill)."""
    wanted = list(dict.fromkeys(s for s in symbols if s))
    updates = list(updates)
    splits = splits or {}
    tokens = locks.try_acquire_many(ctx.client, ctx.keys, wanted)
    reports: dict[str, SymbolReport] = {}
    try:
        if tokens:
            reports.update(_reconcile_held(ctx, list(tokens), trigger, updates, splits))
    finally:
        lost = locks.release_many(ctx.client, ctx.keys, tokens)
        if lost:
            logs.event(log, "symbol_lock_lost", level=logging.WARNING, symbols=",".join(lost))
    busy = [s for s in wanted if s not in tokens]
    reports.update(zip(busy, ctx.map(lambda s: reconcile_symbol(ctx, s, trigger, updates=updates, splits=splits),
                                     busy), strict=True))
    return {s: reports[s] for s in wanted}


def reconcile_all(ctx: ManagerContext, trigger: Trigger, *,
                  splits: dict[str, Decimal] | None = None) -> dict[str, SymbolReport]:
    """Every symbol the broker or we know of: positions (adopting those opened by hand), symbols with
    open sell orders of ours (cancelled when flat) and symbols we hold state for (closed while we
    were away)."""
    positions, open_orders = _read_all(ctx)
    symbols = set(positions)
    symbols |= {o.symbol for o in open_orders if o.side is Side.SELL and is_ours(o.client_order_id, ctx.keys.ns)}
    symbols |= set(store.tracked_symbols(ctx.client, ctx.keys))
    return reconcile_symbols(ctx, sorted(symbols), trigger, splits=splits)


def pre_open(ctx: ManagerContext, day: date) -> dict[str, SymbolReport]:
    """Before the open: the day's splits of the symbols held re-base their positions' state, then
    every position is reconciled (protective orders the broker cancelled, adjusted or left stale by
    the split are made right before they can trigger)."""
    held = sorted(p.symbol for p in ctx.executor.get_positions())
    splits = {s.symbol: s.ratio for s in ctx.executor.get_splits(held, day, day)} if held else {}
    for symbol, ratio in splits.items():
        logs.event(log, "split_announced", level=logging.WARNING, symbol=symbol, ratio=ratio, ex_date=day.isoformat())
    return reconcile_all(ctx, Trigger.PRE_OPEN, splits=splits)


# -- reading ----------------------------------------------------------------------------------------


def _reconcile_held(ctx: ManagerContext, symbols: list[str], trigger: Trigger, updates: list[TradeUpdate],
                    splits: dict[str, Decimal]) -> dict[str, SymbolReport]:
    """Symbols whose locks we hold. New positions whose fill says everything the broker would are
    planned from the fill and placed as one batch; every other symbol (and any the batch could not
    finish) is read from the broker and runs the plan-and-apply on its own."""
    seeds = {s: _seed(s, updates) for s in symbols}
    reports: dict[str, SymbolReport] = {}
    if trigger is Trigger.FILL:
        reports.update(_protect_fresh(ctx, [s for s in symbols if s not in splits], seeds))
    rest = [s for s in symbols if s not in reports]
    listing: tuple[dict[str, Position], dict[str, list[Order]]] | None = None
    if len(rest) >= LISTING_MIN_SYMBOLS:
        try:
            positions, open_orders = _read_all(ctx)
        except Exception as exc:  # noqa: BLE001
            return {**reports, **{s: _failed(s, trigger, exc) for s in rest}}
        by_symbol: dict[str, list[Order]] = {}
        for order in open_orders:
            by_symbol.setdefault(order.symbol, []).append(order)
        listing = (positions, by_symbol)

    def one(symbol: str) -> SymbolReport:
        try:
            if listing is not None:
                position, orders = listing[0].get(symbol), listing[1].get(symbol, [])
            else:
                position, orders = ctx.executor.get_position(symbol), ctx.executor.get_open_orders(symbol)
            return _reconcile_locked(ctx, symbol, trigger, seeds[symbol], position, orders, splits.get(symbol))
        except Exception as exc:  # noqa: BLE001
            return _failed(symbol, trigger, exc)

    reports.update(zip(rest, ctx.map(one, rest), strict=True))
    return {s: reports[s] for s in symbols}


def _protect_fresh(ctx: ManagerContext, symbols: list[str], seeds: dict[str, _Seed]) -> dict[str, SymbolReport]:
    """The first protection of brand-new line positions, from their fills, without reading the broker.

    Only where the fill itself says what the broker holds: `position_qty` equals the entry's filled
    quantity (the whole position is this entry, so its average entry is the fill's average price),
    the entry is the line's, and we never placed anything for the symbol (no state, no recorded
    order), so nothing of ours is open. The fill is then the observation, and the same plan
    (`plan_position`) and the same application (`_place_all`) run; a burst at the open takes a few
    Redis round trips for the whole batch and two broker reads fewer per fill. Whatever else is open
    (a user's order), the broker refuses a sell beyond the shares held and free, so a wrong hint
    cannot oversell: a symbol whose order is refused, or whose answer is lost, is left out of the
    result and gets the full read-and-reconcile."""
    candidates = [s for s in symbols if seeds[s].whole_position_fill is not None
                  and is_ours(seeds[s].entry_client_order_id, ctx.keys.ns)]
    if not candidates:
        return {}
    known = store.load_many(ctx.client, ctx.keys, candidates)
    placements: list[_Placement] = []
    for symbol in candidates:
        record, has_state = known[symbol]
        if record.client_order_ids or has_state:
            continue
        fill, seed = seeds[symbol].whole_position_fill, seeds[symbol]
        qty, price = fill.order.filled_qty, fill.order.filled_avg_price
        state = PositionState.at_entry(symbol, price, qty, seed.first_fill_at)
        record = record.model_copy(update={"entry_client_order_id": seed.entry_client_order_id})
        plan = _plan(ctx, symbol, qty, price, state, [], None, True, False)
        if plan.verdict is not Verdict.PROTECT or plan.actions.cancel:
            continue
        report = SymbolReport(symbol, Trigger.FILL, position_qty=qty, verdict=plan.verdict, notes=list(plan.notes))
        placements.append(_Placement(symbol, plan.actions.place, state, record, [fill.order], report,
                                     save_state=True, fill_at=seed.fill_at))
    _place_all(ctx, Trigger.FILL, placements)
    done = {}
    for placement in placements:
        if placement.error is None:
            logs.event(log, "position_opened", symbol=placement.symbol, qty=placement.report.position_qty,
                       entry_price=placement.state.entry_price,
                       client_order_id=placement.record.entry_client_order_id)
            done[placement.symbol] = placement.report
        else:
            logs.event(log, "first_protection_refused", symbol=placement.symbol,
                       error=type(placement.error).__name__, reason=str(placement.error))
    return done


# -- the reconcile of one locked symbol --------------------------------------------------------------


def _reconcile_locked(ctx: ManagerContext, symbol: str, trigger: Trigger, seed: _Seed, position: Position | None,
                      orders: list[Order], split_ratio: Decimal | None) -> SymbolReport:
    report = SymbolReport(symbol, trigger)
    exit_refused = False
    for _round in range(MAX_ROUNDS):
        qty = position.qty if position is not None else ZERO
        report.position_qty = qty
        record = store.load_record(ctx.client, ctx.keys, symbol)
        state = store.load_state(ctx.client, ctx.keys, symbol)
        record = settle.settle_closed_protection(ctx, symbol, state, record, orders, report)
        if qty > ZERO:
            state, record = _sync_state(ctx, symbol, state, record, position, seed, split_ratio, report)
            split_ratio = None  # applied (or not needed) once
        price = position.current_price if position is not None else None
        in_session = ctx.executor.get_clock().is_open if through_a_level(price, state, ctx.rules) else None
        tradable = not exiting.marked_halted(ctx, symbol)
        plan = _plan(ctx, symbol, qty, price, state, orders, in_session, tradable, exit_refused)
        if tradable and (plan.actions.cancel or plan.verdict is Verdict.EXIT) and not _asset_tradable(ctx, symbol):
            # Never cancel a working stop before the replacement or the sell can go through.
            plan = _plan(ctx, symbol, qty, price, state, orders, in_session, False, exit_refused)
        report.verdict = plan.verdict
        report.notes = list(plan.notes)
        _keep_notes(ctx, symbol, trigger, plan)
        if plan.verdict in (Verdict.IGNORE, Verdict.HALTED):
            return report
        if plan.verdict is Verdict.SHORT:
            logs.event(log, "position_short", level=logging.ERROR, symbol=symbol, qty=qty,
                       reason="a short position is never expected; the manager leaves it to a person")
        if plan.verdict is Verdict.EXIT:
            result = exiting.sell_out(ctx, state, plan.exit_reason, exiting.level_exit_client_order_id(
                ctx.keys, state, plan.exit_reason, _now_ny(ctx)), detail=plan.notes[-1])
            report.exit = result
            if result.outcome is exiting.ExitOutcome.REFUSED:
                exit_refused = True
                _remember_refusal(ctx, symbol, f"exit {plan.exit_reason.value}")
            position, orders = ctx.executor.get_position(symbol), ctx.executor.get_open_orders(symbol)
            continue
        if plan.actions.cancel:
            _announce_cancels(ctx, symbol, trigger, plan.actions.cancel, report,
                              why="no position to protect" if plan.verdict is not Verdict.PROTECT
                              else "not the desired protection")
            position, orders = procedures.cancel_and_release(ctx.executor, symbol, plan.actions.cancel)
            continue
        if plan.verdict in (Verdict.FLAT, Verdict.SHORT):
            if plan.verdict is Verdict.FLAT and (state is not None or record.client_order_ids):
                settle.close_out(ctx, symbol, state, record, report)
            return report
        keep = set(plan.actions.keep)
        report.kept = [o.client_order_id for o in orders if o.id in keep]
        placement = _Placement(symbol, plan.actions.place, state, record, orders, report, fill_at=seed.fill_at)
        _place_all(ctx, trigger, [placement])
        if placement.error is not None:
            bus.publish(ctx.client, ctx.keys, "protection_failed", symbol=symbol, trigger=trigger.value,
                        message=f"{symbol}: protection not placed: {type(placement.error).__name__}: "
                                f"{logs.redact(str(placement.error))}")
            raise placement.error
        if report.adopted:
            whose = ("not entered by the line: a stop below the current price, no target, no soft exits"
                     if state.foreign else "entered by the line; its state was lost")
            _fix(ctx, symbol, trigger, "position_adopted", f"adopted {qty} {symbol} at {position.avg_entry_price} "
                 f"({whose})", qty=qty, entry_price=position.avg_entry_price)
        return report
    raise BrokerUnavailable(f"{symbol}: protection still changing after {MAX_ROUNDS} rounds of cancel and re-read")


def _plan(ctx: ManagerContext, symbol: str, qty: Decimal, price: Decimal | None, state: PositionState | None,
          orders: list[Order], in_session: bool | None, tradable: bool, exit_refused: bool) -> PositionPlan:
    caps = ctx.capabilities
    return plan_position(symbol, qty, price, state, orders, ctx.rules, namespace=ctx.keys.ns, in_session=in_session,
                         tradable=tradable, foreign_policy=ctx.foreign_policy,
                         fractional_allowed=caps.fractional_stop_orders, oco_allowed=caps.oco_exits,
                         exit_refused=exit_refused or (in_session is True and _refused(ctx, symbol, "exit")))


def _sync_state(ctx: ManagerContext, symbol: str, state: PositionState | None, record: store.ProtectionRecord,
                position: Position, seed: _Seed, split_ratio: Decimal | None,
                report: SymbolReport) -> tuple[PositionState, store.ProtectionRecord]:
    """The position's state brought up to the broker's figures (adopting a position we have no state
    for; re-basing it after a split), written only when it changed: the soft-exit tick owns the
    high-water mark and armed flags."""
    previous = state
    if state is None:
        state = _adopt(ctx, symbol, position, seed, report)
    else:
        state, ratio = state.follow_broker(position.qty, position.avg_entry_price, state.updated_at,
                                           split_ratio=split_ratio)
        if ratio is not None:
            # Bars from before the split carry the old prices: the next tick counts only those after it.
            state = state.model_copy(update={"updated_at": max(state.updated_at, ctx.executor.get_clock().timestamp)})
            report.split_ratio = ratio
            _fix(ctx, symbol, report.trigger, "split_rebased",
                 f"re-based for a split x{ratio.normalize()}: entry {state.entry_price}, high-water mark "
                 f"{state.high_water_mark}, {state.qty} shares", ratio=ratio)
    record_changed = bool(seed.entry_client_order_id and record.entry_client_order_id is None
                          and is_ours(seed.entry_client_order_id, ctx.keys.ns))
    if record_changed:
        record = record.model_copy(update={"entry_client_order_id": seed.entry_client_order_id})
    if state is not previous or record_changed:
        store.save(ctx.client, ctx.keys, state if state is not previous else None, record)
    return state, record


def _adopt(ctx: ManagerContext, symbol: str, position: Position, seed: _Seed, report: SymbolReport) -> PositionState:
    """A position without state: opened by the entry whose fill is in hand, entered by the line while
    the manager was away (its entry is in the order history), or not the line's at all (foreign)."""
    if seed.first_fill_at is not None and is_ours(seed.entry_client_order_id, ctx.keys.ns):
        logs.event(log, "position_opened", symbol=symbol, qty=position.qty, entry_price=position.avg_entry_price,
                   client_order_id=seed.entry_client_order_id)
        return PositionState.at_entry(symbol, position.avg_entry_price, position.qty, seed.first_fill_at)
    report.adopted = True
    now = ctx.executor.get_clock().timestamp
    history = ctx.executor.get_orders_updated_since(now - ctx.rules.time_stop - HISTORY_LOOKBACK_EXTRA)
    first_fill = first_fill_times(history, [symbol]).get(symbol)
    if symbol in entered_by_the_line(history, {symbol: first_fill} if first_fill else {}, ctx.keys.ns):
        return PositionState.at_entry(symbol, position.avg_entry_price, position.qty, first_fill or now)
    price = position.current_price if position.current_price is not None else position.avg_entry_price
    state = PositionState.adopted(symbol, position.avg_entry_price, position.qty, price, now)
    logs.event(log, "foreign_position_found", level=logging.WARNING, symbol=symbol, qty=position.qty,
               price=price, policy=ctx.foreign_policy.value)
    return state


# -- applying -------------------------------------------------------------------------------------------


def _announce_cancels(ctx: ManagerContext, symbol: str, trigger: Trigger, order_ids: list[str],
                      report: SymbolReport, *, why: str) -> None:
    for order_id in order_ids:
        report.canceled.append(order_id)
        logs.event(log, "protective_order_canceled", level=logging.WARNING if trigger.is_fix else logging.INFO,
                   symbol=symbol, order_id=order_id, why=why, trigger=trigger.value)
        if trigger.is_fix:
            _fix(ctx, symbol, trigger, "order_canceled", f"canceled sell order {order_id}: {why}",
                 order_id=order_id, log_it=False)


@dataclass
class _Placement:
    """Protective orders to place for one symbol, and what came of it."""

    symbol: str
    desired: list[DesiredOrder]
    state: PositionState
    record: store.ProtectionRecord
    #: The symbol's open orders as read (an open entry buy makes a fractional stop's refusal deferrable).
    orders: list[Order]
    report: SymbolReport
    #: The state is new (a first fill): written with the record, in the same round trip.
    save_state: bool = False
    #: The fill this placement protects (trigger FILL), for `factoryline_fill_to_protection_seconds`.
    fill_at: datetime | None = None
    error: BaseException | None = None
    _ids: list[tuple[DesiredOrder, str]] = field(default_factory=list)


def _place_all(ctx: ManagerContext, trigger: Trigger, placements: list[_Placement]) -> None:
    """Place every placement's orders exactly once, symbols in parallel, with the Redis work of the
    whole batch in two round trips: the client order ids are written to the records BEFORE anything
    is sent (a crash right after the broker accepted an order still leaves a way to find its fill),
    and afterwards the records lose the ids that created nothing, in one write with the
    notifications. A refusal is remembered: the same order is not sent again for
    REFUSED_RETRY_SECONDS; a symbol's error is left in its placement."""
    if trigger.is_fix:
        for placement in placements:
            refused = [d for d in placement.desired if _refused(ctx, placement.symbol, d.describe())]
            placement.report.deferred += [f"{d.describe()}: refused earlier; tried again after "
                                          f"{REFUSED_RETRY_SECONDS} s" for d in refused]
            placement.desired = [d for d in placement.desired if d not in refused]
    placements = [p for p in placements if p.desired or p.save_state]
    if not placements:
        return
    for placement in placements:
        record = placement.record
        for desired in placement.desired:
            revision = record.revision + 1
            cid = protective_client_order_id(ctx.keys, placement.symbol, desired.kind, revision, placement.state)
            record = record.model_copy(update={"revision": revision,
                                               "client_order_ids": [*record.client_order_ids, cid]})
            placement._ids.append((desired, cid))
        placement.record = record
    store.save_many(ctx.client, ctx.keys, [(p.state if p.save_state else None, p.record) for p in placements])
    ctx.map(lambda placement: _send(ctx, placement), placements)
    pipe = ctx.client.pipeline(transaction=False)
    corrected = []
    for placement in placements:
        placed = {order.client_order_id for order in placement.report.placed}
        unused = [cid for _d, cid in placement._ids if cid not in placed]
        if unused:
            placement.record = placement.record.model_copy(update={"client_order_ids": [
                c for c in placement.record.client_order_ids if c not in unused]})
            corrected.append((None, placement.record))
        for desired, cid in placement._ids:
            if cid in placed:
                order = next(o for o in placement.report.placed if o.client_order_id == cid)
                _announce_placed(ctx, pipe, placement.symbol, trigger, desired, cid, at=order.created_at)
    pipe.execute()
    if corrected:
        store.save_many(ctx.client, ctx.keys, corrected)


def _send(ctx: ManagerContext, placement: _Placement) -> None:
    """Send one symbol's orders in turn (`procedures.submit_once`; its id was recorded first). The
    first refusal stops the symbol: the rest waits for the next reconcile."""
    symbol = placement.symbol
    for desired, cid in placement._ids:
        try:
            order = procedures.submit_once(
                ctx.executor,
                lambda c, d=desired: ctx.executor.submit_protective_exit(symbol, d.qty, d.stop_price, d.target_price, c),
                lambda _attempt, c=cid: c, max_attempts=1)
        except (WashTrade, MarketClosed) as exc:
            if not _deferrable(exc, desired, placement.orders):
                placement.error = exc
                return
            placement.report.deferred.append(f"{desired.describe()}: {exc.message}; placed again by the next "
                                             f"fill or the timer reconcile")
            logs.event(log, "protection_deferred", level=logging.WARNING, symbol=symbol, reason=exc.message)
            continue
        except DuplicateClientOrderId as exc:
            # Used before by a finished order (Redis lost the revision counter): the record has moved
            # on, so the next pass sends under the next revision. Not a refusal of the order itself.
            placement.error = exc
            return
        except NotTradable as exc:
            exiting.mark_halted(ctx, symbol)
            _alert(ctx, symbol, f"{symbol}: {desired.describe()} refused: {exc.message}; the asset is treated as "
                                f"halted")
            placement.error = exc
            return
        except OrderRejected as exc:
            if placement.report.trigger.is_fix:
                _remember_refusal(ctx, symbol, desired.describe())
                _alert(ctx, symbol, f"{symbol}: {desired.describe()} refused: {exc.message}; not sent again for "
                                    f"{REFUSED_RETRY_SECONDS} s")
            placement.error = exc
            return
        except Exception as exc:  # noqa: BLE001 - the outcome is unknown or the broker is away: next pass
            placement.error = exc
            return
        if order.client_order_id != cid:
            placement.error = BrokerUnavailable(f"{cid}: the broker answered with another order")
            return
        placement.report.placed.append(order)
        if placement.fill_at is not None and placement.report.trigger is Trigger.FILL \
                and len(placement.report.placed) == 1:
            metrics.observe_protection(placement.fill_at, order.created_at)
        if placement.report.trigger.is_fix:
            _fix(ctx, symbol, placement.report.trigger, "protection_rearmed", f"placed {desired.describe()}",
                 client_order_id=cid, log_it=False)


def _announce_placed(ctx: ManagerContext, pipe, symbol: str, trigger: Trigger, desired: DesiredOrder,
                     client_order_id: str, *, at: datetime) -> None:
    """`at`: when the broker accepted the order (its own time, the simulator's virtual time)."""
    logs.event(log, "protection_placed", level=logging.WARNING if trigger.is_fix else logging.INFO, symbol=symbol,
               client_order_id=client_order_id, kind=desired.kind.value, qty=desired.qty,
               stop_price=desired.stop_price, target_price=desired.target_price,
               time_in_force=desired.time_in_force.value, trigger=trigger.value)
    bus.publish(pipe, ctx.keys, "protected", symbol=symbol, qty=desired.qty, stop_price=desired.stop_price,
                target_price=desired.target_price, order_class=desired.kind.value,
                client_order_id=client_order_id, trigger=trigger.value, at=at.isoformat())


def _deferrable(exc: BrokerError, desired: DesiredOrder, orders: list[Order]) -> bool:
    """A fractional day stop refused while the entry buy is still open (wash-trade rule) or outside the
    session is placed later; a refusal of the whole-share OCO is never waved through."""
    if desired.kind is not ProtectionKind.STOP:
        return False
    if isinstance(exc, MarketClosed):
        return True
    return any(o.side is Side.BUY and o.status.is_open for o in orders)


def protective_client_order_id(keys, symbol: str, kind: ProtectionKind, revision: int,
                               state: PositionState) -> str:
    """`<ns>-<YYYYMMDD>-<SYMBOL>-<oco|stop>-r<revision>`, dated by the position's first fill (broker
    time, New York date). The revision counter is per symbol and only grows, so an id is never
    reused (Alpaca keeps them unique for the life of the account)."""
    return make_client_order_id(kind.value, symbol, f"r{revision}",
                                day=state.first_fill_at.astimezone(NEW_YORK).date(), namespace=keys.ns)


# -- what people see: fixes, alerts, per-symbol notes --------------------------------------------------


def _keep_notes(ctx: ManagerContext, symbol: str, trigger: Trigger, plan: PositionPlan) -> None:
    """Store the plan's notes for `status`; a note that is new is also an alert."""
    key = ctx.keys.manager_notes
    if not plan.notes:
        if trigger.is_fix:
            ctx.client.hdel(key, symbol)
        return
    previous = ctx.client.hget(key, symbol)
    old_notes = json.loads(previous).get("notes", []) if previous else []
    ctx.client.hset(key, symbol, json.dumps({"verdict": plan.verdict.value, "notes": list(plan.notes),
                                             "at": _now().isoformat()}))
    for note in plan.notes:
        if note not in old_notes:
            _alert(ctx, symbol, note)


def _alert(ctx: ManagerContext, symbol: str, message: str) -> None:
    logs.event(log, "position_alert", level=logging.WARNING, symbol=symbol, message=message)
    bus.publish(ctx.client, ctx.keys, "alert", symbol=symbol, message=message)


def _fix(ctx: ManagerContext, symbol: str, trigger: Trigger, action: str, message: str, *,
         log_it: bool = True, **fields: object) -> None:
    """A fix the reconcile made: loud in the log, and published for `factoryline watch`."""
    if log_it:
        logs.event(log, "reconcile_fix", level=logging.WARNING, symbol=symbol, action=action, trigger=trigger.value,
                   detail=message, **fields)
    bus.publish(ctx.client, ctx.keys, "reconcile_fix", symbol=symbol, action=action, trigger=trigger.value,
                message=message, at=_now().isoformat(), **fields)




def _remember_refusal(ctx: ManagerContext, symbol: str, what: str) -> None:
    ctx.client.set(ctx.keys.manager_refused(symbol), what, ex=REFUSED_RETRY_SECONDS)


def _refused(ctx: ManagerContext, symbol: str, what: str) -> bool:
    stored = ctx.client.get(ctx.keys.manager_refused(symbol))
    return stored is not None and (stored == what or stored.startswith(what))


def _asset_tradable(ctx: ManagerContext, symbol: str) -> bool:
    try:
        tradable = ctx.executor.get_asset(symbol).tradable
    except BrokerError:
        return True  # unknown: the broker's answer to the order itself will tell
    if not tradable:
        exiting.mark_halted(ctx, symbol)
    return tradable


# -- small helpers -------------------------------------------------------------------------------------


def _read_all(ctx: ManagerContext) -> tuple[dict[str, Position], list[Order]]:
    if ctx.pool is None:
        positions, orders = ctx.executor.get_positions(), ctx.executor.get_open_orders()
    else:
        positions_f = ctx.pool.submit(ctx.executor.get_positions)
        orders = ctx.executor.get_open_orders()
        positions = positions_f.result()
    return {p.symbol: p for p in positions}, orders


def _stop_of(order: Order) -> Decimal | None:
    if order.stop_price is not None:
        return order.stop_price
    return next((leg.stop_price for leg in order.legs if leg.stop_price is not None), None)


def _seed(symbol: str, updates: Iterable[TradeUpdate]) -> _Seed:
    buys = [u for u in updates if u.order.symbol == symbol and u.order.side is Side.BUY
            and u.event in (TradeEventType.FILL, TradeEventType.PARTIAL_FILL)]
    if not buys:
        return _Seed()
    first = min(buys, key=lambda u: u.timestamp)
    whole = [u for u in buys if u.position_qty is not None and u.position_qty > ZERO
             and u.position_qty == u.order.filled_qty and u.order.filled_avg_price is not None]
    return _Seed(first_fill_at=first.order.filled_at or first.timestamp,
                 entry_client_order_id=first.order.client_order_id,
                 whole_position_fill=max(whole, key=lambda u: u.order.filled_qty) if whole else None,
                 fill_at=max(u.timestamp for u in buys))


def _failed(symbol: str, trigger: Trigger, exc: BaseException, *, quiet: bool = False) -> SymbolReport:
    logs.event(log, "first_protection_refused" if quiet else "reconcile_failed",
               level=logging.INFO if quiet else logging.WARNING, symbol=symbol, trigger=trigger.value,
               error=type(exc).__name__, reason=str(exc))
    return SymbolReport(symbol, trigger, error=exc)


def _now() -> datetime:
    return datetime.now(UTC)


def _now_ny(ctx: ManagerContext) -> datetime:
    return ctx.executor.get_clock().timestamp.astimezone(NEW_YORK)
