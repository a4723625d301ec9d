"""The scanner end to end: the simulated market replays hand-built daily charts, the scan writes one log per
ticker through alpaca-py, the ranker's own parser reads them, and the trader buys what the ranker keeps.

The charts (two years of sessions up to Friday 2024-03-01; the simulator starts Monday 2024-03-04 10:00):
- UPUP: flat, a breakout close, then a spike through the +20% target, every 22 sessions. The last
  session is a breakout: IN_TRADE, PROFITABLE (every backtest trade wins).
- FAKE: the same breakouts, but each fails through the -5% stop: IN_TRADE, UNPROFITABLE.
- DOWN: a slow slide with no rule firing: NO_SIGNAL.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import test_backtest  # the hand-built path through every exit
from conftest import redis_url
from simhelpers import DEFAULT_START, start_sim

from services.ranker.jobs import rank_signals
from services.scanner import cli as scanner_cli
from services.scanner import scan as scanner
from services.scanner.jobs import scan_targets
from services.scanner.logfile import TickerLog, format_log, write_log
from services.trader.jobs import trade_signals
from shared import ledger
from shared.backtest import BlackSheepRule, backtest
from shared.broker.alpaca import AlpacaExecutor
from shared.config import ExitSettings, RankerSettings
from shared.errors import InputError
from shared.exits import ExitReason, ExitRules
from shared.market.calendar import nyse
from shared.models import BarRow, Timeframe
from shared.signals import RejectReason, ScanState, Signal, Verdict, parse_log
from shared.strategies import STRATEGIES
from sim.executor import SimulatedExecutor

D = Decimal
CYCLE = 22
LAST_SESSION = date(2024, 3, 1)
NOW = DEFAULT_START.isoformat()


def chart_rows(symbol: str, sessions: list[date]) -> list[list[str]]:
    n = len(sessions)
    rows = []
    price = D("80")
    for i, day in enumerate(sessions):
        if symbol == "DOWN":
            o, price = price, (price * D("0.999")).quantize(D("0.01"))
            bar = (o, max(o, price) + D("0.2"), min(o, price) - D("0.2"), price)
        else:
            k = (n - 1 - i) % CYCLE
            if k == 0:  # breakout close above the flat range's 50.50 high
                bar = (D("50"), D("51.2"), D("49.8"), D("51"))
            elif k == CYCLE - 1 and i > 0:  # the session after a breakout: entry at the 51 open
                bar = ((D("51"), D("62"), D("50.1"), D("50.2")) if symbol == "UPUP"
                       else (D("51"), D("51.3"), D("48"), D("48.3")))
            else:
                bar = (D("50"), D("50.5"), D("49.5"), D("50"))
        rows.append([symbol, day.isoformat(), *(str(v) for v in bar), "100000"])
    return rows


@pytest.fixture(scope="module")
def charts_csv(tmp_path_factory) -> Path:
    sessions = [s.date for s in nyse().sessions(date(2022, 2, 1), LAST_SESSION)]
    path = tmp_path_factory.mktemp("charts") / "charts.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["symbol", "timestamp", "open", "high", "low", "close", "volume"])
        for symbol in ("UPUP", "FAKE", "DOWN"):
            writer.writerows(chart_rows(symbol, sessions))
    return path


@pytest.fixture
def market(charts_csv):
    handle = start_sim(bars_csv=charts_csv)
    yield handle
    handle.stop()


@pytest.fixture
def scanner_env(market, clean_env, namespace, tmp_path):
    """The environment the scanner, ranker and trader services run with, pointed at this test's market."""
    logs_dir = tmp_path / "logs"
    for name, value in {**market.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace,
                        "FL_SIGNALS_DIR": str(logs_dir), "FL_SIGNALS_CSV": str(tmp_path / "signals.csv"),
                        "FL_SCAN_WORKERS": "1"}.items():
        clean_env.setenv(name, value)
    return logs_dir


def read_logs(folder: Path) -> dict[str, Signal]:
    parsed = {}
    for path in sorted(folder.iterdir()):
        result = parse_log(path, RankerSettings())
        assert isinstance(result, Signal), result
        parsed[result.ticker] = result
    return parsed


# -- scanner -> ranker -> trader -------------------------------------------------------------------


def test_scanner_logs_feed_the_ranker_unchanged_and_the_trader_buys_the_profitable_signal(scanner_env, market):
    summary = scan_targets(now=NOW)
    assert summary["errors"] == [] and summary["scanned"] == 3
    ranked = rank_signals(now=NOW)
    assert [s["ticker"] for s in ranked["kept"]] == ["UPUP"]
    assert {r["ticker"]: r["reason"] for r in ranked["rejected"]} == {
        "FAKE": RejectReason.NOT_PROFITABLE.value, "DOWN": RejectReason.NOT_IN_TRADE.value}
    traded = trade_signals()
    assert [(e["symbol"], e["status"]) for e in traded["entries"]] == [("UPUP", "submitted")]
    buys = [o for o in market.control.state()["orders"] if o["side"] == "buy"]
    assert [o["symbol"] for o in buys] == ["UPUP"]


def test_each_log_says_what_the_backtest_of_its_chart_found(scanner_env):
    summary = scan_targets(now=NOW)
    assert summary["in_trade"] == 2 and summary["states"]["NO_SIGNAL"] == 1
    logs = read_logs(scanner_env)
    assert sorted(p.name for p in scanner_env.iterdir()) == [
        "IN_TRADE_live_qs_FAKE.log", "IN_TRADE_live_qs_UPUP.log", "NO_SIGNAL_live_qs_DOWN.log"]
    up = logs["UPUP"]
    assert (up.strategy, up.verdict, up.win_rate, up.signal_date, up.signal_price) == (
        "QuickStrike breakout", Verdict.PROFITABLE, D("1.0000"), LAST_SESSION, D("51"))
    assert up.trades >= 20 and up.avg_return == D("0.2")  # every trade: 51 -> target 61.20
    assert up.scanned_at == DEFAULT_START and not up.black_sheep
    fake = logs["FAKE"]
    assert (fake.strategy, fake.verdict, fake.win_rate) == ("QuickStrike breakout", Verdict.UNPROFITABLE, D("0"))
    assert fake.avg_return == D("-0.05")  # every trade: 51 -> stop 48.45
    assert logs["DOWN"].state is ScanState.NO_SIGNAL


def test_losing_live_trades_in_the_ledger_flag_a_black_sheep_the_ranker_refuses(scanner_env, redis_client, keys):
    for i in range(6):
        closed = datetime(2024, 2, 1 + i, 16, tzinfo=UTC)
        ledger.append_once(redis_client, keys, ledger.ClosedTrade.of(
            symbol="UPUP", qty=D(1), entry_price=D("51"), exit_price=D("48.45"), exit_reason=ExitReason.STOP_LOSS,
            opened_at=closed, closed_at=closed, closing_order_id=f"o{i}", closing_client_order_id=f"c{i}"))
    scan_targets(now=NOW)
    assert read_logs(scanner_env)["UPUP"].black_sheep
    ranked = rank_signals(now=NOW)
    assert ranked["kept"] == []
    assert {r["ticker"]: r["reason"] for r in ranked["rejected"]}["UPUP"] == RejectReason.BLACK_SHEEP.value


# -- missing and broken series ---------------------------------------------------------------------


def test_an_unknown_ticker_is_reported_and_skipped_and_the_rest_of_the_scan_completes(scanner_env, tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text("# tonight\nUPUP, ZZZZ\nfake down\n")
    summary = scan_targets(targets=str(targets), now=NOW)
    assert summary["errors"] == [{"ticker": "ZZZZ", "error": "no daily bars"}]
    assert (summary["tickers"], summary["scanned"]) == (4, 3)
    assert sorted(read_logs(scanner_env)) == ["DOWN", "FAKE", "UPUP"]


def test_a_broken_series_is_reported_with_its_bad_bar_and_its_stale_entry_log_removed(market, tmp_path):
    from shared.broker.alpaca import AlpacaExecutor

    executor = AlpacaExecutor(market.broker_settings())
    start = datetime(2022, 3, 1, tzinfo=UTC)
    bars, errors = scanner.fetch_daily_bars(executor, ["UPUP", "FAKE", "DOWN"], start, DEFAULT_START, 2)
    executor.close()
    assert errors == {}
    bad = bars["DOWN"][100]
    bars["DOWN"][100] = bad._replace(h=bad.l - D("1"))  # high below low (the scan reads BarRows)
    bars["FAKE"] = []
    (tmp_path / "IN_TRADE_live_qs_DOWN.log").write_text("yesterday's entry\n")
    summary = scanner.write_reports(["UPUP", "FAKE", "DOWN"], bars, {}, tmp_path, **report_args())
    reported = {e["ticker"]: e["error"] for e in summary.errors}
    assert reported["FAKE"] == "no daily bars"
    assert reported["DOWN"].startswith(f"bar {bad.t.astimezone(DEFAULT_START.tzinfo).date()}: impossible")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IN_TRADE_live_qs_UPUP.log"]
    assert summary.scanned == 1 and summary.in_trade == 1


def report_args() -> dict:
    from shared.backtest import BlackSheepRule
    from shared.config import ExitSettings
    from shared.exits import ExitRules

    return dict(rules=ExitRules.from_settings(ExitSettings()), min_trades=10, black_sheep_rule=BlackSheepRule(),
                live_trades={}, scanned_at=DEFAULT_START, now=DEFAULT_START, market_open=True)


# -- logs on disk ----------------------------------------------------------------------------------


def test_a_state_change_replaces_the_previous_state_file_and_leaves_no_temporary_file(scanner_env):
    scanner_env.mkdir()
    (scanner_env / "WATCHING_live_qs_UPUP.log").write_text("last night\n")
    (scanner_env / "NO_SIGNAL_live_qs_FAKE.log").write_text("last night\n")
    (scanner_env / "notes.txt").write_text("not ours\n")
    scan_targets(now=NOW)
    assert sorted(p.name for p in scanner_env.iterdir()) == [
        "IN_TRADE_live_qs_FAKE.log", "IN_TRADE_live_qs_UPUP.log", "NO_SIGNAL_live_qs_DOWN.log", "notes.txt"]


def test_rewriting_a_log_replaces_the_file_by_rename_so_a_reader_never_sees_half_of_it(tmp_path):
    entry = TickerLog(ticker="AAPL", strategy="QuickStrike breakout", state=ScanState.IN_TRADE,
                      verdict=Verdict.PROFITABLE, win_rate=D("0.6"), trades=12, profit_factor=D("1.5"),
                      avg_return=D("0.01"), scanned_at=DEFAULT_START, signal_date=LAST_SESSION,
                      signal_price=D("190.12"))
    first = write_log(tmp_path, entry)
    reader = first.open()  # a ranker in the middle of reading last night's file
    old_inode = os.fstat(reader.fileno()).st_ino
    changed = replace(entry, win_rate=D("0.7"), trades=13)
    write_log(tmp_path, changed)
    assert reader.read() == format_log(entry)  # the file it opened is intact, not truncated or mixed
    reader.close()
    assert os.stat(first).st_ino != old_inode
    parsed = parse_log(first, RankerSettings())
    assert isinstance(parsed, Signal) and (parsed.win_rate, parsed.trades, parsed.signal_price) == (
        D("0.7"), 13, D("190.12"))
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_two_worker_processes_write_the_same_logs_as_one(scanner_env, tmp_path):
    scan_targets(now=NOW, workers=1)
    one = {p.name: p.read_text() for p in scanner_env.iterdir()}
    other = tmp_path / "two"
    summary = scan_targets(signals_dir=str(other), now=NOW, workers=2)
    assert summary["scanned"] == 3
    assert {p.name: p.read_text() for p in other.iterdir()} == one


# -- targets file ----------------------------------------------------------------------------------


def test_targets_file_takes_commas_spaces_comments_any_case_and_drops_duplicates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aapl, MSFT  # big ones\n\n# none here\nbrk.b aapl\n")
    assert scanner.read_targets(path) == ["AAPL", "MSFT", "BRK.B"]


@pytest.mark.parametrize(("text", "message"), [
    ("AAPL\nAPPLE$\n", "line 2: 'APPLE$' is not a ticker"),
    ("# nothing\n", "no tickers in it"),
])
def test_a_bad_targets_file_is_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("$", r"\$")):
        scanner.read_targets(path)


def test_a_missing_targets_file_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        scanner.read_targets(tmp_path / "missing.txt")


# -- commands --------------------------------------------------------------------------------------


def test_factoryline_scan_prints_the_summary_and_exits_1_when_a_ticker_failed(scanner_env, tmp_path, capsys):
    targets = tmp_path / "targets.txt"
    targets.write_text("UPUP ZZZZ\n")
    parser = argparse.ArgumentParser()
    scanner_cli.register(parser.add_subparsers())
    args = parser.parse_args(["scan", "--targets", str(targets), "--no-redis"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "scanned 1 of 2 tickers" in out and "in trade: 1" in out and "ZZZZ: no daily bars" in out


def test_scanner_check_with_a_missing_key_is_one_line_and_status_2(clean_env, capsys):
    from services.scanner.__main__ import main

    assert main(["--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ALPACA_API_KEY" in err


def test_scanner_check_passes_with_valid_settings_and_redis(scanner_env, capsys):
    from services.scanner.__main__ import main

    assert main(["--check"]) == 0
    assert "scanner: ok" in capsys.readouterr().out


def test_scan_job_enqueued_on_the_scanner_queue_runs_in_the_worker(scanner_env, keys):
    from shared.bus import connect_rq
    from shared.queues import enqueue, run_worker

    connection = connect_rq(redis_url())
    job = enqueue(connection, keys, "scanner", "services.scanner.jobs.scan_targets", kwargs={"now": NOW})
    run_worker(connection, keys, "scanner", burst=True)
    job.refresh()
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value()["in_trade"] == 2
    assert sorted(read_logs(scanner_env)) == ["DOWN", "FAKE", "UPUP"]
    connection.close()


def test_a_blank_targets_setting_scans_the_brokers_universe(scanner_env, clean_env):
    clean_env.setenv("FL_SCAN_TARGETS", "")
    summary = scan_targets(now=NOW)
    assert (summary["targets"], summary["tickers"], summary["scanned"]) == ("broker universe", 3, 3)


def test_a_bad_scanner_setting_is_one_line_naming_it(clean_env):
    from services.scanner.settings import ScannerSettings
    from shared.config import load
    from shared.errors import ConfigError

    clean_env.setenv("FL_SCAN_MIN_TRADES", "many")
    with pytest.raises(ConfigError, match="^FL_SCAN_MIN_TRADES: ") as raised:
        load(ScannerSettings)
    assert "\n" not in str(raised.value)


# -- the per-ticker decision (pure) -----------------------------------------------------------------


def decide(bars, *strategies):
    from shared.backtest import BlackSheepRule

    entry, _fired = scanner.report_for_ticker("TEST", bars, test_backtest.RULES, 1, (), BlackSheepRule(),
                                              DEFAULT_START, strategies=strategies)
    return entry


def test_a_position_still_open_on_the_latest_bar_is_watching_not_a_new_entry():
    entry = decide(test_backtest.PATH, test_backtest.STRATEGY)
    assert entry.state is ScanState.WATCHING and entry.signal_price is None


def test_a_position_closed_on_the_latest_bar_is_exited():
    entry = decide(test_backtest.PATH[:17], test_backtest.signals_at(0, 1, 2, 4, 6, 8))
    assert entry.state is ScanState.EXITED and entry.trades == 6


def test_a_fresh_entry_is_reported_before_a_better_strategy_that_is_only_watching():
    holding = test_backtest.signals_at(0, 1, 2, 4, 6, 8)  # 5 trades, 2 won; the 6th still open on bar 15
    fresh = replace(test_backtest.signals_at(15), name="fresh")  # no history at all, fires on bar 15
    entry = decide(test_backtest.PATH[:16], holding, fresh)
    assert (entry.strategy, entry.state, entry.verdict) == ("fresh", ScanState.IN_TRADE, Verdict.INSUFFICIENT_DATA)
    assert (entry.signal_date, entry.signal_price) == (date(2024, 1, 17), D("100.2"))
    assert any(note.startswith("hand = WATCHING") for note in entry.notes)


# -- a broker that never answers -------------------------------------------------------------------


@pytest.fixture
def silent_broker():
    """A loopback server that accepts every connection and never answers a byte; yields its URL
    and the list of connections it accepted."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    stop.set()
    thread.join(timeout=5)
    for connection in accepted:
        connection.close()
    listener.close()


def _point_at(env, url: str, tmp_path: Path, targets: str | None) -> None:
    for name, value in {"ALPACA_API_KEY": "sim-key", "ALPACA_SECRET_KEY": "sim-secret", "ALPACA_ENDPOINT": url,
                        "FL_BROKER_TIMEOUT_SECONDS": "0.5", "FL_SIGNALS_DIR": str(tmp_path / "logs"),
                        "FL_SCAN_WORKERS": "1"}.items():
        env.setenv(name, value)
    if targets is not None:
        path = tmp_path / "targets.txt"
        path.write_text(targets)
        env.setenv("FL_SCAN_TARGETS", str(path))


@pytest.mark.parametrize(("targets", "request_name"), [(None, "list assets"), ("AAPL MSFT\n", "get clock")],
                         ids=["asset-listing", "targets-file"])
def test_a_broker_that_never_answers_fails_the_scan_within_its_timeout_with_one_line(
        clean_env, silent_broker, tmp_path, capsys, targets, request_name):
    from services.cli import main

    url, accepted = silent_broker
    _point_at(clean_env, url, tmp_path, targets)
    started = time.monotonic()
    status = main(["scan", "--no-redis"])
    elapsed = time.monotonic() - started

    captured = capsys.readouterr()
    assert status == 2
    assert elapsed < 5, f"the scan waited {elapsed:.1f} s on a silent broker"
    assert captured.err == (f"factoryline: error: {request_name}: no answer from the broker within 0.5 s; "
                            "outcome unknown\n")
    assert captured.out == ""
    assert accepted, "the scan never reached the broker"


def test_the_asset_listing_uses_the_brokers_timeout_setting(clean_env, silent_broker, tmp_path):
    from shared.config import BrokerSettings, load
    from shared.errors import BrokerUnavailable

    url, _ = silent_broker
    _point_at(clean_env, url, tmp_path, None)
    clean_env.setenv("FL_BROKER_TIMEOUT_SECONDS", "0.2")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="^list assets: no answer from the broker within 0.2 s"):
        scanner.broker_universe(load(BrokerSettings))
    assert time.monotonic() - started < 3


def test_a_bars_batch_the_broker_does_not_answer_is_not_asked_again_ticker_by_ticker():
    from shared.errors import BrokerUnavailable, OrderRejected

    class Executor:
        def __init__(self, error):
            self.error, self.asked = error, []

        def get_bar_rows(self, symbols, *_args):
            self.asked.append(list(symbols))
            raise self.error

    silent = Executor(BrokerUnavailable("get bars (3 symbols): no answer from the broker within 10 s; outcome unknown"))
    bars, errors = scanner.fetch_daily_bars(silent, ["A", "B", "C", "D"], DEFAULT_START, DEFAULT_START, 3)
    assert silent.asked == [["A", "B", "C"], ["D"]]  # one timeout per batch, not one per ticker
    assert bars == {} and sorted(errors) == ["A", "B", "C", "D"]
    assert errors["A"].startswith("bars request failed: get bars (3 symbols): no answer")

    refusing = Executor(OrderRejected("get bars: invalid symbol"))
    scanner.fetch_daily_bars(refusing, ["A", "B"], DEFAULT_START, DEFAULT_START, 2)
    assert refusing.asked == [["A", "B"], ["A"], ["B"]]  # a refusal still costs only the bad ticker


@pytest.mark.parametrize("adapter", ["alpaca-over-http", "simulated"])
def test_the_bar_rows_give_exactly_the_scan_the_bar_models_give(tmp_path, clean_env, adapter):
    """The scan reads light rows (`get_bar_rows`, no model per bar). On two years of the simulator's seeded
    prices they hold the same digits as the validated `Bar` models, and give the same backtests (every
    trade, win rate, profit factor, open position, signal) and byte-identical logs."""
    handle = start_sim(universe_size=60)
    executor = (AlpacaExecutor(handle.broker_settings()) if adapter == "alpaca-over-http"
                else SimulatedExecutor(handle.engine))
    try:
        tickers = scanner.broker_universe(handle.broker_settings())
        end = executor.get_clock().timestamp
        start = end - timedelta(days=730)
        models = executor.get_bars(tickers, Timeframe.DAY, start, end)
        rows, errors = scanner.fetch_daily_bars(executor, tickers, start, end, 25)
    finally:
        executor.close()
        handle.stop()
    assert errors == {} and sorted(rows) == sorted(models) == tickers and len(tickers) == 60
    rules = ExitRules.from_settings(ExitSettings())
    trades = 0
    for ticker in tickers:
        assert all(type(row) is BarRow for row in rows[ticker])
        assert [tuple(str(value) for value in row) for row in rows[ticker]] == [
            tuple(str(getattr(bar, name)) for name in BarRow._fields) for bar in models[ticker]]
        for strategy in STRATEGIES:
            fast = backtest(ticker, rows[ticker], strategy, rules, 10)
            assert fast == backtest(ticker, models[ticker], strategy, rules, 10)
            trades += fast.trade_count
    assert trades > 500  # not a vacuous comparison: the strategies trade on these prices

    reports = {}
    for name, bars in (("rows", rows), ("models", models)):
        folder = tmp_path / name
        folder.mkdir()
        summary = scanner.write_reports(
            tickers, bars, {}, folder, rules=rules, min_trades=10, black_sheep_rule=BlackSheepRule(),
            live_trades={}, scanned_at=DEFAULT_START, now=end, market_open=True)
        reports[name] = ({**summary.as_dict(), "signals_dir": None},
                         {path.name: path.read_bytes() for path in folder.iterdir()})
    assert reports["rows"] == reports["models"]
    summary, files = reports["rows"]
    assert summary["scanned"] == 60 and len(files) == 60 and summary["signals_found"] > 0
