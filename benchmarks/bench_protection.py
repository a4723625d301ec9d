"""How fast an entry fill gets its protection at the broker: the line against a naive peer.

A burst of N entry fills at the open: N market buys queued before 09:30, then the simulated clock
crosses the open and they all fill at once. Measured per fill, in wall time, from the moment the
simulator fills the entry to the moment the simulator accepts its protective order; both moments are
stamped by a subscriber on the market engine, which runs in this process (the server is in a thread
here; everything measured runs as its own process, as in production).

Pipelines, each in a fresh market and namespace, alternating, `--runs` times per scenario:

- line: sim -> trade_updates WebSocket -> `python -m services.streamer` -> Redis stream ->
  `python -m services.manager` (lock, state, desired-state reconcile, ledger checks);
- naive peer: one process, alpaca-py's TradingStream whose handler submits the OCO on each buy
  fill through alpaca-py's TradingClient, no Redis, nothing remembered; `naive` submits in the
  handler (one at a time), `naive-32` hands each submit to a 32-thread pool;
- redis floor (the streamer's stage): one process that reads the same WebSocket (websockets, JSON)
  and XADDs what arrived together in one pipeline: socket to Redis with nothing else.

Scenarios and targets (issue 18):
- burst 5, no added latency: line p50 <= 1.2 x naive p50;
- burst 100, 20 ms added to every broker request (the simulator's delay fault): line p99 <= 1.0 x
  naive-32 p99;
- the streamer's stage (fill -> entry in the Redis stream) <= 3 x the redis floor's, p50 of burst 100.

    .venv/bin/python benchmarks/bench_protection.py [--runs 3] [--scenarios 5,100]
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


# -- the peers (each run as its own process) ---------------------------------------------------------


def naive_peer(threads: int) -> int:
    """alpaca-py's TradingStream; its handler submits the OCO for each buy fill (in the handler, or
    through a pool of `threads`). No Redis, no state, no dedup: the least a protector can do."""
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest, StopLossRequest, TakeProfitRequest
    from alpaca.trading.stream import TradingStream

    base, ns = os.environ["ALPACA_ENDPOINT"], os.environ["FL_NAMESPACE"]
    client = TradingClient(KEY, SECRET, paper=True, url_override=base)
    stream = TradingStream(KEY, SECRET, paper=True, url_override=os.environ["ALPACA_STREAM_ENDPOINT"])
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def submit(order) -> None:
        entry = Decimal(str(order.filled_avg_price))
        stop = (entry * Decimal("0.95")).quantize(Decimal("0.01"), ROUND_CEILING)
        target = (entry * Decimal("1.2")).quantize(Decimal("0.01"), ROUND_FLOOR)
        client.submit_order(LimitOrderRequest(
            symbol=order.symbol, qty=order.filled_qty, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
            order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=target),
            stop_loss=StopLossRequest(stop_price=stop), client_order_id=f"{ns}-{order.symbol}-naive"))

    async def on_update(update) -> None:
        if update.event == "fill" and update.order.side == OrderSide.BUY:
            if pool is None:
                submit(update.order)
            else:
                pool.submit(submit, update.order)

    stream.subscribe_trade_updates(on_update)
    stream.run()
    return 0


def redis_floor() -> int:
    """The streamer's floor: read the trade_updates WebSocket, XADD what arrived together in one
    pipeline (symbol, event and the raw JSON). Nothing else."""
    import asyncio
    import json

    import redis
    import websockets

    from shared.bus import Keys

    stream_key = Keys(os.environ["FL_NAMESPACE"]).trade_updates
    client = redis.Redis.from_url(REDIS_URL)

    async def main() -> None:
        async with websockets.connect(os.environ["ALPACA_STREAM_ENDPOINT"]) as ws:
            await ws.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
            await ws.recv()
            await ws.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
            await ws.recv()
            queue: asyncio.Queue = asyncio.Queue()

            async def read() -> None:
                async for raw in ws:
                    queue.put_nowait(raw)

            reader = asyncio.create_task(read())
            while not reader.done():
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                pipe = client.pipeline(transaction=False)
                for raw in batch:
                    data = json.loads(raw)["data"]
                    pipe.xadd(stream_key, {"symbol": data["order"]["symbol"], "event": data["event"], "update": raw})
                pipe.execute()

    asyncio.run(main())
    return 0


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


def run_round(kind: str, fills: int, latency: float, workdir: Path) -> tuple[list[float], list[float], list[float]]:
    """One burst; per fill, in seconds: fill -> protected (inf if never; empty for the redis floor),
    fill -> in the stream, and in the stream -> protected (the last two empty for the naive peers)."""
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
               REDIS_URL=REDIS_URL, FL_MANAGER_CONSUMER="bench", PYTHONUNBUFFERED="1")
    settings = BrokerSettings(_env_file=None, ALPACA_API_KEY=KEY, ALPACA_SECRET_KEY=SECRET, ALPACA_ENDPOINT=base)
    executor = make_executor(settings)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    procs: list[subprocess.Popen] = []
    try:
        def spawn(name: str, command: list[str]) -> tuple[subprocess.Popen, Path]:
            log_path = workdir / f"{ns}-{name}.log"
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=log_path.open("w")))
            return procs[-1], log_path

        listening = lambda: any(s.listening for s in thread.server.sessions)  # noqa: E731
        me = [sys.executable, str(Path(__file__).resolve())]
        if kind == "line":
            proc, log_path = spawn("streamer", [sys.executable, "-m", "services.streamer", "--log-level", "WARNING"])
            _wait("the streamer", listening, 30, proc, log_path)
            proc, log_path = spawn("manager", [sys.executable, "-m", "services.manager", "--log-level", "WARNING"])
            # The manager is ready once its group exists and it has read (reconcile-all at start is done).
            _wait("the manager", lambda: _has_consumer(client, ns), 30, proc, log_path)
        elif kind == "redis-floor":
            proc, log_path = spawn(kind, [*me, "--redis-floor"])
            _wait(kind, listening, 30, proc, log_path)
        else:
            proc, log_path = spawn(kind, [*me, "--naive-peer", "--threads", "32" if kind == "naive-32" else "1"])
            _wait(kind, listening, 30, proc, log_path)
        from shared.client_ids import entry_id

        for symbol in symbols:
            # The line's own entry ids: an entry under any other id is a position the line did not make.
            executor.buy_qty(symbol, Decimal("1"), entry_id(OPEN.date(), symbol, namespace=ns))
        # The simulator draws each symbol's minute path lazily (~1 ms a symbol): draw the session's now,
        # so the burst measures the pipeline and not the simulator's path generation under its lock.
        for symbol in symbols:
            engine.market.last_trade(symbol, OPEN)
        time.sleep(0.5)  # let every "accepted" update through, so only the burst is in flight
        if latency:
            # Every broker request of the protectors from now on (the entries are in already).
            requests_post(f"{base}/sim/faults/delay", {"count": 1_000_000, "seconds": latency, "path_prefix": "/"})
        engine.advance_to(OPEN)
        if len(stamps.fills) != len(symbols):
            raise RuntimeError(f"only {len(stamps.fills)} of {len(symbols)} entries filled at the open")
        from shared.bus import Keys

        deadline = time.time() + 10
        if kind == "redis-floor":
            while client.xlen(Keys(ns).trade_updates) < 2 * len(symbols) and time.time() < deadline:
                time.sleep(0.01)  # every fill (and its "accepted" before it)
        while kind != "redis-floor" and len(stamps.protected) < len(symbols) and time.time() < deadline:
            time.sleep(0.01)

        in_stream = {f["symbol"]: int(entry_id.split("-")[0]) / 1000
                     for entry_id, f in client.xrange(Keys(ns).trade_updates) if f["event"] == "fill"}
        total = [] if kind == "redis-floor" else [stamps.protected.get(s, float("inf")) - stamps.fills[s]
                                                  for s in symbols]
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


def requests_post(url: str, body: dict) -> None:
    import requests

    requests.post(url, json=body, timeout=10).raise_for_status()


#: scenario (burst) -> (added latency per broker request, the peer the line is held against, the target)
SCENARIOS = {5: (0.0, "naive", "p50 <= 1.2 x naive"), 100: (0.02, "naive-32", "p99 <= 1.0 x naive-32")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="5,100", help="bursts to run (5 and/or 100)")
    parser.add_argument("--naive-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--redis-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_peer:
        return naive_peer(args.threads)
    if args.redis_floor:
        return redis_floor()
    import logging
    import tempfile

    logging.disable(logging.WARNING)  # the in-thread simulator's own logs are not the subject
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for burst in (int(b) for b in args.scenarios.split(",")):
            latency, peer, target = SCENARIOS[burst]
            kinds = ["line", peer, "redis-floor"]
            rows: dict[str, list[tuple[float, ...]]] = {k: [] for k in kinds}
            for run in range(args.runs):
                for kind in kinds if run % 2 == 0 else kinds[::-1]:
                    total, upstream, consumer = run_round(kind, burst, latency, Path(tmp))
                    row = (pct(total, 50) * 1000 if total else 0, pct(total, 99) * 1000 if total else 0,
                           sum(1 for x in total if x > 1.0),
                           pct(upstream, 50) * 1000 if upstream else 0, pct(upstream, 99) * 1000 if upstream else 0,
                           pct(consumer, 50) * 1000 if consumer else 0, pct(consumer, 99) * 1000 if consumer else 0)
                    rows[kind].append(row)
                    print(f"burst {burst} run {run + 1} {kind:<11} p50={row[0]:6.1f} ms p99={row[1]:6.1f} ms "
                          f"unprotected>1s={row[2]} | fill->stream p50={row[3]:6.1f} p99={row[4]:6.1f} | "
                          f"stream->protected p50={row[5]:6.1f} p99={row[6]:6.1f}", flush=True)

            def med(kind: str, i: int) -> float:
                return statistics.median(r[i] for r in rows[kind])  # noqa: B023

            print(f"\nburst of {burst} entry fills at the open, {latency * 1000:g} ms added per broker request, "
                  f"median of {args.runs} runs (ms)")
            print(f"  line  (streamer + manager)   p50 {med('line', 0):7.1f}  p99 {med('line', 1):7.1f}   "
                  f"streamer stage p50 {med('line', 3):6.1f} p99 {med('line', 4):6.1f}   "
                  f"manager stage p50 {med('line', 5):6.1f} p99 {med('line', 6):6.1f}")
            print(f"  {peer:<8} (alpaca-py handler)  p50 {med(peer, 0):7.1f}  p99 {med(peer, 1):7.1f}")
            print(f"  redis floor (socket -> XADD)                      p50 {med('redis-floor', 3):6.1f} "
                  f"p99 {med('redis-floor', 4):6.1f}")
            p50_ratio = med("line", 0) / med(peer, 0)
            p99_ratio = med("line", 1) / med(peer, 1)
            stage_ratio = med("line", 3) / med("redis-floor", 3)
            stage_p99_ratio = med("line", 4) / med("redis-floor", 4)
            late = max(r[2] for r in rows["line"])
            print(f"  ratios: line/{peer} p50 {p50_ratio:.2f}x  p99 {p99_ratio:.2f}x   streamer stage/redis floor "
                  f"p50 {stage_ratio:.2f}x p99 {stage_p99_ratio:.2f}x   unprotected after 1 s: {late}")
            met = p50_ratio <= 1.2 if burst == 5 else p99_ratio <= 1.0 and stage_ratio <= 3
            print(f"  target: {target}{'' if burst == 5 else ', streamer stage p50 <= 3 x redis floor'}: "
                  f"{'met' if met and late == 0 else 'NOT met'}\n", flush=True)
            ok = ok and met and late == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
