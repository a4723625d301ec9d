"""The manager under faults, with real processes: the simulator (`python -m sim`), the streamer
(`python -m services.streamer`: the simulator's trade-update WebSocket into the Redis stream) and one or
two managers (`python -m services.manager`), all over alpaca-py and the real Redis.

What is audited is what the broker saw: the simulator's full order list (every order ever submitted,
canceled ones included) and its refusals. "Exactly one protective set" means one protective sell order
submitted per fill that needed one, not merely one left open at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.enums import OrderClass as AlpacaOrderClass
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import LimitOrderRequest, StopLossRequest, StopOrderRequest, TakeProfitRequest
from conftest import redis_url
from simhelpers import NEW_YORK, SimHandle, start_sim
from test_streamer_faults import (  # noqa: F401 - a fixture
    REDIS_PASSWORD,
    assert_repeated_every_10_s_at_most,
    assert_says_redis_is_unreachable,
    log_events,
    throwaway_redis_with_password,
)

from shared import bus
from shared.broker import make_executor
from shared.bus import Keys
from shared.models import OrderClass, Side

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
PRE_OPEN = datetime(2024, 3, 4, 9, 0, tzinfo=NEW_YORK)  # Monday, before the session
OPEN = datetime(2024, 3, 4, 9, 30, 5, tzinfo=NEW_YORK)
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AMD", "NFLX", "INTC")


def wait_until(what: str, predicate: Callable[[], object], timeout: float = 30.0, pause: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)


class Line:
    """The simulator plus the streamer and managers of one namespace, as real processes."""

    def __init__(self, sim: SimHandle, keys, client, workdir: Path):
        self.sim, self.keys, self.client, self.workdir = sim, keys, client, workdir
        self.executor = make_executor(sim.broker_settings())
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
        self.env.update(sim.broker_env(), FL_NAMESPACE=keys.ns, REDIS_URL=redis_url(), PYTHONUNBUFFERED="1")

    def start(self, name: str, module: str, **env: str) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([sys.executable, "-m", module, "--log-level", "INFO"], cwd=ROOT,
                                env={**self.env, **env}, stdout=log, stderr=log)
        self.processes[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def start_streamer(self) -> None:
        self.start("streamer", "services.streamer")
        wait_until("the streamer to listen", lambda: self.sim.control.state()["stream_connections"] >= 1)

    def start_manager(self, name: str, consumer: str | None = None, **env: str) -> None:
        before = self.log(name).count("reconcile_all_done trigger=start")
        self.start(name, "services.manager", FL_MANAGER_CONSUMER=consumer or name, **env)
        wait_until(f"{name} to start", lambda: self.log(name).count("reconcile_all_done trigger=start") > before
                   or self.processes[name].poll() is not None)
        assert self.processes[name].poll() is None, self.log(name)[-3000:]

    def pause(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGCONT)

    def kill(self, name: str) -> None:
        proc = self.processes.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.executor.close()

    # -- what the broker and the stream hold ---------------------------------------------------------
    def buy(self, symbol: str, qty: str):
        return self.executor.buy_qty(symbol, D(qty), f"{self.keys.ns}-20240304-{symbol}-entry")

    def stream_events(self, event: str) -> list[dict]:
        return [f for _id, f in self.client.xrange(self.keys.trade_updates) if f["event"] == event]

    def pending(self, consumer: str | None = None) -> int:
        summary = self.client.xpending(self.keys.trade_updates, "manager")
        if consumer is None:
            return summary["pending"]
        return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer)

    def delivered_up_to(self, entry_id: str) -> bool:
        (group,) = self.client.xinfo_groups(self.keys.trade_updates)
        return group["last-delivered-id"] == entry_id

    def sells_submitted(self) -> dict[str, list[dict]]:
        """Every sell order the broker ever accepted, by symbol (OCO legs counted with their parent)."""
        result: dict[str, list[dict]] = {}
        for order in self.sim.control.state()["orders"]:
            if order["side"] == "sell":
                result.setdefault(order["symbol"], []).append(order)
        return result

    def open_protection(self, symbol: str) -> list[tuple]:
        result = []
        for order in self.executor.get_open_orders(symbol):
            if order.side is Side.SELL:
                result.append((order.order_class.value, order.remaining_qty))
        return sorted(result)

    def refusals(self) -> list[dict]:
        return self.sim.control.state()["rejections"]


@pytest.fixture
def line_factory(redis_client, keys, tmp_path):
    lines: list[tuple[Line, SimHandle]] = []

    def make(**sim_args) -> Line:
        sim = start_sim(process=True, **sim_args)
        line = Line(sim, keys, redis_client, tmp_path)
        lines.append((line, sim))
        return line

    yield make
    for line, sim in lines:
        line.stop_all()
        sim.stop()


def test_manager_killed_after_fills_reach_the_stream_restarts_and_protects_every_one_once(line_factory):
    line = line_factory(start=PRE_OPEN)
    symbols = SYMBOLS[:5]
    line.start_streamer()
    line.start_manager("manager-a", consumer="m1", FL_BROKER_TIMEOUT_SECONDS="60")
    for symbol in symbols:
        line.buy(symbol, "4")  # queued: the market opens at 09:30
    # The manager will read all the fills at once, then hang sending its first protective order (the
    # simulator holds those requests unprocessed for longer than the test lasts).
    line.sim.control.delay_requests(10_000, 600.0, path_prefix="/v2/orders", method="POST")
    line.pause("manager-a")
    line.sim.control.advance(to=OPEN)
    wait_until("the fills in the stream", lambda: len(line.stream_events("fill")) == len(symbols))
    line.resume("manager-a")
    wait_until("the manager to hold them unacknowledged", lambda: line.pending("m1") >= len(symbols))
    line.kill("manager-a")
    line.sim.control.clear_faults()
    assert line.sells_submitted() == {}  # killed before it protected anything

    line.start_manager("manager-a2", consumer="m1")  # the same replica, restarted
    for symbol in symbols:
        wait_until(f"{symbol} protected", lambda s=symbol: line.open_protection(s) == [("oco", D("4"))])
    wait_until("every entry acknowledged", lambda: line.pending() == 0)
    assert {s: len(orders) for s, orders in line.sells_submitted().items()} == {s: 1 for s in symbols}
    # It was the restarted manager's re-read of its own pending fills that protected them, not only the
    # reconcile of every position that follows.
    caught_up = re.search(r"manager_caught_up acked=(\d+)", line.log("manager-a2"))
    assert caught_up and int(caught_up.group(1)) >= len(symbols)
    assert "position_adopted" not in line.log("manager-a2")
    assert line.refusals() == []


def test_surviving_replica_takes_over_the_fills_a_killed_replica_left_unacknowledged(line_factory):
    line = line_factory(start=PRE_OPEN)
    symbols = SYMBOLS[:3]
    line.start_streamer()
    line.start_manager("manager-a", consumer="m1", FL_MANAGER_CLAIM_IDLE_MS="1000", FL_BROKER_TIMEOUT_SECONDS="60")
    for symbol in symbols:
        line.buy(symbol, "2")
    line.sim.control.delay_requests(10_000, 600.0, path_prefix="/v2/orders", method="POST")
    line.pause("manager-a")
    line.sim.control.advance(to=OPEN)
    wait_until("the fills in the stream", lambda: len(line.stream_events("fill")) == len(symbols))
    line.resume("manager-a")
    wait_until("manager-a to hold the fills", lambda: line.pending("m1") >= len(symbols))
    line.kill("manager-a")
    line.sim.control.clear_faults()
    line.start_manager("manager-b", consumer="m2", FL_MANAGER_CLAIM_IDLE_MS="1000")
    wait_until("m1's entries taken over and acknowledged", lambda: line.pending() == 0, timeout=30)
    assert "trade_updates_claimed" in line.log("manager-b")
    for symbol in symbols:
        assert line.open_protection(symbol) == [("oco", D("2"))]
    assert {s: len(orders) for s, orders in line.sells_submitted().items()} == {s: 1 for s in symbols}


def test_same_fill_delivered_twice_gives_exactly_one_protective_set(line_factory, redis_client, keys):
    line = line_factory()
    line.start_streamer()
    line.buy("AAPL", "10")
    (fill,) = wait_until("the fill in the stream", lambda: line.stream_events("fill"))
    redis_client.xadd(keys.trade_updates, fill)  # a second delivery of the same update, before any manager
    line.start_manager("manager", consumer="m1")
    wait_until("both copies acknowledged", lambda: line.pending() == 0 and line.open_protection("AAPL"))
    late = redis_client.xadd(keys.trade_updates, fill)  # and a third, after it was protected
    wait_until("the late copy read and acknowledged", lambda: line.pending() == 0 and line.delivered_up_to(late))
    assert line.open_protection("AAPL") == [("oco", D("10"))]
    assert len(line.sells_submitted()["AAPL"]) == 1


def test_entry_filled_30_then_100_percent_is_protected_for_30_then_100_never_more_than_held(line_factory):
    line = line_factory()
    line.start_streamer()
    line.start_manager("manager", consumer="m1")
    line.sim.control.partial_fill_next("MSFT", "0.3")
    entry = line.buy("MSFT", "10")
    wait_until("the 30% protected", lambda: line.open_protection("MSFT") == [("oco", D("3"))])
    assert line.executor.get_position("MSFT").qty == D("3")
    line.sim.control.fill(entry.id)
    wait_until("the 100% protected", lambda: line.open_protection("MSFT") == [("oco", D("10"))])
    sells = line.sells_submitted()["MSFT"]
    assert [(o["qty"], o["status"]) for o in sells] == [("3", "canceled"), ("10", "new")]
    # The broker refuses any sell beyond the shares held and not reserved: no refusal means the
    # protection never exceeded the position at any moment.
    assert line.refusals() == []
    position = line.executor.get_position("MSFT")
    assert position.qty == D("10") and position.qty_available == D("0")


def test_two_replicas_consuming_together_never_give_a_symbol_two_protective_sets(line_factory, redis_client, keys):
    line = line_factory(start=PRE_OPEN)
    line.start_streamer()
    line.start_manager("manager-a", consumer="m1")
    line.start_manager("manager-b", consumer="m2")
    for symbol in SYMBOLS:
        line.buy(symbol, "3")
    line.sim.control.advance(to=OPEN)
    wait_until("the fills in the stream", lambda: len(line.stream_events("fill")) == len(SYMBOLS))
    # Every fill again, so both replicas get a copy of the same symbol's fill at the same moment.
    for fill in line.stream_events("fill"):
        redis_client.xadd(keys.trade_updates, fill)
    for symbol in SYMBOLS:
        wait_until(f"{symbol} protected", lambda s=symbol: line.open_protection(s) == [("oco", D("3"))])
    wait_until("everything acknowledged", lambda: line.pending() == 0)
    consumers = {c["name"]: c for c in redis_client.xinfo_consumers(keys.trade_updates, "manager")}
    assert set(consumers) == {"m1", "m2"}
    assert {s: len(orders) for s, orders in line.sells_submitted().items()} == {s: 1 for s in SYMBOLS}
    assert line.refusals() == []


# -- why one OCO and not two plain orders ---------------------------------------------------------------


def test_naive_protection_as_a_plain_stop_plus_a_plain_limit_is_refused_on_the_second_order(line_factory):
    line = line_factory()
    line.buy("AAPL", "10")
    entry_price = line.executor.get_position("AAPL").avg_entry_price
    client = line.sim.trading_client()
    client.submit_order(StopOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                         stop_price=float((entry_price * D("0.95")).quantize(D("0.01"), ROUND_CEILING))))
    with pytest.raises(APIError) as refused:
        client.submit_order(LimitOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL,
                                              time_in_force=TimeInForce.GTC,
                                              limit_price=float((entry_price * D("1.2")).quantize(D("0.01")))))
    assert refused.value.status_code == 403
    assert "insufficient qty available" in str(refused.value)
    # Half the protection is missing: the position has a stop but no target.
    assert line.open_protection("AAPL") == [("simple", D("10"))]


def test_shipped_protection_one_oco_holds_stop_and_target_for_the_same_shares(line_factory):
    line = line_factory()
    line.start_streamer()
    line.start_manager("manager", consumer="m1")
    line.buy("AAPL", "10")
    wait_until("the OCO", lambda: line.open_protection("AAPL") == [("oco", D("10"))])
    (oco,) = [o for o in line.executor.get_open_orders("AAPL") if o.side is Side.SELL]
    assert oco.order_class is OrderClass.OCO and oco.limit_price is not None
    assert [leg.stop_price is not None for leg in oco.legs] == [True]
    assert line.refusals() == []
    # The same OCO sent through alpaca-py by hand is refused now only because the shares are already held.
    with pytest.raises(APIError) as refused:
        line.sim.trading_client().submit_order(LimitOrderRequest(
            symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
            order_class=AlpacaOrderClass.OCO, take_profit=TakeProfitRequest(limit_price=float(oco.limit_price)),
            stop_loss=StopLossRequest(stop_price=float(oco.legs[0].stop_price))))
    assert "insufficient qty available" in str(refused.value)


# -- Redis away: said in the log, waited out ------------------------------------------------------------


def test_a_manager_without_redis_says_so_every_10_s_never_dies_and_says_when_it_is_back(
        throwaway_redis_with_password, tmp_path):  # noqa: F811 - the imported fixture
    server = throwaway_redis_with_password
    sim = start_sim()
    client = bus.connect(server.url)
    line = Line(sim, Keys("manager-unreachable"), client, tmp_path)
    line.env["REDIS_URL"] = server.url
    try:
        # 1. No Redis at start: the first read of the stream fails; it waits, says so, and tries again.
        server.kill()
        proc = line.start("manager", "services.manager", FL_MANAGER_CONSUMER="m1", FL_MANAGER_RECONCILE_SECONDS="2")
        wait_until("the first redis_unreachable", lambda: "redis_unreachable" in line.log("manager"), timeout=20)
        wait_until("it said again", lambda: line.log("manager").count("redis_unreachable") >= 2, timeout=20)
        assert proc.poll() is None, line.log("manager")[-3000:]
        server.start()
        wait_until("it caught up and reconciled", lambda: "reconcile_all_done trigger=start" in line.log("manager"),
                   timeout=15)
        assert line.log("manager").count("redis_reachable_again") == 1
        wait_until("the timer's reconcile", lambda: "reconcile_all_done trigger=timer" in line.log("manager"),
                   timeout=15)

        # 2. Redis lost while it runs: said within ~2 s, waited out, said again when it is back.
        before = line.log("manager").count("redis_unreachable")
        killed_at = datetime.now(UTC)
        server.kill()
        wait_until("redis_unreachable", lambda: line.log("manager").count("redis_unreachable") > before, timeout=10)
        text = line.log("manager")
        assert_says_redis_is_unreachable(text, server, killed_at)
        time.sleep(3)
        assert line.log("manager").count("redis_unreachable") == before + 1  # not once per failed read
        server.start()
        wait_until("redis_reachable_again", lambda: line.log("manager").count("redis_reachable_again") == 2,
                   timeout=10)
        assert proc.poll() is None
    finally:
        line.stop_all()
        sim.stop()
        client.close()
    assert proc.returncode == 0
    text = line.log("manager")
    assert_repeated_every_10_s_at_most(text)
    downs = [float(f["down_seconds"]) for _, f in log_events(text, "redis_reachable_again")]
    assert downs[0] >= 10 and 3 <= downs[1] < 10, downs
    assert "redis_unavailable" not in text and "Traceback" not in text
    assert REDIS_PASSWORD not in text
