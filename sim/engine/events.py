"""Order status changes, their history and the trade events subscribers receive; the audit state."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from datetime import datetime

from shared.models import OrderStatus, can_transition
from sim.engine.orders import HistoryEntry, SimOrder, TradeEvent

log = logging.getLogger(__name__)


class IllegalTransition(RuntimeError):
    """An order state change `ORDER_TRANSITIONS` forbids: a bug of the simulated market."""




class Events:
    """Every state change recorded and delivered (a `MarketEngine` part)."""

    def events_since(self, seq: int) -> list[TradeEvent]:
        with self._lock:
            self._sync()
            start = bisect.bisect_right(self._events, seq, key=lambda e: e.seq)
            return self._events[start:]

    def subscribe(self, callback: Callable[[TradeEvent], None]) -> Callable[[], None]:
        """Call `callback(event)` for every later trade event; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def state(self) -> dict:
        """Everything, for audits: orders with their history, fills, positions, cash, refusals."""
        with self._lock:
            now = self._sync_now()
            account = self.account()
            return {
                "now": now,
                "account": account,
                "positions": [self._position_view(s, now) for s in sorted(self._holdings)],
                "orders": [self._order_state(o) for o in self._top_level],
                "fills": list(self._fills),
                "rejections": list(self._rejections),
                "splits": [{"type": a.type, **vars(a)} for a in self._splits],
                "event_count": len(self._events),
            }

    def _order_state(self, order: SimOrder) -> dict:
        return {
            "order": order.snapshot(),
            "history": [vars(entry) for entry in order.history],
            "legs": [
                {"order": leg.snapshot(), "history": [vars(e) for e in leg.history]} for leg in order.legs
            ],
        }

    def _group_of(self, order: SimOrder) -> SimOrder:
        return self._orders[order.parent_id] if order.parent_id else order

    def _set_status(
        self, order: SimOrder, status: OrderStatus, event: str, when: datetime, **details
    ) -> None:
        # The one table of legal order states (shared.models.ORDER_TRANSITIONS) is enforced here: a
        # change the table does not allow is a bug of this market, never a state Alpaca would report.
        if not can_transition(order.status, status):
            raise IllegalTransition(f"order {order.id}: {order.status.value} -> {status.value} is not a legal transition")
        order.status = status
        order.updated_at = when
        if not status.is_open:
            self._open.pop(order.id, None)
        self._record(
            order, event, when, details.get("qty"), details.get("price"), details.get("execution_id")
        )
        self._emit(order, event, when, **details)

    def _record(self, order, event, when, qty=None, price=None, execution_id=None) -> None:
        order.history.append(HistoryEntry(when, event, order.status, qty, price, execution_id))

    def _emit(self, order: SimOrder, event: str, when: datetime, **details) -> None:
        if order.parent_id is not None and event == "new":
            return  # a leg's activation is reported with its parent
        trade_event = TradeEvent(
            seq=len(self._events) + 1,
            event=event,
            order=order.snapshot(),
            timestamp=when,
            price=details.get("price"),
            qty=details.get("qty"),
            position_qty=details.get("position_qty"),
            execution_id=details.get("execution_id"),
        )
        self._events.append(trade_event)
        for callback in list(self._subscribers):
            try:
                callback(trade_event)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the market
                log.exception("sim trade-event subscriber failed")
