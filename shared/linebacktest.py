"""The portfolio backtest: the whole line replayed day by day over daily history. Pure.

Each trading day of the history, in the live line's order (docs/backtest.md has every assumption):

1. pre-open: a split effective today re-bases a held position (`PositionState.follow_broker` with the
   announced ratio, as the manager's pre-open check does); a halt from an earlier day is resumed
   (FL_BACKTEST_RESUME).
2. scan (FL_SCHEDULE_SCAN, 02:00): every strategy of `shared.strategies` over the split-adjusted bars
   the scanner would have fetched (FL_SCAN_HISTORY_DAYS back, completed sessions only), judged with
   `shared.backtest` (`simulate`, `edge`, `is_black_sheep`), the state and the reported strategy
   chosen by `shared.scanning` (`state_of`, `report_order`), as a `shared.signals.Signal`.
3. rank (FL_SCHEDULE_RANK): `shared.ranking.rank`.
4. the open (09:30): the manage tick at the open (a gap through a stop or target fills at the open,
   `shared.exits.bar_exit`), the risk limits (`shared.risk.readings`), then sizing and slots
   (`shared.sizing.plan_entries`) and the entries, filled at the open plus slippage.
5. the session: every FL_SCHEDULE_MANAGE_MINUTES a manage tick (the times of
   `shared.schedule.day_entries`). Between two ticks the broker-side stop and target rest: the
   documented intraday path (`shared.intraday.minute_marks`) between the ticks is one segment given
   to `bar_exit`, which fills the stop or the target where the path touches it (the stop first when
   a segment touches both) and otherwise runs the manager's tick (`evaluate`: the high-water mark
   raised by the segment's highs, arming, soft exits at the tick's price).
6. limits: measured at the open and at the ticks of the path's low and high (every symbol's path has
   its low and high at the same minutes, so those ticks see the day's lowest and highest equity); a
   trip halts entries and soft exits, and with FL_FLATTEN_ON_LIMIT sells everything at that tick.
7. the close: end-of-day equity, cash plus every position at its close.

Speed without a second road: a position whose day provably changes nothing tick by tick (its range
touches neither level, and no soft exit fires even at the day's low with the day's high-water mark at
the last tick: the soft exits only fire more at lower prices, higher marks and later times) is
advanced once with the day's high (`advance_state`) instead of 78 times; every other day runs tick by
tick. The scanner's per-ticker backtests are the same trades whatever the day (a trade depends only on
its entry bar), so each trade is simulated once (`simulate` from its entry) and each night's window
is a walk over those trades.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from pydantic import Field

from shared import config
from shared.backtest import BacktestResult, BacktestTrade, LiveTrade, edge, is_black_sheep, simulate
from shared.config import ExitSettings, RankerSettings, RiskSettings, TraderSettings, _Settings
from shared.errors import ConfigError, InputError
from shared.exits import (
    ExitDecision,
    ExitReason,
    ExitRules,
    PositionState,
    advance_state,
    bar_exit,
    protective_levels,
    soft_exit,
)
from shared.intraday import SESSION_MINUTES, mark_at, waypoints
from shared.market.calendar import NEW_YORK
from shared.models import Account, Asset, LatestPrice, PriceSource, TradingDay
from shared.money import CENT, ONE, ZERO, round_price, round_qty
from shared.ranking import rank
from shared.risk import cooldowns, readings
from shared.scanning import ScannerSettings, report_order, state_of
from shared.schedule import MANAGE, SCAN, SchedulerSettings, day_entries
from shared.signals import ScanState, Signal
from shared.sizing import EntryKind, MarketFacts, average_dollar_volume, plan_entries
from shared.strategies import STRATEGIES, Strategy

HUNDRED = Decimal(100)
#: False: every tick of every position through `bar_exit`, no provably-quiet shortcut (the tests
#: compare both ways; the shortcuts must never change a result).
SHORTCUTS = True
TEN_THOUSAND = Decimal(10_000)
SESSION_OPEN = time(9, 30)
SESSION_CLOSE = time(16, 0)


class BacktestCosts(_Settings):
    """What the backtest adds to the line's own settings: the account, fees, slippage, and the two
    choices the live line leaves to a person (docs/backtest.md)."""

    #: Cash at the start of the backtest, in dollars.
    FL_BACKTEST_INITIAL_CASH: Decimal = Field(default=Decimal("100000"), gt=0)
    #: Every market fill (entries, stop-outs, soft exits, limit flattening) this many basis points
    #: worse than the price it is taken at; the take-profit limit fills at its limit.
    FL_BACKTEST_SLIPPAGE_BPS: Decimal = Field(default=Decimal("5"), ge=0, le=1000)
    #: SEC Section 31 fee on every sale, as a fraction of the proceeds (27.80 per million), rounded up
    #: to the cent; 0 turns it off.
    FL_BACKTEST_SEC_FEE_RATE: Decimal = Field(default=Decimal("0.0000278"), ge=0, le=Decimal("0.01"))
    #: FINRA Trading Activity Fee per share sold, rounded up to the cent, at most FL_BACKTEST_TAF_MAX.
    FL_BACKTEST_TAF_PER_SHARE: Decimal = Field(default=Decimal("0.000166"), ge=0, le=1)
    FL_BACKTEST_TAF_MAX: Decimal = Field(default=Decimal("8.30"), ge=0)
    #: Assets are fractionable (notional entries, as Alpaca for most stocks); false: whole shares only.
    FL_BACKTEST_FRACTIONABLE: bool = True
    #: After a risk limit halts the line: `next_session` = a person resumes before the next open
    #: (`factoryline resume`: the drawdown is measured from the equity then); `never` = halted to the end.
    FL_BACKTEST_RESUME: Literal["next_session", "never"] = "next_session"


#: The settings groups a backtest reads, in the order names are looked up.
GROUPS: tuple[type[_Settings], ...] = (ExitSettings, TraderSettings, RankerSettings, RiskSettings,
                                       ScannerSettings, SchedulerSettings, BacktestCosts)


@dataclass(frozen=True)
class BacktestSettings:
    exits: ExitSettings
    trader: TraderSettings
    ranker: RankerSettings
    risk: RiskSettings
    scanner: ScannerSettings
    schedule: SchedulerSettings
    costs: BacktestCosts

    @classmethod
    def load(cls, overrides: Mapping[str, str] | None = None) -> BacktestSettings:
        """The line's settings from the environment and .env, with `overrides` by name
        (`stop_loss_pct=3`, `FL_STOP_LOSS_PCT=3`, `slippage_bps=10`). ConfigError (one line) for an
        unknown name or a bad value."""
        named = {setting_name(name): value for name, value in (overrides or {}).items()}
        groups = [config.load(group, **{n: v for n, v in named.items() if n in group.model_fields})
                  for group in GROUPS]
        return cls(*groups)

    @property
    def rules(self) -> ExitRules:
        return ExitRules.from_settings(self.exits)

    def params(self) -> dict[str, str]:
        """Every setting the backtest used, by its FL_ name."""
        out: dict[str, str] = {}
        for group in (self.exits, self.trader, self.ranker, self.risk, self.scanner, self.schedule, self.costs):
            for name in type(group).model_fields:
                if name in _NOT_PARAMS:
                    continue
                value = getattr(group, name)
                out[name] = "" if value is None else str(value)
        return dict(sorted(out.items()))


#: Settings of those groups that say nothing about the line's decisions (files, secrets, polling).
_NOT_PARAMS = frozenset({"FL_SIGNALS_DIR", "FL_SIGNALS_CSV", "FL_MAX_LOG_BYTES", "FL_SIGNALS_HMAC_KEY",
                         "FL_SCAN_TARGETS", "FL_SCAN_BATCH_SIZE", "FL_SCAN_WORKERS", "FL_SCHEDULE_POLL_SECONDS",
                         "FL_SCHEDULE_GRACE_MINUTES", "FL_FOREIGN_POSITIONS"})


def known_settings() -> list[str]:
    return sorted(name for group in GROUPS for name in group.model_fields if name not in _NOT_PARAMS)


def setting_name(name: str) -> str:
    """The FL_ name an override means: `stop_loss_pct`, `FL_STOP_LOSS_PCT` and `slippage_bps`
    (FL_BACKTEST_SLIPPAGE_BPS) all work; ConfigError naming the closest setting otherwise."""
    import difflib

    known = known_settings()
    upper = name.strip().upper().replace("-", "_")
    for candidate in (upper, f"FL_{upper}", f"FL_BACKTEST_{upper}"):
        if candidate in known:
            return candidate
    close = difflib.get_close_matches(f"FL_{upper.removeprefix('FL_')}", known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0].removeprefix('FL_').lower()}?" if close else ""
    raise ConfigError(f"{name!r} is not a setting the backtest reads{hint}")


# -- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineTrade:
    """One position of the backtest: entered at `entry_price` (the fill, slippage included) for `qty`
    shares; exit None while still open at the end. After a split, qty and entry are the re-based ones."""

    symbol: str
    entry_day: date
    entry_price: Decimal
    qty: Decimal
    exit_day: date | None
    exit_price: Decimal | None
    reason: ExitReason | None
    strategy: str = ""
    entry_at: datetime | None = None
    exit_at: datetime | None = None
    #: Cash paid for the entry (qty x entry price, to the cent).
    cost: Decimal = ZERO
    #: SEC and FINRA fees of the sale.
    fees: Decimal = ZERO
    #: Proceeds less fees less cost (None while open).
    realized_pl: Decimal | None = None
    detail: str = ""


@dataclass(frozen=True)
class LineBacktestResult:
    trades: tuple[LineTrade, ...]
    #: End-of-day account equity of every session from start to end.
    equity: tuple[tuple[date, Decimal], ...]
    params: dict[str, str]
    source: str = ""
    start_cash: Decimal = ZERO
    #: (day, reason) of every halt a risk limit set.
    halts: tuple[tuple[date, str], ...] = ()

    @property
    def closed(self) -> tuple[LineTrade, ...]:
        return tuple(t for t in self.trades if t.exit_day is not None)


# -- the scanner's per-ticker backtests, once per trade -----------------------------------------------


class _StrategyTrades:
    """One strategy over one ticker's (split-adjusted) bars: where it fires, and the trade that each
    possible entry bar leads to (`simulate` from that bar, computed on first use)."""

    __slots__ = ("symbol", "bars", "strategy", "rules", "fired", "next_fire", "_from", "_index")

    def __init__(self, symbol: str, bars: Sequence, strategy: Strategy, rules: ExitRules,
                 index: Mapping[date, int]) -> None:
        self.symbol, self.bars, self.strategy, self.rules = symbol, bars, strategy, rules
        self.fired = strategy.rule(bars)
        n = len(bars)
        nxt = [n] * (n + 1)
        for i in range(n - 1, -1, -1):
            nxt[i] = i if self.fired[i] else nxt[i + 1]
        self.next_fire = nxt
        self._from: dict[int, tuple[int, BacktestTrade] | None] = {}
        self._index = index

    def trade_from(self, entry: int) -> tuple[int, BacktestTrade] | None:
        """(exit bar, trade) of the position entered at bar `entry`'s open; None: still open at the end."""
        if entry in self._from:
            return self._from[entry]
        span = 16
        result = None
        while True:
            stop = min(len(self.bars), entry + span)
            piece = self.bars[entry - 1:stop]
            trades, _open = simulate(self.symbol, piece, [True] + [False] * (len(piece) - 1), self.rules)
            if trades:
                result = (self._index[trades[0].exit_date], trades[0])
                break
            if stop >= len(self.bars):
                break
            span *= 4
        self._from[entry] = result
        return result

    def window(self, first: int, last: int) -> tuple[list[BacktestTrade], bool, bool]:
        """The backtest over bars first..last as the scanner runs it: (closed trades, a position open
        after the last bar, the rule fired on the last bar). The rule over the window is the rule over
        the whole series from `warmup` bars into the window on (each rule reads at most `warmup` bars
        back), and cannot fire before."""
        earliest = first + self.strategy.warmup
        trades: list[BacktestTrade] = []
        entry = self.next_fire[earliest] + 1
        open_position = False
        while entry <= last:
            outcome = self.trade_from(entry)
            if outcome is None or outcome[0] > last:
                open_position = True
                break
            trades.append(outcome[1])
            entry = self.next_fire[outcome[0]] + 1
        return trades, open_position, last >= earliest and self.fired[last]


# -- positions ----------------------------------------------------------------------------------------


@dataclass
class _Holding:
    symbol: str
    state: PositionState
    qty: Decimal
    cost: Decimal
    entry_day: date
    entry_at: datetime
    strategy: str
    #: The last close seen (for equity on a day without a bar).
    last_price: Decimal
    notes: list[str] = field(default_factory=list)


@dataclass
class _Book:
    cash: Decimal
    holdings: dict[str, _Holding] = field(default_factory=dict)
    trades: list[LineTrade] = field(default_factory=list)
    halted: str | None = None
    halts: list[tuple[date, str]] = field(default_factory=list)
    peak: Decimal = ZERO
    stop_outs: list[Any] = field(default_factory=list)
    live: dict[str, list[LiveTrade]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _StopOut:
    """What `shared.risk.cooldowns` reads of a closed trade."""

    symbol: str
    exit_reason: ExitReason
    closed_at: datetime


def _ny(day: date, at: time) -> datetime:
    return datetime.combine(day, at, NEW_YORK)


# -- the run ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankedTicker:
    """A ranked signal given instead of the scan (`run(..., ranked=...)`): what sizing reads."""

    ticker: str
    signal_price: Decimal | None = None
    strategy: str = "given"


def run(history: Any, settings: BacktestSettings, *, start: date, end: date,
        ranked: Mapping[date, Sequence[RankedTicker]] | None = None) -> LineBacktestResult:
    """The line over `history` from `start` to `end` (inclusive), see the module docstring.
    InputError for an empty period or a history without bars in it.

    `ranked` replaces the scan and the ranking with the given list per day (the rest of the day is
    unchanged): for tests and for replaying a known list of signals."""
    if end < start:
        raise InputError(f"the backtest ends ({end}) before it starts ({start})")
    return _Run(history, settings, start, end, ranked).go()


class _Run:
    def __init__(self, history: Any, settings: BacktestSettings, start: date, end: date,
                 ranked: Mapping[date, Sequence[RankedTicker]] | None = None) -> None:
        self.settings, self.start, self.end, self.ranked = settings, start, end, ranked
        self.rules = settings.rules
        self.costs = settings.costs
        self.slip = settings.costs.FL_BACKTEST_SLIPPAGE_BPS / TEN_THOUSAND
        self.history = history
        self.source = getattr(history, "source", "")
        self.raw: dict[str, Sequence] = {s: tuple(b) for s, b in history.bars.items() if b}
        self.splits = {s: dict(v) for s, v in (history.splits.items() if not history.adjusted else ())}
        self.dates = {s: [b.t.astimezone(NEW_YORK).date() for b in bars] for s, bars in self.raw.items()}
        self.index = {s: {d: i for i, d in enumerate(ds)} for s, ds in self.dates.items()}
        self.sessions = sorted({d for ds in self.dates.values() for d in ds if start <= d <= end})
        if not self.sessions:
            raise InputError(f"the history ({self.source or 'given'}) has no bars from {start} to {end}")
        self._adj: dict[str, Sequence] | None = None
        self._strategies: dict[str, list[_StrategyTrades]] | None = None
        plan = settings.schedule.plan()
        self.plan = plan
        self.book = _Book(cash=settings.costs.FL_BACKTEST_INITIAL_CASH)
        self.book.peak = self.book.cash

    @property
    def adj(self) -> dict[str, Sequence]:
        """The bars the scanner's strategies read: split-adjusted (`shared.history.split_adjusted`)."""
        if self._adj is None:
            history = self.history
            if not history.adjusted and any(history.splits.values()):
                from shared.history import split_adjusted

                history = split_adjusted(history)
            self._adj = {s: tuple(history.bars[s]) for s in self.raw}
        return self._adj

    @property
    def strategies(self) -> dict[str, list[_StrategyTrades]]:
        if self._strategies is None:
            self._strategies = {s: [_StrategyTrades(s, self.adj[s], st, self.rules, self.index[s])
                                    for st in STRATEGIES] for s in self.raw}
        return self._strategies

    # -- prices and money -----------------------------------------------------------------------------

    def _buy_fill(self, price: Decimal) -> Decimal:
        return round_price(price * (ONE + self.slip), ROUND_CEILING)

    def _sell_fill(self, price: Decimal) -> Decimal:
        return round_price(price * (ONE - self.slip), ROUND_FLOOR)

    def _sell_fees(self, qty: Decimal, proceeds: Decimal) -> Decimal:
        sec = (proceeds * self.costs.FL_BACKTEST_SEC_FEE_RATE).quantize(CENT, rounding=ROUND_CEILING)
        taf = min((qty * self.costs.FL_BACKTEST_TAF_PER_SHARE).quantize(CENT, rounding=ROUND_CEILING),
                  self.costs.FL_BACKTEST_TAF_MAX)
        return sec + taf

    # -- one run --------------------------------------------------------------------------------------

    def go(self) -> LineBacktestResult:
        equity: list[tuple[date, Decimal]] = []
        last_equity = self.book.cash
        for day in self.sessions:
            close_equity = self._day(day, last_equity)
            equity.append((day, close_equity))
            last_equity = close_equity
        trades = list(self.book.trades)
        for holding in sorted(self.book.holdings.values(), key=lambda h: (h.entry_at, h.symbol)):
            trades.append(LineTrade(holding.symbol, holding.entry_day, holding.state.entry_price, holding.qty,
                                    None, None, None, holding.strategy, holding.entry_at, None, holding.cost,
                                    detail="; ".join(holding.notes)))
        trades.sort(key=lambda t: (t.entry_at or _ny(t.entry_day, SESSION_OPEN), t.symbol))
        return LineBacktestResult(tuple(trades), tuple(equity), self.settings.params(), self.source,
                                  self.settings.costs.FL_BACKTEST_INITIAL_CASH, tuple(self.book.halts))

    def _day(self, day: date, last_equity: Decimal) -> Decimal:
        book = self.book
        session = TradingDay(date=day, open=_ny(day, SESSION_OPEN), close=_ny(day, SESSION_CLOSE))
        entries = day_entries(session, self.plan)
        ticks = [e.at for e in entries if e.job is MANAGE]
        bars = {s: self.raw[s][i] for s in self.raw if (i := self.index[s].get(day)) is not None}

        # 1. pre-open: splits, resume.
        for symbol, holding in book.holdings.items():
            ratio = self.splits.get(symbol, {}).get(day)
            if ratio is not None:
                now = session.open - timedelta(minutes=20)
                new_qty, new_entry = round_qty(holding.qty * ratio), holding.state.entry_price / ratio
                holding.state, applied = holding.state.follow_broker(new_qty, new_entry, now, split_ratio=ratio)
                holding.qty = holding.state.qty
                holding.last_price = holding.last_price / ratio
                holding.notes.append(f"split x{ratio.normalize()} on {day}")
        if book.halted and self.costs.FL_BACKTEST_RESUME == "next_session":
            book.halted = None
            book.peak = last_equity

        # 2-3. scan and rank.
        signals = self._scan_and_rank(day, entries, bars)

        # 4. the open: the first tick for the positions held, limits, then the entries.
        minutes = [_minute(t, session.open) for t in ticks]
        open_tick = ticks[0] if ticks and minutes[0] == 0 else None
        if open_tick is not None:
            for symbol in sorted(book.holdings):
                if symbol in bars:
                    price = bars[symbol].o
                    self._segment(symbol, price, price, price, price, open_tick, soft=True)
        self._limits(day, last_equity, {s: b.o for s, b in bars.items()}, open_tick or session.open)
        if signals and not book.halted:
            self._enter(day, signals, bars, session.open)

        # 5-6. the session.
        detailed = [s for s in sorted(book.holdings) if s in bars and not self._quiet(s, bars[s], ticks)]
        def path(symbol: str) -> _Path:
            return _path(bars[symbol])

        # The ticks of the path's low and high measure the limits: the day is cut there, and between
        # two such ticks every position runs on its own (nothing else couples them).
        checks = sorted({_nearest(minutes, _LOW_MINUTE), _nearest(minutes, _HIGH_MINUTE)} - {-1})
        previous = dict.fromkeys(detailed, 0)
        first = 1 if minutes and minutes[0] == 0 else 0
        for stop in [*[c for c in checks if c >= first], len(ticks)]:
            for symbol in detailed:
                self._stretch(symbol, first, stop - 1, minutes, ticks, path, previous)
            if stop == len(ticks):
                break
            minute, at = minutes[stop], ticks[stop]
            pending: list[tuple[str, PositionState, ExitDecision]] = []
            for symbol in detailed:
                if symbol in book.holdings:
                    seg = path(symbol).stretch(previous[symbol], minute)
                    previous[symbol] = minute
                    decided = self._segment(symbol, *seg, at, soft=False)
                    if decided is not None:
                        pending.append((symbol, *decided))
            prices = {s: path(s).at(minute) for s in book.holdings if s in bars}
            self._limits(day, last_equity, prices, at)
            if not book.halted:
                for symbol, state, decision in pending:
                    if symbol in book.holdings:
                        self._sell(symbol, decision.reference_price, decision, at, market=True, state=state)
            first = stop + 1
        # The last minutes to the close: the broker-side orders still rest; the next soft-exit check is
        # the next session's first tick.
        close_at = session.close
        for symbol in detailed:
            if symbol in book.holdings and previous[symbol] < SESSION_MINUTES:
                seg = path(symbol).stretch(previous[symbol], SESSION_MINUTES)
                self._segment(symbol, *seg, close_at, soft=False, broker_only=True)

        # 7. the close.
        for symbol, holding in book.holdings.items():
            if symbol in bars:
                holding.last_price = bars[symbol].c
        return book.cash + sum((h.qty * h.last_price for h in book.holdings.values()), ZERO).quantize(CENT)

    # -- the scan, the ranking, the entries -------------------------------------------------------------

    def _scan_and_rank(self, day: date, entries: list, bars: Mapping) -> list:
        if self.ranked is not None:
            return list(self.ranked.get(day, ()))
        scan_at = next((e.at for e in entries if e.job is SCAN), None)
        rank_at = next((e.at for e in entries if e.job.name == "rank"), None)
        if scan_at is None or rank_at is None:
            return []
        # The scanner fetches the bars stamped at or after this (daily bars are stamped 00:00 New York).
        window_from = (scan_at - timedelta(days=self.settings.scanner.FL_SCAN_HISTORY_DAYS)).astimezone(NEW_YORK)
        first_day = window_from.date() if window_from.time() == time(0) else window_from.date() + timedelta(days=1)
        min_trades = self.settings.scanner.FL_SCAN_MIN_TRADES
        sheep_rule = self.settings.scanner.black_sheep_rule()
        signals = []
        for symbol in sorted(bars):
            dates = self.dates[symbol]
            # Completed sessions only: a session whose close is after the scan is not a daily bar yet.
            last = bisect.bisect_right(dates, day if scan_at >= _ny(day, SESSION_CLOSE) else day - timedelta(days=1)) - 1
            if last < 0:
                continue
            first = bisect.bisect_left(dates, first_day)
            if first > last:
                continue
            candidates = []
            for strategy in self.strategies[symbol]:
                if not strategy.fired[last]:
                    continue
                trades, open_position, fired_last = strategy.window(first, last)
                if open_position or not fired_last:
                    continue
                win_rate, profit_factor, avg_return, verdict = edge(trades, min_trades)
                result = BacktestResult(symbol, strategy.strategy.name, tuple(trades), None, True,
                                        win_rate, profit_factor, avg_return, verdict)
                state = state_of(result, self.adj[symbol][last])
                sheep = is_black_sheep(result, self.book.live.get(symbol, ()), sheep_rule)
                candidates.append((state, result, sheep))
            if not candidates:
                continue
            candidates.sort(key=report_order)
            state, best, sheep = candidates[0]
            if state is not ScanState.IN_TRADE:
                continue
            signals.append(Signal(
                ticker=symbol, strategy=best.strategy, state=state, verdict=best.verdict, win_rate=best.win_rate,
                trades=best.trade_count, profit_factor=best.profit_factor, avg_return=best.avg_return,
                signal_date=dates[last], signal_price=self._signal_price(symbol, last, day),
                scanned_at=scan_at, black_sheep=sheep.flagged,
                source_file=f"{state.value}_live_qs_{symbol}.log"))
        if not signals:
            return []
        return list(rank(signals, self.settings.ranker, rank_at).kept)

    def _signal_price(self, symbol: str, last: int, day: date) -> Decimal:
        """The last close as the line sees it on `day`: the raw close, re-based for a split effective
        between that close and `day` (the price the trader's drift check compares with)."""
        price = self.raw[symbol][last].c
        last_day = self.dates[symbol][last]
        for when, ratio in self.splits.get(symbol, {}).items():
            if last_day < when <= day:
                price = price / ratio
        return round_price(price)

    def _enter(self, day: date, signals: list, bars: Mapping, at: datetime) -> None:
        book, trader = self.book, self.settings.trader
        wanted = [s for s in signals if s.ticker in bars]
        if not wanted:
            return
        prices = {s.ticker: self._buy_fill(bars[s.ticker].o) for s in wanted}
        held_values = {s: h.qty * (bars[s].o if s in bars else h.last_price) for s, h in book.holdings.items()}
        equity = book.cash + sum(held_values.values(), ZERO)
        account = Account(cash=book.cash, buying_power=book.cash, equity=equity.quantize(CENT))
        volumes = {}
        for s in wanted:
            i = self.index[s.ticker][day]
            volume = average_dollar_volume(self.raw[s.ticker][max(0, i - 20):i])
            if volume is not None:
                volumes[s.ticker] = volume
        facts = MarketFacts(
            assets={s.ticker: Asset(symbol=s.ticker, fractionable=self.costs.FL_BACKTEST_FRACTIONABLE) for s in wanted},
            prices={s.ticker: LatestPrice(symbol=s.ticker, price=prices[s.ticker], source=PriceSource.ASK)
                    for s in wanted},
            dollar_volumes={s.ticker: volumes[s.ticker] for s in wanted if s.ticker in volumes},
            cooldowns=cooldowns(book.stop_outs, at, trader.FL_COOLDOWN_DAYS),
            held_values=held_values,
        )
        plan = plan_entries(wanted, account, book.holdings, (), facts, trader, day)
        strategy_of = {s.ticker: s.strategy for s in wanted}
        for order in plan.orders:
            price = prices[order.symbol]
            qty = round_qty(order.amount / price) if order.kind is EntryKind.NOTIONAL else order.qty
            if qty is None or qty <= ZERO:
                continue
            cost = (qty * price).quantize(CENT, rounding=ROUND_HALF_UP)
            if cost > book.cash:
                continue
            try:
                protective_levels(price, self.rules)
            except InputError:
                continue
            book.cash -= cost
            state = PositionState.at_entry(order.symbol, price, qty, at)
            book.holdings[order.symbol] = _Holding(order.symbol, state, qty, cost, day, at,
                                                   strategy_of[order.symbol], bars[order.symbol].o)

    # -- a position through a stretch of the day --------------------------------------------------------

    def _quiet(self, symbol: str, bar: Any, ticks: list[datetime]) -> bool:
        """True when no tick of the day can sell the position or arm anything a later tick acts on
        differently from one advance with the day's high (see the module docstring); the position is
        then advanced once."""
        holding = self.book.holdings[symbol]
        state = holding.state
        if not SHORTCUTS:
            return False
        if not ticks:
            return True
        stop, target = protective_levels(state.entry_price, self.rules)
        if bar.l <= stop or bar.h >= target:
            return False
        last = ticks[-1]
        advanced = advance_state(state, high_since_last=bar.h, price=bar.h, now=last, rules=self.rules)
        if soft_exit(advanced, price=bar.l, now=last, rules=self.rules) is not None:
            return False
        holding.state = advanced
        return True

    def _stretch(self, symbol: str, i: int, j: int, minutes: Sequence[int], ticks: Sequence[datetime], path,
                 previous: dict[str, int]) -> None:
        """Ticks i..j of one position, in order. A stretch that provably changes nothing but the
        high-water mark (its path touches neither level, and no soft exit fires even at its lowest
        price with its highest mark at its last tick) is one `advance_state`; otherwise it is halved,
        down to single ticks, each one `bar_exit` over the path since the tick before."""
        if i > j or symbol not in self.book.holdings:
            return
        holding = self.book.holdings[symbol]
        first_price, high, low, last_price = path(symbol).stretch(previous[symbol], minutes[j])
        stop, target = protective_levels(holding.state.entry_price, self.rules)
        if SHORTCUTS and low > stop and high < target:
            advanced = advance_state(holding.state, high_since_last=high, price=high, now=ticks[j], rules=self.rules)
            if self.book.halted or soft_exit(advanced, price=low, now=ticks[j], rules=self.rules) is None:
                holding.state = advanced
                previous[symbol] = minutes[j]
                return
        if i == j:
            previous[symbol] = minutes[j]
            self._segment(symbol, first_price, high, low, last_price, ticks[j], soft=True)
            return
        middle = (i + j) // 2
        self._stretch(symbol, i, middle, minutes, ticks, path, previous)
        self._stretch(symbol, middle + 1, j, minutes, ticks, path, previous)

    def _segment(self, symbol: str, o: Decimal, h: Decimal, low: Decimal, c: Decimal, at: datetime, *,
                 soft: bool, broker_only: bool = False) -> tuple[PositionState, ExitDecision] | None:
        """The path from the last tick to this one: `bar_exit` (broker-side fills happen here). A soft
        exit is sold here when `soft` and not halted, else returned for the caller to sell after the
        tick's limit check."""
        holding = self.book.holdings[symbol]
        state, decision = bar_exit(holding.state, o, h, low, c, at, self.rules)
        if decision is not None and decision.reason.broker_side:
            market = decision.reason is ExitReason.STOP_LOSS
            self._sell(symbol, decision.reference_price, decision, at, market=market, state=holding.state)
            return None
        if broker_only:
            return None
        holding.state = state
        if decision is None:
            return None
        if soft:
            if not self.book.halted:
                self._sell(symbol, decision.reference_price, decision, at, market=True, state=state)
            return None
        return state, decision

    def _sell(self, symbol: str, price: Decimal, decision: ExitDecision, at: datetime, *, market: bool,
              state: PositionState) -> None:
        book = self.book
        holding = book.holdings.pop(symbol)
        fill = self._sell_fill(price) if market else price
        proceeds = (holding.qty * fill).quantize(CENT, rounding=ROUND_HALF_UP)
        fees = self._sell_fees(holding.qty, proceeds)
        book.cash += proceeds - fees
        day = at.astimezone(NEW_YORK).date()
        pl = proceeds - fees - holding.cost
        book.trades.append(LineTrade(symbol, holding.entry_day, state.entry_price, holding.qty, day, fill,
                                     decision.reason, holding.strategy, holding.entry_at, at, holding.cost, fees, pl,
                                     "; ".join([*holding.notes, decision.detail])))
        book.live.setdefault(symbol, []).append(LiveTrade(state.entry_price, fill, at))
        if decision.reason is ExitReason.STOP_LOSS:
            book.stop_outs.append(_StopOut(symbol, ExitReason.STOP_LOSS, at))

    def _limits(self, day: date, last_equity: Decimal, prices: Mapping[str, Decimal], at: datetime) -> None:
        """The manager's and the trader's risk check at one moment: raise the recorded peak, measure
        both limits, halt on a trip (and flatten with FL_FLATTEN_ON_LIMIT)."""
        book = self.book
        equity = (book.cash + sum((h.qty * prices.get(s, h.last_price) for s, h in book.holdings.items()), ZERO)
                  ).quantize(CENT)
        book.peak = max(book.peak, equity)
        tripped = [r for r in readings(equity, last_equity, book.peak, self.settings.risk) if r.tripped]
        if tripped and not book.halted:
            book.halted = "risk limit: " + "; ".join(r.describe() for r in tripped)
            book.halts.append((day, book.halted))
        if tripped and self.settings.risk.FL_FLATTEN_ON_LIMIT:
            for symbol in sorted(book.holdings):
                holding = book.holdings[symbol]
                price = prices.get(symbol, holding.last_price)
                decision = ExitDecision(ExitReason.RISK_LIMIT, price, None, f"risk limit tripped: {book.halted}")
                self._sell(symbol, price, decision, at, market=True, state=holding.state)


class _Path:
    """A day's documented intraday path (`shared.intraday`), read a few marks at a time: the marks
    are monotone between the waypoints (straight lines, monotone rounding and clamping), so a stretch's
    high and low are among its two ends and the waypoints inside it."""

    __slots__ = ("o", "h", "l", "c", "turns", "_at")

    def __init__(self, o: Decimal, h: Decimal, low: Decimal, c: Decimal) -> None:
        self.o, self.h, self.l, self.c = o, h, low, c
        self.turns = [m for m, _ in waypoints(o, h, low, c)]
        self._at: dict[int, Decimal] = {}

    def at(self, minute: int) -> Decimal:
        price = self._at.get(minute)
        if price is None:
            price = self._at[minute] = mark_at(self.o, self.h, self.l, self.c, minute)
        return price

    def stretch(self, a: int, b: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """(first, high, low, last) of the marks a..b: the minute bars a..b-1 taken as one bar."""
        prices = [self.at(m) for m in (a, b, *(t for t in self.turns if a < t < b))]
        return prices[0], max(prices), min(prices), prices[1]


def _path(bar: Any) -> _Path:
    """The bar's path, kept for the process (a sweep replays the same days)."""
    return _path_of(bar.o, bar.h, bar.l, bar.c)


@functools.lru_cache(maxsize=100_000)
def _path_of(o: Decimal, h: Decimal, low: Decimal, c: Decimal) -> _Path:
    return _Path(o, h, low, c)


def _minute(at: datetime, session_open: datetime) -> int:
    return int((at - session_open).total_seconds() // 60)


def _nearest(minutes: Sequence[int], target: int) -> int:
    """The tick index whose minute is nearest `target` (the earlier one on a tie)."""
    if not minutes:
        return -1
    return min(range(len(minutes)), key=lambda k: (abs(minutes[k] - target), minutes[k]))


#: The minutes of the path's low and high, the same for every symbol: the limit checks' ticks.
(_, (_LOW_MINUTE, _), (_HIGH_MINUTE, _), _) = waypoints(ONE, ONE, ONE, ONE)
