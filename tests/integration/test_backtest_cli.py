"""`factoryline backtest` as a user runs it: a real subprocess over a CSV history folder."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest

from shared.market.calendar import NEW_YORK

ROOT = Path(__file__).resolve().parents[2]


def write_history(folder: Path, symbols: list[str], days: int, seed: int = 3) -> tuple[date, date]:
    """One SYMBOL.csv per ticker: a random walk of weekday bars from 2015-01-05, split-adjusted."""
    folder.mkdir(parents=True, exist_ok=True)
    start = date(2015, 1, 5)
    sessions, d = [], start
    while len(sessions) < days:
        if d.weekday() < 5:
            sessions.append(d)
        d += timedelta(days=1)
    for n, symbol in enumerate(symbols):
        rng = random.Random(seed + n)
        price = 40.0 + 10 * n
        lines = ["# adjusted: yes", "date,open,high,low,close,volume"]
        for day in sessions:
            o = price * (1 + rng.gauss(0, 0.01))
            c = o * (1 + rng.gauss(0.001, 0.022))
            h, low = max(o, c) * (1 + abs(rng.gauss(0, 0.01))), min(o, c) * (1 - abs(rng.gauss(0, 0.01)))
            lines.append(f"{day},{o:.2f},{h:.2f},{low:.2f},{c:.2f},{rng.randint(200_000, 2_000_000)}")
            price = c
        (folder / f"{symbol}.csv").write_text("\n".join(lines) + "\n")
    return sessions[0], sessions[-1]


def factoryline(args: list[str], tmp_path: Path, env_file: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FL_", "ALPACA_", "REDIS_"))}
    (tmp_path / "empty.env").write_text("")
    env["FL_ENV_FILE"] = str(env_file or tmp_path / "empty.env")
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, date, date]:
    folder = tmp_path_factory.mktemp("history") / "bars"
    first, last = write_history(folder, ["AAA", "BBB", "CCC", "DDD"], 900)
    return folder, first, last


def test_backtest_writes_tearsheet_trades_and_parameters(history, tmp_path):
    folder, first, last = history
    start = first + timedelta(days=400)
    out = tmp_path / "out"
    result = factoryline(["backtest", "--from", str(start), "--to", str(last), "--data", f"csv:{folder}",
                          "--out", str(out), "stop_loss_pct=4", "min_dollar_volume=0"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"folder: {out}" in result.stdout
    assert "total return" in result.stdout
    html = (out / "tearsheet.html").read_text()
    assert "Factory Line backtest tearsheet" in html and 'id="total-return"' in html
    with (out / "trades.csv").open() as handle:
        trades = list(csv.DictReader(handle))
    assert trades, "no trade in three years of four tickers"
    assert {t["symbol"] for t in trades} <= {"AAA", "BBB", "CCC", "DDD"}
    assert all(t["entry_day"] >= str(start) for t in trades)
    assert {t["reason"] for t in trades} - {"stop_loss", "take_profit", "break_even", "trailing", "time_stop", ""} == set()
    params = json.loads((out / "params.json").read_text())
    assert params["settings"]["FL_STOP_LOSS_PCT"] == "4"
    assert params["settings"]["FL_BACKTEST_SLIPPAGE_BPS"] == "5"
    equity = (out / "equity.csv").read_text().splitlines()
    assert equity[0] == "day,equity" and len(equity) > 300


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "2016-13-01", "--to", "2017-01-01"], "--from 2016-13-01: give a date as YYYY-MM-DD"),
    (["--from", "2017-01-01", "--to", "2016-01-01"], "is before --from"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "stop_los_pct=3"], "did you mean stop_loss_pct"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "stop_loss_pct=lots"], "FL_STOP_LOSS_PCT"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "--data", "ftp:nowhere"], "unknown history source"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "--sweep", "stop_loss_pct"], "give name=value1,value2"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "--tolerance-pct", "-1"], "--tolerance-pct -1: give a number"),
    (["--from", "2016-01-01", "--to", "2017-01-01", "--tolerance-pct", "inf"], "--tolerance-pct inf: give a number"),
])
def test_bad_input_is_one_line_and_exit_2(history, tmp_path, args, message):
    folder, _, _ = history
    full = ["backtest", *args] if "--data" in args else ["backtest", "--data", f"csv:{folder}", *args]
    result = factoryline(full, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sweep_ranks_every_combination(history, tmp_path):
    folder, first, last = history
    out = tmp_path / "sweep"
    result = factoryline(["backtest", "--from", str(first + timedelta(days=400)), "--to", str(last),
                          "--data", f"csv:{folder}", "--out", str(out), "--workers", "2", "min_dollar_volume=0",
                          "--sweep", "stop_loss_pct=3,8", "trailing_giveback_pct=30,50",
                          "--out-of-sample", "0.3"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep: 4 combination(s) on 2 process(es)" in result.stdout
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["stop_loss_pct"], r["trailing_giveback_pct"]) for r in rows) == [
        ("3", "30"), ("3", "50"), ("8", "30"), ("8", "50")]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    sharpes = [float(r["sharpe"]) for r in rows if r["sharpe"] != "-"]
    assert sharpes == sorted(sharpes, reverse=True)
    assert all(r["oos sharpe"] for r in rows)


def test_ctrl_c_stops_a_sweep_and_its_workers(tmp_path):
    folder = tmp_path / "bars"
    first, last = write_history(folder, [f"T{i:02d}" for i in range(12)], 1500)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FL_", "ALPACA_"))}
    (tmp_path / "empty.env").write_text("")
    env.update(FL_ENV_FILE=str(tmp_path / "empty.env"), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "backtest", "--from", str(first + timedelta(days=400)),
                             "--to", str(last), "--data", f"csv:{folder}", "--out", str(tmp_path / "out"),
                             "--workers", "2", "min_dollar_volume=0", "--sweep", "stop_loss_pct=3,4,5,6,7,8,9,10"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("sweep: 8 combination(s)"), line + proc.stderr.read()
        time.sleep(1.0)  # the workers are running
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "factoryline: interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "sweep.csv").exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # any worker left in the sweep's process group?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("sweep workers still running after Ctrl-C")


def test_compare_ledger_lists_each_divergence_with_its_cause(history, tmp_path, redis_client, namespace):
    """A ledger written through the ledger's own API (the manager's append_once): the backtest's own
    trades, one left out, one sold for another reason, and one trade the backtest never made."""
    from conftest import redis_url

    from shared import ledger
    from shared.bus import Keys
    from shared.exits import ExitReason
    from shared.history import load
    from shared.ledger import ClosedTrade
    from shared.linebacktest import BacktestSettings, run

    folder, first, last = history
    start = first + timedelta(days=400)
    settings = BacktestSettings.load({"min_dollar_volume": "0"})
    result = run(load(f"csv:{folder}", start=start - timedelta(days=740)), settings, start=start, end=last)
    closed = list(result.closed)
    assert len(closed) >= 3
    keys = Keys(namespace)
    other = ExitReason.TRAILING if closed[1].reason is not ExitReason.TRAILING else ExitReason.BREAK_EVEN
    for i, t in enumerate(closed):
        if i == 0:
            continue  # left out: only in the backtest
        ledger.append_once(redis_client, keys, ClosedTrade(
            symbol=t.symbol, qty=t.qty, entry_price=t.entry_price, exit_price=t.exit_price,
            realized_pl=t.realized_pl, exit_reason=other if i == 1 else t.reason, opened_at=t.entry_at,
            closed_at=t.exit_at, closing_order_id=f"order-{i}", closing_client_order_id=f"fl-x-{i}"))
    extra_day = closed[2].entry_at + timedelta(days=1)
    ledger.append_once(redis_client, keys, ClosedTrade(
        symbol="ZZZ", qty=D("3"), entry_price=D("10"), exit_price=D("11"), realized_pl=D("3"),
        exit_reason=ExitReason.MANUAL, opened_at=extra_day, closed_at=extra_day + timedelta(hours=2),
        closing_order_id="order-manual", closing_client_order_id="manual"))

    out = tmp_path / "cmp"
    env_file = tmp_path / "ledger.env"
    env_file.write_text(f"REDIS_URL={redis_url()}\nFL_NAMESPACE={namespace}\n")
    result_cli = factoryline(["backtest", "--from", str(start), "--to", str(last), "--data", f"csv:{folder}",
                              "--out", str(out), "min_dollar_volume=0", "--compare-ledger"], tmp_path,
                             env_file=env_file)
    assert result_cli.returncode == 0, result_cli.stderr
    assert (f"compare-ledger: {len(closed)} live trade(s), {len(result.trades)} backtest trade(s), "
            f"{len(closed) - 1} matched") in result_cli.stdout
    with (out / "divergences.csv").open() as handle:
        found = {(r["symbol"], r["entry_day"], r["cause"]) for r in csv.DictReader(handle)}
    assert (closed[0].symbol, str(closed[0].entry_day), "only_backtest") in found
    assert (closed[1].symbol, str(closed[1].entry_day), "exit_reason") in found
    assert ("ZZZ", str(extra_day.astimezone(NEW_YORK).date()), "only_live") in found
    assert [cause for _, _, cause in found].count("exit_reason") == 1
