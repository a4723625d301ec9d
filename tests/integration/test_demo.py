"""`factoryline demo` as a newcomer runs it: a real process, no REDIS_URL, no keys, loopback only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from demo import audit

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "demo", *args], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=120)


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
    assert [line.split()[0] for line in section.splitlines()[1:8]] == ["held"] * 7
    assert "7. no entry above its position cap, while a risk limit is tripped, or in a cooldown" in section
    assert "every invariant held" in section and "VIOLATED" not in section
    html = Path(re.search(r"^HTML report: (.+)$", out, re.M).group(1))
    assert html.is_file() and html.parent.parent == tmp_path / "out"
    assert re.search(r"^Factory Line tearsheet \d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d \(3 trading day\(s\)\)$", out, re.M)
    assert re.search(r"^  starting equity +\$200,000\.00 ", out, re.M)  # the account's starting cash
    tearsheet = Path(re.search(r"^tearsheet: (.+\.html)$", out, re.M).group(1))
    assert tearsheet.is_file() and tearsheet.parent == html.parent and "Plotly" in tearsheet.read_text()
    assert "sim-secret" not in out + result.stderr
    assert "Traceback" not in result.stderr
    assert "\r" not in out and "\x1b" not in out, "a progress bar drawn into a pipe"


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


def _days(out: str) -> dict[str, str]:
    """The demo's story cut into days: {"2026-11-02": that day's lines, ...}."""
    parts = re.split(r"^== (\d{4}-\d\d-\d\d)$", out.split("\nentries: ", 1)[0], flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_with_the_default_seed_the_trader_buys_what_each_mornings_scan_found(tmp_path):
    result = _demo(tmp_path, "--days", "3", "--workdir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^entries: on 3 of 3 day\(s\) the trader bought what that morning's scan found", out, re.M)
    assert "kept NONE" not in out and "sample" not in out.split("\nentries: ", 1)[0]
    days = _days(out)
    assert len(days) == 3
    for day, story in days.items():
        assert re.search(r"^  05:00 scanner: 50 ticker\(s\) scanned, [1-9]\d* in trade$", story, re.M), day
        kept = re.findall(r"^    \d\. (\S+) +QuickStrike (?:breakout|pullback|momentum) +win rate", story, re.M)
        trader = re.search(r"^  09:35 trader: \d+ submitted: ([^;\n]+)(?:; skipped (.+))?$", story, re.M)
        assert kept and trader, day
        submitted = trader.group(1).split(", ")
        skipped = re.findall(r"(\S+) \(already held\)", trader.group(2) or "")
        # Every signal the ranker kept is bought, or skipped only because it is held already.
        assert sorted(submitted + skipped) == sorted(kept), day
        bought = re.findall(r"^  09:3\d:\d\d fill  buy +\S+ (\S+) ", story, re.M)
        assert sorted(set(bought)) == sorted(submitted), day

    # The last morning's files: the ranker kept exactly the scan's IN_TRADE + PROFITABLE logs (five at most).
    folder = tmp_path / "out"
    ranked = {row.split(",")[1]: row.split(",")[-1]
              for row in (folder / "actionable_signals.csv").read_text().splitlines()[1:]}
    actionable = set()
    for log in (folder / "logs").glob("IN_TRADE_live_qs_*.log"):
        text = log.read_text()
        if "\nverdict: PROFITABLE\n" in text and "\nblack_sheep: false\n" in text:
            actionable.add(log.name.removeprefix("IN_TRADE_live_qs_").removesuffix(".log"))
    assert set(ranked) <= actionable and len(ranked) == min(len(actionable), 5)
    assert all(source == f"IN_TRADE_live_qs_{ticker}.log" for ticker, source in ranked.items())
    last = list(days.values())[-1]
    assert sorted(re.findall(r"^    \d\. (\S+) ", last, re.M)) == sorted(ranked)


def test_on_a_terminal_the_demo_redraws_one_progress_bar_and_keeps_fill_lines_clean(tmp_path):
    import pty

    master, replica = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "demo", "--days", "1"], stdout=replica,
                               stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    os.close(replica)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal is gone: the demo has exited
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert process.wait(timeout=120) == 0, process.stderr.read().decode()
    process.stderr.close()
    out = raw.decode()
    frames = re.findall(r"\r(\[[#.]{24}\] +(\d+)%  day 1/1  2026-11-02 (\d\d:\d\d) New York)\x1b\[K", out)
    assert len(frames) > 10, "no progress bar redrawn in place"
    percents = [int(p) for _, p, _ in frames]
    assert percents == sorted(percents) and percents[0] < 10 and percents[-1] >= 90
    assert [t for _, _, t in frames][:2] == ["05:00", "06:00"]
    # What the terminal shows: each story line alone on its row, the bar wiped before it.
    screen = [_terminal_row(row) for row in out.split("\r\n")]
    story = [row for row in screen if " fill  " in row or " exit  " in row or "09:35 trader:" in row]
    assert story and all(row.startswith("  ") and "%" not in row for row in story), story[:3]
    # The bar is gone at the end: the audit's verdict is the last thing on the screen.
    assert [row for row in screen if row][-1] == "every invariant held"


def _terminal_row(written: str) -> str:
    """What a terminal row shows after `written`: carriage returns go back to column 0, ESC[K erases
    from the cursor to the end of the row."""
    row = ""
    for segment in written.split("\r"):
        column = 0
        pieces = segment.split("\x1b[K")
        for i, piece in enumerate(pieces):
            row = row[:column] + piece + row[column + len(piece):]
            column += len(piece)
            if i < len(pieces) - 1:
                row = row[:column]
    return row
