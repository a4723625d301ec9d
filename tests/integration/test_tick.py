"""The manager's tick: what it reads, what it remembers, when it stays still, and what it writes.

Against the simulated market replaying flat prices (see test_exit_scenarios.py) and real Redis.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import NEW_YORK, start_sim
from test_exit_scenarios import ENTRY, MONDAY, RULES, Desk, flat_bars_csv

from services.manager import portfolio, tick
from shared import bus, queues
from shared import position_store as store
from shared.broker.alpaca import AlpacaExecutor
from shared.positions import hwm
from shared.positions import reconcile as rec
from shared.positions.context import ManagerContext
from shared.protection import Trigger

D = Decimal
ROOT = Path(__file__).resolve().parents[2]


class CountingExecutor(AlpacaExecutor):
    """Records every HTTP request the executor sends (method and path), as the broker would count them."""

    def __init__(self, settings):
        super().__init__(settings)
        self.calls: list[str] = []
        for client in self._clients:  # every alpaca-py client, the raw-data one (bar rows) included
            client._session.hooks["response"].append(self._record)

    def _record(self, response, *_args, **_kwargs):
        self.calls.append(f"{response.request.method} {response.request.path_url.split('?', 1)[0]}")


@pytest.fixture
def flat_market(tmp_path):
    handle = start_sim(bars_csv=flat_bars_csv(tmp_path), start=MONDAY)
    yield handle
    handle.stop()


@pytest.fixture
def desk(flat_market, redis_client, keys, tmp_path):
    desk = Desk(flat_market, redis_client, keys, tmp_path)
    yield desk
    desk.close()


@pytest.fixture
def counting_desk(flat_market, redis_client, keys, tmp_path):
    desk = Desk(flat_market, redis_client, keys, tmp_path, executor=CountingExecutor(flat_market.broker_settings()))
    yield desk
    desk.close()


def test_tick_without_exits_sends_three_requests_and_no_clock_or_price_request(counting_desk):
    desk = counting_desk
    for symbol in ("BEV", "TRL", "TIM"):
        desk.open_position(symbol)
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.executor.calls.clear()
    first = desk.tick()
    # The day's first tick learns the session once (kept in Redis for the scheduler and later ticks).
    assert first.positions == 3 and first.exits == []
    assert desk.executor.calls == ["GET /v2/positions", "GET /v2/calendar", "GET /v2/account",
                                   "GET /v2/stocks/bars"]
    desk.advance_to(MONDAY + timedelta(minutes=10))
    desk.executor.calls.clear()
    second = desk.tick()
    assert second.positions == 3 and second.exits == []
    # Three requests: the positions (with "now" and each one's price), the account (the risk limits),
    # the bars since the last look.
    assert desk.executor.calls == ["GET /v2/positions", "GET /v2/account", "GET /v2/stocks/bars"]
    # "now" came from the position listing's Date header: the simulator's virtual time.
    assert second.at == (MONDAY + timedelta(minutes=10)).astimezone(NEW_YORK)


def test_spike_between_two_ticks_raises_the_high_water_mark_from_minute_bar_highs(desk):
    desk.open_position("SPK")
    desk.tick()
    desk.sim.control.set_price("SPK", "101.80")  # +1.78%: arms break-even
    desk.advance_to(MONDAY + timedelta(minutes=2))
    desk.sim.control.set_price("SPK", "100.50")  # already back when the next tick looks
    desk.advance_to(MONDAY + timedelta(minutes=5))
    report = desk.tick()
    state = desk.state("SPK")
    assert state.high_water_mark == D("101.80") and state.breakeven_armed and not state.trailing_armed
    assert report.exits == []  # 100.52 is still above the entry


def test_a_spike_before_a_second_fill_still_counts_at_the_next_tick(desk):
    desk.open_position("PART")
    desk.tick()  # 10:00: the state's last look
    desk.sim.control.set_price("PART", "102.60")  # +2.58% at 10:02: arms trailing
    desk.advance_to(MONDAY + timedelta(minutes=2))
    desk.sim.control.set_price("PART", "100.50")
    desk.advance_to(MONDAY + timedelta(minutes=4))
    # A second buy fills and the reconcile folds it into the state (new average entry, 20 shares).
    desk.executor.buy_qty("PART", D("10"), f"{desk.keys.ns}-20240304-PART-entry-2")
    rec.reconcile_symbol(ManagerContext(desk.executor, desk.client, desk.keys, RULES), "PART", Trigger.START)
    assert desk.state("PART").qty == D("20")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    report = desk.tick()
    # Peak 102.60 over the new entry 100.27: trailing exits at 100.27 + 50% x 2.33 = 101.435 or below.
    [result] = report.exits
    assert result.reason.value == "trailing" and result.qty_sold == D("20")
    assert report.states["PART"].entry_price == D("100.27")
    assert report.states["PART"].high_water_mark == D("102.60")


def test_lost_state_is_rebuilt_from_the_first_fill_and_the_bars_since_entry(counting_desk):
    desk = counting_desk
    desk.open_position("LOST")
    first_fill_at = desk.executor.get_order_by_client_id(f"{desk.keys.ns}-20240304-LOST-entry").filled_at
    desk.sim.control.set_price("LOST", "103.00")
    desk.advance_to(MONDAY + timedelta(minutes=3))
    desk.sim.control.set_price("LOST", "102.50")
    desk.advance_to(MONDAY + timedelta(hours=1))
    desk.client.delete(desk.keys.position_state("LOST"))  # Redis lost it (flushed, restored old dump...)
    desk.executor.calls.clear()
    report = desk.tick()
    assert report.rebuilt == ["LOST"] and report.exits == []
    assert desk.executor.calls == ["GET /v2/positions", "GET /v2/calendar", "GET /v2/account",
                                   "GET /v2/orders", "GET /v2/stocks/bars"]
    state = desk.state("LOST")
    assert state.first_fill_at == first_fill_at and state.entry_price == ENTRY and state.qty == D("10")
    assert state.high_water_mark == D("103.00") and state.breakeven_armed and state.trailing_armed
    # Rebuilt once: the next tick reads it like any other.
    assert desk.tick().rebuilt == []


def test_states_survive_a_restart_of_the_manager_in_redis(desk, tmp_path):
    desk.open_position("TRL")
    desk.sim.control.set_price("TRL", "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    desk.sim.control.set_price("TRL", "107.00")
    restarted = Desk(desk.sim, desk.client, desk.keys, tmp_path)  # a new process: nothing in memory
    try:
        desk.advance_to(MONDAY + timedelta(minutes=10))
        report = restarted.tick()
    finally:
        restarted.close()
    # The tick's price is the position's last trade (110, 107), not the ask (110.02, 107.02).
    assert report.rebuilt == [] and report.exits == []  # 107 is above the trailing level 105.01
    assert desk.state("TRL").high_water_mark == D("110") and desk.state("TRL").trailing_armed


def test_halt_flag_makes_the_tick_do_nothing(desk):
    desk.open_position("BEV")
    desk.sim.control.set_price("BEV", "101.60")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    before = desk.client.get(desk.keys.position_state("BEV"))
    desk.client.set(desk.keys.halt, "1")
    report = desk.tick()
    assert report.status is tick.TickStatus.HALTED and "halted" in report.lines()[0]
    assert desk.client.get(desk.keys.position_state("BEV")) == before
    assert not desk.portfolio.exists()


def test_halt_set_while_the_tick_runs_stops_the_exits_it_had_not_sent(flat_market, redis_client, keys, tmp_path):
    class HaltedDuringTheTick(AlpacaExecutor):
        def get_bar_rows(self, symbols, timeframe, start, end):
            redis_client.set(keys.halt, "1")  # someone runs `factoryline halt` while we read the bars
            return super().get_bar_rows(symbols, timeframe, start, end)

    setup = Desk(flat_market, redis_client, keys, tmp_path)
    desk = Desk(flat_market, redis_client, keys, tmp_path, executor=HaltedDuringTheTick(flat_market.broker_settings()))
    try:
        setup.open_position("BEV")
        setup.sim.control.set_price("BEV", "101.60")
        setup.advance_to(MONDAY + timedelta(minutes=5))
        setup.tick()
        setup.sim.control.set_price("BEV", "99.00")
        setup.advance_to(MONDAY + timedelta(minutes=10))
        report = desk.tick()
        assert report.exits == [] and report.halted_before == ["BEV"]
        assert desk.executor.get_position("BEV").qty == D("10") and len(desk.sells("BEV")) == 1
    finally:
        setup.close()
        desk.close()


def test_closed_market_makes_the_tick_do_nothing_even_when_an_exit_would_fire(desk):
    desk.open_position("TIM")
    desk.advance_to(MONDAY.replace(hour=17) + timedelta(days=8))  # time stop overdue, but after the close
    report = desk.tick()
    assert report.status is tick.TickStatus.MARKET_CLOSED and report.exits == []
    assert desk.executor.get_position("TIM").qty == D("10")
    assert len(desk.sells("TIM")) == 1  # only its protection


@pytest.mark.parametrize(("hhmm", "status"), [("12:55", tick.TickStatus.DONE),
                                               ("13:05", tick.TickStatus.MARKET_CLOSED)])
def test_early_close_day_ends_the_ticks_at_the_brokers_close_not_at_four(hhmm, status, redis_client, keys):
    # 2024-11-29, the day after Thanksgiving: the NYSE closes at 13:00.
    hour, minute = (int(x) for x in hhmm.split(":"))
    market = start_sim(start=datetime(2024, 11, 29, hour, minute, tzinfo=NEW_YORK))
    executor = AlpacaExecutor(market.broker_settings())
    try:
        report = tick.run_tick(ManagerContext(executor, redis_client, keys, RULES))
    finally:
        executor.close()
        market.stop()
    assert report.status is status
    assert report.at == datetime(2024, 11, 29, hour, minute, tzinfo=NEW_YORK)


class _NoServerTime(AlpacaExecutor):
    """A broker whose answers carry no Date header (a proxy stripped it)."""

    def get_positions_at(self):
        return self.get_positions(), None


def test_without_a_server_time_the_tick_asks_the_brokers_clock_instead(flat_market, redis_client, keys):
    executor = _NoServerTime(flat_market.broker_settings())
    try:
        flat_market.control.advance(seconds=90)
        report = tick.run_tick(ManagerContext(executor, redis_client, keys, RULES))
    finally:
        executor.close()
    assert report.status is tick.TickStatus.DONE
    assert report.at == MONDAY + timedelta(seconds=90)


def test_portfolio_csv_lists_open_positions_with_entry_last_price_peak_armed_exits_and_days_held(desk):
    desk.open_position("TRL")
    desk.open_position("BEV", qty="5")
    desk.sim.control.set_price("TRL", "110.00")
    desk.advance_to(MONDAY + timedelta(days=1, hours=2))
    report = desk.tick()
    assert report.portfolio_csv == str(desk.portfolio)
    rows = {r["symbol"]: r for r in portfolio.read(desk.portfolio)}
    assert list(rows) == ["BEV", "TRL"]
    assert rows["TRL"] == {
        "symbol": "TRL", "qty": "10", "entry_price": "100.02", "last_price": "110", "high_water_mark": "110",
        "armed_exits": "break_even trailing", "trailing_exit_level": "105.01", "days_held": "1.08",
        "first_fill_at": rows["TRL"]["first_fill_at"],
    }
    assert rows["TRL"]["first_fill_at"].startswith("2024-03-04T10:00:00")
    assert (rows["BEV"]["qty"], rows["BEV"]["armed_exits"], rows["BEV"]["trailing_exit_level"]) == ("5", "", "")
    assert [p.name for p in desk.portfolio.parent.iterdir()] == ["portfolio.csv"]  # no temporary file left


def test_first_fill_of_the_current_holding_ignores_an_earlier_round_trip():
    from datetime import UTC, datetime

    from shared.models import Order, OrderStatus, OrderType, Side, TimeInForce

    def order(side: Side, qty: str, minute: int) -> Order:
        at = datetime(2024, 3, 4, 15, minute, tzinfo=UTC)
        return Order(id=f"o{minute}", client_order_id=f"c{minute}", symbol="AAA", side=side, type=OrderType.MARKET,
                     time_in_force=TimeInForce.DAY, status=OrderStatus.FILLED, qty=D(qty), filled_qty=D(qty),
                     filled_avg_price=D("10"), created_at=at, updated_at=at, filled_at=at)

    orders = [order(Side.BUY, "5", 1), order(Side.SELL, "5", 2), order(Side.BUY, "3", 3), order(Side.BUY, "2", 4)]
    assert hwm.first_fill_times(orders, ["AAA"]) == {"AAA": datetime(2024, 3, 4, 15, 3, tzinfo=UTC)}


# -- the command, the job and the worker ------------------------------------------------------------------

_FACTORYLINE = (
    "import sys; from services import cli; "
    "cli.COMMANDS.setdefault('manage', ('services.manager.tick_cli', 'manage')); "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def _env(desk: Desk, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(desk.sim.broker_env())
    env.update(REDIS_URL=redis_url(), FL_NAMESPACE=desk.keys.ns, FL_PORTFOLIO_CSV=str(desk.portfolio), **extra)
    return env


def test_manage_command_runs_the_tick_now_and_prints_what_it_did(desk, tmp_path):
    desk.open_position("BEV")
    desk.sim.control.set_price("BEV", "101.60")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    desk.sim.control.set_price("BEV", "99.00")
    done = subprocess.run([sys.executable, "-c", _FACTORYLINE, "manage"], cwd=ROOT, env=_env(desk),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BEV: break_even -> sold, sold 10 at 98.98 (entry 100.02, P/L -10.40)" in done.stdout
    assert "manage: 1 position(s) checked" in done.stdout
    assert desk.executor.get_position("BEV") is None
    assert list(csv.reader(desk.portfolio.open())) == [list(portfolio.COLUMNS)]


def test_manage_command_with_a_bad_setting_exits_2_with_one_line(desk):
    done = subprocess.run([sys.executable, "-c", _FACTORYLINE, "manage"], cwd=ROOT,
                          env=_env(desk, FL_TIME_STOP_DAYS="soon"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "FL_TIME_STOP_DAYS" in done.stderr


def test_tick_job_on_the_manager_queue_runs_in_the_worker(desk):
    desk.open_position("TRL")
    rq_client = bus.connect_rq(redis_url())
    job = queues.enqueue(rq_client, desk.keys, "manager", "services.manager.tick.manage_positions")
    done = subprocess.run([sys.executable, "-m", "services.manager.worker", "--burst", "--log-level", "WARNING"],
                          cwd=ROOT, env=_env(desk), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job.refresh()
    assert job.get_status().value == "finished", done.stderr
    assert job.return_value()["positions"] == 1 and job.return_value()["armed"] == {"TRL": []}
    assert desk.portfolio.exists()
    rq_client.close()


def test_worker_check_reports_redis_broker_and_queue(desk):
    done = subprocess.run([sys.executable, "-m", "services.manager.worker", "--check"], cwd=ROOT, env=_env(desk),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "market open" in done.stdout and f"{desk.keys.ns}" in done.stdout


def test_worker_check_against_an_unreachable_broker_exits_2_with_one_line(desk):
    env = _env(desk, ALPACA_ENDPOINT="http://127.0.0.1:9", FL_BROKER_TIMEOUT_SECONDS="2")
    done = subprocess.run([sys.executable, "-m", "services.manager.worker", "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_states_round_trip_through_the_manager_state_store(desk):
    """The tick's batched read is the same record `shared.position_store` reads one by one."""
    desk.open_position("TRL")
    desk.tick()
    (stored,) = hwm.load_states(desk.client, desk.keys, ["TRL"]).values()
    assert stored.state == store.load_state(desk.client, desk.keys, "TRL")
    assert stored.state.updated_at.astimezone(NEW_YORK) == MONDAY


def test_bars_are_read_for_every_armed_position_and_the_unarmed_nearest_to_arming_within_the_budget(monkeypatch):
    from shared.exits import PositionState

    at = MONDAY
    def state(symbol, hwm, **armed):
        return PositionState.at_entry(symbol, D("100"), D("1"), at).model_copy(
            update={"high_water_mark": D(hwm), **armed})

    states = {"ARM": state("ARM", "103", breakeven_armed=True, trailing_armed=True),
              "BEV": state("BEV", "101.6", breakeven_armed=True),
              "FAR": state("FAR", "100"), "NEAR": state("NEAR", "101"), "MID": state("MID", "100.5")}
    prices = {"ARM": D("102"), "BEV": D("101"), "FAR": D("99"), "NEAR": D("101.2"), "MID": D("100.1")}
    # Within the budget: every position, as a tick reading bars for all would.
    assert tick.bars_wanted(states, prices, RULES) == ["ARM", "BEV", "FAR", "MID", "NEAR"]
    monkeypatch.setattr(tick, "UNARMED_BARS_BUDGET", 2)
    # Beyond it: the armed ones always, then the unarmed nearest to their arming level.
    assert tick.bars_wanted(states, prices, RULES) == ["ARM", "BEV", "MID", "NEAR"]


def test_the_price_is_the_position_listings_last_trade_and_the_feed_only_where_the_listing_has_none(desk):
    desk.open_position("BEV")
    desk.open_position("TRL")
    desk.sim.control.set_price("BEV", "100.50")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    positions = {p.symbol: p for p in desk.executor.get_positions()}
    assert positions["BEV"].current_price == D("100.50")  # the last trade, not the ask (100.52)
    no_price = {**positions, "TRL": positions["TRL"].model_copy(update={"current_price": None})}
    prices = tick._prices(desk.executor, no_price)
    assert prices["BEV"] == D("100.50")
    # No price in the listing: the feed's latest price, the ask when there is one.
    assert prices["TRL"] == desk.executor.get_latest_prices(["TRL"])["TRL"].price
