"""The manager's reconcile, ledger, lock, stream consumer and commands, against real Redis.

The broker side runs against the simulated market (`tests/simhelpers.py`): the same order rules
Alpaca enforces (shares held by open sells, OCO, fractional day-only), so a test that passes here
would not be refused by the real broker for a rule the simulator forgot.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import pytest
from conftest import redis_url
from simhelpers import NEW_YORK, SimHandle, start_sim

from services.manager.consumer import ConsumerOptions, TradeUpdateConsumer
from services.manager.daemon import Manager
from services.manager.settings import ManagerSettings
from services.manager.watch import parse, render
from shared import bus, ledger
from shared.broker import make_executor
from shared.exits import ExitReason, ExitRules
from shared.ledger import ClosedTrade
from shared.models import OrderClass, OrderStatus, OrderType, Side
from shared.positions import locks
from shared.protection import Trigger
from shared.trade_events import encode_entry
from sim.executor import trade_update_model

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
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
    # A killed process no longer extends its lock.
    assert locks.try_acquire(redis_client, keys, "AAPL", ttl_ms=200, keep_alive=False) is not None
    with locks.symbol_lock(redis_client, keys, "AAPL", wait_seconds=2.0):
        pass


def test_live_holder_keeps_its_lock_past_the_ttl_while_a_broker_call_is_slow(redis_client, keys):
    with locks.symbol_lock(redis_client, keys, "AAPL", ttl_ms=1500):
        time.sleep(2.5)  # longer than the TTL: only the keeper's extensions keep it
        assert locks.try_acquire(redis_client, keys, "AAPL", keep_alive=False) is None
    assert locks.try_acquire(redis_client, keys, "AAPL", keep_alive=False) is not None


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


def test_entries_written_long_ago_are_acknowledged_without_a_broker_call(redis_client, keys):
    called: list[list[str]] = []
    consumer = TradeUpdateConsumer(redis_client, keys, lambda symbols, updates: called.append(symbols) or {},
                                   ConsumerOptions(consumer="c1"))
    consumer.start()
    two_days_ago_ms = int((time.time() - 2 * 86400) * 1000)
    redis_client.xadd(keys.trade_updates, {"event_id": "x", "symbol": "AAPL", "update": "{}"},
                      id=f"{two_days_ago_ms}-0")
    result = consumer.poll(block_ms=0)
    assert result.acked == 1 and called == [] and redis_client.xlen(keys.dead_letters) == 0


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
    assert closed == "09:30:01  POSITION_CLOSED  AAPL   stop_loss: 10 sh 100 -> 95  P/L -50.00 (-5.00%)"
    # P/L in cents, half-up, signed: a fractional exit's exact -52.0065 and a gain.
    fractional = render(parse(json.dumps({"kind": "position_closed", "symbol": "AAPL", "exit_reason": "stop_loss",
                                          "qty": "10.5", "entry_price": "100.10", "exit_price": "95.147",
                                          "realized_pl": "-52.0065"})), at)
    assert fractional.endswith("P/L -52.01 (-4.95%)")
    gain = render(parse(json.dumps({"kind": "position_closed", "symbol": "NVDA", "exit_reason": "take_profit",
                                    "qty": "4", "realized_pl": "116.444"})), at)
    assert gain.endswith("P/L +116.44")
    # The broker's time when the notification carries it (the simulator's virtual 2024 here), not the
    # machine's; quantities always, a notional entry as its dollar amount.
    entry = render(parse(json.dumps({"kind": "entry_submitted", "symbol": "AAPL", "qty": None, "amount": "38800.00",
                                     "entry_kind": "notional", "client_order_id": "fl-20240304-AAPL-entry",
                                     "at": "2024-03-04T14:35:00.250000+00:00"})), at)
    assert entry == "09:35:00  ENTRY_SUBMITTED  AAPL   buy $38800.00 notional (notional)  (fl-20240304-AAPL-entry)"
    shares = render(parse(json.dumps({"kind": "entry_submitted", "symbol": "FUBO", "qty": "100", "amount": "244.00",
                                      "entry_kind": "qty", "client_order_id": "x"})), at)
    assert "buy 100 sh (qty)" in shares
    limit = render(parse(json.dumps({"kind": "risk_limit", "message": "risk limit: daily loss 3.17% of 3% TRIPPED",
                                     "limits": ["daily_loss"]})), at)
    assert limit == "09:30:01  RISK_LIMIT       -      risk limit: daily loss 3.17% of 3% TRIPPED"


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


# == against the simulated market ===========================================================================
#
# The manager's own objects (consumer, reconcile, Manager.protect) run in the test process; the broker is
# the simulator over HTTP through alpaca-py (AlpacaExecutor, the production adapter). Trade updates are fed
# to the stream the way the streamer writes them: `encode_entry` of the simulator's real updates.


RULES = ExitRules(stop_loss=D("0.05"), take_profit=D("0.2"), breakeven_arm=D("0.015"), trailing_arm=D("0.02"),
                  trailing_giveback=D("0.5"), time_stop=timedelta(days=7))


def levels(entry: Decimal) -> tuple[Decimal, Decimal]:
    """-5% rounded up (never looser), +20% rounded down, on the cent grid (prices here are above $1)."""
    return ((entry * D("0.95")).quantize(D("0.01"), ROUND_CEILING),
            (entry * D("1.2")).quantize(D("0.01"), ROUND_FLOOR))


class Desk:
    """A simulated broker, the manager wired to it, and the stream in between."""

    def __init__(self, sim: SimHandle, client, keys, **settings: object):
        self.sim, self.client, self.keys = sim, client, keys
        self.executor = make_executor(sim.broker_settings())
        self.updates: list = []
        self.published = 0
        sim.engine.subscribe(self.updates.append)
        self.stream_client = bus.connect(redis_url(), blocking=True)
        options = dict(FL_MANAGER_CONSUMER="m-test", FL_MANAGER_RETRY_SECONDS=0.01, FL_MANAGER_MAX_DELIVERIES=3)
        options.update(settings)
        self.manager = Manager(self.executor, client, self.stream_client, keys, RULES,
                               ManagerSettings(_env_file=None, **options))
        self.manager.consumer.start()

    def close(self) -> None:
        self.manager.close()
        self.executor.close()
        self.stream_client.close()

    def publish(self) -> list[str]:
        """What the streamer does: every new trade update into the stream, as `encode_entry`."""
        ids = [self.client.xadd(self.keys.trade_updates, encode_entry(trade_update_model(event)))
               for event in self.updates[self.published:]]
        self.published = len(self.updates)
        return ids

    def publish_again(self) -> None:
        for event in self.updates[:self.published]:
            self.client.xadd(self.keys.trade_updates, encode_entry(trade_update_model(event)))

    def step(self):
        self.publish()
        return self.manager.consumer.poll(block_ms=0)

    def buy(self, symbol: str, qty: str):
        return self.executor.buy_qty(symbol, D(qty), f"{self.keys.ns}-20240304-{symbol}-entry-{len(self.updates)}")

    def protection(self, symbol: str) -> list[tuple]:
        """The symbol's open sell orders as (class, remaining qty, stop, target, time in force)."""
        result = []
        for order in self.executor.get_open_orders(symbol):
            if order.side is not Side.SELL:
                continue
            stop_leg = next((leg for leg in order.legs if leg.type is OrderType.STOP), None)
            stop = stop_leg.stop_price if stop_leg else order.stop_price
            target = order.limit_price if order.order_class is OrderClass.OCO else None
            result.append((order.order_class.value, order.remaining_qty, stop, target, order.time_in_force.value))
        return sorted(result)

    def sells_ever_submitted(self, symbol: str) -> list[dict]:
        return [o for o in self.sim.control.state()["orders"] if o["symbol"] == symbol and o["side"] == "sell"]

    def refusals(self) -> list[dict]:
        return self.sim.control.state()["rejections"]

    def pending(self) -> int:
        return self.client.xpending(self.keys.trade_updates, "manager")["pending"]


@pytest.fixture
def market():
    """A fresh simulated market in this process's thread (frozen clock, Monday 10:00 New York, open)."""
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def desk(market, redis_client, keys):
    desk = Desk(market, redis_client, keys)
    yield desk
    desk.close()


def test_entry_fill_is_protected_by_one_oco_at_minus_5_and_plus_20_percent_of_the_average_entry(desk):
    desk.buy("AAPL", "10")
    desk.step()
    entry = desk.executor.get_position("AAPL").avg_entry_price
    stop, target = levels(entry)
    assert desk.protection("AAPL") == [("oco", D("10"), stop, target, "gtc")]
    assert desk.pending() == 0


def test_protective_client_order_id_carries_the_brokers_date_of_the_entry_not_the_wall_clock(desk):
    desk.buy("AAPL", "10")
    desk.step()
    broker_day = desk.executor.get_clock().timestamp.astimezone(NEW_YORK).strftime("%Y%m%d")
    (oco,) = desk.executor.get_open_orders("AAPL")
    assert f"-{broker_day}-AAPL-oco-r" in oco.client_order_id


def test_second_fill_event_for_same_order_places_no_new_orders(desk):
    desk.buy("AAPL", "10")
    desk.step()
    (fill,) = [fields for _id, fields in desk.client.xrange(desk.keys.trade_updates) if fields["event"] == "fill"]
    desk.client.xadd(desk.keys.trade_updates, fill)
    desk.client.xadd(desk.keys.trade_updates, fill)
    result = desk.step()
    assert result.skipped_duplicates == 2 and desk.pending() == 0
    assert len(desk.sells_ever_submitted("AAPL")) == 1
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("10"))]


def test_fill_whose_shares_a_users_sell_already_holds_leaves_that_sell_alone(desk):
    desk.buy("AAPL", "10")
    # Before the manager sees the fill, the user places a stop for 4 of the shares by hand.
    hand = desk.executor.submit_protective_exit("AAPL", D("4"), D("150.00"), None, f"{desk.keys.ns}-by-hand")
    desk.step()
    # The fill alone says nothing of the user's order: the OCO for 10 is refused (insufficient qty),
    # the broker is read, and the line protects the 6 the user's stop does not hold.
    assert hand.id not in [o["id"] for o in desk.sells_ever_submitted("AAPL") if o["status"] == "canceled"]
    assert sorted(p[:2] for p in desk.protection("AAPL")) == [("oco", D("6")), ("simple", D("4"))]
    assert desk.pending() == 0


def test_same_fill_twice_in_one_batch_gives_one_protective_set(desk):
    desk.buy("MSFT", "4")
    desk.publish()
    desk.publish_again()  # e.g. a dead replica's copy claimed while the live one is read
    desk.manager.consumer.poll(block_ms=0)
    assert len(desk.sells_ever_submitted("MSFT")) == 1
    assert [p[:2] for p in desk.protection("MSFT")] == [("oco", D("4"))]


def test_partial_entry_fill_is_protected_for_the_filled_shares_then_for_the_whole_position(desk):
    desk.sim.engine.partial_fill_next("AAPL", D("0.3"))
    entry = desk.buy("AAPL", "10")
    desk.step()
    assert desk.executor.get_position("AAPL").qty == D("3")
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("3"))]
    # The entry is still working and untouched by the reconcile.
    assert desk.executor.get_order_by_client_id(entry.client_order_id).status is OrderStatus.PARTIALLY_FILLED
    desk.sim.control.fill(entry.id)
    desk.step()
    position = desk.executor.get_position("AAPL")
    stop, target = levels(position.avg_entry_price)
    assert position.qty == D("10")
    assert desk.protection("AAPL") == [("oco", D("10"), stop, target, "gtc")]
    assert desk.refusals() == []
    assert desk.pending() == 0


def test_fractional_remainder_waits_for_the_entry_to_finish_then_gets_a_day_stop(desk, caplog):
    desk.sim.engine.partial_fill_next("NVDA", D("0.3"))
    entry = desk.buy("NVDA", "10.5")
    with caplog.at_level(logging.WARNING):
        desk.step()
    # 3.15 held: the OCO covers the 3 whole shares; a plain stop for 0.15 would face the still-open
    # market buy (Alpaca's wash-trade rule), so it waits for the entry's last fill.
    assert [p[:2] for p in desk.protection("NVDA")] == [("oco", D("3"))]
    assert any(r.getMessage() == "protection_deferred" for r in caplog.records)
    assert desk.pending() == 0
    desk.sim.control.fill(entry.id)
    desk.step()
    position = desk.executor.get_position("NVDA")
    stop, target = levels(position.avg_entry_price)
    assert desk.protection("NVDA") == [("oco", D("10"), stop, target, "gtc"), ("simple", D("0.5"), stop, None, "day")]


def test_fractional_day_stop_expired_at_the_close_is_rearmed_by_the_timer_reconcile(desk):
    desk.buy("AMZN", "2.5")
    desk.step()
    assert [p[:2] for p in desk.protection("AMZN")] == [("oco", D("2")), ("simple", D("0.5"))]
    desk.sim.engine.advance_to(datetime(2024, 3, 4, 16, 1, tzinfo=NEW_YORK))
    # The day stop expired with the session; the expiry event is not delivered (missed), the timer runs.
    assert [p[:2] for p in desk.protection("AMZN")] == [("oco", D("2"))]
    reports = desk.manager.reconcile_all(Trigger.TIMER)
    assert reports["AMZN"].placed and reports["AMZN"].error is None
    assert [p[:2] for p in desk.protection("AMZN")] == [("oco", D("2")), ("simple", D("0.5"))]
    desk.sim.engine.advance_to(datetime(2024, 3, 5, 9, 31, tzinfo=NEW_YORK))
    (stop,) = [o for o in desk.executor.get_open_orders("AMZN") if o.order_class is OrderClass.SIMPLE]
    assert stop.status is OrderStatus.NEW  # working in the new session


def test_position_opened_by_hand_is_adopted_protected_and_reported_loudly(desk, caplog):
    pubsub = desk.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(desk.keys.notifications)
    desk.buy("TSLA", "3")  # its fill never reaches the stream: nobody told the manager
    with caplog.at_level(logging.WARNING):
        reports = desk.manager.reconcile_all(Trigger.START)
    assert reports["TSLA"].adopted
    assert [p[:2] for p in desk.protection("TSLA")] == [("oco", D("3"))]
    fixes = [r for r in caplog.records if r.getMessage() == "reconcile_fix" and r.levelno == logging.WARNING]
    assert any(r.fields["symbol"] == "TSLA" and r.fields["action"] == "position_adopted" for r in fixes)
    kinds = {_next_message(pubsub)["kind"] for _ in range(2)}
    assert "reconcile_fix" in kinds and "protected" in kinds


def test_missing_protection_is_rearmed_and_a_stray_sell_of_ours_canceled_by_reconcile_all(desk):
    desk.buy("AAPL", "10")
    desk.step()
    (oco,) = [o for o in desk.executor.get_open_orders("AAPL") if o.side is Side.SELL]
    desk.executor.cancel_order(oco.id)  # someone canceled the protection by hand
    # A sell under the line's own id form that is not the desired protection (e.g. an old revision).
    stray = desk.executor.submit_protective_exit("AAPL", D("4"), D("150.00"), None,
                                                 f"{desk.keys.ns}-20240304-AAPL-stop-r99")
    reports = desk.manager.reconcile_all(Trigger.TIMER)
    assert stray.id in reports["AAPL"].canceled
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("10"))]
    assert desk.refusals() == []


def test_stop_fill_closes_the_position_into_the_ledger_once_as_a_stop_loss(desk):
    desk.buy("AAPL", "10")
    desk.step()
    position = desk.executor.get_position("AAPL")
    stop, _target = levels(position.avg_entry_price)
    desk.sim.control.set_price("AAPL", stop - D("1"))
    desk.step()
    assert desk.executor.get_position("AAPL") is None
    (trade,) = ledger.read(desk.client, desk.keys)
    assert trade.exit_reason is ExitReason.STOP_LOSS and trade.qty == D("10")
    assert trade.entry_price == position.avg_entry_price
    assert trade.realized_pl == (trade.exit_price - trade.entry_price) * 10 < 0
    assert desk.client.get(desk.keys.position_state("AAPL")) is None
    # Replaying every update and a full reconcile adds nothing.
    desk.publish_again()
    desk.manager.consumer.poll(block_ms=0)
    desk.manager.reconcile_all(Trigger.TIMER)
    assert len(ledger.read(desk.client, desk.keys)) == 1
    assert desk.executor.get_open_orders("AAPL") == []


def test_target_fill_is_recorded_as_take_profit_with_its_gain(desk):
    desk.buy("MSFT", "5")
    desk.step()
    _stop, target = levels(desk.executor.get_position("MSFT").avg_entry_price)
    desk.sim.control.set_price("MSFT", target + D("1"))
    desk.step()
    (trade,) = ledger.read(desk.client, desk.keys)
    assert trade.exit_reason is ExitReason.TAKE_PROFIT and trade.qty == D("5")
    assert trade.exit_price >= target and trade.realized_pl > 0
    assert trade.entry_client_order_id and trade.protective_client_order_id


def test_fill_event_is_acknowledged_only_after_the_broker_accepted_the_protection(desk):
    desk.buy("AAPL", "10")
    # Both the shortcut from the fill and the full reconcile behind it get a 500 on their order.
    desk.sim.control.fail_requests(2, 500, path_prefix="/v2/orders", method="POST")
    first = desk.step()
    assert first.failed == 1 and desk.pending() == 1
    assert desk.protection("AAPL") == []
    time.sleep(0.05)
    desk.manager.consumer.poll(block_ms=0)
    assert desk.pending() == 0
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("10"))]


def test_protective_order_created_although_the_answer_was_lost_is_not_sent_twice(desk):
    desk.buy("AAPL", "10")
    # The broker creates the OCO, then answers 500: the manager looks the client order id up.
    desk.sim.control.fail_requests(1, 500, path_prefix="/v2/orders", method="POST", when="after")
    desk.step()
    assert desk.pending() == 0
    assert len(desk.sells_ever_submitted("AAPL")) == 1
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("10"))]


def test_update_that_keeps_failing_goes_to_dead_letters_with_an_error_and_an_alert(desk, caplog):
    pubsub = desk.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(desk.keys.notifications)
    desk.buy("AAPL", "10")
    desk.sim.control.fail_requests(50, 503, path_prefix="/v2/orders", method="POST")
    with caplog.at_level(logging.WARNING):
        desk.step()
        deadline = time.monotonic() + 10
        while not desk.client.xlen(desk.keys.dead_letters) and time.monotonic() < deadline:
            desk.manager.consumer.poll(block_ms=10)
    (_id, dead), = desk.client.xrange(desk.keys.dead_letters)
    assert dead["symbol"] == "AAPL" and dead["event"] == "fill" and dead["deliveries"] == "3"
    assert "BrokerUnavailable" in dead["reason"]
    assert desk.pending() == 0
    assert any(r.getMessage() == "trade_update_dead_lettered" and r.levelno == logging.ERROR for r in caplog.records)
    kinds = [_next_message(pubsub)["kind"]]
    while kinds[-1] == "protection_failed":  # each failed attempt says so first (the notifier sends it)
        kinds.append(_next_message(pubsub)["kind"])
    assert kinds[-1] == "alert" and "protection_failed" in kinds
    # The position is still covered: the timer reconcile looks at every position.
    desk.sim.control.clear_faults()
    desk.manager.reconcile_all(Trigger.TIMER)
    assert [p[:2] for p in desk.protection("AAPL")] == [("oco", D("10"))]


def test_reconcile_command_protects_an_unprotected_position_and_then_finds_nothing_to_do(market, redis_client, keys):
    sim = market
    executor = make_executor(sim.broker_settings())
    executor.buy_qty("AAPL", D("6"), f"{keys.ns}-hand")
    env = _env(FL_NAMESPACE=keys.ns, REDIS_URL=redis_url(), **sim.broker_env())
    first = subprocess.run(factoryline("reconcile"), cwd=ROOT, env=env, text=True, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    # Bought by hand: protected by a plain stop 5% under the price it has now, no target.
    assert "AAPL: position 6, adopted" in first.stdout and "placed simple 6" in first.stdout
    second = subprocess.run(factoryline("reconcile", "--symbol", "aapl"), cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "AAPL: position 6, kept 1 protective order(s)" in second.stdout
    assert len([o for o in executor.get_open_orders("AAPL") if o.side is Side.SELL]) == 1
    executor.close()


def test_manager_check_against_the_simulator_exits_0_with_one_ok_line(market, keys):
    proc = subprocess.run([sys.executable, "-m", "services.manager", "--check"], cwd=ROOT, text=True,
                          capture_output=True, timeout=60,
                          env=_env(FL_NAMESPACE=keys.ns, REDIS_URL=redis_url(), FL_MANAGER_CONSUMER="m7",
                                   **market.broker_env()))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("manager: ok:") and "consumer m7" in proc.stdout
    assert market.api_key not in proc.stdout + proc.stderr


def test_pipelined_consumer_reads_the_next_entries_while_a_batch_is_at_the_broker_up_to_its_bound(redis_client, keys):
    from test_streamer import _update

    from shared.trade_events import encode_entry

    release = threading.Event()
    called: list[list[str]] = []

    def slow_handler(symbols, updates):
        called.append(symbols)
        release.wait(10)  # the broker is slow to answer
        return dict.fromkeys(symbols)

    consumer = TradeUpdateConsumer(redis_client, keys, slow_handler, ConsumerOptions(consumer="c1", max_in_flight=2))
    consumer.start()
    try:
        for i in range(3):
            update = _update("fill", oid=f"o-{i}")
            update = update.model_copy(update={"order": update.order.model_copy(update={"symbol": f"S{i}"})})
            redis_client.xadd(keys.trade_updates, encode_entry(update))
            first = consumer.poll(block_ms=0, pipelined=True)
            assert first.acked == 0  # nothing is acknowledged before the broker answered
        deadline = time.monotonic() + 5
        while len(called) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Two batches at the broker at once; the third entry waits (the bound), unread.
        assert called == [["S0"], ["S1"]]
        assert redis_client.xpending(keys.trade_updates, "manager")["pending"] == 2
        release.set()
        done = consumer.poll(block_ms=0)  # not pipelined: finished when it returns
        done = _merge_results(done, consumer.drain())
        assert sorted(s for batch in called for s in batch) == ["S0", "S1", "S2"]
        assert redis_client.xpending(keys.trade_updates, "manager")["pending"] == 0
    finally:
        release.set()
        consumer.close()


def _merge_results(a, b):
    from services.manager.consumer import _merge

    return _merge(a, b)
