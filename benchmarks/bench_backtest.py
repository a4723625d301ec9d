"""The portfolio backtest's speed (issue 17): 10 years x 20 tickers with the default settings (target
under 5 s), and a sweep of 12 combinations (target under 30 s), beside a floor measured in the same run:
the bare loop over the same bars (every session, every ticker's bar read and compared once).

Data: the real bars of bokeh-sampledata (AAPL, IBM, MSFT, GOOG, unadjusted, with AAPL's 2005 split)
when the `[data]` extra is installed, the other tickers synthetic (a seeded random walk); all synthetic
without the extra. The script says which.

    python benchmarks/bench_backtest.py [--years 10] [--tickers 20] [--workers N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.market.calendar import NEW_YORK  # noqa: E402
from shared.models import Bar  # noqa: E402

#: The history starts two years before the backtest (the scanner looks FL_SCAN_HISTORY_DAYS back).
FIRST = date(2002, 1, 2)


@dataclass(frozen=True)
class History:
    bars: dict
    adjusted: bool
    splits: dict = field(default_factory=dict)
    source: str = ""


def synthetic(symbol: str, sessions: list[date], seed: int) -> tuple[Bar, ...]:
    rng = random.Random(seed)
    price, out = 20.0 + 5 * (seed % 17), []
    for day in sessions:
        o = price * (1 + rng.gauss(0, 0.008))
        c = o * (1 + rng.gauss(0.0004, 0.02))
        h, low = max(o, c) * (1 + abs(rng.gauss(0, 0.008))), min(o, c) * (1 - abs(rng.gauss(0, 0.008)))
        out.append(Bar(t=datetime.combine(day, datetime.min.time(), NEW_YORK), o=Decimal(f"{o:.2f}"),
                       h=Decimal(f"{h:.2f}"), l=Decimal(f"{low:.2f}"), c=Decimal(f"{c:.2f}"),
                       v=Decimal(rng.randint(500_000, 5_000_000))))
        price = c
    return tuple(out)


def build(years: int, tickers: int) -> tuple[History, str, date, date]:
    start = date(FIRST.year + 2, 1, 2)
    end = date(start.year + years - 1, 12, 31)
    bars, splits, real = {}, {}, []
    try:
        from shared.history import load

        loaded = load("bokeh", start=FIRST, end=end)
        for symbol in ("AAPL", "IBM", "MSFT", "GOOG"):
            if symbol in loaded.bars and len(bars) < tickers:
                bars[symbol] = tuple(loaded.bars[symbol])
                splits[symbol] = tuple(loaded.splits.get(symbol, ()))
                real.append(symbol)
        source = f"{', '.join(real)} real ({loaded.source})"
    except Exception as exc:  # noqa: BLE001 - no [data] extra: all synthetic, said below
        source = f"no bokeh-sampledata ({type(exc).__name__}): all synthetic"
    sessions = sorted({b.t.date() for series in bars.values() for b in series})
    weekdays = [FIRST + timedelta(days=i) for i in range((end - FIRST).days + 1) if (FIRST + timedelta(days=i)).weekday() < 5]
    sessions = sorted(set(sessions) | {d for d in weekdays if not sessions or d > sessions[-1]})
    n = 0
    while len(bars) < tickers:
        bars[f"SYN{n:02d}"] = synthetic(f"SYN{n:02d}", sessions, n)
        n += 1
    source += f", {tickers - len(real)} synthetic"
    return History(bars, adjusted=not splits or not any(splits.values()), splits=splits, source=source), \
        source, start, end


def floor(history: History, start: date, end: date) -> tuple[float, int]:
    """The bare loop: every session, every ticker's bar looked up and its range compared."""
    index = {s: {b.t.date(): b for b in bars} for s, bars in history.bars.items()}
    sessions = sorted({d for m in index.values() for d in m if start <= d <= end})
    t0 = time.perf_counter()
    touched = 0
    for day in sessions:
        for series in index.values():
            bar = series.get(day)
            if bar is not None and bar.l <= bar.o <= bar.h:
                touched += 1
    return time.perf_counter() - t0, len(sessions)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--years", type=int, default=10)
    parser.add_argument("--tickers", type=int, default=20)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from services.reporter.backtest_cli import run_grid
    from shared.linebacktest import BacktestSettings, run

    history, source, start, end = build(args.years, args.tickers)
    settings = BacktestSettings.load({})
    bare, sessions = floor(history, start, end)
    print(f"data: {args.tickers} tickers: {source}; {sessions} sessions {start} to {end}")
    cpu0, t0 = time.process_time(), time.perf_counter()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    result = run(history, settings, start=start, end=end)
    if args.profile:
        profiler.disable()
    one, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    per_day, floor_day = one / sessions, bare / sessions
    print(f"one run (default settings): {one:.2f} s wall, {cpu:.2f} s CPU, {len(result.closed)} closed trades "
          f"(target < 5 s)")
    print(f"per session: {per_day * 1e3:.3f} ms; floor (bare loop over the same bars): {floor_day * 1e6:.1f} us; "
          f"ratio {per_day / floor_day:.0f}x")
    if args.profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return 0
    grid = [{"stop_loss_pct": s, "trailing_giveback_pct": g, "time_stop_days": d}
            for s in ("3", "5", "8") for g in ("30", "50") for d in ("5", "7")]
    t0 = time.perf_counter()
    rows = run_grid(history, {}, grid, start, end, workers=args.workers)
    sweep = time.perf_counter() - t0
    print(f"sweep of {len(grid)} combinations on {args.workers} process(es): {sweep:.2f} s wall (target < 30 s), "
          f"{sweep / len(grid):.2f} s a run; best {rows[0].combo} sharpe "
          f"{'-' if rows[0].sharpe is None else f'{rows[0].sharpe:.2f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
