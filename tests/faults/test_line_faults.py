"""The whole protection line under faults, end to end: the simulator (`python -m sim`), the
streamer (`python -m services.streamer`) and the manager (`python -m services.manager`) as real
processes over alpaca-py and a real Redis.

Two faults between a fill and its protection: the broker's trade-update socket dropped while entries
fill (the streamer's reconnect backfill must bring every fill to the manager), and Redis killed and
restarted empty in the middle of a burst of fills (the streamer's buffer and backfill and the
manager's reconcile of every position must converge).

What is audited is what the broker saw: the simulator's list of every order ever accepted and its
refusals. "Exactly one protective set" means one protective sell submitted per position, not merely
one left open at the end.
"""

from __future__ import annotations

import time
from decimal import ROUND_FLOOR, Decimal

import pytest
import redis
from simhelpers import start_sim
from test_manager_faults import Line, wait_until
from test_streamer_faults import throwaway_redis  # noqa: F401 - a fixture

from shared import bus
from shared.bus import Keys

D = Decimal


def protection_of(qty: Decimal) -> list[tuple]:
    """The one protective set a position of `qty` shares should have, as `Line.open_protection` lists it:
    an OCO for the whole shares, a day stop for a fractional remainder."""
    whole = qty.to_integral_value(rounding=ROUND_FLOOR)
    expected = [("oco", whole)] if whole else []
    if qty != whole:
        expected.append(("simple", qty - whole))
    return sorted(expected)


def assert_one_protective_set_each(line: Line, positions: dict[str, Decimal]) -> None:
    held = {p.symbol: p.qty for p in line.executor.get_positions()}
    assert held == positions
    submitted = line.sells_submitted()
    assert set(submitted) == set(positions), "a sell for a symbol with no position"
    for symbol, qty in positions.items():
        assert line.open_protection(symbol) == protection_of(qty), symbol
        # One set ever submitted: nothing was placed twice and then canceled.
        assert sorted((o["order_class"], D(o["qty"])) for o in submitted[symbol]) == protection_of(qty), symbol


@pytest.fixture
def line(redis_client, keys, tmp_path):
    """A line on the shared Redis, in this test's namespace; the session is open (a market buy fills as
    it is accepted)."""
    sim = start_sim(process=True)
    line = Line(sim, keys, redis_client, tmp_path)
    try:
        yield line
    finally:
        try:
            line.stop_all()
        finally:
            sim.stop()


def test_fills_while_the_trade_update_stream_is_dropped_are_all_protected_after_the_reconnect(line):
    line.start_streamer()
    # The timer's reconcile of every position stays out of the way: only the stream can protect.
    line.start_manager("manager", consumer="m1", FL_MANAGER_RECONCILE_SECONDS="3600")
    line.buy("AAPL", "4")
    wait_until("the live fill protected", lambda: line.open_protection("AAPL") == protection_of(D("4")))

    assert line.sim.control.drop_stream(refuse_seconds=2) == 1
    gap = {"MSFT": D("5"), "NVDA": D("3.5"), "AMZN": D("2"), "KO": D("7"), "PFE": D("1")}
    for symbol, qty in gap.items():
        line.buy(symbol, str(qty))
    assert line.sim.control.state()["stream_connections"] == 0, "the gap's entries filled with the socket down"

    positions = {"AAPL": D("4"), **gap}
    for symbol, qty in positions.items():
        wait_until(f"{symbol} protected", lambda s=symbol, q=qty: line.open_protection(s) == protection_of(q))
    wait_until("every entry acknowledged", lambda: line.pending() == 0)
    assert_one_protective_set_each(line, positions)
    # The broker refuses any sell beyond the shares held and not reserved: none was refused.
    assert line.refusals() == []
    assert line.log("streamer").count("source=backfill") == len(gap), "the gap's fills came by backfill"
    assert "position_adopted" not in line.log("manager"), "protected from the stream, not by a reconcile-all"


def stream_consumed(line: Line) -> bool:
    """The manager's group has read and acknowledged every entry of the stream."""
    try:
        groups = line.client.xinfo_groups(line.keys.trade_updates)
        last = line.client.xrevrange(line.keys.trade_updates, count=1)
    except redis.ResponseError:  # no stream
        return False
    return any(g["name"] == "manager" and last and g["last-delivered-id"] == last[0][0] and g["pending"] == 0
               for g in groups)


@pytest.fixture
def restart_line(throwaway_redis, tmp_path):  # noqa: F811 - the imported fixture
    """A line whose Redis is the throwaway server (kill it, start it again on the same port)."""
    sim = start_sim(process=True)
    client = bus.connect(throwaway_redis.url)
    line = Line(sim, Keys("line-restart"), client, tmp_path)
    line.env["REDIS_URL"] = throwaway_redis.url
    try:
        yield line, throwaway_redis
    finally:
        try:
            line.stop_all()
        finally:
            sim.stop()
            client.close()


def test_redis_restarted_mid_burst_every_position_ends_protected(restart_line):
    line, server = restart_line
    line.start_streamer()
    line.start_manager("manager", consumer="m1", FL_MANAGER_RECONCILE_SECONDS="2")
    positions = {s: D(n) for s, n in (("AAPL", 3), ("MSFT", 2), ("NVDA", 4), ("AMZN", 5), ("GOOGL", 1),
                                      ("META", 2), ("TSLA", 3), ("AMD", 6), ("NFLX", 1), ("INTC", 9),
                                      ("JPM", 2), ("KO", 8))}
    for n, (symbol, qty) in enumerate(positions.items()):
        line.buy(symbol, str(qty))
        if n == 3:
            server.kill()  # SIGKILL, and nothing on disk: the stream, the group and all state are gone
        if n == 7:
            time.sleep(0.5)  # both services find Redis gone
            server.start()
        time.sleep(0.02)

    for symbol, qty in positions.items():
        wait_until(f"{symbol} protected", lambda s=symbol, q=qty: line.open_protection(s) == protection_of(q),
                   timeout=30)
    # One more reconcile of every position after all are protected changes nothing.
    runs = line.log("manager").count("reconcile_all_done")
    wait_until("another reconcile of every position", lambda: line.log("manager").count("reconcile_all_done")
               > runs, timeout=10)
    assert_one_protective_set_each(line, positions)
    # The manager reads the new server's stream too (its group recreated), not only the timer's reconcile.
    wait_until("the new stream read and acknowledged", lambda: stream_consumed(line), timeout=10)
    # A refused sell is the broker guarding the shares, never a sell it accepted beyond them.
    assert all("insufficient qty" in r.get("message", "") for r in line.refusals()), line.refusals()
    streamer, manager = line.log("streamer"), line.log("manager")
    assert "redis_unavailable_buffering" in streamer and "redis_back" in streamer
    assert "redis_unreachable" in manager and "consumer_group_recreated" in manager
