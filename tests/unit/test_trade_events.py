from datetime import UTC, datetime
from decimal import Decimal

from shared.models import Order, TradeEventType, TradeUpdate
from shared.trade_events import decode_entry, encode_entry

NOW = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


def _fill(filled_qty: str, event: str = "fill") -> TradeUpdate:
    order = Order(id="o-1", client_order_id="fl-20261124-AAPL-entry", symbol="AAPL", side="buy", type="market",
                  time_in_force="day", status="filled", qty=Decimal("10"), filled_qty=Decimal(filled_qty),
                  filled_avg_price=Decimal("190.12"), created_at=NOW, updated_at=NOW)
    return TradeUpdate(event=TradeEventType(event), order=order, timestamp=NOW, price=Decimal("190.12"),
                       qty=Decimal(filled_qty), position_qty=Decimal(filled_qty))


def test_stream_entry_round_trips_the_update_exactly():
    update = _fill("10")
    fields = encode_entry(update)
    assert fields["symbol"] == "AAPL" and fields["event"] == "fill"
    assert decode_entry(fields) == update


def test_backfilled_copy_of_a_fill_has_the_same_event_id_as_the_live_one():
    live, backfilled = _fill("10"), _fill("10.0")
    assert live.event_id == backfilled.event_id


def test_partial_fill_and_final_fill_have_different_event_ids():
    assert _fill("3", "partial_fill").event_id != _fill("10").event_id
