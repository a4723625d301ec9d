"""The QuickStrike strategies: when does a daily chart say "buy at the next open"? Pure.

Each strategy is a small function over a ticker's daily bars (oldest first) that returns one boolean per
bar: True when the rule fires at that bar's close. The backtest enters at the next bar's open, and the
nightly scan reports a signal when the rule fires on the latest completed bar. Every function looks only
at bars up to and including the one it judges (no look-ahead), so a signal seen in the backtest is the
signal the scanner would have printed that night.

The rules (N-day windows count sessions, not calendar days):

  breakout   the close is above the highest high of the previous 20 sessions.
  pullback   long-term uptrend, short-term dip: the close is above the 100-session average close, and
             it is the third lower close in a row (c[t] < c[t-1] < c[t-2] < c[t-3]).
  momentum   continuation: the close is at least 10% above the close 20 sessions earlier, above the
             previous close, and in the upper half of the day's range.

Arithmetic is Decimal (the prices arrive as Decimal); running windows keep each rule linear in the
number of bars, so a 2-year scan of 500 tickers stays cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from shared.models import AnyBar

BREAKOUT_LOOKBACK = 20
PULLBACK_TREND_WINDOW = 100
PULLBACK_DOWN_CLOSES = 3
MOMENTUM_LOOKBACK = 20
MOMENTUM_MIN_GAIN = Decimal("0.10")
TWO = Decimal(2)


def breakout(bars: Sequence[AnyBar], lookback: int = BREAKOUT_LOOKBACK) -> list[bool]:
    """True where the close beats the highest high of the previous `lookback` sessions."""
    fired = [False] * len(bars)
    # Monotonic deque of indexes whose highs decrease: the front is the window's highest high.
    window: deque[int] = deque()
    for i, bar in enumerate(bars):
        while window and window[0] < i - lookback:
            window.popleft()
        if i >= lookback:
            fired[i] = bar.c > bars[window[0]].h
        while window and bars[window[-1]].h <= bar.h:
            window.pop()
        window.append(i)
    return fired


def pullback(
    bars: Sequence[AnyBar], trend_window: int = PULLBACK_TREND_WINDOW, down_closes: int = PULLBACK_DOWN_CLOSES
) -> list[bool]:
    """True where the close is above its `trend_window`-session average and is the `down_closes`-th
    lower close in a row."""
    fired = [False] * len(bars)
    running_sum = Decimal(0)
    falling = 0
    for i, bar in enumerate(bars):
        running_sum += bar.c
        if i >= trend_window:
            running_sum -= bars[i - trend_window].c
        falling = falling + 1 if i > 0 and bar.c < bars[i - 1].c else 0
        if i >= trend_window - 1 and falling >= down_closes:
            # Exactly the third lower close, so a long slide signals once, not every day.
            fired[i] = falling == down_closes and bar.c * trend_window > running_sum
    return fired


def momentum(
    bars: Sequence[AnyBar], lookback: int = MOMENTUM_LOOKBACK, min_gain: Decimal = MOMENTUM_MIN_GAIN
) -> list[bool]:
    """True where the close is `min_gain` above the close `lookback` sessions ago, above the previous
    close, and in the upper half of the day's range."""
    fired = [False] * len(bars)
    factor = 1 + min_gain
    for i in range(lookback, len(bars)):
        bar, before = bars[i], bars[i - lookback]
        fired[i] = (
            bar.c >= before.c * factor
            and bar.c > bars[i - 1].c
            and bar.c * TWO >= bar.h + bar.l
        )
    return fired


@dataclass(frozen=True, slots=True)
class Strategy:
    """A named rule. `name` is what the scanner's log prints as `strategy:`."""

    name: str
    rule: Callable[[Sequence[AnyBar]], list[bool]]
    #: Sessions of history before the rule can fire at all.
    warmup: int
    description: str


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("QuickStrike breakout", breakout, BREAKOUT_LOOKBACK,
             f"close above the highest high of the previous {BREAKOUT_LOOKBACK} sessions"),
    Strategy("QuickStrike pullback", pullback, PULLBACK_TREND_WINDOW,
             f"close above its {PULLBACK_TREND_WINDOW}-session average, third lower close in a row"),
    Strategy("QuickStrike momentum", momentum, MOMENTUM_LOOKBACK,
             f"close {int(MOMENTUM_MIN_GAIN * 100)}% above {MOMENTUM_LOOKBACK} sessions ago, up day, "
             "upper half of the range"),
)
