"""The streamer daemon: wins the leader lock, holds the broker's trade-update stream, records.

Reads: the broker's trade-update stream (leader only) and, on every (re)connect or Redis recovery,
the orders updated since the last recorded event (backfill). Decides: who leads (the lock), when to
backfill and from when. Writes: the durable stream through the recorder, and `Keys.streamer_health`.

Threads: the main loop (lock, heartbeat, checkpoint), the broker stream (`TradeUpdateStream.run`),
the recorder's writer, the backfiller. Only the main loop writes the health heartbeat, so a slow
Redis never stalls the broker stream.

Redis gone: the main loop talks to it at least every 2 s (a standby polls the lock every second, the
leader beats every 2 s), so `redis_unreachable` is logged within about 2 s of the first refused
command, again every 10 s while it lasts, and `redis_reachable_again` once it answers
(`RedisReachability`, shared with the recorder). Nothing stops: the broker stream stays up and the
recorder keeps every update queued until it can write it.

The checkpoint (`event_high_water` in the health hash) is the newest broker time of any update
received, written only when every received update is in Redis and no backfill is under way. So
every update not yet in Redis is at most one margin older than the checkpoint, and the next leader's
backfill (checkpoint minus margin) covers whatever a killed leader still held in memory.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import redis

from shared import logs
from shared.broker.contract import OrderExecutor, TradeUpdateStream
from shared.bus import Keys, RedisReachability
from shared.models import TradeUpdate

from .backfill import Backfiller, backfill_since
from .leader import LeaderLock, new_token
from .recorder import Batch, Recorder
from .settings import StreamerSettings

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
#: A stream that returned or crashed while we lead is restarted after this pause.
STREAM_RESTART_DELAY = 2.0


class Streamer:
    def __init__(
        self,
        executor: OrderExecutor,
        client: redis.Redis,
        keys: Keys,
        settings: StreamerSettings,
        *,
        token: str | None = None,
    ):
        self.executor = executor
        self.client = client
        self.keys = keys
        self.settings = settings
        self.token = token or new_token()
        self.margin = timedelta(seconds=settings.FL_STREAMER_BACKFILL_MARGIN_SECONDS)
        self.lock = LeaderLock(client, keys.streamer_leader, self.token, settings.FL_STREAMER_LOCK_TTL_SECONDS)
        #: One voice for "Redis is gone / back", fed by the main loop (lock, heartbeat) and the recorder.
        self.reachability = RedisReachability(client, log)
        self.recorder = Recorder(
            client, keys, maxlen=settings.FL_STREAMER_MAXLEN, seen_ttl=settings.FL_STREAMER_SEEN_TTL_SECONDS,
            on_redis_back=self._on_redis_back, reachability=self.reachability,
        )
        self.backfiller = Backfiller(executor, self.recorder, on_done=self._on_backfill_done)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._leading = False
        self._leader_since: datetime | None = None
        self._stream: TradeUpdateStream | None = None
        self._stream_thread: threading.Thread | None = None
        self._connected = False
        self._connected_at: datetime | None = None
        self._disconnected_at: datetime | None = None
        self._high_water: datetime | None = None
        self._hw_lock = threading.Lock()
        self._lock_unconfirmed_since: float | None = None
        self._stream_started = 0.0
        #: `time.monotonic()` of the last update received (shared.metrics.StreamerCollector reads it).
        self.last_event_monotonic: float | None = None

    # -- public ------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def connected(self) -> bool:
        """The broker's trade-update stream is connected (this streamer leads and holds it)."""
        return self._connected

    def stop(self) -> None:
        """Ask `run` to return (signal handlers call this)."""
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        logs.event(log, "streamer_started", token=self.token, lock_ttl=self.settings.FL_STREAMER_LOCK_TTL_SECONDS)
        self.recorder.start()
        self.backfiller.start()
        refresh = self.settings.FL_STREAMER_LOCK_REFRESH_SECONDS
        # Standbys poll more often than the leader refreshes, so a take-over follows the expiry closely.
        standby_poll = min(1.0, refresh)
        next_lock = next_beat = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_lock:
                    self._lock_step()
                    next_lock = now + (refresh if self._leading else standby_poll)
                if self._leading:
                    self._keep_stream_running()
                    if now >= next_beat or self._wake.is_set():
                        self._heartbeat()
                        next_beat = now + HEARTBEAT_SECONDS
                due = min(next_lock, next_beat if self._leading else next_lock)
                self._wake.wait(min(max(due - time.monotonic(), 0.01), standby_poll))
                self._wake.clear()
        finally:
            self._shutdown()

    # -- leadership --------------------------------------------------------------------------
    def _lock_step(self) -> None:
        try:
            ours = self.lock.refresh() if self._leading else self.lock.try_acquire()
        except (redis.RedisError, OSError) as exc:
            self.reachability.failed(exc)
            if self._leading and self._lock_unconfirmed_since is None:
                self._lock_unconfirmed_since = time.monotonic()
                # Keep streaming: Redis being away is no reason to drop the broker connection.
                logs.event(log, "leader_lock_unconfirmed", level=logging.WARNING, error=type(exc).__name__)
            return
        self.reachability.answered()
        self._lock_unconfirmed_since = None
        if ours and not self._leading:
            self._become_leader()
        elif not ours and self._leading:
            self._lose_leadership()

    def _become_leader(self) -> None:
        self._leading = True
        self._leader_since = datetime.now(UTC)
        checkpoint = self._read_checkpoint()
        with self._hw_lock:
            if checkpoint is not None and (self._high_water is None or checkpoint > self._high_water):
                self._high_water = checkpoint
        logs.event(log, "leader_elected", token=self.token,
                   checkpoint=checkpoint.isoformat() if checkpoint else None)
        self._start_stream()
        self._heartbeat()

    def _lose_leadership(self) -> None:
        logs.event(log, "leader_lock_lost", level=logging.WARNING, token=self.token, holder=self._holder())
        self._leading = False
        self._stop_stream()

    def _holder(self) -> str | None:
        try:
            return self.lock.holder()
        except redis.RedisError:
            return None

    # -- broker stream -----------------------------------------------------------------------
    def _start_stream(self) -> None:
        if self._stream_thread is not None and self._stream_thread.is_alive():
            # One connection per account: the old one must be gone before a new one opens.
            self._stream_thread.join(timeout=10)
        self._stream = self.executor.trade_update_stream()
        stream = self._stream

        def hold() -> None:
            try:
                stream.run(self._on_update, on_connect=self._on_connect, on_disconnect=self._on_disconnect)
            except Exception:
                log.exception("trade_update_stream_crashed")
            finally:
                self._connected = False
                self._wake.set()

        self._stream_thread = threading.Thread(target=hold, name="streamer-broker", daemon=True)
        self._stream_thread.start()
        self._stream_started = time.monotonic()

    def _stop_stream(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        self._connected = False

    def _keep_stream_running(self) -> None:
        thread = self._stream_thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            if time.monotonic() - self._stream_started >= STREAM_RESTART_DELAY:
                logs.event(log, "trade_update_stream_restarting", level=logging.WARNING)
                self._start_stream()

    def _on_update(self, update: TradeUpdate) -> None:
        self.last_event_monotonic = time.monotonic()
        with self._hw_lock:
            if self._high_water is None or update.timestamp > self._high_water:
                self._high_water = update.timestamp
        self.recorder.submit(update, source="live")

    def _on_connect(self) -> None:
        # Decide where the backfill starts now, before this connection delivers anything newer.
        with self._hw_lock:
            since = backfill_since(self._high_water, self.margin)
        self._connected = True
        self._connected_at = datetime.now(UTC)
        logs.event(log, "trade_update_stream_connected",
                   backfill_since=since.isoformat() if since else "trading_day_start")
        self.backfiller.request(since)
        self._wake.set()

    def _on_disconnect(self) -> None:
        self._connected = False
        self._disconnected_at = datetime.now(UTC)
        logs.event(log, "trade_update_stream_disconnected", level=logging.WARNING)
        self._wake.set()

    def _on_redis_back(self) -> None:
        # Anything the broker sent is still in the recorder's queue; backfill on top covers the rest.
        if self._leading:
            with self._hw_lock:
                since = backfill_since(self._high_water, self.margin)
            self.backfiller.request(since)
        self._wake.set()

    # -- health --------------------------------------------------------------------------------
    def _read_checkpoint(self) -> datetime | None:
        try:
            value = self.client.hget(self.keys.streamer_health, "event_high_water")
        except redis.RedisError:
            return None
        try:
            return datetime.fromisoformat(value) if value else None
        except ValueError:
            return None

    def _heartbeat(self) -> None:
        if not self._leading:
            return
        with self._hw_lock:
            high_water = self._high_water
        fields = {
            "role": "leader",
            "connected": "yes" if self._connected else "no",
            "leader_token": self.token,
            "leader_host": socket.gethostname(),
            "leader_pid": str(os.getpid()),
            "leader_since": _iso(self._leader_since),
            "connected_at": _iso(self._connected_at),
            "disconnected_at": _iso(self._disconnected_at),
            "buffered": str(self.recorder.pending),
            "heartbeat_at": datetime.now(UTC).isoformat(),
        }
        # The checkpoint only moves when nothing received is still waiting to be written.
        if high_water is not None and self.recorder.idle() and self.backfiller.idle():
            fields["event_high_water"] = high_water.isoformat()
        try:
            self.client.hset(self.keys.streamer_health, mapping=fields)
        except (redis.RedisError, OSError) as exc:
            self.reachability.failed(exc)  # the next beat retries
            return
        self.reachability.answered()

    def _on_backfill_done(self, since: datetime, orders: int, batch: Batch) -> None:
        try:
            self.client.hset(self.keys.streamer_health, mapping={
                "last_backfill_at": datetime.now(UTC).isoformat(),
                "last_backfill_since": since.isoformat(),
                "last_backfill_orders": str(orders),
                "last_backfill_count": str(batch.total),
                "last_backfill_added": str(batch.added),
            })
        except redis.RedisError:
            pass
        self._wake.set()

    # -- shutdown ------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        was_leading = self._leading
        self._leading = False
        self._stop_stream()
        if self._stream_thread is not None:
            self._stream_thread.join(timeout=10)
        self.backfiller.stop()
        left = self.recorder.stop(drain_timeout=5.0)
        if was_leading:
            fields = {"role": "stopped", "connected": "no", "buffered": str(left),
                      "disconnected_at": _iso(self._disconnected_at or datetime.now(UTC)),
                      "heartbeat_at": datetime.now(UTC).isoformat()}
            with self._hw_lock:
                high_water = self._high_water
            if high_water is not None and left == 0 and self.backfiller.idle():
                fields["event_high_water"] = high_water.isoformat()
            try:
                self.client.hset(self.keys.streamer_health, mapping=fields)
                self.lock.release()
            except redis.RedisError:
                pass
        logs.event(log, "streamer_stopped", token=self.token, unwritten=left)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""
