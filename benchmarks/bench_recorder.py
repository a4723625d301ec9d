"""How fast the streamer's recorder puts a burst of trade updates into the Redis stream.

A burst of N distinct updates (default 2,000: `new` then `fill` for 1,000 orders, as at a busy open)
written to real Redis under a namespace of its own (deleted after). Four ways, each `--repeat` times
in a fresh namespace, median reported:

- floor: the same encoded fields XADDed in pipelines of 200, nothing else (no dedup, no health, no
  pub/sub): the least any recorder must pay to put the entries in a stream;
- write_many: `Recorder.write_many` in batches of 200 (what the writer thread does with a backlog):
  the record-once script per update (dedup mark, XADD, health), then the pub/sub mirror;
- writer thread: `Recorder.submit` for every update, then wait until all are recorded (what the
  broker callback and the writer thread do together);
- one by one: `Recorder.write` per update (one round trip per update, plus its pub/sub publish).

Figures: updates per second and the ratio to the floor's rate (higher is better; 1.0 would be free).
`submit` itself (the broker callback's cost) is timed too.

    .venv/bin/python benchmarks/bench_recorder.py [--updates 2000] [--repeat 3]
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
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from services.streamer.recorder import WRITE_BATCH, Recorder  # noqa: E402
from shared.bus import Keys  # noqa: E402
from shared.models import Order, TradeEventType, TradeUpdate  # noqa: E402
from shared.trade_events import encode_entry  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = datetime(2026, 11, 24, 14, 30, 1, tzinfo=UTC)


def burst(n: int) -> list[TradeUpdate]:
    """`new` for n/2 orders, then their `fill`s."""
    orders = n // 2
    updates = []
    for event, status, filled in (("new", "new", "0"), ("fill", "filled", "10")):
        for i in range(orders):
            order = Order(
                id=f"o-{i}", client_order_id=f"fl-20261124-S{i:04d}-entry", symbol=f"S{i:04d}", side="buy",
                type="market", time_in_force="day", status=status, qty=Decimal("10"), filled_qty=Decimal(filled),
                filled_avg_price=Decimal("100.25") if filled != "0" else None, created_at=NOW, updated_at=NOW)
            updates.append(TradeUpdate(event=TradeEventType(event), order=order, timestamp=NOW,
                                       price=Decimal("100.25") if filled != "0" else None))
    return updates


def floor(client: redis.Redis, keys: Keys, updates: list[TradeUpdate]) -> None:
    for start in range(0, len(updates), WRITE_BATCH):
        pipe = client.pipeline(transaction=False)
        for update in updates[start:start + WRITE_BATCH]:
            pipe.xadd(keys.trade_updates, encode_entry(update))
        pipe.execute()


def write_many(client: redis.Redis, keys: Keys, updates: list[TradeUpdate]) -> None:
    recorder = Recorder(client, keys)
    for start in range(0, len(updates), WRITE_BATCH):
        recorder.write_many(updates[start:start + WRITE_BATCH])


def writer_thread(client: redis.Redis, keys: Keys, updates: list[TradeUpdate]) -> None:
    recorder = Recorder(client, keys)
    recorder.start()
    try:
        for update in updates:
            recorder.submit(update)
        if not recorder.wait_idle(120):
            raise SystemExit("the writer thread did not catch up in 120 s")
    finally:
        recorder.stop()


def one_by_one(client: redis.Redis, keys: Keys, updates: list[TradeUpdate]) -> None:
    recorder = Recorder(client, keys)
    for update in updates:
        recorder.write(update)


WAYS = {"floor": floor, "write_many": write_many, "writer thread": writer_thread, "one by one": one_by_one}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.updates < 2 or args.repeat < 1:
        parser.error("--updates must be at least 2 and --repeat at least 1")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"bench_recorder: no Redis at {REDIS_URL}: {exc}", file=sys.stderr)
        return 2
    updates = burst(args.updates)
    prefix = f"bench-recorder-{uuid.uuid4().hex[:8]}"
    seconds: dict[str, list[float]] = {name: [] for name in WAYS}
    try:
        for run in range(args.repeat):
            for name, way in WAYS.items():  # alternating, so a noisy moment hits every way alike
                keys = Keys(f"{prefix}-{run}-{name.replace(' ', '-')}")
                started = time.perf_counter()
                way(client, keys, updates)
                seconds[name].append(time.perf_counter() - started)
                written = client.xlen(keys.trade_updates)
                if written != len(updates):
                    raise SystemExit(f"{name}: {written} entries for {len(updates)} updates")
        recorder = Recorder(client, Keys(f"{prefix}-submit"))  # not started: submit only queues
        started = time.perf_counter()
        for update in updates:
            recorder.submit(update)
        submit_us = (time.perf_counter() - started) / len(updates) * 1e6
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()

    floor_rate = len(updates) / statistics.median(seconds["floor"])
    print(f"{len(updates)} distinct trade updates into the Redis stream at {REDIS_URL} "
          f"(median of {args.repeat}):")
    print(f"{'way':<14} {'seconds':>8} {'updates/s':>10} {'vs floor':>9}")
    for name in WAYS:
        median = statistics.median(seconds[name])
        rate = len(updates) / median
        print(f"{name:<14} {median:>8.3f} {rate:>10,.0f} {rate / floor_rate:>8.2f}x")
    print(f"submit (the broker callback's cost): {submit_us:.1f} us per update")
    return 0


if __name__ == "__main__":
    sys.exit(main())
