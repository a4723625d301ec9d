"""The scanner's pure pieces that the portfolio backtest replays too: its settings, the state a
ticker's backtest puts it in, and which strategy a ticker's log reports (moved from services/scanner/;
the scanner imports them from here).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, field_validator

from shared.backtest import BacktestResult, BlackSheepCheck, BlackSheepRule
from shared.config import _Settings
from shared.market.calendar import NEW_YORK
from shared.models import AnyBar
from shared.signals import ScanState, Verdict

HUNDRED = Decimal(100)
#: Which strategy a ticker's log reports when several have something to say: a fresh entry first.
STATE_ORDER = {ScanState.IN_TRADE: 0, ScanState.WATCHING: 1, ScanState.EXITED: 2, ScanState.NO_SIGNAL: 3}


def state_of(result: BacktestResult, last_bar: AnyBar) -> ScanState:
    """IN_TRADE: the rule fired on the latest bar while flat (buy at the next open). WATCHING: a position
    from an earlier signal is still open. EXITED: the latest bar closed a position. Else NO_SIGNAL."""
    if result.open_position is not None:
        return ScanState.WATCHING
    if result.signal_on_last_bar:
        return ScanState.IN_TRADE
    last_day = last_bar.t.astimezone(NEW_YORK).date()
    if result.trades and result.trades[-1].exit_date == last_day:
        return ScanState.EXITED
    return ScanState.NO_SIGNAL


def report_order(candidate: tuple[ScanState, BacktestResult, BlackSheepCheck]) -> tuple:
    """Sort key of a ticker's (state, backtest, black-sheep check) candidates, the reported one first:
    a fresh entry first, then (same state) not black sheep, PROFITABLE, higher win rate, profit factor,
    trade count, then name."""
    state, result, sheep = candidate
    return (STATE_ORDER[state], sheep.flagged, result.verdict is not Verdict.PROFITABLE,
            -result.win_rate, -result.profit_factor, -result.trade_count, result.strategy)


class ScannerSettings(_Settings):
    #: A file of tickers to scan (one or more a line, `#` comments); empty = every active, tradable
    #: asset the broker lists (the simulator's universe).
    FL_SCAN_TARGETS: Path | None = None
    #: Calendar days of daily bars fetched for the backtest (730 = two years).
    FL_SCAN_HISTORY_DAYS: int = Field(default=730, ge=30, le=7300)
    #: Fewer backtest trades than this: verdict INSUFFICIENT_DATA (keep it >= the ranker's FL_MIN_BACKTEST_TRADES).
    FL_SCAN_MIN_TRADES: int = Field(default=10, ge=1, le=10_000)
    #: Tickers per bar request (the adapter also pages and splits long lists by itself).
    FL_SCAN_BATCH_SIZE: int = Field(default=100, ge=1, le=1000)
    #: Processes that fetch and backtest shards of the targets in parallel (1 = in this process).
    FL_SCAN_WORKERS: int = Field(default=2, ge=1, le=16)
    #: Black sheep: how many of the ticker's most recent live trades are compared with the backtest ...
    FL_BLACK_SHEEP_WINDOW: int = Field(default=10, ge=1, le=1000)
    #: ... and how many of them at least (fewer: never flagged).
    FL_BLACK_SHEEP_MIN_TRADES: int = Field(default=5, ge=1, le=1000)
    #: Flagged when the live win rate is more than this many percentage points below the backtest's ...
    FL_BLACK_SHEEP_WIN_RATE_GAP_PCT: Decimal = Field(default=Decimal("20"), ge=0, le=100)
    #: ... or the live average return per trade is more than this many points below the backtest's.
    FL_BLACK_SHEEP_RETURN_GAP_PCT: Decimal = Field(default=Decimal("2"), ge=0, le=100)

    @field_validator("FL_SCAN_TARGETS", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        # `FL_SCAN_TARGETS=` in .env means "no file", not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    def black_sheep_rule(self) -> BlackSheepRule:
        return BlackSheepRule(
            window=self.FL_BLACK_SHEEP_WINDOW,
            min_trades=self.FL_BLACK_SHEEP_MIN_TRADES,
            win_rate_gap=self.FL_BLACK_SHEEP_WIN_RATE_GAP_PCT / HUNDRED,
            return_gap=self.FL_BLACK_SHEEP_RETURN_GAP_PCT / HUNDRED,
        )
