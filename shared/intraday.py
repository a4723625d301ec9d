"""The documented intraday path of a daily bar. Pure.

Daily history says only where a session opened, how high and low it went and where it closed. Both
the portfolio backtest and the simulator replaying real daily data need the minutes in between; they
take them from here, so that the two see the same session (the parity test depends on it).

The path (one price per minute mark, 09:30 to the close, straight lines between the waypoints):

    open (minute 0)  ->  low (LOW_AT of the session)  ->  high (HIGH_AT)  ->  close (last minute)

- **The low comes first.** For a long position that is the worse order: a bar that touches both the
  stop and the target reaches the stop first (the same assumption as `shared.exits.bar_exit`), and a
  break-even or trailing exit armed by the high is never credited before a fall that came first.
- Each mark is rounded to a valid price (whole cents at or above $1, 1/100 cent below) and clamped
  to [low, high]; the open, low, high and close marks are exact, so the path's own extremes are the
  bar's.
- Minute bar k spans marks k and k+1: open = mark k, close = mark k+1, high/low = the larger/smaller
  of the two (straight segments have no wicks). The session's minute bars therefore rebuild the daily
  bar exactly: first open, last close, max high, min low.

The path is deterministic: the same daily bar always gives the same minutes.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from shared.errors import InputError

#: Minutes of a regular session (09:30-16:00).
SESSION_MINUTES = 390
#: Where the low and the high sit, as a fraction of the session's minutes.
LOW_AT = Decimal(1) / Decimal(3)
HIGH_AT = Decimal(2) / Decimal(3)

_CENT = Decimal("0.01")
_SUB_CENT = Decimal("0.0001")
_ONE = Decimal(1)


def valid_price(value: Decimal) -> Decimal:
    """Nearest price on Alpaca's increments: whole cents at or above $1, 1/100 cent below."""
    return value.quantize(_CENT if value >= _ONE else _SUB_CENT, rounding=ROUND_HALF_EVEN)


def waypoints(o: Decimal, h: Decimal, l: Decimal, c: Decimal,  # noqa: E741 - the market's own name
              minutes: int = SESSION_MINUTES) -> tuple[tuple[int, Decimal], ...]:
    """(minute mark, price) of the open, the low, the high and the close."""
    _check(o, h, l, c, minutes)
    low_at = max(1, min(minutes - 2, int(minutes * LOW_AT)))
    high_at = max(low_at + 1, min(minutes - 1, int(minutes * HIGH_AT)))
    return (0, o), (low_at, l), (high_at, h), (minutes, c)


def minute_marks(o: Decimal, h: Decimal, l: Decimal, c: Decimal,  # noqa: E741
                 minutes: int = SESSION_MINUTES) -> list[Decimal]:
    """The price at every minute mark 0..minutes (minutes + 1 values): mark 0 is the open, the last
    mark the close."""
    points = waypoints(o, h, l, c, minutes)
    marks: list[Decimal] = []
    for (m0, p0), (m1, p1) in zip(points, points[1:], strict=False):
        span = m1 - m0
        for k in range(span):
            marks.append(_between(p0, p1, k, span, l, h))
    marks.append(c)
    for mark, price in points:  # the waypoints are exact, whatever the rounding did around them
        marks[mark] = price
    return marks


def mark_at(o: Decimal, h: Decimal, l: Decimal, c: Decimal, minute: int,  # noqa: E741
            minutes: int = SESSION_MINUTES) -> Decimal:
    """`minute_marks(...)[minute]` without building the other marks (the backtest reads a few marks
    of a day: the ticks' prices and, the path being monotone between its waypoints, the highs and
    lows of a stretch from its ends and the waypoints inside it)."""
    points = waypoints(o, h, l, c, minutes)
    if not 0 <= minute <= minutes:
        raise InputError(f"minute {minute} is outside the session's 0..{minutes}")
    for (m0, p0), (m1, p1) in zip(points, points[1:], strict=False):
        if minute == m0:
            return p0
        if m0 < minute < m1:
            return _between(p0, p1, minute - m0, m1 - m0, l, h)
    return c


def _between(p0: Decimal, p1: Decimal, k: int, span: int, low: Decimal, high: Decimal) -> Decimal:
    """Mark k of the straight line from p0 to p1 over `span` minutes, on the price grid, in [low, high]."""
    return min(max(valid_price(p0 + (p1 - p0) * Decimal(k) / Decimal(span)), low), high)


def minute_bars(o: Decimal, h: Decimal, l: Decimal, c: Decimal,  # noqa: E741
                minutes: int = SESSION_MINUTES) -> list[tuple[Decimal, Decimal, Decimal, Decimal]]:
    """The session's minute bars (open, high, low, close), one per minute, from `minute_marks`."""
    marks = minute_marks(o, h, l, c, minutes)
    return [(a, max(a, b), min(a, b), b) for a, b in zip(marks, marks[1:], strict=False)]


def _check(o: Decimal, h: Decimal, l: Decimal, c: Decimal, minutes: int) -> None:  # noqa: E741
    if minutes < 3:
        raise InputError(f"a session needs at least 3 minutes for its path, got {minutes}")
    if not all(isinstance(v, Decimal) and v.is_finite() and v > 0 for v in (o, h, l, c)):
        raise InputError(f"a daily bar's prices must be positive Decimals: {o}, {h}, {l}, {c}")
    if not (l <= min(o, c) and max(o, c) <= h):
        raise InputError(f"impossible bar: open {o} high {h} low {l} close {c}")
