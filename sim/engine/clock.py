"""The simulator's virtual clock, and the engine's time: the NYSE sessions it crosses.

`now = anchor + speed * wall_elapsed + manual_offset`. Speed 0 freezes time (tests, demos): it then
moves only by `advance`/`advance_to`. Speed 1 follows the wall clock; 60 makes a minute pass every
second. Times are timezone-aware (UTC inside, shown in New York time by callers).

`Sessions` is the engine's part that catches the market up to the clock: at each session open queued
orders become `new` and marketable ones fill; `day` orders expire at the close.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shared.models import OrderStatus, TimeInForce, TradingDay


class VirtualClock:
    def __init__(self, start: datetime, speed: float = 0.0, wall: Callable[[], float] = time.monotonic):
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("the clock's start must be timezone-aware")
        if speed < 0:
            raise ValueError("clock speed cannot be negative")
        self._wall = wall
        self._lock = threading.Lock()
        self._anchor = start.astimezone(UTC)
        self._anchor_wall = wall()
        self._speed = float(speed)
        self._offset = timedelta(0)

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        with self._lock:
            return self._now_locked()

    def _now_locked(self) -> datetime:
        elapsed = (self._wall() - self._anchor_wall) * self._speed if self._speed else 0.0
        return self._anchor + timedelta(seconds=elapsed) + self._offset

    def advance(self, seconds: float) -> datetime:
        """Move time forward by `seconds` (never backward: a market cannot un-happen)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += timedelta(seconds=seconds)
            return self._now_locked()

    def advance_to(self, moment: datetime) -> datetime:
        """Move time forward to `moment`; a moment already past leaves the clock where it is."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("advance_to needs a timezone-aware time")
        with self._lock:
            now = self._now_locked()
            if moment > now:
                self._offset += moment - now
            return self._now_locked()

    def set_speed(self, speed: float) -> datetime:
        """Change the speed from now on; the time already reached is kept."""
        if speed < 0:
            raise ValueError("clock speed cannot be negative")
        with self._lock:
            self._anchor = self._now_locked()
            self._anchor_wall = self._wall()
            self._offset = timedelta(0)
            self._speed = float(speed)
            return self._anchor


_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class ClockView:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime




class Sessions:
    """Virtual time and the NYSE sessions it crosses: opens, closes, catching up (a `MarketEngine` part)."""

    def now(self) -> datetime:
        with self._lock:
            self._sync()
            return self._processed_until

    def sync(self) -> datetime:
        """Process everything up to the clock's now (a server calls this on a timer)."""
        return self.now()

    def advance(self, seconds: float) -> datetime:
        """Move virtual time forward, processing every open, fill and close on the way."""
        with self._lock:
            self._sync()
            self.clock.advance(seconds)
            self._sync()
            return self._processed_until

    def advance_to(self, moment: datetime) -> datetime:
        with self._lock:
            self._sync()
            self.clock.advance_to(moment)
            self._sync()
            return self._processed_until

    def set_speed(self, speed: float) -> datetime:
        with self._lock:
            self._sync()
            return self.clock.set_speed(speed)

    def clock_view(self) -> ClockView:
        with self._lock:
            now = self._sync_now()
            index = self.market.session_at(now)
            if index is not None:
                return ClockView(now, True, self.sessions[index + 1].open, self.sessions[index].close)
            upcoming = self.sessions[self.market.next_index(now)]
            return ClockView(now, False, upcoming.open, upcoming.close)

    def calendar(self, start: date, end: date) -> list[TradingDay]:
        lo = bisect.bisect_left(self.sessions, start, key=lambda s: s.date)
        hi = bisect.bisect_right(self.sessions, end, key=lambda s: s.date)
        return self.sessions[lo:hi]

    def _sync_now(self) -> datetime:
        self._sync()
        return self._processed_until

    def _stamp(self, moment: datetime) -> datetime:
        """Strictly increasing timestamps, so orders submitted at one frozen instant still sort
        and page by submission time (Alpaca's `after` is exclusive)."""
        stamp = moment if moment > self._last_stamp else self._last_stamp + _MICRO
        self._last_stamp = stamp
        return stamp

    def _sync(self) -> None:
        now = self.clock.now()
        if now <= self._processed_until:
            return
        start = self._processed_until
        i = bisect.bisect_right(self._closes, start)  # first session still to close after `start`
        while i < len(self.sessions) and self.sessions[i].open <= now:
            session = self.sessions[i]
            if start < session.open:
                self._open_session(i)
            self._match_window(i, max(start, session.open - _MICRO), min(now, session.close))
            if session.close <= now:
                self._close_session(i)
            i += 1
        self._processed_until = now

    def _open_session(self, index: int) -> None:
        session = self.sessions[index]
        self._last_equity = self._close_equity
        queued = sorted(
            (o for o in self._open.values() if o.status is OrderStatus.ACCEPTED and o.session_index <= index),
            key=lambda o: o.seq,
        )
        for order in queued:
            if order.status is not OrderStatus.ACCEPTED:
                continue  # an OCO sibling already handled it
            for member in self._group_of(order).group():
                if member.status is OrderStatus.ACCEPTED:
                    member.active_since = session.open
                    new_status = OrderStatus.HELD if member.parent_id is not None else OrderStatus.NEW
                    self._set_status(member, new_status, "new", self._stamp(session.open))
        for order in queued:
            if order.is_open and order.parent_id is None:
                self._match_immediately(order, session.open)

    def _close_session(self, index: int) -> None:
        session = self.sessions[index]
        for order in sorted(self._open.values(), key=lambda o: o.seq):
            if (
                order.parent_id is None
                and order.is_open
                and order.time_in_force is TimeInForce.DAY
                and order.session_index <= index
            ):
                for member in order.group():
                    if member.is_open:
                        member.expired_at = self._stamp(session.close)
                        self._set_status(member, OrderStatus.EXPIRED, "expired", member.expired_at)
        self._close_equity = self._equity(session.close)
        if self._replay_pending:
            self._apply_replay_splits(session.close)
