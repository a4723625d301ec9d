"""The reconcile's ledger sync: what the broker's own orders sold goes to the ledger, once.

- `settle_closed_protection`: protective orders in the position's record that are no longer open are
  looked up by client order id; what they sold is written to the ledger (once per closing order) and
  they leave the record. The parts one pass finds for the same reason (the whole shares' OCO stop
  and the fractional remainder's day stop, hit by the same price) are ONE closed trade.
- `close_out`: the position is gone. Sells the line did not place (by hand at the broker) go to the
  ledger as MANUAL unless their exit is already recorded (a soft exit writes its own); then the
  state is forgotten.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import ledger, logs, metrics
from shared import position_store as store
from shared.exits import ExitReason, PositionState
from shared.ledger import ClosedTrade
from shared.models import Order, OrderType, Side
from shared.money import ZERO

if TYPE_CHECKING:
    from shared.positions.context import ManagerContext
    from shared.positions.reconcile import SymbolReport

log = logging.getLogger(__name__)


def settle_closed_protection(ctx: ManagerContext, symbol: str, state: PositionState | None,
                             record: store.ProtectionRecord, orders: list[Order],
                             report: SymbolReport) -> store.ProtectionRecord:
    """Write what our closed protective orders sold, and drop them from the record."""
    open_ids = {o.client_order_id for parent in orders for o in parent.all_orders() if o.status.is_open}
    gone = [cid for cid in record.client_order_ids if cid not in open_ids]
    if not gone:
        return record
    still_open: list[str] = []
    parts: list[ClosedTrade] = []
    for cid in gone:
        order = ctx.executor.get_order_by_client_id(cid)
        if order is not None and order.status.is_open:
            still_open.append(cid)  # opened since our read (or listed late): keep tracking it
            continue
        if order is not None and state is not None:
            parts += _closing_parts(order, state, record, cid)
    record_trades(ctx, one_trade_per_reason(parts), report)
    record = record.model_copy(update={"client_order_ids": [c for c in record.client_order_ids
                                                            if c not in gone or c in still_open]})
    store.save(ctx.client, ctx.keys, None, record)
    return record


def close_out(ctx: ManagerContext, symbol: str, state: PositionState | None, record: store.ProtectionRecord,
              report: SymbolReport) -> None:
    """The position is gone: record the sells nobody recorded as MANUAL (for a position the line
    entered; what a user does with their own position is not the line's trade), then forget it."""
    if state is not None and not state.foreign:
        parts = []
        for order in ctx.executor.get_orders_updated_since(state.first_fill_at):
            for part in order.all_orders():
                if (part.symbol != symbol or part.side is not Side.SELL or part.filled_qty <= ZERO
                        or part.filled_avg_price is None or ledger.is_recorded(ctx.client, ctx.keys, part.id)):
                    continue
                parts.append(_trade(state, record, part, ExitReason.MANUAL))
                logs.event(log, "position_sold_outside_manager", level=logging.WARNING, symbol=symbol,
                           client_order_id=part.client_order_id, qty=part.filled_qty)
        record_trades(ctx, one_trade_per_reason(parts), report)
    store.clear(ctx.client, ctx.keys, symbol)
    logs.event(log, "position_state_cleared", symbol=symbol, trades=len(report.closed))


def record_trades(ctx: ManagerContext, trades: list[ClosedTrade], report: SymbolReport | None = None) -> None:
    for trade in trades:
        if ledger.append_once(ctx.client, ctx.keys, trade):
            if report is not None:
                report.closed.append(trade)
            ledger.announce(ctx.client, ctx.keys, trade)
            metrics.count_exit(ctx.client, ctx.keys, trade.exit_reason.value)


def one_trade_per_reason(parts: list[ClosedTrade]) -> list[ClosedTrade]:
    """The parts of one close found together, one trade per exit reason (oldest reason first)."""
    by_reason: dict[ExitReason, list[ClosedTrade]] = {}
    for part in sorted(parts, key=lambda t: t.closed_at):
        by_reason.setdefault(part.exit_reason, []).append(part)
    return [group[0] if len(group) == 1 else ClosedTrade.merge(group) for group in by_reason.values()]


def _closing_parts(order: Order, state: PositionState, record: store.ProtectionRecord,
                   protective_cid: str) -> list[ClosedTrade]:
    return [_trade(state, record, part, ExitReason.TAKE_PROFIT if part.type is OrderType.LIMIT
                   else ExitReason.STOP_LOSS, protective_cid)
            for part in order.all_orders()
            if part.side is Side.SELL and part.filled_qty > ZERO and part.filled_avg_price is not None]


def _trade(state: PositionState, record: store.ProtectionRecord, part: Order, reason: ExitReason,
           protective_cid: str | None = None) -> ClosedTrade:
    return ClosedTrade.of(
        symbol=state.symbol, qty=part.filled_qty, entry_price=state.entry_price,
        exit_price=part.filled_avg_price, exit_reason=reason, opened_at=state.first_fill_at,
        closed_at=part.filled_at or part.updated_at, closing_order_id=part.id,
        closing_client_order_id=part.client_order_id, protective_client_order_id=protective_cid,
        entry_client_order_id=record.entry_client_order_id,
    )
