"""What stays in Redis when a position is gone (docs/redis.md): the state goes, the protection record
stays emptied but keeps its revision, so a reopened position never reuses a client order id."""

from __future__ import annotations

from shared import position_store
from shared.position_store import ProtectionRecord


def test_a_closed_positions_state_goes_and_its_protection_record_keeps_only_the_revision(redis_client, keys):
    record = ProtectionRecord(symbol="AAPL", client_order_ids=["fl-20261102-AAPL-oco-3"], revision=3,
                              entry_client_order_id="fl-20261102-AAPL-entry")
    position_store.save(redis_client, keys, None, record)
    redis_client.set(keys.position_state("AAPL"), "{}")
    position_store.clear(redis_client, keys, "AAPL")
    assert redis_client.get(keys.position_state("AAPL")) is None
    kept = position_store.load_record(redis_client, keys, "AAPL")
    assert (kept.client_order_ids, kept.revision, kept.entry_client_order_id) == ([], 3, None)
    assert redis_client.exists(keys.protection("AAPL"))
