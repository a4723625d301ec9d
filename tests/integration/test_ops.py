"""Operations commands as a person runs them: real subprocesses against the simulated market and real
Redis (`python -m services.ops.cli`, which is `factoryline status|halt|resume|flatten`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import ROOT, sim  # noqa: F401 - the `sim` fixture
from test_redis_keys import documented_key_patterns  # test_edges imports it from here too

from shared import ledger
from shared.broker import make_executor
from shared.exits import ExitReason

FACTORYLINE = [sys.executable, "-m", "services.cli"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The command as a script runs it: stdin is a pipe with nothing on it (no terminal)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(args, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=60, input="")


@pytest.fixture
def env(sim, namespace):  # noqa: F811
    return {**sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}


@pytest.fixture
def executor(sim):  # noqa: F811
    ex = make_executor(sim.broker_settings())
    yield ex
    ex.close()


def hold(executor, symbol: str, qty: str, *, protect: bool, prefix: str = "t") -> None:
    """Buy `qty` shares (and protect them with an OCO): client order ids `<prefix>-<SYMBOL>-...`; give the
    line's own prefix (`line_prefix`) for orders `status` must count as the line's."""
    executor.buy_qty(symbol, Decimal(qty), f"{prefix}-20240304-{symbol}-entry")
    if protect:
        entry = executor.get_position(symbol).avg_entry_price
        executor.submit_protective_exit(symbol, Decimal(qty), (entry * Decimal("0.95")).quantize(Decimal("0.01")),
                                        (entry * Decimal("1.2")).quantize(Decimal("0.01")), f"{prefix}-{symbol}-oco")


def line_prefix(namespace: str) -> str:
    """The beginning of every client order id the line makes on the simulator's day (shared.ownership)."""
    return f"{namespace}-20240304"


def position_line(stdout: str, symbol: str) -> str:
    """The symbol's row in the last table printed (flatten prints its plan, then what it did)."""
    return [line for line in stdout.splitlines() if line.strip().startswith(symbol + " ")][-1]


def section(stdout: str, title: str) -> list[str]:
    """The lines of a `status` section: after its title line, up to the next blank line."""
    lines = stdout.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def status_row(stdout: str, symbol: str) -> str:
    """The symbol's row in the positions table of `status`."""
    (row,) = [line for line in section(stdout, "positions") if line.strip().startswith(symbol + " ")]
    return row


USERS_SECTION = "orders the line did not make (left alone)"


def test_status_shows_an_unprotected_position_in_capitals_and_a_protected_one_covered(env, executor, tmp_path):
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    hold(executor, "MSFT", "5", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    result = run([*FACTORYLINE, "status"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr  # an unprotected position needs a person
    assert "10/10" in status_row(result.stdout, "AAPL") and "covered" in status_row(result.stdout, "AAPL")
    assert "(user's)" not in status_row(result.stdout, "AAPL")
    assert "0/5" in status_row(result.stdout, "MSFT") and "UNPROTECTED" in status_row(result.stdout, "MSFT")
    assert "UNPROTECTED: MSFT" in result.stdout
    assert section(result.stdout, USERS_SECTION) == ["  none"]  # every order is the line's
    assert f"{env['FL_NAMESPACE']}-trader" in result.stdout and "halt       not set" in result.stdout
    assert "equity $" in result.stdout


def test_status_says_the_streamer_is_stale_when_its_heartbeat_is_old(env, redis_client, keys, tmp_path):
    redis_client.hset(keys.streamer_health, mapping={"role": "leader", "connected": "yes", "leader_host": "box",
                                                     "leader_pid": "7", "heartbeat_at": "2024-01-01T00:00:00+00:00"})
    result = run([*FACTORYLINE, "status"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "streamer   STALE: last heartbeat" in result.stdout


def test_status_with_the_broker_unreachable_still_prints_the_rest_and_says_so_in_one_line(
        env, redis_client, keys, tmp_path):
    redis_client.set(keys.halt, "1")
    dead = {**env, "ALPACA_ENDPOINT": "http://127.0.0.1:9", "ALPACA_DATA_ENDPOINT": "http://127.0.0.1:9",
            "FL_BROKER_TIMEOUT_SECONDS": "2"}
    result = run([*FACTORYLINE, "status"], dead, tmp_path)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("broker: UNREACHABLE")]
    assert "HALTED" in result.stdout and "queues" in result.stdout
    assert "Traceback" not in result.stderr


def test_halt_makes_the_trader_refuse_and_resume_clears_it(env, redis_client, keys, tmp_path):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.notifications)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # listening before the command runs
    halted = run([*FACTORYLINE, "halt", "--reason", "broker incident"], env, tmp_path)
    assert halted.returncode == 0, halted.stderr
    assert "HALTED: broker incident" in halted.stdout
    assert json.loads(redis_client.get(keys.halt))["reason"] == "broker incident"
    message = pubsub.get_message(timeout=2)
    assert message and json.loads(message["data"])["kind"] == "halted"

    trade = run([sys.executable, "-m", "services.cli", "trade"], env, tmp_path)
    assert trade.returncode == 1 and trade.stdout.startswith("halted:")

    resumed = run([*FACTORYLINE, "resume"], env, tmp_path)
    assert resumed.returncode == 0 and "not set" in resumed.stdout
    assert not redis_client.exists(keys.halt)
    message = pubsub.get_message(timeout=2)
    assert message and json.loads(message["data"])["kind"] == "resumed"
    pubsub.close()
    trade = run([sys.executable, "-m", "services.cli", "trade"], env, tmp_path)
    assert not trade.stdout.startswith("halted:")


def test_flatten_yes_leaves_no_position_no_open_order_and_never_sells_short(
        env, executor, sim, redis_client, keys, tmp_path):  # noqa: F811
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    hold(executor, "MSFT", "5", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    hold(executor, "TSLA", "2.5", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    result = run([*FACTORYLINE, "flatten", "--yes"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert executor.get_positions() == []
    assert executor.get_open_orders() == []
    sells = [o for o in sim.control.state()["orders"] if o["side"] == "sell" and o["type"] == "market"]
    sold = {o["symbol"]: Decimal(o["filled_qty"]) for o in sells}
    assert sold == {"AAPL": Decimal("10"), "MSFT": Decimal("5"), "TSLA": Decimal("2.5")}
    assert {o["client_order_id"] for o in sells} == {f"{keys.ns}-20240304-{s}-flatten" for s in sold}
    assert redis_client.exists(keys.halt)
    trades = ledger.read(redis_client, keys)
    assert sorted((t.symbol, t.qty, t.exit_reason) for t in trades) == [
        ("AAPL", Decimal("10"), ExitReason.MANUAL), ("MSFT", Decimal("5"), ExitReason.MANUAL),
        ("TSLA", Decimal("2.5"), ExitReason.MANUAL)]


def test_flatten_without_yes_and_without_a_terminal_refuses_in_one_line(env, executor, tmp_path):
    hold(executor, "AAPL", "10", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    result = run([*FACTORYLINE, "flatten"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "refused" in result.stderr and "--yes" in result.stderr
    assert executor.get_position("AAPL").qty == Decimal("10")


def test_status_lists_the_workers_listening_on_the_queues(env, namespace, keys, redis_client, tmp_path):
    from rq import Worker

    from shared.bus import connect_rq
    from shared.queues import queue

    rq_client = connect_rq(redis_url())
    worker = Worker([queue(rq_client, keys, "trader")], connection=rq_client, name=f"{namespace}-w1",
                    serializer="json")
    worker.register_birth()
    try:
        result = run([*FACTORYLINE, "status"], env, tmp_path)
    finally:
        worker.register_death()
        rq_client.close()
    assert result.returncode == 0, result.stdout + result.stderr
    trader_row = next(line for line in result.stdout.splitlines() if f"{namespace}-trader " in line)
    assert trader_row.split()[-1] == "1"
    assert f"{namespace}-w1" in result.stdout


def test_flatten_while_the_market_is_closed_changes_nothing_and_keeps_the_stops(
        env, executor, sim, redis_client, keys, tmp_path):  # noqa: F811
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    sim.control.advance(to="2024-03-04T17:00:00-05:00")
    result = run([*FACTORYLINE, "flatten", "--yes"], env, tmp_path)
    assert result.returncode == 1
    assert "market is closed" in result.stdout
    assert executor.get_position("AAPL").qty == Decimal("10")
    assert len(executor.get_open_orders("AAPL")) == 1
    assert not redis_client.exists(keys.halt)  # refused: nothing changed


def test_flatten_reports_a_refused_sell_and_still_flattens_the_others(env, executor, sim, tmp_path):  # noqa: F811
    hold(executor, "AAPL", "10", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    hold(executor, "MSFT", "5", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    # The next order submission (AAPL's sell: symbols go in order) is refused by the broker.
    sim.control.fail_requests(1, 422, path_prefix="/v2/orders", method="POST")
    result = run([*FACTORYLINE, "flatten", "--yes"], env, tmp_path)
    assert result.returncode == 1
    assert "refused" in position_line(result.stdout, "AAPL") and "NOT flat: AAPL" in result.stdout
    assert executor.get_position("MSFT") is None
    assert executor.get_position("AAPL").qty == Decimal("10")
    # The refused symbol is not left naked: the reconcile after the flatten protected it again.
    assert [o.order_class.value for o in executor.get_open_orders("AAPL")] == ["oco"]


def test_flatten_keeps_an_earlier_halt_and_its_reason(env, executor, redis_client, keys, tmp_path):
    hold(executor, "AAPL", "3", protect=False, prefix=line_prefix(env["FL_NAMESPACE"]))
    run([*FACTORYLINE, "halt", "--reason", "incident 42"], env, tmp_path)
    flat = run([*FACTORYLINE, "flatten", "--yes"], env, tmp_path)
    assert flat.returncode == 0 and "already set; kept" in flat.stdout
    assert executor.get_position("AAPL") is None
    assert json.loads(redis_client.get(keys.halt))["reason"] == "incident 42"


def run_on_terminal(args: list[str], env: dict[str, str], cwd: Path, typed: str) -> subprocess.CompletedProcess:
    """The command with a terminal as stdin (a pseudo-terminal), `typed` already waiting on it."""
    import pty

    primary, secondary = pty.openpty()
    try:
        os.write(primary, typed.encode())
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
        return subprocess.run(args, cwd=cwd, env={**base, "PYTHONPATH": str(ROOT), **env}, stdin=secondary,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(secondary)
        os.close(primary)


def test_flatten_on_a_terminal_shows_the_plan_and_does_nothing_unless_flatten_is_typed(
        env, executor, redis_client, keys, tmp_path):
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    result = run_on_terminal([*FACTORYLINE, "flatten"], env, tmp_path, "yes\n")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "type 'flatten' to go ahead" in result.stdout and "not confirmed: nothing done" in result.stdout
    assert "10/10" in position_line(result.stdout, "AAPL")  # the plan: what the stops cover now
    assert executor.get_position("AAPL").qty == Decimal("10") and len(executor.get_open_orders("AAPL")) == 1
    assert not redis_client.exists(keys.halt)


def test_flatten_on_a_terminal_sells_once_flatten_is_typed(env, executor, tmp_path):
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    result = run_on_terminal([*FACTORYLINE, "flatten"], env, tmp_path, "flatten\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert executor.get_position("AAPL") is None and executor.get_open_orders() == []


def test_every_key_a_trading_day_leaves_under_the_namespace_is_in_docs_redis_md(
        env, executor, sim, redis_client, keys, namespace, tmp_path):  # noqa: F811
    from shared.config import ExitSettings
    from shared.exits import ExitRules
    from shared.positions.context import ManagerContext
    from shared.positions.reconcile import reconcile_all
    from shared.protection import Trigger

    hold(executor, "AAPL", "10", protect=False)
    reconcile_all(ManagerContext(executor, redis_client, keys, ExitRules.from_settings(ExitSettings(_env_file=None))), Trigger.MANUAL)
    assert run([sys.executable, "-m", "services.cli", "manage"], env, tmp_path).returncode == 0
    written = set(redis_client.scan_iter(match=f"{namespace}:*"))  # position, protection, last tick
    run([*FACTORYLINE, "flatten", "--yes"], env, tmp_path)
    written |= set(redis_client.scan_iter(match=f"{namespace}:*"))  # halt, ledger, its order ids
    assert len(written) >= 6, written
    patterns = documented_key_patterns()
    undocumented = [k for k in sorted(written) if not any(p.match("fl" + k[len(namespace):]) for p in patterns)]
    assert undocumented == []


def test_status_with_redis_unreachable_still_shows_the_broker_and_says_so_in_one_line(env, executor, tmp_path):
    hold(executor, "AAPL", "10", protect=True)
    result = run([*FACTORYLINE, "status"], {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    assert result.returncode == 1
    assert len([line for line in result.stdout.splitlines() if line.startswith("redis: UNREACHABLE")]) == 1
    assert "covered" in status_row(result.stdout, "AAPL") and "equity $" in result.stdout


def order(symbol: str, kind: str, qty: str, status: str = "new", legs: tuple = (), order_class: str = "simple",
          client_order_id: str | None = None):
    from datetime import UTC, datetime

    from shared.models import Order

    at = datetime(2024, 3, 4, 15, tzinfo=UTC)
    return Order(id=f"{symbol}-{kind}-{qty}", client_order_id=client_order_id or f"c-{symbol}-{kind}",
                 symbol=symbol, side="sell",
                 type=kind, order_class=order_class, time_in_force="gtc", status=status, qty=Decimal(qty),
                 stop_price=Decimal("95") if kind == "stop" else None,
                 limit_price=Decimal("120") if kind == "limit" else None, created_at=at, updated_at=at,
                 legs=list(legs))


def test_coverage_counts_open_sell_stops_only_and_flags_a_partial_cover():
    from services.ops.status import coverage
    from shared.models import Position

    position = Position(symbol="AAPL", qty=Decimal("10"), qty_available=Decimal("0"), avg_entry_price=Decimal("100"))
    assert not coverage(position, [order("AAPL", "limit", "10")]).protected  # a target alone stops no loss
    partial = coverage(position, [order("AAPL", "stop", "4"), order("AAPL", "stop", "6", status="canceled"),
                                  order("MSFT", "stop", "10")])
    assert (partial.covered, partial.protected) == (Decimal("4"), False)
    oco = order("AAPL", "limit", "10", order_class="oco", legs=(order("AAPL", "stop", "10", status="held"),))
    assert coverage(position, [oco]).covered == Decimal("10") and coverage(position, [oco]).protected


def test_coverage_counts_the_users_stops_marks_them_and_says_what_the_users_sells_hold():
    from services.ops.status import coverage
    from shared.models import Position

    position = Position(symbol="AAPL", qty=Decimal("10"), qty_available=Decimal("0"), avg_entry_price=Decimal("100"))
    ours = order("AAPL", "stop", "6", client_order_id="fl-20240304-AAPL-stop-r1")
    users_stop = order("AAPL", "stop", "4", client_order_id="my-stop")
    mixed = coverage(position, [ours, users_stop], "fl")
    assert (mixed.covered, mixed.protected, mixed.held_by_user) == (Decimal("10"), True, Decimal("4"))
    assert mixed.stops == ("gtc stop 6 @ 95", "gtc stop 4 @ 95 (user's)")
    # Another deployment's ids (another FL_NAMESPACE) are the user's too.
    assert coverage(position, [ours], "other").stops == ("gtc stop 6 @ 95 (user's)",)
    # A user's OCO holds its shares once (its stop leg and its limit hold the same 10).
    users_oco = order("AAPL", "limit", "10", order_class="oco", client_order_id="my-oco",
                      legs=(order("AAPL", "stop", "10", status="held", client_order_id="my-oco-stop"),))
    assert coverage(position, [users_oco], "fl").held_by_user == Decimal("10")
    # A user's limit sell holds shares and protects none.
    target = coverage(position, [order("AAPL", "limit", "3", client_order_id="my-target")], "fl")
    assert (target.covered, target.protected, target.held_by_user) == (Decimal("0"), False, Decimal("3"))


def test_a_short_position_is_never_protected_whatever_stops_it_has():
    from services.ops.status import coverage
    from shared.models import Position

    short = Position(symbol="AAPL", qty=Decimal("-5"), qty_available=Decimal("0"), avg_entry_price=Decimal("100"))
    cov = coverage(short, [order("AAPL", "stop", "5")], "fl")
    assert cov.short and not cov.protected and cov.covered == Decimal("0")
    assert not coverage(short, [], "fl").protected


def test_status_lists_the_users_orders_apart_and_counts_only_stops_as_protection(env, executor, sim, tmp_path):  # noqa: F811
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import LimitOrderRequest, StopOrderRequest

    ours = line_prefix(env["FL_NAMESPACE"])
    hold(executor, "AAPL", "10", protect=True, prefix=ours)
    hold(executor, "MSFT", "10", protect=False, prefix=ours)
    hold(executor, "NVDA", "10", protect=False, prefix=ours)
    by_hand = sim.trading_client()
    msft, nvda = (executor.get_position(s).avg_entry_price for s in ("MSFT", "NVDA"))
    by_hand.submit_order(StopOrderRequest(symbol="MSFT", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                          stop_price=float((msft * Decimal("0.9")).quantize(Decimal("0.01"))),
                                          client_order_id="my-msft-stop"))
    by_hand.submit_order(LimitOrderRequest(symbol="NVDA", qty=4, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
                                           limit_price=float((nvda * Decimal("1.5")).quantize(Decimal("0.01"))),
                                           client_order_id="my-nvda-target"))
    by_hand.submit_order(LimitOrderRequest(symbol="KO", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                           limit_price=1.0, client_order_id="my-ko-bid"))
    by_hand.submit_order(LimitOrderRequest(symbol="INTC", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                                           limit_price=1.0, client_order_id="other-20240304-INTC-entry"))

    result = run([*FACTORYLINE, "status"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr  # NVDA: a limit sell protects nothing
    aapl, msft_row, nvda_row = (status_row(result.stdout, s) for s in ("AAPL", "MSFT", "NVDA"))
    assert "covered" in aapl and "(user's)" not in aapl and "held by the user's" not in aapl
    assert "10/10" in msft_row and "covered" in msft_row and "(user's)" in msft_row
    assert "10 held by the user's orders" in msft_row
    assert "0/10" in nvda_row and "UNPROTECTED" in nvda_row and "4 held by the user's orders" in nvda_row
    assert "UNPROTECTED: NVDA:" in result.stdout
    users = section(result.stdout, USERS_SECTION)
    assert users[0].split() == ["symbol", "side", "type", "tif", "qty", "prices", "client", "order", "id"]
    rows = {line.split()[-1]: line.split() for line in users[2:]}
    assert set(rows) == {"my-msft-stop", "my-nvda-target", "my-ko-bid", "other-20240304-INTC-entry"}
    assert rows["my-nvda-target"][:5] == ["NVDA", "sell", "limit", "gtc", "4"]
    assert rows["my-msft-stop"][:5] == ["MSFT", "sell", "stop", "gtc", "10"]
    assert rows["my-ko-bid"][:6] == ["KO", "buy", "limit", "day", "3", "limit"]
    assert not any(ours in line for line in users)  # the line's own orders are not the user's


def go_short(sim, symbol: str, qty: str) -> None:  # noqa: F811
    """Put a short position in the simulator's book (it refuses to sell short, as the line never does;
    an account can still end up short by hand or by a broker-side event)."""
    sim.engine.set_holding(symbol, Decimal(qty), Decimal("50"))


def test_status_calls_a_short_position_an_alert_and_exits_1(env, executor, sim, tmp_path):  # noqa: F811
    hold(executor, "AAPL", "10", protect=True, prefix=line_prefix(env["FL_NAMESPACE"]))
    go_short(sim, "KO", "-5")
    assert executor.get_position("KO").qty == Decimal("-5")
    result = run([*FACTORYLINE, "status"], env, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SHORT: KO -5 shares: never expected; buy it back by hand" in result.stdout.splitlines()
    row = status_row(result.stdout, "KO")
    assert "SHORT" in row and "covered" not in row
    assert "covered" in status_row(result.stdout, "AAPL")
    assert "UNPROTECTED" not in result.stdout  # the short is named as what it is
