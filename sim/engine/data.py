"""Market-data reads of the simulated market: assets, latest quotes, trades and bars."""

from __future__ import annotations

from datetime import datetime

from shared.errors import NotFound
from sim.engine import rules
from sim.engine.market import (
    Quote,
    TimedBar,
    bar_series,
    parse_timeframe,
)
from sim.engine.universe import SimAsset


class MarketReads:
    """Assets and market data as of the virtual now (a `MarketEngine` part)."""

    def assets(self) -> list[SimAsset]:
        return list(self.market.assets.values())

    def asset(self, symbol: str) -> SimAsset:
        asset = self.market.asset(symbol.strip().upper())
        if asset is None:
            for candidate in self.market.assets.values():
                if candidate.asset_id == symbol:
                    return candidate
            raise rules.reject(NotFound, 404, 40410000, "asset not found")
        return asset

    def latest_quote(self, symbol: str) -> Quote | None:
        with self._lock:
            now = self._sync_now()
            return self.market.quote(symbol, now) if symbol in self.market.assets else None

    def latest_trade(self, symbol: str) -> tuple[int, datetime] | None:
        """(price in ticks, time) of the last trade."""
        with self._lock:
            now = self._sync_now()
            return self.market.last_trade(symbol, now) if symbol in self.market.assets else None

    def latest_minute_bar(self, symbol: str) -> TimedBar | None:
        with self._lock:
            now = self._sync_now()
            return self.market.latest_minute_bar(symbol, now) if symbol in self.market.assets else None

    def daily_bars_now(self, symbol: str) -> tuple[TimedBar | None, TimedBar | None]:
        """(the current or latest session's daily bar, the one before it)."""
        with self._lock:
            now = self._sync_now()
            if symbol not in self.market.assets:
                return None, None
            index = self.market.index_on_or_before(now)
            if index is None:
                return None, None
            current = self.market.daily_timed_bar(symbol, index, now)
            previous = self.market.daily_timed_bar(symbol, index - 1, now) if index > 0 else None
            return current, previous

    def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> list[TimedBar]:
        """Historical bars, oldest first (`timeframe` like `1Min`, `5Min`, `1Hour`, `1Day`)."""
        amount, unit = parse_timeframe(timeframe)
        with self._lock:
            now = self._sync_now()
            return bar_series(self.market, symbol, amount, unit, start, end, now)
