"""The ranking rules, the 06:00 job's outputs (CSV, Redis, notification) and `factoryline rank`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url

from services.ranker.jobs import rank_signals
from shared.bus import connect_rq
from shared.config import RankerSettings
from shared.queues import enqueue, run_worker
from shared.ranking import rank
from shared.signals import RejectReason, Signal, load_signals_from_redis, read_signals_csv

REPO = Path(__file__).resolve().parents[2]
FACTORYLINE = REPO / ".venv" / "bin" / "factoryline"
NOW = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # 06:00 New York


@pytest.fixture(autouse=True)
def _no_developer_settings(clean_env):
    """Settings come only from what each test sets."""


def settings(**overrides) -> RankerSettings:
    return RankerSettings(_env_file=None, **overrides)


def signal(ticker: str, win_rate: str = "0.6", profit_factor: str = "1.5", trades: int = 20, *,
           state: str = "IN_TRADE", verdict: str = "PROFITABLE", scanned_at: datetime | None = None,
           **fields) -> Signal:
    return Signal(
        ticker=ticker, strategy=fields.pop("strategy", "QuickStrike"), state=state, verdict=verdict,
        win_rate=Decimal(win_rate), trades=trades, profit_factor=Decimal(profit_factor), avg_return=Decimal("0.01"),
        signal_date=date(2026, 11, 23), signal_price=Decimal("50.00"),
        scanned_at=scanned_at or NOW - timedelta(hours=5), source_file=f"{state}_live_qs_{ticker}.log", **fields,
    )


def reasons(result) -> dict[str, RejectReason]:
    return {r.source_file: r.reason for r in result.rejected}


# --- order ----------------------------------------------------------------------------------------


def test_higher_win_rate_ranks_first():
    result = rank([signal("LOW", "0.55"), signal("HIGH", "0.72"), signal("MID", "0.61")], settings(), NOW)
    assert [s.ticker for s in result.kept] == ["HIGH", "MID", "LOW"]
    assert [s.rank for s in result.kept] == [1, 2, 3]


def test_equal_win_rates_are_ordered_by_profit_factor_then_trades_then_ticker():
    result = rank([
        signal("ZED", "0.6", "1.5", 30),
        signal("ABC", "0.6", "1.5", 30),
        signal("MORE", "0.6", "1.5", 45),
        signal("PF", "0.6", "2.1", 11),
        signal("TOP", "0.600001", "1.0", 10),
    ], settings(FL_MAX_POSITIONS=10), NOW)
    assert [s.ticker for s in result.kept] == ["TOP", "PF", "MORE", "ABC", "ZED"]


def test_ranking_does_not_depend_on_the_order_logs_are_read():
    logs = [signal(t, "0.6", "1.5", 30) for t in ("DDD", "BBB", "AAA", "CCC")]
    forward = rank(logs, settings(), NOW)
    backward = rank(list(reversed(logs)), settings(), NOW)
    assert forward == backward and [s.ticker for s in forward.kept] == ["AAA", "BBB", "CCC", "DDD"]


def test_only_the_best_max_positions_are_kept_and_the_rest_are_beyond_max_positions():
    logs = [signal(f"T{i}", f"0.{50 + i}") for i in range(7)]
    result = rank(logs, settings(FL_MAX_POSITIONS=5), NOW)
    assert [s.ticker for s in result.kept] == ["T6", "T5", "T4", "T3", "T2"]
    beyond = [r for r in result.rejected if r.reason is RejectReason.BEYOND_MAX_POSITIONS]
    assert sorted(r.ticker for r in beyond) == ["T0", "T1"]
    assert {r.reason.value for r in beyond} == {"beyond max positions"}


# --- which signals are actionable -----------------------------------------------------------------


def test_only_in_trade_and_profitable_signals_are_kept():
    result = rank([
        signal("KEEP"),
        signal("WATCH", state="WATCHING"),
        signal("DONE", state="EXITED"),
        signal("NONE", state="NO_SIGNAL"),
        signal("LOSER", verdict="UNPROFITABLE"),
        signal("THIN", verdict="INSUFFICIENT_DATA"),
    ], settings(), NOW)
    assert [s.ticker for s in result.kept] == ["KEEP"]
    assert reasons(result) == {
        "WATCHING_live_qs_WATCH.log": RejectReason.NOT_IN_TRADE,
        "EXITED_live_qs_DONE.log": RejectReason.NOT_IN_TRADE,
        "NO_SIGNAL_live_qs_NONE.log": RejectReason.NOT_IN_TRADE,
        "IN_TRADE_live_qs_LOSER.log": RejectReason.NOT_PROFITABLE,
        "IN_TRADE_live_qs_THIN.log": RejectReason.NOT_PROFITABLE,
    }


def test_black_sheep_flagged_in_the_log_is_rejected_unless_allowed():
    logs = [signal("SHEEP", "0.9", black_sheep=True), signal("OK")]
    refused = rank(logs, settings(), NOW)
    assert [s.ticker for s in refused.kept] == ["OK"]
    assert reasons(refused) == {"IN_TRADE_live_qs_SHEEP.log": RejectReason.BLACK_SHEEP}
    allowed = rank(logs, settings(FL_ALLOW_BLACK_SHEEP=True), NOW)
    assert [s.ticker for s in allowed.kept] == ["SHEEP", "OK"]


def test_strategy_listed_as_black_sheep_is_rejected_whatever_its_case():
    logs = [signal("MEAN", "0.9", strategy="MeanRevert"), signal("QS", strategy="QuickStrike")]
    result = rank(logs, settings(FL_BLACK_SHEEP_STRATEGIES=" meanrevert , Gapper"), NOW)
    assert [s.ticker for s in result.kept] == ["QS"]
    [refusal] = result.rejected
    assert refusal.reason is RejectReason.BLACK_SHEEP and "FL_BLACK_SHEEP_STRATEGIES" in refusal.detail
    assert [s.ticker for s in rank(logs, settings(FL_BLACK_SHEEP_STRATEGIES="meanrevert",
                                                  FL_ALLOW_BLACK_SHEEP=True), NOW).kept] == ["MEAN", "QS"]


def test_scan_older_than_max_scan_age_is_stale():
    result = rank([
        signal("OLD", scanned_at=NOW - timedelta(hours=36, minutes=1)),
        signal("EDGE", scanned_at=NOW - timedelta(hours=36)),
        signal("FRESH", scanned_at=NOW - timedelta(hours=2)),
    ], settings(FL_MAX_SCAN_AGE_HOURS=36), NOW)
    assert sorted(s.ticker for s in result.kept) == ["EDGE", "FRESH"]
    [stale] = result.rejected
    assert stale.ticker == "OLD" and stale.reason is RejectReason.STALE_SCAN
    assert "FL_MAX_SCAN_AGE_HOURS=36" in stale.detail


def test_scan_from_the_future_is_rejected_beyond_a_few_minutes_of_clock_skew():
    result = rank([
        signal("SKEW", scanned_at=NOW + timedelta(minutes=2)),
        signal("FUTURE", scanned_at=NOW + timedelta(hours=3)),
    ], settings(), NOW)
    assert [s.ticker for s in result.kept] == ["SKEW"]
    assert reasons(result) == {"IN_TRADE_live_qs_FUTURE.log": RejectReason.FUTURE_SCAN}


def test_backtest_with_fewer_than_min_trades_is_rejected():
    result = rank([signal("FEW", "0.9", trades=9), signal("ENOUGH", trades=10)],
                  settings(FL_MIN_BACKTEST_TRADES=10), NOW)
    assert [s.ticker for s in result.kept] == ["ENOUGH"]
    assert reasons(result) == {"IN_TRADE_live_qs_FEW.log": RejectReason.TOO_FEW_TRADES}


# --- the same ticker under two STATE prefixes -----------------------------------------------------


def test_in_trade_log_older_than_an_exited_log_of_the_same_ticker_is_superseded():
    result = rank([
        signal("AAPL", scanned_at=NOW - timedelta(hours=6)),
        signal("AAPL", state="EXITED", scanned_at=NOW - timedelta(hours=2)),
    ], settings(), NOW)
    assert result.kept == ()
    assert reasons(result) == {
        "IN_TRADE_live_qs_AAPL.log": RejectReason.SUPERSEDED,
        "EXITED_live_qs_AAPL.log": RejectReason.NOT_IN_TRADE,
    }


def test_in_trade_log_newer_than_a_watching_log_of_the_same_ticker_is_kept_once():
    result = rank([
        signal("AAPL", scanned_at=NOW - timedelta(hours=2)),
        signal("AAPL", state="WATCHING", scanned_at=NOW - timedelta(hours=30)),
    ], settings(), NOW)
    assert [s.source_file for s in result.kept] == ["IN_TRADE_live_qs_AAPL.log"]
    assert reasons(result) == {"WATCHING_live_qs_AAPL.log": RejectReason.SUPERSEDED}


def test_two_states_of_one_ticker_scanned_at_the_same_moment_are_both_refused():
    same = NOW - timedelta(hours=2)
    result = rank([signal("AAPL", scanned_at=same), signal("AAPL", state="WATCHING", scanned_at=same)], settings(), NOW)
    assert result.kept == ()
    assert set(reasons(result).values()) == {RejectReason.CONFLICTING_SCANS} and len(result.rejected) == 2


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        rank([], settings(), datetime(2026, 11, 24, 6, 0))


# --- the job: CSV, Redis, notification ------------------------------------------------------------


def scanner_log(ticker: str, state: str = "IN_TRADE", win_rate: str = "60%", scanned_at: str = "2026-11-24T01:30:00-05:00"
                ) -> str:
    return (f"QuickStrike scan\nticker: {ticker}\nstrategy: QuickStrike\nstatus: {state}\nverdict: PROFITABLE\n"
            f"win_rate: {win_rate}\ntrades: 25\nprofit_factor: 1.7\navg_return: 0.9%\nsignal_date: 2026-11-23\n"
            f"signal_price: 42.50\nscanned_at: {scanned_at}\n")


def make_logs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "IN_TRADE_live_qs_AAPL.log").write_text(scanner_log("AAPL", win_rate="63.5%"))
    (folder / "IN_TRADE_live_qs_MSFT.log").write_text(scanner_log("MSFT", win_rate="71%"))
    (folder / "WATCHING_live_qs_TSLA.log").write_text(scanner_log("TSLA", "WATCHING"))
    (folder / "IN_TRADE_live_qs_BAD.log").write_bytes(b"\x00\x01\x02")
    return folder


def test_job_writes_the_csv_the_new_york_days_redis_list_and_a_notification(tmp_path, redis_client, keys, namespace,
                                                                             monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("FL_NAMESPACE", namespace)
    listener = redis_client.pubsub()
    listener.subscribe(keys.notifications)
    listener.get_message(timeout=1)  # the subscribe confirmation
    folder = make_logs(tmp_path / "logs")

    # 01:30 UTC on the 25th is still the 24th in New York
    summary = rank_signals(str(folder), str(tmp_path / "signals.csv"), now="2026-11-25T01:30:00+00:00")

    assert summary["day"] == "2026-11-24"
    assert [s["ticker"] for s in summary["kept"]] == ["MSFT", "AAPL"]
    assert {r["source_file"]: r["reason"] for r in summary["rejected"]} == {
        "WATCHING_live_qs_TSLA.log": "not IN_TRADE", "IN_TRADE_live_qs_BAD.log": "binary content"}
    json.dumps(summary)  # an RQ job result must be JSON
    from_redis = load_signals_from_redis(redis_client, keys, date(2026, 11, 24))
    assert [(s.rank, s.ticker) for s in from_redis] == [(1, "MSFT"), (2, "AAPL")]
    assert from_redis == read_signals_csv(tmp_path / "signals.csv")
    assert summary["redis_key"] == keys.signals(date(2026, 11, 24))
    assert 0 < redis_client.ttl(summary["redis_key"]) <= 4 * 24 * 3600
    notice = listener.get_message(timeout=2)
    listener.close()
    assert notice is not None
    assert json.loads(notice["data"]) == {"kind": "signals_ranked", "day": "2026-11-24", "kept": 2, "rejected": 2,
                                          "tickers": ["MSFT", "AAPL"]}


def test_job_rerun_rewrites_the_same_list(tmp_path, redis_client, keys, namespace, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("FL_NAMESPACE", namespace)
    folder = make_logs(tmp_path / "logs")
    first = rank_signals(str(folder), str(tmp_path / "a.csv"), now="2026-11-24T11:00:00+00:00")
    second = rank_signals(str(folder), str(tmp_path / "a.csv"), now="2026-11-24T11:00:00+00:00")
    assert first == second
    assert len(load_signals_from_redis(redis_client, keys, date(2026, 11, 24))) == 2


def test_job_enqueued_on_the_ranker_queue_runs_in_the_worker_and_returns_its_summary(
        tmp_path, redis_client, keys, namespace, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("FL_NAMESPACE", namespace)
    folder = make_logs(tmp_path / "logs")
    connection = connect_rq(redis_url())
    job = enqueue(connection, keys, "ranker", "services.ranker.jobs.rank_signals",
                  kwargs={"signals_dir": str(folder), "csv_path": str(tmp_path / "out.csv"),
                          "now": "2026-11-24T11:00:00+00:00"})
    run_worker(connection, keys, "ranker", burst=True)
    job.refresh()
    assert job.get_status() == "finished", job.latest_result()
    assert [s["ticker"] for s in job.return_value()["kept"]] == ["MSFT", "AAPL"]
    assert [s.ticker for s in load_signals_from_redis(redis_client, keys, date(2026, 11, 24))] == ["MSFT", "AAPL"]
    connection.close()


def test_job_takes_folder_csv_and_limits_from_settings(tmp_path, monkeypatch):
    folder = make_logs(tmp_path / "scanner")
    monkeypatch.setenv("FL_SIGNALS_DIR", str(folder))
    monkeypatch.setenv("FL_SIGNALS_CSV", str(tmp_path / "out.csv"))
    monkeypatch.setenv("FL_MAX_POSITIONS", "1")
    summary = rank_signals(use_redis=False, now="2026-11-24T11:00:00+00:00")
    assert [s.ticker for s in read_signals_csv(tmp_path / "out.csv")] == ["MSFT"]
    assert summary["redis_key"] is None
    assert {"source_file": "IN_TRADE_live_qs_AAPL.log", "ticker": "AAPL", "reason": "beyond max positions",
            "detail": "ranked 2; FL_MAX_POSITIONS=1"} in summary["rejected"]


# --- the commands, as a user runs them ------------------------------------------------------------


def run_command(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FL_", "ALPACA_", "REDIS_URL"))}
    return subprocess.run(args, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60)


def test_factoryline_rank_prints_the_kept_and_rejected_tables(tmp_path, namespace):
    folder = tmp_path / "logs"
    folder.mkdir()
    fresh = datetime.now(UTC).isoformat(timespec="seconds")
    (folder / "IN_TRADE_live_qs_AAPL.log").write_text(scanner_log("AAPL", win_rate="63.5%", scanned_at=fresh))
    (folder / "IN_TRADE_live_qs_MSFT.log").write_text(scanner_log("MSFT", win_rate="71%", scanned_at=fresh))
    (folder / "IN_TRADE_live_qs_OLD.log").write_text(scanner_log("OLD", scanned_at="2020-01-02T01:30:00-05:00"))
    (folder / "IN_TRADE_live_qs_BAD.log").write_bytes(b"\xff\xfe garbage")

    done = run_command([str(FACTORYLINE), "rank", "--dir", str(folder), "--csv", "out.csv", "--no-redis"],
                       tmp_path, FL_NAMESPACE=namespace)

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ranked 4 logs" in out and "2 kept, 2 rejected" in out
    assert "rank  ticker  strategy     win rate  profit factor  trades  signal price  scanned at" in out
    msft, aapl = out.index("    1  MSFT  "), out.index("    2  AAPL  ")
    assert msft < aapl
    assert "71.00%" in out and "63.50%" in out and "42.50" in out
    assert any(line.split()[:3] == ["IN_TRADE_live_qs_BAD.log", "not", "UTF-8"] for line in out.splitlines())
    assert any(line.split()[:3] == ["IN_TRADE_live_qs_OLD.log", "stale", "scan"] for line in out.splitlines())
    assert "not written (--no-redis)" in out
    assert [s.ticker for s in read_signals_csv(tmp_path / "out.csv")] == ["MSFT", "AAPL"]


def test_factoryline_rank_on_a_missing_folder_prints_one_line_and_exits_2(tmp_path):
    done = run_command([str(FACTORYLINE), "rank", "--dir", str(tmp_path / "nope"), "--no-redis"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("factoryline: error: signals folder not found:") and "nope" in done.stderr
    assert not (tmp_path / "actionable_signals.csv").exists()


def test_factoryline_rank_with_a_bad_setting_names_the_variable(tmp_path):
    done = run_command([str(FACTORYLINE), "rank", "--dir", str(tmp_path), "--no-redis"], tmp_path,
                       FL_MAX_POSITIONS="lots")
    assert done.returncode == 2 and done.stderr.startswith("factoryline: error: FL_MAX_POSITIONS:")
    assert done.stderr.count("\n") == 1


def test_ranker_worker_check_passes_with_valid_config_and_a_live_redis(tmp_path, namespace):
    done = run_command([sys.executable, "-m", "services.ranker", "--check"], tmp_path,
                       REDIS_URL=redis_url(), FL_NAMESPACE=namespace)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ranker: ok:") and f"{namespace}-ranker" in done.stdout


def test_ranker_worker_check_fails_in_one_line_when_redis_does_not_answer(tmp_path):
    done = run_command([sys.executable, "-m", "services.ranker", "--check"], tmp_path,
                       REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode == 2
    assert done.stderr.startswith("ranker: error: Redis:") and done.stderr.count("\n") == 1
