"""`MarketEngine`: the simulated market's account, orders, matching and time, put together from
its parts (see `sim.engine`).

One engine is one Alpaca account trading in one simulated market. Every public method first
catches the market up to the virtual clock's `now` (`_sync`), processing what happened in between
in time order: at each session open queued orders become `new` and market orders fill at the open;
resting limits and stops trigger on the minute bars' highs and lows; `day` orders expire at the
close. Only symbols with open orders are examined, so advancing days at a time stays fast.

Both the Alpaca-compatible server (`sim.server`) and the in-process adapter
(`sim.executor.SimulatedExecutor`) call these methods, so the two expose one behaviour.
Refusals are the typed errors of `shared.errors`, carrying Alpaca's status, code and body fields
(see `sim.engine.rules`). Every state change is a `TradeEvent` delivered to subscribers.

Thread-safety: one re-entrant lock around every public method. Subscribers are called while it is
held, in event order, and must only hand the event over (e.g. put it on a queue), never call back.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from shared.errors import InputError
from shared.market.calendar import NEW_YORK, nyse
from shared.models import TradingDay
from shared.money import ZERO, to_decimal
from sim.engine.account import Account, Holding
from sim.engine.clock import _MICRO, Sessions, VirtualClock
from sim.engine.controls import Controls, SplitAction
from sim.engine.data import MarketReads
from sim.engine.entry import OrderEntry
from sim.engine.events import Events
from sim.engine.market import MarketData
from sim.engine.matching import Matching
from sim.engine.orders import SimOrder, TradeEvent
from sim.engine.universe import build_universe

log = logging.getLogger(__name__)

DEFAULT_CASH = Decimal("200000")
DEFAULT_SEED = 7
#: Market buys for a quantity reserve qty x ask x (1 + cushion) of buying power, like Alpaca's
#: legacy docs describe (2.5% to 4%); limit buys reserve qty x limit.
DEFAULT_BUYING_POWER_CUSHION = Decimal("0.025")


class MarketEngine(Sessions, Matching, OrderEntry, Account, MarketReads, Controls, Events):
    """The simulated account and market. Build one with `MarketEngine.create(...)`."""

    def __init__(
        self,
        *,
        seed: int = DEFAULT_SEED,
        start: datetime | None = None,
        cash: Decimal = DEFAULT_CASH,
        speed: float = 0.0,
        universe_size: int | None = None,
        bars_csv: Path | None = None,
        history=None,
        buying_power_cushion: Decimal = DEFAULT_BUYING_POWER_CUSHION,
        wall: Callable[[], float] = time.monotonic,
    ):
        start = datetime.now(UTC) if start is None else start
        if start.tzinfo is None or start.utcoffset() is None:
            raise InputError("the simulated market's start time must be timezone-aware")
        cash = to_decimal(cash)
        if cash < ZERO:
            raise InputError("starting cash cannot be negative")
        calendar = nyse()
        if not calendar.first_date < start.astimezone(NEW_YORK).date() < calendar.last_date:
            raise InputError(
                f"start {start.isoformat()} is outside the NYSE calendar ({calendar.first_date} to {calendar.last_date})"
            )
        self._lock = threading.RLock()
        self.seed = seed
        self.cushion = buying_power_cushion
        self.clock = VirtualClock(start, speed, wall)
        self.sessions: list[TradingDay] = calendar.sessions(calendar.first_date, calendar.last_date)
        # UTC, like the clock: comparisons within one tzinfo skip the zone lookups.
        self._closes = [s.close.astimezone(UTC) for s in self.sessions]
        self._opens = [s.open.astimezone(UTC) for s in self.sessions]
        anchor = max(bisect.bisect_right(self._opens, start.astimezone(UTC)) - 1, 0)
        self.market = MarketData(
            build_universe(universe_size, seed), calendar, self.sessions, anchor, seed, bars_csv=bars_csv,
            history=history,
        )
        self.created_at = start.astimezone(UTC)
        self.starting_cash = cash
        self._cash = cash
        self._holdings: dict[str, Holding] = {}
        self._orders: dict[str, SimOrder] = {}
        self._top_level: list[SimOrder] = []
        self._by_client_id: dict[str, SimOrder] = {}
        self._open: dict[str, SimOrder] = {}
        self._events: list[TradeEvent] = []
        self._subscribers: list[Callable[[TradeEvent], None]] = []
        self._fills: list[dict] = []
        self._rejections: list[dict] = []
        self._partial_next: dict[str, Decimal] = {}
        #: Announced splits, in the order they took effect (the corporate-actions feed).
        self._splits: list[SplitAction] = []
        #: A symbol's CUSIP once a reverse split gave it a new one.
        self._cusips: dict[str, str] = {}
        #: Alpaca's last_equity: equity at the previous trading day's close. A session's closing
        #: equity becomes last_equity only at the next open, so a 16:05 report still compares
        #: today's equity with yesterday's close.
        self._last_equity = cash
        self._close_equity = cash
        self._processed_until = self.clock.now()
        self._last_stamp = self._processed_until - _MICRO
        self._seq = 0
        #: Replayed history's splits not yet in effect: (ex-date session index, symbol, ratio).
        self._replay_pending = sorted(
            (ex_index, symbol, ratio)
            for symbol, listed in self.market.replay_splits.items() for ex_index, ratio in listed
        )
        self._apply_replay_splits(self._processed_until)

    @classmethod
    def create(
        cls,
        *,
        seed: int = DEFAULT_SEED,
        start: datetime | None = None,
        cash: Decimal | int | str = DEFAULT_CASH,
        speed: float = 0.0,
        universe_size: int | None = None,
        bars_csv: Path | str | None = None,
        history=None,
        buying_power_cushion: Decimal | str = DEFAULT_BUYING_POWER_CUSHION,
    ) -> MarketEngine:
        """A fresh market: `start` defaults to now, `speed` 0 freezes the clock (tests). `history` (a
        `shared.history.History`) replays real daily bars instead of seeded ones (docs/simulator.md)."""
        return cls(
            seed=seed,
            start=start,
            cash=to_decimal(cash),
            speed=speed,
            universe_size=universe_size,
            bars_csv=Path(bars_csv) if bars_csv is not None else None,
            history=history,
            buying_power_cushion=to_decimal(buying_power_cushion),
        )
