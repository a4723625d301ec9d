"""The daily report: what it shows for positions, protection, armed exits, the day's closed trades and
the account, the equity history behind its curve, the files it writes and its commands.

Builder tests feed broker-shaped figures straight in (the builder is pure); the scenario runs the real
manager reconcile and ledger against the simulated market over alpaca-py, with real Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import NEW_YORK, SimHandle, start_sim

from services.reporter import render_html, render_text
from services.reporter.jobs import ReportFiles, write_report
from services.reporter.report import (
    EquityPoint,
    build_report,
    equity_history,
    protective_order,
    record_equity,
)
from shared import ledger, position_store
from shared.broker import make_executor
from shared.exits import ExitReason, ExitRules, PositionState, advance_state
from shared.ledger import ClosedTrade
from shared.models import (
    Account,
    MarketClock,
    Order,
    OrderClass,
    OrderStatus,
    OrderType,
    Position,
    Side,
    TimeInForce,
)
from shared.positions.context import ManagerContext
from shared.positions.reconcile import reconcile_all
from shared.protection import Trigger

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
RULES = ExitRules(stop_loss=D("0.05"), take_profit=D("0.20"), breakeven_arm=D("0.015"), trailing_arm=D("0.02"),
                  trailing_giveback=D("0.5"), time_stop=timedelta(days=7))
#: Tuesday 16:05 New York (21:05 UTC): the report's moment in the builder tests.
CLOSE = datetime(2026, 11, 24, 21, 5, tzinfo=UTC)


def clock(at: datetime = CLOSE, is_open: bool = False) -> MarketClock:
    return MarketClock(timestamp=at, is_open=is_open, next_open=at + timedelta(hours=17),
                       next_close=at + timedelta(hours=24))


def account(equity: str = "100500", last_equity: str = "100000") -> Account:
    return Account(cash=D("50000"), buying_power=D("50000"), equity=D(equity), last_equity=D(last_equity))


def position(symbol: str = "AAPL", qty: str = "10", entry: str = "100", last: str = "104") -> Position:
    q, e, p = D(qty), D(entry), D(last)
    return Position(symbol=symbol, qty=q, qty_available=D(0), avg_entry_price=e, current_price=p,
                    market_value=p * q, unrealized_pl=(p - e) * q, cost_basis=e * q)


def order(symbol: str = "AAPL", **fields) -> Order:
    base = dict(id=f"id-{symbol}-{fields.get('type', 'limit')}", client_order_id=f"coid-{symbol}", symbol=symbol,
                side=Side.SELL, type=OrderType.LIMIT, time_in_force=TimeInForce.GTC, status=OrderStatus.NEW,
                qty=D("10"), created_at=CLOSE - timedelta(days=1), updated_at=CLOSE - timedelta(days=1))
    base.update(fields)
    return Order(**base)


def closed(symbol: str, closed_at: datetime, entry: str = "100", exit_price: str = "95", qty: str = "10",
           reason: ExitReason = ExitReason.STOP_LOSS) -> ClosedTrade:
    return ClosedTrade.of(symbol=symbol, qty=D(qty), entry_price=D(entry), exit_price=D(exit_price),
                          exit_reason=reason, opened_at=closed_at - timedelta(days=2), closed_at=closed_at,
                          closing_order_id=f"close-{symbol}-{closed_at.isoformat()}",
                          closing_client_order_id=f"leg-{symbol}")


def report_of(**overrides):
    args = dict(clock=clock(), account=account(), positions=[position()], open_orders=[], states={},
                closed_trades=[], equity_curve=[], rules=RULES)
    args.update(overrides)
    return build_report(**args)


# -- the builder --------------------------------------------------------------------------------------


def test_oco_shows_its_parent_limit_as_the_target_and_its_stop_leg_as_the_stop():
    stop_leg = order(id="leg", type=OrderType.STOP, stop_price=D("95"), status=OrderStatus.HELD)
    oco = order(order_class=OrderClass.OCO, limit_price=D("120"), legs=[stop_leg])
    shown = protective_order(oco)
    assert (shown.kind, shown.stop_price, shown.target_price, shown.qty) == ("oco", D("95"), D("120"), D("10"))
    plain = protective_order(order(type=OrderType.STOP, stop_price=D("95.03"), time_in_force=TimeInForce.DAY,
                                   qty=D("2.5")))
    assert (plain.kind, plain.stop_price, plain.target_price, plain.qty) == ("stop", D("95.03"), None, D("2.5"))


def test_position_line_carries_its_protection_and_unrealized_pl_in_dollars_and_percent():
    oco = order(order_class=OrderClass.OCO, limit_price=D("120"),
                legs=[order(id="leg", type=OrderType.STOP, stop_price=D("95"))])
    buy = order(side=Side.BUY, id="pending-buy", type=OrderType.MARKET)
    report = report_of(positions=[position(last="104.50")], open_orders=[oco, buy, order("MSFT", type=OrderType.STOP,
                                                                                           stop_price=D("1"))])
    (line,) = report.positions
    assert line.unrealized_pl == D("45.00") and line.unrealized_pl_pct == D("4.50")
    assert line.market_value == D("1045.00")
    assert [(o.kind, o.stop_price, o.target_price) for o in line.protective_orders] == [("oco", D("95"), D("120"))]


def test_armed_exits_show_the_price_at_or_below_which_they_sell():
    first_fill = CLOSE - timedelta(days=3, hours=2)
    state = PositionState.at_entry("AAPL", D("100"), D("10"), first_fill)
    state = advance_state(state, high_since_last=D("110.01"), price=D("104"), now=CLOSE, rules=RULES)
    (line,) = report_of(states={"AAPL": state}).positions
    # trailing: 110.01 - 50% x 10.01 = 105.005, the highest cent that sells is 105.00; break-even: the entry.
    assert [(a.reason, a.exit_price) for a in line.armed_exits] == [
        (ExitReason.TRAILING, D("105.00")), (ExitReason.BREAK_EVEN, D("100.00"))]
    assert line.high_water_mark == D("110.01")
    assert line.days_held == 3
    assert line.time_stop_at == first_fill + timedelta(days=7)


def test_position_without_manager_state_shows_no_armed_exits_and_unknown_days_held():
    (line,) = report_of().positions
    assert line.armed_exits == [] and line.days_held is None
    assert "NONE" in render_text.render(report_of())  # unprotected is shouted, not hidden


def test_only_trades_closed_on_the_brokers_new_york_date_are_todays():
    # 2026-11-24 00:30 UTC is still Monday the 23rd in New York; 23:30 New York on the 24th is the 25th in UTC.
    monday_evening = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)
    tuesday_late = datetime(2026, 11, 24, 23, 30, tzinfo=NEW_YORK)
    tuesday_open = datetime(2026, 11, 24, 9, 45, tzinfo=NEW_YORK)
    report = report_of(clock=clock(datetime(2026, 11, 24, 23, 45, tzinfo=NEW_YORK)), closed_trades=[
        closed("OLD", monday_evening), closed("LATE", tuesday_late, exit_price="110", reason=ExitReason.TRAILING),
        closed("EARLY", tuesday_open)])
    assert report.report_date.isoformat() == "2026-11-24"
    assert [t.symbol for t in report.closed_trades] == ["EARLY", "LATE"]
    assert report.totals.realized_pl == D("-50") + D("100")
    assert (report.totals.winning_trades, report.totals.losing_trades) == (1, 1)


def test_change_today_is_equity_minus_the_previous_close():
    report = report_of(account=account(equity="99250.50", last_equity="100000"))
    assert report.account.change_today == D("-749.50")
    assert report.account.change_today_pct == D("-0.75")


def test_day_pl_by_symbol_adds_realized_exits_to_what_is_still_held():
    report = report_of(positions=[position("AAPL", last="104")],
                       closed_trades=[closed("AAPL", CLOSE - timedelta(hours=3), exit_price="98", qty="5"),
                                      closed("MSFT", CLOSE - timedelta(hours=1), exit_price="120")])
    assert [(r.symbol, r.unrealized_pl, r.realized_pl, r.total_pl) for r in report.pl_by_symbol] == [
        ("AAPL", D("40"), D("-10"), D("30")), ("MSFT", D("0"), D("200"), D("200"))]
    assert report.totals.total_pl == D("230")


def test_json_form_keeps_money_as_decimal_strings_and_round_trips():
    report = report_of(equity_curve=[EquityPoint(at=CLOSE, equity=D("100500.25"))])
    data = json.loads(report.model_dump_json())
    assert data["account"]["equity"] == "100500" and data["positions"][0]["unrealized_pl"] == "40.00"
    assert data["equity_curve"] == [{"at": "2026-11-24T21:05:00Z", "equity": "100500.25"}]
    assert type(report).model_validate_json(report.model_dump_json()) == report


def test_html_is_self_contained_and_escapes_what_the_broker_sends():
    report = report_of(positions=[position("<b>X")], equity_curve=[EquityPoint(at=CLOSE, equity=D("1"))])
    page = render_html.render(report)
    assert "<b>X" not in page and "&lt;b&gt;X" in page
    for external in ("<script", "src=", "href=", "@import", "url("):
        assert external not in page


def test_pl_is_shown_in_cents_half_up_in_the_model_the_json_the_table_and_the_page():
    # 3 @ 95.005 from 100: -14.985 realized; a broker's unrealized 12.3456 on the open position.
    held = position(last="101.25").model_copy(update={"unrealized_pl": D("12.3456")})
    report = report_of(positions=[held], closed_trades=[closed("MSFT", CLOSE - timedelta(hours=1),
                                                               exit_price="95.005", qty="3")])
    (trade,) = report.closed_trades
    assert trade.realized_pl == D("-14.99") and str(trade.realized_pl) == "-14.99"
    assert str(report.positions[0].unrealized_pl) == "12.35"
    data = json.loads(report.model_dump_json())
    assert data["closed_trades"][0]["realized_pl"] == "-14.99"
    assert (data["totals"]["realized_pl"], data["totals"]["unrealized_pl"], data["totals"]["total_pl"]) == (
        "-14.99", "12.35", "-2.64")
    assert {r["symbol"]: r["total_pl"] for r in data["pl_by_symbol"]} == {"AAPL": "12.35", "MSFT": "-14.99"}
    text, page = render_text.render(report), render_html.render(report)
    assert "-$14.99" in text and "+$12.35" in text and "-$2.64" in text
    assert 'data-value="-14.99">-$14.99<' in page and 'data-value="12.35">+$12.35<' in page
    for shown in (text, page):
        assert "14.985" not in shown and "12.3456" not in shown


def _stop_out_parts(opened_at: datetime) -> tuple[ClosedTrade, ClosedTrade]:
    """AAPL 10.4 @ 100 stopped out at 95: the OCO's stop leg sold 10, the day stop 0.4, one second apart."""
    hit = CLOSE - timedelta(hours=5)
    common = dict(symbol="AAPL", entry_price=D("100"), exit_price=D("95"), exit_reason=ExitReason.STOP_LOSS,
                  opened_at=opened_at, entry_client_order_id="entry-AAPL")
    return (ClosedTrade.of(qty=D("10"), closed_at=hit, closing_order_id="oco-stop-leg",
                           closing_client_order_id="prot-AAPL-stop", **common),
            ClosedTrade.of(qty=D("0.4"), closed_at=hit + timedelta(seconds=1), closing_order_id="day-stop",
                           closing_client_order_id="prot-AAPL-frac", **common))


def test_a_10_and_0_4_share_stop_out_written_as_two_entries_is_one_lost_trade_in_the_report(redis_client, keys):
    oco_leg, day_stop = _stop_out_parts(CLOSE - timedelta(days=2))
    assert ledger.append_once(redis_client, keys, oco_leg) and ledger.append_once(redis_client, keys, day_stop)
    assert len(ledger.read(redis_client, keys)) == 2
    report = report_of(positions=[], closed_trades=ledger.read_closes(redis_client, keys))
    (trade,) = report.closed_trades
    assert (trade.symbol, trade.qty, trade.exit_price, trade.realized_pl) == ("AAPL", D("10.4"), D("95"), D("-52"))
    assert trade.closing_order_ids == ["oco-stop-leg", "day-stop"] and trade.realized_pl_pct == D("-5.00")
    totals = report.totals
    assert (totals.closed_trades, totals.winning_trades, totals.losing_trades) == (1, 0, 1)
    assert str(totals.realized_pl) == "-52.00"
    text = render_text.render(report)
    assert "closed today (1)" in text and "0/1" in text and "10.4" in text and "-$52.00" in text
    page = render_html.render(report)
    assert "Closed today (1)" in page and "0 won / 1 lost" in page and page.count('<tr class="trade"') == 1


# -- equity history ----------------------------------------------------------------------------------


def test_each_report_adds_one_equity_point_and_a_rerun_at_the_same_instant_replaces_it(redis_client, keys):
    record_equity(redis_client, keys, CLOSE - timedelta(days=1), D("100000"))
    record_equity(redis_client, keys, CLOSE, D("100400"))
    record_equity(redis_client, keys, CLOSE, D("100500.25"))
    assert [(p.at, p.equity) for p in equity_history(redis_client, keys)] == [
        (CLOSE - timedelta(days=1), D("100000")), (CLOSE, D("100500.25"))]


# -- scenario: the simulated market, the manager's reconcile and ledger, real Redis ---------------------


@dataclass
class Scenario:
    files: list[ReportFiles]
    trades: list[ClosedTrade]
    folder: Path


def run_scenario(market: SimHandle, client, keys, folder: Path) -> Scenario:
    """Three sessions: buy AAPL, MSFT, NVDA on Monday, protected by the manager; a report at every close.
    On Wednesday AAPL falls through its stop and NVDA jumps through its target, MSFT rises enough to arm
    its soft exits and stays open. Returns every report written (the last is Wednesday's)."""
    executor = make_executor(market.broker_settings())
    files: list[ReportFiles] = []
    try:
        for symbol, qty in (("AAPL", "10"), ("MSFT", "5"), ("NVDA", "4")):
            executor.buy_qty(symbol, D(qty), f"{keys.ns}-20240304-{symbol}-entry")
        reconcile_all(ManagerContext(executor, client, keys, RULES), Trigger.TIMER)
        start = market.control.advance(seconds=0).astimezone(NEW_YORK)
        for day in range(3):
            session = start.date() + timedelta(days=day)
            if day == 2:
                market.control.advance(to=datetime.combine(session, datetime.min.time(), NEW_YORK)
                                    .replace(hour=11))
                positions = {p.symbol: p for p in executor.get_positions()}
                aapl, nvda, msft = positions["AAPL"], positions["NVDA"], positions["MSFT"]
                market.control.set_price("AAPL", (aapl.avg_entry_price * D("0.90")).quantize(D("0.01")))
                market.control.set_price("NVDA", (nvda.avg_entry_price * D("1.25")).quantize(D("0.01")))
                msft_high = (msft.avg_entry_price * D("1.04")).quantize(D("0.01"))
                market.control.set_price("MSFT", msft_high)
                reconcile_all(ManagerContext(executor, client, keys, RULES), Trigger.TIMER)
                # What the manager's tick does with the price it sees: raise the mark, arm the exits.
                state = position_store.load_state(client, keys, "MSFT")
                record = position_store.load_record(client, keys, "MSFT")
                now = market.control.advance(seconds=60)
                position_store.save(client, keys, advance_state(state, high_since_last=msft_high, price=msft_high,
                                                                now=now, rules=RULES), record)
            market.control.advance(to=datetime.combine(session, datetime.min.time(), NEW_YORK).replace(hour=16,
                                                                                                     minute=5))
            files.append(write_report(executor, client, keys, RULES, folder))
        return Scenario(files=files, trades=ledger.read(client, keys), folder=folder)
    finally:
        executor.close()


@pytest.fixture
def market() -> Iterator[SimHandle]:
    """A fresh simulated market: Monday 2024-03-04 10:00 New York, frozen clock, $200,000 cash."""
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def scenario(market, redis_client, keys, tmp_path) -> Scenario:
    return run_scenario(market, redis_client, keys, tmp_path / "reports")


def test_report_after_a_stop_and_a_target_shows_each_closed_trade_with_the_ledgers_realized_pl(scenario):
    last = scenario.files[-1].report
    assert last.report_date.isoformat() == "2024-03-06"
    reasons = {t.symbol: t.exit_reason for t in last.closed_trades}
    assert reasons == {"AAPL": ExitReason.STOP_LOSS, "NVDA": ExitReason.TAKE_PROFIT}
    by_order = {t.closing_order_id: t for t in scenario.trades}
    for line in last.closed_trades:
        trade = by_order[line.closing_order_id]
        assert line.realized_pl == trade.realized_pl == (trade.exit_price - trade.entry_price) * trade.qty
    assert last.totals.realized_pl == sum(t.realized_pl for t in scenario.trades)
    aapl, nvda = (next(t for t in last.closed_trades if t.symbol == s) for s in ("AAPL", "NVDA"))
    assert aapl.realized_pl < 0 < nvda.realized_pl


def test_report_shows_the_open_position_with_its_oco_levels_and_armed_soft_exits(scenario, market):
    (msft,) = scenario.files[-1].report.positions
    assert msft.symbol == "MSFT" and msft.qty == D("5")
    (oco,) = msft.protective_orders
    stop, target = (msft.entry_price * D("0.95")), (msft.entry_price * D("1.20"))
    assert oco.kind == "oco" and abs(oco.stop_price - stop) < D("0.01") and abs(oco.target_price - target) < D("0.01")
    assert {a.reason for a in msft.armed_exits} == {ExitReason.TRAILING, ExitReason.BREAK_EVEN}
    assert msft.days_held == 2
    assert msft.unrealized_pl == (msft.last_price - msft.entry_price) * msft.qty


def test_account_figures_and_change_today_match_the_broker(scenario, market):
    report = scenario.files[-1].report
    broker = make_executor(market.broker_settings())
    try:
        account_now = broker.get_account()
    finally:
        broker.close()
    assert report.account.equity == account_now.equity and report.account.cash == account_now.cash
    assert report.account.change_today == account_now.equity - account_now.last_equity


def test_every_report_adds_a_point_to_the_equity_curve_at_the_brokers_time(scenario):
    curve = scenario.files[-1].report.equity_curve
    assert [p.at.astimezone(NEW_YORK).strftime("%a %H:%M") for p in curve] == ["Mon 16:05", "Tue 16:05",
                                                                                "Wed 16:05"]
    assert [p.equity for p in curve] == [f.report.account.equity for f in scenario.files]


def test_report_files_are_named_by_the_brokers_date_and_the_json_matches_the_report(scenario):
    names = sorted(p.name for p in scenario.folder.iterdir())
    assert names == [f"report-2024-03-0{d}.{ext}" for d in (4, 5, 6) for ext in ("html", "json")]
    last = scenario.files[-1]
    data = json.loads(last.json_path.read_text())
    assert data["totals"]["realized_pl"] == str(last.report.totals.realized_pl)
    assert data["account"]["equity"] == str(last.report.account.equity)
    assert "report-2024-03-06" in str(last.html_path)


def test_a_fractional_position_stopped_out_by_its_oco_and_day_stop_is_one_trade_in_the_report(market, redis_client,
                                                                                              keys, tmp_path):
    """10.4 AAPL through the real manager: an OCO for 10 and a day stop for 0.4; the stop price fills both,
    the manager writes ONE ledger entry covering both closing orders, the report one trade, lost."""
    executor = make_executor(market.broker_settings())
    try:
        executor.buy_qty("AAPL", D("10.4"), f"{keys.ns}-20240304-AAPL-entry")
        reconcile_all(ManagerContext(executor, redis_client, keys, RULES), Trigger.TIMER)
        sells = sorted((o.order_class.value, o.remaining_qty) for o in executor.get_open_orders("AAPL")
                       if o.side is Side.SELL)
        assert sells == [("oco", D("10")), ("simple", D("0.4"))]
        entry = executor.get_position("AAPL").avg_entry_price
        market.control.advance(seconds=600)
        market.control.set_price("AAPL", (entry * D("0.90")).quantize(D("0.01")))
        reconcile_all(ManagerContext(executor, redis_client, keys, RULES), Trigger.TIMER)
        assert executor.get_position("AAPL") is None
        market.control.advance(to=market.control.advance(seconds=0).astimezone(NEW_YORK).replace(hour=16, minute=5))
        files = write_report(executor, redis_client, keys, RULES, tmp_path)
    finally:
        executor.close()
    (entry_written,) = ledger.read(redis_client, keys)
    assert entry_written.qty == D("10.4") and len(entry_written.closing_order_ids) == 2
    (trade,) = files.report.closed_trades
    assert trade.qty == D("10.4") and trade.exit_reason is ExitReason.STOP_LOSS
    assert sorted(trade.closing_order_ids) == sorted(entry_written.closing_order_ids)
    assert trade.realized_pl == entry_written.realized_pl.quantize(D("0.01")) < 0
    totals = files.report.totals
    assert (totals.closed_trades, totals.winning_trades, totals.losing_trades) == (1, 0, 1)
    assert "closed today (1)" in render_text.render(files.report)


# -- commands -----------------------------------------------------------------------------------------


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(args, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=90)


#: `factoryline ...` with the report command registered even before services/cli.py lists it.
_FACTORYLINE = ("import sys; from services import cli; "
                "cli.COMMANDS.setdefault('report', ('services.reporter.cli', 'write the daily report')); "
                "sys.exit(cli.main(sys.argv[1:]))")


def test_factoryline_report_prints_the_table_and_writes_both_files(market, namespace, redis_client, tmp_path):
    executor = make_executor(market.broker_settings())
    try:
        executor.buy_qty("AAPL", D("3"), f"{namespace}-20240304-AAPL-entry")
    finally:
        executor.close()
    env = {**market.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    result = _run([sys.executable, "-c", _FACTORYLINE, "report", "--out", "out"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "Factory Line daily report 2024-03-04" in result.stdout
    assert "AAPL" in result.stdout and "NONE" in result.stdout  # nobody protected it: the report says so
    assert (tmp_path / "out" / "report-2024-03-04.html").is_file()
    assert (tmp_path / "out" / "report-2024-03-04.json").is_file()
    assert "html: out/report-2024-03-04.html" in result.stdout


def test_factoryline_report_without_broker_keys_is_one_line(tmp_path):
    result = _run([sys.executable, "-c", _FACTORYLINE, "report"], tmp_path, {"REDIS_URL": redis_url()})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "ALPACA_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_check_reports_ok_with_its_queue_and_fails_in_one_line_on_bad_redis_or_keys(market, namespace, tmp_path):
    env = {**market.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
    ok = _run([sys.executable, "-m", "services.reporter", "--check"], tmp_path, env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("reporter: ok:") and f"{namespace}-reporter" in ok.stdout
    bad = _run([sys.executable, "-m", "services.reporter", "--check"], tmp_path, {**env, "REDIS_URL": "http://x"})
    assert bad.returncode == 2 and bad.stderr.startswith("reporter: error: REDIS_URL")
    assert bad.stderr.strip().count("\n") == 0
    wrong = _run([sys.executable, "-m", "services.reporter", "--check"], tmp_path,
                 {**env, "ALPACA_SECRET_KEY": "wrong-secret"})
    assert wrong.returncode == 2 and wrong.stderr.startswith("reporter: error:")
    assert wrong.stderr.strip().count("\n") == 0 and "wrong-secret" not in wrong.stderr


def test_job_enqueued_on_the_reporter_queue_runs_in_the_worker_and_returns_the_paths(market, clean_env, namespace,
                                                                                     redis_client, keys, tmp_path):
    from shared.bus import connect_rq
    from shared.queues import enqueue, run_worker

    for name, value in {**market.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}.items():
        clean_env.setenv(name, value)
    connection = connect_rq(redis_url())
    try:
        job = enqueue(connection, keys, "reporter", "services.reporter.jobs.daily_report",
                      kwargs={"out_dir": str(tmp_path / "r")})
        run_worker(connection, keys, "reporter", burst=True)
        job.refresh()
        assert job.get_status() == "finished", job.latest_result()
        summary = job.return_value()
    finally:
        connection.close()
    assert summary["report_date"] == "2024-03-04" and D(summary["equity"]) == D("200000")
    assert Path(summary["html"]).is_file() and Path(summary["json"]).is_file()
    assert [p.equity for p in equity_history(redis_client, keys)] == [D("200000")]


class CountingExecutor:
    """The real executor, counting the broker calls the reporter makes through it."""

    def __init__(self, executor):
        self.executor, self.calls = executor, []

    def __getattr__(self, name):
        attribute = getattr(self.executor, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


def test_a_report_costs_the_same_four_broker_reads_with_two_or_twelve_positions(market, redis_client, keys,
                                                                                tmp_path):
    executor = make_executor(market.broker_settings())
    symbols = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AMD", "NFLX", "INTC", "JPM", "BAC"]
    calls = []
    try:
        for count in (2, 12):
            for symbol in symbols[:count]:
                if executor.get_position(symbol) is None:
                    executor.buy_qty(symbol, D("1"), f"{keys.ns}-20240304-{symbol}-entry")
            reconcile_all(ManagerContext(executor, redis_client, keys, RULES), Trigger.TIMER)
            counting = CountingExecutor(executor)
            files = write_report(counting, redis_client, keys, RULES, tmp_path / str(count))
            assert len(files.report.positions) == count
            assert all(p.protective_orders for p in files.report.positions)
            calls.append(sorted(counting.calls))
    finally:
        executor.close()
    assert calls[0] == calls[1] == ["get_account", "get_clock", "get_open_orders", "get_positions"]
