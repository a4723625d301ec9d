"""The safe exit: sell a position once, never short, never leaving shares naked. Every exit runs it:
the soft exits (tick), the reconcile's exits at a level the price is already through, and flatten.

Under the symbol's lock (the one the protective reconcile takes, so nothing re-arms protection
halfway through), `sell_out`:
1. checks that the asset trades: a halted or non-tradable asset keeps every order as it is (a
   working stop is never cancelled before a sell can go through) and the outcome is REFUSED;
2. cancels the line's own open orders of the symbol (never the user's) and waits until the broker
   has released the shares (`shared.broker.procedures.cancel_and_release`);
3. sells what is actually available at market, exactly once, under a deterministic client order id
   (a rerun after a crash finds the same order instead of selling twice);
4. waits until the sell is done (a sell still open after the wait is taken back) and writes what it
   sold to the ledger (once per closing order) with the exit reason.
If the broker's own stop or target filled while we were canceling, the position re-read in step 2
is smaller or gone: we sell only what remains, or nothing.

After the lock is released `exit_position` runs the symbol's reconcile: it writes the broker's own
fills to the ledger, clears the state when the position is flat, and when the sell was refused or
did not complete it places the protection again at once. A refusal is also an alert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from shared import bus, logs
from shared.broker import procedures
from shared.bus import Keys
from shared.client_ids import make_client_order_id
from shared.errors import BrokerError, NotTradable, OrderRejected
from shared.exits import ExitDecision, ExitReason, PositionState
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK
from shared.models import Order, Side
from shared.money import ZERO
from shared.ownership import is_ours
from shared.positions import locks, settle
from shared.protection import Trigger

if TYPE_CHECKING:
    from shared.positions.context import ManagerContext
    from shared.positions.reconcile import SymbolReport

log = logging.getLogger(__name__)

EXIT_KIND = "exit"
#: A symbol whose orders were refused as not tradable is treated as halted this long (then re-checked).
HALTED_SECONDS = 900


class ExitOutcome(StrEnum):
    SOLD = "sold"
    #: The broker's stop or target sold part of the position during the exit; we sold the rest.
    SOLD_REMAINDER = "sold remainder"
    #: The broker's stop or target sold everything first; nothing more was sold.
    ALREADY_CLOSED = "already closed"
    #: The sell was refused, could not be sent (halted) or did not fill completely: protection
    #: kept or placed again, alert raised.
    REFUSED = "refused"
    #: Another process held the symbol's lock too long; the next tick tries again.
    BUSY = "busy"


@dataclass
class ExitResult:
    symbol: str
    reason: ExitReason
    outcome: ExitOutcome
    qty_sold: Decimal = ZERO
    order: Order | None = None
    trade: ClosedTrade | None = None
    detail: str = ""
    held_before: Decimal = ZERO
    reconcile: SymbolReport | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in (ExitOutcome.SOLD, ExitOutcome.SOLD_REMAINDER, ExitOutcome.ALREADY_CLOSED)

    def summary(self) -> str:
        text = f"{self.symbol}: {self.reason.value} -> {self.outcome.value}"
        if self.trade is not None:
            text += (f", sold {self.trade.qty} at {self.trade.exit_price} (entry {self.trade.entry_price}, "
                     f"P/L {self.trade.realized_pl:.2f})")
        if self.detail:
            text += f" ({self.detail})"
        return text


def exit_client_order_id(keys: Keys, state: PositionState, reason: ExitReason, now: datetime,
                         attempt: int = 1) -> str:
    """Deterministic per position, reason and attempt: the position is identified by its first fill.
    A later attempt (the first was refused after a partial fill, or canceled unfilled) ends `-a<n>`."""
    parts: list[object] = [reason.value, int(state.first_fill_at.timestamp())]
    if attempt > 1:
        parts.append(f"a{attempt}")
    return make_client_order_id(EXIT_KIND, state.symbol, *parts, day=now.astimezone(NEW_YORK).date(),
                                namespace=keys.ns)


def level_exit_client_order_id(keys: Keys, state: PositionState, reason: ExitReason,
                               now: datetime) -> Callable[[int], str]:
    return lambda attempt: exit_client_order_id(keys, state, reason, now, attempt)


def exit_position(ctx: ManagerContext, state: PositionState, decision: ExitDecision, *, now: datetime,
                  client_order_id: Callable[[int], str] | None = None) -> ExitResult:
    """Sell `state.symbol` for `decision` under the symbol's lock, then reconcile it. Never raises for
    broker trouble: the outcome says what happened."""
    symbol = state.symbol
    logs.event(log, "soft_exit_fired", symbol=symbol, exit_reason=decision.reason.value, detail=decision.detail)
    ids = client_order_id or level_exit_client_order_id(ctx.keys, state, decision.reason, now)
    try:
        with locks.symbol_lock(ctx.client, ctx.keys, symbol, wait_seconds=ctx.lock_wait_seconds):
            result = sell_out(ctx, state, decision.reason, ids, detail=decision.detail)
    except locks.SymbolBusy as exc:
        logs.event(log, "soft_exit_postponed", level=logging.WARNING, symbol=symbol, reason=str(exc))
        return ExitResult(symbol, decision.reason, ExitOutcome.BUSY, detail=str(exc))
    after_exit(ctx, result)
    return result


def after_exit(ctx: ManagerContext, result: ExitResult) -> None:
    """Outside the lock (the reconcile takes it itself): settle the broker's own fills into the
    ledger, clear the state once flat, and re-protect whatever is still held; alert on a refusal."""
    from shared.positions import reconcile as rec

    result.reconcile = rec.reconcile_symbol(ctx, result.symbol, Trigger.EXIT)
    if result.outcome is ExitOutcome.REFUSED:
        reprotected = result.reconcile.error is None
        logs.event(log, "exit_failed", level=logging.ERROR, symbol=result.symbol, exit_reason=result.reason.value,
                   reason=result.detail, reprotected=reprotected, reconcile=result.reconcile.summary())
        bus.publish(ctx.client, ctx.keys, "exit_failed", symbol=result.symbol, exit_reason=result.reason.value,
                    reason=result.detail, reprotected=reprotected)


def sell_out(ctx: ManagerContext, state: PositionState | None, reason: ExitReason,
             client_order_id: Callable[[int], str], *, symbol: str | None = None, detail: str = "") -> ExitResult:
    """Steps 1-4 of the module docstring, with the symbol's lock already held. `state` may be None
    (flatten of a position the manager never saw): the ledger then dates its opening at the sale."""
    symbol = symbol or state.symbol
    try:
        asset = ctx.executor.get_asset(symbol)
        if not asset.tradable or marked_halted(ctx, symbol):
            return ExitResult(symbol, reason, ExitOutcome.REFUSED,
                              detail=f"{symbol} is not tradable (halted?): protection kept, retried next pass")
        ours = [o.id for o in ctx.executor.get_open_orders(symbol) if is_ours(o.client_order_id, ctx.keys.ns)]
        position, _orders = procedures.cancel_and_release(ctx.executor, symbol, ours)
        held = position.qty if position is not None else ZERO
        available = position.qty_available if position is not None and position.qty > ZERO else ZERO
        if available <= ZERO:
            if held > ZERO:
                return ExitResult(symbol, reason, ExitOutcome.REFUSED, held_before=held,
                                  detail="no shares available to sell (the user's orders hold them)")
            logs.event(log, "exit_found_position_closed", level=logging.WARNING, symbol=symbol,
                       exit_reason=reason.value, reason="the broker's own exit filled first")
            return ExitResult(symbol, reason, ExitOutcome.ALREADY_CLOSED, held_before=held,
                              detail="the broker's stop or target sold the position first")
        try:
            order = procedures.submit_once(ctx.executor, lambda cid: ctx.executor.sell_market(symbol, available, cid),
                                           client_order_id, side=Side.SELL)
        except NotTradable as exc:
            mark_halted(ctx, symbol)
            return ExitResult(symbol, reason, ExitOutcome.REFUSED, held_before=held,
                              detail=f"sell refused: {exc.message}")
        except OrderRejected as exc:
            return ExitResult(symbol, reason, ExitOutcome.REFUSED, held_before=held,
                              detail=f"sell refused: {exc.message}")
        order = procedures.wait_until_done(ctx.executor, order, ctx.fill_wait_seconds)
        if order.status.is_open:
            # Not filled in time: take it back, so the reconcile can protect the shares.
            procedures.cancel_and_release(ctx.executor, symbol, [order.id])
            order = ctx.executor.get_order_by_client_id(order.client_order_id) or order
    except BrokerError as exc:
        # A cancel or read failed midway: some protection may be gone; the reconcile restores it.
        return ExitResult(symbol, reason, ExitOutcome.REFUSED, detail=f"{type(exc).__name__}: {exc}")
    result = ExitResult(symbol, reason, ExitOutcome.SOLD, qty_sold=order.filled_qty, order=order, held_before=held,
                        detail=detail)
    if order.filled_qty > ZERO and order.filled_avg_price is not None:
        result.trade = _trade(ctx, symbol, state, position.avg_entry_price, order, reason)
        settle.record_trades(ctx, [result.trade])
    if order.filled_qty < available:
        result.outcome = ExitOutcome.REFUSED
        result.detail = f"the market sell filled {order.filled_qty} of {available} ({order.status.value})"
    elif state is not None and position.qty < state.qty:
        result.outcome = ExitOutcome.SOLD_REMAINDER
        result.detail = f"the broker's protection sold {state.qty - position.qty} first"
    return result




def mark_halted(ctx: ManagerContext, symbol: str) -> None:
    ctx.client.set(ctx.keys.manager_halted(symbol), "1", ex=HALTED_SECONDS)


def marked_halted(ctx: ManagerContext, symbol: str) -> bool:
    return bool(ctx.client.exists(ctx.keys.manager_halted(symbol)))


def _trade(ctx: ManagerContext, symbol: str, state: PositionState | None, entry_price: Decimal, order: Order,
           reason: ExitReason) -> ClosedTrade:
    from shared import position_store as store

    record = store.load_record(ctx.client, ctx.keys, symbol)
    closed_at = order.filled_at or order.updated_at
    return ClosedTrade.of(
        symbol=symbol, qty=order.filled_qty, entry_price=entry_price, exit_price=order.filled_avg_price,
        exit_reason=reason,
        # A position the manager never saw has no first fill on record: opened "now", like an adoption.
        opened_at=state.first_fill_at if state is not None else closed_at,
        closed_at=closed_at, closing_order_id=order.id, closing_client_order_id=order.client_order_id,
        entry_client_order_id=record.entry_client_order_id,
    )
