"""The broker contract: what every `OrderExecutor` guarantees, run unchanged against each adapter.

- "simulated": `SimulatedExecutor` driving a `MarketEngine` in this process.
- "alpaca-over-http": the production `AlpacaExecutor` (alpaca-py over HTTP and WebSocket) talking to
  the Alpaca-compatible simulator server.

Both start from the same fresh, deterministic market: seed 7, $200,000 cash, the clock frozen on
Monday 2024-03-04 10:00 New York (market open). Time moves only when a test advances it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import requests
from alpaca.data.enums import CorporateActionsType
from alpaca.data.historical.corporate_actions import CorporateActionsClient
from alpaca.data.models.corporate_actions import ForwardSplit, ReverseSplit
from alpaca.data.requests import CorporateActionsRequest
from simhelpers import DEFAULT_START, start_sim

from shared.broker import procedures
from shared.broker.alpaca import AlpacaExecutor, close_sdk_client, set_sdk_retries
from shared.broker.contract import OrderExecutor
from shared.errors import (
    DuplicateClientOrderId,
    InsufficientQty,
    NotCancelable,
    NotFound,
    NotFractionable,
    NotTradable,
    OrderRejected,
)
from shared.market.calendar import NEW_YORK, nyse
from shared.models import (
    BarRow,
    Order,
    OrderClass,
    OrderStatus,
    OrderType,
    PriceSource,
    Side,
    Timeframe,
    TimeInForce,
    TradeEventType,
    TradeUpdate,
)
from shared.money import round_price, whole_shares
from sim.engine import MarketEngine
from sim.executor import SimulatedExecutor

CASH = Decimal("200000")
FRACTIONABLE = "AAPL"
WHOLE_SHARES_ONLY = "FUBO"


class Market:
    """How a test moves the simulated market; one implementation per adapter."""

    def advance(self, seconds: float) -> None:
        raise NotImplementedError

    def set_price(self, symbol: str, price: Decimal) -> None:
        raise NotImplementedError

    def set_ask_missing(self, symbol: str) -> None:
        raise NotImplementedError

    def split(self, symbol: str, new_rate: int, old_rate: int, **kw) -> None:
        """Split now (`orders`, `announce` as `MarketEngine.split`)."""
        raise NotImplementedError

    def set_tradable(self, symbol: str, tradable: bool) -> None:
        raise NotImplementedError

    def drop_stream(self, stream) -> None:
        """Break the trade-update connection the way the network would."""
        raise NotImplementedError


class EngineMarket(Market):
    def __init__(self, engine: MarketEngine):
        self.engine = engine

    def advance(self, seconds: float) -> None:
        self.engine.advance(seconds)

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.engine.set_price(symbol, price)

    def set_ask_missing(self, symbol: str) -> None:
        self.engine.set_ask_missing(symbol)

    def split(self, symbol: str, new_rate: int, old_rate: int, **kw) -> None:
        self.engine.split(symbol, new_rate, old_rate, **kw)

    def set_tradable(self, symbol: str, tradable: bool) -> None:
        self.engine.set_asset(symbol, tradable=tradable)

    def drop_stream(self, stream) -> None:
        stream.drop()


class ControlMarket(Market):
    """The simulator's `/sim` control endpoints, over HTTP like the executor itself."""

    def __init__(self, control):
        self.control = control

    def advance(self, seconds: float) -> None:
        self.control.advance(seconds=seconds)

    def set_price(self, symbol: str, price: Decimal) -> None:
        self.control.set_price(symbol, price)

    def set_ask_missing(self, symbol: str) -> None:
        self.control.set_ask_missing(symbol)

    def split(self, symbol: str, new_rate: int, old_rate: int, **kw) -> None:
        self.control.split(symbol, new_rate, old_rate, **kw)

    def set_tradable(self, symbol: str, tradable: bool) -> None:
        self.control.set_asset(symbol, tradable=tradable)

    def drop_stream(self, stream) -> None:
        assert self.control.drop_stream() == 1


@dataclass
class Broker:
    name: str
    executor: OrderExecutor
    market: Market


@pytest.fixture(params=["simulated", "alpaca-over-http"])
def broker(request, clean_env) -> Iterator[Broker]:
    if request.param == "simulated":
        engine = MarketEngine.create(seed=7, start=DEFAULT_START, cash=CASH)
        executor = SimulatedExecutor(engine)
        yield Broker(request.param, executor, EngineMarket(engine))
        executor.close()
        return
    handle = start_sim(seed=7, start=DEFAULT_START, cash=CASH)
    executor = AlpacaExecutor(handle.broker_settings(FL_BROKER_TIMEOUT_SECONDS=10))
    try:
        yield Broker(request.param, executor, ControlMarket(handle.control))
    finally:
        executor.close()
        handle.stop()


# -- helpers ---------------------------------------------------------------------------------------


def wait_for_order(
    executor: OrderExecutor, client_order_id: str, done: Callable[[Order], bool], timeout: float = 5.0
) -> Order:
    """The order once `done(order)` holds (a real broker fills asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        order = executor.get_order_by_client_id(client_order_id)
        if order is not None and done(order):
            return order
        if time.monotonic() > deadline:
            raise AssertionError(f"order {client_order_id} did not get there: {order}")
        time.sleep(0.02)


def filled(order: Order) -> bool:
    return order.status is OrderStatus.FILLED


def buy_filled(executor: OrderExecutor, symbol: str, qty: Decimal, client_order_id: str) -> Order:
    executor.buy_qty(symbol, qty, client_order_id)
    return wait_for_order(executor, client_order_id, filled)


def protective_prices(executor: OrderExecutor, symbol: str) -> tuple[Decimal, Decimal]:
    """A stop 5% under and a target 20% over the current price, at the broker's increments."""
    price = executor.get_latest_prices([symbol])[symbol].price
    return round_price(price * Decimal("0.95")), round_price(price * Decimal("1.20"))


# -- account ---------------------------------------------------------------------------------------


def test_fresh_account_shows_200k_cash_and_no_positions(broker):
    account = broker.executor.get_account()

    assert account.cash == CASH
    assert account.equity == CASH
    assert account.buying_power >= CASH
    assert broker.executor.get_positions() == []
    assert broker.executor.get_position(FRACTIONABLE) is None


def test_asset_facts_tell_fractionable_from_whole_share_only(broker):
    assert broker.executor.get_asset(FRACTIONABLE).fractionable is True
    assert broker.executor.get_asset(WHOLE_SHARES_ONLY).fractionable is False
    with pytest.raises(NotFound):
        broker.executor.get_asset("NOSUCHTICKER")


# -- entries ---------------------------------------------------------------------------------------


def test_notional_buy_of_fractionable_asset_fills_for_the_amount(broker):
    broker.executor.buy_notional(FRACTIONABLE, Decimal("1000"), "contract-notional-1")

    order = wait_for_order(broker.executor, "contract-notional-1", filled)
    position = broker.executor.get_position(FRACTIONABLE)

    assert order.notional == Decimal("1000")
    assert abs(order.filled_qty * order.filled_avg_price - Decimal("1000")) <= Decimal("0.01")
    assert order.filled_qty != whole_shares(order.filled_qty)  # fractional shares were bought
    assert position is not None and position.qty == order.filled_qty


def test_notional_buy_of_non_fractionable_asset_raises_not_fractionable(broker):
    with pytest.raises(NotFractionable):
        broker.executor.buy_notional(WHOLE_SHARES_ONLY, Decimal("100"), "contract-notional-2")

    assert broker.executor.get_order_by_client_id("contract-notional-2") is None


def test_fractional_quantity_of_non_fractionable_asset_raises_not_fractionable(broker):
    with pytest.raises(NotFractionable):
        broker.executor.buy_qty(WHOLE_SHARES_ONLY, Decimal("1.5"), "contract-qty-frac")


def test_whole_share_buy_fills_the_quantity(broker):
    accepted = broker.executor.buy_qty(WHOLE_SHARES_ONLY, Decimal("10"), "contract-whole-1")

    order = wait_for_order(broker.executor, "contract-whole-1", filled)

    assert accepted.side is Side.BUY and accepted.type is OrderType.MARKET
    assert accepted.time_in_force is TimeInForce.DAY
    assert order.filled_qty == Decimal("10")
    assert broker.executor.get_position(WHOLE_SHARES_ONLY).qty == Decimal("10")


def test_buy_after_the_close_waits_for_the_next_open(broker):
    broker.market.advance(7 * 3600)  # Monday 17:00

    accepted = broker.executor.buy_qty(FRACTIONABLE, Decimal("1"), "contract-overnight")

    assert accepted.status is OrderStatus.ACCEPTED
    assert broker.executor.get_position(FRACTIONABLE) is None
    broker.market.advance(17 * 3600)  # Tuesday 10:00
    order = wait_for_order(broker.executor, "contract-overnight", filled)
    tuesday_open = datetime(2024, 3, 5, 9, 30, tzinfo=NEW_YORK)
    assert tuesday_open <= order.filled_at < tuesday_open + timedelta(minutes=1)


def test_duplicate_client_order_id_raises_and_the_original_is_found(broker):
    broker.executor.buy_qty(FRACTIONABLE, Decimal("1"), "contract-dup-1")

    with pytest.raises(DuplicateClientOrderId):
        broker.executor.buy_qty(FRACTIONABLE, Decimal("2"), "contract-dup-1")

    original = broker.executor.get_order_by_client_id("contract-dup-1")
    assert original is not None and original.qty == Decimal("1")


@pytest.mark.parametrize("qty", [Decimal("0"), Decimal("-1")])
def test_a_quantity_that_is_not_positive_is_refused_and_nothing_is_created(broker, qty):
    with pytest.raises(OrderRejected):
        broker.executor.buy_qty(FRACTIONABLE, qty, "contract-bad-qty")

    assert broker.executor.get_order_by_client_id("contract-bad-qty") is None


def test_unknown_client_order_id_is_none(broker):
    assert broker.executor.get_order_by_client_id("contract-never-sent") is None


# -- protection ------------------------------------------------------------------------------------


def test_protective_exit_for_whole_shares_is_an_oco_with_the_stop_as_nested_leg(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("10"), "contract-oco-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)

    exit_order = broker.executor.submit_protective_exit(
        FRACTIONABLE, Decimal("10"), stop, target, "contract-oco-1"
    )

    assert exit_order.order_class is OrderClass.OCO
    assert exit_order.side is Side.SELL and exit_order.type is OrderType.LIMIT
    assert exit_order.time_in_force is TimeInForce.GTC
    assert exit_order.limit_price == target
    [listed] = broker.executor.get_open_orders(FRACTIONABLE)
    assert listed.client_order_id == "contract-oco-1"
    [leg] = listed.legs
    assert leg.type is OrderType.STOP and leg.stop_price == stop and leg.status.is_open
    position = broker.executor.get_position(FRACTIONABLE)
    assert position.qty == Decimal("10") and position.qty_available == Decimal("0")


def test_second_protective_exit_for_the_same_shares_raises_insufficient_qty(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("10"), "contract-twice-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("10"), stop, target, "contract-twice-1")

    with pytest.raises(InsufficientQty) as refused:
        broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("10"), stop, target, "contract-twice-2")

    assert refused.value.available == Decimal("0")
    assert len(broker.executor.get_open_orders(FRACTIONABLE)) == 1


def test_fractional_remainder_gets_a_day_stop_and_every_share_is_covered(broker):
    broker.executor.buy_notional(FRACTIONABLE, Decimal("2000"), "contract-frac-entry")
    qty = wait_for_order(broker.executor, "contract-frac-entry", filled).filled_qty
    whole, remainder = whole_shares(qty), qty - whole_shares(qty)
    stop, target = protective_prices(broker.executor, FRACTIONABLE)

    oco = broker.executor.submit_protective_exit(FRACTIONABLE, whole, stop, target, "contract-frac-oco")
    day_stop = broker.executor.submit_protective_exit(
        FRACTIONABLE, remainder, stop, target, "contract-frac-stop"
    )

    assert oco.order_class is OrderClass.OCO
    assert day_stop.order_class is OrderClass.SIMPLE and day_stop.type is OrderType.STOP
    assert day_stop.time_in_force is TimeInForce.DAY
    assert day_stop.qty == remainder and day_stop.stop_price == stop
    assert broker.executor.get_position(FRACTIONABLE).qty_available == Decimal("0")


def test_fractional_day_stop_ends_at_the_close_and_the_gtc_oco_stays(broker):
    broker.executor.buy_notional(FRACTIONABLE, Decimal("1500"), "contract-eod-entry")
    qty = wait_for_order(broker.executor, "contract-eod-entry", filled).filled_qty
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, whole_shares(qty), stop, target, "contract-eod-oco")
    broker.executor.submit_protective_exit(
        FRACTIONABLE, qty - whole_shares(qty), stop, None, "contract-eod-stop"
    )

    broker.market.advance(7 * 3600)  # Monday 17:00

    day_stop = broker.executor.get_order_by_client_id("contract-eod-stop")
    assert day_stop.status.is_terminal and day_stop.status is not OrderStatus.FILLED
    assert [o.client_order_id for o in broker.executor.get_open_orders(FRACTIONABLE)] == ["contract-eod-oco"]
    assert broker.executor.get_position(FRACTIONABLE).qty_available == qty - whole_shares(qty)


def test_protective_exit_without_a_target_is_a_gtc_stop(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("3"), "contract-stoponly-entry")
    stop, _ = protective_prices(broker.executor, FRACTIONABLE)

    order = broker.executor.submit_protective_exit(
        FRACTIONABLE, Decimal("3"), stop, None, "contract-stoponly"
    )

    assert order.order_class is OrderClass.SIMPLE and order.type is OrderType.STOP
    assert order.time_in_force is TimeInForce.GTC


def test_sell_of_more_than_the_free_shares_raises_insufficient_qty(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("2"), "contract-oversell-entry")

    with pytest.raises(InsufficientQty):
        broker.executor.sell_market(FRACTIONABLE, Decimal("3"), "contract-oversell")


def test_protective_stop_fills_when_the_price_falls_through_it(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("5"), "contract-stopfill-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("5"), stop, target, "contract-stopfill")

    broker.market.set_price(FRACTIONABLE, round_price(stop * Decimal("0.98")))

    assert wait_for_order(broker.executor, "contract-stopfill", lambda o: not o.status.is_open) is not None
    assert broker.executor.get_position(FRACTIONABLE) is None
    assert broker.executor.get_open_orders(FRACTIONABLE) == []


# -- cancels ---------------------------------------------------------------------------------------


def test_cancel_and_release_cancels_only_the_named_orders_and_waits_for_the_shares(broker):
    broker.executor.buy_notional(FRACTIONABLE, Decimal("2000"), "contract-release-entry")
    qty = wait_for_order(broker.executor, "contract-release-entry", filled).filled_qty
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(
        FRACTIONABLE, whole_shares(qty), stop, target, "contract-release-oco"
    )
    broker.executor.submit_protective_exit(
        FRACTIONABLE, qty - whole_shares(qty), stop, None, "contract-release-stop"
    )
    buy_filled(broker.executor, "MSFT", Decimal("1"), "contract-release-other")
    other_stop, _ = protective_prices(broker.executor, "MSFT")
    broker.executor.submit_protective_exit(
        "MSFT", Decimal("1"), other_stop, None, "contract-release-other-stop"
    )

    ours = [o.id for o in broker.executor.get_open_orders(FRACTIONABLE)]
    position, still_open = procedures.cancel_and_release(broker.executor, FRACTIONABLE, ours, timeout=5)

    assert position is not None and still_open == []
    assert position.qty == qty and position.qty_available == qty
    assert broker.executor.get_open_orders(FRACTIONABLE) == []
    assert [o.client_order_id for o in broker.executor.get_open_orders("MSFT")] == [
        "contract-release-other-stop"
    ]
    oco = broker.executor.get_order_by_client_id("contract-release-oco")
    assert oco.status is OrderStatus.CANCELED


def test_cancel_and_release_of_a_flat_symbol_returns_none(broker):
    assert procedures.cancel_and_release(broker.executor, "MSFT", [], timeout=5) == (None, [])


def test_cancel_and_release_leaves_an_order_it_was_not_given_and_counts_what_it_holds(broker):
    buy_filled(broker.executor, "MSFT", Decimal("10"), "contract-keep-entry")
    stop, target = protective_prices(broker.executor, "MSFT")
    ours = broker.executor.submit_protective_exit("MSFT", Decimal("6"), stop, target, "contract-keep-ours")
    broker.executor.submit_protective_exit("MSFT", Decimal("4"), stop, None, "contract-keep-users")

    position, still_open = procedures.cancel_and_release(broker.executor, "MSFT", [ours.id], timeout=5)

    assert position.qty == Decimal("10") and position.qty_available == Decimal("6")
    assert [o.client_order_id for o in still_open] == ["contract-keep-users"]


def test_cancel_of_a_filled_order_raises_not_cancelable(broker):
    order = buy_filled(broker.executor, FRACTIONABLE, Decimal("1"), "contract-cancel-filled")

    with pytest.raises(NotCancelable):
        broker.executor.cancel_order(order.id)


# -- market data -----------------------------------------------------------------------------------


def test_latest_price_is_the_ask_and_falls_back_to_the_last_trade_when_the_ask_is_missing(broker):
    broker.market.set_ask_missing("MSFT")

    prices = broker.executor.get_latest_prices([FRACTIONABLE, "MSFT", "NOSUCHTICKER"])

    assert set(prices) == {FRACTIONABLE, "MSFT"}
    assert prices[FRACTIONABLE].source is PriceSource.ASK
    assert prices[FRACTIONABLE].price == prices[FRACTIONABLE].ask
    assert prices[FRACTIONABLE].bid < prices[FRACTIONABLE].ask
    assert prices["MSFT"].source is PriceSource.LAST_TRADE
    assert prices["MSFT"].price == prices["MSFT"].last_trade > 0
    assert prices["MSFT"].ask is None


def test_latest_prices_for_a_long_symbol_list_cover_every_known_symbol(broker):
    known = ["AAPL", "MSFT", "NVDA", "KO", "F", "TELL"]
    unknown = [f"ZZ{i:03d}" for i in range(300)]

    prices = broker.executor.get_latest_prices(unknown[:150] + known + unknown[150:])

    assert set(prices) == set(known)
    assert prices["TELL"].price < 1 and prices["TELL"].price == prices["TELL"].price.quantize(
        Decimal("0.0001")
    )


def test_latest_prices_follow_a_price_change(broker):
    broker.market.set_price("KO", Decimal("70.00"))

    price = broker.executor.get_latest_prices(["KO"])["KO"]

    assert Decimal("69.50") < price.price < Decimal("70.50")
    assert isinstance(price.price, Decimal)


def test_minute_bars_of_several_sessions_come_back_complete_and_oldest_first(broker):
    # [Mon 2024-02-12 09:30, Fri 2024-03-01 16:00]: 14 sessions (Presidents' Day is inside).
    # 2 symbols x 14 x 390 minutes = 10,920 bars: more than one 10,000-bar page over HTTP.
    start = datetime(2024, 2, 12, 9, 30, tzinfo=NEW_YORK)
    end = datetime(2024, 3, 1, 16, 0, tzinfo=NEW_YORK)
    sessions = nyse().sessions(start.date(), end.date())
    assert len(sessions) == 14

    bars = broker.executor.get_bars([FRACTIONABLE, "MSFT"], Timeframe.MINUTE, start, end)

    for symbol in (FRACTIONABLE, "MSFT"):
        series = bars[symbol]
        assert len(series) == 14 * 390
        assert all(a.t < b.t for a, b in zip(series, series[1:], strict=False))
        assert series[0].t == start and series[-1].t == end - timedelta(minutes=1)
        assert all(b.l <= min(b.o, b.c) and b.h >= max(b.o, b.c) for b in series)
        assert all(isinstance(b.c, Decimal) for b in series[:10])


def test_daily_bars_are_one_per_session_oldest_first(broker):
    start = datetime(2024, 1, 22, 0, 0, tzinfo=NEW_YORK)
    end = datetime(2024, 3, 1, 16, 0, tzinfo=NEW_YORK)

    bars = broker.executor.get_bars(["KO"], Timeframe.DAY, start, end)["KO"]

    sessions = nyse().sessions(start.date(), end.date())
    assert [b.t.astimezone(NEW_YORK).date() for b in bars] == [s.date for s in sessions]


@pytest.mark.parametrize(("timeframe", "start", "end"), [
    # 2 symbols x 14 sessions x 390 minutes: more than one 10,000-bar page over HTTP.
    (Timeframe.MINUTE, datetime(2024, 2, 12, 9, 30, tzinfo=NEW_YORK), datetime(2024, 3, 1, 16, 0, tzinfo=NEW_YORK)),
    (Timeframe.DAY, datetime(2022, 3, 1, 0, 0, tzinfo=NEW_YORK), datetime(2024, 3, 1, 16, 0, tzinfo=NEW_YORK)),
])
def test_bar_rows_are_the_bars_with_the_same_digits_as_light_rows(broker, timeframe, start, end):
    symbols = [FRACTIONABLE, "msft", "KO"]

    rows = broker.executor.get_bar_rows(symbols, timeframe, start, end)

    models = broker.executor.get_bars(symbols, timeframe, start, end)
    assert list(rows) == list(models) == [FRACTIONABLE, "MSFT", "KO"]
    for symbol, series in rows.items():
        assert len(series) == len(models[symbol]) > 400
        assert all(type(row) is BarRow for row in series)
        assert [tuple(str(value) for value in row) for row in series] == [
            tuple(str(getattr(bar, name)) for name in BarRow._fields) for bar in models[symbol]]
        assert all(a.t < b.t for a, b in zip(series, series[1:], strict=False))
        assert all(isinstance(row.c, Decimal) and row.t.tzinfo is not None for row in series)


# -- corporate actions and halts -------------------------------------------------------------------

#: A split made now (Monday's session in progress) goes ex today.
EX_DATE = DEFAULT_START.date()
DAY = timedelta(days=1)


def test_splits_feed_lists_an_announced_split_with_its_ratio_and_nothing_else(broker):
    broker.market.split("AAPL", 2, 1)
    broker.market.split("TSLA", 1, 4)

    splits = broker.executor.get_splits(["tsla", "AAPL", "MSFT"], EX_DATE, EX_DATE)

    assert [(s.symbol, s.ex_date, s.ratio) for s in splits] == [
        ("AAPL", EX_DATE, Decimal("2")),
        ("TSLA", EX_DATE, Decimal("0.25")),
    ]
    assert (splits[1].new_rate, splits[1].old_rate) == (Decimal("1"), Decimal("4"))
    assert broker.executor.get_splits(["MSFT"], EX_DATE, EX_DATE) == []
    assert broker.executor.get_splits(["AAPL"], EX_DATE + DAY, EX_DATE + 7 * DAY) == []
    assert broker.executor.get_splits(["AAPL"], EX_DATE - 7 * DAY, EX_DATE - DAY) == []
    assert broker.executor.get_splits([], EX_DATE, EX_DATE) == []


def test_split_rebases_the_position_and_its_protective_oco(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("10"), "contract-split-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("10"), stop, target, "contract-split-exit")

    broker.market.split(FRACTIONABLE, 2, 1)

    position = broker.executor.get_position(FRACTIONABLE)
    [group] = broker.executor.get_open_orders(FRACTIONABLE)
    assert (position.qty, position.qty_available) == (Decimal("20"), Decimal("0"))
    assert (group.qty, group.limit_price) == (Decimal("20"), round_price(target / 2))
    assert (group.legs[0].qty, group.legs[0].stop_price) == (Decimal("20"), round_price(stop / 2))


def test_unannounced_split_rebases_the_position_but_the_feed_does_not_know_it(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("10"), "contract-split-quiet")

    broker.market.split(FRACTIONABLE, 2, 1, announce=False)

    assert broker.executor.get_position(FRACTIONABLE).qty == Decimal("20")
    assert broker.executor.get_splits([FRACTIONABLE], EX_DATE, EX_DATE) == []


def test_order_on_a_non_tradable_asset_raises_not_tradable_and_resting_orders_stay(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("10"), "contract-halt-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("10"), stop, target, "contract-halt-exit")

    broker.market.set_tradable(FRACTIONABLE, False)

    with pytest.raises(NotTradable) as refused:
        broker.executor.buy_qty(FRACTIONABLE, Decimal("1"), "contract-halt-buy")
    assert isinstance(refused.value, OrderRejected) and refused.value.status == 403
    with pytest.raises(NotTradable):
        broker.executor.sell_market(FRACTIONABLE, Decimal("1"), "contract-halt-sell")
    assert broker.executor.get_order_by_client_id("contract-halt-buy") is None
    assert broker.executor.get_asset(FRACTIONABLE).tradable is False
    resting = broker.executor.get_open_orders(FRACTIONABLE)
    assert [o.client_order_id for o in resting] == ["contract-halt-exit"]


def test_no_symbols_ask_the_splits_feed_nothing(clean_env):
    handle = start_sim()
    executor = AlpacaExecutor(handle.broker_settings(FL_BROKER_TIMEOUT_SECONDS=2))
    handle.stop()  # nothing listens any more: a request would fail
    try:
        assert executor.get_splits([], EX_DATE, EX_DATE) == []
    finally:
        executor.close()


# -- the simulator's corporate-actions feed, read by alpaca-py itself -------------------------------


def test_alpaca_py_corporate_actions_client_parses_the_simulators_feed():
    handle = start_sim()
    client = CorporateActionsClient(handle.api_key, handle.secret_key, url_override=handle.base_url)
    set_sdk_retries(client, 0, 0)
    splits = [CorporateActionsType.FORWARD_SPLIT, CorporateActionsType.REVERSE_SPLIT]
    try:
        handle.control.split("AAPL", 2, 1)
        handle.control.split("TSLA", 1, 4)
        handle.control.split("MSFT", 3, 1, announce=False)

        symbols = ["AAPL", "TSLA", "MSFT"]
        actions = client.get_corporate_actions(
            CorporateActionsRequest(symbols=symbols, types=splits, start=EX_DATE, end=EX_DATE)
        ).data
        reverse_only = [CorporateActionsType.REVERSE_SPLIT]
        only_reverse = client.get_corporate_actions(
            CorporateActionsRequest(symbols=symbols, types=reverse_only, start=EX_DATE, end=EX_DATE)
        ).data
        later = client.get_corporate_actions(
            CorporateActionsRequest(symbols=["AAPL"], start=EX_DATE + DAY, end=EX_DATE + 7 * DAY)
        ).data
    finally:
        close_sdk_client(client)
        handle.stop()

    [forward] = actions["forward_splits"]
    [reverse] = actions["reverse_splits"]
    assert set(actions) == {"forward_splits", "reverse_splits"}
    assert isinstance(forward, ForwardSplit) and isinstance(reverse, ReverseSplit)
    assert (forward.symbol, forward.new_rate, forward.old_rate, forward.ex_date) == ("AAPL", 2, 1, EX_DATE)
    assert forward.process_date == EX_DATE and forward.payable_date < EX_DATE and len(forward.cusip) == 9
    assert (reverse.symbol, reverse.new_rate, reverse.old_rate, reverse.ex_date) == ("TSLA", 1, 4, EX_DATE)
    assert reverse.new_cusip != reverse.old_cusip
    assert set(only_reverse) == {"reverse_splits"}
    assert [a.symbol for a in only_reverse["reverse_splits"]] == ["TSLA"]
    assert later == {}


def test_split_control_answers_bad_input_with_404_or_a_one_line_422():
    handle = start_sim()
    try:
        answers = [
            requests.post(f"{handle.base_url}/sim/split", json=body, timeout=10)
            for body in (
                {"symbol": "NOSUCHTICKER", "new_rate": 2, "old_rate": 1},
                {"symbol": "AAPL", "new_rate": 0, "old_rate": 1},
                {"symbol": "AAPL", "new_rate": 2, "old_rate": "-1"},
                {"symbol": "AAPL", "new_rate": "Infinity", "old_rate": 1},
                {"symbol": "AAPL", "new_rate": "1e999999", "old_rate": 1},
                {"symbol": "AAPL", "old_rate": 1},
                {"symbol": "AAPL", "new_rate": 2, "old_rate": 1, "orders": "replace"},
                {"symbol": "AAPL", "new_rate": 2, "old_rate": 1, "announce": "yes"},
            )
        ]
        state = handle.control.state()
    finally:
        handle.stop()

    assert [a.status_code for a in answers] == [404] + [422] * 7
    assert all("\n" not in a.json()["message"] for a in answers)
    assert state["splits"] == [] and state["positions"] == []


# -- clock and calendar ----------------------------------------------------------------------------


def test_clock_is_the_markets_time_and_follows_advances(broker):
    clock = broker.executor.get_clock()

    assert clock.timestamp == DEFAULT_START
    assert clock.is_open is True
    assert clock.next_close == datetime(2024, 3, 4, 16, 0, tzinfo=NEW_YORK)
    assert clock.next_open == datetime(2024, 3, 5, 9, 30, tzinfo=NEW_YORK)

    broker.market.advance(7 * 3600)  # 17:00, after the close

    later = broker.executor.get_clock()
    assert later.is_open is False
    assert later.next_open == datetime(2024, 3, 5, 9, 30, tzinfo=NEW_YORK)


def test_position_listing_carries_the_brokers_time_of_the_answer(broker):
    buy_filled(broker.executor, "AAPL", Decimal("2"), "contract-time-1")
    broker.market.advance(3 * 3600 + 25)  # 13:00:25, virtual

    positions, at = broker.executor.get_positions_at()

    assert [p.symbol for p in positions] == ["AAPL"]
    # The market's own time (the HTTP Date header over the wire: whole seconds), not the machine's.
    assert at is not None and at.tzinfo is not None
    assert at == broker.executor.get_clock().timestamp.replace(microsecond=0)
    assert at == datetime(2024, 3, 4, 13, 0, 25, tzinfo=NEW_YORK)


def test_calendar_agrees_with_nyse_on_holidays_and_early_closes(broker):
    days = broker.executor.get_calendar(date(2024, 3, 25), date(2024, 7, 5))

    expected = nyse().sessions(date(2024, 3, 25), date(2024, 7, 5))
    assert [(d.date, d.open, d.close) for d in days] == [(s.date, s.open, s.close) for s in expected]
    dates = {d.date for d in days}
    assert date(2024, 3, 29) not in dates  # Good Friday
    assert date(2024, 7, 4) not in dates  # Independence Day
    early = next(d for d in days if d.date == date(2024, 7, 3))
    assert early.close == datetime(2024, 7, 3, 13, 0, tzinfo=NEW_YORK)
    assert all(d.open.tzinfo is not None for d in days)


# -- order history ---------------------------------------------------------------------------------


def test_orders_updated_since_are_listed_oldest_first_and_skip_older_ones(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("1"), "contract-hist-before")
    broker.market.advance(60)
    since = broker.executor.get_clock().timestamp
    for name in ("first", "second", "third"):
        buy_filled(broker.executor, FRACTIONABLE, Decimal("1"), f"contract-hist-{name}")

    orders = broker.executor.get_orders_updated_since(since)

    assert [o.client_order_id for o in orders] == [
        "contract-hist-first",
        "contract-hist-second",
        "contract-hist-third",
    ]
    assert all(o.status is OrderStatus.FILLED for o in orders)


def test_order_history_longer_than_one_page_is_complete(broker):
    # Alpaca pages order listings by 500; 520 orders need two pages.
    since = broker.executor.get_clock().timestamp
    sent = [f"contract-page-{i:03d}" for i in range(520)]
    for client_order_id in sent:
        broker.executor.buy_qty("F", Decimal("1"), client_order_id)

    orders = broker.executor.get_orders_updated_since(since)

    assert [o.client_order_id for o in orders] == sent
    assert broker.executor.get_position("F").qty == Decimal("520")


def test_orders_updated_since_include_an_older_order_that_changed(broker):
    buy_filled(broker.executor, FRACTIONABLE, Decimal("4"), "contract-hist-entry")
    stop, target = protective_prices(broker.executor, FRACTIONABLE)
    broker.executor.submit_protective_exit(FRACTIONABLE, Decimal("4"), stop, target, "contract-hist-oco")
    broker.market.advance(60)
    since = broker.executor.get_clock().timestamp

    procedures.cancel_and_release(broker.executor, FRACTIONABLE,
                                  [o.id for o in broker.executor.get_open_orders(FRACTIONABLE)], timeout=5)

    orders = broker.executor.get_orders_updated_since(since)
    assert [o.client_order_id for o in orders] == ["contract-hist-oco"]
    assert orders[0].status is OrderStatus.CANCELED


# -- trade updates ---------------------------------------------------------------------------------


def test_trade_update_stream_delivers_new_and_fill_after_on_connect(broker):
    stream = broker.executor.trade_update_stream()
    updates: list[TradeUpdate] = []
    connected = threading.Event()
    disconnected = threading.Event()
    runner = threading.Thread(
        target=stream.run,
        args=(updates.append,),
        kwargs={"on_connect": connected.set, "on_disconnect": disconnected.set},
        daemon=True,
    )
    runner.start()
    try:
        assert connected.wait(10), "on_connect was not called"
        broker.executor.buy_qty(FRACTIONABLE, Decimal("2"), "contract-stream-1")

        deadline = time.monotonic() + 10
        while not any(u.event is TradeEventType.FILL for u in updates) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stream.stop()
        runner.join(10)

    ours = [u for u in updates if u.order.client_order_id == "contract-stream-1"]
    assert [u.event for u in ours] == [TradeEventType.NEW, TradeEventType.FILL]
    fill = ours[-1]
    assert fill.qty == Decimal("2") and fill.position_qty == Decimal("2")
    assert fill.price == fill.order.filled_avg_price
    assert fill.order.status is OrderStatus.FILLED
    assert not runner.is_alive()
    assert disconnected.is_set()


def test_trade_update_stream_reconnects_after_a_drop_and_calls_on_connect_again(broker):
    stream = broker.executor.trade_update_stream()
    updates: list[TradeUpdate] = []
    connects: list[float] = []
    disconnects: list[float] = []
    runner = threading.Thread(
        target=stream.run,
        args=(updates.append,),
        kwargs={
            "on_connect": lambda: connects.append(time.monotonic()),
            "on_disconnect": lambda: disconnects.append(time.monotonic()),
        },
        daemon=True,
    )
    runner.start()
    try:
        wait_until(lambda: len(connects) == 1, "first connect")
        broker.market.drop_stream(stream)
        wait_until(lambda: len(disconnects) >= 1 and len(connects) == 2, "reconnect after the drop")
        broker.executor.buy_qty(FRACTIONABLE, Decimal("1"), "contract-stream-again")
        wait_until(
            lambda: any(
                u.event is TradeEventType.FILL and u.order.client_order_id == "contract-stream-again"
                for u in updates
            ),
            "fill after the reconnect",
        )
    finally:
        stream.stop()
        runner.join(10)

    assert disconnects[0] <= connects[1]
    assert not runner.is_alive()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("qty", "target", "oco", "tif"),
    [("10", "120", True, "gtc"), ("10.5", "120", False, "day"), ("0.4", "120", False, "day"), ("10", None, False, "gtc")],
)
def test_exit_shape_rule_is_one_oco_for_whole_shares_and_a_day_stop_for_fractions(qty, target, oco, tif):
    from decimal import Decimal

    from shared.broker.contract import protective_exit_shape

    shape = protective_exit_shape(Decimal(qty), Decimal(target) if target else None)
    assert (shape.oco, shape.time_in_force.value) == (oco, tif)


# -- the trade stream's one conversion -------------------------------------------------------------

_WIRE_ORDER = {
    "id": "61e69015-8549-4bfd-b9c3-01e75843f47d", "client_order_id": "fl-20240304-AAPL-oco-r1",
    "created_at": "2024-03-04T14:29:00.123456789Z", "updated_at": "2024-03-04T14:30:01.1Z",
    "submitted_at": "2024-03-04T14:29:00Z", "filled_at": None, "expired_at": None,
    "asset_id": "61e69015-8549-4bfd-b9c3-01e75843f47e", "symbol": "AAPL", "asset_class": "us_equity",
    "notional": None, "qty": "10", "filled_qty": "0", "filled_avg_price": None, "order_class": "oco",
    "order_type": "limit", "type": "limit", "side": "sell", "time_in_force": "gtc", "limit_price": "120.02",
    "stop_price": None, "status": "new", "extended_hours": False,
    "legs": [{"id": "71e69015-8549-4bfd-b9c3-01e75843f47d", "client_order_id": "leg-1",
              "created_at": "2024-03-04T14:29:00Z", "updated_at": "2024-03-04T14:29:00Z",
              "submitted_at": "2024-03-04T14:29:00Z", "symbol": "AAPL", "qty": "10", "filled_qty": "0",
              "order_class": "oco", "type": "stop", "side": "sell", "time_in_force": "gtc",
              "stop_price": "95.02", "status": "held", "extended_hours": False, "legs": None}],
}


@pytest.mark.parametrize("data", [
    {"event": "new", "timestamp": "2024-03-04T14:30:01.5Z", "order": _WIRE_ORDER},
    {"event": "partial_fill", "timestamp": "2024-03-04T09:30:01-05:00", "price": 100.1, "qty": "3",
     "position_qty": "3", "execution_id": "7c5f2f7e-4d4e-4a8e-9a43-1e2b3c4d5e6f",
     "order": {**_WIRE_ORDER, "order_class": "", "type": "market", "side": "buy", "limit_price": None,
               "legs": None, "filled_qty": "3", "filled_avg_price": "100.1", "status": "partially_filled",
               "filled_at": "2024-03-04T14:30:01Z", "time_in_force": "day"}},
])
def test_a_trade_update_read_from_the_wire_equals_the_one_read_through_alpaca_py(data):
    from alpaca.trading.models import TradeUpdate as AlpacaTradeUpdate

    from shared.broker.alpaca import trade_update_from_alpaca, trade_update_from_raw

    assert trade_update_from_raw(data) == trade_update_from_alpaca(AlpacaTradeUpdate(**data))
