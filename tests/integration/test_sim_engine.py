"""The simulated market's engine, in process: prices, clock and sessions, matching, accounting.

Expected prices are read from the market's own public bars (what any client can see), never
hard-coded: a test states the rule ("a stop fills when a minute's low reaches it"), the data says
where that happens.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from simhelpers import DEFAULT_START, NEW_YORK

from shared.errors import InputError, InsufficientQty, NotCancelable, NotFound
from shared.models import OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.money import is_valid_price_increment
from sim.engine import MarketEngine
from sim.engine.clock import VirtualClock
from sim.engine.orders import OrderRequest
from sim.engine.paths import to_price
from sim.engine.universe import DEFAULT_SYMBOLS

D = Decimal


@pytest.fixture
def engine() -> MarketEngine:
    return MarketEngine.create(start=DEFAULT_START)


def buy(symbol: str, qty: str | None = None, notional: str | None = None, **kw) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=Side.BUY,
        type=kw.pop("type", OrderType.MARKET),
        time_in_force=kw.pop("tif", TimeInForce.DAY),
        qty=D(qty) if qty is not None else None,
        notional=D(notional) if notional is not None else None,
        **kw,
    )


def sell(symbol: str, qty: str, **kw) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=Side.SELL,
        type=kw.pop("type", OrderType.MARKET),
        time_in_force=kw.pop("tif", TimeInForce.DAY),
        qty=D(qty),
        **kw,
    )


def oco(symbol: str, qty: str, stop: str, target: str, tif=TimeInForce.GTC) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=Side.SELL,
        type=OrderType.LIMIT,
        time_in_force=tif,
        qty=D(qty),
        order_class=OrderClass.OCO,
        take_profit_limit_price=D(target),
        stop_loss_stop_price=D(stop),
    )


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


def last_price(engine: MarketEngine, symbol: str) -> Decimal:
    return to_price(engine.latest_trade(symbol)[0])


def events_of(engine: MarketEngine, order_id: str) -> list[str]:
    return [e.event for e in engine.events_since(0) if e.order.id == order_id]


# -- universe and prices ------------------------------------------------------------------------


def test_default_universe_has_twenty_plus_tickers_with_whole_share_only_and_sub_dollar_assets(engine):
    assets = engine.assets()
    assert len(assets) >= 20
    assert len({a.symbol for a in assets}) == len(assets)
    assert len([a for a in assets if not a.fractionable]) >= 2
    assert any(last_price(engine, a.symbol) < 1 for a in assets)


def test_large_universe_adds_deterministic_synthetic_tickers():
    first = MarketEngine.create(start=DEFAULT_START, universe_size=500)
    second = MarketEngine.create(start=DEFAULT_START, universe_size=500)
    symbols = [a.symbol for a in first.assets()]
    assert len(set(symbols)) == 500
    assert symbols == [a.symbol for a in second.assets()]
    assert set(DEFAULT_SYMBOLS) <= set(symbols)
    extra = symbols[-1]
    assert first.bars(extra, "1Day", ny(2022, 3, 1), ny(2024, 3, 1)) == second.bars(
        extra, "1Day", ny(2022, 3, 1), ny(2024, 3, 1)
    )


def test_same_seed_gives_the_same_prices_and_another_seed_different_ones():
    a = MarketEngine.create(seed=11, start=DEFAULT_START)
    b = MarketEngine.create(seed=11, start=DEFAULT_START)
    c = MarketEngine.create(seed=12, start=DEFAULT_START)
    window = (ny(2023, 6, 1), ny(2024, 3, 4, 9, 45))
    for timeframe in ("1Day", "1Min"):
        assert a.bars("MSFT", timeframe, *window) == b.bars("MSFT", timeframe, *window)
        assert a.bars("MSFT", timeframe, *window) != c.bars("MSFT", timeframe, *window)


def test_history_before_the_start_moves_in_the_session_like_the_days_after_it():
    # The scanner backtests the history before the start, the demo trades the days after it: both
    # must be the same kind of chart (each day opening near the previous close and moving in the
    # session), or a backtest would judge a strategy on gaps it will never meet live.
    import math
    import statistics

    def gap_share(bars) -> float:
        gaps = [math.log(b.open / a.close) for a, b in zip(bars, bars[1:], strict=False)]
        moves = [math.log(b.close / a.close) for a, b in zip(bars, bars[1:], strict=False)]
        return statistics.pvariance(gaps) / statistics.pvariance(moves)

    before = MarketEngine.create(start=ny(2024, 3, 4, 9, 0))
    after = MarketEngine.create(start=ny(2022, 3, 1, 9, 0))
    after.advance_to(ny(2024, 3, 4, 9, 0))
    window = (ny(2022, 3, 2), ny(2024, 3, 1, 23, 0))
    for symbol in ("AAPL", "TSLA", "SENS"):
        for engine in (before, after):
            bars = engine.bars(symbol, "1Day", *window)
            assert len(bars) > 480
            assert gap_share(bars) < 0.2, (symbol, engine is before)


def test_minute_bars_aggregate_exactly_to_the_daily_bar():
    engine = MarketEngine.create(start=ny(2024, 3, 8, 17, 0))
    for symbol in ("AAPL", "SENS", "TSLA"):
        day = engine.bars(symbol, "1Day", ny(2024, 3, 7), ny(2024, 3, 7, 23, 0))[0]
        minutes = engine.bars(symbol, "1Min", ny(2024, 3, 7), ny(2024, 3, 7, 23, 0))
        assert len(minutes) == 390
        assert minutes[0].open == day.open and minutes[-1].close == day.close
        assert max(m.high for m in minutes) == day.high and min(m.low for m in minutes) == day.low
        assert sum(m.volume for m in minutes) == day.volume


def test_early_close_session_has_minute_bars_only_until_one_pm():
    engine = MarketEngine.create(start=ny(2024, 12, 2, 9, 0))
    minutes = engine.bars("AAPL", "1Min", ny(2024, 11, 29), ny(2024, 11, 29, 23, 0))
    assert len(minutes) == 210
    assert minutes[-1].t.astimezone(NEW_YORK) == ny(2024, 11, 29, 12, 59)


def test_every_price_is_on_alpacas_increment_two_decimals_above_a_dollar_four_below(engine):
    for symbol in ("AAPL", "SENS", "TELL", "F"):
        for bar in engine.bars(symbol, "1Min", ny(2024, 3, 1), DEFAULT_START):
            for ticks in (bar.open, bar.high, bar.low, bar.close):
                assert is_valid_price_increment(to_price(ticks))
        quote = engine.latest_quote(symbol)
        assert is_valid_price_increment(to_price(quote.bid)) and is_valid_price_increment(to_price(quote.ask))
        assert quote.bid < quote.ask


def test_bars_never_include_the_future(engine):
    minutes = engine.bars("AAPL", "1Min", ny(2024, 3, 4), ny(2024, 3, 5))
    assert minutes[-1].t.astimezone(NEW_YORK) == ny(2024, 3, 4, 9, 59)
    days = engine.bars("AAPL", "1Day", ny(2024, 2, 1), ny(2024, 3, 10))
    assert days[-1].t.astimezone(NEW_YORK).date() == date(2024, 3, 4)
    # Today's daily bar is the session so far: its close is the last trade.
    assert to_price(days[-1].close) == last_price(engine, "AAPL")


def test_five_minute_bars_aggregate_minute_bars_on_the_clock(engine):
    five = engine.bars("AAPL", "5Min", ny(2024, 3, 1, 9, 30), ny(2024, 3, 1, 16, 0))
    ones = engine.bars("AAPL", "1Min", ny(2024, 3, 1, 9, 30), ny(2024, 3, 1, 16, 0))
    assert len(five) == 78
    assert [b.t.astimezone(NEW_YORK).minute % 5 for b in five] == [0] * 78
    assert five[0].open == ones[0].open and five[0].close == ones[4].close
    assert five[0].high == max(b.high for b in ones[:5])


def test_set_price_continues_the_path_from_the_new_price(engine):
    before = engine.bars("AAPL", "1Min", ny(2024, 3, 4), ny(2024, 3, 5))
    engine.set_price("AAPL", D("100"))
    assert last_price(engine, "AAPL") == D("100")
    engine.advance(3600)
    assert abs(last_price(engine, "AAPL") - 100) < 10
    after = engine.bars("AAPL", "1Min", ny(2024, 3, 4), ny(2024, 3, 5))
    assert after[: len(before)] == before  # history does not change


def test_csv_replay_serves_the_csv_daily_bars_and_bridges_minutes_between_them(tmp_path: Path):
    csv_path = tmp_path / "bars.csv"
    csv_path.write_text(
        "symbol,timestamp,open,high,low,close,volume\n"
        "ACME,2024-03-01,10.00,10.50,9.80,10.20,100000\n"
        "ACME,2024-03-04,10.25,11.00,10.10,10.90,120000\n"
        "ACME,2024-03-05,10.90,11.20,10.60,10.70,90000\n"
    )
    engine = MarketEngine.create(start=ny(2024, 3, 6, 8, 0), bars_csv=csv_path)
    assert [a.symbol for a in engine.assets()] == ["ACME"]
    days = engine.bars("ACME", "1Day", ny(2024, 3, 1), ny(2024, 3, 5, 23, 0))
    assert [
        (to_price(d.open), to_price(d.high), to_price(d.low), to_price(d.close), d.volume) for d in days
    ] == [
        (D("10"), D("10.5"), D("9.8"), D("10.2"), 100000),
        (D("10.25"), D("11"), D("10.1"), D("10.9"), 120000),
        (D("10.9"), D("11.2"), D("10.6"), D("10.7"), 90000),
    ]
    minutes = engine.bars("ACME", "1Min", ny(2024, 3, 4), ny(2024, 3, 4, 23, 0))
    assert max(m.high for m in minutes) == days[1].high and min(m.low for m in minutes) == days[1].low


def test_unreadable_csv_is_a_one_line_input_error(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,timestamp,open,high,low,close,volume\nACME,2024-03-01,ten,1,1,1,1\n")
    with pytest.raises(InputError, match=r"bad.csv:2: unreadable bar row"):
        MarketEngine.create(start=DEFAULT_START, bars_csv=bad)
    missing = tmp_path / "cols.csv"
    missing.write_text("symbol,date,close\n")
    with pytest.raises(InputError, match="needs columns"):
        MarketEngine.create(start=DEFAULT_START, bars_csv=missing)


# -- clock and sessions --------------------------------------------------------------------------


def test_frozen_clock_moves_only_when_advanced():
    wall = [100.0]
    clock = VirtualClock(DEFAULT_START, speed=0, wall=lambda: wall[0])
    wall[0] += 3600
    assert clock.now() == DEFAULT_START
    assert clock.advance(90) == DEFAULT_START + timedelta(seconds=90)
    assert clock.advance_to(DEFAULT_START) == DEFAULT_START + timedelta(seconds=90)  # never backward


def test_running_clock_follows_wall_time_times_speed_and_keeps_time_on_speed_change():
    wall = [0.0]
    clock = VirtualClock(DEFAULT_START, speed=60, wall=lambda: wall[0])
    wall[0] = 2.0
    assert clock.now() == DEFAULT_START + timedelta(minutes=2)
    clock.set_speed(0)
    wall[0] = 100.0
    assert clock.now() == DEFAULT_START + timedelta(minutes=2)


def test_clock_reports_the_next_open_over_a_weekend_and_the_holiday(engine):
    engine.advance_to(ny(2024, 7, 3, 13, 30))  # early close day, after the 13:00 close
    clock = engine.clock_view()
    assert not clock.is_open
    assert clock.next_open == ny(2024, 7, 5, 9, 30)  # July 4th is a holiday
    assert [d.date for d in engine.calendar(date(2024, 7, 1), date(2024, 7, 7))] == [
        date(2024, 7, 1),
        date(2024, 7, 2),
        date(2024, 7, 3),
        date(2024, 7, 5),
    ]
    assert engine.calendar(date(2024, 7, 3), date(2024, 7, 3))[0].close == ny(2024, 7, 3, 13, 0)


def test_order_outside_the_session_is_accepted_then_fills_at_the_next_open():
    engine = MarketEngine.create(start=ny(2024, 3, 1, 18, 0))  # Friday evening
    order = engine.submit_order(buy("AAPL", "10"))
    assert order.status is OrderStatus.ACCEPTED
    engine.advance_to(ny(2024, 3, 4, 9, 29))
    assert engine.get_order(order.id).status is OrderStatus.ACCEPTED
    engine.advance_to(ny(2024, 3, 4, 9, 30))
    filled = engine.get_order(order.id)
    assert filled.status is OrderStatus.FILLED
    assert filled.filled_at.astimezone(NEW_YORK).replace(microsecond=0) == ny(2024, 3, 4, 9, 30)
    engine.advance(60)  # the opening minute's bar is published once the minute is over
    opening = engine.bars("AAPL", "1Min", ny(2024, 3, 4, 9, 30), ny(2024, 3, 4, 9, 30))[0]
    assert filled.filled_avg_price >= to_price(opening.open)  # the open, plus the half spread
    assert filled.filled_avg_price - to_price(opening.open) < D("0.10")
    assert events_of(engine, order.id) == ["accepted", "new", "fill"]


def test_unfilled_day_order_expires_at_the_close(engine):
    order = engine.submit_order(buy("AAPL", "1", type=OrderType.LIMIT, limit_price=D("1.00")))
    engine.advance_to(ny(2024, 3, 4, 15, 59))
    assert engine.get_order(order.id).status is OrderStatus.NEW
    engine.advance_to(ny(2024, 3, 4, 16, 0))
    expired = engine.get_order(order.id)
    assert expired.status is OrderStatus.EXPIRED
    assert expired.expired_at.astimezone(NEW_YORK).replace(microsecond=0) == ny(2024, 3, 4, 16, 0)
    assert engine.account().buying_power == engine.account().cash  # its reservation is released


def test_day_order_expires_at_an_early_close_and_gtc_order_lives_on():
    engine = MarketEngine.create(start=ny(2024, 11, 29, 10, 0))
    day = engine.submit_order(buy("AAPL", "1", type=OrderType.LIMIT, limit_price=D("1.00")))
    gtc = engine.submit_order(
        buy("MSFT", "1", type=OrderType.LIMIT, limit_price=D("1.00"), tif=TimeInForce.GTC)
    )
    engine.advance_to(ny(2024, 11, 29, 13, 0))
    assert engine.get_order(day.id).status is OrderStatus.EXPIRED
    engine.advance_to(ny(2024, 12, 6, 17, 0))
    assert engine.get_order(gtc.id).status is OrderStatus.NEW


# -- matching ---------------------------------------------------------------------------------


def test_market_buy_fills_at_the_ask_and_market_sell_at_the_bid(engine):
    quote = engine.latest_quote("MSFT")
    bought = engine.submit_order(buy("MSFT", "3"))
    assert engine.get_order(bought.id).filled_avg_price == to_price(quote.ask)
    sold = engine.submit_order(sell("MSFT", "3"))
    assert engine.get_order(sold.id).filled_avg_price == to_price(quote.bid)


def test_resting_stop_fills_in_the_first_minute_whose_low_reaches_it(engine):
    engine.submit_order(buy("AAPL", "10"))
    path = engine.bars("AAPL", "1Min", ny(2024, 3, 4), ny(2024, 3, 5))  # so far: nothing after 10:00
    assert path
    stop = last_price(engine, "AAPL") - D("0.50")
    order = engine.submit_order(sell("AAPL", "10", type=OrderType.STOP, stop_price=stop, tif=TimeInForce.GTC))
    engine.advance_to(ny(2024, 3, 8, 16, 0))
    minutes = [b for b in engine.bars("AAPL", "1Min", ny(2024, 3, 4, 10, 0), ny(2024, 3, 8, 16, 0))]
    first_touch = next(b for b in minutes if to_price(b.low) <= stop)
    filled = engine.get_order(order.id)
    assert filled.status is OrderStatus.FILLED
    assert filled.filled_at.replace(microsecond=0) == first_touch.t + timedelta(minutes=1)
    assert filled.filled_avg_price <= stop


def test_price_forced_below_a_stop_fills_it_at_once(engine):
    engine.submit_order(buy("AAPL", "10"))
    order = engine.submit_order(
        sell("AAPL", "10", type=OrderType.STOP, stop_price=D("150"), tif=TimeInForce.GTC)
    )
    engine.set_price("AAPL", D("149"))
    filled = engine.get_order(order.id)
    assert filled.status is OrderStatus.FILLED
    assert filled.filled_avg_price < D("149")  # at the bid
    assert engine.positions() == []


def test_oco_target_fill_cancels_the_stop_and_releases_nothing_twice(engine):
    engine.submit_order(buy("AAPL", "10"))
    group = engine.submit_order(oco("AAPL", "10", stop="150", target="200"))
    assert engine.positions()[0].qty_available == 0  # the group holds the shares once
    engine.set_price("AAPL", D("201"))
    parent = engine.get_order(group.id)
    assert parent.status is OrderStatus.FILLED and parent.filled_avg_price >= D("200")
    assert parent.legs[0].status is OrderStatus.CANCELED
    assert engine.positions() == []


def test_oco_stop_fill_cancels_the_target(engine):
    engine.submit_order(buy("AAPL", "10"))
    group = engine.submit_order(oco("AAPL", "10", stop="150", target="200"))
    engine.set_price("AAPL", D("140"))
    parent = engine.get_order(group.id)
    assert parent.status is OrderStatus.CANCELED
    assert parent.legs[0].status is OrderStatus.FILLED
    assert [e.event for e in engine.events_since(0)][-2:] == ["fill", "canceled"]


def test_resting_limit_buy_fills_at_its_limit_in_the_first_minute_trading_through_it(engine):
    # The same seed is the same market: a twin engine shows today's low before we place the order.
    twin = MarketEngine.create(start=DEFAULT_START)
    twin.advance_to(ny(2024, 3, 4, 16, 0))
    for symbol in ("NVDA", "AAPL", "MSFT", "TSLA", "AMD", "META"):
        later = twin.bars(symbol, "1Min", ny(2024, 3, 4, 10, 0), ny(2024, 3, 4, 16, 0))
        limit = min(to_price(b.low) for b in later) + D("0.05")
        if limit < to_price(engine.latest_quote(symbol).ask) - D("0.10"):  # not marketable now
            break
    else:
        pytest.fail("no symbol trades below its 10:00 ask later that day")
    order = engine.submit_order(buy(symbol, "2", type=OrderType.LIMIT, limit_price=limit))
    engine.advance_to(ny(2024, 3, 4, 16, 0))
    first_touch = next(b for b in later if to_price(b.low) <= limit)
    result = engine.get_order(order.id)
    assert result.status is OrderStatus.FILLED and result.filled_avg_price == limit
    assert result.filled_at.replace(microsecond=0) == first_touch.t + timedelta(minutes=1)


def test_partial_fill_on_demand_then_the_rest(engine):
    engine.partial_fill_next("AAPL", D("0.3"))
    order = engine.submit_order(buy("AAPL", "10"))
    first = engine.get_order(order.id)
    assert first.status is OrderStatus.PARTIALLY_FILLED and first.filled_qty == 3
    assert engine.positions()[0].qty == 3
    engine.fill_order(order.id)
    done = engine.get_order(order.id)
    assert done.status is OrderStatus.FILLED and done.filled_qty == 10
    fills = [e for e in engine.events_since(0) if e.order.id == order.id and e.price is not None]
    assert [(e.event, e.qty, e.position_qty, e.order.filled_qty) for e in fills] == [
        ("partial_fill", 3, 3, 3),
        ("fill", 7, 10, 10),
    ]
    assert len({e.execution_id for e in fills}) == 2


def test_partially_filled_market_order_fills_the_rest_at_the_next_minute(engine):
    engine.partial_fill_next("AAPL", D("0.5"))
    order = engine.submit_order(buy("AAPL", "4"))
    engine.advance(30)
    assert engine.get_order(order.id).filled_qty == 2
    engine.advance(30)
    assert engine.get_order(order.id).status is OrderStatus.FILLED


def test_trade_updates_carry_this_executions_qty_and_price_and_cumulative_order_fields(engine):
    engine.partial_fill_next("AAPL", D("0.5"))
    order = engine.submit_order(buy("AAPL", "4"))
    engine.fill_order(order.id, price=D("180"))
    second = engine.events_since(0)[-1]
    assert (second.event, second.qty, second.price) == ("fill", 2, D("180"))
    first_price = [e for e in engine.events_since(0) if e.event == "partial_fill"][0].price
    assert second.order.filled_qty == 4
    assert second.order.filled_avg_price == (2 * first_price + 2 * D("180")) / 4


# -- accounting ------------------------------------------------------------------------------


def test_default_account_has_200k_cash_and_equal_buying_power_and_equity(engine):
    account = engine.account()
    assert (account.cash, account.buying_power, account.equity, account.last_equity) == (D("200000"),) * 4


def test_buy_moves_cash_into_a_position_at_its_fill_price(engine):
    order = engine.submit_order(buy("MSFT", "10"))
    fill = engine.get_order(order.id).filled_avg_price
    account = engine.account()
    assert account.cash == D("200000") - 10 * fill
    position = engine.position("MSFT")
    assert (position.qty, position.avg_entry_price, position.cost_basis) == (10, fill, 10 * fill)
    assert account.equity == account.cash + position.market_value


def test_average_entry_price_is_quantity_weighted_over_buys(engine):
    first = engine.fill_order(
        engine.submit_order(buy("AAPL", "1", type=OrderType.LIMIT, limit_price=D("100"))).id, price=D("100")
    )
    second = engine.fill_order(
        engine.submit_order(buy("AAPL", "3", type=OrderType.LIMIT, limit_price=D("120"))).id, price=D("120")
    )
    assert first.status is second.status is OrderStatus.FILLED
    assert engine.position("AAPL").avg_entry_price == D("115")


def test_open_buy_orders_reserve_buying_power_limit_at_limit_market_with_cushion():
    engine = MarketEngine.create(start=ny(2024, 3, 2, 12, 0))  # Saturday: nothing fills
    engine.submit_order(buy("AAPL", "10", type=OrderType.LIMIT, limit_price=D("100")))
    assert engine.account().buying_power == D("200000") - D("1000")
    ask = to_price(engine.latest_quote("MSFT").ask)
    engine.submit_order(buy("MSFT", "10"))
    expected = D("200000") - D("1000") - 10 * ask * D("1.025")
    assert engine.account().buying_power == expected.quantize(D("0.01"))
    engine.submit_order(buy("AAPL", notional="500"))
    assert engine.account().buying_power == (expected - 500).quantize(D("0.01"))
    assert engine.account().cash == D("200000")


def test_last_equity_is_the_equity_at_the_previous_close(engine):
    engine.submit_order(buy("AAPL", "100"))
    engine.advance_to(ny(2024, 3, 4, 16, 0))
    at_close = engine.account().equity
    engine.advance_to(ny(2024, 3, 5, 11, 0))
    account = engine.account()
    assert account.last_equity == at_close
    assert account.equity != at_close  # the price moved since


def test_sells_reserve_shares_and_a_second_exit_for_them_is_refused(engine):
    engine.submit_order(buy("AAPL", "10"))
    engine.submit_order(sell("AAPL", "10", type=OrderType.STOP, stop_price=D("150"), tif=TimeInForce.GTC))
    assert engine.position("AAPL").qty_available == 0
    with pytest.raises(InsufficientQty) as refused:
        engine.submit_order(
            sell("AAPL", "10", type=OrderType.LIMIT, limit_price=D("250"), tif=TimeInForce.GTC)
        )
    assert refused.value.available == 0 and refused.value.status == 403


def test_cancel_releases_shares_and_a_filled_order_cannot_be_canceled(engine):
    bought = engine.submit_order(buy("AAPL", "10"))
    group = engine.submit_order(oco("AAPL", "10", stop="150", target="200"))
    engine.cancel_order(group.legs[0].id)  # canceling a leg cancels the whole OCO
    assert engine.get_order(group.id).status is OrderStatus.CANCELED
    assert engine.position("AAPL").qty_available == 10
    with pytest.raises(NotCancelable):
        engine.cancel_order(bought.id)
    with pytest.raises(NotFound):
        engine.cancel_order("00000000-0000-0000-0000-000000000000")


def test_state_dump_lists_every_order_with_its_history_and_every_fill(engine):
    engine.submit_order(buy("AAPL", "10"))
    engine.submit_order(oco("AAPL", "10", stop="150", target="200"))
    engine.set_price("AAPL", D("140"))
    state = engine.state()
    assert [o["order"].symbol for o in state["orders"]] == ["AAPL", "AAPL"]
    assert [h["event"] for h in state["orders"][0]["history"]] == ["new", "fill"]
    assert [h["event"] for h in state["orders"][1]["legs"][0]["history"]] == ["new", "fill"]
    assert [(f["side"], f["qty"], f["position_qty_after"]) for f in state["fills"]] == [
        ("buy", 10, 10),
        ("sell", 10, 0),
    ]


def test_ten_trading_days_with_resting_orders_in_twenty_symbols_process_every_session(engine):
    symbols = [a.symbol for a in engine.assets() if a.fractionable][:20]
    for symbol in symbols:
        engine.submit_order(buy(symbol, notional="1000"))
    for position in engine.positions():
        price = last_price(engine, position.symbol)
        stop = (price * D("0.95")).quantize(D("0.0001") if price < 1 else D("0.01"))
        engine.submit_order(sell(position.symbol, str(position.qty), type=OrderType.STOP, stop_price=stop))
    engine.advance_to(ny(2024, 3, 18, 10, 0))
    expired_or_filled = [o for o in engine.list_orders(status="closed", limit=1000) if o.side is Side.SELL]
    # Fractional stops are day orders: each expired at the first close unless its stop was hit.
    assert len(expired_or_filled) == 20
    assert {o.status for o in expired_or_filled} <= {OrderStatus.EXPIRED, OrderStatus.FILLED}
    assert engine.clock_view().is_open


# -- splits ----------------------------------------------------------------------------------------

HALF_CENT = D("0.005")


def test_forward_split_two_for_one_rebases_the_position_the_price_and_all_history(engine):
    engine.submit_order(buy("AAPL", "10"))
    held = engine.position("AAPL")
    price = last_price(engine, "AAPL")
    days = engine.bars("AAPL", "1Day", ny(2024, 2, 1), ny(2024, 3, 4, 23, 0))
    minutes = engine.bars("AAPL", "1Min", ny(2024, 3, 1), ny(2024, 3, 4, 23, 0))

    action = engine.split("AAPL", 2, 1)

    position = engine.position("AAPL")
    assert (action.type, action.ratio, action.ex_date) == ("forward_split", 2, date(2024, 3, 4))
    assert position.qty == 20 and position.cost_basis == held.cost_basis
    assert position.avg_entry_price == (held.avg_entry_price / 2).quantize(D("0.0001"))
    assert abs(last_price(engine, "AAPL") - price / 2) <= HALF_CENT
    assert abs(position.market_value - held.market_value) <= 20 * HALF_CENT
    # History reads split-adjusted: the same bars, prices halved on the grid, volumes doubled.
    for before, after in (
        (days, engine.bars("AAPL", "1Day", ny(2024, 2, 1), ny(2024, 3, 4, 23, 0))),
        (minutes, engine.bars("AAPL", "1Min", ny(2024, 3, 1), ny(2024, 3, 4, 23, 0))),
    ):
        assert [b.t for b in after] == [b.t for b in before]
        for old, new in zip(before, after, strict=True):
            assert abs(to_price(new.close) - to_price(old.close) / 2) <= HALF_CENT
            assert abs(to_price(new.low) - to_price(old.low) / 2) <= HALF_CENT
            assert new.volume == 2 * old.volume
    today = engine.bars("AAPL", "1Day", ny(2024, 3, 4), ny(2024, 3, 4, 23, 0))[-1]
    assert to_price(today.close) == last_price(engine, "AAPL")


def test_reverse_split_one_for_four_keeps_the_fractional_share_and_the_cost_basis(engine):
    engine.submit_order(buy("TSLA", "10"))
    held = engine.position("TSLA")
    price = last_price(engine, "TSLA")
    days = engine.bars("TSLA", "1Day", ny(2024, 2, 1), ny(2024, 3, 1, 23, 0))

    action = engine.split("TSLA", 1, 4)

    position = engine.position("TSLA")
    assert (action.type, action.ratio) == ("reverse_split", D("0.25"))
    assert position.qty == D("2.5")  # no cash in lieu: the half share stays
    assert position.cost_basis == held.cost_basis
    assert position.avg_entry_price == (held.avg_entry_price * 4).quantize(D("0.0001"))
    assert last_price(engine, "TSLA") == price * 4
    after = engine.bars("TSLA", "1Day", ny(2024, 2, 1), ny(2024, 3, 1, 23, 0))
    assert [to_price(b.open) for b in after] == [to_price(b.open) * 4 for b in days]
    assert all(abs(new.volume * 4 - old.volume) <= 2 for old, new in zip(days, after, strict=True))


def _protected(engine: MarketEngine, symbol: str = "AAPL"):
    """10 shares under a GTC OCO (stop 150.01, target 200.01) and a resting GTC limit buy of 4 at
    180.01: odd cents, so halving them lands between two cents and must be rounded."""
    engine.submit_order(buy(symbol, "10"))
    group = engine.submit_order(oco(symbol, "10", stop="150.01", target="200.01"))
    limit = engine.submit_order(
        buy(symbol, "4", type=OrderType.LIMIT, limit_price=D("180.01"), tif=TimeInForce.GTC)
    )
    return group, limit


def test_split_adjusts_resting_orders_by_default_the_whole_oco_group(engine):
    group, limit = _protected(engine)
    buying_power = engine.account().buying_power

    engine.split("AAPL", 2, 1)

    parent, resting = engine.get_order(group.id), engine.get_order(limit.id)
    leg = parent.legs[0]
    assert (parent.status, leg.status, resting.status) == (OrderStatus.NEW, OrderStatus.HELD, OrderStatus.NEW)
    assert (parent.qty, parent.limit_price) == (20, D("100.01"))  # 100.005 rounds half up
    assert (leg.qty, leg.stop_price) == (20, D("75.01"))
    assert (resting.qty, resting.limit_price) == (8, D("90.01"))
    position = engine.position("AAPL")
    assert (position.qty, position.qty_available) == (20, 0)  # the group holds all 20, once
    assert engine.account().buying_power == buying_power  # 8 x 90.005 reserve = 4 x 180.01
    assert "canceled" not in [e.event for e in engine.events_since(0)]
    with pytest.raises(InsufficientQty):
        engine.submit_order(sell("AAPL", "1"))


def test_split_with_orders_cancel_cancels_every_open_order_of_the_symbol(engine):
    group, limit = _protected(engine)
    other = engine.submit_order(
        buy("MSFT", "1", type=OrderType.LIMIT, limit_price=D("300"), tif=TimeInForce.GTC)
    )

    engine.split("AAPL", 2, 1, orders="cancel")

    parent = engine.get_order(group.id)
    assert parent.status is OrderStatus.CANCELED and parent.legs[0].status is OrderStatus.CANCELED
    assert engine.get_order(limit.id).status is OrderStatus.CANCELED
    assert engine.get_order(other.id).status is OrderStatus.NEW
    assert events_of(engine, group.id)[-1] == "canceled" and events_of(engine, limit.id)[-1] == "canceled"
    position = engine.position("AAPL")
    assert (position.qty, position.qty_available) == (20, 20)


def test_split_with_orders_keep_leaves_them_stale_and_holds_only_their_old_quantity(engine):
    group, limit = _protected(engine)

    engine.split("AAPL", 2, 1, orders="keep")

    parent, resting = engine.get_order(group.id), engine.get_order(limit.id)
    assert (parent.qty, parent.limit_price, parent.legs[0].stop_price) == (10, D("200.01"), D("150.01"))
    assert (resting.qty, resting.limit_price) == (4, D("180.01"))
    position = engine.position("AAPL")
    assert (position.qty, position.qty_available) == (20, 10)
    # The 10 shares the stale group does not hold can be offered (a limit: a market sell would
    # wash against the resting buy).
    engine.submit_order(sell("AAPL", "10", type=OrderType.LIMIT, limit_price=D("500"), tif=TimeInForce.GTC))
    assert engine.position("AAPL").qty_available == 0


def test_announced_split_is_recorded_and_unannounced_one_only_rebases():
    engine = MarketEngine.create(start=ny(2024, 3, 8, 17, 0))  # Friday after the close
    engine.submit_order(buy("AAPL", "3"))  # queued for Monday's open
    engine.split("F", 3, 2)
    engine.split("AAPL", 2, 1, announce=False)

    recorded = engine.splits()
    assert [(a.symbol, a.type, a.ex_date) for a in recorded] == [("F", "forward_split", date(2024, 3, 11))]
    assert (recorded[0].new_rate, recorded[0].old_rate, recorded[0].ratio) == (3, 2, D("1.5"))
    assert len(recorded[0].new_cusip) == 9 and recorded[0].record_date < recorded[0].ex_date
    assert engine.splits(["AAPL"]) == [] and engine.splits(["F"], date(2024, 3, 12), date(2024, 3, 15)) == []
    assert [s["symbol"] for s in engine.state()["splits"]] == ["F"]


def test_split_refuses_bad_input_with_one_line_errors(engine):
    for new_rate, old_rate, orders in (
        (0, 1, "adjust"),
        (2, -1, "adjust"),
        ("nan", 1, "adjust"),
        (2, 2, "adjust"),
        (2, 1, "replace"),
    ):
        with pytest.raises(InputError) as refused:
            engine.split("AAPL", new_rate, old_rate, orders=orders)
        assert "\n" not in str(refused.value)
    with pytest.raises(NotFound):
        engine.split("NOSUCHTICKER", 2, 1)
    assert engine.splits() == []


# -- the in-process adapter ------------------------------------------------------------------------


def test_simulated_executor_raises_the_typed_errors_an_alpaca_adapter_would(engine):
    from shared.errors import DuplicateClientOrderId, FractionalRuleViolation, NotFractionable
    from sim.executor import SimulatedExecutor

    executor = SimulatedExecutor(engine)
    executor.buy_qty("AAPL", D("10"), "entry-1")
    with pytest.raises(NotFractionable):
        executor.buy_notional("FUBO", D("500"), "entry-2")
    with pytest.raises(DuplicateClientOrderId):
        executor.buy_qty("MSFT", D("1"), "entry-1")
    executor.submit_protective_exit("AAPL", D("10"), D("150"), D("250"), "protect-1")
    with pytest.raises(InsufficientQty) as held:
        executor.submit_protective_exit("AAPL", D("10"), D("150"), None, "protect-2")
    assert held.value.available == 0
    with pytest.raises(FractionalRuleViolation):
        executor.sell_market("MSFT", D("0.5"), "short-1")
    assert executor.get_order_by_client_id("entry-2") is None


def test_simulated_trade_stream_connects_before_updates_and_delivers_new_then_fill(engine):
    import threading

    from sim.executor import SimulatedExecutor

    executor = SimulatedExecutor(engine)
    stream = executor.trade_update_stream()
    updates, connected = [], threading.Event()
    runner = threading.Thread(target=stream.run, args=(updates.append, connected.set), daemon=True)
    runner.start()
    assert connected.wait(5)
    order = executor.buy_qty("AAPL", D("2"), "stream-1")
    deadline = time.monotonic() + 5
    while len(updates) < 2 and time.monotonic() < deadline:
        runner.join(0.01)
    stream.stop()
    runner.join(5)
    assert [(u.event.value, u.order.id, u.qty, u.position_qty) for u in updates] == [
        ("new", order.id, None, None),
        ("fill", order.id, 2, 2),
    ]
    assert updates[1].execution_id is not None and updates[1].order.filled_qty == 2


def test_last_equity_is_the_previous_close_until_the_next_open():
    from datetime import datetime
    from decimal import Decimal

    from shared.market.calendar import NEW_YORK
    from sim.engine import MarketEngine
    from sim.engine.orders import OrderRequest

    engine = MarketEngine.create(seed=7, start=datetime(2024, 3, 4, 10, 0, tzinfo=NEW_YORK), speed=0)
    from shared.models import OrderType, Side, TimeInForce

    engine.submit_order(OrderRequest(symbol="AAPL", side=Side.BUY, type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                                     qty=Decimal("100"), client_order_id="eq-1"))
    engine.advance_to(datetime(2024, 3, 4, 16, 5, tzinfo=NEW_YORK))
    monday_close = engine.account()
    assert monday_close.last_equity == Decimal("200000.00")  # still Friday's close (the start)
    assert monday_close.equity != monday_close.last_equity   # so "change today" is visible at 16:05
    engine.advance_to(datetime(2024, 3, 5, 9, 31, tzinfo=NEW_YORK))
    assert engine.account().last_equity == monday_close.equity


def test_an_order_state_change_the_transition_table_forbids_is_refused(engine):
    from shared.errors import NotCancelable
    from shared.models import OrderStatus

    order = engine.submit_order(buy("AAPL", qty="1"))
    assert engine.get_order(order.id).status is OrderStatus.FILLED
    events = len(engine.events_since(0))
    # The broker's own change goes through the engine's one status setter: a filled order is never
    # cancelled (shared.models.ORDER_TRANSITIONS), so the change is refused and nothing moves.
    with pytest.raises(NotCancelable, match="filled -> canceled is not a legal transition"):
        engine.broker_status(order.id, OrderStatus.CANCELED)
    assert engine.get_order(order.id).status is OrderStatus.FILLED
    assert len(engine.events_since(0)) == events


def test_the_broker_cancels_a_resting_order_on_its_own(engine):
    from shared.models import OrderStatus

    resting = engine.submit_order(buy("AAPL", qty="1", type=OrderType.LIMIT, limit_price=D("1.00")))
    assert engine.get_order(resting.id).status is OrderStatus.NEW
    engine.broker_status(resting.id, OrderStatus.CANCELED)
    assert engine.get_order(resting.id).status is OrderStatus.CANCELED
    assert engine.events_since(0)[-1].event == "canceled"
    assert resting.id not in {o.id for o in engine.list_orders(status="open")}

