"""`factoryline demo` as a newcomer runs it: a real process, no REDIS_URL, no keys, loopback only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from services.demo import audit

ROOT = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "services.cli", "demo", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_demo_runs_three_days_through_the_line_and_every_invariant_holds(tmp_path):
    result = _demo(tmp_path, "--days", "3", "--workdir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "redis: embedded" in out
    assert "05:00 scanner:" in out and "06:00 ranker:" in out and "09:35 trader:" in out
    assert re.search(r"^  \d\d:\d\d:\d\d fill  buy ", out, re.M), "no entry fill line"
    assert re.search(r"^  \d\d:\d\d:\d\d exit  \S+ .*\((stop_loss|take_profit|trailing|break_even|time_stop)",
                     out, re.M), "no exit line"
    assert re.search(r"^streamer: trade updates went through the Redis stream \S+ to the manager$", out, re.M)
    assert "day 3/3" in out and "== final report" in out
    section = out.split("== safety invariants", 1)[1]
    assert [line.split()[0] for line in section.splitlines()[1:7]] == ["held"] * 6
    assert "every invariant held" in section and "VIOLATED" not in section
    html = Path(re.search(r"^HTML report: (.+)$", out, re.M).group(1))
    assert html.is_file() and html.parent.parent == tmp_path / "out"
    assert "sim-secret" not in out + result.stderr
    assert "Traceback" not in result.stderr


def test_demo_with_the_same_seed_prints_the_same_story(tmp_path):
    first = _demo(tmp_path, "--seed", "3", "--days", "2")
    second = _demo(tmp_path, "--seed", "3", "--days", "2")
    assert first.returncode == second.returncode == 0

    def strip_paths(text: str) -> str:
        return "\n".join(line for line in text.splitlines()
                         if "/tmp" not in line and "http://" not in line and "Redis key" not in line)

    assert " fill " in first.stdout
    assert strip_paths(first.stdout) == strip_paths(second.stdout)


def test_demo_refuses_a_holiday_in_one_line(tmp_path):
    result = _demo(tmp_path, "--day", "2026-11-26")
    assert result.returncode == 2
    assert result.stderr.strip() == "factoryline: error: --day 2026-11-26 is not an NYSE trading day"


def test_audit_calls_a_sell_beyond_the_shares_held_a_violation():
    at = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    fills = [
        {"symbol": "AAPL", "side": "buy", "qty": Decimal(10), "price": Decimal(100), "timestamp": at,
         "position_qty_after": Decimal(10)},
        {"symbol": "AAPL", "side": "sell", "qty": Decimal(12), "price": Decimal(101), "timestamp": at,
         "position_qty_after": Decimal(-2)},
    ]
    check = audit.no_oversell({"fills": fills, "rejections": []})
    assert not check.held and "AAPL sold 12 holding 10" in check.detail


def test_audit_calls_an_unprotected_fill_a_violation():
    at = datetime(2026, 11, 2, 15, 0, tzinfo=UTC)
    fills = [{"symbol": "AAPL", "side": "buy", "qty": Decimal(10), "price": Decimal(100), "timestamp": at,
              "position_qty_after": Decimal(10)}]
    check = audit.stops_cover_fills({"fills": fills, "orders": []})
    assert not check.held and "AAPL 10 shares" in check.detail
