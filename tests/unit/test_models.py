from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from shared.models import ORDER_TRANSITIONS, Order, OrderStatus, can_transition


def _order(**kw):
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    base = dict(id="o1", client_order_id="c1", symbol="AAPL", side="buy", type="market",
                time_in_force="day", status="new", qty="10", created_at=now, updated_at=now)
    base.update(kw)
    return Order.model_validate(base)


def test_every_status_has_a_transition_row():
    assert set(ORDER_TRANSITIONS) == set(OrderStatus)


def test_terminal_statuses_only_allow_the_late_fill_after_cancel():
    assert not can_transition(OrderStatus.FILLED, OrderStatus.CANCELED)
    assert not can_transition(OrderStatus.REJECTED, OrderStatus.NEW)
    assert can_transition(OrderStatus.CANCELED, OrderStatus.FILLED)
    assert can_transition(OrderStatus.PENDING_CANCEL, OrderStatus.FILLED)


def test_order_json_round_trip_keeps_decimals_exact_and_ignores_unknown_fields():
    order = _order(qty="0.123456789", future_field="x")
    again = Order.model_validate_json(order.model_dump_json())
    assert again.qty == Decimal("0.123456789")
    assert again == order


def test_naive_datetimes_are_refused():
    with pytest.raises(ValidationError, match="timezone-aware"):
        _order(created_at=datetime(2026, 11, 24, 15, 0))
