"""Events nobody publishes, found by looking: a failed RQ job, a dead letter, the streamer's broker
connection down for too long, a position left without protection for too long. Each is published
once through `shared.bus.publish`, so it reaches `factoryline watch` and the notifier like any other.

What was already said is kept in Redis (`<ns>:notify:*`, docs/redis.md), so a restart repeats nothing;
on its first look the watchdog takes the failed jobs and dead letters already there as known."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from shared import bus, logs
from shared.bus import SERVICES, Keys

log = logging.getLogger(__name__)

#: The streamer's leader rewrites its health hash every 2 s: older than this, no leader is alive.
HEARTBEAT_STALE_SECONDS = 15.0
_SEEDED = "(seeded)"










def track(client: redis.Redis, keys: Keys, event: str, notification: dict, now: float) -> None:
    """Follow each position's protection from the notifications: a line entry's fill (or a failed
    protection) starts the clock, a protection placed or the position's close stops it."""
    symbol = str(notification.get("symbol") or "")
    if not symbol:
        return
    key = keys.notify_unprotected
    if event in ("entry_filled", "entry_partial_fill", "protection_failed"):
        client.hsetnx(key, symbol, json.dumps({"since": now, "said": False}))
    elif event in ("protected", "position_closed"):
        client.hdel(key, symbol)


class Watchdog:
    def __init__(self, client: redis.Redis, keys: Keys, *, unprotected_seconds: float, streamer_down_seconds: float,
                 clock: Callable[[], float] = time.time):
        self.client, self.keys = client, keys
        self.unprotected_seconds = unprotected_seconds
        self.streamer_down_seconds = streamer_down_seconds
        self.clock = clock

    def poll(self) -> None:
        for look in (self._failed_jobs, self._dead_letters, self._streamer, self._unprotected):
            try:
                look()
            except redis.RedisError:
                raise
            except Exception as exc:  # noqa: BLE001 - one look failing never stops the others
                logs.event(log, "watchdog_look_failed", level=logging.WARNING, look=look.__name__,
                           error=logs.redact(f"{type(exc).__name__}: {exc}"))

    # -- RQ's failed registries -------------------------------------------------------------------
    def _failed_jobs(self) -> None:
        seen_key = self.keys.notify_failed_jobs
        failed = {}
        for service in SERVICES:
            queue = self.keys.queue(service)
            for job_id in self.client.zrange(f"rq:failed:{queue}", 0, -1):
                failed[job_id] = queue
        seen = self.client.smembers(seen_key)
        if _SEEDED not in seen:
            self.client.sadd(seen_key, _SEEDED, *failed)
            return
        for job_id, queue in failed.items():
            if job_id in seen:
                continue
            self.client.sadd(seen_key, job_id)
            bus.publish(self.client, self.keys, "job_failed", job_id=job_id, queue=queue,
                        error=self._job_error(job_id), at=datetime.now(UTC).isoformat())
        gone = seen - set(failed) - {_SEEDED}
        if gone:  # expired from the registry or requeued: forget them
            self.client.srem(seen_key, *gone)

    def _job_error(self, job_id: str) -> str:
        """The failure's last line (redacted), as RQ recorded it; empty when it cannot be read."""
        try:
            from rq.job import Job

            from shared import queues

            connection = bus.twin(self.client, decode_responses=False)
            try:
                job = Job.fetch(job_id, connection=connection, serializer=queues.SERIALIZER)
                result = job.latest_result()
                text = (result.exc_string if result is not None else None) or job.exc_info or ""
            finally:
                connection.close()
        except Exception:  # noqa: BLE001 - the id alone is still worth sending
            return ""
        lines = [line for line in str(text).strip().splitlines() if line.strip()]
        return logs.redact(lines[-1][:300]) if lines else ""

    # -- the manager's dead letters ---------------------------------------------------------------
    def _dead_letters(self) -> None:
        cursor_key = self.keys.notify_dead_letters_cursor
        cursor = self.client.get(cursor_key)
        if cursor is None:
            newest = self.client.xrevrange(self.keys.dead_letters, count=1)
            self.client.set(cursor_key, newest[0][0] if newest else "0-0")
            return
        for entry_id, fields in self.client.xrange(self.keys.dead_letters, min=f"({cursor}", count=100):
            bus.publish(self.client, self.keys, "dead_letter", symbol=fields.get("symbol") or None,
                        entry_id=entry_id, reason=fields.get("reason", ""), event=fields.get("event", ""),
                        client_order_id=fields.get("client_order_id", ""))
            self.client.set(cursor_key, entry_id)

    # -- the streamer's connection ----------------------------------------------------------------
    def _streamer(self) -> None:
        health = self.client.hgetall(self.keys.streamer_health)
        if not health:
            return  # no streamer has ever run in this namespace
        now = self.clock()
        down_since = None
        if health.get("connected") != "yes":
            down_since = _epoch(health.get("disconnected_at")) or _epoch(health.get("heartbeat_at")) or now
        beat = _epoch(health.get("heartbeat_at"))
        if beat is not None and now - beat > HEARTBEAT_STALE_SECONDS:
            down_since = min(down_since or beat, beat)
        said = self.client.get(self.keys.notify_streamer_down)
        if down_since is not None and now - down_since > self.streamer_down_seconds and said is None:
            self.client.set(self.keys.notify_streamer_down, str(down_since))
            bus.publish(self.client, self.keys, "streamer_disconnected", down_seconds=round(now - down_since),
                        role=health.get("role", "?"), since=datetime.fromtimestamp(down_since, UTC).isoformat())
        elif down_since is None and said is not None:
            self.client.delete(self.keys.notify_streamer_down)
            bus.publish(self.client, self.keys, "streamer_reconnected",
                        down_seconds=round(now - float(said)))

    # -- positions without protection -------------------------------------------------------------
    def _unprotected(self) -> None:
        key = self.keys.notify_unprotected
        now = self.clock()
        for symbol, raw in self.client.hgetall(key).items():
            try:
                record = json.loads(raw)
                since = float(record["since"])
            except (ValueError, KeyError, TypeError):
                self.client.hdel(key, symbol)
                continue
            if record.get("said") or now - since <= self.unprotected_seconds:
                continue
            self.client.hset(key, symbol, json.dumps({"since": since, "said": True}))
            bus.publish(self.client, self.keys, "unprotected", symbol=symbol, seconds=round(now - since),
                        message=f"{symbol} has had no protection for {round(now - since)} s "
                                "(is the manager running? `factoryline reconcile` places it now)")


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
