"""Daily price history for the portfolio backtest and the simulator's replay: where it comes from,
whether it is split-adjusted, and which splits it holds. Reading files and packages only; the broker
source goes through the broker adapter.

`load(source, start=, end=, symbols=)` gives a `History`: daily `Bar`s per symbol (oldest first,
stamped 00:00 America/New_York as Alpaca stamps them, Decimal prices), whether the prices are
split-adjusted, and, when they are not, the splits inside the bars' span (effective day, ratio of new
to old shares). `split_adjusted(history)` turns raw prices into adjusted ones. Sources:

- `csv:PATH`: a CSV file with a `symbol` column (one long file), or a folder of `SYMBOL.csv` files
  (one per ticker). Every file declares `# adjusted: yes` or `# adjusted: no` above its header; the
  format is in docs/data.md.
- `bokeh`: the bokeh-sampledata package (the `[data]` extra), through its documented loader
  `bokeh_sampledata.stocks`, which reads the file the package ships (no network). Its prices are
  unadjusted; the splits are read from its adjusted close (`splits_from_adjusted_close`).
- `broker`: the broker's own daily bars (raw, Alpaca's default) and its corporate-actions feed for
  the splits, with the keys of the environment and `.env`; `symbols` is required.

Anything wrong with a source, a file or a row is one `InputError` line naming it (file and line for a
row), never a traceback.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path

from shared import userfiles
from shared.errors import ConfigError, FactoryLineError, InputError
from shared.intraday import valid_price
from shared.market.calendar import NEW_YORK
from shared.models import Bar
from shared.money import ZERO, non_negative

#: A history CSV larger than this is refused unread (20 years of daily bars of 500 tickers in one
#: long file is about 150 MiB).
MAX_HISTORY_CSV_BYTES = 256 * 1024 * 1024
#: A folder source reads at most this many SYMBOL.csv files.
MAX_HISTORY_FILES = 5000
#: The declaration every history CSV carries above its header.
ADJUSTED_LINE = re.compile(r"^#\s*adjusted\s*:\s*(\S+)\s*$", re.IGNORECASE)
_YES = {"yes", "true", "y", "1"}
_NO = {"no", "false", "n", "0"}
_TICKER = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")  # shared.signals.TICKER_PATTERN
_PRICE_COLUMNS = ("open", "high", "low", "close")
#: Column names accepted for the date (the first one present is used).
_DATE_COLUMNS = ("date", "timestamp")

#: A jump of the close/adjusted-close ratio this far from 1 (either way) can be a split; smaller ones
#: are dividends (Microsoft's $3 special dividend of November 2004 moved it by 11%).
SPLIT_MIN_JUMP = Decimal("1.2")
#: How close the jump must be to a split ratio of small whole numbers (n:m, both at most 20).
SPLIT_RATIO_TOLERANCE = Decimal("0.03")
#: How close the price gap itself (previous close / this open) must be to the ratio: a split is
#: visible in the raw prices too, which a data error in the adjusted close is not.
SPLIT_GAP_TOLERANCE = Decimal("0.35")

SplitList = tuple[tuple[date, Decimal], ...]


@dataclass(frozen=True)
class History:
    """Daily bars per symbol, oldest first, and what they are."""

    #: shared.models.Bar per symbol, oldest first, daily bars stamped 00:00 America/New_York, Decimals.
    bars: Mapping[str, tuple[Bar, ...]]
    #: True: split-adjusted prices (the source says so). False: raw prices, the splits in `splits`.
    adjusted: bool
    #: symbol -> ((effective day, ratio new/old shares), ...), oldest first; only for raw prices,
    #: only the splits between a symbol's first and last bar (a split on its first day changes nothing).
    splits: Mapping[str, SplitList] = field(default_factory=dict)
    #: One line for people, e.g. "bokeh-sampledata 2026.1, unadjusted".
    source: str = ""

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(sorted(self.bars))

    def first_day(self) -> date:
        return min(bars[0].t.date() for bars in self.bars.values() if bars)

    def last_day(self) -> date:
        return max(bars[-1].t.date() for bars in self.bars.values() if bars)


def daily_bar_time(day: date) -> datetime:
    """Alpaca stamps a daily bar at midnight New York time of its session's date."""
    return datetime.combine(day, time(0), tzinfo=NEW_YORK)


def _bar(day: date, o: Decimal, h: Decimal, lo: Decimal, c: Decimal, v: Decimal) -> Bar:
    """A daily bar with its prices on the broker's increments (whole cents at or above $1, 1/100
    cent below), as the simulator serves them and orders fill: the backtest and the replay then see
    the same prices. Rounding keeps the bar possible (low <= open, close <= high)."""
    return Bar(t=daily_bar_time(day), o=valid_price(o), h=valid_price(h), l=valid_price(lo), c=valid_price(c), v=v)


# -- load ------------------------------------------------------------------------------------


def load(source: str, *, start: date | None = None, end: date | None = None,
         symbols: Sequence[str] | None = None) -> History:
    """The history `source` names (`csv:PATH`, `bokeh`, `broker`), cut to start..end (inclusive) and
    to `symbols` (all of the source's when None). InputError for a bad source, file or row, for a
    symbol the source does not have, and when nothing is left after the cut."""
    if start is not None and end is not None and end < start:
        raise InputError(f"history: the end {end} is before the start {start}")
    wanted = _wanted_symbols(symbols)
    text = (source or "").strip()
    if text.startswith("csv:"):
        path = text[4:].strip()
        if not path:
            raise InputError("history source csv: needs a path (csv:PATH)")
        history = _load_csv(Path(path).expanduser())
    elif text == "bokeh":
        history = _load_bokeh()
    elif text == "broker":
        history = _load_broker(wanted, start, end)
    else:
        raise InputError(
            f"unknown history source {text[:60]!r}: use csv:PATH (a file or a folder), bokeh or broker"
        )
    return _cut(history, start, end, wanted)


def _wanted_symbols(symbols: Sequence[str] | None) -> tuple[str, ...] | None:
    if symbols is None:
        return None
    wanted: dict[str, None] = {}
    for raw in symbols:
        symbol = str(raw).strip().upper()
        if not _TICKER.match(symbol):
            raise InputError(f"history: {str(raw)[:20]!r} is not a ticker")
        wanted[symbol] = None
    if not wanted:
        raise InputError("history: the list of symbols is empty")
    return tuple(wanted)


def _cut(history: History, start: date | None, end: date | None, wanted: tuple[str, ...] | None) -> History:
    if wanted is not None:
        missing = [s for s in wanted if s not in history.bars]
        if missing:
            have = ", ".join(sorted(history.bars)[:12])
            raise InputError(f"{history.source}: no data for {', '.join(missing)} (it has {have})")
        names: Iterable[str] = wanted
    else:
        names = sorted(history.bars)
    bars: dict[str, tuple[Bar, ...]] = {}
    splits: dict[str, SplitList] = {}
    for symbol in names:
        kept = tuple(
            b for b in history.bars[symbol]
            if (start is None or b.t.date() >= start) and (end is None or b.t.date() <= end)
        )
        if not kept:
            continue
        bars[symbol] = kept
        first, last = kept[0].t.date(), kept[-1].t.date()
        inside = tuple((d, r) for d, r in history.splits.get(symbol, ()) if first < d <= last)
        if inside:
            splits[symbol] = inside
    if not bars:
        span = f"{start or 'the beginning'} to {end or 'the end'}"
        raise InputError(f"{history.source}: no bars from {span}")
    return History(bars=bars, adjusted=history.adjusted, splits=splits, source=history.source)


# -- split adjustment --------------------------------------------------------------------------


def split_adjusted(history: History) -> History:
    """The same bars with every price before a split divided by the split's ratio (all later splits'
    ratios multiplied) and every volume multiplied by it, prices on Alpaca's increments: what a
    split-adjusted source would have given. An adjusted history comes back as it is."""
    if history.adjusted:
        return history
    bars: dict[str, tuple[Bar, ...]] = {}
    count = 0
    for symbol, series in history.bars.items():
        splits = history.splits.get(symbol, ())
        count += len(splits)
        bars[symbol] = _adjust_series(series, splits) if splits else series
    note = f"{count} split{'s' if count != 1 else ''}"
    return History(bars=bars, adjusted=True, splits={}, source=f"{history.source}, split-adjusted ({note})")


def _adjust_series(series: Sequence[Bar], splits: SplitList) -> tuple[Bar, ...]:
    out: list[Bar] = []
    # Walk from the newest bar back: the factor grows by each split's ratio once its day is passed.
    pending = sorted(splits, reverse=True)
    factor = Decimal(1)
    for bar in reversed(series):
        day = bar.t.date()
        while pending and day < pending[0][0]:
            factor *= pending.pop(0)[1]
        if factor == 1:
            out.append(bar)
            continue
        out.append(Bar(
            t=bar.t, o=valid_price(bar.o / factor), h=valid_price(bar.h / factor),
            l=valid_price(bar.l / factor), c=valid_price(bar.c / factor), v=bar.v * factor,
        ))
    out.reverse()
    return tuple(out)


def splits_from_adjusted_close(
    days: Sequence[date], opens: Sequence[Decimal], closes: Sequence[Decimal], adjusted_closes: Sequence[Decimal]
) -> SplitList:
    """The splits that unadjusted closes and their adjusted closes imply, oldest first.

    The ratio close / adjusted close is constant between corporate actions; it steps down by a
    dividend's small fraction and by a split's whole ratio. A step of at least SPLIT_MIN_JUMP (either
    way) that sits near a ratio of small whole numbers n:m, and that the raw prices show too (the
    previous close over this open is near the same ratio), is a split effective on that day."""
    found: list[tuple[date, Decimal]] = []
    previous: Decimal | None = None
    for i, (close, adjusted) in enumerate(zip(closes, adjusted_closes, strict=True)):
        if close <= 0 or adjusted <= 0:
            previous = None
            continue
        ratio = close / adjusted
        if previous is not None:
            jump = previous / ratio
            if jump >= SPLIT_MIN_JUMP or jump <= 1 / SPLIT_MIN_JUMP:
                split = _nearest_split_ratio(jump)
                gap = closes[i - 1] / opens[i] if opens[i] > 0 else ZERO
                if split is not None and abs(gap / split - 1) <= SPLIT_GAP_TOLERANCE:
                    found.append((days[i], split))
        previous = ratio
    return tuple(found)


def _nearest_split_ratio(jump: Decimal) -> Decimal | None:
    best = Fraction(jump).limit_denominator(20)
    if best.numerator > 20 or best.numerator == 0:
        return None
    value = Decimal(best.numerator) / Decimal(best.denominator)
    if abs(jump / value - 1) > SPLIT_RATIO_TOLERANCE:
        return None
    return value if best.denominator == 1 else _trim(value)


def _trim(value: Decimal) -> Decimal:
    """1.5 stays 1.5; 1/3 keeps 12 significant digits (a reverse 1:3 split)."""
    return value if value == value.quantize(Decimal("0.0001")) else +value.quantize(Decimal("1e-12"))


# -- CSV ---------------------------------------------------------------------------------------


@dataclass
class _FileData:
    adjusted: bool
    bars: dict[str, list[Bar]]
    splits: dict[str, list[tuple[date, Decimal]]]


def _load_csv(path: Path) -> History:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv")
        if not files:
            raise InputError(f"{path}: the history folder has no SYMBOL.csv file")
        if len(files) > MAX_HISTORY_FILES:
            raise InputError(f"{path}: the history folder has {len(files)} CSV files, over its {MAX_HISTORY_FILES} limit")
        parts: list[tuple[Path, _FileData]] = []
        for file in files:
            symbol = file.stem.strip().upper()
            if not _TICKER.match(symbol):
                raise InputError(f"{file}: the file name must be a ticker (SYMBOL.csv), not {file.name!r}")
            parts.append((file, read_history_csv(file, symbol=symbol)))
        kinds = {data.adjusted for _, data in parts}
        if len(kinds) > 1:
            yes = [f.name for f, d in parts if d.adjusted][:3]
            no = [f.name for f, d in parts if not d.adjusted][:3]
            raise InputError(
                f"{path}: the files disagree: adjusted: yes in {', '.join(yes)}, adjusted: no in {', '.join(no)}"
            )
        bars: dict[str, list[Bar]] = {}
        splits: dict[str, list[tuple[date, Decimal]]] = {}
        for _, data in parts:
            bars.update(data.bars)
            splits.update(data.splits)
        adjusted = kinds.pop()
        what = f"{len(files)} files"
    else:
        data = read_history_csv(path)
        bars, splits, adjusted = data.bars, data.splits, data.adjusted
        what = "one file"
    return History(
        bars={s: tuple(b) for s, b in bars.items()},
        adjusted=adjusted,
        splits={s: tuple(v) for s, v in splits.items() if v},
        source=f"csv {path} ({what}), {'split-adjusted' if adjusted else 'unadjusted'}",
    )


def read_history_csv(path: Path, *, symbol: str | None = None) -> _FileData:
    """One history CSV: a per-ticker file when `symbol` is given (its `symbol` column, if any, must
    agree), else a long file with a `symbol` column, or without one a file named after its ticker
    (AAPL.csv). See docs/data.md for the format."""
    try:
        with userfiles.open_text(path, max_bytes=MAX_HISTORY_CSV_BYTES, what="history CSV") as handle:
            return _parse(path, handle, symbol)
    except UnicodeDecodeError:
        raise InputError(f"{path}: the history CSV is not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"{path}: unreadable history CSV ({exc})") from None


def _parse(path: Path, handle, file_symbol: str | None) -> _FileData:
    adjusted: bool | None = None
    line = 0
    header: str | None = None
    for raw in handle:
        line += 1
        text = raw.strip()
        if not text:
            continue
        if text.startswith("#"):
            match = ADJUSTED_LINE.match(text)
            if match:
                word = match.group(1).lower()
                if word not in _YES | _NO:
                    raise InputError(f"{path}:{line}: '# adjusted:' must be yes or no, not {match.group(1)[:20]!r}")
                adjusted = word in _YES
            continue
        header = raw
        break
    if header is None:
        raise InputError(f"{path}: the history CSV has no header line")
    if adjusted is None:
        raise InputError(
            f"{path}: say whether the prices are split-adjusted: add a line '# adjusted: yes' "
            "or '# adjusted: no' above the header"
        )
    header_line = line
    columns = [c.strip().lower() for c in next(csv.reader([header]))]
    date_column = next((c for c in _DATE_COLUMNS if c in columns), None)
    missing = [c for c in _PRICE_COLUMNS if c not in columns]
    if date_column is None:
        missing.insert(0, "date")
    if file_symbol is None and "symbol" not in columns:
        # One file without a symbol column is one ticker's, named after it (AAPL.csv).
        stem = path.stem.strip().upper()
        if _TICKER.match(stem):
            file_symbol = stem
        else:
            missing.insert(0, "symbol")
    if missing:
        raise InputError(
            f"{path}:{header_line}: the header needs {'symbol,' if file_symbol is None else ''}"
            f"date,open,high,low,close (missing {', '.join(missing)})"
        )
    if adjusted and ("split" in columns or "adj_close" in columns):
        raise InputError(
            f"{path}:{header_line}: a split-adjusted file ('# adjusted: yes') has no split or adj_close "
            "column (its splits are already in its prices)"
        )
    index = {name: i for i, name in enumerate(columns)}
    reader = csv.reader(handle)
    rows: dict[str, list[tuple[date, Bar, Decimal | None, Decimal | None]]] = {}
    seen: dict[tuple[str, date], int] = {}
    line = header_line
    for record in reader:
        line = header_line + reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        if record[0].lstrip().startswith("#"):
            continue
        if len(record) != len(columns):
            raise InputError(f"{path}:{line}: {len(record)} fields, the header has {len(columns)}")
        cell = {name: record[i].strip() for name, i in index.items()}
        symbol = file_symbol
        if "symbol" in cell:
            named = cell["symbol"].upper()
            if file_symbol is None:
                if not _TICKER.match(named):
                    raise InputError(f"{path}:{line}: {cell['symbol'][:20]!r} is not a ticker")
                symbol = named
            elif named and named != file_symbol:
                raise InputError(f"{path}:{line}: symbol {named} in the file of {file_symbol}")
        assert symbol is not None
        day = _day(path, line, cell[date_column])
        o, h, lo, c = (_price(path, line, name, cell[name]) for name in _PRICE_COLUMNS)
        if not (lo <= min(o, c) and max(o, c) <= h):
            raise InputError(f"{path}:{line}: impossible bar: open {o} high {h} low {lo} close {c}")
        volume = _volume(path, line, cell.get("volume", ""))
        split = _split(path, line, cell.get("split", ""))
        adj = _price(path, line, "adj_close", cell["adj_close"]) if cell.get("adj_close") else None
        if (symbol, day) in seen:
            raise InputError(f"{path}:{line}: a second {symbol} bar for {day} (the first is on line {seen[symbol, day]})")
        seen[symbol, day] = line
        bar = _bar(day, o, h, lo, c, volume)
        rows.setdefault(symbol, []).append((day, bar, split, adj))
    if not rows:
        raise InputError(f"{path}: the history CSV has a header but no bars")
    data = _FileData(adjusted=adjusted, bars={}, splits={})
    for symbol, entries in rows.items():
        entries.sort(key=lambda e: e[0])
        data.bars[symbol] = [e[1] for e in entries]
        if "split" in index:
            listed = [(d, s) for d, _, s, _ in entries if s is not None and s != 1]
        elif "adj_close" in index:
            usable = [e for e in entries if e[3] is not None]
            listed = list(splits_from_adjusted_close(
                [e[0] for e in usable], [e[1].o for e in usable], [e[1].c for e in usable], [e[3] for e in usable]
            ))
        else:
            listed = []
        data.splits[symbol] = listed
    return data


def _day(path: Path, line: int, text: str) -> date:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{path}:{line}: the date {text[:30]!r} is not YYYY-MM-DD") from None
    if moment.tzinfo is None:
        raise InputError(f"{path}:{line}: the time {text[:30]!r} needs a zone (or write the date alone, YYYY-MM-DD)")
    return moment.astimezone(NEW_YORK).date()


def _price(path: Path, line: int, name: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or value <= 0:
        raise InputError(f"{path}:{line}: {name} {text[:30]!r} is not a positive price")
    return value


def _volume(path: Path, line: int, text: str) -> Decimal:
    if not text:
        return ZERO
    value = non_negative(text)
    if value is None:
        raise InputError(f"{path}:{line}: volume {text[:30]!r} is not a number of shares")
    return value


def _split(path: Path, line: int, text: str) -> Decimal | None:
    """`2`, `1.5`, `0.25` (new shares per old) or `2:1`, `3:2`, `1:4` (new:old)."""
    if not text:
        return None
    try:
        if ":" in text:
            new, old = (Decimal(part.strip()) for part in text.split(":", 1))
            value = new / old
        else:
            value = Decimal(text)
    except (InvalidOperation, ArithmeticError, ValueError):
        value = None
    if value is None or not value.is_finite() or value <= 0:
        raise InputError(f"{path}:{line}: split {text[:30]!r} is not a ratio (2, 1.5, 2:1, 1:4)")
    return _trim(value)


# -- bokeh-sampledata ----------------------------------------------------------------------------

BOKEH_TICKERS = ("AAPL", "FB", "GOOG", "IBM", "MSFT")


def _load_bokeh() -> History:
    try:
        from bokeh_sampledata import __version__ as version
        from bokeh_sampledata import stocks
    except ImportError:
        raise InputError(
            "history source bokeh needs the bokeh-sampledata package: pip install 'factoryline[data]'"
        ) from None
    bars: dict[str, tuple[Bar, ...]] = {}
    splits: dict[str, SplitList] = {}
    for symbol in BOKEH_TICKERS:
        series = getattr(stocks, symbol)
        days = [date.fromisoformat(d) for d in series["date"]]
        # The loader gives floats parsed from the file's decimal text; repr gives that text back.
        opens = [Decimal(repr(x)) for x in series["open"]]
        highs = [Decimal(repr(x)) for x in series["high"]]
        lows = [Decimal(repr(x)) for x in series["low"]]
        closes = [Decimal(repr(x)) for x in series["close"]]
        adjusted_closes = [Decimal(repr(x)) for x in series["adj_close"]]
        volumes = [Decimal(int(x)) for x in series["volume"]]
        rows = []
        for day, o, h, lo, c, v in zip(days, opens, highs, lows, closes, volumes, strict=True):
            # 2026.1 has no impossible bar; should a later release have one, its range is widened
            # to hold the open and close rather than the whole source refused.
            rows.append(_bar(day, o, max(h, o, c), min(lo, o, c), c, v))
        bars[symbol] = tuple(rows)
        found = splits_from_adjusted_close(days, opens, closes, adjusted_closes)
        if found:
            splits[symbol] = found
    return History(bars=bars, adjusted=False, splits=splits, source=f"bokeh-sampledata {version}, unadjusted")


# -- the broker -------------------------------------------------------------------------------

#: The broker source reads two years back when no start is given.
BROKER_DEFAULT_YEARS = 2


def _load_broker(symbols: tuple[str, ...] | None, start: date | None, end: date | None) -> History:
    from shared import config
    from shared.broker import make_executor
    from shared.models import Timeframe

    if not symbols:
        raise InputError("history source broker needs the symbols to read (e.g. --symbols AAPL,MSFT)")
    today = datetime.now(UTC).astimezone(NEW_YORK).date()
    last = min(end or today, today)
    first = start or last - timedelta(days=365 * BROKER_DEFAULT_YEARS)
    try:
        settings = config.load(config.BrokerSettings)
    except ConfigError as exc:
        raise InputError(f"history source broker: {exc}") from None
    executor = make_executor(settings)
    try:
        rows = executor.get_bar_rows(
            symbols, Timeframe.DAY, daily_bar_time(first), daily_bar_time(last) + timedelta(hours=23, minutes=59)
        )
        announced = executor.get_splits(symbols, first, last)
        clock = executor.get_clock()
    except FactoryLineError as exc:
        raise InputError(f"history source broker: {exc}") from None
    finally:
        executor.close()
    running = clock.timestamp.astimezone(NEW_YORK).date() if clock.is_open else None
    bars: dict[str, tuple[Bar, ...]] = {}
    for symbol in symbols:
        series = []
        for row in rows.get(symbol, []):
            day = row.t.astimezone(NEW_YORK).date()
            if day == running:
                continue  # today's bar while the session runs is not a daily bar yet
            series.append(Bar(t=daily_bar_time(day), o=row.o, h=row.h, l=row.l, c=row.c, v=row.v))
        if series:
            bars[symbol] = tuple(series)
    splits: dict[str, list[tuple[date, Decimal]]] = {}
    for split in announced:
        splits.setdefault(split.symbol, []).append((split.ex_date, _trim(split.ratio)))
    return History(
        bars=bars, adjusted=False, splits={s: tuple(v) for s, v in splits.items()},
        source=f"broker daily bars ({settings.ALPACA_DATA_FEED} feed), unadjusted",
    )
