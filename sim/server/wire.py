"""Alpaca's wire format for the simulated market: engine objects to the JSON alpaca-py 0.44.0
parses, and Alpaca's order JSON to an `OrderRequest`.

Trading endpoints send money and quantities as strings, enums as Alpaca spells them, times as
RFC 3339 in UTC; the clock in New York time; calendar open/close as `HH:MM`. Market-data
endpoints send prices as JSON numbers, like Alpaca's data API (a Decimal becomes the float whose
repr is the same digits). See ../shared/reference/alpaca.md sections 2 to 4 and 7.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from shared.errors import OrderRejected
from shared.market.calendar import NEW_YORK
from shared.models import OrderClass, OrderType, Side, TimeInForce, TradingDay
from shared.money import to_decimal
from sim.engine import AccountView, ClockView, PositionView, SplitAction
from sim.engine.market import Quote, TimedBar
from sim.engine.orders import OrderRequest, SimOrder, TradeEvent
from sim.engine.paths import TICKS_PER_DOLLAR
from sim.engine.rules import plain, reject
from sim.engine.universe import SimAsset

#: The simulated account's id and number (fixed: one account per simulator).
ACCOUNT_ID = "9c7e1a3e-5f0b-4d2a-8f6e-5b1d2c3a4e5f"
ACCOUNT_NUMBER = "PA3SIM000001"
IEX = "V"


def ts(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a Z, microseconds kept (Alpaca sends nanoseconds; alpaca-py truncates)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def num(value: Decimal | None) -> str | None:
    """A quantity or price as Alpaca writes it: plain digits, no exponent, no trailing zeros."""
    if value is None:
        return None
    try:
        if value == value.to_integral_value():
            return format(value.quantize(Decimal(1)), "f")
        return format(value.normalize(), "f")
    except ArithmeticError:
        # More digits than Decimal arithmetic holds (a refused order's 1e30 in /sim/state): as given.
        return format(value, "f")


#: Longest symbol an order may name (Alpaca's tickers are at most a dozen characters).
MAX_SYMBOL_CHARS = 32
#: Longest echo of a bad value inside an error message.
MAX_ECHO_CHARS = 40


def echo(value: object) -> str:
    """A short, one-line rendering of a value for an error message (its repr, cut)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= MAX_ECHO_CHARS else text[: MAX_ECHO_CHARS - 3] + "..."


def money(value: Decimal) -> str:
    """An account amount: always two decimals."""
    return format(value.quantize(Decimal("0.01")), "f")


# -- trading ------------------------------------------------------------------------------


def order_json(order: SimOrder, *, nested: bool = True) -> dict:
    legs = [order_json(leg, nested=False) for leg in order.legs] if (nested and order.legs) else None
    return {
        "id": order.id,
        "client_order_id": order.client_order_id,
        "created_at": ts(order.created_at),
        "updated_at": ts(order.updated_at),
        "submitted_at": ts(order.submitted_at),
        "filled_at": ts(order.filled_at),
        "expired_at": ts(order.expired_at),
        "expires_at": ts(order.expires_at),
        "canceled_at": ts(order.canceled_at),
        "failed_at": ts(order.failed_at),
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": order.asset_id,
        "symbol": order.symbol,
        "asset_class": "us_equity",
        "notional": num(order.notional),
        "qty": num(order.qty),
        "filled_qty": num(order.filled_qty),
        "filled_avg_price": num(order.filled_avg_price),
        "order_class": order.order_class.value,
        "order_type": order.type.value,
        "type": order.type.value,
        "side": order.side.value,
        "position_intent": order.position_intent,
        "time_in_force": order.time_in_force.value,
        "limit_price": num(order.limit_price),
        "stop_price": num(order.stop_price),
        "status": order.status.value,
        "extended_hours": order.extended_hours,
        "legs": legs,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "subtag": None,
        "source": None,
    }


def trade_update_json(event: TradeEvent) -> dict:
    data: dict = {
        "event": event.event,
        "timestamp": ts(event.timestamp),
        "order": order_json(event.order),
    }
    if event.execution_id is not None:
        data["execution_id"] = event.execution_id
    if event.price is not None:
        data["price"] = num(event.price)
        data["qty"] = num(event.qty)
        data["position_qty"] = num(event.position_qty)
    return {"stream": "trade_updates", "data": data}


def account_json(account: AccountView) -> dict:
    return {
        "id": ACCOUNT_ID,
        "account_number": ACCOUNT_NUMBER,
        "status": "ACTIVE",
        "crypto_status": "INACTIVE",
        "currency": "USD",
        "cash": money(account.cash),
        "buying_power": money(account.buying_power),
        "regt_buying_power": money(account.buying_power),
        "non_marginable_buying_power": money(account.buying_power),
        "options_buying_power": money(account.buying_power),
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "portfolio_value": money(account.equity),
        "equity": money(account.equity),
        "last_equity": money(account.last_equity),
        "long_market_value": money(account.long_market_value),
        "short_market_value": "0",
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "multiplier": "1",
        "shorting_enabled": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "created_at": ts(account.created_at),
    }


def account_configuration_json() -> dict:
    return {
        "dtbp_check": "entry",
        "fractional_trading": True,
        "max_margin_multiplier": "1",
        "no_shorting": True,
        "pdt_check": "entry",
        "suspend_trade": False,
        "trade_confirm_email": "none",
        "ptp_no_exception_entry": False,
        "max_options_trading_level": 0,
    }


def position_json(position: PositionView) -> dict:
    return {
        "asset_id": position.asset_id,
        "symbol": position.symbol,
        "exchange": position.exchange,
        "asset_class": "us_equity",
        "asset_marginable": True,
        "qty": num(position.qty),
        "qty_available": num(position.qty_available),
        "avg_entry_price": num(position.avg_entry_price),
        "side": "long",
        "market_value": num(position.market_value),
        "cost_basis": num(position.cost_basis),
        "unrealized_pl": num(position.unrealized_pl),
        "unrealized_plpc": num(position.unrealized_plpc),
        "unrealized_intraday_pl": num(position.unrealized_intraday_pl),
        "unrealized_intraday_plpc": num(position.unrealized_intraday_plpc),
        "current_price": num(position.current_price),
        "lastday_price": num(position.lastday_price),
        "change_today": num(position.change_today),
    }


def asset_json(asset: SimAsset) -> dict:
    return {
        "id": asset.asset_id,
        "class": "us_equity",
        "exchange": asset.exchange,
        "symbol": asset.symbol,
        "name": asset.name,
        "status": "active",
        "tradable": asset.tradable,
        "marginable": asset.marginable,
        "shortable": asset.shortable,
        "easy_to_borrow": asset.easy_to_borrow,
        "fractionable": asset.advertised_fractionable,
        "maintenance_margin_requirement": 30,
        "attributes": ["fractional_eh_enabled"] if asset.advertised_fractionable else [],
    }


def clock_json(clock: ClockView) -> dict:
    return {
        "timestamp": clock.timestamp.astimezone(NEW_YORK).isoformat(),
        "is_open": clock.is_open,
        "next_open": clock.next_open.astimezone(NEW_YORK).isoformat(),
        "next_close": clock.next_close.astimezone(NEW_YORK).isoformat(),
    }


def calendar_json(day: TradingDay) -> dict:
    return {
        "date": day.date.isoformat(),
        "open": day.open.astimezone(NEW_YORK).strftime("%H:%M"),
        "close": day.close.astimezone(NEW_YORK).strftime("%H:%M"),
        "session_open": "0400",
        "session_close": "2000",
        "settlement_date": None,
    }


def error_json(error: Exception) -> dict:
    body: dict = {"code": getattr(error, "code", None), "message": getattr(error, "message", str(error))}
    body.update(getattr(error, "fields", {}) or {})
    return body


# -- market data ----------------------------------------------------------------------------


def _px(ticks: int) -> float:
    # Ticks are exact $0.0001 units: the correctly rounded quotient prints as the same decimal.
    return ticks / TICKS_PER_DOLLAR


def quote_json(quote: Quote) -> dict:
    return {
        "t": ts(quote.t),
        "ax": IEX,
        "ap": _px(quote.ask),
        "as": quote.ask_size,
        "bx": IEX,
        "bp": _px(quote.bid),
        "bs": quote.bid_size,
        "c": ["R"],
        "z": "C",
    }


def trade_json(price_ticks: int, when: datetime, trade_id: int) -> dict:
    return {"t": ts(when), "x": IEX, "p": _px(price_ticks), "s": 100, "c": ["@"], "i": trade_id, "z": "C"}


#: Bars already written, with their JSON text (a scan reads the same closed days again and again; a
#: bar is a frozen value, so equal bars share one text). Emptied when it grows past _MAX_BAR_TEXTS.
_bar_texts: dict[TimedBar, str] = {}
_MAX_BAR_TEXTS = 1_000_000


def bar_text(bar: TimedBar) -> str:
    """`bar_json(bar)` as compact JSON text, the same bytes `json.dumps` writes for it, without the dict
    (the bars endpoint writes hundreds of thousands of bars a scan). JSON writes floats as their repr."""
    text = _bar_texts.get(bar)
    if text is None:
        if len(_bar_texts) >= _MAX_BAR_TEXTS:
            _bar_texts.clear()
        high, low, close = bar.high, bar.low, bar.close
        text = _bar_texts[bar] = (
            f'{{"t":"{ts(bar.t)}","o":{bar.open / TICKS_PER_DOLLAR!r},"h":{high / TICKS_PER_DOLLAR!r},'
            f'"l":{low / TICKS_PER_DOLLAR!r},"c":{close / TICKS_PER_DOLLAR!r},"v":{bar.volume!r},'
            f'"n":{bar.trades!r},"vw":{round((high + low + close) / 3 / TICKS_PER_DOLLAR, 4)!r}}}'
        )
    return text


def bar_json(bar: TimedBar) -> dict:
    return {
        "t": ts(bar.t),
        "o": _px(bar.open),
        "h": _px(bar.high),
        "l": _px(bar.low),
        "c": _px(bar.close),
        "v": bar.volume,
        "n": bar.trades,
        "vw": round((bar.high + bar.low + bar.close) / 3 / TICKS_PER_DOLLAR, 4),
    }


# -- corporate actions ---------------------------------------------------------------------

#: Alpaca's corporate action types (GET /v1/corporate-actions `types`); the simulator has splits only.
CORPORATE_ACTION_TYPES = (
    "reverse_split",
    "forward_split",
    "unit_split",
    "cash_dividend",
    "stock_dividend",
    "spin_off",
    "cash_merger",
    "stock_merger",
    "stock_and_cash_merger",
    "redemption",
    "name_change",
    "worthless_removal",
    "rights_distribution",
)


def _rate(value: Decimal) -> int | float:
    # The data API sends rates as JSON numbers (alpaca-py's models type them float).
    return int(value) if value == value.to_integral_value() else float(value)


def split_json(action: SplitAction) -> dict:
    """One split as GET /v1/corporate-actions lists it under `forward_splits` or
    `reverse_splits`. No `corporate_action_type` key: alpaca-py adds it from the group's name
    and would fail on a duplicate."""
    body: dict = {"id": action.id, "symbol": action.symbol}
    if action.type == "forward_split":
        body["cusip"] = action.new_cusip
    else:
        body["old_cusip"] = action.old_cusip
        body["new_cusip"] = action.new_cusip
    body.update(
        {
            "new_rate": _rate(action.new_rate),
            "old_rate": _rate(action.old_rate),
            "process_date": action.process_date.isoformat(),
            "ex_date": action.ex_date.isoformat(),
            "record_date": action.record_date.isoformat(),
            "payable_date": action.payable_date.isoformat(),
        }
    )
    if action.due_bill_redemption_date is not None:
        body["due_bill_redemption_date"] = action.due_bill_redemption_date.isoformat()
    return body


def corporate_actions_json(actions: list[SplitAction]) -> dict:
    """The `corporate_actions` object: one list per type that has any (`forward_splits`, ...)."""
    grouped: dict[str, list[dict]] = {}
    for action in actions:
        grouped.setdefault(f"{action.type}s", []).append(split_json(action))
    return grouped


# -- requests -----------------------------------------------------------------------------


def _invalid(message: str) -> OrderRejected:
    return reject(OrderRejected, 422, 40010001, message)


def _amount(body: dict, key: str, where: dict | None = None) -> Decimal | None:
    source = body if where is None else where
    value = source.get(key)
    if value is None or value == "":
        return None
    try:
        amount = to_decimal(value)
    except ValueError:
        raise _invalid(f"invalid {key}: {echo(value)}") from None
    try:
        # alpaca-py sends 10.0 for 10: keep the amount as Alpaca would echo it.
        return plain(amount)
    except ArithmeticError:
        return amount  # beyond Decimal's precision: the order rules refuse it as too large


def _enum(enum_cls, body: dict, key: str, default=None):
    value = body.get(key, default)
    if value is None:
        raise _invalid(f"{key} is required")
    if not isinstance(value, str):
        raise _invalid(f"invalid {key}: {echo(value)}")
    try:
        return enum_cls(value.lower())
    except ValueError:
        raise _invalid(f"invalid {key}: {echo(value)}") from None


def parse_order_request(body: object) -> OrderRequest:
    """Alpaca's POST /v2/orders JSON (numbers as JSON numbers or strings) to an OrderRequest."""
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    symbol = body.get("symbol")
    if symbol is None or symbol == "":
        raise _invalid("symbol is required")
    if (
        not isinstance(symbol, str)
        or not symbol.strip()
        or len(symbol) > MAX_SYMBOL_CHARS
        or not symbol.isprintable()
    ):
        raise _invalid(f"invalid symbol: {echo(symbol)}")
    order_class_text = body.get("order_class") or "simple"
    if order_class_text == "mleg":
        raise reject(OrderRejected, 422, 42210000, "mleg orders are not supported by the simulated market")
    take_profit = body.get("take_profit") or {}
    stop_loss = body.get("stop_loss") or {}
    if not isinstance(take_profit, dict) or not isinstance(stop_loss, dict):
        raise _invalid("take_profit and stop_loss must be objects")
    client_order_id = body.get("client_order_id")
    if client_order_id is not None and not isinstance(client_order_id, str):
        raise _invalid("client_order_id must be a string")
    extended = body.get("extended_hours", False)
    if extended is not None and not isinstance(extended, (bool, str)):
        raise _invalid(f"invalid extended_hours: {echo(extended)}")
    return OrderRequest(
        symbol=symbol,
        side=_enum(Side, body, "side"),
        type=_enum(OrderType, body, "type", body.get("order_type")),
        time_in_force=_enum(TimeInForce, body, "time_in_force"),
        qty=_amount(body, "qty"),
        notional=_amount(body, "notional"),
        limit_price=_amount(body, "limit_price"),
        stop_price=_amount(body, "stop_price"),
        client_order_id=client_order_id or None,
        order_class=_enum(OrderClass, {"order_class": order_class_text}, "order_class"),
        take_profit_limit_price=_amount(take_profit, "limit_price", take_profit),
        stop_loss_stop_price=_amount(stop_loss, "stop_price", stop_loss),
        stop_loss_limit_price=_amount(stop_loss, "limit_price", stop_loss),
        extended_hours=extended is True or str(extended).lower() == "true",
        trail_price=_amount(body, "trail_price"),
        trail_percent=_amount(body, "trail_percent"),
    )


def new_request_id() -> str:
    return str(uuid.uuid4())
