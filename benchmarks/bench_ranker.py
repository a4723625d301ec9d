"""How fast the ranker turns a folder of scanner logs into the ranked list.

Generates 10,000 logs (about 80% valid, the rest malformed in the ways the tests cover) in a temp
folder, then times the whole job (`rank_signals`, without Redis: list, read, parse, rank, write the
CSV) against a floor measured in the same run: listing the folder and reading every file's bytes.
Target: under 1 s for 10,000 files.

    .venv/bin/python benchmarks/bench_ranker.py [--files 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.ranker.jobs import rank_signals  # noqa: E402

NOW = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
STATES = ("IN_TRADE", "IN_TRADE", "IN_TRADE", "WATCHING", "NO_SIGNAL", "EXITED")


def ticker(i: int) -> str:
    letters = ""
    n = i
    for _ in range(5):
        letters += chr(ord("A") + n % 26)
        n //= 26
    return letters


def body(symbol: str, state: str, rng: random.Random) -> str:
    scanned = (NOW - timedelta(minutes=rng.randint(30, 40 * 60))).isoformat()
    return (
        f"=== QuickStrike nightly scan: {symbol} ===\n"
        f"Run started: {scanned}\nfetched 750 daily bars; indicators RSI(14), ATR(14), SMA(50)\n"
        f"ticker: {symbol}\nstrategy: QuickStrike\nstatus: {state}\n"
        f"verdict: {rng.choice(['PROFITABLE', 'PROFITABLE', 'UNPROFITABLE', 'INSUFFICIENT_DATA'])}\n"
        f"win_rate: {rng.randint(350, 850) / 10}%\ntrades: {rng.randint(3, 120)}\n"
        f"profit_factor: {rng.randint(50, 400) / 100}\navg_return: {rng.randint(-150, 300) / 100}%\n"
        f"signal_date: 2026-11-23\nsignal_price: {rng.randint(100, 90000) / 100}\nscanned_at: {scanned}\n"
        + "backtest trade: entry 2025-06-02 exit 2025-06-09 return +2.1%\n" * 20
        + "done.\n"
    )


def generate(folder: Path, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    for i in range(count):
        symbol, state = ticker(i), rng.choice(STATES)
        name = f"{state}_live_qs_{symbol}.log"
        kind = rng.random()
        if kind < 0.80:
            data = body(symbol, state, rng).encode()
        elif kind < 0.84:
            data = bytes(rng.randrange(256) for _ in range(300))  # binary
        elif kind < 0.87:
            data = b""
        elif kind < 0.90:
            data = body(symbol, state, rng).replace("win_rate: ", "win_rate: 1").encode()  # over 100% or bad
        elif kind < 0.93:
            data = body(symbol, state, rng).replace("-05:00", "").replace("+00:00", "").encode()  # naive
        elif kind < 0.96:
            data = body("ZZZZ", state, rng).encode()  # ticker mismatch
        elif kind < 0.98:
            name = f"scan_{symbol}.log"  # bad file name
            data = body(symbol, state, rng).encode()
        else:
            data = body(symbol, state, rng).replace("trades: ", "trades: -").encode()
        (folder / name).write_bytes(data)
        if i % 50 == 0:
            (folder / f"{symbol}.txt").write_text("not a log")  # ignored


def read_floor(folder: Path) -> int:
    total = 0
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(".log"))
    for name in names:
        with open(os.path.join(folder, name), "rb") as handle:
            total += len(handle.read())
    return total


def best_of(repeat: int, action) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fl-bench-ranker-") as temp:
        folder = Path(temp) / "logs"
        folder.mkdir()
        generate(folder, args.files)
        csv_path = Path(temp) / "actionable_signals.csv"
        floor_s, total_bytes = best_of(args.repeat, lambda: read_floor(folder))
        rank_s, summary = best_of(args.repeat, lambda: rank_signals(
            str(folder), str(csv_path), use_redis=False, now=NOW.isoformat()))
    files = summary["logs"]
    print(f"logs: {files} files, {total_bytes / 1e6:.1f} MB ({len(summary['kept'])} kept, "
          f"{len(summary['rejected'])} rejected)")
    reasons = Counter(r["reason"] for r in summary["rejected"])
    print("rejected by reason: " + ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()))
    print(f"floor (list + read every file's bytes): {floor_s:.3f} s, {files / floor_s:,.0f} files/s")
    print(f"rank_signals (list, read, parse, rank, write CSV): {rank_s:.3f} s, {files / rank_s:,.0f} files/s")
    print(f"ratio to floor: {rank_s / floor_s:.1f}x")
    print(f"target: under 1 s for 10,000 files: {'met' if rank_s < 1.0 * files / 10_000 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
