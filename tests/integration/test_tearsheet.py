"""The tearsheet: statistics against a small case computed by hand, the starting point, the benchmark,
the page's self-containment, and `factoryline report --since` against the simulated market."""

from __future__ import annotations

import re
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import start_sim
from test_reporter import _FACTORYLINE, _run, run_scenario

from services.reporter import render_tearsheet
from services.reporter.jobs import write_tearsheet
from services.reporter.report import EquityPoint, read_start
from services.reporter.tearsheet import Holding, Tearsheet, build_tearsheet
from shared.exits import ExitReason
from shared.ledger import ClosedTrade
from shared.models import Bar


def close_of(day: int) -> datetime:
    """16:05 New York (21:05 UTC) on 2024-03-<day>."""
    return datetime(2024, 3, day, 21, 5, tzinfo=UTC)


def trade(symbol: str, day: int, entry: str, exit_price: str, qty: str, reason: ExitReason) -> ClosedTrade:
    return ClosedTrade.of(symbol=symbol, qty=D(qty), entry_price=D(entry), exit_price=D(exit_price),
                          exit_reason=reason, opened_at=close_of(day) - timedelta(days=1, hours=6),
                          closed_at=close_of(day) - timedelta(hours=4), closing_order_id=f"c-{symbol}-{day}",
                          closing_client_order_id=f"cc-{symbol}-{day}")


#: Starting capital on Friday 2024-03-01, then four closes: 102,000, 99,000, 97,920, 103,000.
START = EquityPoint(at=datetime(2024, 3, 1, 21, 0, tzinfo=UTC), equity=D("100000"))
POINTS = [EquityPoint(at=close_of(d), equity=D(e)) for d, e in ((4, "102000"), (5, "99000"), (6, "97920"),
                                                                 (7, "103000"))]
#: +500, -200, +300, -100 (closed 03-05, 03-06, 03-07, 03-07).
TRADES = [trade("AAPL", 5, "100", "105", "100", ExitReason.TAKE_PROFIT),
          trade("MSFT", 6, "400", "390", "20", ExitReason.STOP_LOSS),
          trade("AAPL", 7, "50", "53", "100", ExitReason.TRAILING),
          trade("NVDA", 7, "100", "99", "100", ExitReason.TIME_STOP)]


def sheet_of(**overrides) -> Tearsheet:
    args = dict(since=date(2024, 3, 4), until=date(2024, 3, 7), generated_at=close_of(7), points=POINTS,
                closed_trades=TRADES, start=START)
    args.update(overrides)
    return build_tearsheet(**args)


def test_statistics_match_the_hand_computed_case():
    sheet = sheet_of()
    # Equity from the starting capital: 100,000 -> 103,000.
    assert [p.equity for p in sheet.daily] == [D("100000"), D("102000"), D("99000"), D("97920"), D("103000")]
    assert sheet.start_equity == D("100000") and sheet.start_day == date(2024, 3, 1)
    assert sheet.start_source == "recorded start" and sheet.trading_days == 4
    assert sheet.total_return == pytest.approx(103000 / 100000 - 1)  # +3%
    assert sheet.annual_return == pytest.approx(1.03 ** (252 / 4) - 1)
    # Peak 102,000 on 03-04, trough 97,920 on 03-06: 97,920 / 102,000 - 1 = -4%; back above on 03-07.
    assert sheet.max_drawdown == pytest.approx(-0.04)
    assert (sheet.drawdown_peak, sheet.drawdown_trough, sheet.drawdown_recovery) == (
        date(2024, 3, 4), date(2024, 3, 6), date(2024, 3, 7))
    assert [round(p.drawdown, 6) for p in sheet.daily] == [0, 0, round(99000 / 102000 - 1, 6), -0.04, 0]
    # Trades: 2 of 4 won; profit factor (500 + 300) / (200 + 100); average win 400, average loss -150.
    assert (sheet.trades, sheet.wins, sheet.losses) == (4, 2, 2)
    assert sheet.win_rate == 0.5
    assert sheet.profit_factor == pytest.approx(800 / 300)
    assert sheet.average_win == D("400.00") and sheet.average_loss == D("-150.00")
    # Sharpe: mean / sample std of the daily returns x sqrt(252).
    returns = [102000 / 100000 - 1, 99000 / 102000 - 1, 97920 / 99000 - 1, 103000 / 97920 - 1]
    mean = sum(returns) / 4
    std = (sum((r - mean) ** 2 for r in returns) / 3) ** 0.5
    assert sheet.sharpe == pytest.approx(mean / std * 252 ** 0.5)
    assert sheet.sortino is not None and sheet.sortino > sheet.sharpe
    assert [(m.year, m.month) for m in sheet.monthly] == [(2024, 3)]
    assert sheet.monthly[0].monthly_return == pytest.approx(0.03)


def test_exposure_is_the_share_of_days_a_position_was_held():
    # The trades span 03-04..03-05, 03-05..03-06, 03-06..03-07: all four days are exposed.
    assert sheet_of().exposure == 1.0
    # Only a position opened on 03-06 and still open: 03-06 and 03-07 of the four days.
    sheet = sheet_of(closed_trades=[], holdings=[Holding(symbol="AAPL", opened_at=close_of(6) - timedelta(hours=5))])
    assert (sheet.exposed_days, sheet.exposure) == (2, 0.5)


def test_the_start_is_the_last_point_before_the_window_else_the_recorded_start_else_the_first_point():
    later = sheet_of(since=date(2024, 3, 6))
    assert later.start_source == "before window" and later.start_equity == D("99000")
    assert later.total_return == pytest.approx(103000 / 99000 - 1)
    assert [t.symbol for t in later.closed_trades] == ["MSFT", "AAPL", "NVDA"]
    bare = sheet_of(start=None)
    assert bare.start_source == "first point" and bare.start_equity == D("102000")


def test_benchmark_is_normalised_to_the_starting_equity_or_the_page_says_it_is_missing():
    bars = [Bar(t=datetime(2024, 3, d, 5, tzinfo=UTC), o=D(c), h=D(c), l=D(c), c=D(c))
            for d, c in ((1, "500"), (4, "510"), (5, "505"), (6, "490"), (7, "520"))]
    sheet = sheet_of(benchmark_symbol="SPY", benchmark_bars=bars)
    assert [b.value for b in sheet.benchmark] == [D("100000.00"), D("102000.00"), D("101000.00"), D("98000.00"),
                                                  D("104000.00")]
    assert sheet.benchmark_return == pytest.approx(0.04) and sheet.benchmark_note == ""
    missing = sheet_of(benchmark_symbol="QQQ", benchmark_bars=[])
    assert missing.benchmark == [] and "no daily bars for QQQ" in missing.benchmark_note
    html = render_tearsheet.render(missing)
    assert 'id="benchmark-note"' in html and "no daily bars for QQQ" in html


def test_page_embeds_plotly_and_loads_nothing_from_the_network():
    html = render_tearsheet.render(sheet_of())
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js itself, embedded
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I), "a script loaded from elsewhere"
    assert not re.search(r"<link[^>]*\bhref=", html, re.I) and not re.search(r"<img[^>]*\bsrc=", html, re.I)
    assert 'id="filter-symbol"' in html and 'id="filter-reason"' in html
    assert html.count('class="trade"') == 4
    assert '"tickformat":"$,.0f"' in html.replace(" ", "")


def test_nice_steps_are_round_numbers():
    assert [render_tearsheet.nice_step(s) for s in (5080, 1000, 37, 0.9)] == [2000, 200, 10, 0.2]


def test_tearsheet_over_the_simulated_market_and_the_cli(redis_client, keys, namespace, tmp_path):
    """Three sessions on the simulator (a stop-out, a target, one position open): the tearsheet starts at
    the account's $200,000 before the first report, counts the two trades, and draws AAPL as the
    benchmark from the simulator's daily bars; `factoryline report --since` writes it and says SPY has none."""
    handle = start_sim()
    try:
        scenario = run_scenario(handle, redis_client, keys, tmp_path / "reports")
        assert read_start(redis_client, keys).equity == D("200000")
        first = scenario.files[0].report.report_date
        executor = _executor(handle)
        try:
            files = write_tearsheet(executor, redis_client, keys, tmp_path / "sheets", first, "AAPL", record=False)
        finally:
            executor.close()
        sheet = files.sheet
        assert sheet.start_equity == D("200000") and sheet.start_source == "recorded start"
        assert sheet.end_equity == scenario.files[-1].report.account.equity
        assert (sheet.trades, sheet.wins, sheet.losses) == (2, 1, 1)
        assert {t.exit_reason for t in sheet.closed_trades} == {ExitReason.STOP_LOSS, ExitReason.TAKE_PROFIT}
        assert sheet.exposure == 1.0 and len(sheet.daily) == 4
        assert sheet.benchmark and sheet.benchmark[0].value == D("200000.00")
        assert files.html_path.name == f"tearsheet-{first}-{sheet.until}.html" and files.json_path.is_file()
        assert Tearsheet.model_validate_json(files.json_path.read_text()) == sheet

        env = {**handle.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}
        result = _run([sys.executable, "-c", _FACTORYLINE, "report", "--since", first.isoformat(), "--out", "out"],
                      tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert f"Factory Line tearsheet {first} to {sheet.until}" in result.stdout
        assert "trades (won/lost)   2 (1/1)" in result.stdout
        assert "benchmark SPY" in result.stdout and "no daily bars for SPY" in result.stdout
        path = Path(re.search(r"^tearsheet: (.+)$", result.stdout, re.M).group(1))
        assert (tmp_path / path).is_file()
        bad = _run([sys.executable, "-c", _FACTORYLINE, "report", "--since", "yesterday"], tmp_path, env)
        assert bad.returncode == 2 and bad.stderr.strip() == (
            "factoryline: error: --since yesterday: give a date as YYYY-MM-DD")
    finally:
        handle.stop()


def _executor(handle):
    from shared.broker import make_executor

    return make_executor(handle.broker_settings())
