"""Seeded price paths: daily OHLCV per session and minute bars that agree with them.

Prices are integers in ticks of $0.0001 (exact, fast), always on Alpaca's increments: whole cents at
or above $1, 1/100 cent below. `to_price` turns ticks into the Decimal every caller sees.

A symbol's daily path is a geometric random walk with the asset's daily volatility, anchored at its
base price on the anchor session (the engine's start), walked forward and backward lazily with
seeded generators, so it depends only on (seed, symbol, anchor) and any range is cheap to ask for.
It has the structure real charts have, so a trend strategy can prove itself in a backtest (or not):
trend regimes (bull, flat, bear: a drift of +0.1, 0 or -0.1 daily volatilities a session, lasting
about 90 sessions) and, per ticker, some momentum (0, 0.1 or 0.2 of a session's surprise carries
into the next). Each bar opens near the previous close and moves in the session, walked forward or
backward alike. Each session's
minute path is a seeded bridge from the day's open to its close that touches the day's high and
low exactly, so minute bars aggregate to the daily bar. A bars CSV can replace the generated days.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from itertools import accumulate
from operator import mul
from pathlib import Path

from shared import userfiles
from shared.errors import InputError
from shared.market.calendar import NEW_YORK
from shared.models import TradingDay

TICKS_PER_DOLLAR = 10_000
_CENT_TICKS = 100
_MIN_TICKS = 100  # paths never fall below one cent


def round_ticks(value: float) -> int:
    """Nearest valid price in ticks: whole cents at or above $1, 1/100 cent below."""
    ticks = round(value)  # an int (half to even)
    if ticks >= TICKS_PER_DOLLAR:
        return round(value / _CENT_TICKS) * _CENT_TICKS
    return ticks if ticks > 1 else 1


def to_price(ticks: int) -> Decimal:
    if ticks >= TICKS_PER_DOLLAR:
        return Decimal(ticks // _CENT_TICKS).scaleb(-2)
    return Decimal(ticks).scaleb(-4)


def to_ticks(price: Decimal) -> int:
    return round_ticks(float(price * TICKS_PER_DOLLAR))


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted per process)."""
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


#: The trend regimes of a generated path: each session's expected return in daily volatilities
#: (bull, flat, bear). A regime lasts REGIME_SESSIONS sessions on average, then gives way to one of
#: the other two; the three are equally likely over time, so the market as a whole does not drift.
REGIME_DRIFTS: tuple[float, ...] = (0.1, 0.0, -0.1)
REGIME_SESSIONS = 90
#: A ticker's momentum: how much of one session's surprise carries into the next (the daily returns'
#: autocorrelation), one of these per (seed, ticker). 0 is a pure random walk around the regime's drift.
MOMENTUM_CHOICES: tuple[float, ...] = (0.0, 0.1, 0.2)


class Normals:
    """`rng.gauss(0.0, 1.0)` again and again, drawn in blocks: the same numbers in the same order as
    calling it each time (the same Box-Muller pairs of `rng.random()`, CPython's `random.gauss`), a
    Python call per block instead of per number. The generator must be fresh (no gauss pending) and
    used through this from then on (a block draws ahead)."""

    __slots__ = ("_random", "_buffer", "_next")

    def __init__(self, rng: random.Random):
        self._random = rng.random
        self._buffer: list[float] = []
        self._next = 0

    def take(self, count: int) -> list[float]:
        """The next `count` numbers."""
        start = self._next
        if start + count > len(self._buffer):
            self._buffer = self._buffer[start:] + gauss_block(self._random, max(count, 64))
            start = 0
        self._next = start + count
        return self._buffer[start : start + count]

    def one(self) -> float:
        start = self._next
        if start >= len(self._buffer):
            self._buffer = gauss_block(self._random, 64)
            start = 0
        self._next = start + 1
        return self._buffer[start]


def gauss_block(random_: object, count: int) -> list[float]:
    """`count` (rounded up to even) successive `gauss(0.0, 1.0)` values of the generator whose
    `random` method is `random_`, computed as CPython's `random.gauss` does (floats bit for bit)."""
    pairs = (count + 1) // 2
    uniforms = [random_() for _ in range(2 * pairs)]  # type: ignore[operator]
    angles = [u * math.tau for u in uniforms[0::2]]
    radii = [math.sqrt(-2.0 * math.log(1.0 - u)) for u in uniforms[1::2]]
    out = [0.0] * (2 * pairs)
    # mu + z * sigma with mu 0.0 and sigma 1.0, as gauss returns it (0.0 + z turns -0.0 into 0.0).
    out[0::2] = [0.0 + z * 1.0 for z in map(mul, map(math.cos, angles), radii)]
    out[1::2] = [0.0 + z * 1.0 for z in map(mul, map(math.sin, angles), radii)]
    return out


def next_regime(regime: int, rng: random.Random) -> int:
    """The next session's regime: the same one, or (1 in REGIME_SESSIONS) one of the others."""
    if rng.random() * REGIME_SESSIONS >= 1.0:
        return regime
    return rng.choice([r for r in range(len(REGIME_DRIFTS)) if r != regime])


class _Walk:
    """One direction of a symbol's daily walk from the anchor session: its generator (which also
    shapes each bar), its regime chain and the last session's surprise (for momentum)."""

    __slots__ = ("normals", "_regime_rng", "_regime", "_shock", "_sigma", "_phi")

    def __init__(self, seed: int, symbol: str, way: str, sigma: float, momentum: float, regime: int):
        #: The walk's generator's gauss(0, 1) draws, which also shape each bar.
        self.normals = Normals(random.Random(stable_seed(seed, symbol, way)))
        self._regime_rng = random.Random(stable_seed(seed, symbol, f"regime-{way}"))
        self._regime = regime
        self._shock = 0.0
        self._sigma, self._phi = sigma, momentum

    def factor(self) -> float:
        """One session's close-to-close factor in the current regime, then the next session's regime."""
        sigma, phi = self._sigma, self._phi
        self._shock = phi * self._shock + math.sqrt(1.0 - phi * phi) * self.normals.one()
        drift = REGIME_DRIFTS[self._regime] * sigma
        self._regime = next_regime(self._regime, self._regime_rng)
        return math.exp(drift - 0.5 * sigma**2 + sigma * self._shock)


@dataclass(frozen=True, slots=True)
class DayBar:
    """One session's bar for one symbol, in ticks."""

    open: int
    high: int
    low: int
    close: int
    volume: int


#: A minute bar in ticks: (open, high, low, close, volume).
MinuteBar = tuple[int, int, int, int, int]


class SymbolPath:
    """Daily bars for one symbol over the calendar's sessions, generated lazily from the anchor.

    `sessions` is the engine's list of sessions (shared by every symbol); index `anchor` is the
    session whose close is the asset's base price. Days given explicitly (CSV replay) win over
    generated ones; generation continues from the last given close.
    """

    def __init__(
        self,
        symbol: str,
        seed: int,
        base_price: float,
        daily_volatility: float,
        daily_volume: int,
        sessions: list[TradingDay],
        anchor: int,
        given_days: dict[int, DayBar] | None = None,
        given_minutes: dict[int, list[MinuteBar]] | None = None,
        documented_minutes: bool = False,
    ):
        self.symbol = symbol
        self._seed = seed
        self._sigma = daily_volatility
        self._volume = daily_volume
        self._sessions = sessions
        self._days: dict[int, DayBar] = dict(given_days or {})
        self._given_minutes = given_minutes or {}
        #: Replayed daily history: its days' minutes are the documented path (`shared.intraday`).
        self._documented = documented_minutes
        self._minute_cache: OrderedDict[int, list[MinuteBar]] = OrderedDict()
        momentum = random.Random(stable_seed(seed, symbol, "momentum")).choice(MOMENTUM_CHOICES)
        regime = random.Random(stable_seed(seed, symbol, "regime")).randrange(len(REGIME_DRIFTS))
        # The walk goes both ways from the anchor session (regimes and momentum are reversible: walked
        # backward they have the same statistics as forward).
        self._fwd = _Walk(seed, symbol, "forward", daily_volatility, momentum, regime)
        self._bwd = _Walk(seed, symbol, "backward", daily_volatility, momentum, regime)
        #: The close of the session before the lowest generated one (None: no backward generation).
        self._bwd_close: float | None
        self._first_given = min(self._days, default=-1)
        self._last_given = max(self._days, default=-2)
        if self._days:
            # Replay: generated days continue forward from the last given close, backward not at all.
            self._lo = min(self._days)
            self._hi = max(self._days)
            self._fwd_close = float(self._days[self._hi].close)
            self._bwd_close = None
        else:
            close = float(round_ticks(base_price * TICKS_PER_DOLLAR))
            before = self._step_back(close)
            first = self._make_day(before, close, Normals(random.Random(stable_seed(seed, symbol, "anchor"))))
            self._days[anchor] = first
            self._lo = self._hi = anchor
            self._fwd_close = float(first.close)
            self._bwd_close = before

    # -- daily ----------------------------------------------------------------------------
    def day(self, index: int) -> DayBar | None:
        """The session's bar, or None before the first replayed day or outside the calendar."""
        if not 0 <= index < len(self._sessions):
            return None
        if index > self._hi:
            self._extend_forward(index)
        elif index < self._lo:
            if self._bwd_close is None:
                return None
            self._extend_backward(index)
        return self._days.get(index)

    def _step_back(self, close: float) -> float:
        """The previous session's close, given this one's."""
        return max(close / self._bwd.factor(), float(_MIN_TICKS))

    def _make_day(self, close_prev: float, close: float, normals: Normals) -> DayBar:
        sigma = self._sigma
        g_open, g_high, g_low, g_volume = normals.take(4)
        open_ = close_prev * math.exp(0.25 * sigma * g_open)
        high = max(open_, close) * math.exp(abs(0.6 * sigma * g_high))
        low = min(open_, close) * math.exp(-abs(0.6 * sigma * g_low))
        volume = int(self._volume * math.exp(0.35 * g_volume))
        o, c = round_ticks(max(open_, _MIN_TICKS)), round_ticks(max(close, _MIN_TICKS))
        h = max(round_ticks(high), o, c)
        lo = min(max(round_ticks(low), _MIN_TICKS), o, c)
        return DayBar(o, h, lo, c, max(volume, 100))

    def _extend_forward(self, index: int) -> None:
        while self._hi < index:
            close = max(self._fwd_close * self._fwd.factor(), float(_MIN_TICKS))
            bar = self._make_day(self._fwd_close, close, self._fwd.normals)
            self._hi += 1
            self._days[self._hi] = bar
            self._fwd_close = float(bar.close)

    def _extend_backward(self, index: int) -> None:
        while self._lo > index:
            close = self._bwd_close
            before = self._step_back(close)
            self._lo -= 1
            self._days[self._lo] = self._make_day(before, close, self._bwd.normals)
            self._bwd_close = before

    # -- minutes --------------------------------------------------------------------------
    def minutes(self, index: int) -> list[MinuteBar]:
        """Minute bars of the session (one per minute from the open to the close), or []."""
        cached = self._minute_cache.get(index)
        if cached is not None:
            self._minute_cache.move_to_end(index)
            return cached
        bars = self._given_minutes.get(index)
        if bars is None:
            day = self.day(index)
            if day is None:
                return []
            session = self._sessions[index]
            count = int((session.close - session.open).total_seconds() // 60)
            if self._documented and self._first_given <= index <= self._last_given:
                bars = documented_minutes(day, count)
            else:
                bars = bridge_minutes(
                    day, count, random.Random(stable_seed(self._seed, self.symbol, session.date))
                )
        self._minute_cache[index] = bars
        if len(self._minute_cache) > 64:
            self._minute_cache.popitem(last=False)
        return bars


def bridge_minutes(day: DayBar, count: int, rng: random.Random) -> list[MinuteBar]:
    """`count` minute bars from the day's open to its close that touch its high and low exactly."""
    o, h, lo, c = day.open, day.high, day.low, day.close
    if count < 3 or h == lo:
        flat = [(o, max(o, c), min(o, c), c, day.volume // max(count, 1))] * max(count, 1)
        return flat
    i_high, i_low = rng.sample(range(1, count), 2)
    # Every draw after the sample is a gauss(0, 1): the walk's steps, then the volume weights' noise,
    # then the wicks (drawn in one block, the same numbers as one gauss call each).
    normals = gauss_block(rng.random, 3 * count)
    waypoints = sorted([(0, float(o)), (i_high, float(h)), (i_low, float(lo)), (count, float(c))])
    step_sd = (h - lo) * 0.25 / math.sqrt(count)
    points = [0.0] * (count + 1)
    drawn = 0
    for (a, pa), (b, pb) in zip(waypoints, waypoints[1:], strict=False):
        span = b - a
        walk = list(accumulate([0.0 + g * step_sd for g in normals[drawn : drawn + span]], initial=0.0))
        drawn += span
        end = walk[-1]
        for k in range(span + 1):
            frac = k / span if span else 0.0
            points[a + k] = pa + (pb - pa) * frac + walk[k] - frac * end
    ticks = [min(max(round_ticks(p), lo), h) for p in points]
    ticks[0], ticks[count], ticks[i_high], ticks[i_low] = o, c, h, lo
    weights = [
        shape * math.exp(0.3 * g) for shape, g in zip(_volume_shape(count), normals[count : 2 * count], strict=True)
    ]
    total_weight = sum(weights)
    bars: list[MinuteBar] = []
    left = volume_of_day = day.volume
    wick_sd = step_sd * 0.5
    last = count - 1
    for k, g in enumerate(normals[2 * count : 3 * count]):
        bo, bc = ticks[k], ticks[k + 1]
        wick = abs(0.0 + g * wick_sd)
        bh = min(max(round_ticks(max(bo, bc) + wick), bo, bc), h)
        bl = max(min(round_ticks(min(bo, bc) - wick), bo, bc), lo)
        volume = left if k == last else int(volume_of_day * weights[k] / total_weight)
        left -= volume
        bars.append((bo, bh, bl, bc, max(volume, 0)))
    return bars


def documented_minutes(day: DayBar, count: int) -> list[MinuteBar]:
    """The replay of a real daily bar: `count` minute bars on the documented intraday path
    (`shared.intraday.minute_bars`: open, low at a third of the session, high at two thirds, close;
    straight lines), the path the portfolio backtest assumes, so the two see the same session. The
    day's volume is spread over the minutes in the session's U shape (the path has none of its own)."""
    from shared.intraday import minute_bars

    prices = minute_bars(to_price(day.open), to_price(day.high), to_price(day.low), to_price(day.close),
                         minutes=max(count, 3))
    shape = _volume_shape(len(prices))
    total = sum(shape)
    left = day.volume
    bars: list[MinuteBar] = []
    last = len(prices) - 1
    for k, (o, h, lo, c) in enumerate(prices):
        volume = left if k == last else int(day.volume * shape[k] / total)
        left -= volume
        bars.append((to_ticks(o), to_ticks(h), to_ticks(lo), to_ticks(c), max(volume, 0)))
    return bars


_volume_shapes: dict[int, list[float]] = {}


def _volume_shape(count: int) -> list[float]:
    """The U shape of volume over a session of `count` minutes (heavier at the open and close)."""
    shape = _volume_shapes.get(count)
    if shape is None:
        shape = _volume_shapes[count] = [1.0 + 2.5 * (2 * ((k + 0.5) / count) - 1) ** 2 for k in range(count)]
    return shape


# -- CSV replay ---------------------------------------------------------------------------

CSV_COLUMNS = ("symbol", "timestamp", "open", "high", "low", "close", "volume")


@dataclass
class ReplayData:
    """Bars read from a CSV or a daily history, keyed by symbol then session index."""

    days: dict[str, dict[int, DayBar]]
    minutes: dict[str, dict[int, list[MinuteBar]]]
    #: Daily history (shared.history): minutes on the documented path, raw prices with these splits
    #: (symbol -> [(session index of the ex date, ratio)]) applied on their dates by the engine.
    documented: bool = False
    splits: dict[str, list[tuple[int, Decimal]]] | None = None
    source: str = ""


def replay_from_history(history, sessions: list[TradingDay]) -> ReplayData:
    """A `shared.history.History` as replay data: each daily bar on its session, in ticks. Raw
    (unadjusted) prices stay raw; their splits are kept to be applied on their ex dates. A bar on a
    date that is no NYSE session is refused (InputError naming it): the backtest would trade it."""
    index_of = {s.date: i for i, s in enumerate(sessions)}
    days: dict[str, dict[int, DayBar]] = {}
    for symbol, bars in history.bars.items():
        by_index: dict[int, DayBar] = {}
        for bar in bars:
            day = bar.t.astimezone(NEW_YORK).date()
            index = index_of.get(day)
            if index is None:
                raise InputError(f"{history.source}: {symbol} has a bar on {day}, which is no NYSE session")
            by_index[index] = DayBar(to_ticks(bar.o), to_ticks(bar.h), to_ticks(bar.l), to_ticks(bar.c),
                                     int(bar.v))
        if by_index:
            days[symbol] = by_index
    splits: dict[str, list[tuple[int, Decimal]]] = {}
    if not history.adjusted:
        for symbol, listed in history.splits.items():
            for day, ratio in listed:
                if day in index_of and symbol in days:
                    splits.setdefault(symbol, []).append((index_of[day], ratio))
    return ReplayData(days=days, minutes={}, documented=True, splits=splits, source=history.source)


#: A bars CSV larger than this is refused unread (a year of minute bars for 50 tickers is about 300 MB).
MAX_BARS_CSV_BYTES = 512 * 1024 * 1024


def read_bars_csv(path: Path, sessions: list[TradingDay]) -> ReplayData:
    """Read `symbol,timestamp,open,high,low,close,volume` rows (header required).

    A symbol with one row per session is daily data (timestamp: a date or any time that day); one
    with several rows in a session is minute data (timestamp: the minute's start), aggregated into
    its daily bars, with missing minutes filled flat at the previous close. Rows outside regular
    sessions are ignored. Raises InputError with the file and line for anything unreadable.

    Only a regular file is read (a FIFO, device or directory is refused at once), at most
    MAX_BARS_CSV_BYTES of it, as UTF-8 with or without a byte-order mark (`shared.userfiles`).
    """
    index_of = {s.date: i for i, s in enumerate(sessions)}
    rows: dict[str, dict[int, list[tuple[datetime | None, int, int, int, int, int]]]] = {}
    try:
        _read_bar_rows(path, index_of, rows)
    except UnicodeDecodeError:
        raise InputError(f"{path}: the bars CSV is not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"{path}: unreadable bars CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path}: no bars on NYSE sessions")
    data = ReplayData(days={}, minutes={})
    for symbol, by_day in rows.items():
        intraday = any(len(entries) > 1 for entries in by_day.values())
        days: dict[int, DayBar] = {}
        for index, entries in by_day.items():
            if not intraday:
                _, o, h, lo, c, v = entries[0]
                days[index] = DayBar(o, max(h, o, c), min(lo, o, c), c, v)
                continue
            minutes = _minute_grid(sessions[index], entries)
            if not minutes:
                continue
            data.minutes.setdefault(symbol, {})[index] = minutes
            days[index] = DayBar(
                minutes[0][0],
                max(b[1] for b in minutes),
                min(b[2] for b in minutes),
                minutes[-1][3],
                sum(b[4] for b in minutes),
            )
        data.days[symbol] = days
    return data


def _read_bar_rows(path: Path, index_of: dict[date, int],
                   rows: dict[str, dict[int, list[tuple[datetime | None, int, int, int, int, int]]]]) -> None:
    with userfiles.open_text(path, max_bytes=MAX_BARS_CSV_BYTES, what="bars CSV") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path}: bars CSV needs columns {','.join(CSV_COLUMNS)} (missing {','.join(missing)})"
            )
        for line, row in enumerate(reader, start=2):
            try:
                symbol = row["symbol"].strip().upper()
                stamp = row["timestamp"].strip()
                if len(stamp) == 10:
                    day, moment = date.fromisoformat(stamp), None
                else:
                    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                    if moment.tzinfo is None:
                        raise ValueError("timestamp needs a timezone (e.g. Z or -05:00)")
                    day = moment.astimezone(NEW_YORK).date()
                prices = [
                    round_ticks(float(Decimal(row[k])) * TICKS_PER_DOLLAR)
                    for k in ("open", "high", "low", "close")
                ]
                volume = int(Decimal(row["volume"] or "0"))
            except (ValueError, ArithmeticError, AttributeError) as exc:
                raise InputError(f"{path}:{line}: unreadable bar row ({exc})") from None
            if not symbol or day not in index_of:
                continue
            rows.setdefault(symbol, {}).setdefault(index_of[day], []).append((moment, *prices, volume))


def _minute_grid(session: TradingDay, entries: list[tuple]) -> list[MinuteBar]:
    count = int((session.close - session.open).total_seconds() // 60)
    slots: dict[int, MinuteBar] = {}
    for moment, o, h, lo, c, v in entries:
        if moment is None:
            continue
        k = int((moment - session.open).total_seconds() // 60)
        if 0 <= k < count:
            slots[k] = (o, max(h, o, c), min(lo, o, c), c, v)
    if not slots:
        return []
    first = min(slots)
    previous_close = slots[first][0]
    bars: list[MinuteBar] = []
    for k in range(count):
        bar = slots.get(k)
        if bar is None:
            bar = (previous_close, previous_close, previous_close, previous_close, 0)
        bars.append(bar)
        previous_close = bar[3]
    return bars
