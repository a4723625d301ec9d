"""The portfolio backtest over hand-built histories whose outcomes are worked out in the comments.

Defaults unless a test says otherwise: stop -5%, target +20%, break-even armed at +1.5%, trailing
armed at +2% giving back 50% of the peak gain, time stop 7 days, 5 slots of equity / 5 ($20,000 of
$100,000), manage ticks every 5 minutes from 09:30, the path open -> low (11:40) -> high (13:50) ->
close. Slippage and fees are 0 unless a test turns them on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest

from shared.backtest import backtest
from shared.errors import ConfigError, InputError
from shared.exits import ExitReason
from shared.linebacktest import BacktestSettings, RankedTicker, _StrategyTrades, run, setting_name
from shared.market.calendar import NEW_YORK
from shared.models import Bar
from shared.strategies import STRATEGIES

D = Decimal


@dataclass(frozen=True)
class History:
    """The shape of shared.history.History (Interface 1), built by hand."""

    bars: dict
    adjusted: bool = True
    splits: dict = field(default_factory=dict)
    source: str = "hand-built"


def bar(day: date, o, h, l, c, v=1_000_000) -> Bar:  # noqa: E741
    return Bar(t=datetime.combine(day, time(0), NEW_YORK), o=D(str(o)), h=D(str(h)), l=D(str(l)), c=D(str(c)), v=D(v))


def weekdays(start: date, n: int) -> list[date]:
    days, d = [], start
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


NO_COSTS = {"slippage_bps": "0", "sec_fee_rate": "0", "taf_per_share": "0", "min_dollar_volume": "0"}


def settings(**extra) -> BacktestSettings:
    return BacktestSettings.load({**NO_COSTS, **{k: str(v) for k, v in extra.items()}})


def enter(day: date, *tickers: str) -> dict:
    return {day: [RankedTicker(t) for t in tickers]}


DAYS = weekdays(date(2025, 1, 6), 12)  # Mon 6 Jan 2025 ...


def one(result, symbol="AAA"):
    trades = [t for t in result.trades if t.symbol == symbol]
    assert len(trades) == 1, trades
    return trades[0]


def test_gap_through_the_stop_fills_at_the_open():
    # Day 0: in at 100 (200 shares, $20,000). Day 1 opens at 94, below the stop 95: sold at 94.
    h = History({"AAA": (bar(DAYS[0], 100, 101, 99.5, 100.5), bar(DAYS[1], 94, 96, 93, 95))})
    result = run(h, settings(), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA"))
    trade = one(result)
    assert (trade.entry_price, trade.qty, trade.exit_price, trade.reason) == (D("100"), D("200"), D("94"),
                                                                            ExitReason.STOP_LOSS)
    assert trade.exit_at == datetime(2025, 1, 7, 9, 30, tzinfo=NEW_YORK)
    assert trade.realized_pl == D("-1200")
    assert result.equity[-1] == (DAYS[1], D("98800"))


def test_stop_and_target_in_one_bar_is_the_stop():
    # Day 1 reaches both 121 (target 120) and 94 (stop 95): the path goes to the low first.
    h = History({"AAA": (bar(DAYS[0], 100, 101, 99.5, 100), bar(DAYS[1], 100, 121, 94, 100))})
    trade = one(run(h, settings(), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA")))
    assert (trade.exit_price, trade.reason) == (D("95"), ExitReason.STOP_LOSS)


def test_target_fills_at_the_target_when_only_the_high_reaches_it():
    h = History({"AAA": (bar(DAYS[0], 100, 101, 99.5, 100), bar(DAYS[1], 100, 125, 99, 110))})
    trade = one(run(h, settings(slippage_bps=10), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA")))
    # The entry pays 10 bps (100.10, stop 95.10, target 120.12); the target is a limit: no slippage.
    assert (trade.entry_price, trade.exit_price, trade.reason) == (D("100.10"), D("120.12"), ExitReason.TAKE_PROFIT)


def test_break_even_armed_by_the_high_fires_the_next_morning():
    # Day 0: low 99.8 at 11:40 (before anything is armed), high 101.8 at 13:50 arms break-even
    # (>= 101.5, < 102 so trailing is not armed), close 100.5. Day 1 falls from 100.5 towards 99 at
    # 11:40: the first tick at or below the entry 100 is 10:15 (minute 45: 100.5 - 1.5 x 45/130 = 99.98).
    h = History({"AAA": (bar(DAYS[0], 100, 101.8, 99.8, 100.5), bar(DAYS[1], 100.5, 100.8, 99, 99.5))})
    trade = one(run(h, settings(), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA")))
    assert (trade.exit_price, trade.reason) == (D("99.98"), ExitReason.BREAK_EVEN)
    assert trade.exit_at == datetime(2025, 1, 7, 10, 15, tzinfo=NEW_YORK)


def test_trailing_gives_back_half_the_peak_gain():
    # Day 0 peaks at 110 (trailing armed, level 110 - 50% x 10 = 105), closes 108. Day 1 falls from 108
    # to 104 by 11:40: 108 - 4m/130 <= 105 first at the tick of minute 100 (11:10): 104.92.
    h = History({"AAA": (bar(DAYS[0], 100, 110, 99.5, 108), bar(DAYS[1], 108, 108.5, 104, 106))})
    trade = one(run(h, settings(), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA")))
    assert (trade.exit_price, trade.reason) == (D("104.92"), ExitReason.TRAILING)
    assert trade.exit_at == datetime(2025, 1, 7, 11, 10, tzinfo=NEW_YORK)


def test_trailing_level_follows_a_higher_peak_with_a_smaller_giveback():
    h = History({"AAA": (bar(DAYS[0], 100, 110, 99.5, 108), bar(DAYS[1], 108, 108.5, 104, 106))})
    # 30% give-back: level 110 - 3 = 107; 108 - 4m/130 <= 107 first at minute 35 (10:05): 106.92.
    trade = one(run(h, settings(trailing_giveback_pct=30), start=DAYS[0], end=DAYS[1],
                    ranked=enter(DAYS[0], "AAA")))
    assert (trade.exit_price, trade.reason, trade.exit_at.time()) == (D("106.92"), ExitReason.TRAILING, time(10, 5))


def test_time_stop_sells_at_the_first_tick_after_seven_days():
    # In Monday 6 Jan 09:30, flat prices; the time stop fires when more than 7 x 24 h have passed:
    # Monday 13 Jan 09:35 (09:30 is exactly 7 days), at that tick's price 100 - 0.5 x 5/130 = 99.98.
    bars = tuple(bar(d, 100, 100.5, 99.5, 100) for d in DAYS[:6])
    trade = one(run(History({"AAA": bars}), settings(), start=DAYS[0], end=DAYS[5], ranked=enter(DAYS[0], "AAA")))
    assert (trade.reason, trade.exit_at, trade.exit_price) == (
        ExitReason.TIME_STOP, datetime(2025, 1, 13, 9, 35, tzinfo=NEW_YORK), D("99.98"))


def test_no_free_slot_no_entry():
    flat = lambda: tuple(bar(d, 100, 100.5, 99.5, 100) for d in DAYS[:3])  # noqa: E731
    h = History({"AAA": flat(), "BBB": flat(), "CCC": flat()})
    ranked = {DAYS[0]: [RankedTicker("AAA"), RankedTicker("BBB")], DAYS[1]: [RankedTicker("CCC")]}
    result = run(h, settings(max_positions=1, max_position_pct=100), start=DAYS[0], end=DAYS[2], ranked=ranked)
    assert [t.symbol for t in result.trades] == ["AAA"]
    # One slot of the whole equity, less the 3% cash buffer: $97,000 at 100 = 970 shares.
    assert result.trades[0].qty == D("970")


def test_daily_loss_limit_halts_entries_until_resumed():
    # 970 shares at 100; day 1 opens at 96 (above the stop 95.00): equity 3,000 + 970 x 96 = 96,120,
    # 3.88% below the previous close's 100,000 >= 3%: halted, BBB is not entered that day.
    h = History({
        "AAA": (bar(DAYS[0], 100, 100.5, 99.5, 100), bar(DAYS[1], 96, 96.5, 95.5, 96), bar(DAYS[2], 96, 96.5, 95.5, 96)),
        "BBB": tuple(bar(d, 50, 50.5, 49.5, 50) for d in DAYS[:3]),
    })
    ranked = {DAYS[0]: [RankedTicker("AAA")], DAYS[1]: [RankedTicker("BBB")], DAYS[2]: [RankedTicker("BBB")]}
    base = dict(max_positions=2, max_position_pct=100)
    resumed = run(h, settings(**base, sizing="signals"), start=DAYS[0], end=DAYS[2], ranked=ranked)
    assert [d for d, _ in resumed.halts] == [DAYS[1]]
    assert "daily loss" in resumed.halts[0][1]
    assert [(t.symbol, t.entry_day) for t in resumed.trades] == [("AAA", DAYS[0]), ("BBB", DAYS[2])]
    never = run(h, settings(**base, sizing="signals", resume="never"), start=DAYS[0], end=DAYS[2], ranked=ranked)
    assert [t.symbol for t in never.trades] == ["AAA"]


def test_flatten_on_limit_sells_at_the_tick_that_trips_it():
    h = History({"AAA": (bar(DAYS[0], 100, 100.5, 99.5, 100), bar(DAYS[1], 96, 96.5, 95.5, 96))})
    result = run(h, settings(max_positions=1, max_position_pct=100, flatten_on_limit="true"),
                 start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA"))
    trade = one(result)
    assert (trade.reason, trade.exit_price, trade.exit_at.time()) == (ExitReason.RISK_LIMIT, D("96"), time(9, 30))


def test_a_split_while_held_rebases_the_position_instead_of_stopping_it_out():
    # Raw prices: 2-for-1 effective day 1. 200 shares at 100 become 400 at 50 (stop 47.50): the raw
    # open 50.5 is no stop-out. Equity: 80,000 cash + 400 x 50.8 = 100,320.
    h = History({"AAA": (bar(DAYS[0], 100, 100.5, 99.5, 100), bar(DAYS[1], 50.5, 51, 50, 50.8))},
                adjusted=False, splits={"AAA": ((DAYS[1], D(2)),)})
    result = run(h, settings(), start=DAYS[0], end=DAYS[1], ranked=enter(DAYS[0], "AAA"))
    trade = one(result)
    assert (trade.exit_day, trade.qty, trade.entry_price) == (None, D("400"), D("50"))
    assert "split x2" in trade.detail
    assert result.equity[-1] == (DAYS[1], D("100320.00"))


def test_fees_and_slippage_on_a_stop_out():
    # 5 bps: in at 100.05 (stop 95.05), 199 shares ($20,000 / 100.05 = 199.9 -> notional 199.900049975
    # shares); day 1 gaps to 94: sold at 94 less 5 bps = 93.95. SEC: proceeds x 27.80 per million, TAF:
    # 0.000166 a share, each rounded up to the cent.
    h = History({"AAA": (bar(DAYS[0], 100, 101, 99.5, 100.5), bar(DAYS[1], 94, 96, 93, 95))})
    result = run(h, BacktestSettings.load({"min_dollar_volume": "0"}), start=DAYS[0], end=DAYS[1],
                 ranked=enter(DAYS[0], "AAA"))
    trade = one(result)
    assert trade.entry_price == D("100.05") and trade.exit_price == D("93.95")
    proceeds = (trade.qty * D("93.95")).quantize(D("0.01"))
    assert trade.fees == D("0.53") + D("0.04")  # 18,780.61 x 0.0000278 = 0.522 -> 0.53; 199.9 x 0.000166 -> 0.04
    assert trade.realized_pl == proceeds - trade.fees - trade.cost


def test_unknown_override_is_one_clear_error():
    with pytest.raises(ConfigError, match="stop_los_pct.*did you mean stop_loss_pct"):
        setting_name("stop_los_pct")
    with pytest.raises(ConfigError, match="FL_STOP_LOSS_PCT"):
        BacktestSettings.load({"stop_loss_pct": "abc"})


def test_empty_period_is_an_input_error():
    h = History({"AAA": (bar(DAYS[0], 100, 101, 99.5, 100.5),)})
    with pytest.raises(InputError, match="no bars"):
        run(h, settings(), start=date(2030, 1, 1), end=date(2030, 2, 1))


# -- the scanner's backtest windows ------------------------------------------------------------------


def random_bars(n: int, seed: int) -> tuple[Bar, ...]:
    rng = random.Random(seed)
    price, out = 50.0, []
    for d in weekdays(date(2015, 1, 5), n):
        o = price * (1 + rng.gauss(0, 0.01))
        c = o * (1 + rng.gauss(0.001, 0.025))
        h, l = max(o, c) * (1 + abs(rng.gauss(0, 0.01))), min(o, c) * (1 - abs(rng.gauss(0, 0.01)))  # noqa: E741
        out.append(bar(d, round(o, 2), round(h, 2), round(l, 2), round(c, 2)))
        price = c
    return tuple(out)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_each_nights_window_is_the_scanners_own_backtest(strategy):
    bars = random_bars(700, 7)
    index = {b.t.date(): i for i, b in enumerate(bars)}
    rules = settings().rules
    walk = _StrategyTrades("AAA", bars, strategy, rules, index)
    for first, last in [(0, 299), (37, 400), (150, 699), (101, 350), (200, 230)]:
        trades, open_position, fired = walk.window(first, last)
        expected = backtest("AAA", bars[first:last + 1], strategy, rules, 1)
        assert trades == list(expected.trades)
        assert open_position == (expected.open_position is not None)
        assert fired == expected.signal_on_last_bar


def test_scan_driven_run_keeps_the_books_straight():
    # Five random tickers over three years through the real scan and ranking: every dollar is accounted
    # for (start cash + realized P/L + open positions at their last close = final equity).
    h = History({s: random_bars(780, seed) for seed, s in enumerate(["AAA", "BBB", "CCC", "DDD", "EEE"])})
    days = [b.t.date() for b in h.bars["AAA"]]
    result = run(h, BacktestSettings.load({"min_dollar_volume": "0"}), start=days[300], end=days[-1])
    assert result.closed, "the scan produced no trade"
    last_close = {s: bars[-1].c for s, bars in h.bars.items()}
    open_value = sum((t.qty * last_close[t.symbol] for t in result.trades if t.exit_day is None), D(0))
    open_cost = sum((t.cost for t in result.trades if t.exit_day is None), D(0))
    realized = sum((t.realized_pl for t in result.closed), D(0))
    assert result.equity[-1][1] == (result.start_cash + realized - open_cost + open_value).quantize(D("0.01"))
    assert all(t.entry_day >= days[300] for t in result.trades)
