"""Sizing, entry checks, risk limits and cooldowns against the simulated market: the trader's job as the
service runs it (settings from the environment, alpaca-py over HTTP, real Redis) and the manager's tick."""

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
from simhelpers import sim  # noqa: F401 - the fixture behind `trader`
from test_exit_scenarios import MONDAY, Desk, assert_never_short, flat_market  # noqa: F401
from test_trader import DAY, buy_orders, market_prices, rank_today, signal, trader  # noqa: F401

from services.manager import tick
from services.trader.jobs import enter_signals, trade_signals
from shared import ledger, signals
from shared.config import RiskSettings, TraderSettings
from shared.exits import ExitReason
from shared.positions import reconcile as rec
from shared.positions.exiting import ExitOutcome
from shared.protection import Trigger

D = Decimal
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def desk(flat_market, redis_client, keys, tmp_path):  # noqa: F811
    desk = Desk(flat_market, redis_client, keys, tmp_path)
    yield desk
    desk.close()


def notional_by_symbol(market) -> dict[str, Decimal]:
    return {o["symbol"]: D(o["notional"] or "0") for o in buy_orders(market)}


def factoryline(desk: Desk, namespace: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**desk.sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace, "PATH": os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=60)


# -- sizing ---------------------------------------------------------------------------------------------


def test_one_signal_on_an_empty_200k_account_buys_at_most_40k_and_the_next_day_gets_its_slot(
        trader, redis_client, keys):  # noqa: F811
    rank_today(redis_client, keys, ["AAPL"])
    first = trade_signals()
    assert first["counts"] == {"submitted": 1} and first["free_slots"] == 5
    assert notional_by_symbol(trader) == {"AAPL": D("40000")}  # 200,000 / 5, not 97% of the account
    # The next session: AAPL occupies its slot; the new signal gets one slot of today's equity.
    trader.control.advance(to=(MONDAY + timedelta(days=1)).replace(hour=9, minute=35))
    next_day = DAY + timedelta(days=1)
    rank_today(redis_client, keys, ["MSFT"], day=next_day)
    second = trade_signals()
    assert second["counts"] == {"submitted": 1} and second["free_slots"] == 4
    equity = D(second["account"]["equity"])
    assert abs(notional_by_symbol(trader)["MSFT"] - equity / 5) < D("0.01")


def test_price_volume_and_drift_checks_skip_with_their_reasons(trader, redis_client, keys, clean_env):  # noqa: F811
    clean_env.setenv("FL_MIN_DOLLAR_VOLUME", "40000000")  # FUBO trades about $30M a day
    prices = market_prices(["AAPL", "TELL", "FUBO", "MSFT"])
    prices["MSFT"] = prices["MSFT"] * D("1.25")  # the scan saw it 25% higher than the market now
    rank_today(redis_client, keys, ["AAPL", "TELL", "FUBO", "MSFT"], prices=prices)
    summary = trade_signals()
    assert {s["symbol"]: s["reason"] for s in summary["skips"]} == {
        "TELL": "price below FL_MIN_PRICE", "FUBO": "dollar volume below FL_MIN_DOLLAR_VOLUME",
        "MSFT": "price moved away from the signal"}
    assert sorted(notional_by_symbol(trader)) == ["AAPL"]
    # The day's report lists them: the trader keeps them for the session.
    kept = json.loads(redis_client.get(keys.entry_skips(DAY)))
    assert {s["symbol"] for s in kept} == {"TELL", "FUBO", "MSFT"}
    from services.reporter.render_text import render
    from services.reporter.report import gather
    from shared import config
    from shared.broker import make_executor
    from shared.exits import ExitRules

    executor = make_executor(config.load(config.BrokerSettings))
    try:
        report = gather(executor, redis_client, keys, ExitRules.from_settings(config.load(config.ExitSettings)),
                        record=False)
    finally:
        executor.close()
    assert {(s.symbol, s.reason) for s in report.skipped_signals} == {
        ("TELL", "price below FL_MIN_PRICE"), ("FUBO", "dollar volume below FL_MIN_DOLLAR_VOLUME"),
        ("MSFT", "price moved away from the signal")}
    assert "signals not bought today (3)" in render(report)


# -- risk limits --------------------------------------------------------------------------------------


def losing_book(desk: Desk) -> None:
    """Two positions of 900 shares at 100.02, both down to 96.50: -$6,336 (3.2%) on $200,000, no stop hit."""
    for symbol in ("BEV", "TRL"):
        desk.open_position(symbol, "900")
    desk.advance_to(MONDAY + timedelta(minutes=5))
    for symbol in ("BEV", "TRL"):
        desk.sim.control.set_price(symbol, "96.50")


def test_a_loss_beyond_the_daily_limit_halts_entries(desk):
    losing_book(desk)
    rank = [signal("TIM", 1, D("100"))]
    signals.save_signals_to_redis(desk.client, desk.keys, MONDAY.date(), rank)
    summary = enter_signals(desk.executor, desk.client, desk.keys, TraderSettings(_env_file=None))
    assert summary["status"] == "halted" and "daily loss 3." in summary["reason"]
    assert desk.executor.get_position("TIM") is None
    reason = json.loads(desk.client.get(desk.keys.halt))["reason"]
    assert reason.startswith("risk limit: daily loss") and "TRIPPED" in reason
    # Positions are kept (no flatten by default) and still protected.
    assert all(desk.open_sells(s) for s in ("BEV", "TRL"))


def test_with_flatten_on_limit_the_tick_sells_the_line_positions_through_the_safe_exit(desk):
    losing_book(desk)
    ctx = desk.ctx(risk=RiskSettings(_env_file=None, FL_FLATTEN_ON_LIMIT=True))
    report = tick.run_tick(ctx)
    assert report.status is tick.TickStatus.HALTED
    assert sorted((e.symbol, e.reason, e.outcome) for e in report.exits) == [
        ("BEV", ExitReason.RISK_LIMIT, ExitOutcome.SOLD), ("TRL", ExitReason.RISK_LIMIT, ExitOutcome.SOLD)]
    assert desk.executor.get_positions() == []
    assert desk.executor.get_open_orders() == []  # the protection was cancelled, then the shares sold
    assert sorted(t.exit_reason for t in ledger.read(desk.client, desk.keys)) == [ExitReason.RISK_LIMIT] * 2
    assert_never_short(desk)
    again = tick.run_tick(ctx)  # nothing left to sell: no second sale
    assert again.exits == []


def test_drawdown_from_the_recorded_peak_trips_and_resume_rearms_the_limits(desk, namespace, tmp_path):
    desk.client.set(desk.keys.risk_equity_peak, "250000")  # the line once stood at $250,000
    report = tick.run_tick(desk.ctx())
    assert report.status is tick.TickStatus.HALTED  # 200,000 is 20% below: over the 15% limit
    assert any("drawdown 20.00% of 15%" in line and "TRIPPED" in line for line in report.limits)
    shown = factoryline(desk, namespace, tmp_path, "status").stdout
    assert "drawdown   20.00% of 15%  TRIPPED" in shown and "slots      0 of 5 used, 5 free" in shown
    assert "risk limit: drawdown 20.00%" in shown  # the halt flag's reason
    resumed = factoryline(desk, namespace, tmp_path, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "drawdown measured from equity 200000" in resumed.stdout
    assert not desk.client.exists(desk.keys.halt)
    after = tick.run_tick(desk.ctx())
    assert after.status is tick.TickStatus.DONE  # resume re-armed from today's equity: no instant re-trip


# -- cooldown -----------------------------------------------------------------------------------------


def test_a_stop_out_blocks_re_entry_for_the_cooldown(desk, namespace, tmp_path):
    desk.open_position("STP")
    desk.sim.control.set_price("STP", "90.00")  # through the stop: the broker's stop sells
    rec.reconcile_symbol(desk.ctx(), "STP", Trigger.TIMER)
    assert [t.exit_reason for t in ledger.read(desk.client, desk.keys)] == [ExitReason.STOP_LOSS]
    desk.sim.control.set_price("STP", "100.00")
    desk.advance_to(MONDAY + timedelta(days=1, minutes=-30))  # Tuesday 09:30
    desk.client.delete(desk.keys.halt)
    signals.save_signals_to_redis(desk.client, desk.keys, (MONDAY + timedelta(days=1)).date(),
                                  [signal("STP", 1, D("100"))])
    summary = enter_signals(desk.executor, desk.client, desk.keys,
                            TraderSettings(_env_file=None, FL_MIN_DOLLAR_VOLUME=D("0")))
    assert [(s["symbol"], s["reason"]) for s in summary["skips"]] == [("STP", "cooldown after a stop-out")]
    assert desk.executor.get_position("STP") is None
    assert "cooldown   STP until 2024-03-09" in factoryline(desk, namespace, tmp_path, "status").stdout
    after = enter_signals(desk.executor, desk.client, desk.keys,
                          TraderSettings(_env_file=None, FL_MIN_DOLLAR_VOLUME=D("0"), FL_COOLDOWN_DAYS=0))
    assert after["counts"] == {"submitted": 1}  # with no cooldown the same signal is bought
    assert desk.executor.get_position("STP") is not None


def test_the_limits_are_named_in_the_halt_and_on_the_notification_channel(desk):
    pubsub = desk.client.pubsub()
    pubsub.subscribe(desk.keys.notifications)
    pubsub.get_message(timeout=1)
    losing_book(desk)
    tick.run_tick(desk.ctx())
    kinds = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            kinds.append(json.loads(message["data"]))
    assert any(m["kind"] == "risk_limit" and "daily loss" in m["message"] for m in kinds)
    assert any(m["kind"] == "halted" for m in kinds)
