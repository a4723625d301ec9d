"""The streamer: every trade update lands in the durable stream exactly once, duplicates are dropped,
backfill rebuilds missed updates with the live event ids, and one replica leads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from simhelpers import start_sim

from services.streamer.backfill import implied_updates, trading_day_start
from services.streamer.leader import LeaderLock
from services.streamer.recorder import Recorder
from services.streamer.settings import StreamerSettings
from shared.config import load
from shared.errors import ConfigError
from shared.market.calendar import NEW_YORK
from shared.models import Order, OrderStatus, TradeEventType, TradeUpdate
from shared.trade_events import decode_entry

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


def _order(status: str = "filled", filled: str = "10", qty: str = "10", oid: str = "o-1", **extra) -> Order:
    fields = dict(
        id=oid, client_order_id=f"fl-20261124-AAPL-{oid}", symbol="AAPL", side="buy", type="market",
        time_in_force="day", status=status, qty=Decimal(qty), filled_qty=Decimal(filled),
        filled_avg_price=Decimal("190.12") if Decimal(filled) else None, created_at=NOW, updated_at=NOW,
    )
    return Order(**(fields | extra))


def _update(event: str, status: str = "filled", filled: str = "10", oid: str = "o-1") -> TradeUpdate:
    return TradeUpdate(event=TradeEventType(event), order=_order(status, filled, oid=oid), timestamp=NOW,
                       price=Decimal("190.12") if Decimal(filled) else None)


def _entries(client: redis.Redis, keys) -> list[TradeUpdate]:
    return [decode_entry(fields) for _, fields in client.xrange(keys.trade_updates)]


ONE_OF_EACH = [
    _update("new", "new", "0"),
    _update("accepted", "accepted", "0", oid="o-2"),
    _update("partial_fill", "partially_filled", "4"),
    _update("fill", "filled", "10"),
    _update("canceled", "canceled", "0", oid="o-3"),
    _update("expired", "expired", "0", oid="o-4"),
    _update("rejected", "rejected", "0", oid="o-5"),
    _update("done_for_day", "done_for_day", "2", oid="o-6"),
    _update("replaced", "replaced", "0", oid="o-7"),
    _update("pending_new", "pending_new", "0", oid="o-8"),
]


# -- recorder --------------------------------------------------------------------------------------

def test_every_update_type_lands_in_the_stream_once_and_reads_back_validated(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    for update in ONE_OF_EACH + ONE_OF_EACH:
        recorder.write(update)
    recorded = _entries(redis_client, keys)
    assert recorded == ONE_OF_EACH
    assert [fields["event"] for _, fields in redis_client.xrange(keys.trade_updates)] == [
        u.event.value for u in ONE_OF_EACH]


def test_a_burst_written_in_one_batch_keeps_order_and_drops_duplicates_within_it(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    burst = [_update("fill", "filled", "10", oid=f"o-{i}") for i in range(150)]
    with_repeats = burst[:75] + burst[10:20] + burst[75:]
    entry_ids = recorder.write_many(with_repeats)
    assert [e is None for e in entry_ids] == [False] * 75 + [True] * 10 + [False] * 75
    assert _entries(redis_client, keys) == burst


def test_a_redis_that_lost_its_scripts_is_given_them_again_and_nothing_is_lost():
    import fakeredis  # a private server: flushing its script cache touches nobody else's Redis

    from shared.bus import Keys

    client = fakeredis.FakeRedis(decode_responses=True)
    keys = Keys("scripts-lost")
    recorder = Recorder(client, keys)
    assert recorder.write(ONE_OF_EACH[0]) is not None
    client.script_flush()  # what a Redis restart without persistence does to the script cache
    assert all(entry_id is not None for entry_id in recorder.write_many(ONE_OF_EACH[1:4]))
    assert _entries(client, keys) == ONE_OF_EACH[:4]


def test_the_demos_embedded_redis_takes_a_fresh_recorders_first_batch():
    # The embedded server (fakeredis over TCP) drops the connection when a pipeline meets an error
    # reply such as NOSCRIPT; the recorder loads its script before its first batch, so it never does.
    import redis

    from demo.runner import _embedded_redis_server
    from shared.bus import Keys

    server = _embedded_redis_server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host, port = server.server_address
        client = redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5)
        keys = Keys("embedded-first-batch")
        recorder = Recorder(client, keys)
        assert all(entry_id is not None for entry_id in recorder.write_many(ONE_OF_EACH))
        assert _entries(client, keys) == ONE_OF_EACH
    finally:
        server.shutdown()
        server.server_close()


def test_backfilled_copy_of_a_delivered_fill_adds_no_second_entry(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    live = _update("fill", "filled", "10")
    backfilled = live.model_copy(update={"order": _order("filled", "10.000"), "price": None})
    assert recorder.write(live) is not None
    assert recorder.write(backfilled) is None
    assert len(_entries(redis_client, keys)) == 1


def test_partial_fills_at_different_quantities_are_each_recorded(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    for filled in ("3", "7", "7", "10"):
        recorder.write(_update("partial_fill" if filled != "10" else "fill", "partially_filled", filled))
    assert [u.order.filled_qty for u in _entries(redis_client, keys)] == [3, 7, 10]


def test_writer_thread_records_submissions_in_order_and_mirrors_new_ones_on_pubsub(redis_client, keys):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.notifications)
    pubsub.get_message(timeout=1)  # subscribe confirmation
    recorder = Recorder(redis_client, keys)
    recorder.start()
    try:
        for update in ONE_OF_EACH[:4] + ONE_OF_EACH[:4]:
            recorder.submit(update)
        assert recorder.wait_idle(10)
    finally:
        recorder.stop()
    assert _entries(redis_client, keys) == ONE_OF_EACH[:4]
    notes = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            notes.append(json.loads(message["data"]))
    pubsub.close()
    assert [(n["kind"], n["event_id"]) for n in notes] == [("trade_update", u.event_id) for u in ONE_OF_EACH[:4]]
    assert notes[3]["symbol"] == "AAPL" and notes[3]["client_order_id"] == "fl-20261124-AAPL-o-1"


def test_failed_entry_write_leaves_no_seen_mark_so_the_retry_records_it(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    update = _update("fill")
    redis_client.set(keys.trade_updates, "not a stream")  # XADD now fails with WRONGTYPE
    with pytest.raises(redis.ResponseError):
        recorder.write(update)
    assert not redis_client.exists(keys.streamer_seen(update.event_id))
    redis_client.delete(keys.trade_updates)
    assert recorder.write(update) is not None
    assert _entries(redis_client, keys) == [update]


def test_recording_updates_health_with_the_last_event(redis_client, keys):
    recorder = Recorder(redis_client, keys)
    update = _update("fill")
    entry_id = recorder.write(update)
    health = redis_client.hgetall(keys.streamer_health)
    assert health["last_event_id"] == update.event_id
    assert health["last_entry_id"] == entry_id
    assert datetime.fromisoformat(health["last_event_at"]) == NOW


def test_seen_marks_expire_after_the_configured_ttl(redis_client, keys):
    recorder = Recorder(redis_client, keys, seen_ttl=3600)
    update = _update("fill")
    recorder.write(update)
    assert 3500 < redis_client.ttl(keys.streamer_seen(update.event_id)) <= 3600


# -- backfill (pure) -------------------------------------------------------------------------------

def test_backfilled_fill_has_the_event_id_of_the_live_fill():
    live = _update("fill", "filled", "10")
    (rebuilt,) = implied_updates([_order("filled", "10")])
    assert rebuilt.event == TradeEventType.FILL
    assert rebuilt.event_id == live.event_id


def test_canceled_order_with_fills_implies_its_partial_fill_then_the_cancel():
    rebuilt = implied_updates([_order("canceled", "4")])
    assert [u.event for u in rebuilt] == [TradeEventType.PARTIAL_FILL, TradeEventType.CANCELED]
    assert rebuilt[0].event_id == _update("partial_fill", "partially_filled", "4").event_id
    assert rebuilt[1].event_id == _update("canceled", "canceled", "4").event_id


@pytest.mark.parametrize(("status", "filled", "events"), [
    ("new", "0", ["new"]),
    ("accepted", "0", ["accepted"]),
    ("partially_filled", "3", ["partial_fill"]),
    ("expired", "0", ["expired"]),
    ("expired", "2", ["partial_fill", "expired"]),
    ("rejected", "0", ["rejected"]),
    ("held", "0", []),
])
def test_each_order_state_implies_the_updates_the_live_stream_sends(status, filled, events):
    assert [u.event.value for u in implied_updates([_order(status, filled)])] == events


def test_backfill_includes_oco_legs_and_keeps_only_the_latest_copy_of_an_order():
    stop_leg = _order("filled", "10", oid="leg", type="stop", side="sell", stop_price=Decimal("180"))
    parent = _order("canceled", "0", oid="tp", type="limit", side="sell", limit_price=Decimal("220"),
                    order_class="oco", legs=[stop_leg])
    stale_leg = _order("new", "0", oid="leg", updated_at=NOW - timedelta(minutes=5))
    rebuilt = implied_updates([stale_leg, parent])
    assert sorted((u.order.id, u.event.value) for u in rebuilt) == [("leg", "fill"), ("tp", "canceled")]
    assert all(not u.order.legs for u in rebuilt)


def test_backfill_skips_orders_not_updated_since_its_start_but_keeps_old_orders_that_just_filled():
    old_stop_filled_now = _order("filled", "10", oid="old-stop", created_at=NOW - timedelta(days=20))
    untouched = _order("canceled", "0", oid="quiet", updated_at=NOW - timedelta(hours=3))
    rebuilt = implied_updates([old_stop_filled_now, untouched], since=NOW - timedelta(minutes=1))
    assert [(u.order.id, u.event.value) for u in rebuilt] == [("old-stop", "fill")]


def test_first_start_backfills_from_midnight_new_york_of_the_last_trading_day():
    saturday = date(2026, 11, 28)
    start = trading_day_start(saturday, [date(2026, 11, 25), date(2026, 11, 27)])
    assert start == datetime(2026, 11, 27, 0, 0, tzinfo=NEW_YORK)
    assert trading_day_start(date(2026, 11, 27), [date(2026, 11, 27)]).date() == date(2026, 11, 27)


# -- leader lock -----------------------------------------------------------------------------------

def test_only_one_replica_holds_the_leader_lock(redis_client, keys):
    first = LeaderLock(redis_client, keys.streamer_leader, "a", 15)
    second = LeaderLock(redis_client, keys.streamer_leader, "b", 15)
    assert first.try_acquire() and not second.try_acquire()
    assert first.refresh() and not second.refresh()
    assert redis_client.get(keys.streamer_leader) == "a"


def test_standby_takes_the_lock_once_the_leader_stops_refreshing(redis_client, keys):
    leader = LeaderLock(redis_client, keys.streamer_leader, "a", 0.3)
    standby = LeaderLock(redis_client, keys.streamer_leader, "b", 0.3)
    assert leader.try_acquire()
    deadline = time.monotonic() + 5
    while not standby.try_acquire():
        assert time.monotonic() < deadline, "the lock never expired"
        time.sleep(0.05)
    assert not leader.refresh(), "a deposed leader must learn it lost the lock"


def test_refresh_extends_the_lock_ttl(redis_client, keys):
    lock = LeaderLock(redis_client, keys.streamer_leader, "a", 15)
    redis_client.set(keys.streamer_leader, "a", px=1000)
    assert lock.refresh()
    assert redis_client.pttl(keys.streamer_leader) > 14_000


def test_leader_retakes_a_lock_that_vanished_with_a_redis_restart(redis_client, keys):
    lock = LeaderLock(redis_client, keys.streamer_leader, "a", 15)
    assert lock.try_acquire()
    redis_client.delete(keys.streamer_leader)
    assert lock.refresh()
    assert redis_client.get(keys.streamer_leader) == "a"


def test_releasing_hands_the_lock_over_at_once_but_never_releases_anothers(redis_client, keys):
    leader = LeaderLock(redis_client, keys.streamer_leader, "a", 15)
    standby = LeaderLock(redis_client, keys.streamer_leader, "b", 15)
    leader.try_acquire()
    assert not standby.release()
    assert leader.release()
    assert standby.try_acquire()


# -- settings and --check ---------------------------------------------------------------------------

def test_lock_refresh_slower_than_half_the_ttl_is_refused_in_one_line(clean_env):
    clean_env.setenv("FL_STREAMER_LOCK_TTL_SECONDS", "6")
    clean_env.setenv("FL_STREAMER_LOCK_REFRESH_SECONDS", "5")
    with pytest.raises(ConfigError, match="FL_STREAMER_LOCK_REFRESH_SECONDS must be at most half"):
        load(StreamerSettings)


def test_stream_maxlen_below_the_safe_floor_is_refused(clean_env):
    clean_env.setenv("FL_STREAMER_MAXLEN", "500")
    with pytest.raises(ConfigError, match="^FL_STREAMER_MAXLEN: "):
        load(StreamerSettings)


def _bare_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    return env | {"PYTHONPATH": str(ROOT)}


def test_check_without_broker_keys_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "services.streamer", "--check"], cwd=tmp_path,
                            env=_bare_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("streamer: error: ALPACA_API_KEY, ALPACA_SECRET_KEY: are not set")
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_with_unreachable_redis_exits_2_with_one_line(tmp_path):
    env = _bare_env(tmp_path) | {"ALPACA_API_KEY": "key-AAAA1111", "ALPACA_SECRET_KEY": "secret-BBBB2222",
                                 "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run([sys.executable, "-m", "services.streamer", "--check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("streamer: error: Redis: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "secret-BBBB2222" not in result.stderr


def test_order_status_enum_still_matches_the_backfill_table():
    # A new broker status must be mapped deliberately, not fall through to "no update".
    from services.streamer.backfill import _RESTING_EVENT, _TERMINAL_EVENT

    mapped = set(_RESTING_EVENT) | set(_TERMINAL_EVENT) | {OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED,
                                                           OrderStatus.HELD, OrderStatus.PENDING_REVIEW}
    assert mapped == set(OrderStatus)


# -- end to end: alpaca-py against the simulated market ----------------------------------------------

def _eventually(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _sim_event_ids(events: list[dict], kinds: set[str] | None = None) -> list[str]:
    """The event ids of the simulator's own trade updates (what the broker really sent)."""
    return [f"{e['order']['id']}:{e['event']}:{Decimal(e['order']['filled_qty']).normalize()}"
            for e in events if kinds is None or e["event"] in kinds]


def _stream_event_ids(client, keys) -> list[str]:
    return [fields["event_id"] for _, fields in client.xrange(keys.trade_updates)]


@pytest.fixture
def market():
    """A fresh simulated market in this process (frozen clock, Monday 2024-03-04 10:00 New York)."""
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def running_streamer(market, redis_client, keys):
    import threading

    from services.streamer.daemon import Streamer
    from shared.broker import make_executor

    settings = StreamerSettings(_env_file=None, FL_STREAMER_LOCK_TTL_SECONDS=3, FL_STREAMER_LOCK_REFRESH_SECONDS=1)
    executor = make_executor(market.broker_settings())
    streamer = Streamer(executor, redis_client, keys, settings)
    thread = threading.Thread(target=streamer.run, daemon=True)
    thread.start()
    _eventually(lambda: redis_client.hget(keys.streamer_health, "connected") == "yes"
                and market.control.state()["stream_connections"] == 1, what="the streamer to connect")
    _eventually(lambda: redis_client.hget(keys.streamer_health, "last_backfill_at"), what="the first backfill")
    yield streamer, executor
    streamer.stop()
    thread.join(timeout=20)
    executor.close()
    assert not thread.is_alive()


def test_every_update_the_simulator_sends_lands_in_the_stream_once(market, running_streamer, redis_client, keys):
    _, executor = running_streamer
    trading = market.trading_client()
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest

    executor.buy_qty("AAPL", Decimal("3"), "e2e-aapl-entry")                     # new, fill
    market.control.partial_fill_next("MSFT", "0.5")
    executor.buy_qty("MSFT", Decimal("4"), "e2e-msft-entry")                     # new, partial_fill 2
    market.control.fill(client_order_id="e2e-msft-entry")                           # fill 4
    oco = executor.submit_protective_exit("AAPL", Decimal("3"), Decimal("150"), Decimal("250"), "e2e-aapl-oco")
    executor.cancel_order(oco.id)                                                # canceled (parent and leg)
    trading.submit_order(LimitOrderRequest(symbol="KO", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                           limit_price=1.00, client_order_id="e2e-ko-day-limit"))
    market.control.advance(to="2024-03-04T16:30:00-05:00")                          # expired at the close
    executor.buy_qty("PFE", Decimal("1"), "e2e-pfe-after-close")                 # accepted (queued)

    sent = _sim_event_ids(market.control.events(0))
    assert {e.split(":")[1] for e in sent} >= {"new", "fill", "partial_fill", "canceled", "expired", "accepted"}
    _eventually(lambda: set(_stream_event_ids(redis_client, keys)) >= set(sent), what="every update in the stream")
    recorded = _stream_event_ids(redis_client, keys)
    assert sorted(recorded) == sorted(sent), "each update once, nothing invented"
    for _, fields in redis_client.xrange(keys.trade_updates):
        update = decode_entry(fields)
        assert fields["symbol"] == update.order.symbol and fields["client_order_id"] == update.order.client_order_id


def test_reconnect_backfill_of_already_delivered_updates_adds_nothing(market, running_streamer, redis_client, keys):
    _, executor = running_streamer
    for n, symbol in enumerate(("AAPL", "KO", "PFE")):
        executor.buy_qty(symbol, Decimal("2"), f"dup-{n}")
    sent = _sim_event_ids(market.control.events(0))
    _eventually(lambda: set(_stream_event_ids(redis_client, keys)) >= set(sent), what="the live updates")
    before = redis_client.hget(keys.streamer_health, "last_backfill_at")
    market.control.drop_stream()
    _eventually(lambda: redis_client.hget(keys.streamer_health, "last_backfill_at") != before,
                what="the reconnect backfill")
    health = redis_client.hgetall(keys.streamer_health)
    assert int(health["last_backfill_count"]) >= 3 and health["last_backfill_added"] == "0"
    assert sorted(_stream_event_ids(redis_client, keys)) == sorted(sent)


def test_leader_that_loses_its_lock_drops_the_broker_connection_at_once(market, running_streamer, redis_client, keys):
    streamer, _ = running_streamer
    redis_client.set(keys.streamer_leader, "another-replica", px=60_000)
    _eventually(lambda: market.control.state()["stream_connections"] == 0, timeout=10,
                what="the deposed leader to disconnect")
    assert not streamer.is_leader
    redis_client.delete(keys.streamer_leader)  # the other replica went away without its lock
    _eventually(lambda: market.control.state()["stream_connections"] == 1 and streamer.is_leader, timeout=10,
                what="the lock to be taken back")


def test_check_passes_when_redis_and_the_broker_answer(market, namespace, tmp_path):
    from conftest import redis_url

    env = _bare_env(tmp_path) | market.broker_env() | {"REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    result = subprocess.run([sys.executable, "-m", "services.streamer", "--check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("streamer: ok: config valid, Redis answers, broker answers")


def test_check_with_unreachable_broker_exits_2_with_one_line(namespace, tmp_path):
    from conftest import redis_url

    env = _bare_env(tmp_path) | {"ALPACA_API_KEY": "key-AAAA1111", "ALPACA_SECRET_KEY": "secret-BBBB2222",
                                 "ALPACA_ENDPOINT": "http://127.0.0.1:1", "REDIS_URL": redis_url(),
                                 "FL_NAMESPACE": namespace}
    result = subprocess.run([sys.executable, "-m", "services.streamer", "--check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("streamer: error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
