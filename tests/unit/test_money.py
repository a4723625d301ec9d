from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.money import is_valid_price_increment, non_negative, round_price, round_qty, to_decimal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("150.005", "150.01"), ("150.004", "150.00"), ("0.12345", "0.1235"), ("0.99996", "1.00"), ("1", "1.00")],
)
def test_prices_round_to_alpaca_increments(raw, expected):
    assert round_price(Decimal(raw)) == Decimal(expected)
    assert str(round_price(Decimal(raw))) == expected


def test_floats_do_not_leak_binary_noise():
    assert to_decimal(0.1) == Decimal("0.1")


@given(st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=6))
def test_rounded_prices_are_always_valid_increments(price):
    assert is_valid_price_increment(round_price(price))


@given(st.decimals(min_value=Decimal("0"), max_value=Decimal("1000000"), places=12))
def test_quantities_round_down_to_nine_decimals(qty):
    rounded = round_qty(qty)
    assert rounded <= qty
    assert qty - rounded < Decimal("0.000000001")


@pytest.mark.parametrize(("text", "expected"), [
    ("0", Decimal("0")), ("0.5", Decimal("0.5")), (" 12 ", Decimal("12")),
    ("-0.01", None), ("NaN", None), ("inf", None), ("lots", None), ("", None),
])
def test_non_negative_takes_only_finite_numbers_from_zero_up(text, expected):
    assert non_negative(text) == expected
