"""The scanner's per-ticker log: the exact format of docs/signals.md, written atomically.

`format_log` is pure; `write_log` writes `{STATE}_live_qs_{TICKER}.log` through a temporary file in the
same folder (fsynced, then renamed over), so the ranker reads the previous file or the new one, never
half of one. After the rename it removes the ticker's files under the other three states: the new file's
`scanned_at` is newer, so even a ranker reading between the two steps keeps the new state.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from shared.signals import ScanState, Verdict


@dataclass(frozen=True, slots=True)
class TickerLog:
    """What one ticker's log says."""

    ticker: str
    strategy: str
    state: ScanState
    verdict: Verdict
    win_rate: Decimal
    trades: int
    profit_factor: Decimal
    avg_return: Decimal
    scanned_at: datetime
    black_sheep: bool = False
    signal_date: date | None = None
    signal_price: Decimal | None = None
    #: Free text after the fields (one line each, never `key: value` with a known key).
    notes: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return log_name(self.state, self.ticker)


def log_name(state: ScanState, ticker: str) -> str:
    return f"{state.value}_live_qs_{ticker}.log"


def format_log(entry: TickerLog) -> str:
    if entry.scanned_at.utcoffset() is None:
        raise ValueError("scanned_at must carry a UTC offset")
    lines = [
        "=== QuickStrike nightly scan ===",
        f"ticker: {entry.ticker}",
        f"strategy: {entry.strategy}",
        f"status: {entry.state.value}",
        f"verdict: {entry.verdict.value}",
        f"win_rate: {entry.win_rate}",
        f"trades: {entry.trades}",
        f"profit_factor: {entry.profit_factor}",
        f"avg_return: {entry.avg_return}",
    ]
    if entry.state is ScanState.IN_TRADE:
        lines += [f"signal_date: {entry.signal_date.isoformat()}", f"signal_price: {entry.signal_price}"]
    lines += [
        f"black_sheep: {'true' if entry.black_sheep else 'false'}",
        f"scanned_at: {entry.scanned_at.isoformat()}",
    ]
    if entry.notes:
        lines += ["", *entry.notes]
    return "\n".join(lines) + "\n"


def write_log(folder: Path, entry: TickerLog) -> Path:
    """Write the ticker's log atomically, then remove its files under the other states."""
    target = folder / entry.file_name
    handle, temp_name = tempfile.mkstemp(prefix=f".{entry.ticker}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(format_log(entry))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    remove_logs(folder, entry.ticker, keep=entry.state)
    return target


def remove_logs(folder: Path, ticker: str, keep: ScanState | None = None, only: ScanState | None = None) -> list[str]:
    """Remove the ticker's logs (all states but `keep`, or just `only`); returns the names removed."""
    removed = []
    for state in ScanState:
        if state is keep or (only is not None and state is not only):
            continue
        path = folder / log_name(state, ticker)
        try:
            path.unlink()
            removed.append(path.name)
        except FileNotFoundError:
            pass
    return removed
