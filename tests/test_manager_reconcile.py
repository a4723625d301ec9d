"""The manager's reconcile, ledger, lock, stream consumer and commands, against real Redis.

The broker side runs against the simulated market (`tests/simhelpers.py`): the same order rules
Alpaca enforces (shares held by open sells, OCO, fractional day-only), so a test that passes here
would not be refused by the real broker for a rule the simulator forgot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from conftest import redis_url

from services.manager import ledger, locks
from services.manager.consumer import ConsumerOptions, TradeUpdateConsumer
from services.manager.ledger import ClosedTrade
from services.manager.watch import parse, render
from shared import bus
from shared.exits import ExitReason

D = Decimal
ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


def _trade(closing_order_id: str = "ord-1", **kw) -> ClosedTrade:
    fields = dict(symbol="AAPL", qty=D("10"), entry_price=D("100"), exit_price=D("95"),
                  exit_reason=ExitReason.STOP_LOSS, opened_at=T0, closed_at=T0,
                  closing_order_id=closing_order_id, closing_client_order_id="leg-1")
    fields.update(kw)
    return ClosedTrade.of(**fields)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(extra)
    return env


#: Runs `factoryline ...` through services.cli.main. The manager's commands are registered here in
#: case services/cli.py's COMMANDS does not list them yet (a no-op once it does).
_FACTORYLINE = (
    "import sys; from services import cli; "
    "cli.COMMANDS.setdefault('reconcile', ('services.manager.cli', 'reconcile')); "
    "cli.COMMANDS.setdefault('watch', ('services.manager.cli', 'watch')); "
    "sys.exit(cli.main(sys.argv[1:]))"
)


def factoryline(*args: str) -> list[str]:
    return [sys.executable, "-c", _FACTORYLINE, *args]


# -- ledger ------------------------------------------------------------------------------------------


def test_closed_trade_realized_pl_is_exit_minus_entry_times_qty_in_decimal():
    trade = _trade(qty=D("10.5"), entry_price=D("100.10"), exit_price=D("95.10"))
    assert trade.realized_pl == D("-52.500")
    assert isinstance(trade.realized_pl, Decimal)


def test_same_closing_order_is_written_to_the_ledger_once(redis_client, keys):
    assert ledger.append_once(redis_client, keys, _trade("ord-1")) is True
    assert ledger.append_once(redis_client, keys, _trade("ord-1")) is False
    assert ledger.append_once(redis_client, keys, _trade("ord-2", exit_reason=ExitReason.TAKE_PROFIT,
                                                         exit_price=D("120"))) is True
    trades = ledger.read(redis_client, keys)
    assert [(t.closing_order_id, t.exit_reason, t.realized_pl) for t in trades] == [
        ("ord-1", ExitReason.STOP_LOSS, D("-50")), ("ord-2", ExitReason.TAKE_PROFIT, D("200"))]


def test_ledger_writers_racing_on_one_closing_order_write_it_once(redis_client, keys):
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(ledger.append_once(redis_client, keys, _trade())))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert len(ledger.read(redis_client, keys)) == 1


# -- symbol lock -------------------------------------------------------------------------------------


def test_symbol_lock_admits_one_holder_and_only_the_holder_releases_it(redis_client, keys):
    first = locks.try_acquire(redis_client, keys, "AAPL")
    assert first is not None
    assert locks.try_acquire(redis_client, keys, "AAPL") is None
    assert locks.try_acquire(redis_client, keys, "MSFT") is not None
    assert locks.release(redis_client, keys, "AAPL", "someone-elses-token") is False
    assert locks.try_acquire(redis_client, keys, "AAPL") is None
    assert locks.release(redis_client, keys, "AAPL", first) is True
    assert locks.try_acquire(redis_client, keys, "AAPL") is not None


def test_waiting_for_a_busy_symbol_gives_up_with_a_one_line_error(redis_client, keys):
    assert locks.try_acquire(redis_client, keys, "AAPL") is not None
    try:
        with locks.symbol_lock(redis_client, keys, "AAPL", wait_seconds=0.05):
            raise AssertionError("the lock was held by another")
    except locks.SymbolBusy as exc:
        assert "AAPL" in str(exc) and "\n" not in str(exc)


def test_lock_of_a_killed_holder_expires_on_its_own(redis_client, keys):
    assert locks.try_acquire(redis_client, keys, "AAPL", ttl_ms=50) is not None
    with locks.symbol_lock(redis_client, keys, "AAPL", wait_seconds=2.0):
        pass


# -- consumer plumbing that needs no broker -----------------------------------------------------------


def test_undecodable_entry_goes_to_dead_letters_with_an_alert_and_is_acknowledged(redis_client, keys):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.notifications)
    called: list[list[str]] = []
    consumer = TradeUpdateConsumer(redis_client, keys, lambda symbols, updates: called.append(symbols) or {},
                                   ConsumerOptions(consumer="c1"))
    consumer.start()
    entry_id = redis_client.xadd(keys.trade_updates, {"event_id": "x", "symbol": "AAPL", "update": "{not json"})
    result = consumer.poll(block_ms=0)
    assert result.dead_lettered == 1 and called == []
    (dead_id, dead), = redis_client.xrange(keys.dead_letters)
    assert dead["entry_id"] == entry_id and dead["symbol"] == "AAPL" and "undecodable" in dead["reason"]
    assert redis_client.xpending(keys.trade_updates, "manager")["pending"] == 0
    alert = _next_message(pubsub)
    assert alert["kind"] == "alert" and entry_id in alert["message"]


def _next_message(pubsub, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            return json.loads(message["data"])
    raise AssertionError("no notification published")


# -- watch ---------------------------------------------------------------------------------------------


def test_watch_renders_protection_and_exit_notifications_as_one_readable_line():
    at = datetime(2026, 11, 24, 14, 30, 1, tzinfo=UTC)  # 09:30:01 in New York
    protected = render(parse(json.dumps({"kind": "protected", "symbol": "AAPL", "qty": "10", "stop_price": "95.00",
                                         "target_price": "120.00", "order_class": "oco"})), at)
    assert protected == "09:30:01  PROTECTED        AAPL   10 sh stop 95.00 target 120.00 (oco)"
    closed = render(parse(json.dumps({"kind": "position_closed", "symbol": "AAPL", "exit_reason": "stop_loss",
                                      "qty": "10", "entry_price": "100", "exit_price": "95",
                                      "realized_pl": "-50"})), at)
    assert closed == "09:30:01  POSITION_CLOSED  AAPL   stop_loss: 10 sh 100 -> 95  P/L -50"


def test_watch_shows_unknown_kinds_and_non_json_payloads_without_crashing():
    at = datetime(2026, 11, 24, 14, 30, 1, tzinfo=UTC)
    assert render(parse('{"kind": "halted", "by": "ops"}'), at).endswith("HALTED           -      by=ops")
    garbage = render(parse("not json\x1b[2J"), at)
    assert "TEXT" in garbage and "not json" in garbage and "\x1b" not in garbage


def test_watch_command_prints_one_line_per_notification(redis_client, keys):
    proc = subprocess.Popen(factoryline("watch", "--count", "2"), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(FL_NAMESPACE=keys.ns, REDIS_URL=redis_url()))
    try:
        deadline = time.monotonic() + 20
        while redis_client.pubsub_numsub(keys.notifications)[0][1] == 0:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        bus.publish(redis_client, keys, "protected", symbol="AAPL", qty="3", stop_price="95.00",
                    target_price="120.00", order_class="oco")
        bus.publish(redis_client, keys, "alert", symbol="MSFT", message="trade update moved to dead letters")
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    lines = out.strip().splitlines()
    assert proc.returncode == 0, err
    assert len(lines) == 2
    assert "PROTECTED" in lines[0] and "AAPL" in lines[0] and "stop 95.00 target 120.00" in lines[0]
    assert "ALERT" in lines[1] and "MSFT" in lines[1] and "dead letters" in lines[1]


def test_reconcile_command_without_broker_keys_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(factoryline("reconcile"), cwd=ROOT, text=True,
                          capture_output=True, env=_env(FL_ENV_FILE=str(tmp_path / "missing.env")), timeout=60)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "factoryline: error" in proc.stderr


def test_manager_check_with_bad_setting_exits_2_with_one_line_naming_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "services.manager", "--check"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=60,
                          env=_env(PYTHONPATH=str(ROOT), ALPACA_API_KEY="k", ALPACA_SECRET_KEY="s",
                                   FL_MANAGER_MAX_DELIVERIES="0"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "FL_MANAGER_MAX_DELIVERIES" in proc.stderr
