"""Notifications through Apprise (services/notifier), against real local receivers: an HTTP server
on 127.0.0.1 reached through Apprise's `json://`, and an SMTP server (aiosmtpd) through `mailto://`,
with the real Redis of the other tests."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import redis_url

from services import cli
from services.notifier import daemon, watchdog
from services.notifier.daemon import Notifier
from services.notifier.sender import Sender
from services.notifier.settings import NotifySettings
from shared import bus, logs

SECRET = "hookpw-9f3Kq27ZxLmN"  # the webhook's password in its URL: never printed or logged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook on 127.0.0.1:`port` that keeps every JSON body Apprise posts; `start`/`stop` at will."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"json://fl:{SECRET}@127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                receiver.auth.append(self.headers.get("Authorization", ""))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> str:
        return "\n".join(f"{b.get('title')}\n{b.get('message')}" for b in self.bodies)

    def wait(self, count: int, timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def receiver():
    handle = Receiver().start()
    yield handle
    handle.stop()


def settings(urls: str, **overrides) -> NotifySettings:
    values = {"FL_NOTIFY_URLS": urls, "FL_NOTIFY_GROUP_SECONDS": 0.2, "FL_NOTIFY_RETRIES": 2,
              "FL_NOTIFY_RETRY_SECONDS": 0.2, "FL_NOTIFY_MAX_PER_MINUTE": 100, **overrides}
    return NotifySettings(**{k: str(v) for k, v in values.items()})


class Running:
    """A Notifier in a thread, on its own blocking connection, stopped at the end."""

    def __init__(self, keys, notify_settings: NotifySettings, **kwargs):
        self.client = bus.connect(redis_url(), blocking=True)
        self.notifier = Notifier(self.client, keys, notify_settings, **kwargs)
        self.notifier.ensure_group()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.notifier.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Notifier:
        self.thread.start()
        return self.notifier

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.close()


def pending(redis_client, keys) -> int:
    return redis_client.xpending(keys.notification_stream, daemon.GROUP)["pending"]


# -- the channel ----------------------------------------------------------------------------------------


def test_publish_appends_every_kind_to_the_capped_stream_and_still_reaches_watchers(redis_client, keys):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.notifications)
    pubsub.get_message(timeout=1)
    pipe = redis_client.pipeline(transaction=False)
    bus.publish(pipe, keys, "protected", symbol="AAPL", qty=3)  # inside a caller's pipeline too
    pipe.execute()
    bus.publish(redis_client, keys, "some_future_kind", detail="x")
    entries = redis_client.xrange(keys.notification_stream)
    assert [(f["kind"], json.loads(f["data"])["kind"]) for _, f in entries] == [
        ("protected", "protected"), ("some_future_kind", "some_future_kind")]
    assert json.loads(pubsub.get_message(timeout=1)["data"])["symbol"] == "AAPL"
    pubsub.close()


def test_every_event_type_reaches_the_webhook(redis_client, keys, receiver):
    failed_registry = f"rq:failed:{keys.queue('trader')}"
    old = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
    notify = settings(receiver.url, FL_NOTIFY_EVENTS="all", FL_NOTIFY_UNPROTECTED_SECONDS=0.5,
                      FL_NOTIFY_STREAMER_DOWN_SECONDS=1)
    with Running(keys, notify) as notifier:
        time.sleep(0.3)  # the watchdog's first look: what is already there is known, not news
        redis_client.zadd(failed_registry, {f"{keys.ns}-sched-trade-20261124-0935": time.time()})
        redis_client.xadd(keys.dead_letters, {"symbol": "MSFT", "reason": "undecodable", "entry_id": "1-0"})
        redis_client.hset(keys.streamer_health, mapping={"role": "leader", "connected": "no",
                                                         "disconnected_at": old, "heartbeat_at": old})
        publish = lambda kind, **f: bus.publish(redis_client, keys, kind, **f)  # noqa: E731
        publish("trade_update", event="fill", symbol="AAPL", client_order_id=f"{keys.ns}-20261124-AAPL-entry",
                filled_qty="10", price="187.20")
        publish("trade_update", event="fill", symbol="TSLA", client_order_id=f"{keys.ns}-20261124-TSLA-entry",
                filled_qty="2", price="250")
        publish("protected", symbol="AAPL", qty="10", stop_price="177.84", target_price="224.64")
        publish("protection_failed", symbol="NVDA", message="NVDA: protection not placed: OrderRejected")
        publish("position_closed", symbol="AMD", exit_reason="stop_loss", qty="5", entry_price="100",
                exit_price="95", realized_pl="-25")
        publish("exit_failed", symbol="AMD", exit_reason="trailing", reason="refused", reprotected=False)
        publish("risk_limit", message="risk limit: daily loss 3.2% >= 3%")
        publish("halted", message="halt flag set: by hand")
        publish("report_written", report_date="2026-11-24", equity="201234.56", positions=3, closed_trades=1,
                realized_pl="-25")
        expected = ["ENTRY_FILLED AAPL bought 10 @ 187.20", "PROTECTED AAPL", "PROTECTION_FAILED NVDA",
                    "POSITION_CLOSED AMD stop_loss: 5 sh 100 -> 95, P/L -25.00", "EXIT_FAILED AMD",
                    "RISK_LIMIT", "HALTED", "REPORT_WRITTEN 2026-11-24: equity 201234.56, 3 open positions, 1 closed trades, realized P/L -25.00",
                    "JOB_FAILED", "DEAD_LETTER MSFT", "STREAMER_DISCONNECTED", "UNPROTECTED TSLA"]
        deadline = time.monotonic() + 8
        while any(e not in receiver.text() for e in expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e for e in expected if e not in receiver.text()] == []
        assert "UNPROTECTED AAPL" not in receiver.text()  # protected in time
        redis_client.hset(keys.streamer_health, mapping={"connected": "yes",
                                                         "heartbeat_at": datetime.now(UTC).isoformat()})
        deadline = time.monotonic() + 5
        while "STREAMER_RECONNECTED" not in receiver.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "STREAMER_RECONNECTED" in receiver.text()
    assert receiver.auth and all(a.startswith("Basic ") for a in receiver.auth)
    assert pending(redis_client, keys) == 0 and notifier.messages_sent == len(receiver.bodies)


def test_a_burst_becomes_one_message(redis_client, keys, receiver):
    with Running(keys, settings(receiver.url, FL_NOTIFY_GROUP_SECONDS=1.0)):
        for i in range(12):
            bus.publish(redis_client, keys, "halted" if i == 0 else "risk_limit", message=f"event {i}")
        receiver.wait(1)
        time.sleep(1.2)
    assert len(receiver.bodies) == 1
    assert receiver.bodies[0]["title"] == "Factory Line: 12 events (halted, risk_limit)"
    assert receiver.bodies[0]["message"].count("\n") == 11


def test_the_rate_limit_holds_messages_back_and_merges_what_waits(redis_client, keys, receiver):
    notify = settings(receiver.url, FL_NOTIFY_GROUP_SECONDS=0.05, FL_NOTIFY_MAX_PER_MINUTE=2)
    with Running(keys, notify, rate_window=2.0):
        for i in range(5):
            bus.publish(redis_client, keys, "halted", message=f"halt {i}")
            time.sleep(0.25)
        assert len(receiver.bodies) == 2  # the limit: 2 per window
        receiver.wait(3, timeout=4)
    assert len(receiver.bodies) == 3  # the rest waited, then went as one message
    assert receiver.bodies[2]["message"] == "HALTED halt 2\nHALTED halt 3\nHALTED halt 4"


def test_events_not_chosen_are_acknowledged_and_not_sent(redis_client, keys, receiver):
    with Running(keys, settings(receiver.url)):  # the default events
        bus.publish(redis_client, keys, "protected", symbol="AAPL", qty="1")
        bus.publish(redis_client, keys, "signals_ranked", kept=3)
        time.sleep(0.6)
    assert receiver.bodies == [] and pending(redis_client, keys) == 0


# -- the receiver down ----------------------------------------------------------------------------------


def test_receiver_down_trading_goes_on_and_the_message_arrives_when_it_is_back(redis_client, keys):
    receiver = Receiver()  # not listening yet
    notify = settings(receiver.url, FL_NOTIFY_RETRIES=4, FL_NOTIFY_RETRY_SECONDS=0.3)
    try:
        with Running(keys, notify):
            started = time.perf_counter()
            for i in range(20):
                bus.publish(redis_client, keys, "position_closed", symbol=f"S{i}", exit_reason="take_profit",
                            realized_pl="10")
            assert time.perf_counter() - started < 0.5  # publishing never waits for a send
            time.sleep(0.8)  # first attempts fail
            receiver.start()
            receiver.wait(1, timeout=8)
        assert len(receiver.bodies) == 1 and "20 events" in receiver.bodies[0]["title"]
        assert redis_client.xlen(keys.notify_failed) == 0 and pending(redis_client, keys) == 0
    finally:
        receiver.stop()


def test_receiver_down_after_the_retries_is_recorded_failed_with_the_secret_masked(redis_client, keys, caplog):
    receiver = Receiver()  # never listening
    notify = settings(receiver.url, FL_NOTIFY_RETRIES=1, FL_NOTIFY_RETRY_SECONDS=0.1)
    with caplog.at_level(logging.INFO), Running(keys, notify):
        bus.publish(redis_client, keys, "risk_limit", message="risk limit: drawdown 15.5% >= 15%")
        deadline = time.monotonic() + 8
        while not redis_client.xlen(keys.notify_failed) and time.monotonic() < deadline:
            time.sleep(0.05)
    (_, record), = redis_client.xrange(keys.notify_failed)
    assert record["kinds"] == "risk_limit" and record["attempts"] == "2" and "drawdown" in record["body"]
    assert record["url"] == f"json://fl:****@127.0.0.1:{receiver.port}/hook"
    assert json.loads(record["entry_ids"]) and pending(redis_client, keys) == 0
    errors = [r for r in caplog.records if r.getMessage() == "notification_failed"]
    assert errors and errors[0].levelno == logging.ERROR
    assert SECRET not in caplog.text and SECRET[:8] not in caplog.text
    assert SECRET not in json.dumps(record)


def test_a_restarted_notifier_sends_what_the_previous_one_left_pending(redis_client, keys, receiver):
    client = bus.connect(redis_url())
    first = Notifier(client, keys, settings(receiver.url))
    first.ensure_group()
    bus.publish(redis_client, keys, "halted", message="before the crash")
    first.read()  # its own pending entries first: none
    assert first.read(block_ms=100) == 1  # read, then "crashed" before sending: the entry stays pending
    assert pending(redis_client, keys) == 1
    with Running(keys, settings(receiver.url)):
        receiver.wait(1)
    client.close()
    assert "before the crash" in receiver.text() and pending(redis_client, keys) == 0


# -- URLs, secrets, the test command ----------------------------------------------------------------


def test_urls_split_on_commas_and_whitespace_and_empty_means_nothing_to_send(redis_client, keys):
    assert settings("json://a:b@h/x,  mailto://h?to=a@b.c\n json://c@h/y").urls == [
        "json://a:b@h/x", "mailto://h?to=a@b.c", "json://c@h/y"]
    empty = NotifySettings(FL_NOTIFY_URLS="  ")
    assert empty.urls == [] and empty.FL_NOTIFY_URLS is None
    bus.publish(redis_client, keys, "halted", message="nobody listens")  # nothing fails


def test_every_secret_part_of_a_url_is_masked_in_logs(caplog):
    NotifySettings(FL_NOTIFY_URLS="tgram://123456789:AAH-example-tokenQx7/987654321")
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").warning("sending via tgram://123456789:AAH-example-tokenQx7/987654321 "
                                          "token AAH-example-tokenQx7")
    assert "example-token" not in caplog.text and "123456789:AAH" not in caplog.text
    assert logs.redact("tgram://123456789:AAH-example-tokenQx7/987654321") == "***"


def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self):
            super().__init__()
            self.messages = []

        def handle_message(self, message):
            self.messages.append(message)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller, inbox


def test_notify_test_sends_to_every_url_and_prints_each_result_masked(clean_env, receiver, capsys):
    controller, inbox = smtp_server()
    try:
        mail = (f"mailto://127.0.0.1:{controller.port}?smtp=127.0.0.1&mode=insecure"
                "&from=line@example.com&to=trader@example.com")
        clean_env.setenv("FL_NOTIFY_URLS", f"{receiver.url}, {mail}")
        assert cli.main(["notify", "--test"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == [f"notify: ok: json://fl:****@127.0.0.1:{receiver.port}/hook",
                       f"notify: ok: mailto://127.0.0.1:{controller.port}/trader@example.com"] or (
            len(out) == 2 and out[1].startswith("notify: ok: mailto://")), out
        assert receiver.bodies[0]["title"] == "Factory Line: test"
        assert len(inbox.messages) == 1 and inbox.messages[0]["Subject"] == "Factory Line: test"
        assert inbox.messages[0]["To"] == "trader@example.com"

        down = Receiver()
        clean_env.setenv("FL_NOTIFY_URLS", f"{receiver.url} {down.url}")
        assert cli.main(["notify", "--test"]) == 1
        out = capsys.readouterr().out
        assert out.splitlines()[0].startswith("notify: ok: json://")
        assert out.splitlines()[1].startswith(f"notify: FAILED: json://fl:****@127.0.0.1:{down.port}/hook: ")
        assert SECRET not in out and SECRET[:8] not in out
    finally:
        controller.stop()


def test_notify_test_without_urls_says_so_and_config_hides_the_urls(clean_env, capsys):
    assert cli.main(["notify", "--test"]) == 1
    assert "FL_NOTIFY_URLS is empty" in capsys.readouterr().out
    clean_env.setenv("FL_NOTIFY_URLS", f"json://fl:{SECRET}@127.0.0.1:9/hook")
    clean_env.setenv("FL_NOTIFY_EVENTS", "halted,bogus")
    assert cli.main(["config", "--no-broker"]) == 2
    assert "FL_NOTIFY_EVENTS: unknown event 'bogus'" in capsys.readouterr().err
    clean_env.setenv("FL_NOTIFY_EVENTS", "halted, risk_limit")
    assert cli.main(["config", "--no-broker"]) == 0
    out = capsys.readouterr().out
    assert "FL_NOTIFY_URLS = (set, hidden)" in out and "FL_NOTIFY_EVENTS = halted,risk_limit" in out
    assert SECRET not in out


def test_sender_reports_a_url_apprise_cannot_read():
    result = Sender("nosuchservice://abc").send("t", "b")
    assert not result.ok and "not an Apprise URL" in result.error


def test_watchdog_takes_what_is_already_failed_as_known(redis_client, keys):
    redis_client.zadd(f"rq:failed:{keys.queue('ranker')}", {"old-job": 1})
    redis_client.xadd(keys.dead_letters, {"symbol": "X", "reason": "old"})
    dog = watchdog.Watchdog(redis_client, keys, unprotected_seconds=60, streamer_down_seconds=60)
    dog.poll()
    dog.poll()
    assert redis_client.xlen(keys.notification_stream) == 0
