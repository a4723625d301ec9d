"""The market's edges, one scenario each: gaps through a level, splits, halts, what the line does not
own, shorts. Real Redis, the project's AlpacaExecutor (alpaca-py) against the simulated market, and
the manager's own reconcile, tick and flatten (the code a restart, a timer and a person run).

The flat market trades every ticker at 100 (ENTRY 100.02 with the ask) until a test moves a price.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import NEW_YORK
from test_exit_scenarios import ENTRY, MONDAY, RULES, Desk, assert_never_short, flat_market  # noqa: F401
from test_ops import documented_key_patterns

from services.ops import flatten as fl
from shared import bus
from shared.client_ids import entry_id
from shared.exits import ExitReason
from shared.models import OrderClass, OrderType
from shared.ownership import ForeignPolicy
from shared.positions import reconcile as rec
from shared.positions.exiting import ExitOutcome
from shared.protection import Trigger, Verdict

D = Decimal
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def desk(flat_market, redis_client, keys, tmp_path):  # noqa: F811
    desk = Desk(flat_market, redis_client, keys, tmp_path)
    yield desk
    desk.close()


def buy_as_the_line(desk: Desk, symbol: str, qty: str = "10") -> None:
    """An entry of the line's (its client order id), filled while no manager ran: no protection yet."""
    day = desk.executor.get_clock().timestamp.astimezone(NEW_YORK).date()
    desk.executor.buy_qty(symbol, D(qty), entry_id(day, symbol, namespace=desk.keys.ns))


def buy_by_hand(desk: Desk, symbol: str, qty: str = "10") -> None:
    desk.executor.buy_qty(symbol, D(qty), f"my-own-{symbol}-buy")


def protection(desk: Desk, symbol: str) -> list[tuple]:
    """The symbol's open sells as (class, remaining qty, stop, target)."""
    rows = []
    for order in desk.open_sells(symbol):
        stop_leg = next((leg for leg in order.legs if leg.type is OrderType.STOP), None)
        stop = stop_leg.stop_price if stop_leg else order.stop_price
        target = order.limit_price if order.order_class is OrderClass.OCO else None
        rows.append((order.order_class.value, order.remaining_qty, stop, target))
    return sorted(rows)


def status(desk: Desk, namespace: str) -> subprocess.CompletedProcess:
    """`factoryline status` as a person runs it, against this market and namespace."""
    env = {**desk.sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace,
           "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "services.cli", "status"], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)


def published(desk: Desk, pubsub, kind: str) -> list[dict]:
    out = []
    while (message := pubsub.get_message(timeout=0.05)) is not None:
        if message["type"] == "message":
            data = json.loads(message["data"])
            if data.get("kind") == kind:
                out.append(data)
    return out


# -- a gap through the stop while no manager ran ------------------------------------------------------


def test_gap_below_the_stop_while_the_manager_was_down_is_sold_as_a_stop_loss_at_the_restart(desk):
    buy_as_the_line(desk, "STP")
    desk.sim.control.set_price("STP", "90.00")  # -10%: through the -5% stop before anything protected it
    report = rec.reconcile_symbol(desk.ctx(), "STP", Trigger.START)
    assert report.error is None and report.exit is not None and report.exit.outcome is ExitOutcome.SOLD
    assert report.exit.reason is ExitReason.STOP_LOSS and report.verdict is Verdict.FLAT
    assert desk.executor.get_position("STP") is None
    (trade,) = desk.trades("STP")
    assert trade.exit_reason is ExitReason.STOP_LOSS and trade.qty == D("10") and trade.realized_pl < 0
    # Nothing refused was sent again and again: no stop above the market ever reached the broker.
    assert [r for r in desk.sim.control.state()["rejections"] if r.get("symbol") == "STP"] == []
    assert_never_short(desk)


def test_gap_below_the_stop_found_out_of_the_session_gets_a_stop_under_the_market_then_exits_at_the_open(desk):
    buy_as_the_line(desk, "STP")
    desk.advance_to(MONDAY.replace(hour=16, minute=30))  # after the close
    desk.sim.control.set_price("STP", "90.00")
    report = rec.reconcile_symbol(desk.ctx(), "STP", Trigger.START)
    assert report.error is None and report.verdict is Verdict.PROTECT
    # The broker refuses a stop at or above the market: one just below the last price instead.
    assert protection(desk, "STP") == [("simple", D("10"), D("89.10"), None)]
    assert any("exit in the next session" in note for note in report.notes)
    again = rec.reconcile_symbol(desk.ctx(), "STP", Trigger.TIMER)
    assert again.placed == [] and again.canceled == []  # kept, not replaced every pass
    # Next morning, the price still under the stop level: the first pass in the session sells.
    desk.advance_to((MONDAY + timedelta(days=1)).replace(hour=9, minute=31))
    rec.reconcile_symbol(desk.ctx(), "STP", Trigger.TIMER)
    assert desk.executor.get_position("STP") is None
    assert [t.exit_reason for t in desk.trades("STP")] == [ExitReason.STOP_LOSS]
    assert_never_short(desk)


def test_line_position_whose_state_was_lost_and_is_through_its_stop_is_exited_not_left_naked(desk):
    desk.open_position("LOST")
    desk.client.delete(desk.keys.position_state("LOST"), f"{desk.keys.ns}:protection:LOST")
    for order in desk.open_sells("LOST"):
        desk.executor.cancel_order(order.id)  # and its protection is gone too (canceled by hand)
    desk.sim.control.set_price("LOST", "93.00")
    report = rec.reconcile_symbol(desk.ctx(), "LOST", Trigger.START)
    assert report.adopted and report.exit is not None and report.exit.reason is ExitReason.STOP_LOSS
    assert desk.executor.get_position("LOST") is None
    assert [t.exit_reason for t in desk.trades("LOST")] == [ExitReason.STOP_LOSS]


def test_line_position_already_above_its_target_takes_the_profit_once(desk):
    buy_as_the_line(desk, "TGT")
    desk.sim.control.set_price("TGT", "125.00")
    first = rec.reconcile_symbol(desk.ctx(), "TGT", Trigger.START)
    assert first.exit is not None and first.exit.outcome is ExitOutcome.SOLD
    second = rec.reconcile_symbol(desk.ctx(), "TGT", Trigger.TIMER)
    assert second.verdict is Verdict.FLAT and second.exit is None
    (trade,) = desk.trades("TGT")
    assert trade.exit_reason is ExitReason.TAKE_PROFIT and trade.realized_pl > 0
    assert len([o for o in desk.sells("TGT") if o["type"] == "market"]) == 1


# -- positions and orders the line did not make --------------------------------------------------------


def test_users_position_up_30_percent_is_protected_below_the_market_and_never_sold(desk):
    buy_by_hand(desk, "TRL")
    desk.sim.control.set_price("TRL", "130.00")
    report = rec.reconcile_symbol(desk.ctx(), "TRL", Trigger.START)
    assert report.adopted and report.verdict is Verdict.PROTECT
    # A stop 5% under today's price, no target (a take-profit below the market would sell at once).
    assert protection(desk, "TRL") == [("simple", D("10"), D("123.50"), None)]
    assert desk.state("TRL").foreign
    # Eight days later the time stop, which counts from a first fill the line never saw, sells nothing.
    desk.advance_to((MONDAY + timedelta(days=8)).replace(hour=11))
    report = desk.tick()
    assert report.exits == [] and "TRL" in report.foreign
    assert desk.executor.get_position("TRL").qty == D("10")
    assert [o for o in desk.sells("TRL") if o["type"] == "market"] == []


def test_users_position_10_percent_down_is_protected_not_sold(desk):
    buy_by_hand(desk, "BEV")
    desk.sim.control.set_price("BEV", "90.00")
    report = rec.reconcile_symbol(desk.ctx(), "BEV", Trigger.START)
    assert report.verdict is Verdict.PROTECT and report.error is None
    assert protection(desk, "BEV") == [("simple", D("10"), D("85.50"), None)]
    assert desk.executor.get_position("BEV").qty == D("10")


def test_users_position_under_ignore_is_left_alone_and_flatten_leaves_it_too(desk):
    buy_by_hand(desk, "BEV")
    ctx = desk.ctx(foreign_policy=ForeignPolicy.IGNORE)
    report = rec.reconcile_symbol(ctx, "BEV", Trigger.START)
    assert report.verdict is Verdict.IGNORE and report.placed == []
    assert protection(desk, "BEV") == []
    managed, left = fl.managed_symbols(ctx, {p.symbol: p for p in desk.executor.get_positions()},
                                       desk.executor.get_open_orders())
    assert managed == [] and left == ["BEV"]


def test_users_gtc_limit_sell_is_never_canceled_and_the_line_protects_the_rest(desk):
    desk.open_position("REF")
    (oco,) = desk.open_sells("REF")
    desk.executor.cancel_order(oco.id)
    users = desk.sim.trading_client()
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest

    mine = users.submit_order(LimitOrderRequest(symbol="REF", qty=4, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                                limit_price=150, client_order_id="my-gtc-limit"))
    for trigger in (Trigger.TIMER, Trigger.TIMER, Trigger.MANUAL):
        report = rec.reconcile_symbol(desk.ctx(), "REF", trigger)
        assert report.error is None and str(mine.id) not in report.canceled
    assert desk.executor.get_order_by_client_id("my-gtc-limit").status.is_open
    stop, target = D("95.02"), D("120.02")
    assert protection(desk, "REF") == [("oco", D("6"), stop, target), ("simple", D("4"), None, None)]
    assert any("4 held by the user's own orders" in n for n in report.notes)
    notes = json.loads(desk.client.hget(desk.keys.manager_notes, "REF"))
    assert any("the line protects 6" in n for n in notes["notes"])


def test_flatten_sells_the_line_position_and_leaves_the_users_order(desk):
    desk.open_position("PART")
    users = desk.sim.trading_client()
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest

    (oco,) = desk.open_sells("PART")
    desk.executor.cancel_order(oco.id)
    users.submit_order(LimitOrderRequest(symbol="PART", qty=3, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                         limit_price=150, client_order_id="my-part-limit"))
    rec.reconcile_symbol(desk.ctx(), "PART", Trigger.TIMER)
    result = fl.flatten_symbol(desk.ctx(), "PART", now=desk.executor.get_clock().timestamp)
    assert result.outcome == "sold" and result.qty_sold == D("7")
    assert desk.executor.get_order_by_client_id("my-part-limit").status.is_open
    assert desk.executor.get_position("PART").qty == D("3")


# -- halts -------------------------------------------------------------------------------------------


def test_flatten_of_a_halted_asset_keeps_its_stop_and_says_why(desk):
    desk.open_position("SPK")
    before = protection(desk, "SPK")
    desk.sim.control.set_asset("SPK", tradable=False)
    result = fl.flatten_symbol(desk.ctx(), "SPK", now=desk.executor.get_clock().timestamp)
    assert result.outcome == "refused" and "not tradable" in result.detail
    assert protection(desk, "SPK") == before  # the working stop was never canceled
    assert desk.executor.get_position("SPK").qty == D("10")


def test_soft_exit_of_a_halted_asset_keeps_the_stop_alerts_and_sells_once_trading_resumes(desk):
    desk.open_position("TRL")
    desk.sim.control.set_price("TRL", "110.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()  # trailing armed at 110
    before = protection(desk, "TRL")
    desk.sim.control.set_price("TRL", "104.00")  # gives back more than half the gain: trailing fires
    desk.sim.control.set_asset("TRL", tradable=False)
    pubsub = desk.client.pubsub()
    pubsub.subscribe(desk.keys.notifications)
    pubsub.get_message(timeout=1)
    desk.advance_to(MONDAY + timedelta(minutes=10))
    report = desk.tick()
    (result,) = report.exits
    assert result.reason is ExitReason.TRAILING and result.outcome is ExitOutcome.REFUSED
    assert "not tradable" in result.detail
    assert protection(desk, "TRL") == before
    assert published(desk, pubsub, "exit_failed")
    desk.sim.control.set_asset("TRL", tradable=True)
    desk.client.delete(f"{desk.keys.ns}:manager:halted:TRL")
    desk.advance_to(MONDAY + timedelta(minutes=15))
    again = desk.tick()
    assert [e.outcome for e in again.exits] == [ExitOutcome.SOLD]
    assert [t.exit_reason for t in desk.trades("TRL")] == [ExitReason.TRAILING]


def test_reconcile_never_cancels_a_working_stop_of_a_halted_asset_to_replace_it(desk, namespace):
    desk.open_position("REF")
    desk.sim.control.set_asset("REF", tradable=False)
    desk.client.delete(desk.keys.position_state("REF"))  # the state is lost: the levels must be redone
    desk.sim.control.split("REF", 2, 1, orders="keep")  # and the resting OCO is now the wrong size
    report = rec.reconcile_symbol(desk.ctx(), "REF", Trigger.TIMER)
    assert report.verdict is Verdict.HALTED and report.canceled == []
    assert [row[1] for row in protection(desk, "REF")] == [D("10")]
    shown = status(desk, namespace)
    assert "REF: not tradable (halted?): every order kept as it is" in shown.stdout


# -- splits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orders", ["adjust", "cancel", "keep"])
def test_split_with_protection_resting_rebases_the_state_and_protection_with_no_false_exit(desk, orders):
    desk.open_position("TIM")
    desk.sim.control.set_price("TIM", "103.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()  # high-water mark 103: trailing armed
    armed = desk.state("TIM")
    assert armed.trailing_armed and armed.high_water_mark >= D("103.00")
    desk.advance_to(MONDAY.replace(hour=17))  # after the close; the split is effective next session
    desk.sim.control.split("TIM", 2, 1, orders=orders)
    day = (MONDAY + timedelta(days=1)).date()
    desk.advance_to((MONDAY + timedelta(days=1)).replace(hour=9, minute=10))
    reports = rec.pre_open(desk.ctx(), day)
    assert reports["TIM"].error is None and reports["TIM"].split_ratio == D("2")
    state = desk.state("TIM")
    assert state.qty == D("20") and state.high_water_mark == armed.high_water_mark / 2 and state.trailing_armed
    assert state.entry_price == desk.executor.get_position("TIM").avg_entry_price
    # One OCO for the 20 shares at -5% / +20% of the re-based entry, whatever the broker did.
    ((kind, qty, stop, target),) = protection(desk, "TIM")
    assert (kind, qty) == ("oco", D("20")) and stop < D("50") < target
    desk.advance_to((MONDAY + timedelta(days=1)).replace(hour=9, minute=40))
    report = desk.tick()
    assert report.exits == []  # the pre-split high-water mark would have fired trailing at once
    assert desk.executor.get_position("TIM").qty == D("20")
    assert_never_short(desk)


def test_split_the_feed_missed_is_recognised_from_quantity_and_cost_basis_by_the_tick(desk):
    desk.open_position("TIM")
    desk.sim.control.set_price("TIM", "103.00")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    desk.tick()
    peak = desk.state("TIM").high_water_mark
    desk.advance_to(MONDAY.replace(hour=17))
    desk.sim.control.split("TIM", 1, 4, orders="cancel", announce=False)  # 1-for-4 reverse, no record
    desk.advance_to((MONDAY + timedelta(days=1)).replace(hour=9, minute=40))
    report = desk.tick()
    assert report.exits == [] and report.rebased == {"TIM": D("0.25")}
    assert desk.state("TIM").high_water_mark == peak * 4
    rec.reconcile_symbol(desk.ctx(), "TIM", Trigger.TIMER)
    # 2.5 shares now: an OCO for the 2 whole ones, a day stop for the half, both at the re-based levels.
    assert [(kind, qty) for kind, qty, _s, _t in protection(desk, "TIM")] == [("oco", D("2")), ("simple", D("0.5"))]


# -- shorts -------------------------------------------------------------------------------------------


def test_short_position_makes_status_exit_1_and_names_it(desk, namespace, tmp_path):
    desk.sim.engine.set_holding("RACE", D("-5"), D("100"))  # shorted by hand (the simulator refuses short orders)
    assert desk.executor.get_position("RACE").qty == D("-5")
    report = rec.reconcile_symbol(desk.ctx(), "RACE", Trigger.TIMER)
    assert report.verdict is Verdict.SHORT and report.placed == []
    result = status(desk, namespace)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SHORT" in result.stdout and "RACE" in result.stdout


def test_alerts_of_the_edges_reach_the_notification_channel(desk):
    pubsub = desk.client.pubsub()
    pubsub.subscribe(bus.Keys(desk.keys.ns).notifications)
    pubsub.get_message(timeout=1)
    buy_as_the_line(desk, "STP")
    desk.advance_to(MONDAY.replace(hour=16, minute=30))
    desk.sim.control.set_price("STP", "90.00")
    rec.reconcile_symbol(desk.ctx(), "STP", Trigger.START)
    alerts = published(desk, pubsub, "alert")
    assert any("at or through the stop" in a["message"] for a in alerts)
    rec.reconcile_symbol(desk.ctx(), "STP", Trigger.TIMER)
    assert published(desk, pubsub, "alert") == []  # said once, not every pass


def test_refused_protective_order_is_not_sent_again_every_pass(desk):
    buy_as_the_line(desk, "RACE")
    desk.sim.control.fail_requests(1, status=422, path_prefix="/v2/orders", method="POST")
    first = rec.reconcile_symbol(desk.ctx(), "RACE", Trigger.START)
    assert first.error is not None
    posts_before = len(desk.sells("RACE"))
    for _ in range(3):
        rec.reconcile_symbol(desk.ctx(), "RACE", Trigger.TIMER)
    assert len(desk.sells("RACE")) == posts_before == 0
    written = set(desk.client.scan_iter(match=f"{desk.keys.ns}:*"))
    undocumented = [k for k in written if not any(p.match("fl" + k[len(desk.keys.ns):])
                                                   for p in documented_key_patterns())]
    assert f"{desk.keys.ns}:manager:refused:RACE" in written and undocumented == []
    desk.client.delete(f"{desk.keys.ns}:manager:refused:RACE")  # the back-off ran out
    rec.reconcile_symbol(desk.ctx(), "RACE", Trigger.TIMER)
    assert [row[0] for row in protection(desk, "RACE")] == ["oco"]



def test_the_scheduled_pre_open_job_rebases_a_split_from_the_environments_settings(desk, namespace, clean_env):
    from services.manager.jobs import pre_open_check

    desk.open_position("TIM")
    desk.advance_to(MONDAY.replace(hour=17))
    desk.sim.control.split("TIM", 2, 1, orders="keep")  # the broker left the OCO for 10 at the old prices
    desk.advance_to((MONDAY + timedelta(days=1)).replace(hour=9, minute=10))
    for name, value in {**desk.sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}.items():
        clean_env.setenv(name, value)
    result = pre_open_check()
    assert result["day"] == "2024-03-05" and result["failed"] == []
    assert "re-based for a split (x2)" in result["symbols"]["TIM"]
    ((kind, qty, stop, _target),) = protection(desk, "TIM")
    assert (kind, qty) == ("oco", D("20")) and stop < D("50")
