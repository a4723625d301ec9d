"""The scanner's own settings (FL_SCAN_*, FL_BLACK_SHEEP_*), loaded with `shared.config.load` like every group.

The logs folder is the ranker's `FL_SIGNALS_DIR` (the scanner writes where the ranker reads) and the exit
rules are the manager's `FL_*_PCT` settings (the backtest sells exactly as the manager would).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field, field_validator

from shared.backtest import BlackSheepRule
from shared.config import _Settings

HUNDRED = Decimal(100)


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
