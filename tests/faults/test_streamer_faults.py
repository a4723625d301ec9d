"""The streamer under faults, with real processes: a dropped broker socket, a killed leader and a
Redis restarted mid-burst each lose no fill, and no fill is recorded twice.

The streamers run as `python -m services.streamer` subprocesses against the simulated market
(alpaca-py over HTTP and WebSocket) and Redis.

The shared Redis on 127.0.0.1:6379 is never restarted: the restart tests run their own throwaway
`redis-server` on a free port. In CI (CI=true) a missing `redis-server` binary fails these tests;
elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from conftest import redis_url
from needs import redis_server_binary
from simhelpers import ROOT, SimHandle, start_sim

from services.streamer.recorder import Recorder
from shared import bus
from shared.broker import make_executor
from shared.bus import Keys, RedisReachability
from shared.models import Order, TradeEventType, TradeUpdate
from shared.trade_events import decode_entry

START = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayRedis:
    """A redis-server subprocess of our own, without persistence, that a test may kill and restart
    (on the same port); with `password`, it requires it (`--requirepass`) and `url` carries it."""

    def __init__(self, binary: str, workdir: Path, password: str | None = None):
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.port = _free_port()
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), *(["--requirepass", self.password] if self.password else [])],
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


def _throwaway(workdir: Path, password: str | None = None):
    binary = redis_server_binary("the Redis-restart tests")
    server = ThrowawayRedis(binary, workdir, password)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def throwaway_redis(tmp_path):
    yield from _throwaway(tmp_path)


#: What the password-protected throwaway server requires: it must never appear in a log.
REDIS_PASSWORD = "pw-7c1e9a55d0"


@pytest.fixture
def throwaway_redis_with_password(tmp_path):
    yield from _throwaway(tmp_path, REDIS_PASSWORD)


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


# -- streamer processes against the simulated market ---------------------------------------------------

LOCK_TTL = 3.0


def _eventually(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _fill_ids(events: list[dict]) -> list[str]:
    """Event ids of the fills the simulator really made (its own record, not the stream's)."""
    return [f"{e['order']['id']}:fill:{Decimal(e['order']['filled_qty']).normalize()}"
            for e in events if e["event"] == "fill"]


def _stream_ids(client: redis.Redis, keys: Keys) -> list[str]:
    return [fields["event_id"] for _, fields in client.xrange(keys.trade_updates)]


class Streamers:
    """`python -m services.streamer` processes for one namespace, logging to files."""

    def __init__(self, market: SimHandle, keys: Keys, redis_address: str, logdir: Path):
        self.keys = keys
        self.logdir = logdir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
        self.env.update(market.broker_env(), FL_NAMESPACE=keys.ns, REDIS_URL=redis_address, PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(ROOT), FL_STREAMER_LOCK_TTL_SECONDS=str(LOCK_TTL),
                        FL_STREAMER_LOCK_REFRESH_SECONDS="1")
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen([sys.executable, "-m", "services.streamer", "--log-level", "INFO"],
                                cwd=self.logdir, env=self.env, stdout=log, stderr=log)
        self.processes[proc.pid] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text()

    def stop_all(self) -> list[int | None]:
        codes = []
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=5))
        return codes


@pytest.fixture
def market():
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def streamers(market, keys, tmp_path):
    group = Streamers(market, keys, redis_url(), tmp_path)
    yield group
    group.stop_all()


def _connected_leader(client: redis.Redis, keys: Keys) -> int | None:
    health = client.hgetall(keys.streamer_health)
    if health.get("connected") == "yes" and health.get("role") == "leader":
        return int(health["leader_pid"])
    return None


def test_fills_made_while_the_broker_socket_is_down_are_backfilled_exactly_once(
        market, streamers, redis_client, keys):
    streamers.start("solo")
    _eventually(lambda: _connected_leader(redis_client, keys), what="the streamer to connect")
    executor = make_executor(market.broker_settings())
    executor.buy_qty("AAPL", Decimal("1"), "drop-live-0")
    executor.buy_qty("MSFT", Decimal("1"), "drop-live-1")
    _eventually(lambda: set(_stream_ids(redis_client, keys)) >= set(_fill_ids(market.control.events(0))),
                what="the live fills")
    backfills_before = redis_client.hget(keys.streamer_health, "last_backfill_at")

    assert market.control.drop_stream(refuse_seconds=2) == 1
    for n, symbol in enumerate(("KO", "PFE", "F", "T", "INTC")):
        executor.buy_qty(symbol, Decimal("2"), f"drop-gap-{n}")
    executor.close()

    fills = _fill_ids(market.control.events(0))
    assert len(fills) == 7
    _eventually(lambda: set(_stream_ids(redis_client, keys)) >= set(fills), what="every fill in the stream")
    _eventually(lambda: redis_client.hget(keys.streamer_health, "last_backfill_at") != backfills_before,
                what="the reconnect backfill to finish")
    recorded_fills = [e for e in _stream_ids(redis_client, keys) if ":fill:" in e]
    assert sorted(recorded_fills) == sorted(fills), "each fill exactly once"
    assert redis_client.hget(keys.streamer_health, "last_backfill_added") == "5", "the gap's fills came by backfill"
    assert streamers.log("solo").count("source=backfill") == 5


def test_standby_takes_over_from_a_killed_leader_and_backfills_the_gap(market, streamers, redis_client, keys):
    first, second = streamers.start("first"), streamers.start("second")
    leader_pid = _eventually(lambda: _connected_leader(redis_client, keys), what="a leader to connect")
    standby_pid = second.pid if leader_pid == first.pid else first.pid
    time.sleep(LOCK_TTL / 2)  # the standby has polled the lock a few times by now
    assert market.control.state()["stream_connections"] == 1, "only the leader holds the broker connection"
    assert str(leader_pid) in redis_client.get(keys.streamer_leader)

    executor = make_executor(market.broker_settings())
    executor.buy_qty("AAPL", Decimal("1"), "failover-live-0")
    _eventually(lambda: set(_stream_ids(redis_client, keys)) >= set(_fill_ids(market.control.events(0))),
                what="the live fill")
    _eventually(lambda: redis_client.hget(keys.streamer_health, "event_high_water"), what="the leader's checkpoint")

    streamers.processes[leader_pid].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    for n, symbol in enumerate(("KO", "PFE", "F", "T")):
        executor.buy_qty(symbol, Decimal("3"), f"failover-gap-{n}")
    executor.close()

    _eventually(lambda: _connected_leader(redis_client, keys) == standby_pid, timeout=LOCK_TTL + 20,
                what="the standby to take over")
    took_over = time.monotonic() - killed_at
    print(f"standby connected {took_over:.2f} s after SIGKILL (lock ttl {LOCK_TTL} s)")
    fills = _fill_ids(market.control.events(0))
    assert len(fills) == 5
    _eventually(lambda: set(_stream_ids(redis_client, keys)) >= set(fills), what="the gap's fills")
    assert sorted(e for e in _stream_ids(redis_client, keys) if ":fill:" in e) == sorted(fills)
    assert market.control.state()["stream_connections"] == 1
    standby_log = streamers.log("second" if standby_pid == second.pid else "first")
    assert "leader_elected token=" in standby_log
    # The new leader backfilled from the dead one's checkpoint (minus the margin), not from the day's start.
    assert "backfill_since=2024-03-04T14:59" in standby_log, "the checkpoint was not used"


def test_redis_restarted_mid_burst_loses_no_fill_and_keeps_the_broker_stream(market, throwaway_redis, tmp_path):
    keys = Keys("restart")
    group = Streamers(market, keys, throwaway_redis.url, tmp_path)
    group.start("solo")
    client = bus.connect(throwaway_redis.url)
    try:
        _eventually(lambda: _safe(lambda: _connected_leader(client, keys)), what="the streamer to connect")
        seen: list[str] = []
        reading = threading.Event()
        reading.set()
        reader = threading.Thread(target=_tail, args=(throwaway_redis.url, keys, seen, reading), daemon=True)
        reader.start()

        executor = make_executor(market.broker_settings())
        symbols = ("AAPL", "MSFT", "KO", "PFE", "F", "T", "INTC", "BAC")
        seq_at_kill = 0
        for n in range(60):
            executor.buy_qty(symbols[n % len(symbols)], Decimal("1"), f"burst-{n}")
            if n == 20:
                throwaway_redis.kill()
                seq_at_kill = market.control.events(0)[-1]["seq"]
            if n == 45:
                assert market.control.state()["stream_connections"] == 1, "the broker stream stays up"
                throwaway_redis.start()
            time.sleep(0.02)
        executor.close()

        events = market.control.events(0)
        fills = _fill_ids(events)
        after_kill = _fill_ids([e for e in events if e["seq"] > seq_at_kill])
        assert len(fills) == 60 and len(after_kill) >= 39
        _eventually(lambda: set(_safe(lambda: _stream_ids(client, keys)) or []) >= set(after_kill),
                    what="the fills from the outage and after it")
        reading.clear()
        reader.join(timeout=5)
        kept = [e for e in _stream_ids(client, keys) if ":fill:" in e]
        assert len(kept) == len(set(kept)), "no fill twice in the stream"
        # Fills recorded before the kill died with that Redis (no persistence); the reader saw them.
        assert set(seen) | set(kept) >= set(fills)
        assert market.control.state()["stream_connections"] == 1
    finally:
        codes = group.stop_all()
        client.close()
    log = group.log("solo")
    assert "redis_unavailable_buffering" in log and "redis_back" in log
    assert log.count("trade_update_stream_connected") == 1, "the broker stream was never reconnected"
    assert codes == [0]


def _safe(read):
    try:
        return read()
    except redis.RedisError:
        return None


def _tail(url: str, keys: Keys, seen: list[str], reading: threading.Event) -> None:
    """Follow the stream across the restart: the new server's ids are newer, so XREAD goes on."""
    client = bus.connect(url)
    last = "0-0"
    while reading.is_set():
        try:
            reply = client.xread({keys.trade_updates: last}, count=1000, block=200)
        except redis.RedisError:
            time.sleep(0.05)
            continue
        for _, entries in reply:
            for entry_id, fields in entries:
                last = entry_id
                if fields.get("event") == "fill":
                    seen.append(fields["event_id"])
    client.close()


# -- saying so when Redis cannot be reached ---------------------------------------------------------


def log_events(text: str, name: str) -> list[tuple[datetime, dict[str, str]]]:
    """Each `name` line of a service log (shared.logs format): its time and its key=value fields."""
    import shlex

    found = []
    for line in text.splitlines():
        parts = line.split(" ", 4)
        if len(parts) >= 4 and parts[3] == name:
            fields = dict(p.split("=", 1) for p in shlex.split(parts[4]) if "=" in p) if len(parts) > 4 else {}
            found.append((datetime.fromisoformat(parts[0]), fields))
    return found


def assert_says_redis_is_unreachable(text: str, server: ThrowawayRedis, since: datetime) -> None:
    """The first `redis_unreachable` after `since` came within ~2 s, names the server without its password."""
    lines = [(at, f) for at, f in log_events(text, "redis_unreachable") if at >= since]
    assert lines, text[-3000:]
    at, fields = lines[0]
    assert (at - since).total_seconds() <= 2.5, f"said {at - since} after Redis went away"
    assert fields["redis"] == f"redis://:***@127.0.0.1:{server.port}/0"
    assert fields["error"].startswith("ConnectionError")
    assert REDIS_PASSWORD not in text


def assert_repeated_every_10_s_at_most(text: str) -> None:
    """Within one outage (up to its `redis_reachable_again`), `redis_unreachable` lines are >= 10 s apart."""
    back = [at for at, _ in log_events(text, "redis_reachable_again")]
    lines = [at for at, _ in log_events(text, "redis_unreachable")]
    gaps = [(b - a).total_seconds() for a, b in zip(lines, lines[1:], strict=False)
            if not any(a < again < b for again in back)]
    assert all(gap >= 9.9 for gap in gaps), gaps


def test_reachability_says_once_repeats_every_10_s_with_the_time_and_says_when_it_is_back(caplog):
    import logging

    now = [100.0]
    client = redis.Redis.from_url(f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0")
    logger = logging.getLogger("test.reachability")
    watch = RedisReachability(client, logger, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.reachability")
    watch.answered()  # healthy: nothing to say
    error = redis.ConnectionError(f"Error 111 connecting to 127.0.0.1:1 with {REDIS_PASSWORD}. Connection refused.")
    for _ in range(20):  # a failure every half second for 10 s
        watch.failed(error)
        now[0] += 0.5
    watch.failed(error)  # 10 s after the first
    now[0] += 3
    watch.answered()
    watch.answered()
    records = [(r.levelname, r.getMessage(), r.fields) for r in caplog.records]
    assert [(level, name) for level, name, _ in records] == [
        ("WARNING", "redis_unreachable"), ("WARNING", "redis_unreachable"), ("INFO", "redis_reachable_again")]
    assert [f["down_seconds"] for _, _, f in records] == ["0.0", "10.0", "13.0"]
    assert records[0][2]["redis"] == "redis://:***@127.0.0.1:1/0"
    assert REDIS_PASSWORD not in records[0][2]["error"] and "***" in records[0][2]["error"]
    client.close()


def test_streamers_without_redis_say_so_within_seconds_every_10_s_and_again_when_it_is_back(
        market, throwaway_redis_with_password, tmp_path):
    server = throwaway_redis_with_password
    keys = Keys("unreachable")
    group = Streamers(market, keys, server.url, tmp_path)
    client = bus.connect(server.url)
    executor = make_executor(market.broker_settings())
    try:
        leader = group.start("leader")
        _eventually(lambda: _safe(lambda: _connected_leader(client, keys)) == leader.pid, what="the leader")
        group.start("standby")
        _eventually(lambda: "streamer_started" in group.log("standby"), what="the standby")
        time.sleep(1.5)  # the standby polls the lock
        killed_at = datetime.now(UTC)
        server.kill()
        _eventually(lambda: all("redis_unreachable" in group.log(n) for n in ("leader", "standby")), timeout=10,
                    what="both to say Redis is unreachable")
        executor.buy_qty("AAPL", Decimal("1"), "unreachable-fill")  # the leader keeps it until Redis is back
        fill = _eventually(lambda: _fill_ids(market.control.events(0)), what="the fill")
        for name in ("leader", "standby"):
            assert_says_redis_is_unreachable(group.log(name), server, killed_at)
        _eventually(lambda: all(group.log(n).count("redis_unreachable") >= 2 for n in ("leader", "standby")),
                    timeout=20, what="the warning repeated")
        server.start()  # same port, empty
        _eventually(lambda: all("redis_reachable_again" in group.log(n) for n in ("leader", "standby")),
                    timeout=10, what="both to say Redis is back")
        _eventually(lambda: set(_safe(lambda: _stream_ids(client, keys)) or []) >= set(fill),
                    what="the outage's fill recorded")
        time.sleep(2.5)  # a heartbeat and a lock poll more: nothing more to say
    finally:
        executor.close()
        codes = group.stop_all()
        client.close()
    assert codes == [0, 0]
    for name in ("leader", "standby"):
        text = group.log(name)
        assert_repeated_every_10_s_at_most(text)
        (back_at, back), = log_events(text, "redis_reachable_again")
        assert float(back["down_seconds"]) >= 10
        assert back["redis"] == f"redis://:***@127.0.0.1:{server.port}/0"
        assert float(log_events(text, "redis_unreachable")[-1][1]["down_seconds"]) >= 10
        assert all(at < back_at for at, _ in log_events(text, "redis_unreachable"))
        assert REDIS_PASSWORD not in text
