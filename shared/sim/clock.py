"""The simulator's virtual clock.

`now = anchor + speed * wall_elapsed + manual_offset`. Speed 0 freezes time (tests, demos): it then
moves only by `advance`/`advance_to`. Speed 1 follows the wall clock; 60 makes a minute pass every
second. Times are timezone-aware (UTC inside, shown in New York time by callers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


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
