"""How fast a burst of entry fills at the open gets its protection at the broker.

A burst of N (100) entry fills at the open: N market buys queued before 09:30, then the simulated
clock crosses the open and they all fill at once. Measured per fill, in wall time, from the moment
the simulator fills the entry to the moment the simulator accepts its protective order; both moments
are stamped by a subscriber on the market engine, which runs in this process (the server is in a
thread here; the streamer and the consumer are their own processes, as in production).

Two pipelines, each in a fresh market and namespace, alternating, `--runs` times:

- floor: sim -> trade_updates WebSocket -> streamer -> Redis stream -> a minimal consumer that, for
  each buy fill, sends ONE protective OCO through alpaca-py (same worker count, no lock, no reads, no
  state): one Redis stream hand-off plus one order round trip on top of what both pipelines share;
- manager: the same, with `python -m services.manager` as the consumer (lock, batched broker reads,
  desired-state reconcile, state, ledger checks).

Targets: manager p50 within 3x the floor's p50, p99 under 250 ms, no fill unprotected after 1 s.

    .venv/bin/python benchmarks/bench_protection.py [--fills 100] [--runs 3] [--workers 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEW_YORK = ZoneInfo("America/New_York")
PRE_OPEN = datetime(2024, 3, 4, 9, 0, tzinfo=NEW_YORK)
OPEN = datetime(2024, 3, 4, 9, 30, 1, tzinfo=NEW_YORK)
KEY, SECRET = "sim-key", "sim-secret"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
FLOOR_GROUP = "floor"


# -- the floor's consumer (run as its own process: --floor-consumer) -----------------------------------


def floor_consumer(workers: int) -> int:
    """XREADGROUP a batch, send one OCO per buy fill (in parallel), XACK. Nothing else."""
    import redis

    from shared import bus, config
    from shared.broker import make_executor
    from shared.models import Side, TradeEventType
    from shared.trade_events import decode_entry

    keys = bus.Keys(os.environ["FL_NAMESPACE"])
    client = bus.connect(REDIS_URL, blocking=True)
    executor = make_executor(config.load(config.BrokerSettings))
    try:
        client.xgroup_create(keys.trade_updates, FLOOR_GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    pool = ThreadPoolExecutor(workers)

    def protect(update) -> None:
        entry = update.order.filled_avg_price
        stop = (entry * Decimal("0.95")).quantize(Decimal("0.01"), ROUND_CEILING)
        target = (entry * Decimal("1.2")).quantize(Decimal("0.01"), ROUND_FLOOR)
        executor.submit_protective_exit(update.order.symbol, update.order.filled_qty, stop, target,
                                        f"{keys.ns}-{update.order.symbol}-floor")

    print("floor_ready", file=sys.stderr, flush=True)
    while True:
        reply = client.xreadgroup(FLOOR_GROUP, "f1", {keys.trade_updates: ">"}, count=200, block=1000)
        entries = [e for _s, batch in (reply or []) for e in batch]
        if not entries:
            continue
        updates = [decode_entry(fields) for _id, fields in entries]
        fills = [u for u in updates if u.event is TradeEventType.FILL and u.order.side is Side.BUY]
        list(pool.map(protect, fills))
        client.xack(keys.trade_updates, FLOOR_GROUP, *[i for i, _f in entries])


# -- one round ----------------------------------------------------------------------------------------


class Stamps:
    """Wall-clock moments of the engine's events, taken inside the simulator as they happen."""

    def __init__(self) -> None:
        self.fills: dict[str, float] = {}
        self.protected: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        now = time.time()  # wall clock: comparable with the stream entries' ids (Redis's milliseconds)
        order = event.order
        with self.lock:
            if event.event == "fill" and order.side.value == "buy":
                self.fills.setdefault(order.symbol, now)
            elif event.event in ("new", "accepted") and order.side.value == "sell":
                self.protected.setdefault(order.symbol, now)


def _wait(what: str, predicate, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited: {log.read_text()[-2000:] if log else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_round(kind: str, fills: int, workers: int, workdir: Path) -> tuple[list[float], list[float], list[float]]:
    """One burst; per fill, in seconds: fill -> protected (inf if never), fill -> in the stream, and
    in the stream -> protected."""
    import redis

    from shared.broker import make_executor
    from shared.config import BrokerSettings
    from sim.engine import MarketEngine
    from sim.engine.universe import build_universe
    from sim.server import ServerThread, SimServer

    # Whole-share orders of at most a few hundred dollars each: the burst is what is measured, not cash.
    symbols = [a.symbol for a in build_universe(fills + 25, 7) if a.base_price < 1000][:fills]
    engine = MarketEngine.create(seed=7, start=PRE_OPEN, universe_size=fills + 25, cash=Decimal("10000000"))
    stamps = Stamps()
    engine.subscribe(stamps)
    thread = ServerThread(SimServer(engine, api_key=KEY, secret_key=SECRET, rate_limit=0)).start()
    base = thread.base_url
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_"))}
    env.update(ALPACA_API_KEY=KEY, ALPACA_SECRET_KEY=SECRET, ALPACA_ENDPOINT=base, ALPACA_DATA_ENDPOINT=base,
               ALPACA_STREAM_ENDPOINT=base.replace("http://", "ws://") + "/stream", FL_NAMESPACE=ns,
               REDIS_URL=REDIS_URL, FL_MANAGER_WORKERS=str(workers), FL_MANAGER_CONSUMER="bench",
               PYTHONUNBUFFERED="1")
    settings = BrokerSettings(_env_file=None, ALPACA_API_KEY=KEY, ALPACA_SECRET_KEY=SECRET, ALPACA_ENDPOINT=base)
    executor = make_executor(settings)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    procs: list[subprocess.Popen] = []
    try:
        streamer_log = workdir / f"{ns}-streamer.log"
        procs.append(subprocess.Popen([sys.executable, "-m", "services.streamer", "--log-level", "WARNING"],
                                      cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=streamer_log.open("w")))
        _wait("the streamer", lambda: any(s.listening for s in thread.server.sessions), 30, procs[-1], streamer_log)
        consumer_log = workdir / f"{ns}-{kind}.log"
        if kind == "floor":
            command = [sys.executable, str(Path(__file__).resolve()), "--floor-consumer", "--workers", str(workers)]
            ready = "floor_ready"
        else:
            command = [sys.executable, "-m", "services.manager", "--log-level", "WARNING"]
            ready = None
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=consumer_log.open("w")))
        if ready:
            _wait(kind, lambda: ready in consumer_log.read_text(), 30, procs[-1], consumer_log)
        else:
            # The manager is ready once its group exists and it has read (reconcile-all at start is done).
            _wait(kind, lambda: _has_consumer(client, ns), 30, procs[-1], consumer_log)
        from shared.client_ids import entry_id

        for symbol in symbols:
            # The line's own entry ids: an entry under any other id is a position the line did not make.
            executor.buy_qty(symbol, Decimal("1"), entry_id(OPEN.date(), symbol, namespace=ns))
        # The simulator draws each symbol's minute path lazily (~1 ms a symbol): draw the session's now,
        # so the burst measures the pipeline and not the simulator's path generation under its lock.
        for symbol in symbols:
            engine.market.last_trade(symbol, OPEN)
        time.sleep(0.5)  # let every "accepted" update through, so only the burst is in flight
        engine.advance_to(OPEN)
        if len(stamps.fills) != len(symbols):
            raise RuntimeError(f"only {len(stamps.fills)} of {len(symbols)} entries filled at the open")
        deadline = time.time() + 10
        while len(stamps.protected) < len(symbols) and time.time() < deadline:
            time.sleep(0.01)
        from shared.bus import Keys

        in_stream = {f["symbol"]: int(entry_id.split("-")[0]) / 1000
                     for entry_id, f in client.xrange(Keys(ns).trade_updates) if f["event"] == "fill"}
        total = [stamps.protected.get(s, float("inf")) - stamps.fills[s] for s in symbols]
        upstream = [in_stream[s] - stamps.fills[s] for s in symbols if s in in_stream]
        consumer = [stamps.protected[s] - in_stream[s] for s in symbols if s in in_stream and s in stamps.protected]
        return total, upstream, consumer
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        executor.close()
        thread.stop()
        for key in client.scan_iter(match=f"{ns}*", count=1000):
            client.delete(key)
        client.close()


def _has_consumer(client, ns: str) -> bool:
    from shared.bus import Keys

    try:
        return any(c["name"] == "bench" for c in client.xinfo_consumers(Keys(ns).trade_updates, "manager"))
    except Exception:  # noqa: BLE001 - the group does not exist yet
        return False


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--floor-consumer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_consumer:
        return floor_consumer(args.workers)
    import logging
    import tempfile

    logging.disable(logging.WARNING)  # the in-thread simulator's own logs are not the subject
    rows: dict[str, list[tuple[float, ...]]] = {"floor": [], "manager": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            order = ("floor", "manager") if run % 2 == 0 else ("manager", "floor")
            for kind in order:
                latencies, upstream, consumer = run_round(kind, args.fills, args.workers, Path(tmp))
                late = sum(1 for x in latencies if x > 1.0)
                row = (pct(latencies, 50) * 1000, pct(latencies, 99) * 1000, max(latencies) * 1000, late,
                       pct(upstream, 50) * 1000, pct(upstream, 99) * 1000,
                       pct(consumer, 50) * 1000, pct(consumer, 99) * 1000)
                rows[kind].append(row)
                print(f"run {run + 1} {kind:<8} fills={len(latencies)} p50={row[0]:6.1f} ms p99={row[1]:6.1f} ms "
                      f"max={row[2]:6.1f} ms unprotected>1s={late} | fill->stream p50={row[4]:6.1f} "
                      f"p99={row[5]:6.1f} | stream->protected p50={row[6]:6.1f} p99={row[7]:6.1f}", flush=True)
    floor_p50 = statistics.median(r[0] for r in rows["floor"])
    p50 = statistics.median(r[0] for r in rows["manager"])
    p99 = statistics.median(r[1] for r in rows["manager"])
    late = max(r[3] for r in rows["manager"])
    ratio = p50 / floor_p50 if floor_p50 else float("inf")
    print()
    print(f"burst of {args.fills} entry fills at the open, fill -> protective order accepted, median of {args.runs} runs")
    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[kind])

    print(f"  floor   (stream hand-off + one order round trip): p50 {floor_p50:7.1f} ms  p99 {med('floor', 1):7.1f} ms"
          f"   of which after the stream: p50 {med('floor', 6):6.1f}  p99 {med('floor', 7):6.1f}")
    print(f"  manager (python -m services.manager)           : p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
          f"   of which after the stream: p50 {med('manager', 6):6.1f}  p99 {med('manager', 7):6.1f}")
    print(f"  shared upstream, simulator fill -> entry in the Redis stream (streamer): "
          f"p50 {statistics.median([*(r[4] for r in rows['floor']), *(r[4] for r in rows['manager'])]):6.1f} ms  "
          f"p99 {statistics.median([*(r[5] for r in rows['floor']), *(r[5] for r in rows['manager'])]):6.1f} ms")
    print(f"  ratio p50 manager/floor: {ratio:.2f}x (target <= 3x)  p99 target < 250 ms  "
          f"unprotected after 1 s: {late} (target 0)")
    ok = ratio <= 3 and p99 < 250 and late == 0
    print("  PASS" if ok else "  FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
