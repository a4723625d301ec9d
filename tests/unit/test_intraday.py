"""The documented intraday path of a daily bar (shared.intraday): what the backtest and the
simulator's replay of real history both assume happened inside a session."""

from decimal import Decimal as D

import pytest

from shared.errors import InputError
from shared.intraday import SESSION_MINUTES, minute_bars, minute_marks, waypoints


@pytest.mark.parametrize("bar", [
    (D("100"), D("104.37"), D("97.11"), D("103.02")),
    (D("50.5"), D("50.5"), D("49"), D("49")),
    (D("0.8"), D("1.2"), D("0.7531"), D("1.05")),
    (D("10"), D("10"), D("10"), D("10")),
])
def test_minute_bars_rebuild_the_daily_bar_exactly(bar):
    o, h, l, c = bar  # noqa: E741
    bars = minute_bars(o, h, l, c)
    assert len(bars) == SESSION_MINUTES
    assert bars[0][0] == o and bars[-1][3] == c
    assert max(b[1] for b in bars) == h and min(b[2] for b in bars) == l
    for prev, nxt in zip(bars, bars[1:], strict=False):
        assert prev[3] == nxt[0]  # continuous
    for price in minute_marks(o, h, l, c):
        assert price == price.quantize(D("0.01") if price >= 1 else D("0.0001"))


def test_the_low_comes_before_the_high():
    marks = minute_marks(D("100"), D("125"), D("94"), D("110"))
    assert marks.index(D("94")) < marks.index(D("125"))
    (_, _), (low_at, _), (high_at, _), (end, _) = waypoints(D("100"), D("125"), D("94"), D("110"))
    assert 0 < low_at < high_at < end == SESSION_MINUTES


def test_an_impossible_bar_is_refused_in_one_line():
    with pytest.raises(InputError, match="impossible bar"):
        minute_marks(D("100"), D("99"), D("98"), D("100"))


def test_mark_at_is_the_minute_marks_mark():
    import random

    from shared.intraday import mark_at, minute_marks

    rng = random.Random(5)
    for _ in range(40):
        o = D(f"{rng.uniform(0.5, 300):.2f}")
        c = D(f"{float(o) * rng.uniform(0.9, 1.1):.2f}")
        h = max(o, c) + D(f"{rng.uniform(0, 5):.2f}")
        low = max(D("0.01"), min(o, c) - D(f"{rng.uniform(0, 5):.2f}"))
        marks = minute_marks(o, h, low, c)
        assert [mark_at(o, h, low, c, m) for m in range(len(marks))] == marks
