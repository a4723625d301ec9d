"""Exits end to end: the manager's tick and reconcile over alpaca-py against the simulated market,
with real Redis. Each position leaves exactly once, for the right reason, with the right P/L.

The market replays flat daily bars (open = high = low = close = 100) for a few made-up tickers, so
prices move only when a test moves them (`set_price`) and every figure below is exact: the entry is
the ask 100.02, a market sell fills at the bid (price - 0.02), the tick's price is the position
listing's last trade (the price set), the protective OCO of an entry at
100.02 is stop 95.02 / target 120.02.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from simhelpers import NEW_YORK, SimHandle, start_sim

from services.manager import tick
from shared import ledger
from shared import position_store as store
from shared.broker import make_executor
from shared.broker.alpaca import AlpacaExecutor
from shared.client_ids import entry_id
from shared.exits import ExitReason, ExitRules
from shared.market.calendar import nyse
from shared.models import OrderClass, Side
from shared.positions import reconcile as rec
from shared.positions.context import ManagerContext
from shared.positions.exiting import ExitOutcome
from shared.protection import Trigger

D = Decimal
RULES = ExitRules(stop_loss=D("0.05"), take_profit=D("0.20"), breakeven_arm=D("0.015"), trailing_arm=D("0.02"),
                  trailing_giveback=D("0.5"), time_stop=timedelta(days=7))
TICKERS = ("BEV", "TRL", "TIM", "STP", "TGT", "RACE", "PART", "REF", "SPK", "LOST")
ENTRY = D("100.02")
MONDAY = datetime(2024, 3, 4, 10, 0, tzinfo=NEW_YORK)


def flat_bars_csv(directory: Path) -> Path:
    rows = ["symbol,timestamp,open,high,low,close,volume"]
    for day in nyse().sessions(date(2024, 1, 2), date(2024, 4, 30)):
        rows += [f"{symbol},{day.date.isoformat()},100,100,100,100,1000000" for symbol in TICKERS]
    path = directory / "flat.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


class Desk:
    """The simulated broker, the project's AlpacaExecutor on it, Redis, and the manager's calls."""

    def __init__(self, sim: SimHandle, client, keys, tmp_path: Path, executor: AlpacaExecutor | None = None):
        self.sim, self.client, self.keys = sim, client, keys
        self.executor = executor or make_executor(sim.broker_settings())
        self.portfolio = tmp_path / "out" / "portfolio.csv"

    def close(self) -> None:
        self.executor.close()

    def open_position(self, symbol: str, qty: str = "10") -> None:
        """Buy, then protect it the way the manager does (its reconcile creates the state)."""
        day = self.executor.get_clock().timestamp.astimezone(NEW_YORK).date()
        self.executor.buy_qty(symbol, D(qty), entry_id(day, symbol, namespace=self.keys.ns))
        report = rec.reconcile_symbol(self.ctx(), symbol, Trigger.START)
        assert report.error is None and report.placed

    def ctx(self, **kw) -> ManagerContext:
        options = {"lock_wait_seconds": 10, "fill_wait_seconds": 5, **kw}
        return ManagerContext(self.executor, self.client, self.keys, RULES, **options)

    def tick(self, **kw) -> tick.TickReport:
        return tick.run_tick(self.ctx(**kw), portfolio_path=self.portfolio)

    def reconcile_timer(self) -> None:
        rec.reconcile_all(self.ctx(), Trigger.TIMER)

    def advance_to(self, when: datetime) -> None:
        self.sim.control.advance(to=when)

    def state(self, symbol: str):
        return store.load_state(self.client, self.keys, symbol)

    def trades(self, symbol: str | None = None) -> list[ledger.ClosedTrade]:
        return ledger.read(self.client, self.keys, symbol=symbol)

    def sells(self, symbol: str) -> list[dict]:
        return [o for o in self.sim.control.state()["orders"] if o["symbol"] == symbol and o["side"] == "sell"]

    def sell_fills(self, symbol: str) -> list[dict]:
        return [f for f in self.sim.control.state()["fills"] if f["symbol"] == symbol and f["side"] == "sell"]

    def open_sells(self, symbol: str):
        return [o for o in self.executor.get_open_orders(symbol) if o.side is Side.SELL]


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


def assert_never_short(desk: Desk) -> None:
    for fill in desk.sim.control.state()["fills"]:
        assert D(str(fill["position_qty_after"])) >= 0, fill


def only_trade(desk: Desk, symbol: str) -> ledger.ClosedTrade:
    trades = desk.trades(symbol)
    assert len(trades) == 1, trades
    return trades[0]


# -- the scenario: five positions, five ways out, over eight trading days ------------------------------


def test_each_position_exits_once_with_its_reason_and_realized_pl_over_several_days(desk):
    for symbol in ("BEV", "TRL", "TIM", "STP", "TGT"):
        desk.open_position(symbol)
    assert all(desk.executor.get_position(s).avg_entry_price == ENTRY for s in ("BEV", "TRL", "TIM", "STP", "TGT"))
    first = desk.tick()
    assert first.status is tick.TickStatus.DONE and first.positions == 5 and first.exits == []

    # Monday: BEV peaks at +1.6% (break-even armed, trailing not), TRL at +10% (both armed).
    desk.sim.control.set_price("BEV", "101.60")
    desk.sim.control.set_price("TRL", "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    report = desk.tick()
    assert report.exits == []
    assert (desk.state("BEV").breakeven_armed, desk.state("BEV").trailing_armed) == (True, False)
    assert (desk.state("TRL").breakeven_armed, desk.state("TRL").trailing_armed) == (True, True)
    assert desk.state("TRL").high_water_mark == D("110")

    # Tuesday: BEV falls back below its entry (the last trade 100.00 < 100.02): break-even sells.
    desk.advance_to(MONDAY + timedelta(days=1))
    desk.sim.control.set_price("BEV", "100.00")
    report = desk.tick()
    assert [(e.symbol, e.reason, e.outcome) for e in report.exits] == [
        ("BEV", ExitReason.BREAK_EVEN, ExitOutcome.SOLD)]
    trade = only_trade(desk, "BEV")
    assert (trade.qty, trade.entry_price, trade.exit_price) == (D("10"), ENTRY, D("99.98"))
    assert trade.realized_pl == D("-0.40")
    assert desk.executor.get_position("BEV") is None and desk.open_sells("BEV") == []
    assert desk.state("BEV") is None

    # Wednesday: TRL gives back half of its peak gain (level 100.02 + 50% x 9.98 = 105.01).
    desk.advance_to(MONDAY + timedelta(days=2))
    desk.sim.control.set_price("TRL", "105.00")
    report = desk.tick()
    assert [(e.symbol, e.reason) for e in report.exits] == [("TRL", ExitReason.TRAILING)]
    trade = only_trade(desk, "TRL")
    assert (trade.exit_price, trade.realized_pl) == (D("104.98"), D("49.60"))

    # Wednesday too: STP falls through its broker-side stop (95.02), which sells on its own.
    desk.sim.control.set_price("STP", "94.00")
    assert desk.tick().exits == []  # nothing left for the tick to sell
    desk.reconcile_timer()
    trade = only_trade(desk, "STP")
    (fill,) = desk.sell_fills("STP")
    assert trade.exit_reason is ExitReason.STOP_LOSS
    assert trade.exit_price == D(str(fill["price"])) and trade.realized_pl == (trade.exit_price - ENTRY) * 10 < 0

    # Thursday: TGT reaches its broker-side target (120.02).
    desk.advance_to(MONDAY + timedelta(days=3))
    desk.sim.control.set_price("TGT", "121.00")
    assert desk.tick().exits == []
    desk.reconcile_timer()
    trade = only_trade(desk, "TGT")
    (fill,) = desk.sell_fills("TGT")
    # The price jumped through the limit: it fills at the better bid (120.98), as Alpaca's limits do.
    assert (trade.exit_reason, trade.exit_price) == (ExitReason.TAKE_PROFIT, D(str(fill["price"])))
    assert trade.exit_price >= D("120.02") and trade.realized_pl == (trade.exit_price - ENTRY) * 10

    # The next Monday 10:30 (EDT since Sunday): 6 days 23.5 hours in real time, no time stop yet.
    desk.advance_to(datetime(2024, 3, 11, 10, 30, tzinfo=NEW_YORK))
    assert desk.tick().exits == []
    assert desk.executor.get_position("TIM") is not None
    # 11:01 New York is 7 days and 1 minute after the first fill: the time stop sells.
    desk.advance_to(datetime(2024, 3, 11, 11, 1, tzinfo=NEW_YORK))
    report = desk.tick()
    assert [(e.symbol, e.reason) for e in report.exits] == [("TIM", ExitReason.TIME_STOP)]
    trade = only_trade(desk, "TIM")
    assert (trade.exit_price, trade.realized_pl) == (D("99.98"), D("-0.40"))

    # Everything is flat and nothing more happens, however often the manager looks again.
    desk.reconcile_timer()
    desk.advance_to(datetime(2024, 3, 11, 11, 10, tzinfo=NEW_YORK))
    assert desk.tick().positions == 0
    desk.reconcile_timer()
    reasons = sorted((t.symbol, t.exit_reason.value) for t in desk.trades())
    assert reasons == [("BEV", "break_even"), ("STP", "stop_loss"), ("TGT", "take_profit"), ("TIM", "time_stop"),
                       ("TRL", "trailing")]
    assert desk.executor.get_positions() == [] and desk.executor.get_open_orders() == []
    assert_never_short(desk)
    assert desk.portfolio.read_text().splitlines() == [",".join(tick.portfolio.COLUMNS)]


# -- races and refusals --------------------------------------------------------------------------------


class StopFillsWhileCanceling(AlpacaExecutor):
    """The broker's stop fills just as our cancel request reaches it (the race Alpaca allows)."""

    def __init__(self, settings, sim: SimHandle, qty: Decimal | None = None):
        super().__init__(settings)
        self.sim, self.qty, self.stop_leg_id = sim, qty, None

    def cancel_order(self, order_id: str) -> None:
        if self.stop_leg_id is not None:
            leg, self.stop_leg_id = self.stop_leg_id, None
            self.sim.control.fill(leg, qty=self.qty)
        super().cancel_order(order_id)


def arm_race(desk: Desk, symbol: str, qty: Decimal | None) -> None:
    desk.open_position(symbol)
    desk.sim.control.set_price(symbol, "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    assert desk.state(symbol).trailing_armed
    (oco,) = desk.open_sells(symbol)
    assert oco.order_class is OrderClass.OCO
    desk.executor.stop_leg_id = oco.legs[0].id
    desk.executor.qty = qty
    desk.sim.control.set_price(symbol, "104.00")  # below the trailing level 105.01: the tick will sell


@pytest.fixture
def racing_desk(flat_market, redis_client, keys, tmp_path):
    desk = Desk(flat_market, redis_client, keys, tmp_path,
                executor=StopFillsWhileCanceling(flat_market.broker_settings(), flat_market))
    yield desk
    desk.close()


def test_stop_filling_between_cancel_and_sell_sells_nothing_more_and_writes_one_ledger_entry(racing_desk):
    desk = racing_desk
    arm_race(desk, "RACE", qty=None)
    report = desk.tick()
    (result,) = report.exits
    assert (result.reason, result.outcome) == (ExitReason.TRAILING, ExitOutcome.ALREADY_CLOSED)
    assert desk.executor.get_position("RACE") is None
    assert [o["order_class"] for o in desk.sells("RACE")] == ["oco"]  # no market sell was ever sent
    trade = only_trade(desk, "RACE")
    assert trade.exit_reason is ExitReason.STOP_LOSS and trade.qty == D("10")
    desk.reconcile_timer()
    desk.tick()
    assert len(desk.trades("RACE")) == 1
    assert_never_short(desk)


def test_stop_partly_filled_during_the_exit_leaves_only_the_rest_to_sell(racing_desk):
    desk = racing_desk
    arm_race(desk, "PART", qty=D("4"))
    (result,) = desk.tick().exits
    assert result.outcome is ExitOutcome.SOLD_REMAINDER and result.qty_sold == D("6")
    assert desk.executor.get_position("PART") is None
    by_reason = {t.exit_reason: t.qty for t in desk.trades("PART")}
    assert by_reason == {ExitReason.STOP_LOSS: D("4"), ExitReason.TRAILING: D("6")}
    assert_never_short(desk)


def test_refused_exit_sell_is_protected_again_at_once_and_alerted(desk, caplog):
    desk.open_position("REF")
    desk.sim.control.set_price("REF", "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    desk.sim.control.set_price("REF", "104.00")
    pubsub = desk.client.pubsub()
    pubsub.subscribe(desk.keys.notifications)
    desk.sim.control.fail_requests(1, 422, path_prefix="/v2/orders", method="POST")
    with caplog.at_level(logging.ERROR, logger="shared.positions.exiting"):
        (result,) = desk.tick().exits
    assert result.outcome is ExitOutcome.REFUSED
    assert desk.executor.get_position("REF").qty == D("10")
    (oco,) = desk.open_sells("REF")
    assert (oco.order_class, oco.qty, oco.legs[0].stop_price, oco.limit_price) == (
        OrderClass.OCO, D("10"), D("95.02"), D("120.02"))
    assert desk.trades() == []
    assert [r for r in caplog.records if r.getMessage() == "exit_failed" and r.levelno == logging.ERROR]
    kinds = []
    deadline = time.monotonic() + 5
    while "exit_failed" not in kinds and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "message":
            kinds.append(json.loads(message["data"])["kind"])
    pubsub.close()
    assert "exit_failed" in kinds
    # The next tick tries again and, the broker accepting now, sells once.
    (again,) = desk.tick().exits
    assert again.outcome is ExitOutcome.SOLD and len(desk.trades("REF")) == 1


def test_exit_sell_left_half_filled_is_taken_back_the_rest_protected_and_sold_by_the_next_tick(desk):
    desk.open_position("PART")
    desk.sim.control.set_price("PART", "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    desk.sim.control.set_price("PART", "104.00")
    desk.sim.control.partial_fill_next("PART", "0.5")  # 5 fill now, the rest would wait for the next minute
    (result,) = desk.tick(fill_wait_seconds=0.5).exits
    assert result.outcome is ExitOutcome.REFUSED and result.qty_sold == D("5")
    assert desk.executor.get_position("PART").qty == D("5")
    (oco,) = desk.open_sells("PART")
    assert (oco.order_class, oco.qty) == (OrderClass.OCO, D("5"))  # the rest is protected again
    (again,) = desk.tick().exits  # a new attempt with its own client order id
    assert again.outcome is ExitOutcome.SOLD and again.qty_sold == D("5")
    assert desk.executor.get_position("PART") is None
    trades = desk.trades("PART")
    assert [(t.exit_reason, t.qty) for t in trades] == [(ExitReason.TRAILING, D("5"))] * 2
    assert trades[0].closing_client_order_id != trades[1].closing_client_order_id
    assert_never_short(desk)


def test_two_ticks_at_once_sell_a_position_once(flat_market, redis_client, keys, tmp_path):
    import threading

    desks = [Desk(flat_market, redis_client, keys, tmp_path) for _ in range(2)]
    try:
        desks[0].open_position("BEV")
        desks[0].sim.control.set_price("BEV", "101.60")
        desks[0].advance_to(MONDAY + timedelta(minutes=5))
        desks[0].tick()
        desks[0].sim.control.set_price("BEV", "99.00")
        reports: list = []
        threads = [threading.Thread(target=lambda d=d: reports.append(d.tick())) for d in desks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        outcomes = sorted(e.outcome.value for r in reports for e in r.exits)
        assert outcomes in (["sold"], ["already closed", "sold"])
        assert len([o for o in desks[0].sells("BEV") if o["order_class"] == "simple"]) == 1
        assert len(desks[0].trades("BEV")) == 1
        assert_never_short(desks[0])
    finally:
        for desk in desks:
            desk.close()


if __name__ == "__main__":  # pragma: no cover - convenience: run this file alone
    sys.exit(pytest.main([__file__, "-q"]))
