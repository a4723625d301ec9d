"""The QuickStrike rules on hand-built daily charts: each fires exactly where its documented rule says."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.models import Bar
from shared.strategies import STRATEGIES, breakout, momentum, pullback

D = Decimal
DAY0 = datetime(2024, 1, 2, 5, tzinfo=UTC)  # midnight New York


def bar(i: int, o, h, l, c) -> Bar:  # noqa: E741 - the market's name for the low
    return Bar(t=DAY0 + timedelta(days=i), o=D(str(o)), h=D(str(h)), l=D(str(l)), c=D(str(c)))


def flat(n: int, price="100", start: int = 0) -> list[Bar]:
    p = D(price)
    return [bar(start + i, p, p + 1, p - 1, p) for i in range(n)]


def fired_at(flags: list[bool]) -> list[int]:
    return [i for i, f in enumerate(flags) if f]


def test_breakout_fires_on_a_close_above_the_highest_high_of_the_previous_20_sessions():
    bars = flat(20) + [bar(20, 100, 102, 99, "101.01")]
    assert fired_at(breakout(bars)) == [20]


def test_breakout_does_not_fire_on_a_close_equal_to_the_previous_high():
    bars = flat(20) + [bar(20, 100, 102, 99, 101)]
    assert fired_at(breakout(bars)) == []


def test_breakout_needs_20_sessions_of_history():
    bars = flat(19) + [bar(19, 100, 110, 99, 109)]
    assert fired_at(breakout(bars)) == []


def test_breakout_forgets_a_high_older_than_20_sessions():
    spike = [bar(0, 100, 150, 99, 100)]
    bars = spike + flat(20, start=1) + [bar(21, 100, 102, 99, "101.5")]
    assert fired_at(breakout(bars)) == [21]


def rising(n: int) -> list[Bar]:
    return [bar(i, 100 + i, 101 + i, 99 + i, 100 + i) for i in range(n)]


def test_pullback_fires_on_the_third_lower_close_in_an_uptrend_only():
    bars = rising(100)
    last = 99
    for k, close in enumerate(("198", "197", "196", "195"), start=1):
        bars.append(bar(last + k, close, int(close) + 1, int(close) - 1, close))
    assert fired_at(pullback(bars)) == [102]


def test_pullback_does_not_fire_below_the_long_term_average():
    bars = rising(100)
    # A crash far below the 100-session average, then three lower closes: a downtrend, not a dip.
    bars += [bar(100 + k, c, c + 1, c - 1, c) for k, c in enumerate((120, 119, 118, 117))]
    assert fired_at(pullback(bars)) == []


def test_momentum_fires_on_an_up_day_closing_in_the_upper_half_10_percent_above_20_sessions_ago():
    bars = flat(20) + [bar(20, 105, 111, 104, 110)]
    assert fired_at(momentum(bars)) == [20]


@pytest.mark.parametrize(
    "last",
    [
        (105, "111", "104", "109.99"),  # 9.99% up: not enough
        (105, "120", "104", "110"),  # closes in the lower half of the day's range
    ],
)
def test_momentum_does_not_fire_short_of_its_rule(last):
    bars = flat(20) + [bar(20, *last)]
    assert fired_at(momentum(bars)) == []


def test_no_rule_looks_ahead_a_signal_depends_only_on_bars_up_to_it():
    rng = random.Random(3)
    price = D("50")
    bars = []
    for i in range(260):
        o = price
        c = (price * D(str(1 + rng.uniform(-0.04, 0.045)))).quantize(D("0.01"))
        bars.append(bar(i, o, max(o, c) + D("0.3"), min(o, c) - D("0.3"), c))
        price = c
    for strategy in STRATEGIES:
        full = strategy.rule(bars)
        assert any(full), strategy.name  # the walk gives every rule something to say
        for cut in (30, 120, 200, 259):
            assert strategy.rule(bars[:cut]) == full[:cut], strategy.name


def test_there_are_at_least_three_named_strategies_with_distinct_names():
    names = [s.name for s in STRATEGIES]
    assert len(names) >= 3 and len(set(names)) == len(names)
