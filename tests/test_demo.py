"""`factoryline demo` as a newcomer runs it: a real process, no REDIS_URL, no keys, loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "services.cli", "demo", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


def test_demo_ranks_trades_and_protects_a_day_without_redis_or_keys(tmp_path):
    result = _demo(tmp_path, "--workdir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "redis: embedded" in out
    assert "== 06:00 ranker" in out and "win_rate '135%' is not between 0% and 100%" in out
    assert "5 submitted" in out
    assert "== 09:36 manager protected 5 position(s)" in out
    assert "Traceback" not in result.stderr
    csv_rows = (tmp_path / "out" / "actionable_signals.csv").read_text().splitlines()
    assert len(csv_rows) == 6  # header + the five kept signals


def test_demo_with_the_same_seed_prints_the_same_day(tmp_path):
    first, second = _demo(tmp_path, "--seed", "3"), _demo(tmp_path, "--seed", "3")
    assert first.returncode == second.returncode == 0

    def strip_paths(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "/tmp" not in line and "csv:" not in line)

    assert strip_paths(first.stdout) == strip_paths(second.stdout)


def test_demo_refuses_a_holiday_in_one_line(tmp_path):
    result = _demo(tmp_path, "--day", "2026-11-26")
    assert result.returncode == 2
    assert result.stderr.strip() == "factoryline: error: --day 2026-11-26 is not an NYSE trading day"
