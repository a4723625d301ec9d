"""What the trader trusts in the day's list: nothing it can check again (issue 13).

- The ranker's rules are re-applied to whatever the trader reads (Redis or CSV); a signal failing one is
  dropped with its reason (a WARNING line each, listed in the run's summary).
- With FL_SIGNALS_HMAC_KEY the ranker signs the day's Redis list and the trader refuses an unsigned or
  altered one (nothing bought, one ERROR line).
- A CSV path must be a regular file (a FIFO, /dev/zero, a directory are refused at once), is read
  through a size cap, and may start with a UTF-8 byte-order mark.

The trader runs its real job (`trade_signals`) over alpaca-py against the simulated market's server and
the real Redis, as in tests/integration/test_trader.py (the simulator's now: Monday 2024-03-04 10:00 New York).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import ROOT, sim  # noqa: F401 - the `sim` fixture
from test_trader import DAY, FIVE, buy_orders, market_prices, rank_today, signal, trader  # noqa: F401 - fixtures

from services.ranker.jobs import rank_signals
from services.trader.cli import exit_status, render
from services.trader.jobs import trade_signals
from shared import logs, signals, userfiles
from shared.config import RankerSettings, load
from shared.errors import ConfigError, InputError
from shared.ranking import recheck
from shared.signals import RejectReason, ScanState, Signal, Verdict

KEY = "k" * 8 + "0123456789abcdef0123456789abcdef"  # 40 characters
NOW = datetime(2024, 3, 4, 15, 0, tzinfo=UTC)  # the simulator's now, 10:00 New York


def good(tickers: list[str]) -> list[Signal]:
    """A list the ranker would write this morning: ranked 1..n, at the market's prices."""
    prices = market_prices(tickers)
    return [signal(t, i + 1, prices[t]) for i, t in enumerate(tickers)]


def save_raw(redis_client, keys, items: list, day: date = DAY) -> None:
    redis_client.set(keys.signals(day), json.dumps(items))


def bad_list() -> list:
    """One signal per rule the ranker enforces, each failing only that rule."""
    return [
        signal("WATCH", 1).model_copy(update={"state": ScanState.WATCHING}).model_dump(mode="json"),
        signal("LOSER", 2).model_copy(update={"verdict": Verdict.UNPROFITABLE}).model_dump(mode="json"),
        signal("NONE", 3).model_copy(update={"trades": 0}).model_dump(mode="json"),
        signal("OLD", 4).model_copy(update={"scanned_at": datetime(1999, 3, 4, 11, tzinfo=UTC),
                                            "signal_date": date(1999, 3, 3)}).model_dump(mode="json"),
        signal("SHEEP", 5).model_copy(update={"black_sheep": True}).model_dump(mode="json"),
        signal("SOON", 6).model_copy(update={"scanned_at": NOW + timedelta(hours=3)}).model_dump(mode="json"),
        {**signal("AAPL", 7).model_dump(mode="json"), "ticker": "aapl\nerror forged"},
        {**signal("MSFT", 8).model_dump(mode="json"), "win_rate": "1.5"},
        {**signal("NVDA", 9).model_dump(mode="json"), "trades": -1},
        "not a signal",
    ]


def dropped_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "signal_dropped"]


# --- A: the ranker's rules, again, on whatever the trader reads -----------------------------------


def test_a_list_of_bad_signals_in_redis_buys_nothing_and_says_why_for_each(trader, redis_client, keys, caplog):  # noqa: F811
    save_raw(redis_client, keys, bad_list())
    with caplog.at_level(logging.WARNING, logger="shared.signals"):
        summary = trade_signals()
    assert buy_orders(trader) == []
    assert summary["status"] == "no_signals" and exit_status(summary) == 0
    reasons = [(d["ticker"], d["reason"]) for d in summary["signals_dropped"]]
    assert reasons == [
        ("'aapl\\nerror forged'", "malformed signal"),
        ("MSFT", "malformed signal"),
        ("NVDA", "malformed signal"),
        (None, "malformed signal"),
        ("WATCH", "not IN_TRADE"),
        ("LOSER", "verdict not PROFITABLE"),
        ("NONE", "too few backtest trades"),
        ("OLD", "stale scan"),
        ("SHEEP", "black-sheep strategy"),
        ("SOON", "scanned_at in the future"),
    ]
    details = {d["ticker"]: d["detail"] for d in summary["signals_dropped"]}
    assert "win_rate: Input should be less than or equal to 1" in details["MSFT"]
    assert details["'aapl\\nerror forged'"].startswith(f"item 7 of {keys.signals(DAY)}: ticker: ")
    assert "FL_MAX_SCAN_AGE_HOURS=36" in details["OLD"]
    # One WARNING line per dropped signal, with its reason; a forged newline stays escaped.
    records = dropped_records(caplog)
    assert len(records) == 10 and all(r.levelno == logging.WARNING for r in records)
    assert {r.fields["reason"] for r in records} >= {"not IN_TRADE", "stale scan", "malformed signal"}
    assert all("\n" not in str(r.fields["symbol"]) for r in records)
    shown = render(summary)
    assert "dropped by the re-check of the ranker's rules (10)" in shown and "stale scan" in shown


def test_a_good_list_still_buys_and_bad_signals_mixed_in_are_dropped(trader, redis_client, keys):  # noqa: F811
    save_raw(redis_client, keys, [s.model_dump(mode="json") for s in good(["AAPL", "MSFT"])] + bad_list()[:4])
    summary = trade_signals()
    assert summary["status"] == "done"
    assert sorted(o["symbol"] for o in buy_orders(trader)) == ["AAPL", "MSFT"]
    assert len(summary["signals_dropped"]) == 4
    assert "dropped by the re-check of the ranker's rules (4)" in render(summary)


def test_the_unmodified_ranked_list_is_bought_in_full(trader, redis_client, keys):  # noqa: F811
    rank_today(redis_client, keys, FIVE)
    summary = trade_signals()
    assert summary["counts"] == {"submitted": 5} and summary["signals_dropped"] == []


def test_more_than_max_positions_keeps_the_best_ranked(trader, clean_env, redis_client, keys):  # noqa: F811
    clean_env.setenv("FL_MAX_POSITIONS", "2")
    # Listed out of order: the list's ranks decide, not the position.
    listed = list(reversed(good(["AAPL", "MSFT", "NVDA"])))
    signals.save_signals_to_redis(redis_client, keys, DAY, listed)
    summary = trade_signals()
    assert sorted(o["symbol"] for o in buy_orders(trader)) == ["AAPL", "MSFT"]
    assert [(d["ticker"], d["reason"], d["detail"]) for d in summary["signals_dropped"]] == [
        ("NVDA", "beyond max positions", "rank 3 in the list; FL_MAX_POSITIONS=2")]


def test_a_ticker_listed_twice_keeps_its_newer_scan_only(trader, redis_client, keys):  # noqa: F811
    aapl, msft = good(["AAPL", "MSFT"])
    older = aapl.model_copy(update={"scanned_at": datetime(2024, 3, 4, 10, tzinfo=UTC)})
    signals.save_signals_to_redis(redis_client, keys, DAY, [older, aapl.model_copy(update={"rank": 2}), msft])
    summary = trade_signals()
    assert sorted(o["symbol"] for o in buy_orders(trader)) == ["AAPL", "MSFT"]
    assert [(d["ticker"], d["reason"]) for d in summary["signals_dropped"]] == [
        ("AAPL", "superseded by a newer scan of the ticker")]


def test_a_stale_or_thin_csv_signal_is_dropped_too(trader, tmp_path):  # noqa: F811
    path = tmp_path / "actionable_signals.csv"
    aapl, msft, nvda = good(["AAPL", "MSFT", "NVDA"])
    stale = msft.model_copy(update={"scanned_at": datetime(2024, 3, 1, 11, tzinfo=UTC)})
    thin = nvda.model_copy(update={"trades": 3})
    signals.write_signals_csv(path, [aapl, stale, thin])
    summary = trade_signals(csv_path=str(path))
    assert [o["symbol"] for o in buy_orders(trader)] == ["AAPL"]
    assert [(d["ticker"], d["reason"]) for d in summary["signals_dropped"]] == [
        ("MSFT", "stale scan"), ("NVDA", "too few backtest trades")]


def test_black_sheep_strategies_and_allow_black_sheep_apply_as_in_the_ranker(trader, clean_env, redis_client, keys):  # noqa: F811
    clean_env.setenv("FL_BLACK_SHEEP_STRATEGIES", "quickstrike")
    rank_today(redis_client, keys, ["AAPL"])
    assert trade_signals()["signals_dropped"][0]["reason"] == "black-sheep strategy"
    clean_env.setenv("FL_ALLOW_BLACK_SHEEP", "true")
    assert [o["symbol"] for o in buy_orders(trader)] == []
    trade_signals()
    assert [o["symbol"] for o in buy_orders(trader)] == ["AAPL"]


def test_recheck_is_the_rankers_rules_in_the_lists_order():
    listed = [signal("B", 2), signal("A", 1), signal("C", None).model_copy(update={"trades": 1}), signal("D", None)]
    result = recheck(listed, RankerSettings(_env_file=None, FL_MAX_POSITIONS=2), NOW)
    assert [s.ticker for s in result.kept] == ["A", "B"]
    assert [(r.ticker, r.reason) for r in result.rejected] == [
        ("C", RejectReason.TOO_FEW_TRADES), ("D", RejectReason.BEYOND_MAX_POSITIONS)]
    with pytest.raises(ValueError, match="timezone-aware"):
        recheck(listed, RankerSettings(_env_file=None), NOW.replace(tzinfo=None))


# --- B: the signed list ----------------------------------------------------------------------------


def test_a_list_signed_with_the_key_is_bought(trader, clean_env, redis_client, keys):  # noqa: F811
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    signals.save_signals_to_redis(redis_client, keys, DAY, good(FIVE), hmac_key=KEY)
    assert redis_client.get(keys.signals_signature(DAY)).startswith("hmac-sha256:")
    summary = trade_signals()
    assert summary["counts"] == {"submitted": 5}


def test_an_unsigned_list_is_refused_whole_when_the_key_is_set(trader, clean_env, redis_client, keys, caplog):  # noqa: F811
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    rank_today(redis_client, keys, FIVE)
    with caplog.at_level(logging.DEBUG):
        summary = trade_signals()
    assert buy_orders(trader) == []
    assert summary["status"] == "signals_refused" and "is not signed" in summary["reason"]
    assert exit_status(summary) == 1 and "refused: " in render(summary)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == ["signals_refused"]
    assert "FL_SIGNALS_HMAC_KEY is set" in errors[0].fields["reason"]


@pytest.mark.parametrize("alter", [
    pytest.param(lambda items: items[0].update(ticker="TSLA"), id="ticker-swapped"),
    pytest.param(lambda items: items.append(dict(items[0], ticker="TSLA")), id="signal-added"),
    pytest.param(lambda items: items.pop(), id="signal-removed"),
    pytest.param(lambda items: items[1].update(win_rate="0.99"), id="win-rate-raised"),
])
def test_an_altered_signed_list_is_refused_whole(trader, clean_env, redis_client, keys, caplog, alter):  # noqa: F811
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    signals.save_signals_to_redis(redis_client, keys, DAY, good(FIVE), hmac_key=KEY)
    items = json.loads(redis_client.get(keys.signals(DAY)))
    alter(items)
    redis_client.set(keys.signals(DAY), json.dumps(items))
    with caplog.at_level(logging.DEBUG):
        summary = trade_signals()
    assert buy_orders(trader) == []
    assert summary["status"] == "signals_refused" and "signature does not match" in summary["reason"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["signals_refused"]


def test_a_list_signed_with_another_key_or_for_another_day_is_refused(trader, clean_env, redis_client, keys):  # noqa: F811
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    ranked = good(FIVE)
    signals.save_signals_to_redis(redis_client, keys, DAY, ranked, hmac_key="another key " * 4)
    assert trade_signals()["status"] == "signals_refused"
    # Friday's signed list copied under Monday's key (replay): the day is part of what is signed.
    friday = DAY - timedelta(days=3)
    signals.save_signals_to_redis(redis_client, keys, friday, ranked, hmac_key=KEY)
    redis_client.set(keys.signals(DAY), redis_client.get(keys.signals(friday)))
    redis_client.set(keys.signals_signature(DAY), redis_client.get(keys.signals_signature(friday)))
    assert trade_signals()["status"] == "signals_refused"
    assert buy_orders(trader) == []


def test_without_the_key_a_signature_is_neither_needed_nor_checked(trader, redis_client, keys):  # noqa: F811
    signals.save_signals_to_redis(redis_client, keys, DAY, good(["AAPL"]), hmac_key="another key " * 4)
    assert trade_signals()["counts"] == {"submitted": 1}


def test_ranking_without_the_key_removes_an_old_signature(redis_client, keys):
    signals.save_signals_to_redis(redis_client, keys, DAY, [signal("AAPL")], hmac_key=KEY)
    signals.save_signals_to_redis(redis_client, keys, DAY, [signal("AAPL")])
    assert redis_client.get(keys.signals_signature(DAY)) is None


def scanner_log(ticker: str, price: Decimal, scanned_at: str) -> str:
    return (f"ticker: {ticker}\nstrategy: QuickStrike\nstatus: IN_TRADE\nverdict: PROFITABLE\nwin_rate: 62%\n"
            f"trades: 25\nprofit_factor: 1.9\navg_return: 1.2%\nsignal_date: 2024-03-01\nsignal_price: {price}\n"
            f"scanned_at: {scanned_at}\n")


def test_the_rankers_signed_list_is_what_the_trader_buys(trader, clean_env, redis_client, keys, tmp_path):  # noqa: F811
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    folder = tmp_path / "logs"
    folder.mkdir()
    for ticker, price in market_prices(["AAPL", "MSFT"]).items():
        (folder / f"IN_TRADE_live_qs_{ticker}.log").write_text(scanner_log(ticker, price, "2024-03-04T02:00:00-05:00"))
    ranked = rank_signals(str(folder), str(tmp_path / "signals.csv"), now="2024-03-04T06:00:00-05:00")
    assert [s["ticker"] for s in ranked["kept"]] == ["AAPL", "MSFT"]
    summary = trade_signals()
    assert summary["counts"] == {"submitted": 2}


def test_the_key_is_a_secret_masked_everywhere(clean_env, tmp_path):
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", KEY)
    settings = load(RankerSettings)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
    masked = logs.redact(f"key={KEY}")
    assert KEY not in masked and "***" in masked
    result = subprocess.run([sys.executable, "-m", "services.cli", "config", "--no-broker"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "FL_SIGNALS_HMAC_KEY = (set, hidden)" in result.stdout and KEY not in result.stdout + result.stderr


def test_a_short_key_is_a_config_error_naming_the_variable(clean_env):
    clean_env.setenv("FL_SIGNALS_HMAC_KEY", "short")
    with pytest.raises(ConfigError, match="FL_SIGNALS_HMAC_KEY: must be at least 32 characters"):
        load(RankerSettings)


# --- C: the CSV file -------------------------------------------------------------------------------


def in_time(call, seconds: float = 2.0):
    """Run `call` in a thread; fail (never hang) when it has not returned within `seconds`."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still reading after {seconds} s"
    return outcome, time.monotonic() - start


@pytest.mark.timeout(10)
def test_dev_zero_is_refused_at_once():
    outcome, took = in_time(lambda: signals.read_signals_csv("/dev/zero"))
    assert isinstance(outcome.get("error"), InputError)
    assert str(outcome["error"]) == "/dev/zero: the signals file must be a regular file; this is a device"
    assert took < 1


@pytest.mark.timeout(10)
def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "signals.csv"
    os.mkfifo(fifo)
    outcome, took = in_time(lambda: signals.read_signals_csv(fifo))
    assert "must be a regular file; this is a FIFO (named pipe)" in str(outcome.get("error"))
    assert took < 1


def test_a_directory_and_a_missing_file_are_one_line_each(tmp_path):
    with pytest.raises(InputError, match="this is a directory$"):
        signals.read_signals_csv(tmp_path)
    with pytest.raises(InputError, match="^signals file not found: "):
        signals.read_signals_csv(tmp_path / "nope.csv")


def test_a_file_over_the_cap_is_refused_unread(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as handle:  # sparse: 10 MiB + 1 byte of nothing
        handle.truncate(signals.MAX_SIGNALS_CSV_BYTES + 1)
    with pytest.raises(InputError, match=r"is 10485761 bytes, over its 10 MiB limit"):
        signals.read_signals_csv(path)


def test_the_read_itself_stops_at_the_cap_when_the_size_said_less():
    # /proc files say 0 bytes and hold more: only the bounded read can stop them.
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(InputError, match="over its 1024 bytes limit"):
        with userfiles.open_text("/proc/self/maps", max_bytes=1024, what="test file") as text:
            text.read()
    with userfiles.open_text("/proc/self/maps", max_bytes=10 * 1024 * 1024, what="test file") as text:
        assert text.read()


def test_a_csv_utf8_file_from_excel_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "actionable_signals.csv"
    ranked = [signal("AAPL", 1), signal("MSFT", 2)]
    signals.write_signals_csv(path, ranked)
    excel = b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(excel)
    assert signals.read_signals_csv(path) == ranked


def test_the_trader_buys_from_a_byte_order_marked_csv_and_refuses_dev_zero(trader, tmp_path):  # noqa: F811
    path = tmp_path / "actionable_signals.csv"
    signals.write_signals_csv(path, good(["AAPL"]))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert trade_signals(csv_path=str(path))["counts"] == {"submitted": 1}
    with pytest.raises(InputError, match="must be a regular file"):
        trade_signals(csv_path="/dev/zero")


def test_factoryline_trade_csv_dev_zero_is_one_line_and_exit_2(trader, tmp_path):  # noqa: F811
    result = subprocess.run([sys.executable, "-m", "services.cli", "trade", "--csv", "/dev/zero"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url()})
    assert result.returncode == 2
    assert result.stderr == ("factoryline: error: /dev/zero: the signals file must be a regular file; "
                             "this is a device\n")


def test_load_for_trading_reads_the_day_never_ranked_as_none(redis_client, keys):
    checked = signals.load_for_trading(redis_client, keys, DAY, NOW, settings=RankerSettings(_env_file=None))
    assert checked.signals is None and checked.dropped == () and checked.refused is None


def test_a_redis_value_that_is_not_a_list_is_an_input_error(redis_client, keys):
    redis_client.set(keys.signals(DAY), '{"ticker": "AAPL"}')
    with pytest.raises(InputError, match="expected a JSON list"):
        signals.load_for_trading(redis_client, keys, DAY, NOW, settings=RankerSettings(_env_file=None))


def test_freshness_is_the_rankers_rule_scanned_at_not_signal_date():
    # The ranker judges freshness by scanned_at alone (not in the future, not older than
    # FL_MAX_SCAN_AGE_HOURS); the trader reuses that rule as it is, so signal_date is not judged.
    old_bar = signal("AAPL", 1).model_copy(update={"signal_date": date(2024, 2, 26)})
    assert recheck([old_bar], RankerSettings(_env_file=None), NOW).kept == (old_bar,)
    just_stale = signal("MSFT", 2).model_copy(update={"scanned_at": NOW - timedelta(hours=36, seconds=1)})
    assert recheck([just_stale], RankerSettings(_env_file=None), NOW).rejected[0].reason is RejectReason.STALE_SCAN


# --- C: the simulator's bars CSV (--bars-csv) is a user-given CSV too ------------------------------


@pytest.mark.timeout(10)
def test_bars_csv_dev_zero_is_refused_at_once_and_a_byte_order_mark_is_read(tmp_path):
    from simhelpers import DEFAULT_START

    from sim.engine import MarketEngine

    outcome, took = in_time(lambda: MarketEngine.create(start=DEFAULT_START, bars_csv=Path("/dev/zero")))
    assert str(outcome.get("error")) == "/dev/zero: the bars CSV must be a regular file; this is a device"
    assert took < 1
    bars = tmp_path / "bars.csv"
    bars.write_bytes(b"\xef\xbb\xbfsymbol,timestamp,open,high,low,close,volume\r\n"
                     b"ACME,2024-03-01,10.00,10.50,9.80,10.20,100000\r\n")
    engine = MarketEngine.create(start=DEFAULT_START, bars_csv=bars)
    assert [a.symbol for a in engine.assets()] == ["ACME"]
