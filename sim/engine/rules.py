"""Alpaca's order rules as pure functions: each raises the typed error Alpaca's answer maps to,
carrying Alpaca's HTTP status, error code, message and extra body fields.

The wire server turns the error into `{"code": ..., "message": ..., **fields}` with the status;
the in-process adapter raises it as is. So both see the same refusal. Statuses, codes and texts
follow ../shared/reference/alpaca.md sections 5 and 9; where Alpaca's exact answer is unknown the
choice is listed in docs/simulator.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

# Alpaca's own limit is unsure (48 in its legacy docs, 128 in its current ones): the simulator enforces the
# stricter one, the same the line keeps to (shared.broker.contract), so no longer id passes here
# that Alpaca might refuse.
from shared.broker.contract import MAX_CLIENT_ORDER_ID_LEN
from shared.errors import (
    DuplicateClientOrderId,
    FractionalRuleViolation,
    InsufficientBuyingPower,
    InsufficientQty,
    InvalidPrice,
    NotFractionable,
    NotTradable,
    OrderRejected,
    WashTrade,
)
from shared.models import OrderClass, OrderType, Side, TimeInForce
from shared.money import ZERO, fmt_qty, is_valid_price_increment
from sim.engine.orders import OrderRequest, SimOrder
from sim.engine.universe import SimAsset

MIN_NOTIONAL = Decimal("1")
CENT = Decimal("0.01")
MAX_DECIMALS = 9
#: The simulator's sanity bounds on an order (Alpaca documents none; no real order comes near them).
#: Beyond them a product of quantity and price would outgrow Decimal's 28 digits, so they are
#: refused as invalid (422) before any arithmetic.
MAX_QTY = Decimal(10) ** 9
MAX_NOTIONAL = Decimal(10) ** 12
MAX_ORDER_PRICE = Decimal(10) ** 9


def reject(cls: type[OrderRejected], status: int, code: int, message: str, **fields: object) -> OrderRejected:
    """The error for one refusal; `fields` are the extra keys of Alpaca's error body."""
    if cls is InsufficientQty:
        error: OrderRejected = InsufficientQty(
            message,
            available=fields.get("available"),
            status=status,
            code=code,  # type: ignore[arg-type]
        )
    else:
        error = cls(message, status=status, code=code)
    error.fields = {k: (fmt_qty(v) if isinstance(v, Decimal) else v) for k, v in fields.items()}  # type: ignore[attr-defined]
    return error


def plain(amount: Decimal) -> Decimal:
    """`0E-9` -> `0`, `10.0` -> `10`, `1.50` -> `1.5` (no exponent for whole numbers)."""
    return amount.quantize(Decimal(1)) if amount == amount.to_integral_value() else amount.normalize()


def _invalid(message: str) -> OrderRejected:
    return reject(OrderRejected, 422, 40010001, message)


def _unprocessable(message: str, cls: type[OrderRejected] = OrderRejected) -> OrderRejected:
    return reject(cls, 422, 42210000, message)


# -- shape of the request (no account needed) ---------------------------------------------


def check_request_shape(req: OrderRequest) -> None:
    """Everything decidable from the request alone, in the order Alpaca reports it."""
    if req.qty is not None and req.notional is not None:
        raise _invalid("qty and notional are mutually exclusive: send only one")
    if req.qty is None and req.notional is None:
        raise _invalid("qty or notional is required")
    for name, amount in (("qty", req.qty), ("notional", req.notional)):
        if amount is None:
            continue
        if amount <= ZERO:
            raise _invalid(f"{name} must be > 0")
        limit = MAX_QTY if name == "qty" else MAX_NOTIONAL
        if amount > limit:
            raise _invalid(f"{name} must be <= {fmt_qty(limit)}")
        exponent = amount.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > MAX_DECIMALS:
            raise _invalid(f"{name} must have at most {MAX_DECIMALS} decimal places")
    if req.client_order_id is not None and len(req.client_order_id) > MAX_CLIENT_ORDER_ID_LEN:
        raise _invalid(f"client_order_id must be no more than {MAX_CLIENT_ORDER_ID_LEN} characters")
    if req.time_in_force in (TimeInForce.OPG, TimeInForce.CLS):
        raise _unprocessable("opg and cls orders are not supported by the simulated market")
    if req.type is OrderType.TRAILING_STOP and not req.fractional:
        raise _unprocessable("trailing_stop orders are not supported by the simulated market")
    _check_prices(req)
    if req.extended_hours and (req.type is not OrderType.LIMIT or req.time_in_force is not TimeInForce.DAY):
        raise _unprocessable("extended hours order must be DAY limit orders")
    if req.order_class is OrderClass.OCO:
        _check_oco_shape(req)


def _check_prices(req: OrderRequest) -> None:
    needs_limit = (
        req.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and req.order_class is not OrderClass.OCO
    )
    needs_stop = req.type in (OrderType.STOP, OrderType.STOP_LIMIT)
    if needs_limit and req.limit_price is None:
        raise _invalid(f"limit_price is required for {req.type.value} orders")
    if needs_stop and req.stop_price is None:
        raise _invalid(f"stop_price is required for {req.type.value} orders")
    if req.type is OrderType.MARKET and req.limit_price is not None:
        raise _invalid("limit_price must not be set for market orders")
    if req.type in (OrderType.MARKET, OrderType.LIMIT) and req.stop_price is not None:
        raise _invalid(f"stop_price must not be set for {req.type.value} orders")
    if req.type is OrderType.STOP and req.limit_price is not None:
        raise _invalid("limit_price must not be set for stop orders (use stop_limit)")
    for name, price in (
        ("limit_price", req.limit_price),
        ("stop_price", req.stop_price),
        ("take_profit.limit_price", req.take_profit_limit_price),
        ("stop_loss.stop_price", req.stop_loss_stop_price),
        ("stop_loss.limit_price", req.stop_loss_limit_price),
    ):
        if price is None:
            continue
        if price <= ZERO:
            raise reject(InvalidPrice, 422, 40010001, f"{name} must be > 0")
        if price > MAX_ORDER_PRICE:
            raise reject(InvalidPrice, 422, 40010001, f"{name} must be <= {fmt_qty(MAX_ORDER_PRICE)}")
        if not is_valid_price_increment(price):
            raise reject(
                InvalidPrice,
                422,
                42210000,
                f"invalid {name.split('.')[-1]} {fmt_qty(price)}. sub-penny increment does not fulfill minimum pricing criteria",
            )


def _check_oco_shape(req: OrderRequest) -> None:
    if req.type is not OrderType.LIMIT:
        raise _unprocessable("oco orders must be limit orders")
    if req.take_profit_limit_price is None or req.stop_loss_stop_price is None:
        raise _invalid("oco orders require take_profit.limit_price and stop_loss.stop_price")
    if req.time_in_force not in (TimeInForce.DAY, TimeInForce.GTC):
        raise _unprocessable("oco orders must be day or gtc orders")
    if req.limit_price is not None and req.limit_price != req.take_profit_limit_price:
        raise _invalid("limit_price of an oco order must equal take_profit.limit_price")
    if req.side is Side.SELL and req.stop_loss_stop_price > req.take_profit_limit_price - CENT:
        raise reject(
            InvalidPrice,
            422,
            42210000,
            f"stop price must be less than base_price - 0.01 (stop_loss.stop_price {fmt_qty(req.stop_loss_stop_price)}, "
            f"take_profit.limit_price {fmt_qty(req.take_profit_limit_price)})",
        )
    if req.side is Side.BUY and req.stop_loss_stop_price < req.take_profit_limit_price + CENT:
        raise reject(
            InvalidPrice,
            422,
            42210000,
            f"stop price must be greater than base_price + 0.01 (stop_loss.stop_price {fmt_qty(req.stop_loss_stop_price)}, "
            f"take_profit.limit_price {fmt_qty(req.take_profit_limit_price)})",
        )


# -- the asset -----------------------------------------------------------------------------


def check_asset(req: OrderRequest, asset: SimAsset | None) -> None:
    if asset is None:
        raise _unprocessable(f"asset {req.symbol} not found")
    if not asset.tradable:
        # Same wire answer as before (403 / 40310000); in process the typed error says what it is.
        raise reject(NotTradable, 403, 40310000, f"asset {req.symbol} is not tradable")
    if req.fractional:
        if not asset.fractionable:
            raise reject(NotFractionable, 403, 40310000, "requested asset is not fractionable")
        if req.order_class is not OrderClass.SIMPLE:
            raise _unprocessable("fractional orders must be simple orders", FractionalRuleViolation)
        if req.time_in_force is not TimeInForce.DAY:
            raise _unprocessable("fractional orders must be DAY orders", FractionalRuleViolation)
        if req.type is OrderType.TRAILING_STOP:
            raise _unprocessable("fractional orders cannot be trailing_stop orders", FractionalRuleViolation)
        if req.notional is not None and req.type not in (OrderType.MARKET, OrderType.LIMIT):
            raise _unprocessable("notional orders must be market or limit orders", FractionalRuleViolation)
        if req.notional is not None and req.notional < MIN_NOTIONAL:
            raise reject(OrderRejected, 403, 40310000, "cost basis must be >= 1")
    if req.order_class in (OrderClass.BRACKET, OrderClass.OTO):
        raise _unprocessable(
            f"{req.order_class.value} orders are not supported by the simulated market (use oco for exits)"
        )


def check_client_order_id(client_order_id: str, used: bool) -> None:
    if used:
        raise reject(DuplicateClientOrderId, 422, 40010001, "client_order_id must be unique")


# -- the account ---------------------------------------------------------------------------


def check_sell_qty(
    req: OrderRequest,
    requested: Decimal,
    position_qty: Decimal,
    held_for_orders: Decimal,
    related_orders: Iterable[str],
) -> None:
    """A sell may use only shares held and not already reserved by other open sells; a cash
    account never goes short."""
    available = plain(max(position_qty - held_for_orders, ZERO))
    if requested > position_qty and req.fractional:
        raise reject(FractionalRuleViolation, 403, 40310000, "fractional orders are not allowed to short")
    if requested > available:
        raise reject(
            InsufficientQty,
            403,
            40310000,
            f"insufficient qty available for order (requested: {fmt_qty(requested)}, available: {fmt_qty(available)})",
            available=available,
            existing_qty=position_qty,
            held_for_orders=held_for_orders,
            symbol=req.symbol,
            related_orders=list(related_orders),
        )


def check_oco_is_exit(req: OrderRequest, position_qty: Decimal) -> None:
    if req.side is Side.BUY or position_qty <= ZERO:
        raise _unprocessable("oco orders must be exit orders")


def check_stop_against_market(req: OrderRequest, market_price: Decimal) -> None:
    """A sell stop must sit below the market (a buy stop above); an OCO's stop leg too."""
    stop = req.stop_loss_stop_price if req.order_class is OrderClass.OCO else req.stop_price
    if stop is None:
        return
    if req.side is Side.SELL and stop > market_price - CENT:
        raise reject(
            InvalidPrice,
            422,
            42210000,
            f"stop price must be less than base_price - 0.01 (stop_price {fmt_qty(stop)}, base_price {fmt_qty(market_price)})",
        )
    if req.side is Side.BUY and stop < market_price + CENT:
        raise reject(
            InvalidPrice,
            422,
            42210000,
            f"stop price must be greater than base_price + 0.01 (stop_price {fmt_qty(stop)}, base_price {fmt_qty(market_price)})",
        )


def could_wash(new: OrderRequest, resting: SimOrder) -> bool:
    """Whether a new simple order could execute against the account's own resting opposite order.

    Market orders always could; two limits could when the buy's limit reaches the sell's; a stop
    against a limit always could (the table Alpaca documents); two stops when the buy stop is at or
    below the sell stop (a price exists that triggers both).
    """
    if new.type is OrderType.MARKET or resting.type is OrderType.MARKET:
        return True
    new_limit = new.limit_price if new.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    new_stop = new.stop_price if new.type in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    rest_limit = resting.limit_price if resting.type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    rest_stop = resting.stop_price if resting.type in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    if new_stop is not None or rest_stop is not None:
        if new_stop is not None and rest_stop is not None:
            buy_stop, sell_stop = (new_stop, rest_stop) if new.side is Side.BUY else (rest_stop, new_stop)
            return buy_stop <= sell_stop
        return True
    if new_limit is None or rest_limit is None:
        return True
    buy_limit, sell_limit = (new_limit, rest_limit) if new.side is Side.BUY else (rest_limit, new_limit)
    return buy_limit >= sell_limit


def check_wash_trade(req: OrderRequest, resting_opposite: Iterable[SimOrder]) -> None:
    """Complex orders (OCO) are exempt, as new orders and as resting ones."""
    if req.order_class is not OrderClass.SIMPLE:
        return
    for resting in resting_opposite:
        if (
            resting.order_class is OrderClass.SIMPLE
            and resting.parent_id is None
            and could_wash(req, resting)
        ):
            raise reject(WashTrade, 403, 40310000, "potential wash trade detected. use complex orders")


def check_buying_power(required: Decimal, buying_power: Decimal) -> None:
    if required > buying_power:
        raise reject(
            InsufficientBuyingPower,
            403,
            40310000,
            "insufficient buying power",
            buying_power=buying_power.quantize(CENT),
            cost_basis=required.quantize(CENT),
        )
