"""Backtest one (ticker, strategy) pair with the manager's own exit code, and judge its edge. Pure.

The loop, bar by bar over daily bars (oldest first):
- the strategy fires at a bar's close -> buy at the NEXT bar's open (the nightly scan runs after the
  close and the trader buys after the open), one position at a time; signals while holding are ignored;
- every bar of an open position, from the entry bar on, goes through `shared.exits.bar_exit` with the
  position's `PositionState`: the broker-side stop and target from `protective_levels`, then the soft
  exits (break-even, trailing, time stop) at the close. The same functions the manager runs live, never
  a copy, so a backtest and the live system sell at the same moments for the same reasons.
- a position still open on the last bar is not a trade yet: it is reported as open, not counted.

Edge (closed trades only; a trade's return is exit / entry - 1, one unit per trade):
win rate = share of trades with a return above zero; profit factor = sum of positive returns / -(sum of
negative returns) (PROFIT_FACTOR_CAP when nothing was lost, 0 when nothing was won); average return =
mean return (the expectancy). Verdict: INSUFFICIENT_DATA under `min_trades` trades, else PROFITABLE when
the average return is above zero, else UNPROFITABLE.

Black sheep (`is_black_sheep`): the ticker's most recent live trades from the ledger, compared with the
backtest of the strategy the scanner reports for it. See `BlackSheepRule`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

from shared.exits import ExitReason, ExitRules, PositionState, bar_exit
from shared.market.calendar import NEW_YORK
from shared.models import AnyBar
from shared.money import ONE, ZERO
from shared.signals import Verdict
from shared.strategies import Strategy

#: Written instead of infinity when a backtest lost nothing (the log format refuses `inf`).
PROFIT_FACTOR_CAP = Decimal("999")
SESSION_OPEN = time(9, 30)
SESSION_CLOSE = time(16, 0)
_RATE_PLACES = Decimal("0.0001")
_RETURN_PLACES = Decimal("0.000001")
_FACTOR_PLACES = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class BacktestTrade:
    """One simulated round trip of one share."""

    entry_date: date
    entry_price: Decimal
    exit_date: date
    exit_price: Decimal
    reason: ExitReason

    @property
    def return_fraction(self) -> Decimal:
        return self.exit_price / self.entry_price - ONE


@dataclass(frozen=True, slots=True)
class BacktestResult:
    ticker: str
    strategy: str
    trades: tuple[BacktestTrade, ...]
    #: The simulated position still open after the last bar (entered, not yet exited), else None.
    open_position: PositionState | None
    #: The strategy fired at the close of the last bar: a new entry at the next open.
    signal_on_last_bar: bool
    win_rate: Decimal
    profit_factor: Decimal
    avg_return: Decimal
    verdict: Verdict

    @property
    def trade_count(self) -> int:
        return len(self.trades)


def session_times(bar: AnyBar) -> tuple[datetime, datetime]:
    """(open, close) of the session a daily bar stands for, New York time.

    Daily bars are stamped at midnight New York (Alpaca's convention). Early closes are taken as 16:00:
    only the time stop reads these times, and it counts whole days.
    """
    return _session_times_at(bar.t)


@functools.lru_cache(maxsize=4096)
def _session_times_at(t: datetime) -> tuple[datetime, datetime]:
    # Cached by the bar's time: a scan meets the same ~500 sessions in every ticker and strategy. Equal
    # aware times are the same instant, so they are the same New York day.
    day = t.astimezone(NEW_YORK).date()
    return datetime.combine(day, SESSION_OPEN, NEW_YORK), datetime.combine(day, SESSION_CLOSE, NEW_YORK)


def simulate(
    ticker: str, bars: Sequence[AnyBar], fired: Sequence[bool], rules: ExitRules
) -> tuple[list[BacktestTrade], PositionState | None]:
    """Walk the bars: enter at the open after each signal while flat, exit with `bar_exit`.

    InputError (from `bar_exit` / `protective_levels`) for an impossible bar or a price too small to
    protect: the caller treats the series as broken.
    """
    trades: list[BacktestTrade] = []
    position: PositionState | None = None
    entry_date: date | None = None
    for i, bar in enumerate(bars):
        if position is None:
            if i == 0 or not fired[i - 1]:
                continue
            opened_at, _ = session_times(bar)
            position = PositionState.at_entry(ticker, bar.o, ONE, opened_at)
            entry_date = opened_at.date()
        _, closed_at = session_times(bar)
        position, decision = bar_exit(position, bar.o, bar.h, bar.l, bar.c, closed_at, rules)
        if decision is not None:
            assert entry_date is not None
            trades.append(BacktestTrade(entry_date, position.entry_price, closed_at.date(),
                                        decision.reference_price, decision.reason))
            position, entry_date = None, None
    return trades, position


def edge(trades: Sequence[BacktestTrade], min_trades: int) -> tuple[Decimal, Decimal, Decimal, Verdict]:
    """(win_rate, profit_factor, avg_return, verdict) of closed trades; see the module docstring."""
    if not trades:
        return ZERO.quantize(_RATE_PLACES), ZERO.quantize(_FACTOR_PLACES), ZERO.quantize(_RETURN_PLACES), \
            Verdict.INSUFFICIENT_DATA
    returns = [t.return_fraction for t in trades]
    gross_profit = sum((r for r in returns if r > ZERO), ZERO)
    gross_loss = -sum((r for r in returns if r < ZERO), ZERO)
    if gross_loss > ZERO:
        profit_factor = min(gross_profit / gross_loss, PROFIT_FACTOR_CAP)
    else:
        profit_factor = PROFIT_FACTOR_CAP if gross_profit > ZERO else ZERO
    win_rate = Decimal(sum(1 for r in returns if r > ZERO)) / len(returns)
    avg_return = sum(returns, ZERO) / len(returns)
    if len(trades) < min_trades:
        verdict = Verdict.INSUFFICIENT_DATA
    else:
        verdict = Verdict.PROFITABLE if avg_return > ZERO else Verdict.UNPROFITABLE
    return (win_rate.quantize(_RATE_PLACES), profit_factor.quantize(_FACTOR_PLACES),
            avg_return.quantize(_RETURN_PLACES), verdict)


def backtest(ticker: str, bars: Sequence[AnyBar], strategy: Strategy, rules: ExitRules, min_trades: int) -> BacktestResult:
    """The strategy over the ticker's whole history, judged."""
    fired = strategy.rule(bars)
    trades, open_position = simulate(ticker, bars, fired, rules)
    win_rate, profit_factor, avg_return, verdict = edge(trades, min_trades)
    return BacktestResult(
        ticker=ticker,
        strategy=strategy.name,
        trades=tuple(trades),
        open_position=open_position,
        signal_on_last_bar=bool(fired) and fired[-1],
        win_rate=win_rate,
        profit_factor=profit_factor,
        avg_return=avg_return,
        verdict=verdict,
    )


# -- black sheep ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveTrade:
    """A closed live trade as the ledger records it (only what the comparison needs)."""

    entry_price: Decimal
    exit_price: Decimal
    closed_at: datetime

    @property
    def return_fraction(self) -> Decimal:
        return self.exit_price / self.entry_price - ONE


@dataclass(frozen=True, slots=True)
class BlackSheepRule:
    """A strategy is a black sheep for a ticker when, over the ticker's last `window` live trades (and
    at least `min_trades` of them), the live win rate is more than `win_rate_gap` below the backtest's,
    or the live average return is more than `return_gap` below the backtest's (both fractions)."""

    window: int = 10
    min_trades: int = 5
    win_rate_gap: Decimal = Decimal("0.20")
    return_gap: Decimal = Decimal("0.02")


@dataclass(frozen=True, slots=True)
class BlackSheepCheck:
    flagged: bool
    live_trades: int
    detail: str


def is_black_sheep(result: BacktestResult, live: Sequence[LiveTrade], rule: BlackSheepRule) -> BlackSheepCheck:
    """Compare the most recent live trades (by close time) with the backtest; see `BlackSheepRule`."""
    recent = sorted(live, key=lambda t: t.closed_at)[-rule.window:] if rule.window > 0 else []
    if len(recent) < rule.min_trades or result.trade_count == 0:
        return BlackSheepCheck(False, len(recent), f"{len(recent)} live trades, fewer than {rule.min_trades} "
                               "to compare" if result.trade_count else "no backtest trades to compare with")
    live_win_rate = Decimal(sum(1 for t in recent if t.return_fraction > ZERO)) / len(recent)
    live_avg = sum((t.return_fraction for t in recent), ZERO) / len(recent)
    short_wins = result.win_rate - live_win_rate > rule.win_rate_gap
    short_returns = result.avg_return - live_avg > rule.return_gap
    detail = (f"last {len(recent)} live trades: win rate {live_win_rate:.4f} vs backtest {result.win_rate}, "
              f"average return {live_avg:.6f} vs backtest {result.avg_return}")
    return BlackSheepCheck(short_wins or short_returns, len(recent), detail)
