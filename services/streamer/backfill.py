"""Backfill: what the trade-update stream missed while it was disconnected, rebuilt from orders.

Reads: the broker's orders updated since the last event recorded (minus a safety margin; at first
start since the start of the current trading day). Decides (pure, `implied_updates`): the update(s)
each order's current state implies, built so their event ids equal the live ones. Writes: those
updates through the recorder, whose dedup drops what the live stream already delivered.

Mapping (event id = order id : event : cumulative filled qty, see `TradeUpdate.event_id`):
- filled                          -> fill at the filled qty
- any other status with fills     -> partial_fill at the cumulative filled qty, then its own event
- canceled / expired / rejected / done_for_day / replaced -> that event
- new (and pending_cancel / pending_replace etc. without fills) -> new;  accepted -> accepted;
  pending_new -> pending_new;  held (an OCO/bracket leg not yet active) -> nothing
The broker contract's `get_orders_updated_since` returns every order changed since the start,
including an old GTC protective stop that filled during the gap (the Alpaca adapter looks back over
a GTC order's lifetime to find it). Intermediate partial fills the stream missed are not rebuilt: only the latest cumulative quantity
is known, and that is what the manager acts on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta

from shared import logs
from shared.broker.contract import OrderExecutor
from shared.market.calendar import NEW_YORK
from shared.models import Order, OrderStatus, TradeEventType, TradeUpdate

from .recorder import Batch, Recorder

log = logging.getLogger(__name__)

_S = OrderStatus
_E = TradeEventType

#: Statuses whose event carries the same name.
_TERMINAL_EVENT = {
    _S.CANCELED: _E.CANCELED,
    _S.EXPIRED: _E.EXPIRED,
    _S.REJECTED: _E.REJECTED,
    _S.DONE_FOR_DAY: _E.DONE_FOR_DAY,
    _S.REPLACED: _E.REPLACED,
}
#: Open statuses that say nothing beyond "accepted by the market" (and no fill yet).
_RESTING_EVENT = {
    _S.ACCEPTED: _E.ACCEPTED,
    _S.PENDING_NEW: _E.PENDING_NEW,
    _S.NEW: _E.NEW,
    _S.PENDING_CANCEL: _E.NEW,
    _S.PENDING_REPLACE: _E.NEW,
    _S.ACCEPTED_FOR_BIDDING: _E.NEW,
    _S.STOPPED: _E.NEW,
    _S.SUSPENDED: _E.NEW,
    _S.CALCULATED: _E.NEW,
}


def implied_updates(orders: Iterable[Order], since: datetime | None = None) -> list[TradeUpdate]:
    """The trade updates the orders' current states imply, oldest first (legs included); with
    `since`, only for orders updated at or after it."""
    latest: dict[str, Order] = {}
    for parent in orders:
        for order in parent.all_orders():
            known = latest.get(order.id)
            if known is None or order.updated_at >= known.updated_at:
                latest[order.id] = order
    changed = [o for o in latest.values() if since is None or o.updated_at >= since]
    updates = [u for order in changed for u in _updates_of(order)]
    # Stable sort: an order's partial_fill stays ahead of its cancel at the same instant.
    return sorted(updates, key=lambda u: u.timestamp)


def _updates_of(order: Order) -> list[TradeUpdate]:
    flat = order.model_copy(update={"legs": []})
    if order.status == _S.FILLED:
        return [_update(_E.FILL, flat, order.filled_at or order.updated_at)]
    result = []
    if order.filled_qty > 0:
        result.append(_update(_E.PARTIAL_FILL, flat, order.filled_at or order.updated_at))
    event = _TERMINAL_EVENT.get(order.status)
    if event is None and not result:
        event = _RESTING_EVENT.get(order.status)
    if event is not None:
        result.append(_update(event, flat, order.updated_at))
    return result


def _update(event: TradeEventType, order: Order, at: datetime) -> TradeUpdate:
    fill = event in (_E.FILL, _E.PARTIAL_FILL)
    # Fill events carry the cumulative average price: the per-execution price is not recoverable.
    return TradeUpdate(event=event, order=order, timestamp=at, price=order.filled_avg_price if fill else None)


def backfill_since(high_water: datetime | None, margin: timedelta) -> datetime | None:
    """Where a backfill starts: the last event's time minus the margin; None = first start."""
    return None if high_water is None else high_water - margin


def trading_day_start(today: date, trading_days: Iterable[date]) -> datetime:
    """Midnight New York of the latest trading day on or before `today` (pre-market orders count)."""
    earlier = [d for d in trading_days if d <= today]
    day = max(earlier) if earlier else today
    return datetime.combine(day, time(0), tzinfo=NEW_YORK)


def first_start_since(executor: OrderExecutor) -> datetime:
    """The start of the broker's current trading day (the simulator's virtual one under the sim)."""
    now = executor.get_clock().timestamp
    today = now.astimezone(NEW_YORK).date()
    days = [d.date for d in executor.get_calendar(today - timedelta(days=10), today)]
    return trading_day_start(today, days)


class Backfiller:
    """Runs requested backfills on its own thread, retrying the broker until each one succeeds:
    a request is never dropped, and requests that pile up merge into the earliest `since`."""

    RETRY_FIRST_DELAY = 1.0
    RETRY_MAX_DELAY = 30.0
    _UNSET = object()

    def __init__(
        self,
        executor: OrderExecutor,
        recorder: Recorder,
        *,
        on_done: Callable[[datetime, int, Batch], None] | None = None,
    ):
        self.executor = executor
        self.recorder = recorder
        self.on_done = on_done
        self._cond = threading.Condition()
        self._pending: object = self._UNSET
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self, since: datetime | None) -> None:
        """Backfill from `since` (None: from the start of the current trading day)."""
        with self._cond:
            self._pending = _earliest(self._pending, since)
            self._cond.notify()

    def idle(self) -> bool:
        return self._pending is self._UNSET and not self._busy

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="streamer-backfill", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        delay = self.RETRY_FIRST_DELAY
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not self._UNSET or self._stopping)
                if self._stopping:
                    return
                since, self._pending, self._busy = self._pending, self._UNSET, True
            try:
                self.run_once(since)  # type: ignore[arg-type]
                delay = self.RETRY_FIRST_DELAY
            except Exception as exc:
                logs.event(log, "backfill_failed_retrying", level=logging.WARNING,
                           since=since.isoformat() if isinstance(since, datetime) else "trading_day_start",
                           error=f"{type(exc).__name__}: {logs.redact(str(exc))}", retry_in=delay)
                with self._cond:
                    self._pending = _earliest(self._pending, since)  # type: ignore[arg-type]
                    self._busy = False
                    self._cond.wait_for(lambda: self._stopping, delay)
                delay = min(delay * 2, self.RETRY_MAX_DELAY)
                continue
            with self._cond:
                self._busy = False

    def run_once(self, since: datetime | None) -> Batch:
        """One backfill: ask the broker, queue the implied updates for recording."""
        start = first_start_since(self.executor) if since is None else since
        orders = self.executor.get_orders_updated_since(start)
        updates = implied_updates(orders, since=start)
        logs.event(log, "backfill_fetched", since=start.isoformat(), orders=len(orders), updates=len(updates))

        def done(batch: Batch) -> None:
            logs.event(log, "backfill_done", since=start.isoformat(), updates=batch.total, added=batch.added)
            if self.on_done is not None:
                self.on_done(start, len(orders), batch)

        return self.recorder.submit_many(updates, source="backfill", on_done=done)


def _earliest(pending: object, since: datetime | None) -> datetime | None:
    if pending is Backfiller._UNSET:
        return since
    if pending is None or since is None:
        return None
    return min(pending, since)  # type: ignore[type-var]
