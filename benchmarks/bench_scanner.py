"""How fast the nightly scan runs: 500 tickers x 3 strategies x 2 years of daily bars, bar fetching included.

Starts the simulated market as its own process (`python -m sim --universe-size 500`, rate limit
off) and times the whole scan as the job runs it (`services.scanner.scan.scan`: the broker's asset list,
the clock, daily bars in batches through AlpacaExecutor.get_bar_rows over HTTP, three backtests per ticker
through the manager's `bar_exit`, one atomic log per ticker), with 1 worker process and with N. Also
printed: the CPU seconds the scan's own processes spent (the machine is shared: CPU is steadier than the
clock), and the same scan with the bars read as alpaca-py models (`get_bars`, the path before the raw read).

Floor, measured in the same run against the same server: one bare alpaca-py `get_stock_bars` of all 500
tickers over the same two years with `raw_data=True` (the SDK follows the pages and decodes the JSON,
nothing more), i.e. what only fetching the bars costs. The ratio printed is scan / floor. Beside it the
same call without `raw_data` (alpaca-py building its model per bar). Target: the whole scan within 3 s.

    .venv/bin/python benchmarks/bench_scanner.py [--tickers 500] [--workers 2] [--repeat 3] [--no-models]
"""

from __future__ import annotations

import argparse
import functools
import os
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

TARGET_SECONDS = 3.0
HISTORY_DAYS = 730


class _ModelBars:
    """An executor whose `get_bar_rows` is its `get_bars`: the scan as it read bars before (a model per bar)."""

    def __init__(self, executor):
        self._executor = executor

    def get_bar_rows(self, *args):
        return self._executor.get_bars(*args)

    def __getattr__(self, name):
        return getattr(self._executor, name)


def _models_executor(settings):
    return _ModelBars(make_executor(settings))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the scan's worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed_scan(settings, folder: Path, workers: int, limit: int, models: bool) -> tuple[float, float, object]:
    started, cpu = time.perf_counter(), _cpu()
    tickers = scanner.broker_universe(settings)[:limit]
    factory = _models_executor if models else make_executor
    summary = scanner.scan(
        functools.partial(factory, settings), tickers, folder, rules=ExitRules.from_settings(ExitSettings()),
        min_trades=10, history_days=HISTORY_DAYS, batch_size=100, black_sheep_rule=BlackSheepRule(),
        scanned_at=DEFAULT_START, workers=workers,
    )
    return time.perf_counter() - started, _cpu() - cpu, summary


def fetch_floor(handle, tickers: list[str], raw: bool) -> tuple[float, float, int]:
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    client = StockHistoricalDataClient(handle.api_key, handle.secret_key, raw_data=raw, url_override=handle.base_url)
    started, cpu = time.perf_counter(), _cpu()
    end = DEFAULT_START
    barset = client.get_stock_bars(StockBarsRequest(symbol_or_symbols=tickers, timeframe=TimeFrame.Day,
                                                    start=end - timedelta(days=HISTORY_DAYS), end=end))
    elapsed, spent = time.perf_counter() - started, _cpu() - cpu
    return elapsed, spent, sum(len(b) for b in (barset if raw else barset.data).values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-models", action="store_true", help="skip the scan through alpaca-py's models")
    args = parser.parse_args()
    handle = start_sim(process=True, universe_size=args.tickers, rate_limit=0)
    try:
        settings = handle.broker_settings()
        tickers = scanner.broker_universe(settings)[: args.tickers]
        fetch_floor(handle, tickers[:20], raw=True)  # warm the server's paths
        floors: dict[bool, tuple[float, float]] = {}
        bar_count = 0
        for raw in (True, False):
            runs = [fetch_floor(handle, tickers, raw) for _ in range(args.repeat)]
            bar_count = runs[0][2]
            floors[raw] = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        floor = floors[True][0]
        print(f"{len(tickers)} tickers x {len(STRATEGIES)} strategies, {bar_count} daily bars "
              f"({bar_count / len(tickers):.0f} sessions each), sim process, rate limit off, medians of {args.repeat}")
        print(f"floor: bare alpaca-py get_stock_bars(raw_data=True) of all bars  {floor:6.2f} s  "
              f"cpu {floors[True][1]:5.2f} s")
        print(f"       the same, alpaca-py models (no raw_data)                 {floors[False][0]:6.2f} s  "
              f"cpu {floors[False][1]:5.2f} s  ratio to floor {floors[False][0] / floor:4.2f}")
        results, cpus = {}, {}
        paths = [False] if args.no_models else [False, True]
        for models in paths:
            for workers in sorted({1, args.workers}):
                runs = []
                for _ in range(args.repeat):
                    with tempfile.TemporaryDirectory() as folder:
                        elapsed, spent, summary = timed_scan(settings, Path(folder), workers, args.tickers, models)
                        runs.append((elapsed, spent))
                        assert summary.scanned == len(tickers), summary.errors[:3]
                wall = statistics.median(r[0] for r in runs)
                cpu = statistics.median(r[1] for r in runs)
                results[models, workers] = wall
                cpus[models, workers] = cpu
                label = "models" if models else "rows  "
                print(f"scan, bars as {label}, {workers} worker{'s' if workers > 1 else ' '}                 "
                      f"{wall:6.2f} s  cpu {cpu:5.2f} s  ratio to floor {wall / floor:4.2f}  "
                      f"{len(tickers) / wall:6.1f} tickers/s  [{summary.in_trade} IN_TRADE, "
                      f"{summary.signals_found} signals]")
        best = min(wall for (models, _), wall in results.items() if not models)
        verdict = "meets" if best <= TARGET_SECONDS else "MISSES"
        print(f"best whole scan (rows) {best:.2f} s, {best / floor:.2f}x the floor: {verdict} the "
              f"{TARGET_SECONDS:g} s target")
        if not args.no_models:
            before = min(wall for (models, _), wall in results.items() if models)
            print(f"best whole scan (models, as before) {before:.2f} s: rows take {best / before:.2f}x its time")
            for workers in sorted({1, args.workers}):
                print(f"cpu, {workers} worker{'s' if workers > 1 else ''}: rows {cpus[False, workers]:.2f} s, models "
                      f"{cpus[True, workers]:.2f} s: rows take {cpus[False, workers] / cpus[True, workers]:.2f}x")
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
