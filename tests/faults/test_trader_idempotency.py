"""One signal, at most one entry a day: whatever reruns, kills and lost answers happen.

Real things only: alpaca-py against the simulator's server, real Redis, and for the kill test a real
`python -m services.trader` RQ worker process killed with SIGKILL while an order's answer is in flight.
"""

from __future__ import annotations

import contextlib
import os
import signal as signals_module
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import ROOT, sim  # noqa: F401 - the `sim` fixture
from test_trader import FIVE, buy_orders, by_symbol, rank_today, trader  # noqa: F401 - fixtures

from services.trader.jobs import trade_signals
from shared.bus import connect_rq
from shared.queues import enqueue


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (Linux /proc), children before parents."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # Field 4 of /proc/<pid>/stat is the parent pid; the name (field 2) may hold spaces.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree[::-1]


def entries_per_symbol(market) -> dict[str, int]:
    return {symbol: len(orders) for symbol, orders in by_symbol(buy_orders(market)).items()}


def test_running_the_job_twice_leaves_exactly_one_entry_per_signal(trader, redis_client, keys):  # noqa: F811
    rank_today(redis_client, keys, FIVE)
    first = trade_signals()
    second = trade_signals()
    assert first["counts"] == {"submitted": 5}
    assert second["entries"] == []
    assert {s["reason"] for s in second["skips"]} == {"already held"}
    assert entries_per_symbol(trader) == dict.fromkeys(FIVE, 1)


def test_second_run_before_the_open_skips_entries_still_queued(trader, redis_client, keys):  # noqa: F811
    trader.control.advance(to=datetime(2024, 3, 4, 22, 0, tzinfo=UTC))  # after the close
    rank_today(redis_client, keys, FIVE)
    trade_signals(queue_for_open=True)
    again = trade_signals(queue_for_open=True)
    assert {s["reason"] for s in again["skips"]} == {"open order"}
    assert entries_per_symbol(trader) == dict.fromkeys(FIVE, 1)


def test_entry_bought_and_sold_the_same_day_is_not_bought_again(trader, redis_client, keys):  # noqa: F811
    rank_today(redis_client, keys, FIVE)
    trade_signals()
    trader.trading_client().close_position("AAPL")  # e.g. its stop fired: flat, no open order
    again = trade_signals()
    aapl = next(e for e in again["entries"] if e["symbol"] == "AAPL")
    assert aapl["status"] == "already submitted"
    assert aapl["order_status"] == "filled"
    assert entries_per_symbol(trader) == dict.fromkeys(FIVE, 1)


def test_whole_share_retry_is_found_on_the_next_run_even_if_the_asset_became_fractionable(
        trader, redis_client, keys):  # noqa: F811
    trader.control.set_asset("MSFT", fractionable=False, listed_fractionable=True)
    rank_today(redis_client, keys, FIVE)
    trade_signals()
    trader.trading_client().close_position("MSFT")
    trader.control.set_asset("MSFT", fractionable=True, listed_fractionable=True)
    again = trade_signals()
    msft = next(e for e in again["entries"] if e["symbol"] == "MSFT")
    assert (msft["status"], msft["client_order_id"]) == ("already submitted", f"{keys.ns}-20240304-MSFT-entry-whole")
    assert entries_per_symbol(trader) == dict.fromkeys(FIVE, 1)


def test_entry_sent_by_another_run_after_the_listing_is_refused_by_the_broker_and_reported(
        trader, keys):  # noqa: F811
    from alpaca.trading.requests import MarketOrderRequest

    from services.trader.jobs import enter_once
    from shared.broker import make_executor
    from shared.sizing import EntryKind, PlannedEntry

    cid = f"{keys.ns}-20240304-AAPL-entry"
    entry = PlannedEntry(symbol="AAPL", kind=EntryKind.NOTIONAL, amount=Decimal("38800.00"), qty=None,
                         reference_price=Decimal("190"), client_order_id=cid, allocation=Decimal("38800.00"),
                         whole_share_qty=Decimal("204"), whole_share_client_order_id=f"{cid}-whole")
    # Our listing of recent orders came back empty; then a second run sent the same entry first.
    trader.trading_client().submit_order(MarketOrderRequest(
        symbol="AAPL", notional=38800, side="buy", time_in_force="day", client_order_id=cid))
    executor = make_executor(trader.broker_settings())
    try:
        result = enter_once(executor, entry, known={})
    finally:
        executor.close()
    assert result.status.value == "already submitted"
    assert "already has this client order id" in result.detail and result.order.client_order_id == cid
    assert entries_per_symbol(trader) == {"AAPL": 1}


@pytest.fixture
def worker_env(trader, namespace):  # noqa: F811
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(trader.broker_env(), REDIS_URL=redis_url(), FL_NAMESPACE=namespace, PYTHONPATH=str(ROOT))
    return env


def test_worker_killed_mid_run_then_run_again_leaves_exactly_one_entry_per_signal(
        trader, redis_client, keys, worker_env, tmp_path):  # noqa: F811
    rank_today(redis_client, keys, FIVE)
    # Every order is accepted at once but its answer takes 1.5 s: the kill lands while one is in flight.
    trader.control.delay_requests(5, 1.5, path_prefix="/v2/orders", method="POST", when="after")
    enqueue(connect_rq(redis_url()), keys, "trader", "services.trader.jobs.trade_signals")
    with open(tmp_path / "worker.log", "w") as log:
        # The job runs in the work horse RQ forks, in a process group of its own: the kill takes the
        # whole tree, as stopping the container would.
        worker = subprocess.Popen([sys.executable, "-m", "services.trader"], cwd=tmp_path, env=worker_env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(buy_orders(trader)) < 2:
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, "the worker never got to the second order"
                time.sleep(0.05)
        finally:
            tree = process_tree(worker.pid)
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signals_module.SIGKILL)
            worker.wait(timeout=10)
    assert len(tree) >= 2, f"no work horse under the worker: {tree}"
    time.sleep(2)  # longer than the answer delay: nothing of the killed run arrives late
    killed_at = entries_per_symbol(trader)
    assert 2 <= sum(killed_at.values()) < 5 and set(killed_at.values()) == {1}

    trader.control.clear_faults()
    rerun = trade_signals()
    assert entries_per_symbol(trader) == dict.fromkeys(FIVE, 1)
    assert rerun["counts"] == {"submitted": 5 - sum(killed_at.values())}
