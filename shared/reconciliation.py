"""Live-versus-backtest reconciliation: the line's real ledger laid over the backtest of the same
period, every divergence with its cause (as QuantConnect LEAN's live reconciliation overlays its
backtest on a live algorithm). Pure: closed trades and backtest trades in, divergences out.

A live trade and a backtest trade are the same position when they have the same symbol and were
entered on the same New York day (the line enters a symbol at most once a day). Then, in this order,
each difference is one divergence:

  only_live         the ledger has the entry, the backtest does not (a signal only live saw, a fill the
                    backtest's sizing refused, a manual trade)
  only_backtest     the backtest entered, the ledger has no closed trade for it (not entered live, or
                    still open live)
  open_in_backtest  closed live, still open at the end of the backtest
  exit_reason       both closed, for different reasons
  exit_day          same reason, closed on different days
  entry_price       entry prices further apart than the tolerance (percent of the live price)
  exit_price        exit prices further apart than the tolerance
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum

from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK

HUNDRED = Decimal(100)
DEFAULT_TOLERANCE_PCT = Decimal("0.5")


class Cause(StrEnum):
    ONLY_LIVE = "only_live"
    ONLY_BACKTEST = "only_backtest"
    OPEN_IN_BACKTEST = "open_in_backtest"
    EXIT_REASON = "exit_reason"
    EXIT_DAY = "exit_day"
    ENTRY_PRICE = "entry_price"
    EXIT_PRICE = "exit_price"


@dataclass(frozen=True, slots=True)
class Divergence:
    cause: Cause
    symbol: str
    entry_day: date
    detail: str


@dataclass(frozen=True)
class Reconciliation:
    matched: int
    live: int
    backtest: int
    divergences: tuple[Divergence, ...]

    def lines(self) -> list[str]:
        head = (f"compare-ledger: {self.live} live trade(s), {self.backtest} backtest trade(s), {self.matched} "
                f"matched, {len(self.divergences)} divergence(s)")
        return [head, *(f"  {d.entry_day} {d.symbol:<6} {d.cause.value:<16} {d.detail}" for d in self.divergences)]


def _ny(at) -> date:
    return at.astimezone(NEW_YORK).date()


def _apart_pct(a: Decimal, b: Decimal) -> Decimal:
    return abs(a - b) / b * HUNDRED if b else Decimal(0)


def reconcile(live: Iterable[ClosedTrade], backtest: Sequence, start: date, end: date, *,
              tolerance_pct: Decimal = DEFAULT_TOLERANCE_PCT) -> Reconciliation:
    """Live closed trades entered start..end against the backtest's trades (`LineTrade`s)."""
    ours = {(t.symbol, _ny(t.opened_at)): t for t in live if start <= _ny(t.opened_at) <= end}
    theirs = {(t.symbol, t.entry_day): t for t in backtest if start <= t.entry_day <= end}
    found: list[Divergence] = []
    matched = 0
    for key in sorted(set(ours) | set(theirs), key=lambda k: (k[1], k[0])):
        symbol, day = key
        real, test = ours.get(key), theirs.get(key)
        if test is None:
            found.append(Divergence(Cause.ONLY_LIVE, symbol, day,
                                    f"live bought at {real.entry_price}, sold {real.exit_reason.value} at "
                                    f"{real.exit_price} on {_ny(real.closed_at)}; the backtest did not enter"))
            continue
        if real is None:
            state = ("still open at the end" if test.exit_day is None
                     else f"sold {test.reason.value} at {test.exit_price} on {test.exit_day}")
            found.append(Divergence(Cause.ONLY_BACKTEST, symbol, day,
                                    f"backtest bought at {test.entry_price}, {state}; no closed live trade"))
            continue
        matched += 1
        if test.exit_day is None:
            found.append(Divergence(Cause.OPEN_IN_BACKTEST, symbol, day,
                                    f"live sold {real.exit_reason.value} on {_ny(real.closed_at)}; "
                                    "the backtest still holds it at the end"))
            continue
        if test.reason is not real.exit_reason:
            found.append(Divergence(Cause.EXIT_REASON, symbol, day,
                                    f"live {real.exit_reason.value} on {_ny(real.closed_at)} at {real.exit_price}, "
                                    f"backtest {test.reason.value} on {test.exit_day} at {test.exit_price}"))
        elif test.exit_day != _ny(real.closed_at):
            found.append(Divergence(Cause.EXIT_DAY, symbol, day,
                                    f"{real.exit_reason.value}: live on {_ny(real.closed_at)}, backtest on "
                                    f"{test.exit_day}"))
        if _apart_pct(test.entry_price, real.entry_price) > tolerance_pct:
            found.append(Divergence(Cause.ENTRY_PRICE, symbol, day,
                                    f"live {real.entry_price}, backtest {test.entry_price} "
                                    f"({_apart_pct(test.entry_price, real.entry_price):.2f}% > {tolerance_pct}%)"))
        if _apart_pct(test.exit_price, real.exit_price) > tolerance_pct:
            found.append(Divergence(Cause.EXIT_PRICE, symbol, day,
                                    f"live {real.exit_price}, backtest {test.exit_price} "
                                    f"({_apart_pct(test.exit_price, real.exit_price):.2f}% > {tolerance_pct}%)"))
    return Reconciliation(matched, len(ours), len(theirs), tuple(found))
