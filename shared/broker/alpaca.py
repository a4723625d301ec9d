"""`AlpacaExecutor`: the `OrderExecutor` over alpaca-py 0.44.0, for real Alpaca, paper and the simulator.

The same code talks to paper-api.alpaca.markets, api.alpaca.markets and the local simulated market;
only `BrokerSettings` (endpoint, data endpoint, stream endpoint, feed) tell them apart.

Network policy (alpaca-py sets no timeout and retries 429/504 on every call, order submits included):
- Every HTTP call carries a timeout of `FL_BROKER_TIMEOUT_SECONDS` (we wrap each client's
  `requests.Session.request`). A timeout, a refused connection, a 5xx or an unreadable answer is
  `BrokerUnavailable`: the outcome is unknown.
- An answer the adapter cannot use is `BrokerUnavailable` too, with one line saying what came back:
  a 2xx with an empty body where data was due, a body that is not JSON, JSON of the wrong shape
  (for alpaca-py's models or for ours: conversion runs inside the same guard), any 3xx (alpaca-py
  never follows redirects; the Location is named), or a market-data listing that sends the same
  page token twice or pages without end (`MAX_REQUESTS_PER_CALL`).
- Reads and cancels go through clients that keep a modest retry on 429/504 (2 retries, 1 s apart).
- Order submits go through their own `TradingClient` with the SDK retry switched off (`_retry = 0`).
  A 504 may hide an accepted order, and a blind resend would either buy twice or bounce off
  "client_order_id must be unique". So a submit is tried once; on `BrokerUnavailable` or
  `RateLimited` the caller looks the order up with `get_order_by_client_id` before anything else.

Broker errors become the project's typed errors (`shared.errors`) by HTTP status and message text
(`classify_broker_error`, a pure function). Messages are one line and never contain a key: the
error is built outside the `except` block so it drags no request (with its auth headers) along.

Converters from alpaca-py models to `shared.models` live in the "converters" section below and
nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
import websockets
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.data.enums import CorporateActionsType, DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.historical.corporate_actions import CorporateActionsClient
from alpaca.data.requests import CorporateActionsRequest, StockBarsRequest, StockSnapshotRequest
from alpaca.data.timeframe import TimeFrame
from alpaca.trading import models as alpaca_models
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetClass, AssetStatus, OrderSide, QueryOrderStatus
from alpaca.trading.enums import OrderClass as AlpacaOrderClass
from alpaca.trading.enums import TimeInForce as AlpacaTimeInForce
from alpaca.trading.requests import (
    GetAssetsRequest,
    GetCalendarRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from pydantic import ValidationError

from shared import logs, metrics
from shared.broker.contract import OrderExecutor, TradeUpdateStream, protective_exit_shape
from shared.config import BrokerSettings
from shared.errors import (
    BrokerError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    FractionalRuleViolation,
    InputError,
    InsufficientBuyingPower,
    InsufficientQty,
    InvalidPrice,
    MarketClosed,
    NotCancelable,
    NotFound,
    NotFractionable,
    NotTradable,
    OrderRejected,
    RateLimited,
    WashTrade,
)
from shared.market.calendar import NEW_YORK
from shared.models import (
    Account,
    Asset,
    Bar,
    BarRow,
    LatestPrice,
    MarketClock,
    Order,
    OrderClass,
    OrderStatus,
    OrderType,
    Position,
    PriceSource,
    Side,
    Split,
    Timeframe,
    TimeInForce,
    TradeEventType,
    TradeUpdate,
    TradingDay,
)
from shared.money import ZERO, to_decimal

log = logging.getLogger(__name__)

#: Retries alpaca-py may make on 429/504 for reads and cancels (never for order submits).
READ_RETRIES = 2
READ_RETRY_WAIT_SECONDS = 1.0
#: Alpaca's maximum page size for GET /v2/orders.
ORDERS_PAGE_LIMIT = 500
#: How far before `since` the order backfill looks for orders that may have changed since: Alpaca
#: cancels GTC orders 90 days after creation, so nothing older can still change.
ORDER_HISTORY_LOOKBACK = timedelta(days=90)
#: Symbols per market-data request: keeps the query string far below any URL length limit.
SYMBOLS_PER_REQUEST = 200
#: Connections kept per host for the trading API (the manager sends a burst of orders in parallel).
HTTP_POOL_SIZE = 64
#: How long the trade stream waits for the "listening" acknowledgement before calling on_connect.
LISTEN_ACK_TIMEOUT_SECONDS = 5.0
#: Longest broker text kept in an error message (an HTML 502 page is not a message).
_MAX_MESSAGE_CHARS = 240
#: Longest excerpt of an unusable answer quoted in an error message.
_MAX_EXCERPT_CHARS = 80
#: HTTP requests one adapter call may make (pages of a listing); beyond it the broker is paging forever.
MAX_REQUESTS_PER_CALL = 1000

T = TypeVar("T")


# =============================================================================================
# Error mapping (pure)
# =============================================================================================

#: Message fragments (lower case) -> typed rejection. First match wins, so the specific ones
#: come first ("fractional orders ... not fractionable" is about the asset, not the order).
_REJECTION_RULES: tuple[tuple[tuple[str, ...], type[OrderRejected]], ...] = (
    (("client_order_id must be unique",), DuplicateClientOrderId),
    (("not fractionable",), NotFractionable),
    # "asset XYZ is not tradable": halted, delisted or mid corporate action; no order is accepted.
    (("not tradable",), NotTradable),
    (("insufficient qty",), InsufficientQty),
    (("insufficient buying power",), InsufficientBuyingPower),
    (("wash trade",), WashTrade),
    (("not cancelable", "not cancellable"), NotCancelable),
    (("fractional", "notional orders", "qty must be integer"), FractionalRuleViolation),
    (
        (
            "sub-penny",
            "invalid limit_price",
            "invalid stop_price",
            "base_price",
            "stop price must",
            "limit price must",
            "stop_price must",
            "limit_price must",
            "invalid price",
        ),
        InvalidPrice,
    ),
    (("market is closed", "market closed", "outside market hours", "outside of market hours"), MarketClosed),
)

_AVAILABLE_IN_TEXT = re.compile(r"available:\s*(-?[0-9]+(?:\.[0-9]+)?)")


def _broker_message(body: str) -> tuple[str, int | None, dict[str, Any]]:
    """(message, code, parsed body) from an Alpaca error body, tolerating HTML and empty bodies."""
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    message = parsed.get("message")
    if not isinstance(message, str) or not message.strip():
        message = body.strip() or "no message"
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    code = parsed.get("code")
    return message, code if isinstance(code, int) else None, parsed


def _available_qty(parsed: dict[str, Any], message: str) -> Decimal | None:
    raw = parsed.get("available")
    if raw is None:
        match = _AVAILABLE_IN_TEXT.search(message)
        raw = match.group(1) if match else None
    try:
        return None if raw is None else to_decimal(raw)
    except ValueError:
        return None


def classify_broker_error(
    status: int | None, body: str, *, action: str, for_order: bool = True
) -> BrokerError:
    """The typed error for an Alpaca HTTP error answer.

    `action` says what we were doing ("submit protective_exit AAPL cid=x"); `for_order` is False
    for reads, where an unexpected 4xx is a plain `BrokerError` rather than an order rejection.
    """
    message, code, parsed = _broker_message(body)
    where = f"HTTP {status}" if status is not None else "no HTTP status"
    text = f"{action}: {message} ({where}{f', code {code}' if code is not None else ''})"
    kw: dict[str, Any] = {"status": status, "code": code}
    if status is None or status >= 500:
        return BrokerUnavailable(f"{action}: broker failed ({where}); outcome unknown: {message}", **kw)
    if status == 429:
        return RateLimited(text, **kw)
    if status == 404:
        return NotFound(text, **kw)
    lowered = message.lower()
    for fragments, error_cls in _REJECTION_RULES:
        if any(fragment in lowered for fragment in fragments):
            if error_cls is InsufficientQty:
                return InsufficientQty(text, available=_available_qty(parsed, message), **kw)
            return error_cls(text, **kw)
    if status in (401, 403) and code is None:
        # Alpaca answers bad keys with a bare {"message": "forbidden."} / "unauthorized".
        return BrokerError(
            f"{action}: the broker refused the API keys ({where}: {message}); "
            "check ALPACA_API_KEY, ALPACA_SECRET_KEY and ALPACA_ENDPOINT",
            **kw,
        )
    return (OrderRejected if for_order else BrokerError)(text, **kw)


def error_from_api_error(exc: APIError, *, action: str, for_order: bool = True) -> BrokerError:
    """The typed error for an alpaca-py `APIError` (whose str() is the raw response body)."""
    return classify_broker_error(exc.status_code, str(exc), action=action, for_order=for_order)


# =============================================================================================
# Converters: alpaca-py models -> shared.models (the only place that knows both)
# =============================================================================================


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    return to_decimal(value)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _enum_value(value: object) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def order_from_alpaca(order: alpaca_models.Order) -> Order:
    order_class = _enum_value(order.order_class) or "simple"
    return Order(
        id=str(order.id),
        client_order_id=order.client_order_id,
        symbol=order.symbol or "",
        side=Side(_enum_value(order.side)),
        type=OrderType(_enum_value(order.type or order.order_type)),
        order_class=OrderClass(order_class),
        time_in_force=TimeInForce(_enum_value(order.time_in_force)),
        status=OrderStatus(_enum_value(order.status)),
        qty=_dec(order.qty),
        notional=_dec(order.notional),
        filled_qty=_dec(order.filled_qty) or ZERO,
        filled_avg_price=_dec(order.filled_avg_price),
        limit_price=_dec(order.limit_price),
        stop_price=_dec(order.stop_price),
        created_at=_aware(order.created_at),
        updated_at=_aware(order.updated_at),
        submitted_at=_aware(order.submitted_at),
        filled_at=_aware(order.filled_at),
        legs=[order_from_alpaca(leg) for leg in order.legs or []],
    )


def orders_from_alpaca(orders: Iterable[alpaca_models.Order]) -> list[Order]:
    """Convert a listing, skipping (and logging) orders outside our model, e.g. options `mleg`."""
    result = []
    for order in orders:
        try:
            result.append(order_from_alpaca(order))
        except (ValueError, ValidationError) as exc:
            logs.event(
                log,
                "order_skipped_unknown_shape",
                level=logging.WARNING,
                symbol=order.symbol,
                client_order_id=order.client_order_id,
                reason=str(exc).splitlines()[0],
            )
    return result


def position_from_alpaca(position: alpaca_models.Position) -> Position:
    qty = to_decimal(position.qty)
    available = _dec(position.qty_available)
    return Position(
        symbol=position.symbol,
        qty=qty,
        # Alpaca always sends qty_available; an endpoint that does not reserves nothing.
        qty_available=qty if available is None else available,
        avg_entry_price=to_decimal(position.avg_entry_price),
        current_price=_dec(position.current_price),
        market_value=_dec(position.market_value),
        unrealized_pl=_dec(position.unrealized_pl),
        cost_basis=_dec(position.cost_basis),
    )


def account_from_alpaca(account: alpaca_models.TradeAccount) -> Account:
    return Account(
        cash=_dec(account.cash) or ZERO,
        buying_power=_dec(account.buying_power) or ZERO,
        equity=_dec(account.equity) or ZERO,
        last_equity=_dec(account.last_equity) or ZERO,
        currency=account.currency or "USD",
        account_number=account.account_number or "",
    )


def asset_from_alpaca(asset: alpaca_models.Asset) -> Asset:
    return Asset(
        symbol=asset.symbol, fractionable=asset.fractionable, tradable=asset.tradable, name=asset.name or ""
    )


def clock_from_alpaca(clock: alpaca_models.Clock) -> MarketClock:
    return MarketClock(
        timestamp=_aware(clock.timestamp).astimezone(NEW_YORK),
        is_open=clock.is_open,
        next_open=_aware(clock.next_open).astimezone(NEW_YORK),
        next_close=_aware(clock.next_close).astimezone(NEW_YORK),
    )


def trading_day_from_alpaca(day: alpaca_models.Calendar) -> TradingDay:
    # alpaca-py parses the "HH:MM" open/close into naive datetimes; Alpaca means New York time.
    return TradingDay(
        date=day.date, open=day.open.replace(tzinfo=NEW_YORK), close=day.close.replace(tzinfo=NEW_YORK)
    )


def bar_from_alpaca(bar: Any) -> Bar:
    return Bar(
        t=_aware(bar.timestamp),
        o=to_decimal(bar.open),
        h=to_decimal(bar.high),
        l=to_decimal(bar.low),
        c=to_decimal(bar.close),
        v=to_decimal(bar.volume),
    )


def bar_rows_from_alpaca_json(raw: Any) -> dict[str, list[BarRow]]:
    """`BarRow`s from the bars JSON alpaca-py hands over with `raw_data=True` ({symbol: [{"t", "o", "h",
    "l", "c", "v", ...}]}, all pages merged): equal to `bar_from_alpaca` of alpaca-py's model, digit for
    digit. Like that model, a price or volume is read as a float first (so 101 and 101.0 both give
    Decimal("101.0")), and a time without an offset is UTC. A missing field, a value that is not a number
    (a boolean, null, text that is not one) or not an ISO 8601 time, NaN or infinity raises (the caller's
    guard makes it `BrokerUnavailable`). Equal prices and times of one answer share one Decimal /
    datetime: most prices and every session's time repeat across symbols and days."""
    numbers: dict[Any, Decimal] = {}
    times: dict[Any, datetime] = {}

    def number(value: Any) -> Decimal:
        kind = value.__class__
        if kind is not float and kind is not int and kind is not str:
            raise TypeError(f"not a number: {kind.__name__}")
        result = Decimal(repr(float(value)))  # what to_decimal makes of the model's float
        if not result.is_finite():
            raise ValueError(f"not a finite number: {value!r}")
        if result > 0:  # -0.0 == 0.0: only positive values are shared, so a sign is never borrowed
            numbers[value] = result
        return result

    def moment(value: Any) -> datetime:
        result = _aware(datetime.fromisoformat(value))
        times[value] = result
        return result

    known, known_time, row = numbers.get, times.get, tuple.__new__
    rows: dict[str, list[BarRow]] = {}
    for symbol, bars in raw.items():
        series: list[BarRow] = []
        append = series.append
        for bar in bars:
            t, o, h, low, c, v = bar["t"], bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]
            # A cached Decimal is positive, so `or` falls through only on a miss.
            append(row(BarRow, (known_time(t) or moment(t), known(o) or number(o), known(h) or number(h),
                                known(low) or number(low), known(c) or number(c), known(v) or number(v))))
        rows[symbol] = series
    return rows


#: The corporate-action groups that are splits, as alpaca-py's CorporateActionsSet keys them.
_SPLIT_GROUPS = ("forward_splits", "reverse_splits")


def splits_from_alpaca(actions: Any) -> list[Split]:
    """Forward and reverse splits of a CorporateActionsSet (rates are floats there: read through
    their repr, so 1.5 stays 1.5)."""
    return [
        Split(
            symbol=action.symbol,
            ex_date=action.ex_date,
            old_rate=to_decimal(action.old_rate),
            new_rate=to_decimal(action.new_rate),
        )
        for group in _SPLIT_GROUPS
        for action in actions.data.get(group, [])
    ]


def latest_price_from_snapshot(symbol: str, snapshot: Any) -> LatestPrice | None:
    """The ask when there is one (> 0), else the last trade; None when neither exists."""
    quote, trade = snapshot.latest_quote, snapshot.latest_trade
    ask = to_decimal(quote.ask_price) if quote is not None else None
    bid = to_decimal(quote.bid_price) if quote is not None else None
    last = to_decimal(trade.price) if trade is not None else None
    if ask is not None and ask > ZERO:
        price, source, as_of = ask, PriceSource.ASK, quote.timestamp
    elif last is not None and last > ZERO:
        price, source, as_of = last, PriceSource.LAST_TRADE, trade.timestamp
    else:
        return None
    return LatestPrice(
        symbol=symbol,
        price=price,
        source=source,
        bid=bid if bid else None,
        ask=ask if ask else None,
        last_trade=last,
        as_of=_aware(as_of),
    )


def trade_update_from_alpaca(update: alpaca_models.TradeUpdate) -> TradeUpdate:
    return TradeUpdate(
        event=TradeEventType.parse(_enum_value(update.event) or ""),
        order=order_from_alpaca(update.order),
        timestamp=_aware(update.timestamp),
        price=_dec(update.price),
        qty=_dec(update.qty),
        position_qty=_dec(update.position_qty),
        execution_id=str(update.execution_id) if update.execution_id is not None else None,
    )



def _raw_time(value: object) -> datetime | None:
    """An ISO time from the wire (nanoseconds truncated, "Z" read as UTC, a naive one taken as UTC)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return _aware(datetime.fromisoformat(value))


def _raw_enum(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def order_from_raw(data: dict[str, Any]) -> Order:
    """`order_from_alpaca` for the order as the wire carries it (a JSON object), without building
    alpaca-py's model first: the same fields, the same defaults, the same Decimal conversion."""
    return Order(
        id=str(data["id"]),
        client_order_id=data["client_order_id"],
        symbol=data.get("symbol") or "",
        side=Side(_raw_enum(data.get("side"))),
        type=OrderType(_raw_enum(data.get("type")) or _raw_enum(data.get("order_type"))),
        order_class=OrderClass(_raw_enum(data.get("order_class")) or "simple"),
        time_in_force=TimeInForce(_raw_enum(data.get("time_in_force"))),
        status=OrderStatus(_raw_enum(data.get("status"))),
        qty=_dec(data.get("qty")),
        notional=_dec(data.get("notional")),
        filled_qty=_dec(data.get("filled_qty")) or ZERO,
        filled_avg_price=_dec(data.get("filled_avg_price")),
        limit_price=_dec(data.get("limit_price")),
        stop_price=_dec(data.get("stop_price")),
        created_at=_raw_time(data.get("created_at")),
        updated_at=_raw_time(data.get("updated_at")),
        submitted_at=_raw_time(data.get("submitted_at")),
        filled_at=_raw_time(data.get("filled_at")),
        legs=[order_from_raw(leg) for leg in data.get("legs") or []],
    )


def trade_update_from_raw(data: dict[str, Any]) -> TradeUpdate:
    """A trade update straight from the stream's JSON (`{"stream": "trade_updates", "data": ...}`'s
    data): one model built per update, ours (`trade_update_from_alpaca` gives the same result from
    alpaca-py's model; tests/test_broker_contract.py compares them)."""
    execution_id = data.get("execution_id")
    timestamp = _raw_time(data.get("timestamp"))
    if timestamp is None:
        raise ValueError("trade update without a timestamp")
    return TradeUpdate(
        event=TradeEventType.parse(_raw_enum(data.get("event")) or ""),
        order=order_from_raw(data["order"]),
        timestamp=timestamp,
        price=_dec(data.get("price")),
        qty=_dec(data.get("qty")),
        position_qty=_dec(data.get("position_qty")),
        execution_id=str(execution_id) if execution_id is not None else None,
    )


# =============================================================================================
# HTTP plumbing
# =============================================================================================


class _UnusableAnswer(requests.RequestException):
    """An answer the adapter refuses to hand to alpaca-py (a redirect, a page loop); `_call` turns
    it into `BrokerUnavailable` with this text."""


def _excerpt(response: requests.Response) -> str:
    """A short, one-line quote of a response body for an error message."""
    text = response.content[: _MAX_EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= _MAX_EXCERPT_CHARS else text[: _MAX_EXCERPT_CHARS - 3] + "..."


def _what_came_back(response: requests.Response | None) -> str:
    """What came back, for an error message: `HTTP 200 with an empty body`, `HTTP 200, text/html: '...'`."""
    if response is None:
        return "no answer"
    status = f"HTTP {response.status_code}"
    if not response.content:
        return f"{status} with an empty body"
    kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip()
    return f"{status}, {kind}: {_excerpt(response)!r}"


def _unusable(response: requests.Response | None, detail: str) -> str:
    """Why a 2xx answer could not be read: empty, or of an unexpected shape (`detail` says where)."""
    if response is not None and 200 <= response.status_code < 300 and not response.content:
        return f"the broker answered HTTP {response.status_code} with an empty body"
    return f"the broker's answer has an unexpected shape ({detail}; {_what_came_back(response)})"


def _request_key(method: str, url: str, params: Any) -> tuple[str, str, str]:
    if isinstance(params, dict):
        params = sorted((str(k), repr(v)) for k, v in params.items())
    return method.upper(), url, repr(params)


def _install_guard(client: Any, seconds: float, answers: threading.local) -> None:
    """Give every request of an alpaca-py client a timeout (alpaca-py sets none: alpaca-py#415), keep
    the last answer for error messages, refuse redirects, stop a listing that pages in a loop, and
    count every request (`shared.metrics`: method, endpoint template, status)."""
    session: requests.Session = client._session
    send = session.request

    def guarded_request(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", seconds)
        answered = getattr(answers, "answered", None)
        key = _request_key(method, url, kwargs.get("params"))
        if answered is not None:
            if key in answered:
                raise _UnusableAnswer("the broker sent the same page token twice (a listing that never ends)")
            if len(answered) >= MAX_REQUESTS_PER_CALL:
                raise _UnusableAnswer(f"the broker kept paging past {MAX_REQUESTS_PER_CALL} pages")
        try:
            response = send(method, url, **kwargs)
        except requests.RequestException:
            metrics.count_broker_request(method, url, "error")
            raise
        metrics.count_broker_request(method, url, response.status_code)
        answers.last = response
        status = response.status_code
        if 300 <= status < 400:
            # alpaca-py asks requests not to follow redirects, then parses the 3xx as if it were data.
            location = response.headers.get("Location")
            if location:
                where = f", a redirect to {' '.join(location.split())[:_MAX_MESSAGE_CHARS]}"
            else:
                where = " with no data and no Location"
            raise _UnusableAnswer(f"the broker answered HTTP {status}{where}")
        if 200 <= status < 300 and answered is not None:
            answered.add(key)
        return response

    session.request = guarded_request  # type: ignore[method-assign]


def _record_server_time(client: Any, into: threading.local) -> None:
    """Keep the `Date` header of each response (the server's time, RFC 9110 s. 6.6.1, whole seconds)
    in a thread-local, so a caller can read the time of the answer it just got without a clock request."""

    def hook(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        into.server_time = _parse_http_date(response.headers.get("Date"))

    client._session.hooks["response"].append(hook)


def _parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else None


def set_sdk_retries(client: Any, retries: int, wait: float) -> None:
    """How often an alpaca-py REST client (TradingClient, StockHistoricalDataClient,
    CorporateActionsClient) repeats a request the server answered 429 or 504, and how long it waits
    in between. The adapter switches it off for order submits; tests use it to see every answer.

    Private attributes underneath: the constructors do not expose them, and RESTClient ignores
    retry_attempts=0. RESTClient._request reads them on every call. This is the one place that knows."""
    client._retry = retries
    client._retry_wait = wait


def _size_connection_pool(client: Any, size: int) -> None:
    # requests keeps 10 connections per host by default: a burst of protective orders from the
    # manager's pool would open (and throw away) a new connection for every request beyond that.
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size)
    for prefix in ("http://", "https://"):
        client._session.mount(prefix, adapter)


def close_sdk_client(client: Any) -> None:
    """Close an alpaca-py REST client's HTTP connections (alpaca-py has no close of its own)."""
    client._session.close()


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _unique(symbols: Iterable[str]) -> list[str]:
    """Tickers as Alpaca keys its answers: upper case, each once, in the order given."""
    return list(dict.fromkeys(s.strip().upper() for s in symbols if s and s.strip()))


def _require_finite(action: str, **amounts: Decimal | None) -> None:
    """NaN and infinity cannot even be serialized: refused here, or the JSON error would read as
    "outcome unknown". Zero and negative amounts go to the broker, which refuses them (422)."""
    for name, amount in amounts.items():
        if amount is None:
            continue
        try:
            to_decimal(amount)
        except ValueError:
            raise InputError(f"{action}: {name} must be a finite number, got {amount}") from None


class AlpacaExecutor(OrderExecutor):
    """`OrderExecutor` over alpaca-py's TradingClient, StockHistoricalDataClient and TradingStream."""

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        read_retries: int = READ_RETRIES,
        read_retry_wait: float = READ_RETRY_WAIT_SECONDS,
        order_history_lookback: timedelta = ORDER_HISTORY_LOOKBACK,
    ):
        self._settings = settings
        self._timeout = settings.FL_BROKER_TIMEOUT_SECONDS
        self._history_lookback = order_history_lookback
        key = settings.ALPACA_API_KEY.get_secret_value()
        secret = settings.ALPACA_SECRET_KEY.get_secret_value()
        self._secrets = (key, secret)
        logs.register_secret(key)
        logs.register_secret(secret)
        endpoint = settings.ALPACA_ENDPOINT
        paper = not settings.is_live
        self._trading = TradingClient(key, secret, paper=paper, url_override=endpoint)
        self._submitter = TradingClient(key, secret, paper=paper, url_override=endpoint)
        self._data = StockHistoricalDataClient(key, secret, url_override=settings.data_endpoint)
        # The same bars endpoint with alpaca-py's documented `raw_data=True`: its own paging (next_page_token)
        # and retries, the JSON handed over as dicts instead of one model per bar (`get_bar_rows`).
        self._raw_data = StockHistoricalDataClient(key, secret, raw_data=True, url_override=settings.data_endpoint)
        # Corporate actions are served by the data API too (/v1/corporate-actions), same host.
        self._corporate = CorporateActionsClient(key, secret, url_override=settings.data_endpoint)
        for client in (self._trading, self._data, self._raw_data, self._corporate):
            set_sdk_retries(client, read_retries, read_retry_wait)
        set_sdk_retries(self._submitter, 0, 0)
        for client in (self._trading, self._submitter):
            _size_connection_pool(client, HTTP_POOL_SIZE)
        self._feed = DataFeed(settings.ALPACA_DATA_FEED)
        self._answers = threading.local()
        self._clients = (self._trading, self._submitter, self._data, self._raw_data, self._corporate)
        for client in self._clients:
            _install_guard(client, self._timeout, self._answers)
        _record_server_time(self._trading, self._answers)

    def __repr__(self) -> str:
        return f"AlpacaExecutor(endpoint={self._settings.ALPACA_ENDPOINT!r})"

    # -- plumbing -------------------------------------------------------------------------
    def _call(
        self,
        action: str,
        fn: Callable[..., Any],
        *args: Any,
        for_order: bool = False,
        convert: Callable[[Any], T] | None = None,
    ) -> T:
        """Run one alpaca-py call and `convert` its answer; every failure becomes a typed, one-line,
        key-free error. An answer that alpaca-py or `convert` cannot read is `BrokerUnavailable`
        naming what came back (its status and a short quote)."""
        error: BrokerError
        answers = self._answers
        answers.last = None
        answers.answered = set()
        try:
            result = fn(*args)
            return result if convert is None else convert(result)
        except APIError as exc:
            error = error_from_api_error(exc, action=action, for_order=for_order)
        except requests.Timeout:
            error = BrokerUnavailable(
                f"{action}: no answer from the broker within {self._timeout:g} s; outcome unknown"
            )
        except _UnusableAnswer as exc:
            error = BrokerUnavailable(f"{action}: {exc}; outcome unknown")
        except requests.JSONDecodeError:
            error = BrokerUnavailable(
                f"{action}: the broker's answer is not JSON ({_what_came_back(answers.last)}); outcome unknown"
            )
        except requests.RequestException as exc:
            error = BrokerUnavailable(
                f"{action}: cannot reach the broker ({type(exc).__name__}); outcome unknown"
            )
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "the answer"
            detail = f"{where}: {first.get('msg', 'invalid')}"
            error = BrokerUnavailable(f"{action}: {_unusable(answers.last, detail)}; outcome unknown")
        except (
            ValueError,
            TypeError,
            AttributeError,
            KeyError,
            IndexError,
            ArithmeticError,
            RecursionError,
        ) as exc:
            # alpaca-py building its models from None (an empty 2xx), or a list where an object was
            # due; our converters meeting a missing field or an unknown enum value.
            error = BrokerUnavailable(
                f"{action}: {_unusable(answers.last, type(exc).__name__)}; outcome unknown"
            )
        finally:
            answers.answered = None
        # Raised outside the except block: no chained exception carrying the request's auth headers.
        error.message = self._scrub(" ".join(error.message.split()))
        error.args = (error.message,)
        raise error

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @staticmethod
    def _request(action: str, build: Callable[[], T]) -> T:
        """Build an alpaca-py request model; its validation errors are our input errors."""
        try:
            return build()
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {}
            reason = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        except ValueError as exc:
            reason = " ".join(str(exc).split()) or "invalid request"
        raise InputError(f"{action}: {reason}")

    def _submit(self, action: str, symbol: str, client_order_id: str, build: Callable[[], Any]) -> Order:
        request = self._request(action, build)
        try:
            result = self._call(
                action, self._submitter.submit_order, request, for_order=True, convert=order_from_alpaca
            )
        except BrokerError as exc:
            logs.event(
                log,
                "order_not_accepted",
                level=logging.WARNING,
                symbol=symbol,
                client_order_id=client_order_id,
                error=type(exc).__name__,
                reason=exc.message,
            )
            raise
        logs.event(
            log,
            "order_accepted",
            symbol=symbol,
            client_order_id=client_order_id,
            order_id=result.id,
            type=result.type.value,
            order_class=result.order_class.value,
            status=result.status.value,
        )
        return result

    # -- account and positions -------------------------------------------------------------
    def get_account(self) -> Account:
        return self._call("get account", self._trading.get_account, convert=account_from_alpaca)

    def get_positions(self) -> list[Position]:
        return self._call(
            "get positions",
            self._trading.get_all_positions,
            convert=lambda positions: [position_from_alpaca(p) for p in positions],
        )

    def get_positions_at(self) -> tuple[list[Position], datetime | None]:
        self._answers.server_time = None
        positions = self.get_positions()
        return positions, self._answers.server_time

    def get_position(self, symbol: str) -> Position | None:
        try:
            return self._call(
                f"get position {symbol}",
                self._trading.get_open_position,
                symbol,
                convert=position_from_alpaca,
            )
        except NotFound:
            return None

    def get_asset(self, symbol: str) -> Asset:
        return self._call(f"get asset {symbol}", self._trading.get_asset, symbol, convert=asset_from_alpaca)

    def get_assets(self) -> list[Asset]:
        """Every active US equity the broker lists (not part of the `OrderExecutor` contract: the
        scanner's universe). Same timeout, read retries and error typing as every other call."""
        request = GetAssetsRequest(status=AssetStatus.ACTIVE, asset_class=AssetClass.US_EQUITY)
        return self._call(
            "list assets",
            self._trading.get_all_assets,
            request,
            convert=lambda assets: [asset_from_alpaca(a) for a in assets],
        )

    # -- market data ----------------------------------------------------------------------
    def get_latest_prices(self, symbols: Iterable[str]) -> dict[str, LatestPrice]:
        # Snapshots carry the latest quote and the latest trade together: one request gives the ask
        # and its fallback for every symbol of the chunk.
        wanted = _unique(symbols)
        prices: dict[str, LatestPrice] = {}
        for chunk in _chunks(wanted, SYMBOLS_PER_REQUEST):
            request = StockSnapshotRequest(symbol_or_symbols=chunk, feed=self._feed)
            prices.update(
                self._call(
                    f"get latest prices ({len(chunk)} symbols)",
                    self._data.get_stock_snapshot,
                    request,
                    convert=_prices_from_snapshots,
                )
            )
        return prices

    def get_bars(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[Bar]]:
        return self._read_bars(
            self._data, symbols, timeframe, start, end,
            convert=lambda barset: {
                symbol: [bar_from_alpaca(b) for b in symbol_bars] for symbol, symbol_bars in barset.data.items()
            },
        )

    def get_bar_rows(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[BarRow]]:
        return self._read_bars(self._raw_data, symbols, timeframe, start, end, convert=bar_rows_from_alpaca_json)

    def _read_bars(
        self,
        client: StockHistoricalDataClient,
        symbols: Iterable[str],
        timeframe: Timeframe,
        start: datetime,
        end: datetime,
        convert: Callable[[Any], dict[str, list[T]]],
    ) -> dict[str, list[T]]:
        """One bars read for `get_bars` (alpaca-py's models) and `get_bar_rows` (its raw JSON): the
        same request per chunk of symbols, pages, feed, retries and error mapping; oldest first."""
        wanted = _unique(symbols)
        frame = TimeFrame.Minute if Timeframe(timeframe) is Timeframe.MINUTE else TimeFrame.Day
        bars: dict[str, list[T]] = {symbol: [] for symbol in wanted}
        for chunk in _chunks(wanted, SYMBOLS_PER_REQUEST):
            request = self._request(
                "get bars",
                lambda chunk=chunk: StockBarsRequest(
                    symbol_or_symbols=chunk, timeframe=frame, start=start, end=end, feed=self._feed
                ),
            )
            # alpaca-py follows next_page_token itself until the last page.
            chunk_bars = self._call(
                f"get bars ({len(chunk)} symbols)", client.get_stock_bars, request, convert=convert
            )
            for symbol, symbol_bars in chunk_bars.items():
                bars.setdefault(symbol, []).extend(symbol_bars)
        for symbol_bars in bars.values():
            symbol_bars.sort(key=_bar_time)
        return bars

    def get_splits(self, symbols: Iterable[str], start: date, end: date) -> list[Split]:
        wanted = _unique(symbols)
        splits: list[Split] = []
        for chunk in _chunks(wanted, SYMBOLS_PER_REQUEST):
            request = self._request(
                "get splits",
                lambda chunk=chunk: CorporateActionsRequest(
                    symbols=chunk,
                    types=[CorporateActionsType.FORWARD_SPLIT, CorporateActionsType.REVERSE_SPLIT],
                    start=start,
                    end=end,
                ),
            )
            # alpaca-py follows next_page_token itself until the last page.
            splits.extend(
                self._call(
                    f"get splits ({len(chunk)} symbols, {start}..{end})",
                    self._corporate.get_corporate_actions,
                    request,
                    convert=splits_from_alpaca,
                )
            )
        # The feed filters on its own notion of the window: keep exactly what the contract promises.
        asked = set(wanted)
        chosen = [s for s in splits if start <= s.ex_date <= end and s.symbol in asked]
        return sorted(chosen, key=lambda s: (s.ex_date, s.symbol))

    # -- orders ---------------------------------------------------------------------------
    def buy_notional(self, symbol: str, notional: Decimal, client_order_id: str) -> Order:
        _require_finite(f"buy {symbol}", notional=notional)
        return self._submit(
            f"buy ${notional} of {symbol} (client_order_id={client_order_id})",
            symbol,
            client_order_id,
            lambda: MarketOrderRequest(
                symbol=symbol,
                notional=notional,
                side=OrderSide.BUY,
                time_in_force=AlpacaTimeInForce.DAY,
                client_order_id=client_order_id,
            ),
        )

    def buy_qty(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        _require_finite(f"buy {symbol}", qty=qty)
        return self._submit(
            f"buy {qty} {symbol} (client_order_id={client_order_id})",
            symbol,
            client_order_id,
            lambda: MarketOrderRequest(
                symbol=symbol,
                qty=qty,
                side=OrderSide.BUY,
                time_in_force=AlpacaTimeInForce.DAY,
                client_order_id=client_order_id,
            ),
        )

    def submit_protective_exit(
        self,
        symbol: str,
        qty: Decimal,
        stop_price: Decimal,
        target_price: Decimal | None,
        client_order_id: str,
    ) -> Order:
        _require_finite(f"protect {symbol}", qty=qty, stop_price=stop_price, target_price=target_price)
        shape = protective_exit_shape(qty, target_price)
        tif = AlpacaTimeInForce(shape.time_in_force.value)
        if shape.oco:
            # OCO: the take-profit limit is the parent, the stop its child leg; one cancels the other.
            return self._submit(
                f"protect {qty} {symbol} with OCO stop {stop_price} target {target_price} "
                f"(client_order_id={client_order_id})",
                symbol,
                client_order_id,
                lambda: LimitOrderRequest(
                    symbol=symbol,
                    qty=qty,
                    side=OrderSide.SELL,
                    time_in_force=tif,
                    order_class=AlpacaOrderClass.OCO,
                    take_profit=TakeProfitRequest(limit_price=target_price),
                    stop_loss=StopLossRequest(stop_price=stop_price),
                    client_order_id=client_order_id,
                ),
            )
        return self._submit(
            f"protect {qty} {symbol} with {tif.value} stop {stop_price} (client_order_id={client_order_id})",
            symbol,
            client_order_id,
            lambda: StopOrderRequest(
                symbol=symbol,
                qty=qty,
                side=OrderSide.SELL,
                time_in_force=tif,
                stop_price=stop_price,
                client_order_id=client_order_id,
            ),
        )

    def sell_market(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        _require_finite(f"sell {symbol}", qty=qty)
        return self._submit(
            f"sell {qty} {symbol} at market (client_order_id={client_order_id})",
            symbol,
            client_order_id,
            lambda: MarketOrderRequest(
                symbol=symbol,
                qty=qty,
                side=OrderSide.SELL,
                time_in_force=AlpacaTimeInForce.DAY,
                client_order_id=client_order_id,
            ),
        )

    def _list_orders(
        self,
        action: str,
        status: QueryOrderStatus,
        *,
        after: datetime | None = None,
        symbols: list[str] | None = None,
    ) -> list[alpaca_models.Order]:
        """Every order of a listing, oldest submission first, following pages of 500.

        Alpaca pages by submission time (`after` is exclusive), so each next page starts just
        before the last order seen; the overlap is dropped by id. Legs stay nested in parents.
        """
        seen: dict[str, alpaca_models.Order] = {}
        cursor = after
        while True:
            request = GetOrdersRequest(
                status=status,
                limit=ORDERS_PAGE_LIMIT,
                direction=Sort.ASC,
                nested=True,
                after=cursor,
                symbols=symbols,
            )
            page = self._call(action, self._trading.get_orders, request, convert=_order_page)
            fresh = [order for order in page if str(order.id) not in seen]
            seen.update((str(order.id), order) for order in fresh)
            if len(page) < ORDERS_PAGE_LIMIT:
                break
            if not fresh:
                logs.event(log, "order_listing_stalled", level=logging.WARNING, action=action, seen=len(seen))
                break
            cursor = max(_aware(order.submitted_at) for order in page) - timedelta(microseconds=1)
        return sorted(seen.values(), key=lambda order: _aware(order.submitted_at))

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        symbols = [symbol] if symbol else None
        return orders_from_alpaca(
            self._list_orders(
                f"list open orders{f' {symbol}' if symbol else ''}", QueryOrderStatus.OPEN, symbols=symbols
            )
        )

    def get_orders_updated_since(self, since: datetime) -> list[Order]:
        if since.tzinfo is None:
            raise InputError("get_orders_updated_since: `since` must be timezone-aware")
        # Alpaca filters listings on submission time only (`after`, exclusive), but an order
        # submitted before `since` can still change after it: a GTC stop that fills days later.
        # GTC orders live at most 90 days, so list everything submitted since `since - lookback`
        # and keep what was submitted or changed (itself or a leg) at or after `since`.
        listed = self._list_orders(
            "list orders updated since",
            QueryOrderStatus.ALL,
            after=since - self._history_lookback - timedelta(microseconds=1),
        )
        return orders_from_alpaca(order for order in listed if _changed_since(order, since))

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        try:
            return self._call(
                f"get order client_order_id={client_order_id}",
                self._trading.get_order_by_client_id,
                client_order_id,
                convert=order_from_alpaca,
            )
        except NotFound:
            return None

    def cancel_order(self, order_id: str) -> None:
        self._call(f"cancel order {order_id}", self._trading.cancel_order_by_id, order_id, for_order=True)
        logs.event(log, "order_cancel_requested", order_id=order_id)

    # -- calendar -------------------------------------------------------------------------
    def get_clock(self) -> MarketClock:
        return self._call("get clock", self._trading.get_clock, convert=clock_from_alpaca)

    def get_calendar(self, start: date, end: date) -> list[TradingDay]:
        request = GetCalendarRequest(start=start, end=end)
        return self._call(
            f"get calendar {start}..{end}",
            self._trading.get_calendar,
            request,
            convert=lambda days: sorted((trading_day_from_alpaca(d) for d in days), key=lambda d: d.date),
        )

    # -- trade updates --------------------------------------------------------------------
    def trade_update_stream(self) -> TradeUpdateStream:
        return AlpacaTradeUpdateStream(self._settings)

    def close(self) -> None:
        for client in self._clients:
            close_sdk_client(client)


def _bar_time(bar: Bar | BarRow) -> datetime:
    return bar.t


def _changed_since(order: alpaca_models.Order, since: datetime) -> bool:
    return any(
        moment is not None and _aware(moment) >= since
        for member in (order, *(order.legs or []))
        for moment in (member.submitted_at, member.updated_at)
    )


def _order_page(page: Any) -> list[alpaca_models.Order]:
    """A page of GET /v2/orders, checked enough for the paging: a list of orders that all say
    when they were submitted (the next page starts from there)."""
    if not isinstance(page, list):
        raise TypeError(f"a listing of orders must be a list, not {type(page).__name__}")
    for order in page:
        if not isinstance(order, alpaca_models.Order) or order.submitted_at is None:
            raise ValueError("an order without submitted_at")
    return page


def _prices_from_snapshots(snapshots: Any) -> dict[str, LatestPrice]:
    prices = {}
    for symbol, snapshot in snapshots.items():
        price = latest_price_from_snapshot(symbol, snapshot)
        if price is not None:
            prices[symbol] = price
    return prices


class _HookedTradingStream(TradingStream):
    """alpaca-py's TradingStream, plus: a callback after every (re)connect once the server
    acknowledged `listen`, one when a connected socket closes, and a stop that wakes `recv` at once.
    """

    def __init__(
        self,
        *args: Any,
        on_connected: Callable[[], Any],
        on_closed: Callable[[], Any],
        stop_requested: threading.Event,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._stop_requested = stop_requested
        self._session_open = False

    def __repr__(self) -> str:
        return f"TradingStream(endpoint={self._endpoint!r})"

    async def _run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        # A stop() that came before the loop existed cannot reach stop_ws(); honour it here.
        if self._stop_requested.is_set():
            return
        await super()._run_forever()

    async def _start_ws(self) -> None:
        await super()._start_ws()
        self._session_open = True
        await self._on_connected()

    async def _subscribe_trade_updates(self) -> None:
        await super()._subscribe_trade_updates()
        # Wait for {"stream": "listening"} so on_connect's backfill cannot miss an update that the
        # server would otherwise publish before it starts listening for us.
        deadline = asyncio.get_running_loop().time() + LISTEN_ACK_TIMEOUT_SECONDS
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                logs.event(log, "trade_stream_listen_not_acknowledged", level=logging.WARNING)
                return
            try:
                raw = await asyncio.wait_for(self._ws.recv(), remaining)
            except TimeoutError:
                continue
            message = json.loads(raw)
            if message.get("stream") == "listening":
                return
            await self._dispatch(message)

    async def close(self) -> None:
        was_open, self._session_open = self._session_open, False
        try:
            await super().close()
        finally:
            if was_open:
                await self._on_closed()

    async def _consume(self) -> None:
        try:
            await super()._consume()
        except websockets.WebSocketException:
            if self._should_run:
                raise  # a real drop: alpaca-py logs it and reconnects
            await self.close()  # the socket stop_ws() closed: a requested stop, not an error

    async def stop_ws(self) -> None:
        await super().stop_ws()
        if self._ws is not None:
            # recv() polls every 5 s; closing the socket ends it now.
            await self._ws.close()


class AlpacaTradeUpdateStream(TradeUpdateStream):
    """Alpaca's trade_updates WebSocket as `shared.models.TradeUpdate`s.

    `run` blocks in its own event loop and reconnects with alpaca-py's backoff until `stop`.
    Each update is read from the socket's JSON into our `TradeUpdate` (one model, no alpaca-py
    model first) and handed to `on_update` in the loop itself, in order: `on_update` must not
    block (the streamer's only queues it). `on_connect` and `on_disconnect` run in a worker
    thread, so a slow backfill never stalls the socket's keepalive; updates that arrive meanwhile
    wait and follow in order.
    `on_connect` runs once the server has acknowledged `listen`, so nothing published after the
    backfill's read can be missed. If `on_connect` raises, the connection is closed and retried
    with alpaca-py's backoff (so the backfill is retried too). An exception in `on_update` is
    logged by alpaca-py and the stream carries on.
    """

    def __init__(self, settings: BrokerSettings):
        self._settings = settings
        self._stop_requested = threading.Event()
        self._stream: _HookedTradingStream | None = None

    def __repr__(self) -> str:
        return f"AlpacaTradeUpdateStream(endpoint={self._settings.stream_endpoint!r})"

    def run(
        self,
        on_update: Callable[[TradeUpdate], None],
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        if self._stop_requested.is_set():
            return

        async def in_thread(callback: Callable[..., None] | None, *args: Any) -> None:
            if callback is not None:
                await asyncio.to_thread(callback, *args)

        async def connected() -> None:
            logs.event(log, "trade_stream_connected", endpoint=self._settings.stream_endpoint)
            await in_thread(on_connect)

        async def closed() -> None:
            logs.event(log, "trade_stream_disconnected", endpoint=self._settings.stream_endpoint)
            await in_thread(on_disconnect)

        async def on_trade_update(message: dict[str, Any]) -> None:
            # raw_data: alpaca-py hands over the JSON; our model is the only one built for it.
            data = message.get("data") if isinstance(message, dict) else None
            try:
                if not isinstance(data, dict):
                    raise ValueError("trade update without data")
                update = trade_update_from_raw(data)
            except (ValueError, TypeError, KeyError, ValidationError) as exc:
                order = data.get("order") if isinstance(data, dict) else None
                order = order if isinstance(order, dict) else {}
                logs.event(
                    log,
                    "trade_update_unreadable",
                    level=logging.ERROR,
                    symbol=order.get("symbol"),
                    client_order_id=order.get("client_order_id"),
                    reason=(str(exc).splitlines() or [type(exc).__name__])[0],
                )
                return
            # In the loop, no thread hop: on_update only hands the update over (it must not block).
            on_update(update)

        settings = self._settings
        stream = _HookedTradingStream(
            settings.ALPACA_API_KEY.get_secret_value(),
            settings.ALPACA_SECRET_KEY.get_secret_value(),
            paper=not settings.is_live,
            raw_data=True,
            url_override=settings.stream_endpoint,
            on_connected=connected,
            on_closed=closed,
            stop_requested=self._stop_requested,
        )
        stream.subscribe_trade_updates(on_trade_update)
        self._stream = stream
        stream.run()

    def stop(self) -> None:
        self._stop_requested.set()
        stream = self._stream
        loop = stream._loop if stream is not None else None
        if loop is None or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(stream.stop_ws(), loop).result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            # The loop ended between the check and the call: run() is returning anyway.
            pass
