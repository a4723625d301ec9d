"""Decimal money helpers: parsing without float noise and rounding to Alpaca's increments.

Prices: 2 decimals at or above $1, 4 below (Alpaca rejects sub-penny prices with 422).
Quantities: 9 decimals, always rounded down so we never ask for a share we do not have.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation

ZERO = Decimal("0")
ONE = Decimal("1")
CENT = Decimal("0.01")
TICK_SUB_DOLLAR = Decimal("0.0001")
QTY_STEP = Decimal("0.000000001")


def to_decimal(value: object) -> Decimal:
    """Decimal from str/int/float/Decimal; floats go through repr so 0.1 stays 0.1."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError("a boolean is not an amount")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation as exc:
            raise ValueError(f"not a number: {value!r}") from exc
    else:
        raise ValueError(f"not a number: {value!r}")
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def non_negative(text: str) -> Decimal | None:
    """A finite number >= 0 from text (an amount, a volume, a percent), or None: the caller says what
    the number should have been."""
    try:
        value = to_decimal(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def price_increment(price: Decimal) -> Decimal:
    return CENT if price >= ONE else TICK_SUB_DOLLAR


def round_price(price: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
    """Round to the broker's price increment (2 dp at or above $1, 4 dp below)."""
    price = to_decimal(price)
    rounded = price.quantize(price_increment(price), rounding=rounding)
    # 0.99995 rounds up to 1.0000: re-round at the coarser increment it now falls in.
    return rounded.quantize(price_increment(rounded), rounding=rounding)


def is_valid_price_increment(price: Decimal) -> bool:
    price = to_decimal(price)
    return price == price.quantize(price_increment(price))


def round_qty(qty: Decimal) -> Decimal:
    """Round a share quantity down to 9 decimals."""
    return to_decimal(qty).quantize(QTY_STEP, rounding=ROUND_DOWN).normalize() + ZERO


def whole_shares(qty: Decimal) -> Decimal:
    return to_decimal(qty).to_integral_value(rounding=ROUND_DOWN)


def is_whole(qty: Decimal) -> bool:
    qty = to_decimal(qty)
    return qty == qty.to_integral_value()


def fmt_money(amount: Decimal) -> str:
    """$1,234.56 style, for tables meant for people."""
    amount = to_decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def fmt_qty(qty: Decimal) -> str:
    qty = to_decimal(qty)
    text = format(qty.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")
