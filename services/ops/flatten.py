"""`factoryline flatten`: cancel everything and sell everything, once, never short.

For every symbol with a position or an open order, under the symbol's lock (the one the manager's
reconcile and the soft exits take, so nothing re-arms protection halfway through):
1. cancel every open order of the symbol and wait until the broker has released the shares
   (`executor.cancel_all_for_symbol`), which answers with the position as it now stands;
2. sell what is actually available at market under a deterministic client order id
   (`<ns>-<day>-<SYMBOL>-flatten[-a<n>]`): a rerun after a crash finds the same sell instead of
   selling twice, and a finished earlier flatten of the day moves to the next attempt's id;
3. wait until the sell is done and write what it sold to the ledger as a MANUAL exit.
Then the symbol's reconcile runs: it clears the state of a flat position, and when the sell was
refused or did not fill it places the protection again, so a failed flatten never leaves shares naked.

The caller sets the halt flag first, so no entry and no soft-exit tick races the flatten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import redis

from services.manager import locks
from services.manager import reconcile as rec
from shared import ledger, logs, selling
from shared import position_store as store
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.client_ids import make_client_order_id
from shared.errors import BrokerError, OrderRejected
from shared.exits import ExitReason, ExitRules
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK
from shared.models import Order
from shared.money import ZERO

log = logging.getLogger(__name__)

FLATTEN_KIND = "flatten"
#: The reconcile's trigger name for what it does right after a flatten.
RECONCILE_REASON = "flatten"
FILL_WAIT_SECONDS = 30.0


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


def flatten_symbol(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str, rules: ExitRules, *,
                   now: datetime, fill_wait_seconds: float = FILL_WAIT_SECONDS,
                   lock_wait_seconds: float = locks.WAIT_SECONDS) -> FlattenResult:
    """Cancel, sell what is available, record; never raises for broker trouble (the outcome says)."""
    try:
        with locks.symbol_lock(client, keys, symbol, wait_seconds=lock_wait_seconds):
            result = _flatten_locked(executor, client, keys, symbol, now, fill_wait_seconds)
    except locks.SymbolBusy as exc:
        return FlattenResult(symbol, "busy", detail=str(exc))
    except BrokerError as exc:
        result = FlattenResult(symbol, "refused", detail=f"{type(exc).__name__}: {exc}")
    # Outside the lock (it takes it itself): clears a flat position's state, re-protects what is still held.
    report = rec.reconcile_symbol(executor, client, keys, symbol, rules, RECONCILE_REASON)
    if not result.ok and report.placed:
        result.detail += "; protection placed again"
    logs.event(log, "flatten_symbol_done", level=logging.INFO if result.ok else logging.ERROR, symbol=symbol,
               client_order_id=result.client_order_id or None, outcome=result.outcome, qty=result.qty_sold,
               detail=result.detail or None)
    return result


def _flatten_locked(executor: OrderExecutor, client: redis.Redis, keys: Keys, symbol: str, now: datetime,
                    fill_wait_seconds: float) -> FlattenResult:
    position = executor.cancel_all_for_symbol(symbol)
    if position is None or position.qty == ZERO:
        return FlattenResult(symbol, "nothing to sell", canceled_only=True, detail="no position; open orders canceled")
    if position.qty < ZERO:
        # Flatten sells; buying back a short is a person's decision (one is never expected here).
        return FlattenResult(symbol, "short (left alone)", held_before=position.qty,
                             detail="a short position: buy it back by hand")
    available = position.qty_available
    if available <= ZERO:
        return FlattenResult(symbol, "refused", held_before=position.qty, detail="no shares available to sell")
    day = now.astimezone(NEW_YORK).date()
    try:
        order = selling.sell_once(executor, symbol, available, lambda n: flatten_client_order_id(keys, symbol, day, n),
                                  what="flatten")
    except OrderRejected as exc:
        return FlattenResult(symbol, "refused", held_before=position.qty, detail=f"sell refused: {exc.message}")
    cid = order.client_order_id
    order = selling.wait_until_done(executor, order, fill_wait_seconds)
    if order.status.is_open:
        # Not filled in time (a halted stock): take it back so the reconcile can protect the shares.
        executor.cancel_all_for_symbol(symbol)
        order = executor.get_order_by_client_id(cid) or order
    result = FlattenResult(symbol, "sold", held_before=position.qty, qty_sold=order.filled_qty,
                           price=order.filled_avg_price, client_order_id=cid)
    if order.filled_qty > ZERO and order.filled_avg_price is not None:
        _record(client, keys, symbol, position.avg_entry_price, order)
    if order.filled_qty < available:
        result.outcome = "refused"
        result.detail = f"the market sell filled {order.filled_qty} of {available} ({order.status.value})"
    return result


def _record(client: redis.Redis, keys: Keys, symbol: str, entry_price: Decimal, order: Order) -> None:
    state = store.load_state(client, keys, symbol)
    record = store.load_record(client, keys, symbol)
    closed_at = order.filled_at or order.updated_at
    trade = ClosedTrade.of(
        symbol=symbol, qty=order.filled_qty, entry_price=entry_price, exit_price=order.filled_avg_price,
        exit_reason=ExitReason.MANUAL,
        # A position the manager never saw has no first fill on record: opened "now", like an adoption.
        opened_at=state.first_fill_at if state is not None else closed_at,
        closed_at=closed_at, closing_order_id=order.id, closing_client_order_id=order.client_order_id,
        entry_client_order_id=record.entry_client_order_id,
    )
    if ledger.append_once(client, keys, trade):
        ledger.announce(client, keys, trade)
