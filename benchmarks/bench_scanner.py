"""How fast the nightly scan runs: 500 tickers x 3 strategies x 2 years of daily bars, bar fetching included.

Starts the simulated market as its own process (`python -m sim --universe-size 500`, rate limit
off) and times the whole scan as the job runs it (`services.scanner.scan.scan`: the broker's asset list,
the clock, daily bars in batches through AlpacaExecutor/alpaca-py over HTTP, three backtests per ticker
through the manager's `bar_exit`, one atomic log per ticker), with 1 worker process and with N.

Floor, measured in the same run against the same server: one bare alpaca-py
`StockHistoricalDataClient.get_stock_bars` for all 500 tickers over the same two years (the SDK follows
the pages itself), i.e. what only fetching and parsing the bars costs. The ratio printed is scan / floor.
Target: the whole scan under 10 s.

    .venv/bin/python benchmarks/bench_scanner.py [--tickers 500] [--workers 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from simhelpers import DEFAULT_START, start_sim  # noqa: E402

from services.scanner import scan as scanner  # noqa: E402
from shared.backtest import BlackSheepRule  # noqa: E402
from shared.broker import make_executor  # noqa: E402
from shared.config import ExitSettings  # noqa: E402
from shared.exits import ExitRules  # noqa: E402
from shared.strategies import STRATEGIES  # noqa: E402

TARGET_SECONDS = 10.0
HISTORY_DAYS = 730


def timed_scan(settings, folder: Path, workers: int, limit: int) -> tuple[float, scanner.ScanSummary]:
    started = time.perf_counter()
    tickers = scanner.broker_universe(settings)[:limit]
    summary = scanner.scan(
        functools.partial(make_executor, settings), tickers, folder, rules=ExitRules.from_settings(ExitSettings()),
        min_trades=10, history_days=HISTORY_DAYS, batch_size=100, black_sheep_rule=BlackSheepRule(),
        scanned_at=DEFAULT_START, workers=workers,
    )
    return time.perf_counter() - started, summary


def fetch_floor(handle, tickers: list[str]) -> tuple[float, int]:
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    client = handle.data_client()
    started = time.perf_counter()
    end = DEFAULT_START
    barset = client.get_stock_bars(StockBarsRequest(symbol_or_symbols=tickers, timeframe=TimeFrame.Day,
                                                    start=end - timedelta(days=HISTORY_DAYS), end=end))
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(b) for b in barset.data.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    handle = start_sim(process=True, universe_size=args.tickers, rate_limit=0)
    try:
        settings = handle.broker_settings()
        tickers = scanner.broker_universe(settings)[: args.tickers]
        fetch_floor(handle, tickers[:20])  # warm the server's paths
        floors, bar_count = [], 0
        for _ in range(args.repeat):
            elapsed, bar_count = fetch_floor(handle, tickers)
            floors.append(elapsed)
        floor = statistics.median(floors)
        print(f"{len(tickers)} tickers x {len(STRATEGIES)} strategies, {bar_count} daily bars "
              f"({bar_count / len(tickers):.0f} sessions each), sim process, rate limit off")
        print(f"floor: bare alpaca-py get_stock_bars of all bars          {floor:6.2f} s (median of {args.repeat})")
        results = {}
        for workers in sorted({1, args.workers}):
            runs = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as folder:
                    elapsed, summary = timed_scan(settings, Path(folder), workers, args.tickers)
                    runs.append(elapsed)
                    assert summary.scanned == len(tickers), summary.errors[:3]
            results[workers] = statistics.median(runs)
            print(f"scan, {workers} worker{'s' if workers > 1 else ' '} (universe, bars, backtests, logs)  "
                  f"{results[workers]:6.2f} s  {len(tickers) / results[workers]:6.1f} tickers/s  "
                  f"ratio to floor {results[workers] / floor:4.2f}  "
                  f"[{summary.in_trade} IN_TRADE, {summary.signals_found} signals]")
        best = min(results.values())
        verdict = "meets" if best < TARGET_SECONDS else "MISSES"
        print(f"best whole scan {best:.2f} s: {verdict} the {TARGET_SECONDS:g} s target")
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
