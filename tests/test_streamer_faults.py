"""The streamer under faults, with real processes: a Redis restarted mid-burst loses no update.

The shared Redis on 127.0.0.1:6379 is never restarted: the restart tests run their own throwaway
`redis-server` on a free port. In CI (CI=true) a missing `redis-server` binary fails these tests;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from services.streamer.recorder import Recorder
from shared import bus
from shared.bus import Keys
from shared.models import Order, TradeEventType, TradeUpdate
from shared.trade_events import decode_entry

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
START = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayRedis:
    """A redis-server subprocess of our own, without persistence, that a test may kill and restart."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def throwaway_redis(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("CI=true but no redis-server binary: the Redis-restart tests need one (apt-get install "
                        "redis-server)")
        pytest.skip("redis-server is not installed: the Redis-restart tests need a throwaway server of their own")
    server = ThrowawayRedis(binary, tmp_path)
    server.start()
    yield server
    server.kill()


def _fill(n: int) -> TradeUpdate:
    at = START + timedelta(seconds=n)
    order = Order(id=f"o-{n}", client_order_id=f"fl-20261124-SYM{n}-entry", symbol=f"SYM{n}", side="buy",
                  type="market", time_in_force="day", status="filled", qty=Decimal("1"), filled_qty=Decimal("1"),
                  filled_avg_price=Decimal("10.5"), created_at=at, updated_at=at)
    return TradeUpdate(event=TradeEventType.FILL, order=order, timestamp=at, price=Decimal("10.5"))


def _event_ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [decode_entry(fields).event_id for _, fields in client.xrange(keys.trade_updates)]


def test_updates_arriving_while_redis_is_down_are_buffered_and_recorded_once_it_is_back(throwaway_redis):
    keys = Keys("faults")
    client = bus.connect(throwaway_redis.url)
    came_back = threading.Event()
    recorder = Recorder(client, keys, on_redis_back=came_back.set)
    recorder.start()
    try:
        for n in range(20):
            recorder.submit(_fill(n))
        assert recorder.wait_idle(10)
        throwaway_redis.kill()
        during_outage = [_fill(n) for n in range(20, 50)]
        for update in during_outage:
            recorder.submit(update)
        time.sleep(0.5)
        assert recorder.pending == len(during_outage), "nothing can be written while Redis is down"
        assert recorder.redis_down_since is not None
        throwaway_redis.start()  # same port, empty: no persistence
        assert recorder.wait_idle(30), f"{recorder.pending} updates still buffered after Redis came back"
    finally:
        recorder.stop()
    assert came_back.is_set()
    reader = bus.connect(throwaway_redis.url)
    assert _event_ids(reader, keys) == [u.event_id for u in during_outage]
    reader.close()
    client.close()
