"""The backtest sells like the manager: a hand-built path through every exit, the edge figures, black sheep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.backtest import (
    PROFIT_FACTOR_CAP,
    BacktestTrade,
    BlackSheepRule,
    LiveTrade,
    backtest,
    edge,
    is_black_sheep,
    session_times,
)
from shared.exits import ExitReason, ExitRules, PositionState, evaluate, protective_levels
from shared.models import Bar
from shared.signals import Verdict
from shared.strategies import Strategy

D = Decimal
DAY0 = datetime(2024, 1, 2, 5, tzinfo=UTC)  # midnight New York
RULES = ExitRules(stop_loss=D("0.05"), take_profit=D("0.20"), breakeven_arm=D("0.015"), trailing_arm=D("0.02"),
                  trailing_giveback=D("0.5"), time_stop=timedelta(days=7))


def bar(i: int, o, h, l, c) -> Bar:  # noqa: E741 - the market's name for the low
    return Bar(t=DAY0 + timedelta(days=i), o=D(str(o)), h=D(str(h)), l=D(str(l)), c=D(str(c)))


def signals_at(*indexes: int) -> Strategy:
    """A strategy that fires exactly at these bars' closes (the path decides everything else)."""
    return Strategy("hand", lambda bars: [i in indexes for i in range(len(bars))], 0, "fires where told")


# Each trade enters at 100 (the open after the signal) and leaves by a different rule.
PATH = [
    bar(0, 100, "100.5", 99, 100),            # signal -> buy at bar 1's open
    bar(1, 100, "100.5", 94, 96),             # low through the stop 95.00: STOP_LOSS at 95.00; signal again
    bar(2, 100, 121, "99.5", 118),            # high through the target 120.00: TAKE_PROFIT at 120.00; signal
    bar(3, 100, 104, "99.8", 103),            # peak 104 arms break-even and trailing; close 103 above 102
    bar(4, 103, "103.5", "101.5", "101.9"),   # close 101.9 <= 104 - 50% x 4 = 102: TRAILING at 101.9; signal
    bar(5, 100, "101.6", "99.9", 101),        # peak 101.6 arms break-even only (trailing needs 102)
    bar(6, 101, "101.2", "99.5", "99.8"),     # close 99.8 <= entry: BREAK_EVEN at 99.8; signal
    bar(7, 100, "100.5", 99, 100),            # nothing happens
    bar(8, 93, 94, 92, "93.5"),               # opens through the stop: STOP_LOSS at the open 93; signal
    bar(9, 100, "100.4", "99.6", "100.2"),    # entry; flat, nothing arms
    *[bar(i, "100.2", "100.4", "99.6", "100.2") for i in range(10, 16)],  # a signal at bar 10 is ignored
    bar(16, "100.2", "100.4", "99.6", "100.1"),  # 7 days 6.5 h after the 09:30 entry: TIME_STOP at 100.1; signal
    bar(17, 100, "100.4", "99.6", "100.2"),   # entry, still open at the end
]
STRATEGY = signals_at(0, 1, 2, 4, 6, 8, 10, 16)
EXPECTED = [
    (ExitReason.STOP_LOSS, D("95.00")),
    (ExitReason.TAKE_PROFIT, D("120.00")),
    (ExitReason.TRAILING, D("101.9")),
    (ExitReason.BREAK_EVEN, D("99.8")),
    (ExitReason.STOP_LOSS, D("93")),
    (ExitReason.TIME_STOP, D("100.1")),
]


def manager_replay(bars: list[Bar], entry_index: int) -> tuple[ExitReason, Decimal, int]:
    """What the live system does with one position on this path: the broker's resting OCO (stop and
    target from the manager's `protective_levels`) fills first when the price reaches it, gaps fill at
    the open; otherwise each bar is a manager tick (`evaluate`) with the bar's high and its close."""
    opened_at, _ = session_times(bars[entry_index])
    state = PositionState.at_entry("TEST", bars[entry_index].o, D(1), opened_at)
    stop, target = protective_levels(state.entry_price, RULES)
    for i in range(entry_index, len(bars)):
        b = bars[i]
        if b.o <= stop or b.o >= target:
            return (ExitReason.STOP_LOSS if b.o <= stop else ExitReason.TAKE_PROFIT), b.o, i
        if b.l <= stop:
            return ExitReason.STOP_LOSS, stop, i
        if b.h >= target:
            return ExitReason.TAKE_PROFIT, target, i
        state, decision = evaluate(state, b.h, b.c, session_times(b)[1], RULES)
        if decision is not None:
            return decision.reason, decision.reference_price, i
    raise AssertionError("position never exited")


def test_backtest_trades_exit_with_the_managers_reasons_and_prices_on_a_hand_built_path():
    result = backtest("TEST", PATH, STRATEGY, RULES, min_trades=1)
    assert [(t.reason, t.exit_price) for t in result.trades] == EXPECTED
    entries = [1, 2, 3, 5, 7, 9]
    replayed = [manager_replay(PATH, i) for i in entries]
    assert [(t.reason, t.exit_price) for t in result.trades] == [(r, p) for r, p, _ in replayed]
    assert [t.exit_date for t in result.trades] == [session_times(PATH[i])[1].date() for _, _, i in replayed]
    assert all(t.entry_price == D(100) for t in result.trades)


def test_a_position_still_open_after_the_last_bar_is_reported_open_not_counted():
    result = backtest("TEST", PATH, STRATEGY, RULES, min_trades=1)
    assert result.trade_count == 6
    assert result.open_position is not None and result.open_position.entry_price == D(100)
    assert not result.signal_on_last_bar


def test_a_signal_while_holding_is_ignored():
    without_ignored = backtest("TEST", PATH, signals_at(0, 1, 2, 4, 6, 8, 16), RULES, min_trades=1)
    with_ignored = backtest("TEST", PATH, STRATEGY, RULES, min_trades=1)
    assert with_ignored.trades == without_ignored.trades


def test_signal_on_the_last_bar_is_reported_for_tomorrows_open():
    result = backtest("TEST", PATH[:17], STRATEGY, RULES, min_trades=1)
    assert result.signal_on_last_bar and result.open_position is None


def trades_returning(*percents: str) -> list[BacktestTrade]:
    day = DAY0.date()
    return [BacktestTrade(day, D(100), day, D(100) + D(p), ExitReason.TIME_STOP) for p in percents]


def test_edge_figures_from_the_trades_returns():
    trades = trades_returning("-5", "20", "1.9", "-0.2", "-7", "0.1")
    win_rate, profit_factor, avg_return, verdict = edge(trades, min_trades=6)
    assert win_rate == D("0.5000")
    assert profit_factor == D("1.80")  # 0.22 / 0.122
    assert avg_return == D("0.016333")  # 0.098 / 6
    assert verdict is Verdict.PROFITABLE


def test_too_few_trades_is_insufficient_data_however_good():
    assert edge(trades_returning("20", "20"), min_trades=3)[3] is Verdict.INSUFFICIENT_DATA


def test_zero_or_negative_expectancy_is_unprofitable_even_with_a_high_win_rate():
    assert edge(trades_returning("1", "1", "1", "-3"), min_trades=4)[3] is Verdict.UNPROFITABLE
    assert edge(trades_returning("1", "1", "1", "-4"), min_trades=4)[3] is Verdict.UNPROFITABLE


def test_nothing_lost_gives_the_capped_profit_factor_and_no_trades_gives_zeros():
    assert edge(trades_returning("2", "3"), min_trades=1)[1] == PROFIT_FACTOR_CAP
    assert edge([], min_trades=1) == (D(0), D(0), D(0), Verdict.INSUFFICIENT_DATA)


def test_a_broken_bar_inside_a_position_is_an_input_error():
    from shared.errors import InputError

    broken = [*PATH[:2], bar(2, 100, 99, 101, 100)]  # high below low
    with pytest.raises(InputError):
        backtest("TEST", broken, signals_at(1), RULES, min_trades=1)


# -- black sheep -----------------------------------------------------------------------------------


def backtested(win_rate: str, avg_return: str, trades: int = 20):
    result = backtest("TEST", PATH, STRATEGY, RULES, min_trades=1)
    from dataclasses import replace

    return replace(result, win_rate=D(win_rate), avg_return=D(avg_return), trades=result.trades[:1] * trades)


def live(*exit_prices: str) -> list[LiveTrade]:
    return [LiveTrade(D(100), D(p), DAY0 + timedelta(days=i)) for i, p in enumerate(exit_prices)]


RULE = BlackSheepRule(window=10, min_trades=5, win_rate_gap=D("0.20"), return_gap=D("0.02"))


def test_live_win_rate_far_below_the_backtest_flags_a_black_sheep():
    check = is_black_sheep(backtested("0.70", "0.01"), live("101", "101", "99", "99", "99"), RULE)
    assert check.flagged  # 40% live vs 70% backtest


def test_live_results_close_to_the_backtest_are_not_a_black_sheep():
    check = is_black_sheep(backtested("0.60", "0.01"), live("101", "101", "101", "99", "99"), RULE)
    assert not check.flagged  # 60% vs 60%, average +0.2% vs +1%


def test_live_average_return_far_below_the_backtest_flags_a_black_sheep():
    check = is_black_sheep(backtested("0.60", "0.03"), live("101", "101", "101", "95", "95"), RULE)
    assert check.flagged  # same win rate, average -1.4% vs +3%


def test_fewer_live_trades_than_the_minimum_are_never_a_black_sheep():
    assert not is_black_sheep(backtested("0.90", "0.05"), live("90", "90", "90", "90"), RULE).flagged


def test_only_the_most_recent_live_trades_in_the_window_count():
    # Five old losers, then ten recent winners: the window of 10 sees only the winners.
    trades = live(*(["90"] * 5 + ["102"] * 10))
    assert not is_black_sheep(backtested("0.70", "0.01"), list(reversed(trades)), RULE).flagged
    assert is_black_sheep(backtested("0.70", "0.01"), trades, BlackSheepRule(window=15, min_trades=5)).flagged
