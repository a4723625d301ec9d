"""Tick cost at 10, 100, 1,000 and 5,000 open positions: broker requests per tick and tick time.

Starts the simulated market as its own process (`python -m sim`, rate limit off, a universe
of 5,000+ tickers, $20M), opens one share of each position through alpaca-py over HTTP, and runs
`services.manager.tick.run_tick` against it with real Redis (a namespace of its own, deleted after).
The first tick at each size rebuilds the new positions' states (no state yet: order history and
bars since entry); then each measured tick follows 5 simulated minutes later. The exit thresholds
are set out of reach so no exit fires: this is the cost of looking, which is what every tick pays.

Broker requests are HTTP requests counted at the client (every `requests.Session.request`).
Floor, measured in the same run after each tick: the reads the tick makes, done bare (the position
listing, which carries the prices; the account; minute bars as rows for as many symbols as the tick
read bars for, over the same 5 minutes) without Redis, decisions or the CSV; ratio = tick time / floor.
CPU seconds of this process (the tick's client side) are printed beside the wall times. The tick asks no
clock: "now" is the position listing's Date header, and the session comes from Redis (the first tick
of the day stores it when the scheduler has not).

    .venv/bin/python benchmarks/bench_tick.py [--sizes 10,100,1000,5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
import requests  # noqa: E402
from simhelpers import start_sim  # noqa: E402

from services.manager import tick  # noqa: E402
from shared import bus  # noqa: E402
from shared.broker import make_executor  # noqa: E402
from shared.client_ids import entry_id  # noqa: E402
from shared.exits import ExitRules  # noqa: E402
from shared.market.calendar import NEW_YORK  # noqa: E402
from shared.models import Timeframe  # noqa: E402
from shared.positions.context import ManagerContext  # noqa: E402

#: Thresholds no 5-minute random walk reaches: the benchmark measures ticks without exits.
UNREACHABLE = ExitRules(stop_loss=Decimal("0.9"), take_profit=Decimal("100"), breakeven_arm=Decimal("50"),
                        trailing_arm=Decimal("60"), trailing_giveback=Decimal("0.5"), time_stop=timedelta(days=365))

_COUNTS: Counter[str] = Counter()
_original_request = requests.Session.request


def _counting_request(self, method, url, *args, **kwargs):
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    _COUNTS[f"{method} /{path}"] += 1
    return _original_request(self, method, url, *args, **kwargs)


requests.Session.request = _counting_request


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def bare_reads(executor, bar_symbols: int, now) -> float:
    """The broker reads the tick makes, done bare (no Redis, decisions or CSV): the position listing
    (prices and "now" included), the account (risk limits), and minute bars as rows for as many symbols
    as the tick read bars for, over the 5 minutes since the last tick."""
    started = time.perf_counter()
    listed, _at = executor.get_positions_at()
    executor.get_account()
    symbols = [p.symbol for p in listed][:bar_symbols]
    if symbols:
        executor.get_bar_rows(symbols, Timeframe.MINUTE, now - timedelta(minutes=5), now)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the rebuild's per-position WARNING lines
    sizes = sorted(int(s) for s in args.sizes.split(","))
    redis_url = os.environ.get("FL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    keys = bus.Keys(namespace)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    sim = start_sim(process=True, universe_size=max(sizes) + 30, cash=20_000_000, rate_limit=0)
    executor = make_executor(sim.broker_settings())
    portfolio_csv = Path(tempfile.mkdtemp()) / "portfolio.csv"
    rows = []
    try:
        trading = sim.trading_client()
        symbols = sorted(a.symbol for a in trading.get_all_assets() if a.tradable)[: max(sizes)]
        held: list[str] = []
        day = executor.get_clock().timestamp.astimezone(NEW_YORK).date()
        for size in sizes:
            started = time.perf_counter()
            for symbol in symbols[len(held):size]:
                # The line's own entry ids: a position bought under any other id is not the line's, has
                # no soft exits and would be looked up in the order history on every tick.
                executor.buy_qty(symbol, Decimal(1), entry_id(day, symbol, namespace=namespace))
                held.append(symbol)
            opened = time.perf_counter() - started
            sim.control.advance(seconds=300)
            _COUNTS.clear()
            started = time.perf_counter()
            first = tick.run_tick(ManagerContext(executor, client, keys, UNREACHABLE), portfolio_path=portfolio_csv)
            rebuild_seconds = time.perf_counter() - started
            rebuild_requests = sum(_COUNTS.values())
            assert first.positions == size and not first.exits, first.lines()[-1]
            times, counts, floors, cpus, floor_cpus = [], [], [], [], []
            for _ in range(args.repeat):
                now = sim.control.advance(seconds=300)
                _COUNTS.clear()
                started, cpu = time.perf_counter(), _cpu()
                report = tick.run_tick(ManagerContext(executor, client, keys, UNREACHABLE), portfolio_path=portfolio_csv)
                times.append(time.perf_counter() - started)
                cpus.append(_cpu() - cpu)
                counts.append(dict(_COUNTS))
                assert report.positions == size and not report.exits and not report.rebuilt
                cpu = _cpu()
                floors.append(bare_reads(executor, report.bars, now))
                floor_cpus.append(_cpu() - cpu)
            per_tick = counts[-1]
            rows.append((size, sum(per_tick.values()), per_tick, statistics.median(times), statistics.median(floors),
                         rebuild_requests, rebuild_seconds, opened, statistics.median(cpus),
                         statistics.median(floor_cpus)))
            print(f"  {size} positions done (opening took {opened:.1f} s)", file=sys.stderr, flush=True)
    finally:
        executor.close()
        sim.stop()
        for key in client.scan_iter(match=f"{namespace}*", count=1000):
            client.delete(key)
        client.close()

    print()
    print(f"{'positions':>9}  {'requests/tick':>13}  {'tick s':>7}  {'floor s':>7}  {'ratio':>5}  "
          f"{'tick cpu':>8}  {'floor cpu':>9}  {'ms/position':>11}  {'rebuild req':>11}  {'rebuild s':>9}  "
          "requests by endpoint")
    for size, total, per_tick, seconds, floor, rebuild_requests, rebuild_seconds, _opened, cpu, floor_cpu in rows:
        by_endpoint = ", ".join(f"{k} x{v}" for k, v in sorted(per_tick.items()))
        print(f"{size:>9}  {total:>13}  {seconds:>7.3f}  {floor:>7.3f}  {seconds / floor:>5.2f}  {cpu:>8.3f}  "
              f"{floor_cpu:>9.3f}  {seconds / size * 1000:>11.3f}  {rebuild_requests:>11}  {rebuild_seconds:>9.2f}  "
              f"{by_endpoint}")
    print()
    print(f"tick = median of {args.repeat} ticks without exits (5 simulated minutes apart); floor = the broker "
          "reads the tick makes, done bare, right after it; cpu = this process's (the client's) CPU seconds; "
          "rebuild = the first tick over positions without state (order history + bars since entry; its count "
          "includes the day's one calendar request). A tick asks the positions (prices included) and the account, "
          "and minute bars only for the positions whose exits the high since the last look can change (all armed "
          "ones, unarmed ones up to 1,400), at most 200 symbols per request (Alpaca refuses longer symbol lists "
          "as Request-URI Too Large): 2 + ceil(bar symbols / 200) requests.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
