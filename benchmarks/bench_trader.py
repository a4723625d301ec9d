"""How fast the trader enters 50 signals, against the HTTP round-trip floor measured in the same run.

Starts the simulated market as its own process (`python -m sim`, rate limit off, a universe
with 50+ tickers, $200,000), writes 50 ranked signals to Redis, and times the whole job
(`trade_signals()`: settings, Redis, clock, account, positions, open orders, 50 asset reads, one batched
price read, one listing of recent orders, then one submit per entry) through alpaca-py over HTTP.

Floors, measured in the same run against the same server with the same alpaca-py client code:
- round trip: the median of 200 `GET /v2/clock` calls (the cheapest authenticated request), x 50;
- raw submits: 50 bare `submit_order` notional market buys on a fresh market (what sending 50 orders
  costs with no sizing, no checks and no lookups).
The ratio printed is total / (round trip x 50). Each entry needs two requests (its asset, its submit; a
submit costs the server about 4 round trips' worth, see the raw-submit floor), so the job is bound by
the requests it must make when its time is close to raw submits + 50 round trips.

    .venv/bin/python benchmarks/bench_trader.py [--signals 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
from simhelpers import DEFAULT_START, start_sim  # noqa: E402

from shared import bus, signals  # noqa: E402
from shared.signals import ScanState, Signal, Verdict  # noqa: E402

CASH = 200_000


def ranked_list(tickers: list[str], prices: dict[str, Decimal]) -> list[Signal]:
    """Signals at the market's price (so the drift check passes, as a fresh scan's would)."""
    day = DEFAULT_START.date()
    return [
        Signal(ticker=t, strategy="QuickStrike", state=ScanState.IN_TRADE, verdict=Verdict.PROFITABLE,
               win_rate=Decimal("0.6"), trades=30, profit_factor=Decimal("1.8"), avg_return=Decimal("0.01"),
               signal_date=day, signal_price=prices[t], scanned_at=datetime(2024, 3, 4, 11, tzinfo=UTC),
               rank=i + 1)
        for i, t in enumerate(tickers)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    redis_url = os.environ.get("FL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    universe = args.signals + 15  # a few are under $2 (FL_MIN_PRICE)
    sim = start_sim(process=True, rate_limit=0, universe_size=universe, cash=CASH)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    namespaces: list[str] = []
    try:
        # The trader keeps at most FL_MAX_POSITIONS of the list (the ranker's rule, re-checked) and enters at
        # most FL_MAX_ENTRIES_PER_DAY: all of them here. Every entry check runs (price, volume, drift,
        # cooldown, limits), so the figure includes their cost (one batched daily-bars request).
        os.environ.update(sim.broker_env(), REDIS_URL=redis_url, FL_MAX_POSITIONS=str(args.signals),
                          FL_MAX_ENTRIES_PER_DAY=str(args.signals))
        from alpaca.trading.requests import GetAssetsRequest, MarketOrderRequest

        from services.trader.jobs import trade_signals

        trading = sim.trading_client()
        assets = trading.get_all_assets(GetAssetsRequest())
        from shared.broker import make_executor

        executor = make_executor(sim.broker_settings())
        candidates = sorted(a.symbol for a in assets if a.fractionable and a.tradable)
        prices = {s: p.price for s, p in executor.get_latest_prices(candidates).items()}
        executor.close()
        tickers = [t for t in candidates if prices.get(t, Decimal(0)) >= 2][: args.signals]  # FL_MIN_PRICE
        if len(tickers) < args.signals:
            print(f"only {len(tickers)} fractionable tickers in the simulated universe", file=sys.stderr)
            return 2

        for _ in range(20):  # warm the connection and the server
            trading.get_clock()
        trips = []
        for _ in range(200):
            start = time.perf_counter()
            trading.get_clock()
            trips.append(time.perf_counter() - start)
        round_trip = statistics.median(trips)

        raw_runs = []
        for _ in range(args.repeat):
            sim.control.reset(start=DEFAULT_START, universe_size=universe, cash=CASH)
            start = time.perf_counter()
            for ticker in tickers:
                trading.submit_order(MarketOrderRequest(symbol=ticker, notional=3880, side="buy",
                                                        time_in_force="day", client_order_id=uuid.uuid4().hex))
            raw_runs.append(time.perf_counter() - start)

        job_runs = []
        for _ in range(args.repeat):
            sim.control.reset(start=DEFAULT_START, universe_size=universe, cash=CASH)
            namespace = f"bench-{uuid.uuid4().hex[:8]}"
            namespaces.append(namespace)
            os.environ["FL_NAMESPACE"] = namespace
            signals.save_signals_to_redis(client, bus.Keys(namespace), DEFAULT_START.date(), ranked_list(tickers, prices))
            start = time.perf_counter()
            summary = trade_signals()
            job_runs.append(time.perf_counter() - start)
            if summary["counts"] != {"submitted": args.signals}:
                print(f"unexpected outcome: {summary['counts']} {summary['skips'][:3]}", file=sys.stderr)
                return 1
        orders = [o for o in sim.control.state()["orders"] if o["side"] == "buy"]
        assert len(orders) == args.signals, len(orders)
    finally:
        for namespace in namespaces:
            for key in client.scan_iter(match=f"{namespace}*"):
                client.delete(key)
        client.close()
        sim.stop()

    total = statistics.median(job_runs)
    raw = statistics.median(raw_runs)
    floor = round_trip * args.signals
    print(f"trader: {args.signals} signals entered through alpaca-py against the simulator server (process)")
    print(f"  job total (median of {args.repeat}):       {total * 1000:8.1f} ms   "
          f"(runs: {', '.join(f'{r * 1000:.0f}' for r in job_runs)} ms)")
    print(f"  per entry:                         {total / args.signals * 1000:8.2f} ms")
    print(f"  HTTP round trip (median of 200):   {round_trip * 1000:8.3f} ms")
    print(f"  round-trip floor x {args.signals}:             {floor * 1000:8.1f} ms")
    print(f"  raw submits x {args.signals} (median):        {raw * 1000:8.1f} ms")
    print(f"  ratio job / (round trip x {args.signals}):     {total / floor:8.2f}")
    print(f"  ratio job / raw submits:           {total / raw:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
