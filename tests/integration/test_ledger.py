"""The ledger: one position close is one trade for a person.

A 10.4-share position is protected by an OCO for the 10 whole shares and a day stop for the 0.4
remainder; one stop price fills both, and the ledger gets an entry per closing order. `ClosedTrade.merge`
makes one trade of such parts, `append_once` dedups on every closing order a trade covers, and
`read_closes` reads the ledger the way a person does. Real Redis (the `redis_client`/`keys` fixtures).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared import ledger
from shared.exits import ExitReason
from shared.ledger import ClosedTrade

D = Decimal
#: Tuesday 10:30 New York: the stop price is hit.
STOP_HIT = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
OPENED = datetime(2026, 11, 20, 14, 35, tzinfo=UTC)


def part(order_id: str, qty: str, *, exit_price: str = "95", entry: str = "100", closed_at: datetime = STOP_HIT,
         opened_at: datetime = OPENED, reason: ExitReason = ExitReason.STOP_LOSS, symbol: str = "AAPL") -> ClosedTrade:
    return ClosedTrade.of(symbol=symbol, qty=D(qty), entry_price=D(entry), exit_price=D(exit_price),
                          exit_reason=reason, opened_at=opened_at, closed_at=closed_at, closing_order_id=order_id,
                          closing_client_order_id=f"coid-{order_id}", protective_client_order_id=f"prot-{order_id}",
                          entry_client_order_id="entry-1")


# -- the model ---------------------------------------------------------------------------------------------


def test_closing_order_ids_always_hold_the_primary_id_first_and_old_entries_still_load():
    assert part("oco-leg", "10").closing_order_ids == ["oco-leg"]
    listed = ClosedTrade.model_validate({**json.loads(part("a", "1").model_dump_json()),
                                         "closing_order_ids": ["b", "a", "b"]})
    assert listed.closing_order_ids == ["a", "b"]
    # An entry written before the field existed (schema 1, no closing_order_ids).
    old = json.loads(part("old-1", "3").model_dump_json())
    del old["closing_order_ids"]
    loaded = ClosedTrade.model_validate_json(json.dumps(old))
    assert loaded.closing_order_id == "old-1" and loaded.closing_order_ids == ["old-1"]


def test_merge_of_a_10_and_a_0_4_share_stop_out_is_one_trade_of_10_4_shares_losing_52_dollars():
    oco_leg = part("oco-leg", "10", closed_at=STOP_HIT)
    day_stop = part("day-stop", "0.4", closed_at=STOP_HIT + timedelta(seconds=1))
    merged = ClosedTrade.merge([oco_leg, day_stop])
    assert merged.qty == D("10.4") and isinstance(merged.qty, Decimal)
    assert merged.entry_price == D("100") and merged.exit_price == D("95")
    assert merged.realized_pl == D("-52.00") == oco_leg.realized_pl + day_stop.realized_pl
    assert isinstance(merged.realized_pl, Decimal)
    assert merged.exit_reason is ExitReason.STOP_LOSS
    assert (merged.opened_at, merged.closed_at) == (OPENED, STOP_HIT + timedelta(seconds=1))
    assert merged.closing_order_id == "oco-leg" and merged.closing_order_ids == ["oco-leg", "day-stop"]
    assert (merged.closing_client_order_id, merged.protective_client_order_id) == ("coid-oco-leg", "prot-oco-leg")
    assert merged.entry_client_order_id == "entry-1"


def test_merge_weights_prices_by_quantity_exactly_and_sums_the_parts_pl():
    # 3 @ 95.01 and 0.5 @ 94.97 from entry 100.10: exit 332.515 / 3.5, not a price on the cent grid.
    merged = ClosedTrade.merge([part("a", "3", exit_price="95.01", entry="100.10"),
                                part("b", "0.5", exit_price="94.97", entry="100.10")])
    assert merged.qty == D("3.5")
    assert abs(merged.exit_price * merged.qty - D("332.515")) < D("1e-20")
    assert merged.exit_price.quantize(D("0.0001")) == D("95.0043")
    assert merged.entry_price == D("100.10")
    assert merged.realized_pl == (D("95.01") - D("100.10")) * 3 + (D("94.97") - D("100.10")) * D("0.5")
    assert merged.realized_pl == D("-17.835")


def test_merge_keeps_the_largest_parts_reason_when_the_parts_disagree_and_refuses_two_symbols():
    merged = ClosedTrade.merge([part("a", "0.4", reason=ExitReason.MANUAL), part("b", "10")])
    assert merged.exit_reason is ExitReason.STOP_LOSS and merged.closing_order_id == "a"
    assert ClosedTrade.merge([part("only", "2")]) == part("only", "2")
    with pytest.raises(ValueError):
        ClosedTrade.merge([part("a", "1"), part("b", "1", symbol="MSFT")])
    with pytest.raises(ValueError):
        ClosedTrade.merge([])


# -- append_once -----------------------------------------------------------------------------------------


def test_a_merged_trade_is_written_once_and_refused_if_any_one_of_its_orders_is_recorded(redis_client, keys):
    merged = ClosedTrade.merge([part("oco-leg", "10"), part("day-stop", "0.4")])
    assert ledger.append_once(redis_client, keys, merged) is True
    assert ledger.append_once(redis_client, keys, merged) is False
    assert ledger.append_once(redis_client, keys, part("day-stop", "0.4")) is False  # a part on its own
    assert ledger.is_recorded(redis_client, keys, "oco-leg") and ledger.is_recorded(redis_client, keys, "day-stop")
    (written,) = ledger.read(redis_client, keys)
    assert written == merged

    # The other way round: one part already written, the merged trade that covers it writes nothing.
    other = ClosedTrade.merge([part("leg-2", "5", symbol="MSFT"), part("stop-2", "0.5", symbol="MSFT")])
    assert ledger.append_once(redis_client, keys, part("stop-2", "0.5", symbol="MSFT")) is True
    assert ledger.append_once(redis_client, keys, other) is False
    assert not ledger.is_recorded(redis_client, keys, "leg-2")  # nothing of a refused trade is kept
    assert [t.closing_order_ids for t in ledger.read(redis_client, keys)] == [["oco-leg", "day-stop"], ["stop-2"]]


def test_writers_racing_with_overlapping_trades_write_exactly_one(redis_client, keys):
    candidates = [ClosedTrade.merge([part("leg", "10"), part("stop", "0.4")]), part("leg", "10"), part("stop", "0.4")]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda t=t: results.append(ledger.append_once(redis_client, keys, t)))
               for t in candidates * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) in (1, 2)  # the merged trade alone, or both parts alone
    ids = [i for t in ledger.read(redis_client, keys) for i in t.closing_order_ids]
    assert sorted(ids) == ["leg", "stop"]  # every closing order once, never twice


# -- read_closes -----------------------------------------------------------------------------------------


def test_read_closes_merges_two_separately_written_parts_of_one_stop_out(redis_client, keys):
    assert ledger.append_once(redis_client, keys, part("oco-leg", "10", closed_at=STOP_HIT))
    # Something else closes in between (another symbol), then the next pass settles the fractional stop.
    assert ledger.append_once(redis_client, keys, part("nvda", "4", symbol="NVDA", exit_price="120"))
    assert ledger.append_once(redis_client, keys, part("day-stop", "0.4", closed_at=STOP_HIT + timedelta(seconds=2)))
    assert len(ledger.read(redis_client, keys)) == 3  # the raw view: one entry per closing order
    closes = ledger.read_closes(redis_client, keys)
    assert [(t.symbol, t.qty, t.realized_pl) for t in closes] == [("AAPL", D("10.4"), D("-52.0")),
                                                                  ("NVDA", D("4"), D("80"))]
    assert closes[0].closing_order_ids == ["oco-leg", "day-stop"]
    assert [t.symbol for t in ledger.read_closes(redis_client, keys, symbol="AAPL")] == ["AAPL"]


def test_read_closes_keeps_two_positions_of_one_symbol_apart(redis_client, keys):
    # Bought, stopped out, bought again and stopped out again within the same minute: two trades.
    ledger.append_once(redis_client, keys, part("first", "10", opened_at=OPENED))
    ledger.append_once(redis_client, keys, part("second", "10", opened_at=STOP_HIT - timedelta(seconds=20),
                                                closed_at=STOP_HIT + timedelta(seconds=10)))
    closes = ledger.read_closes(redis_client, keys)
    assert [t.closing_order_ids for t in closes] == [["first"], ["second"]]


def test_read_closes_keeps_a_stop_out_and_a_later_exit_for_another_reason_apart(redis_client, keys):
    # A partial stop-out, then the rest sold by the trailing exit 30 s later: two exits of one position.
    ledger.append_once(redis_client, keys, part("stop", "4"))
    ledger.append_once(redis_client, keys, part("trail", "6", exit_price="104", reason=ExitReason.TRAILING,
                                                closed_at=STOP_HIT + timedelta(seconds=30)))
    closes = ledger.read_closes(redis_client, keys)
    assert [(t.exit_reason, t.qty) for t in closes] == [(ExitReason.STOP_LOSS, D("4")), (ExitReason.TRAILING, D("6"))]


def test_read_closes_keeps_parts_further_apart_than_a_minute_apart(redis_client, keys):
    ledger.append_once(redis_client, keys, part("morning", "5"))
    ledger.append_once(redis_client, keys, part("later", "5", closed_at=STOP_HIT + timedelta(seconds=61)))
    assert len(ledger.read_closes(redis_client, keys)) == 2


def test_merge_closes_windows_on_the_first_part_of_a_group():
    t = [part(f"p{i}", "1", closed_at=STOP_HIT + timedelta(seconds=s)) for i, s in enumerate((0, 40, 70))]
    assert [x.closing_order_ids for x in ledger.merge_closes(t)] == [["p0", "p1"], ["p2"]]
