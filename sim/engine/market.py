"""Market data of the simulated market: prices as of a moment, quotes, minute and daily bars.

Wraps each symbol's seeded `SymbolPath` with what controls change: a "set price" makes the path
continue from the given price (every later bar is multiplied by the factor that puts the price
there), a split re-bases the whole path, history included (prices divided by the ratio, volumes
multiplied), and an "ask missing" flag makes quotes show no ask (0), as thin IEX quotes often do.
Nothing here ever shows the future: callers pass the virtual `now`.

Price conventions: the last trade inside a session is the open of the minute in progress; outside
a session it is the previous close. Quotes sit a small half spread around it (0.02%, at least one
increment), bid rounded down and ask up.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from shared.errors import InputError
from shared.market.calendar import NEW_YORK, NyseCalendar
from shared.models import TradingDay
from sim.engine.paths import (
    TICKS_PER_DOLLAR,
    DayBar,
    MinuteBar,
    SymbolPath,
    read_bars_csv,
    replay_from_history,
    round_ticks,
    to_ticks,
)
from sim.engine.universe import SimAsset

MINUTE = timedelta(minutes=1)
HALF_SPREAD_FRACTION = 0.0002
#: Earlier than any bar: a split's adjustment entry starts here, so it covers all history.
_BEGINNING = datetime(1, 1, 2, tzinfo=UTC)


def increment_ticks(ticks: int) -> int:
    return 100 if ticks >= TICKS_PER_DOLLAR else 1


def half_spread(ticks: int) -> int:
    step = increment_ticks(ticks)
    return max(step, int(round(ticks * HALF_SPREAD_FRACTION / step)) * step)


def bid_ticks(ticks: int) -> int:
    return max(ticks - half_spread(ticks), 1)


def ask_ticks(ticks: int) -> int:
    return round_ticks(ticks + half_spread(ticks))


@dataclass(frozen=True)
class Quote:
    bid: int
    ask: int
    bid_size: int
    ask_size: int
    t: datetime


@dataclass(frozen=True)
class TimedBar:
    """A bar in ticks with its start time (minute bars) or session date (daily bars)."""

    t: datetime
    open: int
    high: int
    low: int
    close: int
    volume: int
    trades: int


class MarketData:
    def __init__(
        self,
        assets: list[SimAsset],
        calendar: NyseCalendar,
        sessions: list[TradingDay],
        anchor: int,
        seed: int,
        bars_csv: Path | None = None,
        history=None,
    ):
        self.calendar = calendar
        self.sessions = sessions
        # In UTC, like the engine's own times: comparing datetimes of one tzinfo skips the zone
        # lookups (New York opens against UTC moments cost two utcoffset calls per comparison).
        self._opens = [s.open.astimezone(UTC) for s in sessions]
        self._index_of_date = {s.date: i for i, s in enumerate(sessions)}
        self._day_stamps: dict[int, datetime] = {}
        #: symbol -> {session index: its closed daily bar}, for symbols no price control touches (the
        #: generated or replayed days never change then; a control makes `completed_daily_bars` step aside).
        self._closed_days: dict[str, dict[int, TimedBar | None]] = {}
        self.seed = seed
        self.assets: dict[str, SimAsset] = {a.symbol: a for a in assets}
        self._paths: dict[str, SymbolPath] = {}
        self._replay = None
        if bars_csv is not None and history is not None:
            raise InputError("replay either a bars CSV or a daily history (--data), not both")
        if history is not None:
            self._replay = replay_from_history(history, sessions)
        elif bars_csv is not None:
            self._replay = read_bars_csv(bars_csv, sessions)
        if self._replay is not None:
            for symbol in self._replay.days:
                if symbol not in self.assets:
                    first = min(self._replay.days[symbol].values(), key=lambda b: b.volume, default=None)
                    price = (first.close / TICKS_PER_DOLLAR) if first else 10.0
                    self.assets[symbol] = SimAsset(
                        symbol=symbol,
                        name=f"{symbol} (replayed)",
                        exchange="NASDAQ",
                        fractionable=True,
                        base_price=price,
                    )
            # Replay makes the CSV's symbols the universe.
            self.assets = {s: a for s, a in self.assets.items() if s in self._replay.days}
        self._anchor = anchor
        #: symbol -> [(effective time, factor)], factor multiplies the base path from then on.
        self._adjust: dict[str, list[tuple[datetime, Decimal]]] = {}
        self._adjusted_minutes: dict[tuple[str, int, int], list[MinuteBar]] = {}
        #: symbol -> product of its split ratios: every volume, past and future, is multiplied by it.
        self._volume_factor: dict[str, Decimal] = {}
        #: symbol -> [(session index of an ex date, ratio)] of replayed splits applied: the volumes of
        #: sessions before the ex date are multiplied by the ratio (later ones are raw already).
        self._volume_steps: dict[str, list[tuple[int, Decimal]]] = {}
        self.ask_missing: set[str] = set()

    # -- lookup ---------------------------------------------------------------------------
    def asset(self, symbol: str) -> SimAsset | None:
        return self.assets.get(symbol)

    def path(self, symbol: str) -> SymbolPath:
        path = self._paths.get(symbol)
        if path is None:
            asset = self.assets[symbol]
            replay = self._replay
            path = SymbolPath(
                symbol,
                self.seed,
                asset.base_price,
                asset.daily_volatility,
                asset.daily_volume,
                self.sessions,
                self._anchor,
                given_days=replay.days.get(symbol) if replay else None,
                given_minutes=replay.minutes.get(symbol) if replay else None,
                documented_minutes=bool(replay and replay.documented),
            )
            self._paths[symbol] = path
        return path

    def session_index(self, day: date) -> int | None:
        return self._index_of_date.get(day)

    def session_at(self, moment: datetime) -> int | None:
        """Index of the session in progress at `moment` (open <= moment < close), else None."""
        i = self.index_on_or_before(moment)
        if i is not None and moment < self.sessions[i].close:
            return i
        return None

    def index_on_or_before(self, moment: datetime) -> int | None:
        """Index of the last session that opened at or before `moment`."""
        i = bisect.bisect_right(self._opens, moment.astimezone(UTC)) - 1
        return i if i >= 0 else None

    def next_index(self, moment: datetime) -> int:
        """Index of the session in progress at `moment`, or else the next one to open."""
        i = self.session_at(moment)
        if i is not None:
            return i
        i = bisect.bisect_right(self._opens, moment.astimezone(UTC))
        if i >= len(self.sessions):
            raise InputError(f"{moment.isoformat()} is past the simulated calendar's last session")
        return i

    # -- adjustments ----------------------------------------------------------------------
    def factor(self, symbol: str, moment: datetime) -> Decimal | None:
        entries = self._adjust.get(symbol)
        if not entries:
            return None
        i = bisect.bisect_right(entries, moment, key=lambda e: e[0]) - 1
        return entries[i][1] if i >= 0 else None

    def set_price(self, symbol: str, price: Decimal, now: datetime) -> None:
        """From `now` on (from the start of the current minute, inside a session), the path
        continues from `price`: the base path times the factor that makes the last trade `price`."""
        target = to_ticks(price)
        index = self.session_at(now)
        effective = now
        if index is not None:
            session = self.sessions[index]
            effective = session.open + MINUTE * int((now - session.open) // MINUTE)
        base = self._base_last_ticks(symbol, now)
        if base is None:
            raise InputError(f"{symbol}: no price yet at {now.isoformat()}")
        factor = Decimal(target) / Decimal(base)
        entries = self._adjust.setdefault(symbol, [])
        if entries and entries[-1][0] >= effective:
            entries[-1] = (entries[-1][0], factor)
        else:
            entries.append((effective, factor))
        self._forget_adjusted(symbol)

    def split(self, symbol: str, ratio: Decimal) -> None:
        """Re-base the symbol's whole path, past and future, to a split of `ratio` (the factor on
        share counts): every price is divided by it and every volume multiplied, so bars read as
        split-adjusted (what Alpaca's adjusted bars show) and the last trade is the re-based price.

        A split is one more price factor in force from the beginning of time: every factor a price
        control set is divided too, so a later "set price" still lands where it is asked."""
        entries = self._adjust.setdefault(symbol, [])
        if not entries or entries[0][0] > _BEGINNING:
            entries.insert(0, (_BEGINNING, Decimal(1)))
        self._adjust[symbol] = [(moment, factor / ratio) for moment, factor in entries]
        self._volume_factor[symbol] = self._volume_factor.get(symbol, Decimal(1)) * ratio
        self._forget_adjusted(symbol)

    @property
    def replay_splits(self) -> dict[str, list[tuple[int, Decimal]]]:
        """The replayed history's splits still to apply: symbol -> [(ex-date session index, ratio)]."""
        replay = self._replay
        return dict(replay.splits or {}) if replay is not None else {}

    def replay_split(self, symbol: str, ratio: Decimal, ex_index: int) -> None:
        """A split of replayed raw history takes effect on session `ex_index`: from its open on, the
        raw prices are already on the new basis and stay as they are; every price before it (history
        included, and any factor a price control set there) is divided by the ratio and every volume
        multiplied, so bars read split-adjusted as of now, as after `split`."""
        effective = self.sessions[ex_index].open.astimezone(UTC)
        entries = self._adjust.get(symbol, [])
        at_effective = self.factor(symbol, effective) or Decimal(1)
        before = [(moment, factor / ratio) for moment, factor in entries if moment < effective]
        if not before or before[0][0] > _BEGINNING:
            before.insert(0, (_BEGINNING, Decimal(1) / ratio))
        after = [(moment, factor) for moment, factor in entries if moment >= effective]
        if not after or after[0][0] > effective:
            after.insert(0, (effective, at_effective))
        self._adjust[symbol] = before + after
        self._volume_steps.setdefault(symbol, []).append((ex_index, ratio))
        self._forget_adjusted(symbol)

    def _forget_adjusted(self, symbol: str) -> None:
        self._adjusted_minutes = {k: v for k, v in self._adjusted_minutes.items() if k[0] != symbol}

    def _scale(self, ticks: int, factor: Decimal | None) -> int:
        if factor is None:
            return ticks
        return round_ticks(float(ticks * factor))

    def _scale_volume(self, volume: int, symbol: str, index: int | None = None) -> int:
        factor = self._volume_factor.get(symbol)
        steps = self._volume_steps.get(symbol)
        if steps and index is not None:
            for ex_index, ratio in steps:
                if index < ex_index:
                    factor = (factor or Decimal(1)) * ratio
        if factor is None:
            return volume
        return int((volume * factor).to_integral_value(rounding=ROUND_HALF_UP))

    # -- bars -----------------------------------------------------------------------------
    def minute_bars(self, symbol: str, index: int) -> list[MinuteBar]:
        """The session's minute bars with adjustments applied (ticks)."""
        base = self.path(symbol).minutes(index)
        entries = self._adjust.get(symbol)
        if not entries or not base:
            return base
        session = self.sessions[index]
        first = self.factor(symbol, session.open)
        last = self.factor(symbol, session.close - MINUTE)
        if first == last:
            if first is None:
                return base
            key = (symbol, index, 0)
        else:
            key = (symbol, index, 1)
        cached = self._adjusted_minutes.get(key)
        if cached is not None:
            return cached
        bars = []
        for k, (o, h, lo, c, v) in enumerate(base):
            f = first if first == last else self.factor(symbol, session.open + MINUTE * k)
            bars.append(
                (
                    self._scale(o, f),
                    self._scale(h, f),
                    self._scale(lo, f),
                    self._scale(c, f),
                    self._scale_volume(v, symbol, index),
                )
            )
        self._adjusted_minutes[key] = bars
        return bars

    def day_bar(self, symbol: str, index: int, now: datetime | None = None) -> DayBar | None:
        """The session's daily bar; for the session in progress at `now`, the part so far."""
        session = self.sessions[index]
        if now is not None and now < session.open:
            return None
        partial = now is not None and now < session.close
        entries = self._adjust.get(symbol)
        if not partial:
            if not entries:
                return self.path(symbol).day(index)
            first = self.factor(symbol, session.open)
            if first == self.factor(symbol, session.close - MINUTE):
                day = self.path(symbol).day(index)
                if day is None:
                    return None
                return DayBar(
                    *(self._scale(x, first) for x in (day.open, day.high, day.low, day.close)),
                    self._scale_volume(day.volume, symbol, index),
                )
        bars = self.minute_bars(symbol, index)
        if not bars:
            return None
        if partial:
            k = int((now - session.open) // MINUTE)
            done = bars[:k]
            current_open = bars[min(k, len(bars) - 1)][0]
            if not done:
                return DayBar(current_open, current_open, current_open, current_open, 0)
            return DayBar(
                done[0][0],
                max(max(b[1] for b in done), current_open),
                min(min(b[2] for b in done), current_open),
                current_open,
                sum(b[4] for b in done),
            )
        return DayBar(
            bars[0][0], max(b[1] for b in bars), min(b[2] for b in bars), bars[-1][3], sum(b[4] for b in bars)
        )

    # -- prices now -----------------------------------------------------------------------
    def _base_last_ticks(self, symbol: str, now: datetime) -> int | None:
        index = self.index_on_or_before(now)
        if index is None:
            return None
        session = self.sessions[index]
        path = self.path(symbol)
        if now < session.close:
            k = int((now - session.open) // MINUTE)
            bars = path.minutes(index)
            return bars[min(k, len(bars) - 1)][0] if bars else None
        day = path.day(index)
        if day is None:
            return None
        return day.close

    def last_trade(self, symbol: str, now: datetime) -> tuple[int, datetime] | None:
        """(price in ticks, trade time) of the last trade at `now`, or None before any data."""
        index = self.index_on_or_before(now)
        if index is None:
            return None
        session = self.sessions[index]
        base = self._base_last_ticks(symbol, now)
        if base is None:
            return None
        if now < session.close:
            k = int((now - session.open) // MINUTE)
            when = session.open + MINUTE * k
        else:
            when = session.close - timedelta(seconds=1)
        return self._scale(base, self.factor(symbol, now)), when

    def quote(self, symbol: str, now: datetime) -> Quote | None:
        last = self.last_trade(symbol, now)
        if last is None:
            return None
        ticks, when = last
        asset = self.assets[symbol]
        size = max(1, min(50, asset.daily_volume // 200_000))
        ask = 0 if symbol in self.ask_missing else ask_ticks(ticks)
        return Quote(
            bid=bid_ticks(ticks),
            ask=ask,
            bid_size=size,
            ask_size=0 if ask == 0 else size + 1,
            t=max(when, now - timedelta(seconds=1)),
        )

    def latest_minute_bar(self, symbol: str, now: datetime) -> TimedBar | None:
        """The last completed minute bar at `now`."""
        index = self.index_on_or_before(now)
        if index is None:
            return None
        # The session in progress may not have a completed minute yet: then the previous one's last.
        for i in (index, index - 1):
            if i < 0:
                break
            session = self.sessions[i]
            bars = self.minute_bars(symbol, i)
            done = min(len(bars), int((min(now, session.close) - session.open) // MINUTE))
            if done > 0:
                o, h, lo, c, v = bars[done - 1]
                return TimedBar(session.open + MINUTE * (done - 1), o, h, lo, c, v, trade_count(v))
        return None

    def daily_timed_bar(self, symbol: str, index: int, now: datetime) -> TimedBar | None:
        day = self.day_bar(symbol, index, now)
        if day is None:
            return None
        return TimedBar(
            self.day_stamp(index), day.open, day.high, day.low, day.close, day.volume, trade_count(day.volume)
        )

    def day_stamp(self, index: int) -> datetime:
        stamp = self._day_stamps.get(index)
        if stamp is None:
            stamp = self._day_stamps[index] = daily_bar_time(self.sessions[index].date)
        return stamp

    def completed_daily_bars(self, symbol: str, first: int, last: int) -> list[TimedBar] | None:
        """Daily bars of sessions first..last, all closed, when no price control touches them
        (the fast path for long histories, each bar built once); None when the general path is needed."""
        if self._adjust.get(symbol):
            return None
        known = self._closed_days.get(symbol)
        if known is None:
            known = self._closed_days[symbol] = {}
        bars = []
        missing = object()
        path = None
        for i in range(first, last + 1):
            bar = known.get(i, missing)
            if bar is missing:
                if path is None:
                    path = self.path(symbol)
                day = path.day(i)
                bar = known[i] = None if day is None else TimedBar(
                    self.day_stamp(i), day.open, day.high, day.low, day.close, day.volume, trade_count(day.volume)
                )
            if bar is not None:
                bars.append(bar)
        return bars


def daily_bar_time(day: date) -> datetime:
    """Alpaca stamps daily bars at midnight New York time."""
    return datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)


def trade_count(volume: int) -> int:
    return max(1, volume // 150) if volume else 0


# -- bar series for the bars endpoint ------------------------------------------------------

#: Timeframe units the bars endpoint understands, as Alpaca spells them.
UNITS = ("Min", "Hour", "Day", "Week", "Month")


def parse_timeframe(text: str) -> tuple[int, str]:
    """`1Min`, `5Min`, `1Hour`, `1Day`, `1Week`, `1Month` (also `T`, `H`, `D`, `W`, `M`)."""
    text = text.strip()
    digits = ""
    while text and text[0].isdigit():
        digits, text = digits + text[0], text[1:]
    aliases = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}
    unit = aliases.get(text, text)
    amount = int(digits) if digits else 1
    if unit not in UNITS or amount < 1:
        raise ValueError(f"invalid timeframe {text!r}")
    limits = {"Min": 59, "Hour": 23, "Day": 1, "Week": 1, "Month": 12}
    if amount > limits[unit]:
        raise ValueError(f"invalid timeframe: {amount}{unit} is not supported")
    return amount, unit


def bar_series(
    data: MarketData, symbol: str, amount: int, unit: str, start: datetime, end: datetime, now: datetime
) -> list[TimedBar]:
    """Bars of `symbol` with start <= t <= end, oldest first, none from the future.

    Minute bars are included once complete; the current session's daily bar is the part so far.
    Minute and hour bars are aligned to the New York clock (5Min at :00, :05, ...; 1Hour at :00).
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("bar start and end must be timezone-aware")
    end = min(end, now)
    if end < start or symbol not in data.assets:
        return []
    first = data.index_on_or_before(start)
    first = 0 if first is None else first
    # A daily bar is stamped at midnight, before its session opens: look up to the session of now.
    last = data.index_on_or_before(now if unit in ("Day", "Week", "Month") else end)
    if last is None:
        return []
    result: list[TimedBar] = []
    if unit in ("Day", "Week", "Month"):
        # Sessions closed by now take the fast path; the one in progress is built from its minutes.
        closed_last = last if now >= data.sessions[last].close else last - 1
        days = data.completed_daily_bars(symbol, first, closed_last)
        if days is None:
            days = [b for i in range(first, closed_last + 1) if (b := data.daily_timed_bar(symbol, i, now))]
        if closed_last < last:
            current = data.daily_timed_bar(symbol, last, now)
            if current is not None:
                days.append(current)
        if unit == "Day":
            # Oldest first and one a session, so the bars within [start, end] are one slice.
            lo = bisect.bisect_left(days, start, key=_stamp)
            return days[lo : bisect.bisect_right(days, end, lo=lo, key=_stamp)]
        return [b for b in _group(days, _week_key if unit == "Week" else _month_key) if start <= b.t <= end]
    span = amount * (60 if unit == "Hour" else 1)
    for i in range(first, last + 1):
        session = data.sessions[i]
        bars = data.minute_bars(symbol, i)
        done = min(len(bars), int((min(now, session.close) - session.open) // MINUTE))
        if done <= 0:
            continue
        if span == 1:
            # Minute k starts at open + k minutes: those within [start, end] are one range of k.
            first_k = max(0, -((session.open - start) // MINUTE))
            last_k = min(done - 1, (end - session.open) // MINUTE)
            result.extend(
                TimedBar(session.open + MINUTE * k, *bars[k], trade_count(bars[k][4]))
                for k in range(first_k, last_k + 1)
            )
            continue
        minutes = [
            TimedBar(session.open + MINUTE * k, *bars[k], trade_count(bars[k][4])) for k in range(done)
        ]

        def bucket(bar: TimedBar, span: int = span) -> datetime:
            local = bar.t.astimezone(NEW_YORK)
            minute_of_day = local.hour * 60 + local.minute
            floor = minute_of_day - minute_of_day % span
            return local.replace(hour=floor // 60, minute=floor % 60)

        result.extend(b for b in _group(minutes, bucket) if start <= b.t <= end)
    return result


def _stamp(bar: TimedBar) -> datetime:
    return bar.t


def _week_key(bar: TimedBar) -> datetime:
    local = bar.t.astimezone(NEW_YORK)
    return local - timedelta(days=local.weekday())


def _month_key(bar: TimedBar) -> datetime:
    return bar.t.astimezone(NEW_YORK).replace(day=1)


def _group(bars: list[TimedBar], key) -> list[TimedBar]:
    grouped: list[TimedBar] = []
    current: list[TimedBar] = []
    current_key = None
    for bar in bars:
        k = key(bar)
        if current and k != current_key:
            grouped.append(_merge(current_key, current))
            current = []
        current_key = k
        current.append(bar)
    if current:
        grouped.append(_merge(current_key, current))
    return grouped


def _merge(t: datetime, bars: list[TimedBar]) -> TimedBar:
    return TimedBar(
        t,
        bars[0].open,
        max(b.high for b in bars),
        min(b.low for b in bars),
        bars[-1].close,
        sum(b.volume for b in bars),
        sum(b.trades for b in bars),
    )
