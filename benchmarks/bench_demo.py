"""How many simulated trading days per second `factoryline demo` runs, against the bare market.

Runs the demo in this process (embedded Redis, the simulated market over HTTP, the real services)
for --days days and prints simulated days per second. The floor, measured in the same run: the same
market engine alone stepped through the same days at the demo's 5-minute manager cadence with no
services at all (what moving virtual time costs). The ratio is demo time / floor time: how much the
line's work (scan, rank, trade, protection, ticks, reports, audit) costs on top of the market itself.

    .venv/bin/python benchmarks/bench_demo.py [--days 10] [--seed 7]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from datetime import time as clock
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.days import DEFAULT_FIRST_DAY, DEMO_UNIVERSE_SIZE, TICK_MINUTES, DaysOptions, run_days  # noqa: E402
from demo.runner import _at  # noqa: E402
from shared.market.calendar import nyse  # noqa: E402
from sim.engine import MarketEngine  # noqa: E402

#: Issue 18: 10 simulated days within 15 s.
TARGET_SECONDS_FOR_10_DAYS = 15


def _cpu() -> float:
    """CPU seconds of this process: the demo runs in it (services, embedded Redis, the market's server thread)."""
    times = os.times()
    return times.user + times.system


def bare_market(days: int, seed: int) -> float:
    sessions = [nyse().session(DEFAULT_FIRST_DAY)]
    while len(sessions) < days:
        sessions.append(nyse().next_session(sessions[-1].date))
    started = time.perf_counter()
    engine = MarketEngine.create(seed=seed, start=_at(sessions[0].date, clock(5, 0)), speed=0,
                                 universe_size=DEMO_UNIVERSE_SIZE)
    for session in sessions:
        moment = _at(session.date, clock(9, 35))
        while moment < _at(session.date, clock(16, 5)):
            engine.advance_to(moment)
            engine.state()
            moment += timedelta(minutes=TICK_MINUTES)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    printed = io.StringIO()
    started, cpu = time.perf_counter(), _cpu()
    status = run_days(DaysOptions(seed=args.seed, days=args.days, progress_bar=False),
                      out=lambda line: printed.write(line + "\n"))
    demo_seconds, demo_cpu = time.perf_counter() - started, _cpu() - cpu
    floor_seconds = bare_market(args.days, args.seed)
    per_second = args.days / demo_seconds
    print(f"demo: {args.days} simulated day(s) in {demo_seconds:.2f} s = {per_second:.2f} days/s, cpu {demo_cpu:.2f} s "
          f"(exit status {status}; {printed.getvalue().count(' fill ')} fill lines)")
    scanned = next((line for line in printed.getvalue().splitlines() if line.startswith("entries: ")), "")
    print(scanned)
    print(f"floor (bare market, same days and 5-minute steps): {floor_seconds:.2f} s; "
          f"ratio demo/floor {demo_seconds / floor_seconds:.1f}x")
    print(f"target: 10 days under {TARGET_SECONDS_FOR_10_DAYS} s -> {10 / per_second:.1f} s projected "
          f"({'met' if 10 / per_second < TARGET_SECONDS_FOR_10_DAYS else 'MISSED'})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
