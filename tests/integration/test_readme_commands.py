"""The README's two commands, as a newcomer runs them: a clean copy of the repository (tracked files
only), no .venv, no REDIS_URL, no keys. The scripts must create their own virtual environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("```", 2)[1]
    return [line.split("#", 1)[0].strip() for line in section.splitlines()[1:] if line.strip()]


def test_readme_names_exactly_the_demo_and_the_test_command():
    assert _readme_commands() == ["./scripts/demo", "./scripts/test"]


@pytest.mark.timeout(900)  # a fresh virtual environment is a full install (about 70 s idle, more under load)
def test_readme_commands_work_from_a_clean_copy_in_a_fresh_virtual_environment(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = tmp_path / "factoryline"
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    assert not (copy / ".venv").exists()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALPACA_", "FL_", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PYTHON"] = sys.executable  # the same interpreter version the suite runs on

    demo = subprocess.run(["./scripts/demo", "--days", "1"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (copy / ".venv" / "bin" / "factoryline").exists()
    assert "every invariant held" in demo.stdout

    tests = subprocess.run(["./scripts/test", "tests/unit/test_money.py", "-q", "-p", "no:cacheprovider"], cwd=copy,
                           env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-2000:] + tests.stderr[-2000:]
    assert re.search(r"\d+ passed", tests.stdout)
    assert "All checks passed!" in tests.stdout  # ruff ran over the whole copy

    # The README's backtest on real prices from the installed `data` extra, in the same fresh .venv.
    backtest = subprocess.run(["./scripts/backtest", "--from", "2012-01-03", "--to", "2012-06-29", "--data", "bokeh",
                               "--out", str(tmp_path / "bt")], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=600)
    assert backtest.returncode == 0, backtest.stdout[-2000:] + backtest.stderr[-2000:]
    assert (tmp_path / "bt" / "tearsheet.html").stat().st_size > 0
    assert (tmp_path / "bt" / "trades.csv").read_text().startswith("symbol")
