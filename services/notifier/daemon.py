"""The notifier's loop: read `<ns>:stream:notifications` through the consumer group `notifier`, keep
the events `FL_NOTIFY_EVENTS` names, group a burst into one message, and send it to every URL with
retries, within a rate limit. An entry is acknowledged only once its message was delivered, or
recorded failed (`<ns>:stream:notify-failed` and an ERROR log) after the retries; a crash in between
leaves it pending, and the next start sends it (the group's pending entries are read first).

Single-threaded on purpose: while it waits (a retry, the rate limit) new events simply stay in the
stream and join the next message. Trading never waits for any of this: `bus.publish` only appends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import redis

from services.notifier.sender import Result, Sender
from services.notifier.settings import NotifySettings
from services.notifier.watchdog import Watchdog, track
from shared import logs
from shared.bus import Keys

log = logging.getLogger(__name__)

GROUP = Keys.notifications_group
CONSUMER = "notifier"
#: Lines of one message; a longer burst ends with "... and N more" (every event is in the log).
MAX_LINES = 30
FAILED_MAXLEN = 10_000


def classify(notification: dict) -> str:
    """The event name (settings.EVENTS) of a notification: its kind, but a trade update of a line
    entry's fill is `entry_filled` (partial fills only start the protection clock)."""
    kind = str(notification.get("kind") or "?")
    if kind == "trade_update" and "-entry" in str(notification.get("client_order_id") or ""):
        if notification.get("event") == "fill":
            return "entry_filled"
        if notification.get("event") == "partial_fill":
            return "entry_partial_fill"
    return kind


def line(event: str, n: dict) -> str:
    """One line a person reads on a phone."""
    symbol = f"{n['symbol']} " if n.get("symbol") else ""
    if event == "entry_filled":
        text = f"bought {n.get('filled_qty', '?')} @ {n.get('price', '?')}"
    elif event == "position_closed":
        text = (f"{n.get('exit_reason', '?')}: {n.get('qty', '?')} sh {n.get('entry_price', '?')} -> "
                f"{n.get('exit_price', '?')}, P/L {_signed(n.get('realized_pl'))}")
    elif event == "protected":
        text = f"{n.get('qty', '?')} sh, stop {n.get('stop_price', '-')}, target {n.get('target_price', '-')}"
    elif event == "job_failed":
        text = f"{n.get('job_id', '?')} on {n.get('queue', '?')}: {n.get('error') or 'see rq-dashboard'}"
    elif event == "dead_letter":
        text = f"trade update {n.get('entry_id', '?')}: {n.get('reason', '')}"
    elif event == "streamer_disconnected":
        text = f"broker trade-update stream down for {n.get('down_seconds', '?')} s: fills are not being recorded"
    elif event == "streamer_reconnected":
        text = f"broker trade-update stream back after {n.get('down_seconds', '?')} s"
    elif event == "report_written":
        text = (f"{n.get('report_date', '?')}: equity {n.get('equity', '?')}, {n.get('positions', '?')} open "
                f"positions, {n.get('closed_trades', '?')} closed trades, realized P/L {_signed(n.get('realized_pl'))}")
    elif event == "exit_failed":
        text = (f"{n.get('exit_reason', '?')}: {n.get('reason', '')}"
                f"{'' if n.get('reprotected', True) else ' NOT re-protected'}")
    elif n.get("message"):
        text = str(n["message"])
    else:
        text = " ".join(f"{k}={v}" for k, v in n.items() if k not in ("kind", "symbol", "at"))
    return "".join(c if c.isprintable() else "?" for c in f"{event.upper()} {symbol}{text}").strip()


def _signed(value: object) -> str:
    """+116.44 / -50.00; the text as sent when it is no number."""
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except (ArithmeticError, ValueError):
        return str(value if value not in (None, "") else "?")
    return f"+{amount}" if amount > 0 else f"{abs(amount) if amount == 0 else amount}"


def compose(events: list[tuple[str, dict]]) -> tuple[str, str]:
    """(title, body) of one message for a group of events."""
    if len(events) == 1:
        event, n = events[0]
        return (f"Factory Line: {event.replace('_', ' ')}{' ' + str(n['symbol']) if n.get('symbol') else ''}",
                line(event, n))
    kinds = sorted({event for event, _ in events})
    lines = [line(event, n) for event, n in events[:MAX_LINES]]
    if len(events) > MAX_LINES:
        lines.append(f"... and {len(events) - MAX_LINES} more (`factoryline watch`, the logs)")
    return f"Factory Line: {len(events)} events ({', '.join(kinds)})", "\n".join(lines)


@dataclass
class _Batch:
    started: float
    ids: list[str] = field(default_factory=list)
    events: list[tuple[str, dict]] = field(default_factory=list)


class Notifier:
    """`run(stop)` until `stop` is set. `senders` default to one per FL_NOTIFY_URLS; `rate_window` is
    the rate limit's window (a minute; shorter in tests)."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: NotifySettings, *,
                 senders: list[Sender] | None = None, rate_window: float = 60.0,
                 sleep: Callable[[float], None] | None = None):
        self.client, self.keys, self.settings = client, keys, settings
        self.senders = senders if senders is not None else [Sender(url) for url in settings.urls]
        self.events = settings.events
        self.rate_window = rate_window
        self.watchdog = Watchdog(client, keys, unprotected_seconds=settings.FL_NOTIFY_UNPROTECTED_SECONDS,
                                 streamer_down_seconds=settings.FL_NOTIFY_STREAMER_DOWN_SECONDS)
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._sent_at: list[float] = []
        self._batch: _Batch | None = None
        self._pending_from: str | None = "0"  # our pending entries first (from before a restart)
        self.messages_sent = 0

    def ensure_group(self) -> None:
        """The group starts at the stream's end: events from before the first start are not sent."""
        try:
            self.client.xgroup_create(self.keys.notification_stream, GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.ensure_group()
        logs.event(log, "notifier_started", urls=len(self.senders), events=",".join(sorted(self.events)),
                   stream=self.keys.notification_stream)
        next_look = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_look:
                self.watchdog.poll()
                next_look = now + 1.0
            self.read(block_ms=self._block_ms())
            self.flush_if_due()

    def _block_ms(self) -> int:
        if self._batch is None:
            return 1000
        due = self._batch.started + self.settings.FL_NOTIFY_GROUP_SECONDS - time.monotonic()
        return max(10, min(1000, int(due * 1000)))

    def read(self, block_ms: int = 0) -> int:
        """Read new (first: our own pending) entries into the batch; returns how many were read."""
        pending = self._pending_from
        reply = self.client.xreadgroup(GROUP, CONSUMER, {self.keys.notification_stream: pending or ">"},
                                       count=500, block=None if pending else block_ms)
        entries = reply[0][1] if reply else []
        if pending:
            self._pending_from = entries[-1][0] if len(entries) == 500 else None
        skip = []
        for entry_id, fields in entries:
            if fields is None:  # a pending entry trimmed from the stream meanwhile
                skip.append(entry_id)
                continue
            notification = _decode(fields)
            event = classify(notification)
            track(self.client, self.keys, event, notification, time.time())
            if event not in self.events:
                skip.append(entry_id)
                continue
            if self._batch is None:
                self._batch = _Batch(time.monotonic())
            self._batch.ids.append(entry_id)
            self._batch.events.append((event, notification))
        if skip:
            self.client.xack(self.keys.notification_stream, GROUP, *skip)
        return len(entries)

    def flush_if_due(self, *, force: bool = False) -> bool:
        batch = self._batch
        if batch is None:
            return False
        if not force and time.monotonic() - batch.started < self.settings.FL_NOTIFY_GROUP_SECONDS:
            return False
        if not self._rate_allows():
            return False  # wait: later events join this message
        self._batch = None
        title, body = compose(batch.events)
        self._deliver(title, body, batch)
        self.client.xack(self.keys.notification_stream, GROUP, *batch.ids)
        return True

    def _rate_allows(self) -> bool:
        now = time.monotonic()
        self._sent_at = [t for t in self._sent_at if now - t < self.rate_window]
        return len(self._sent_at) < self.settings.FL_NOTIFY_MAX_PER_MINUTE

    def _deliver(self, title: str, body: str, batch: _Batch) -> None:
        self._sent_at.append(time.monotonic())
        waiting = list(self.senders)
        results: dict[int, Result] = {}
        for attempt in range(self.settings.FL_NOTIFY_RETRIES + 1):
            if attempt:
                wait = self.settings.FL_NOTIFY_RETRY_SECONDS * 2 ** (attempt - 1)
                logs.event(log, "notification_retry", level=logging.WARNING, attempt=attempt, wait_seconds=wait,
                           urls=",".join(s.shown for s in waiting), error=results[id(waiting[0])].error)
                self._sleep(wait)
            for sender in waiting:
                results[id(sender)] = sender.send(title, body)
            waiting = [s for s in waiting if not results[id(s)].ok]
            if not waiting:
                break
        self.messages_sent += 1
        kinds = ",".join(sorted({event for event, _ in batch.events}))
        for sender in self.senders:
            result = results[id(sender)]
            if result.ok:
                logs.event(log, "notification_sent", url=sender.shown, events=len(batch.events), kinds=kinds)
                continue
            logs.event(log, "notification_failed", level=logging.ERROR, url=sender.shown, events=len(batch.events),
                       kinds=kinds, attempts=self.settings.FL_NOTIFY_RETRIES + 1, error=result.error,
                       failed=self.keys.notify_failed)
            self.client.xadd(self.keys.notify_failed, {
                "url": sender.shown, "title": logs.redact(title), "body": logs.redact(body), "kinds": kinds,
                "entry_ids": json.dumps(batch.ids), "attempts": str(self.settings.FL_NOTIFY_RETRIES + 1),
                "error": result.error, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }, maxlen=FAILED_MAXLEN, approximate=True)


def _decode(fields: dict) -> dict:
    try:
        value = json.loads(fields.get("data") or "{}")
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"kind": fields.get("kind") or "text", "message": str(fields)}
