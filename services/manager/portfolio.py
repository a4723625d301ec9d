"""portfolio.csv: the open positions as the last tick saw them (the seed's portfolio file).

One row per open position, sorted by symbol:

    symbol,qty,entry_price,last_price,high_water_mark,armed_exits,trailing_exit_level,days_held,first_fill_at
    AAPL,10,187.43,190.02,192.10,break_even trailing,189.77,2.04,2024-03-04T10:00:00-05:00

- `armed_exits`: the armed soft exits separated by a space (empty: none armed yet).
- `trailing_exit_level`: the price at or below which the trailing exit sells (empty until armed).
- `days_held`: (tick time - first fill) in days, 2 decimals; the time stop fires above
  FL_TIME_STOP_DAYS.

Written to a temporary file in the same directory and renamed over the old one, so a reader sees
the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from shared.config import _Settings
from shared.exits import ExitReason, ExitRules, PositionState, trailing_exit_level
from shared.market.calendar import NEW_YORK
from shared.money import fmt_qty, round_price

COLUMNS = ("symbol", "qty", "entry_price", "last_price", "high_water_mark", "armed_exits", "trailing_exit_level",
           "days_held", "first_fill_at")
DAY = Decimal(86_400)


class PortfolioSettings(_Settings):
    #: Where the tick writes the open positions after every run.
    FL_PORTFOLIO_CSV: Path = Path("portfolio.csv")


@dataclass(frozen=True, slots=True)
class PortfolioRow:
    state: PositionState
    qty: Decimal
    last_price: Decimal | None


def armed_exits(state: PositionState) -> list[ExitReason]:
    armed = []
    if state.breakeven_armed:
        armed.append(ExitReason.BREAK_EVEN)
    if state.trailing_armed:
        armed.append(ExitReason.TRAILING)
    return armed


def days_held(state: PositionState, now: datetime) -> Decimal:
    held: timedelta = now.astimezone(UTC) - state.first_fill_at.astimezone(UTC)
    seconds = Decimal(held.days * 86_400 + held.seconds)
    return (seconds / DAY).quantize(Decimal("0.01"), ROUND_HALF_UP)


def render(rows: list[PortfolioRow], now: datetime, rules: ExitRules) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in sorted(rows, key=lambda r: r.state.symbol):
        state = row.state
        level = (round_price(trailing_exit_level(state.entry_price, state.high_water_mark, rules))
                 if state.trailing_armed else "")
        writer.writerow([
            state.symbol, fmt_qty(row.qty), state.entry_price, row.last_price if row.last_price is not None else "",
            state.high_water_mark, " ".join(r.value for r in armed_exits(state)), level, days_held(state, now),
            state.first_fill_at.astimezone(NEW_YORK).isoformat(),
        ])
    return out.getvalue()


def write(path: Path, rows: list[PortfolioRow], now: datetime, rules: ExitRules) -> Path:
    """Replace `path` with the current portfolio, atomically."""
    path = Path(path)
    text = render(rows, now, rules)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
