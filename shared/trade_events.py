"""The durable trade-update stream's entry format (written by the streamer, read by the manager).

Each entry of `Keys.trade_updates` has flat string fields so `redis-cli XRANGE` stays readable:
`event_id` (dedup key, see `TradeUpdate.event_id`), `symbol`, `event`, `client_order_id`, and
`update` (the full `TradeUpdate` as JSON, validated again when read).
"""

from __future__ import annotations

from shared.models import TradeUpdate

FIELDS = ("event_id", "symbol", "event", "client_order_id", "update")


def encode_entry(update: TradeUpdate) -> dict[str, str]:
    return {
        "event_id": update.event_id,
        "symbol": update.order.symbol,
        "event": update.event.value,
        "client_order_id": update.order.client_order_id,
        "update": update.model_dump_json(),
    }


def decode_entry(fields: dict[str, str]) -> TradeUpdate:
    """Validate a stream entry; raises pydantic.ValidationError (or KeyError) for a bad one."""
    return TradeUpdate.model_validate_json(fields["update"])
