"""The exit procedure: sell a position a soft exit fired for, once, never short, never unprotected.

Under the symbol's lock (the one the protective reconcile takes, so no reconcile re-arms protection
halfway through):
1. cancel every open order of the symbol and wait until the broker has released the shares
   (`executor.cancel_all_for_symbol`); it answers with the position as it is now;
2. sell what is actually available at market, under a deterministic client order id
   (`<ns>-<day>-<SYMBOL>-exit-<reason>-<first fill epoch>`): a rerun after a crash finds the same
   order instead of selling twice;
3. wait until the sell is done and write what it sold to the ledger (once per closing order) with
   the exit reason.
If the broker's own stop or target filled while we were canceling, the position re-read in step 1
is smaller or gone: we sell only what remains, or nothing.

After the lock is released the symbol's reconcile runs: it writes the broker's own fills (stop or
target) to the ledger, clears the state when the position is flat, and when the sell was refused or
did not complete it places the protection again at once. A refusal is also an alert: an ERROR log
line and an `exit_failed` notification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

import redis

from services.manager import locks
from services.manager import reconcile as rec
from shared import bus, ledger, logs, selling
from shared import position_store as store
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.client_ids import make_client_order_id
from shared.errors import BrokerError, OrderRejected
from shared.exits import ExitDecision, ExitRules, PositionState
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK
from shared.models import Order
from shared.money import ZERO

log = logging.getLogger(__name__)

EXIT_KIND = "exit"
#: The reconcile's trigger name for what it does right after an exit (its fixes are reported).
RECONCILE_REASON = "exit"
#: How long a market sell may take to fill before we give up, cancel it and re-protect.
FILL_WAIT_SECONDS = 30.0
#: Exit sells tried for one position, reason and day (each attempt has its own client order id).


class ExitOutcome(StrEnum):
    SOLD = "sold"
    #: The broker's stop or target sold part of the position during the exit; we sold the rest.
    SOLD_REMAINDER = "sold remainder"
    #: The broker's stop or target sold everything first; nothing more was sold.
    ALREADY_CLOSED = "already closed"
    #: The sell was refused, or did not fill completely: protection placed again, alert raised.
    REFUSED = "refused"
    #: Another process held the symbol's lock too long; the next tick tries again.
    BUSY = "busy"


@dataclass
class ExitResult:
    symbol: str
    decision: ExitDecision
    outcome: ExitOutcome
    qty_sold: Decimal = ZERO
    order: Order | None = None
    trade: ClosedTrade | None = None
    detail: str = ""
    reconcile: rec.SymbolReport | None = None

    def summary(self) -> str:
        text = f"{self.symbol}: {self.decision.reason.value} -> {self.outcome.value}"
        if self.trade is not None:
            text += (f", sold {self.trade.qty} at {self.trade.exit_price} (entry {self.trade.entry_price}, "
                     f"P/L {self.trade.realized_pl})")
        if self.detail:
            text += f" ({self.detail})"
        return text


def exit_client_order_id(keys: Keys, state: PositionState, decision: ExitDecision, now: datetime,
                         attempt: int = 1) -> str:
    """Deterministic per position, reason and attempt: the position is identified by its first fill.
    A later attempt (the first was refused after a partial fill, or canceled unfilled) ends `-a<n>`."""
    parts: list[object] = [decision.reason.value, int(state.first_fill_at.timestamp())]
    if attempt > 1:
        parts.append(f"a{attempt}")
    return make_client_order_id(EXIT_KIND, state.symbol, *parts, day=now.astimezone(NEW_YORK).date(),
                                namespace=keys.ns)


def exit_position(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: Keys,
    state: PositionState,
    decision: ExitDecision,
    rules: ExitRules,
    *,
    now: datetime,
    lock_wait_seconds: float = locks.WAIT_SECONDS,
    fill_wait_seconds: float = FILL_WAIT_SECONDS,
) -> ExitResult:
    """Sell `state.symbol` for `decision` (see the module docstring). Never raises for broker trouble:
    the outcome says what happened."""
    symbol = state.symbol
    logs.event(log, "soft_exit_fired", symbol=symbol, exit_reason=decision.reason.value, detail=decision.detail)
    try:
        with locks.symbol_lock(client, keys, symbol, wait_seconds=lock_wait_seconds):
            result = _exit_locked(executor, client, keys, state, decision, now, fill_wait_seconds)
    except locks.SymbolBusy as exc:
        logs.event(log, "soft_exit_postponed", level=logging.WARNING, symbol=symbol, reason=str(exc))
        return ExitResult(symbol, decision, ExitOutcome.BUSY, detail=str(exc))
    except BrokerError as exc:
        # Cancel or read failed midway: some protection may be gone. The reconcile below restores it.
        result = ExitResult(symbol, decision, ExitOutcome.REFUSED, detail=f"{type(exc).__name__}: {exc}")
    # Outside the lock: the reconcile takes it itself. It settles the broker's own fills into the
    # ledger, clears the state once flat, and re-protects whatever is still held.
    result.reconcile = rec.reconcile_symbol(executor, client, keys, symbol, rules, RECONCILE_REASON)
    if result.outcome is ExitOutcome.REFUSED:
        _alert(client, keys, result)
    return result


def _exit_locked(executor: OrderExecutor, client: redis.Redis, keys: Keys, state: PositionState,
                 decision: ExitDecision, now: datetime, fill_wait_seconds: float) -> ExitResult:
    symbol = state.symbol
    position = executor.cancel_all_for_symbol(symbol)
    available = position.qty_available if position is not None else ZERO
    if available <= ZERO:
        logs.event(log, "soft_exit_found_position_closed", level=logging.WARNING, symbol=symbol,
                   exit_reason=decision.reason.value, reason="the broker's own exit filled first")
        return ExitResult(symbol, decision, ExitOutcome.ALREADY_CLOSED,
                          detail="the broker's stop or target sold the position first")
    try:
        order = selling.sell_once(executor, symbol, available, lambda n: exit_client_order_id(keys, state, decision, now, n))
    except OrderRejected as exc:
        return ExitResult(symbol, decision, ExitOutcome.REFUSED, detail=f"sell refused: {exc.message}")
    client_order_id = order.client_order_id
    order = selling.wait_until_done(executor, order, fill_wait_seconds)
    if order.status.is_open:
        # Not filled in time (a halted stock): take it back, so the reconcile can protect the shares.
        executor.cancel_all_for_symbol(symbol)
        order = executor.get_order_by_client_id(client_order_id) or order
    result = ExitResult(symbol, decision, ExitOutcome.SOLD, qty_sold=order.filled_qty, order=order)
    if order.filled_qty > ZERO and order.filled_avg_price is not None:
        record = store.load_record(client, keys, symbol)
        result.trade = ClosedTrade.of(
            symbol=symbol, qty=order.filled_qty, entry_price=position.avg_entry_price,
            exit_price=order.filled_avg_price, exit_reason=decision.reason, opened_at=state.first_fill_at,
            closed_at=order.filled_at or order.updated_at, closing_order_id=order.id,
            closing_client_order_id=client_order_id, entry_client_order_id=record.entry_client_order_id,
        )
        if ledger.append_once(client, keys, result.trade):
            ledger.announce(client, keys, result.trade)
    if order.filled_qty < available:
        result.outcome = ExitOutcome.REFUSED
        result.detail = f"the market sell filled {order.filled_qty} of {available} ({order.status.value})"
    elif position.qty < state.qty:
        result.outcome = ExitOutcome.SOLD_REMAINDER
        result.detail = f"the broker's protection sold {state.qty - position.qty} first"
    return result


def _alert(client: redis.Redis, keys: Keys, result: ExitResult) -> None:
    reprotected = result.reconcile is not None and result.reconcile.error is None
    logs.event(log, "exit_failed", level=logging.ERROR, symbol=result.symbol,
               exit_reason=result.decision.reason.value, reason=result.detail, reprotected=reprotected,
               reconcile=result.reconcile.summary() if result.reconcile else None)
    bus.publish(client, keys, "exit_failed", symbol=result.symbol, exit_reason=result.decision.reason.value,
                reason=result.detail, reprotected=reprotected)
