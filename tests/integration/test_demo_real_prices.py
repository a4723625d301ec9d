"""`factoryline demo --data SOURCE` as a person runs it: a real process on real prices, and a day
outside the data refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from needs import require_bokeh_data

ROOT = Path(__file__).resolve().parents[2]

require_bokeh_data()


def _demo(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    (tmp_path / ".env").write_text("")
    env["FL_ENV_FILE"] = str(tmp_path / ".env")
    return subprocess.run([sys.executable, "-m", "services.cli", "demo", *args, "--workdir", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_demo_runs_on_real_prices_across_a_real_split(tmp_path):
    done = _demo("--data", "bokeh", "--day", "2005-02-23", "--days", "4", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = done.stdout
    assert "real prices: bokeh-sampledata 2026.1, unadjusted" in out
    assert "4 trading day(s): 2005-02-23 to 2005-02-28" in out
    assert "AAPL split 2:1 today; position re-based" in out
    assert "every invariant held" in out


def test_days_outside_the_data_are_one_line(tmp_path):
    done = _demo("--data", "bokeh", "--day", "2020-01-02", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "not inside the data" in done.stderr and "Traceback" not in done.stderr
    done = _demo("--data", "csv:/nonexistent.csv", tmp_path=tmp_path)
    assert done.returncode == 2 and "history CSV not found: /nonexistent.csv" in done.stderr
