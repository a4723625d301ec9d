"""Alpaca's rules, as the unmodified alpaca-py 0.44.0 client meets them in the simulated market.

Every test talks HTTP/WebSocket to a real server on a loopback port (tests/simhelpers.py) and
checks what a user of alpaca-py would see: the status, Alpaca's error body, the parsed models.
A rule Alpaca enforces and the simulator skipped would hide a production failure.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.requests import (
    StockBarsRequest,
    StockLatestBarRequest,
    StockLatestQuoteRequest,
    StockLatestTradeRequest,
    StockSnapshotRequest,
)
from alpaca.data.timeframe import TimeFrame
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from simhelpers import DEFAULT_START, NEW_YORK, TradeUpdateCollector, start_sim

D = Decimal


@pytest.fixture
def sim():
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def client(sim):
    return sim.trading_client()


def market_buy(client, symbol: str, qty=None, notional=None, **kw):
    return client.submit_order(
        MarketOrderRequest(
            symbol=symbol, qty=qty, notional=notional, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, **kw
        )
    )


def stop_sell(client, symbol: str, qty, stop, tif=TimeInForce.GTC, **kw):
    return client.submit_order(
        StopOrderRequest(
            symbol=symbol, qty=qty, side=OrderSide.SELL, time_in_force=tif, stop_price=stop, **kw
        )
    )


def limit_order(client, symbol: str, qty, limit, side=OrderSide.SELL, tif=TimeInForce.GTC, **kw):
    return client.submit_order(
        LimitOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=tif, limit_price=limit, **kw)
    )


def oco_exit(client, symbol: str, qty, stop, target, tif=TimeInForce.GTC, **kw):
    return client.submit_order(
        LimitOrderRequest(
            symbol=symbol,
            qty=qty,
            side=OrderSide.SELL,
            time_in_force=tif,
            order_class=OrderClass.OCO,
            take_profit=TakeProfitRequest(limit_price=target),
            stop_loss=StopLossRequest(stop_price=stop),
            **kw,
        )
    )


def refused(call) -> APIError:
    with pytest.raises(APIError) as error:
        call()
    return error.value


def body(error: APIError) -> dict:
    return json.loads(str(error))


def raw_post_order(sim, payload: dict) -> requests.Response:
    headers = {"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key}
    return requests.post(f"{sim.base_url}/v2/orders", json=payload, headers=headers, timeout=10)


# -- fractional and notional ---------------------------------------------------------------------


def test_notional_buy_of_non_fractionable_asset_is_refused(client):
    error = refused(lambda: market_buy(client, "FUBO", notional=100))
    assert error.status_code == 403
    assert body(error) == {"code": 40310000, "message": "requested asset is not fractionable"}
    assert client.get_all_positions() == []


def test_fractional_qty_buy_of_non_fractionable_asset_is_refused(client):
    error = refused(lambda: market_buy(client, "SENS", qty=1.5))
    assert (error.status_code, error.message) == (403, "requested asset is not fractionable")
    assert market_buy(client, "SENS", qty=2).status == OrderStatus.NEW  # whole shares are fine


def test_fractional_order_must_be_a_day_order(client):
    market_buy(client, "AAPL", qty=2)
    error = refused(lambda: stop_sell(client, "AAPL", 0.5, 150, tif=TimeInForce.GTC))
    assert (error.status_code, error.code, error.message) == (
        422,
        42210000,
        "fractional orders must be DAY orders",
    )
    assert stop_sell(client, "AAPL", 0.5, 150, tif=TimeInForce.DAY).status == OrderStatus.NEW


def test_fractional_oco_exit_is_refused_as_not_simple(client):
    market_buy(client, "AAPL", qty=2)
    error = refused(lambda: oco_exit(client, "AAPL", 1.5, stop=150, target=250, tif=TimeInForce.DAY))
    assert (error.status_code, error.message) == (422, "fractional orders must be simple orders")


def test_fractional_sell_that_would_go_short_is_refused(client):
    error = refused(
        lambda: client.submit_order(
            MarketOrderRequest(symbol="AAPL", qty=0.5, side=OrderSide.SELL, time_in_force=TimeInForce.DAY)
        )
    )
    assert (error.status_code, error.message) == (403, "fractional orders are not allowed to short")


def test_qty_and_notional_together_or_neither_is_refused(sim):
    both = raw_post_order(
        sim,
        {
            "symbol": "AAPL",
            "qty": 1,
            "notional": 100,
            "side": "buy",
            "type": "market",
            "time_in_force": "day",
        },
    )
    neither = raw_post_order(sim, {"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day"})
    assert (both.status_code, both.json()["code"]) == (422, 40010001)
    assert (neither.status_code, neither.json()["message"]) == (422, "qty or notional is required")


def test_notional_below_one_dollar_is_refused(client):
    error = refused(lambda: market_buy(client, "AAPL", notional=0.5))
    assert (error.status_code, error.message) == (403, "cost basis must be >= 1")


def test_notional_buy_fills_for_the_amount(sim, client):
    order = market_buy(client, "AAPL", notional=1000)
    assert (order.notional, order.qty) == ("1000", None)
    filled = client.get_order_by_id(order.id)
    assert filled.status == OrderStatus.FILLED
    assert abs(D(filled.filled_qty) * D(filled.filled_avg_price) - 1000) < D("0.01")


# -- shares held by open sells -------------------------------------------------------------------


def test_stop_then_limit_sell_for_same_whole_position_is_refused_insufficient_qty(client):
    market_buy(client, "AAPL", qty=10)
    stop = stop_sell(client, "AAPL", 10, 150)
    error = refused(lambda: limit_order(client, "AAPL", 10, 250))
    assert error.status_code == 403
    assert body(error) == {
        "code": 40310000,
        "message": "insufficient qty available for order (requested: 10, available: 0)",
        "available": "0",
        "existing_qty": "10",
        "held_for_orders": "10",
        "symbol": "AAPL",
        "related_orders": [str(stop.id)],
    }
    position = client.get_open_position("AAPL")
    assert (position.qty, position.qty_available) == ("10", "0")


def test_one_oco_protects_the_whole_position_where_two_plain_exits_cannot(client):
    market_buy(client, "AAPL", qty=10)
    group = oco_exit(client, "AAPL", 10, stop=150, target=250)
    assert group.order_class == OrderClass.OCO and group.status == OrderStatus.NEW
    assert [(leg.type.value, leg.stop_price, leg.status) for leg in group.legs] == [
        ("stop", "150", OrderStatus.HELD)
    ]
    assert client.get_open_position("AAPL").qty_available == "0"


def test_selling_more_than_held_is_refused(client):
    market_buy(client, "AAPL", qty=3)
    error = refused(
        lambda: client.submit_order(
            MarketOrderRequest(symbol="AAPL", qty=5, side=OrderSide.SELL, time_in_force=TimeInForce.DAY)
        )
    )
    assert (error.status_code, error.message) == (
        403,
        "insufficient qty available for order (requested: 5, available: 3)",
    )
    assert client.get_open_position("AAPL").qty == "3"


def test_closing_a_position_while_its_exits_rest_is_refused_until_they_are_canceled(client):
    market_buy(client, "AAPL", qty=10)
    group = oco_exit(client, "AAPL", 10, stop=150, target=250)
    error = refused(lambda: client.close_position("AAPL"))
    assert error.status_code == 403 and "insufficient qty available" in error.message
    client.cancel_order_by_id(group.id)
    closing = client.close_position("AAPL", ClosePositionRequest(percentage="50"))
    assert (closing.side, closing.qty) == (OrderSide.SELL, "5")
    assert client.get_open_position("AAPL").qty == "5"


# -- client_order_id --------------------------------------------------------------------------------


def test_client_order_id_reuse_after_fill_is_422(client):
    first = market_buy(client, "AAPL", qty=1, client_order_id="entry-aapl-1")
    assert client.get_order_by_id(first.id).status == OrderStatus.FILLED
    error = refused(lambda: market_buy(client, "MSFT", qty=1, client_order_id="entry-aapl-1"))
    assert (error.status_code, body(error)) == (
        422,
        {"code": 40010001, "message": "client_order_id must be unique"},
    )
    assert client.get_order_by_client_id("entry-aapl-1").id == first.id


def test_client_order_id_reuse_after_cancel_is_422(client):
    order = limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY, client_order_id="limit-1")
    client.cancel_order_by_id(order.id)
    error = refused(
        lambda: limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY, client_order_id="limit-1")
    )
    assert error.status_code == 422 and error.message == "client_order_id must be unique"


# -- wash trades --------------------------------------------------------------------------------


def test_market_buy_while_a_sell_limit_rests_is_a_wash_trade(client):
    market_buy(client, "AAPL", qty=10)
    limit_order(client, "AAPL", 10, 250)
    error = refused(lambda: market_buy(client, "AAPL", qty=1))
    assert (error.status_code, body(error)) == (
        403,
        {"code": 40310000, "message": "potential wash trade detected. use complex orders"},
    )


def test_buy_limit_while_a_sell_stop_rests_is_a_wash_trade(client):
    market_buy(client, "AAPL", qty=10)
    stop_sell(client, "AAPL", 10, 150)
    error = refused(lambda: limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY))
    assert error.status_code == 403 and error.message == "potential wash trade detected. use complex orders"


def test_buy_limit_below_a_resting_sell_limit_does_not_cross(client):
    market_buy(client, "AAPL", qty=10)
    limit_order(client, "AAPL", 10, 250)
    assert limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY).status == OrderStatus.NEW


def test_resting_oco_exit_is_exempt_from_the_wash_trade_check(client):
    market_buy(client, "AAPL", qty=10)
    oco_exit(client, "AAPL", 10, stop=150, target=250)
    assert market_buy(client, "AAPL", qty=1).status == OrderStatus.NEW


# -- buying power and prices ---------------------------------------------------------------------


def test_buy_beyond_buying_power_is_refused(client):
    error = refused(lambda: market_buy(client, "MSFT", qty=1000))  # ~$410k with $200k cash
    assert error.status_code == 403
    refusal = body(error)
    assert (refusal["code"], refusal["message"], refusal["buying_power"]) == (
        40310000,
        "insufficient buying power",
        "200000",
    )
    assert D(refusal["cost_basis"]) > 200000


def test_open_limit_buy_reserves_buying_power_until_canceled(client):
    order = limit_order(client, "AAPL", 100, 150, side=OrderSide.BUY, tif=TimeInForce.DAY)
    account = client.get_account()
    assert (account.cash, account.buying_power) == ("200000.00", "185000.00")
    client.cancel_order_by_id(order.id)
    assert client.get_account().buying_power == "200000.00"


def test_sub_penny_limit_price_is_422_and_sub_dollar_prices_take_four_decimals(client):
    error = refused(lambda: limit_order(client, "AAPL", 1, 150.123, side=OrderSide.BUY))
    assert (error.status_code, body(error)) == (
        422,
        {
            "code": 42210000,
            "message": "invalid limit_price 150.123. sub-penny increment does not fulfill minimum pricing criteria",
        },
    )
    assert limit_order(client, "SENS", 10, 0.4123, side=OrderSide.BUY).limit_price == "0.4123"
    assert refused(lambda: limit_order(client, "SENS", 10, 0.41234, side=OrderSide.BUY)).status_code == 422


def test_sell_stop_above_the_market_is_refused(client):
    market_buy(client, "AAPL", qty=1)
    error = refused(lambda: stop_sell(client, "AAPL", 1, 500))
    assert error.status_code == 422 and error.message.startswith(
        "stop price must be less than base_price - 0.01"
    )


# -- OCO rules and behaviour ------------------------------------------------------------------------


def test_oco_is_for_exits_only(client):
    error = refused(
        lambda: client.submit_order(
            LimitOrderRequest(
                symbol="AAPL",
                qty=1,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                order_class=OrderClass.OCO,
                take_profit=TakeProfitRequest(limit_price=150),
                stop_loss=StopLossRequest(stop_price=250),
            )
        )
    )
    assert (error.status_code, error.message) == (422, "oco orders must be exit orders")


def test_oco_stop_must_sit_below_the_take_profit_for_a_sell(client):
    market_buy(client, "AAPL", qty=10)
    error = refused(lambda: oco_exit(client, "AAPL", 10, stop=200, target=199.99))
    assert error.status_code == 422 and error.message.startswith(
        "stop price must be less than base_price - 0.01"
    )


def test_oco_must_be_a_limit_order_with_both_legs(sim, client):
    market_buy(client, "AAPL", qty=10)
    market_type = raw_post_order(
        sim,
        {
            "symbol": "AAPL",
            "qty": 10,
            "side": "sell",
            "type": "market",
            "time_in_force": "gtc",
            "order_class": "oco",
            "take_profit": {"limit_price": 250},
            "stop_loss": {"stop_price": 150},
        },
    )
    one_leg = raw_post_order(
        sim,
        {
            "symbol": "AAPL",
            "qty": 10,
            "side": "sell",
            "type": "limit",
            "time_in_force": "gtc",
            "order_class": "oco",
            "take_profit": {"limit_price": 250},
        },
    )
    assert (market_type.status_code, market_type.json()["message"]) == (
        422,
        "oco orders must be limit orders",
    )
    assert one_leg.status_code == 422 and "stop_loss.stop_price" in one_leg.json()["message"]


def test_oco_exit_fill_of_target_cancels_stop(sim, client):
    market_buy(client, "AAPL", qty=10)
    group = oco_exit(client, "AAPL", 10, stop=150, target=200)
    sim.control.set_price("AAPL", "205")
    parent = client.get_order_by_id(group.id, filter=None)
    nested = client.get_orders(
        GetOrdersRequest(status=QueryOrderStatus.CLOSED, nested=True, symbols=["AAPL"], side=OrderSide.SELL)
    )
    assert parent.status == OrderStatus.FILLED and D(parent.filled_avg_price) >= 200
    assert [o.id for o in nested] == [group.id]
    assert [leg.status for leg in nested[0].legs] == [OrderStatus.CANCELED]
    assert client.get_all_positions() == []


def test_oco_stop_fill_cancels_target_and_nested_listing_shows_the_leg(sim, client):
    market_buy(client, "AAPL", qty=10)
    group = oco_exit(client, "AAPL", 10, stop=150, target=200)
    open_orders = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
    assert [(o.id, [leg.id for leg in o.legs]) for o in open_orders] == [(group.id, [group.legs[0].id])]
    sim.control.set_price("AAPL", "140")
    leg = client.get_order_by_id(group.legs[0].id)
    assert leg.status == OrderStatus.FILLED and D(leg.filled_avg_price) < 150
    assert client.get_order_by_id(group.id).status == OrderStatus.CANCELED


# -- cancels and lookups ----------------------------------------------------------------------------


def test_cancel_of_a_filled_order_is_422_not_cancelable(client):
    order = market_buy(client, "AAPL", qty=1)
    error = refused(lambda: client.cancel_order_by_id(order.id))
    assert (error.status_code, error.message) == (422, "order is not cancelable")


def test_unknown_order_is_404(client):
    error = refused(lambda: client.get_order_by_id("11111111-2222-3333-4444-555555555555"))
    assert (error.status_code, body(error)) == (404, {"code": 40410000, "message": "order not found"})
    assert refused(lambda: client.get_order_by_client_id("never-sent")).status_code == 404
    assert (
        refused(lambda: client.cancel_order_by_id("11111111-2222-3333-4444-555555555555")).status_code == 404
    )


def test_no_position_is_404(client):
    error = refused(lambda: client.get_open_position("AAPL"))
    assert (error.status_code, error.message) == (404, "position does not exist")


def test_cancel_all_answers_207_with_each_canceled_order(client):
    a = limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY)
    b = limit_order(client, "MSFT", 1, 100, side=OrderSide.BUY)
    responses = client.cancel_orders()
    assert sorted(str(r.id) for r in responses) == sorted([str(a.id), str(b.id)])
    assert {r.status for r in responses} == {200}
    assert client.get_orders() == []


def test_orders_listing_pages_by_submission_time_with_after_exclusive(client):
    orders = [limit_order(client, "AAPL", 1, 100 + i, side=OrderSide.BUY) for i in range(5)]
    first_page = client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, direction="asc", limit=2))
    rest = client.get_orders(
        GetOrdersRequest(
            status=QueryOrderStatus.ALL, direction="asc", limit=500, after=first_page[-1].submitted_at
        )
    )
    assert [o.id for o in first_page + rest] == [o.id for o in orders]
    assert [o.id for o in client.get_orders()] == [o.id for o in reversed(orders)]  # default: newest first


# -- sessions ---------------------------------------------------------------------------------------


def test_market_closed_order_is_queued_then_filled_at_the_open():
    sim = start_sim(start=datetime(2024, 3, 1, 20, 0, tzinfo=NEW_YORK))  # Friday night
    try:
        client = sim.trading_client()
        assert client.get_clock().is_open is False
        order = market_buy(client, "AAPL", qty=5)
        assert order.status == OrderStatus.ACCEPTED
        sim.control.advance(to=datetime(2024, 3, 4, 9, 30, tzinfo=NEW_YORK))
        filled = client.get_order_by_id(order.id)
        assert filled.status == OrderStatus.FILLED
        assert filled.filled_at.astimezone(NEW_YORK).replace(microsecond=0) == datetime(
            2024, 3, 4, 9, 30, tzinfo=NEW_YORK
        )
        assert client.get_clock().is_open is True
    finally:
        sim.stop()


def test_day_order_expires_at_the_close(sim, client):
    order = limit_order(client, "AAPL", 1, 100, side=OrderSide.BUY, tif=TimeInForce.DAY)
    sim.control.advance(to=datetime(2024, 3, 4, 16, 0, tzinfo=NEW_YORK))
    assert client.get_order_by_id(order.id).status == OrderStatus.EXPIRED


def test_calendar_and_clock_follow_nyse_holidays_and_early_closes(client):
    days = client.get_calendar(GetCalendarRequest(start=date(2024, 11, 27), end=date(2024, 12, 2)))
    assert [(d.date, d.open.time().isoformat(), d.close.time().isoformat()) for d in days] == [
        (date(2024, 11, 27), "09:30:00", "16:00:00"),
        (date(2024, 11, 29), "09:30:00", "13:00:00"),
        (date(2024, 12, 2), "09:30:00", "16:00:00"),
    ]
    clock = client.get_clock()
    assert clock.timestamp == DEFAULT_START and clock.is_open
    assert clock.next_close == datetime(2024, 3, 4, 16, 0, tzinfo=NEW_YORK)


# -- market data --------------------------------------------------------------------------------


def test_latest_quote_with_missing_ask_shows_zero_and_the_last_trade_remains(sim):
    data = sim.data_client()
    sim.control.set_ask_missing("AAPL")
    quote = data.get_stock_latest_quote(StockLatestQuoteRequest(symbol_or_symbols=["AAPL"]))["AAPL"]
    trade = data.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols=["AAPL"]))["AAPL"]
    assert quote.ask_price == 0 and quote.ask_size == 0 and quote.bid_price > 0
    assert trade.price > quote.bid_price
    snapshot = data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["AAPL"]))["AAPL"]
    assert snapshot.latest_quote.ask_price == 0 and snapshot.latest_trade.price == trade.price


def test_latest_endpoints_and_snapshot_parse_in_alpaca_py(sim):
    data = sim.data_client()
    bar = data.get_stock_latest_bar(StockLatestBarRequest(symbol_or_symbols=["AAPL", "SENS"]))
    assert set(bar) == {"AAPL", "SENS"}
    assert bar["AAPL"].timestamp == DEFAULT_START - timedelta(minutes=1)
    snapshot = data.get_stock_snapshot(StockSnapshotRequest(symbol_or_symbols=["AAPL", "NOPE"]))
    assert set(snapshot) == {"AAPL"}
    assert snapshot["AAPL"].daily_bar.close == snapshot["AAPL"].latest_trade.price
    assert snapshot["AAPL"].previous_daily_bar.timestamp.date() == date(2024, 3, 1)


def test_bars_pagination_terminates_and_returns_every_bar_oldest_first(sim):
    data = sim.data_client()
    start, end = datetime(2024, 2, 1, tzinfo=NEW_YORK), DEFAULT_START
    request = StockBarsRequest(
        symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute, start=start, end=end
    )
    bars = data.get_stock_bars(request).data
    expected = {s: sim.engine.bars(s, "1Min", start, end) for s in ("AAPL", "MSFT")}
    assert sum(len(v) for v in expected.values()) > 10_000  # more than one page of alpaca-py's 10,000
    for symbol in ("AAPL", "MSFT"):
        times = [b.timestamp for b in bars[symbol]]
        assert times == sorted(times) and len(times) == len(set(times))
        assert times == [b.t for b in expected[symbol]]


def test_bars_page_token_walks_small_pages_to_the_end(sim):
    headers = {"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key}
    params = {
        "symbols": "AAPL,MSFT,SENS",
        "timeframe": "1Day",
        "start": "2024-01-01",
        "end": "2024-03-04",
        "limit": 7,
    }
    seen, pages, token = [], 0, None
    while True:
        response = requests.get(
            f"{sim.base_url}/v2/stocks/bars",
            params={**params, "page_token": token},
            headers=headers,
            timeout=10,
        ).json()
        seen += [(s, b["t"]) for s, bars in response["bars"].items() for b in bars]
        pages += 1
        token = response["next_page_token"]
        if token is None:
            break
        assert pages < 100
    assert len(seen) == len(set(seen)) == 3 * 43  # 43 sessions from Jan 2 to Mar 4, 2024
    assert pages == -(-len(seen) // 7)


# -- auth and rate limit ------------------------------------------------------------------------


def test_wrong_or_missing_keys_are_refused(sim):
    from alpaca.trading.client import TradingClient

    wrong = TradingClient("sim-key", "not-the-secret", url_override=sim.base_url)
    error = refused(wrong.get_account)
    assert error.status_code == 403 and "code" not in body(error)
    missing = requests.get(f"{sim.base_url}/v2/account", timeout=10)
    assert missing.status_code == 401


def test_rate_limit_answers_429_after_the_allowance(sim):
    sim.control.set_rate_limit(5)
    client = sim.trading_client(retries=3, retry_wait=0)  # alpaca-py retries 429: 4 attempts, all refused
    for _ in range(5):
        client.get_clock()
    error = refused(client.get_clock)
    assert (error.status_code, body(error)) == (429, {"code": 42910000, "message": "rate limit exceeded"})
    headers = {"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key}
    response = requests.get(f"{sim.base_url}/v2/clock", headers=headers, timeout=10)
    assert response.status_code == 429
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("5", "0")
    # Market data has its own allowance.
    assert sim.data_client().get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols="AAPL"))
    sim.control.set_rate_limit(0)
    assert client.get_clock().is_open


def test_server_default_rate_limit_is_alpacas_200_per_minute():
    sim = start_sim(rate_limit=200)
    try:
        client = sim.trading_client()
        for _ in range(200):
            client.get_clock()
        assert refused(client.get_clock).status_code == 429
    finally:
        sim.stop()


# -- trade updates over the WebSocket ------------------------------------------------------------


def test_trade_updates_delivered_over_the_websocket_with_every_field_alpaca_py_requires(sim, client):
    with TradeUpdateCollector(sim) as stream:
        sim.control.partial_fill_next("AAPL", "0.4")
        order = market_buy(client, "AAPL", qty=10, client_order_id="ws-1")
        partial = stream.wait_for(lambda u: u.event == "partial_fill")
        sim.control.fill(client_order_id="ws-1")
        fill = stream.wait_for(lambda u: u.event == "fill")
    new = next(u for u in stream.updates if u.event == "new")
    assert new.order.id == order.id and new.timestamp is not None and new.execution_id is None
    assert (partial.qty, partial.position_qty, partial.order.filled_qty) == (4, 4, "4")
    assert (fill.qty, fill.position_qty, fill.order.filled_qty, fill.order.status) == (
        6,
        10,
        "10",
        OrderStatus.FILLED,
    )
    assert partial.execution_id != fill.execution_id
    assert partial.timestamp <= fill.timestamp
    expected_avg = (D(str(partial.price)) * 4 + D(str(fill.price)) * 6) / 10
    assert D(fill.order.filled_avg_price) == expected_avg


def test_second_trade_stream_connection_is_refused_while_one_listens(sim):
    with TradeUpdateCollector(sim):
        upgrade = requests.get(
            sim.stream_url.replace("ws://", "http://"),
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
            timeout=10,
        )
        assert upgrade.status_code == 429
        assert sim.control.state()["stream_connections"] == 1


def test_dropped_stream_reconnects_and_misses_what_happened_meanwhile(sim, client):
    with TradeUpdateCollector(sim) as stream:
        assert sim.control.drop_stream(refuse_seconds=0.5) == 1
        missed = market_buy(client, "AAPL", qty=1)
        stream.wait_until_listening()
        seen = market_buy(client, "MSFT", qty=1)
        stream.wait_for(lambda u: u.order.id == seen.id and u.event == "fill")
    assert missed.id not in {u.order.id for u in stream.updates}


# -- faults -----------------------------------------------------------------------------------------


def test_failed_request_after_processing_leaves_an_order_the_client_never_saw(sim, client):
    sim.control.fail_requests(1, 504, path_prefix="/v2/orders", method="POST", when="after")
    error = refused(lambda: market_buy(client, "AAPL", qty=1, client_order_id="lost-answer"))
    assert error.status_code == 504
    assert client.get_order_by_client_id("lost-answer").status == OrderStatus.FILLED


def test_failed_request_before_processing_creates_nothing(sim, client):
    sim.control.fail_requests(2, 503)
    assert refused(client.get_account).status_code == 503
    assert refused(lambda: market_buy(client, "AAPL", qty=1, client_order_id="x")).status_code == 503
    assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL)) == []


def test_delayed_requests_answer_late(sim, client):
    sim.control.delay_requests(1, 0.3, path_prefix="/v2/clock")
    started = time.monotonic()
    client.get_clock()
    slow = time.monotonic() - started
    started = time.monotonic()
    client.get_clock()
    assert slow >= 0.3 > time.monotonic() - started


def test_state_dump_records_orders_fills_and_refusals_for_audits(sim, client):
    market_buy(client, "AAPL", qty=10)
    oco_exit(client, "AAPL", 10, stop=150, target=250)
    refused(lambda: stop_sell(client, "AAPL", 10, 150))
    state = sim.control.state()
    assert [o["order_class"] for o in state["orders"]] == ["simple", "oco"]
    assert [h["event"] for h in state["orders"][0]["history"]] == ["new", "fill"]
    assert [f["qty"] for f in state["fills"]] == ["10"]
    assert [r["message"] for r in state["rejections"]] == [
        "insufficient qty available for order (requested: 10, available: 0)"
    ]
    assert state["positions"][0]["qty_available"] == "0"


def test_running_clock_fills_and_streams_without_any_request():
    sim = start_sim(start=datetime(2024, 3, 4, 9, 29, 0, tzinfo=NEW_YORK), speed=40)  # the open in 1.5 s
    try:
        client = sim.trading_client()
        with TradeUpdateCollector(sim) as stream:
            order = market_buy(client, "AAPL", qty=1)
            assert order.status == OrderStatus.ACCEPTED
            fill = stream.wait_for(lambda u: u.event == "fill", timeout=5)
        assert fill.order.id == order.id
        assert fill.timestamp.astimezone(NEW_YORK).replace(microsecond=0) == datetime(
            2024, 3, 4, 9, 30, tzinfo=NEW_YORK
        )
    finally:
        sim.stop()


def test_close_all_positions_answers_207_per_symbol_and_cancels_orders_first(client):
    market_buy(client, "AAPL", qty=10)
    market_buy(client, "MSFT", qty=2)
    oco_exit(client, "AAPL", 10, stop=150, target=250)
    responses = client.close_all_positions(cancel_orders=True)
    assert sorted((r.symbol, r.status) for r in responses) == [("AAPL", 200), ("MSFT", 200)]
    assert client.get_all_positions() == []
    assert client.get_orders() == []


def test_assets_are_listed_and_found_by_symbol_or_id_with_alpacas_fields(sim, client):
    assets = client.get_all_assets()
    assert len(assets) == 25
    fubo = client.get_asset("FUBO")
    assert (fubo.fractionable, fubo.tradable, fubo.exchange.value) == (False, True, "NYSE")
    assert client.get_asset(str(fubo.id)).symbol == "FUBO"
    sim.control.set_asset("AAPL", fractionable=False, listed_fractionable=True)
    assert client.get_asset("AAPL").fractionable is True  # the list says yes ...
    assert (
        refused(lambda: market_buy(client, "AAPL", notional=100)).message
        == "requested asset is not fractionable"
    )
    market_buy(client, "AAPL", qty=1)
    position = client.get_open_position("AAPL")
    assert client.get_open_position(str(position.asset_id)).symbol == "AAPL"


# -- hostile input: 400 for what cannot be read, 422 for a bad value, never 5xx --------------------


def sim_post(sim, path: str, payload: object = None, raw: bytes | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(payload).encode()
    return requests.post(f"{sim.base_url}{path}", data=data, timeout=10)


def one_line_refusal(response: requests.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["message"]
    assert "\n" not in message and len(message) <= 300
    return message


@pytest.mark.parametrize(
    "speed", [float("nan"), float("inf"), float("-inf"), -1, 1e300, "fast", True, None, [60], {"x": 1}, "NaN"]
)
def test_a_speed_that_is_not_a_finite_number_in_range_is_a_one_line_422(sim, speed):
    message = one_line_refusal(sim_post(sim, "/sim/clock/speed", {"speed": speed}), 422)
    assert message.startswith("speed ")
    assert sim_post(sim, "/sim/clock/speed", {"speed": "60"}).json()["speed"] == 60.0  # a numeric string is fine


@pytest.mark.parametrize(
    ("path", "payload", "says"),
    [
        ("/sim/clock/advance", {"seconds": float("nan")}, "seconds must be a number"),
        ("/sim/clock/advance", {"seconds": -5}, "seconds must be a number"),
        ("/sim/clock/advance", {"seconds": 10**12}, "seconds must be a number from 0 to"),
        ("/sim/clock/advance", {"seconds": 5 * 365 * 86400}, "the simulated calendar ends then"),
        ("/sim/clock/advance", {"to": "2031-01-02T10:00:00-05:00"}, "the simulated calendar ends"),
        ("/sim/clock/advance", {"to": "yesterday"}, "invalid to"),
        ("/sim/price", {"symbol": "AAPL", "price": "Infinity"}, "price must be a number from 0.0001 to 1000000"),
        ("/sim/price", {"symbol": "AAPL", "price": -3}, "price must be a number"),
        ("/sim/price", {"symbol": "AAPL", "price": "1e30"}, "price must be a number"),
        ("/sim/price", {"symbol": ["AAPL"], "price": 10}, "symbol must be a string"),
        ("/sim/quote", {"symbol": "AAPL", "ask_missing": "false"}, "ask_missing must be true or false"),
        ("/sim/asset", {"symbol": "AAPL", "tradable": 0}, "tradable must be true or false"),
        ("/sim/partial_fill", {"symbol": "AAPL", "fraction": "nan"}, "fraction must be a number"),
        ("/sim/fill", {"client_order_id": "x", "qty": "1e400"}, "qty must be a number"),
        ("/sim/fill", {"client_order_id": {"id": 1}}, "client_order_id must be a string"),
        ("/sim/split", {"symbol": "AAPL", "new_rate": 1, "old_rate": 10000}, "the split would put AAPL at"),
        ("/sim/faults/drop_stream", {"refuse_seconds": float("inf")}, "refuse_seconds must be a number"),
        ("/sim/faults/delay", {"count": 1, "seconds": float("nan")}, "seconds must be a number"),
        ("/sim/faults/delay", {"count": 1, "seconds": 1, "method": 123}, "method must be a string"),
        ("/sim/faults/delay", {"count": 1, "seconds": 1, "method": "FETCH"}, "method must be one of"),
        ("/sim/faults/fail", {"count": 0}, "count must be a whole number from 1"),
        ("/sim/faults/fail", {"count": 1.5}, "count must be a whole number"),
        ("/sim/faults/fail", {"count": 1, "status": 200}, "status must be a whole number from 400 to 599"),
        ("/sim/faults/fail", {"count": 1, "path_prefix": ["/v2/"]}, "path_prefix must be a string"),
        ("/sim/faults/fail", {"count": 1, "path_prefix": "/sim/"}, "not be a /sim control"),
        ("/sim/faults/fail", {"count": 1, "when": "during"}, "when must be one of before, after"),
        ("/sim/faults/fail", {"count": 1, "seconds": 2}, "unknown field 'seconds'"),
        ("/sim/rate_limit", {"per_minute": -1}, "per_minute must be a whole number"),
        ("/sim/reset", {"cash": "-5"}, "cash must be a number from 0"),
        ("/sim/reset", {"seed": "seven"}, "seed must be a whole number"),
        ("/sim/reset", {"universe_size": 10**9}, "universe_size must be a whole number"),
        ("/sim/reset", {"start": "2028-12-20T10:00:00-05:00"}, "the simulated calendar ends"),
        ("/sim/reset", {"speeed": 0}, "unknown field 'speeed'"),
    ],
)
def test_control_bodies_with_bad_values_are_a_one_line_422_naming_the_field(sim, path, payload, says):
    message = one_line_refusal(sim_post(sim, path, payload), 422)
    assert says in message, message
    assert sim.control.health()["ok"] is True


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b"null", b'"text"', b"\xff\xfe", b"[" * 100_000])
def test_control_and_order_bodies_that_are_not_json_objects_are_a_400(sim, raw):
    one_line_refusal(sim_post(sim, "/sim/clock/speed", raw=raw), 400)
    headers = {"APCA-API-KEY-ID": sim.api_key, "APCA-API-SECRET-KEY": sim.secret_key}
    order = requests.post(f"{sim.base_url}/v2/orders", data=raw, headers=headers, timeout=10)
    one_line_refusal(order, 400)
    assert order.json()["code"] == 40010000


def test_a_malformed_fault_is_refused_and_never_jams_the_market(sim, client):
    # Before: a non-string method was stored, then every /v2 request failed on it (500) until a restart.
    for payload in ({"count": 1, "method": 5}, {"count": 1, "path_prefix": 7}, {"count": 1, "status": "x"}):
        one_line_refusal(sim_post(sim, "/sim/faults/fail", payload), 422)
    assert client.get_clock().is_open
    assert sim.control.state()["orders"] == []


def test_faults_never_touch_the_controls(sim, client):
    sim.control.fail_requests(1000, 503, path_prefix="/")
    sim.control.delay_requests(1000, 3600, path_prefix="/")
    assert sim.control.health()["ok"] is True  # neither failed nor held for an hour
    sim.control.clear_faults()
    assert client.get_clock().is_open


@pytest.mark.parametrize(
    ("qty", "status", "says"),
    [
        ("1e30", 422, "qty must be <= 1000000000"),
        (10**40, 422, "qty must be <= 1000000000"),
        ("1000000000", 403, "insufficient buying power"),
        ("nan", 422, "invalid qty: 'nan'"),
        ("-Infinity", 422, "invalid qty: '-Infinity'"),
        (-5, 422, "qty must be > 0"),
        (True, 422, "invalid qty: True"),
    ],
)
def test_huge_or_non_finite_quantities_are_refused_not_a_500(sim, qty, status, says):
    response = raw_post_order(sim, {"symbol": "AAPL", "qty": qty, "side": "buy", "type": "market",
                                    "time_in_force": "day"})  # fmt: skip
    assert says in one_line_refusal(response, status)
    rejections = sim.control.state()["rejections"]  # the audit dump still serializes what was refused
    if "must be" in says or status == 403:  # refused by the order rules (parsing refusals are not recorded)
        assert rejections[-1]["status"] == status


def test_huge_prices_are_refused_not_a_500(sim):
    for price in ("1e30", "10000000000", 1e300):
        response = raw_post_order(sim, {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "limit",
                                        "limit_price": price, "time_in_force": "gtc"})  # fmt: skip
        one_line_refusal(response, 422)


def test_reset_recovers_from_everything_the_controls_can_do(sim, client):
    limited = start_sim(rate_limit=0)
    try:
        c = limited.control
        c.delay_requests(1000, 3600)  # every /v2 request held for an hour
        c.fail_requests(1000, 500, path_prefix="/v1/")
        c.set_rate_limit(1)
        c.drop_stream(refuse_seconds=3600)
        c.set_asset("AAPL", tradable=False, fractionable=False)
        c.set_ask_missing("AAPL")
        c.partial_fill_next("AAPL", "0.5")
        c.set_price("AAPL", "999999")
        c.set_speed(100_000)
        c.split("MSFT", 1, 100)

        c.reset(start=DEFAULT_START)

        fresh = limited.trading_client()
        order = market_buy(fresh, "AAPL", qty=2)
        assert fresh.get_order_by_id(order.id).status == OrderStatus.FILLED
        for _ in range(3):
            assert fresh.get_clock().timestamp  # the server's starting rate limit (off) is back
        assert c.state()["splits"] == []
        with TradeUpdateCollector(limited) as stream:  # streams are accepted again
            market_buy(fresh, "KO", qty=1)
            stream.wait_for(lambda u: u.event == "fill")
    finally:
        limited.stop()


def test_a_running_clock_stops_before_the_calendar_ends():
    from shared.market.calendar import nyse
    from sim.server import CLOCK_END_MARGIN, MAX_SPEED

    limit = nyse().sessions(date(2028, 12, 1), date(2028, 12, 31))[-1].open - CLOCK_END_MARGIN
    sim = start_sim(start=limit - timedelta(hours=1), speed=MAX_SPEED)
    try:
        deadline = time.monotonic() + 5
        while sim.engine.clock.speed > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.engine.clock.speed == 0
        assert sim.trading_client().get_clock().timestamp < limit + timedelta(days=1)
        message = one_line_refusal(sim_post(sim, "/sim/clock/advance", {"seconds": 86400 * 2}), 422)
        assert message.startswith("seconds must be at most 0 from now: time cannot pass 2028-")
        assert message.endswith("(the simulated calendar ends then)")
    finally:
        sim.stop()



def test_the_broker_status_control_over_the_wire(sim):
    from alpaca.trading.requests import MarketOrderRequest

    order = sim.trading_client().submit_order(MarketOrderRequest(symbol="AAPL", qty=1, side="buy",
                                                                 time_in_force="day"))
    with pytest.raises(RuntimeError, match="422.*filled -> canceled"):
        sim.control.broker_status(str(order.id), "canceled")
    with pytest.raises(RuntimeError, match="422.*status must be one the broker sets"):
        sim.control.broker_status(str(order.id), "filled")
