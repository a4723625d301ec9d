"""The trader end to end: the job over alpaca-py against the simulated market's server, real Redis.

Each test gets a fresh simulator (Monday 2024-03-04 10:00 New York, market open, $200,000 cash) and its
own Redis namespace; the job reads its settings from the environment like the deployed service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import ROOT, sim  # noqa: F401 - the `sim` fixture

from services.trader.cli import exit_status, render
from services.trader.jobs import trade_signals
from shared import signals
from shared.signals import ScanState, Signal, Verdict

DAY = date(2024, 3, 4)
FIVE = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL"]


def signal(ticker: str, rank: int = 1, price: Decimal = Decimal("100")) -> Signal:
    return Signal(ticker=ticker, strategy="QuickStrike", state=ScanState.IN_TRADE, verdict=Verdict.PROFITABLE,
                  win_rate=Decimal("0.62"), trades=25, profit_factor=Decimal("1.9"), avg_return=Decimal("0.012"),
                  signal_date=DAY, signal_price=price, scanned_at=datetime(2024, 3, 4, 11, tzinfo=UTC),
                  source_file=f"IN_TRADE_live_qs_{ticker}.log", rank=rank)


def market_prices(tickers: list[str]) -> dict[str, Decimal]:
    """The simulator's prices now (the `trader` fixture points the environment at it): a scan taken
    this morning signals at about the price the market has."""
    from shared import config
    from shared.broker import make_executor

    executor = make_executor(config.load(config.BrokerSettings))
    try:
        return {s: p.price for s, p in executor.get_latest_prices(tickers).items()}
    finally:
        executor.close()


def rank_today(redis_client, keys, tickers: list[str], day: date = DAY,
               prices: dict[str, Decimal] | None = None) -> None:
    prices = prices if prices is not None else market_prices(tickers)
    signals.save_signals_to_redis(redis_client, keys, day, [signal(t, i + 1, prices.get(t, Decimal("100")))
                                                            for i, t in enumerate(tickers)])


@pytest.fixture
def trader(sim, clean_env, namespace):  # noqa: F811
    """The environment the trader service runs with, pointed at this test's simulator and namespace."""
    for name, value in {**sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}.items():
        clean_env.setenv(name, value)
    return sim


def buy_orders(sim) -> list[dict]:  # noqa: F811
    return [o for o in sim.control.state()["orders"] if o["side"] == "buy"]


def by_symbol(orders: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for order in orders:
        grouped.setdefault(order["symbol"], []).append(order)
    return grouped


# -- sizing reaches the broker -------------------------------------------------------------------


def test_200k_and_five_signals_send_five_notional_entries_of_38800(trader, redis_client, keys):
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    assert summary["status"] == "done"
    assert summary["counts"] == {"submitted": 5}
    orders = buy_orders(trader)
    assert sorted(o["symbol"] for o in orders) == sorted(FIVE)
    assert all(Decimal(o["notional"]) == Decimal("38800") and o["qty"] is None for o in orders)
    assert all(o["type"] == "market" and o["time_in_force"] == "day" for o in orders)
    assert {o["client_order_id"] for o in orders} == {f"{keys.ns}-20240304-{t}-entry" for t in FIVE}
    # The buffer left the broker's buying-power cushion room: nothing was refused.
    assert trader.control.state()["rejections"] == []


def test_non_fractionable_ticker_gets_whole_shares_at_the_ask(trader, redis_client, keys):
    rank_today(redis_client, keys, ["AAPL", "MSFT", "NVDA", "AMZN", "FUBO"])
    summary = trade_signals()
    fubo = by_symbol(buy_orders(trader))["FUBO"]
    assert len(fubo) == 1 and fubo[0]["notional"] is None
    qty = Decimal(fubo[0]["qty"])
    assert qty == qty.to_integral_value() and qty > 0
    planned = next(e for e in summary["entries"] if e["symbol"] == "FUBO")
    price = Decimal(planned["reference_price"])
    assert qty * price <= Decimal("38800") < (qty + 1) * price


def test_notional_order_refused_as_not_fractionable_is_retried_once_as_whole_shares(trader, redis_client, keys):
    # The asset list says fractionable, the order check says no: Alpaca's "requested asset is not fractionable".
    trader.control.set_asset("MSFT", fractionable=False, listed_fractionable=True)
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    refusals = trader.control.state()["rejections"]
    assert [(r["symbol"], r["client_order_id"]) for r in refusals] == [("MSFT", f"{keys.ns}-20240304-MSFT-entry")]
    msft = by_symbol(buy_orders(trader))["MSFT"]
    assert len(msft) == 1
    assert msft[0]["client_order_id"] == f"{keys.ns}-20240304-MSFT-entry-whole"
    assert msft[0]["notional"] is None and Decimal(msft[0]["qty"]) == Decimal(msft[0]["qty"]).to_integral_value()
    assert Decimal(msft[0]["qty"]) * Decimal(msft[0]["filled_avg_price"]) <= Decimal("38800") * Decimal("1.01")
    assert summary["counts"] == {"submitted": 5}


def test_orders_together_stay_within_the_buying_power_read_before_them(trader, redis_client, keys):
    rank_today(redis_client, keys, ["AAPL", "MSFT", "NVDA", "AMZN", "FUBO"])
    summary = trade_signals()
    state = trader.control.state()
    spent = sum(Decimal(f["price"]) * Decimal(f["qty"]) for f in state["fills"])
    assert summary["counts"] == {"submitted": 5}
    # Five slots of $40,000, but only $194,000 usable after the buffer: 5 x $38,800 at most.
    assert Decimal("190000") < spent <= Decimal(summary["usable"]) * Decimal("1.01")
    assert Decimal(state["account"]["cash"]) > 0


# -- refusals and skips --------------------------------------------------------------------------


def test_halt_flag_sends_nothing(trader, redis_client, keys):
    rank_today(redis_client, keys, FIVE)
    redis_client.set(keys.halt, "manual")
    summary = trade_signals()
    assert summary["status"] == "halted"
    assert buy_orders(trader) == []
    assert "halted" in render(summary) and exit_status(summary) == 1


def test_market_closed_is_refused_with_the_next_open(trader, redis_client, keys):
    trader.control.advance(to=datetime(2024, 3, 4, 22, 0, tzinfo=UTC))  # 17:00 New York
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    assert summary["status"] == "market_closed"
    assert "2024-03-05 09:30" in summary["reason"] and "--queue-for-open" in summary["reason"]
    assert buy_orders(trader) == []
    assert exit_status(summary) == 1


def test_queue_for_open_sends_while_closed_under_the_next_sessions_date(trader, redis_client, keys):
    trader.control.advance(to=datetime(2024, 3, 4, 22, 0, tzinfo=UTC))  # 17:00 New York
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals(queue_for_open=True)
    assert summary["counts"] == {"submitted": 5}
    orders = buy_orders(trader)
    assert {o["client_order_id"] for o in orders} == {f"{keys.ns}-20240305-{t}-entry" for t in FIVE}
    assert all(o["status"] in ("accepted", "new") and o["filled_qty"] in ("0", None) for o in orders)


def test_dry_run_returns_the_plan_and_sends_nothing(trader, redis_client, keys):
    rank_today(redis_client, keys, [*FIVE[:4], "FUBO"])
    summary = trade_signals(dry_run=True)
    assert summary["status"] == "dry_run"
    assert [e["status"] for e in summary["entries"]] == ["planned"] * 5
    assert {e["symbol"]: e["amount"] for e in summary["entries"] if e["symbol"] != "FUBO"} == dict.fromkeys(
        FIVE[:4], "38800.00")
    assert buy_orders(trader) == []
    table = render(summary)
    assert "DRY RUN" in table and f"{keys.ns}-20240304-FUBO-entry" in table


def test_held_ticker_is_skipped_and_the_others_share_the_rest(trader, redis_client, keys):
    from alpaca.trading.requests import MarketOrderRequest

    trader.trading_client().submit_order(MarketOrderRequest(symbol="AAPL", notional=1000, side="buy",
                                                            time_in_force="day"))
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    assert summary["skips"] == [{"symbol": "AAPL", "reason": "already held",
                                 "detail": "a position is open (FL_ALLOW_ADDING=false)"}]
    assert len(by_symbol(buy_orders(trader))["AAPL"]) == 1  # only the manual one
    # The held position occupies one of the five slots; the other four get one slot each.
    assert summary["free_slots"] == 4 and summary["allocation"] == summary["slot"]
    assert summary["counts"] == {"submitted": 4}


def test_no_signals_for_today_sends_nothing_and_says_where_it_looked(trader, redis_client, keys):
    rank_today(redis_client, keys, FIVE, day=date(2024, 3, 1))  # Friday's list is not today's
    summary = trade_signals()
    assert summary["status"] == "no_signals"
    assert keys.signals(DAY) in summary["reason"]
    assert buy_orders(trader) == []


def test_signals_can_come_from_a_csv_given_explicitly(trader, tmp_path):
    path = tmp_path / "actionable_signals.csv"
    prices = market_prices(["AAPL", "NVDA"])
    signals.write_signals_csv(path, [signal("AAPL", 1, prices["AAPL"]), signal("NVDA", 2, prices["NVDA"])])
    summary = trade_signals(csv_path=str(path))
    assert summary["signals_source"] == str(path)
    assert sorted(o["symbol"] for o in buy_orders(trader)) == ["AAPL", "NVDA"]
    assert summary["allocation"] == "40000.00"  # one slot each of $200,000 / 5


# -- broker trouble ------------------------------------------------------------------------------


def test_submit_answered_with_504_after_the_order_was_accepted_is_found_not_resent(trader, redis_client, keys):
    trader.control.fail_requests(1, 504, path_prefix="/v2/orders", method="POST", when="after")
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    aapl = next(e for e in summary["entries"] if e["symbol"] == "AAPL")
    assert aapl["status"] == "submitted" and "confirmed by lookup" in aapl["detail"]
    assert {s: len(o) for s, o in by_symbol(buy_orders(trader)).items()} == dict.fromkeys(FIVE, 1)


def test_submit_lost_before_the_broker_saw_it_is_unknown_and_not_resent_until_the_next_run(
        trader, redis_client, keys):
    trader.control.fail_requests(1, 503, path_prefix="/v2/orders", method="POST", when="before")
    rank_today(redis_client, keys, FIVE)
    first = trade_signals()
    aapl = next(e for e in first["entries"] if e["symbol"] == "AAPL")
    assert aapl["status"] == "unknown outcome"
    assert sorted(o["symbol"] for o in buy_orders(trader)) == sorted(FIVE[1:])
    assert exit_status(first) == 1
    second = trade_signals()
    assert next(e for e in second["entries"] if e["symbol"] == "AAPL")["status"] == "submitted"
    assert {s: len(o) for s, o in by_symbol(buy_orders(trader)).items()} == dict.fromkeys(FIVE, 1)


def test_one_refused_entry_does_not_stop_the_others(trader, redis_client, keys):
    trader.control.fail_requests(1, 422, path_prefix="/v2/orders", method="POST", when="before")
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    assert [e["status"] for e in summary["entries"]] == ["rejected"] + ["submitted"] * 4
    assert "HTTP 422" in summary["entries"][0]["detail"]


def test_entry_notification_is_published_per_submitted_order(trader, redis_client, keys):
    import json

    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.notifications)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    rank_today(redis_client, keys, FIVE[:2])
    trade_signals()
    received = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        received.append(json.loads(message["data"]))
    pubsub.close()
    assert [(m["kind"], m["symbol"], m["client_order_id"]) for m in received] == [
        ("entry_submitted", t, f"{keys.ns}-20240304-{t}-entry") for t in FIVE[:2]]
    assert received[0]["amount"] == "40000.00" and received[0]["order_id"]


# -- the command and the worker ------------------------------------------------------------------


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(args, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_factoryline_trade_prints_orders_and_skips(trader, redis_client, keys, namespace, tmp_path):
    rank_today(redis_client, keys, ["AAPL", "FUBO", "ZZZZ"])
    env = {**trader.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    result = run([sys.executable, "-m", "services.cli", "trade"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "$40,000.00" in result.stdout  # one slot of $200,000 / 5 each
    assert f"{namespace}-20240304-FUBO-entry" in result.stdout
    assert "ZZZZ" in result.stdout and "unknown asset" in result.stdout
    assert "Traceback" not in result.stderr


def test_factoryline_trade_without_broker_keys_is_one_line(tmp_path):
    result = run([sys.executable, "-m", "services.cli", "trade", "--dry-run"], tmp_path,
                 {"REDIS_URL": redis_url()})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "ALPACA_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_factoryline_trade_with_a_missing_csv_is_one_line(trader, namespace, tmp_path):
    env = {**trader.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    result = run([sys.executable, "-m", "services.cli", "trade", "--csv", "nope.csv"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip() == "factoryline: error: signals file not found: nope.csv"


def test_worker_check_passes_against_a_live_broker_and_redis(trader, namespace, tmp_path):
    env = {**trader.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    result = run([sys.executable, "-m", "services.trader", "--check"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("trader: ok:") and f"{namespace}-trader" in result.stdout


def test_worker_check_fails_in_one_line_with_wrong_keys(trader, namespace, tmp_path):
    env = {**trader.broker_env(), "ALPACA_SECRET_KEY": "wrong-secret", "REDIS_URL": redis_url(),
           "FL_NAMESPACE": namespace}
    result = run([sys.executable, "-m", "services.trader", "--check"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.startswith("trader: error:") and result.stderr.strip().count("\n") == 0
    assert "wrong-secret" not in result.stderr


def test_job_enqueued_on_the_trader_queue_runs_in_the_worker_and_returns_its_summary(trader, redis_client, keys):
    from shared.bus import connect_rq
    from shared.queues import enqueue, run_worker

    rank_today(redis_client, keys, FIVE[:2])
    connection = connect_rq(redis_url())
    job = enqueue(connection, keys, "trader", "services.trader.jobs.trade_signals", kwargs={"dry_run": False})
    run_worker(connection, keys, "trader", burst=True)
    job.refresh()
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value()["counts"] == {"submitted": 2}
    assert sorted(o["symbol"] for o in buy_orders(trader)) == sorted(FIVE[:2])
    connection.close()
