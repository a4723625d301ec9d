"""`factoryline flatten`: cancel the line's orders and sell the line's positions, once, never short.

For every symbol the line manages (a position it entered, a position it protects under
FL_FOREIGN_POSITIONS=protect, or an open order of its own), under the symbol's lock (the one the
manager's reconcile and the soft exits take, so nothing re-arms protection halfway through), the
manager's one safe exit (`shared.positions.exiting.sell_out`) runs with the reason MANUAL:
1. an asset that does not trade (halted) keeps every order: nothing is cancelled, the outcome says so;
2. the line's own open orders are cancelled and the shares released (the user's orders, and the
   shares they hold, are left alone);
3. what is available is sold at market under a deterministic client order id
   (`<ns>-<day>-<SYMBOL>-flatten[-a<n>]`): a rerun after a crash finds the same sell instead of
   selling twice, and a finished earlier flatten of the day moves to the next attempt's id;
4. what it sold goes to the ledger as a MANUAL exit.
Then the symbol's reconcile runs: it clears the state of a flat position, and when the sell was
refused or did not fill it places the protection again, so a failed flatten never leaves shares naked.

The caller sets the halt flag first, so no entry and no soft-exit tick races the flatten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared import logs
from shared import position_store as store
from shared.bus import Keys
from shared.client_ids import make_client_order_id
from shared.exits import ExitReason
from shared.market.calendar import NEW_YORK
from shared.models import Order, Position
from shared.money import ZERO
from shared.ownership import ForeignPolicy, is_ours
from shared.positions import exiting, locks
from shared.positions.context import ManagerContext

log = logging.getLogger(__name__)

FLATTEN_KIND = "flatten"


@dataclass
class FlattenResult:
    symbol: str
    #: sold | nothing to sell | refused | short (left alone) | busy
    outcome: str
    held_before: Decimal = ZERO
    qty_sold: Decimal = ZERO
    price: Decimal | None = None
    client_order_id: str = ""
    detail: str = ""
    canceled_only: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in ("sold", "nothing to sell")


def flatten_client_order_id(keys: Keys, symbol: str, day, attempt: int) -> str:
    parts = [f"a{attempt}"] if attempt > 1 else []
    return make_client_order_id(FLATTEN_KIND, symbol, *parts, day=day, namespace=keys.ns)


def managed_symbols(ctx: ManagerContext, positions: dict[str, Position], orders: list[Order]) -> tuple[list[str], list[str]]:
    """(symbols flatten sells or cancels, symbols it leaves alone: foreign positions under
    FL_FOREIGN_POSITIONS=ignore, and symbols where only the user's orders are open)."""
    ours = {o.symbol for o in orders if is_ours(o.client_order_id, ctx.keys.ns)}
    managed, left = [], []
    for symbol in sorted(set(positions) | {o.symbol for o in orders}):
        if symbol not in positions:
            (managed if symbol in ours else left).append(symbol)
            continue
        state = store.load_state(ctx.client, ctx.keys, symbol)
        foreign = state.foreign if state is not None else True
        if foreign and ctx.foreign_policy is ForeignPolicy.IGNORE:
            left.append(symbol)
        else:
            managed.append(symbol)
    return managed, left


def flatten_symbol(ctx: ManagerContext, symbol: str, *, now: datetime) -> FlattenResult:
    """Cancel ours, sell what is available, record; never raises for broker trouble (the outcome says)."""
    day = now.astimezone(NEW_YORK).date()
    try:
        with locks.symbol_lock(ctx.client, ctx.keys, symbol, wait_seconds=ctx.lock_wait_seconds):
            position = ctx.executor.get_position(symbol)
            if position is not None and position.qty < ZERO:
                # Flatten sells; buying back a short is a person's decision (one is never expected here).
                result = FlattenResult(symbol, "short (left alone)", held_before=position.qty,
                                       detail="a short position: buy it back by hand")
            else:
                state = store.load_state(ctx.client, ctx.keys, symbol)
                sold = exiting.sell_out(ctx, state, ExitReason.MANUAL,
                                        lambda n: flatten_client_order_id(ctx.keys, symbol, day, n), symbol=symbol)
                result = _as_flatten_result(sold)
    except locks.SymbolBusy as exc:
        return FlattenResult(symbol, "busy", detail=str(exc))
    # Outside the lock (it takes it itself): clears a flat position's state, re-protects what is still held.
    from shared.positions import reconcile as rec
    from shared.protection import Trigger

    report = rec.reconcile_symbol(ctx, symbol, Trigger.EXIT)
    if not result.ok and report.placed:
        result.detail += "; protection placed again"
    logs.event(log, "flatten_symbol_done", level=logging.INFO if result.ok else logging.ERROR, symbol=symbol,
               client_order_id=result.client_order_id or None, outcome=result.outcome, qty=result.qty_sold,
               detail=result.detail or None)
    return result


def _as_flatten_result(sold: exiting.ExitResult) -> FlattenResult:
    order = sold.order
    common = dict(held_before=sold.held_before, qty_sold=sold.qty_sold,
                  price=order.filled_avg_price if order is not None else None,
                  client_order_id=order.client_order_id if order is not None else "")
    if sold.outcome is exiting.ExitOutcome.ALREADY_CLOSED:
        return FlattenResult(sold.symbol, "nothing to sell", canceled_only=True,
                             detail="no position; the line's open orders canceled", **common)
    if sold.outcome is exiting.ExitOutcome.REFUSED:
        return FlattenResult(sold.symbol, "refused", detail=sold.detail, **common)
    return FlattenResult(sold.symbol, "sold", **common)
