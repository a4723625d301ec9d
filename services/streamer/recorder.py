"""Writes trade updates into the durable stream exactly once per `event_id`, and never loses one.

Reads: updates handed over by the broker stream (live) and by backfill, in arrival order.
Decides: an update whose `event_id` is already recorded is a duplicate and is dropped.
Writes: one entry per new update to `Keys.trade_updates` (format `shared.trade_events`), the last
event into `Keys.streamer_health`, and a pub/sub mirror for live watchers.

The dedup mark and the entry are written by one Lua script, entry first, so a crash can never
leave "seen" without the entry. `submit` only queues in memory and returns at once: the broker
stream is never held up by Redis. A single writer thread drains the queue in order and retries
with backoff while Redis is down (restarted, unreachable), so no update is dropped meanwhile.
`RedisReachability` says so in the log (`redis_unreachable`, repeated while it lasts, then
`redis_reachable_again`); the streamer's main loop reports to the same one.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from shared import bus, logs
from shared.bus import Keys, RedisReachability
from shared.models import TradeUpdate
from shared.trade_events import encode_entry

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 100_000
DEFAULT_SEEN_TTL = 7 * 24 * 3600

# One call records a whole batch (the updates that arrived together), in order.
# KEYS: stream, health hash, notification channel, notification stream, then one seen mark per update.
# ARGV: seen ttl, maxlen, recorded time, notification maxlen, then per update: event id, event time,
# the mirror's JSON without its closing brace, the number of entry fields, the field/value pairs.
# Per update the entry goes first and the seen mark after it: a script that fails part way (Redis
# does not roll back) can leave entries without marks (a retry then writes nothing twice: the marks
# of those written are set right after each XADD), never a mark without its entry.
_RECORD_BATCH = """
local ids = {}
local last = nil
local a = 5
for i = 1, #KEYS - 4 do
  local event_id, event_at, note, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local first = a + 4
  a = first + 2 * n
  if redis.call('EXISTS', KEYS[4 + i]) == 1 then
    ids[i] = false
  else
    local entry_id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, first, a - 1))
    redis.call('SET', KEYS[4 + i], '1', 'EX', ARGV[1])
    ids[i] = entry_id
    last = {event_id, event_at, entry_id}
    local payload = note .. ', "entry_id": "' .. entry_id .. '"}'
    redis.call('PUBLISH', KEYS[3], payload)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'trade_update', 'data', payload)
  end
end
if last then
  redis.call('HSET', KEYS[2], 'last_event_id', last[1], 'last_event_at', last[2],
             'last_recorded_at', ARGV[3], 'last_entry_id', last[3])
end
return ids
"""

#: Most updates written in one round trip (a burst at the open: 100 fills in ~4 ms of Redis work).
WRITE_BATCH = 200

#: Backoff between write attempts while Redis is failing: quick at first, then every 2 s.
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 2.0


@dataclass
class Batch:
    """A group of submissions (one backfill) whose completion someone wants to hear about."""

    total: int
    on_done: Callable[[Batch], None] | None = None
    written: int = 0
    added: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def _count(self, added: bool) -> None:
        self.written += 1
        self.added += int(added)
        if self.written >= self.total:
            self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # a reporting callback must never stop the writer
                log.exception("batch_callback_failed")


@dataclass
class _Pending:
    update: TradeUpdate
    source: str
    batch: Batch | None = None


class Recorder:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        seen_ttl: int = DEFAULT_SEEN_TTL,
        on_redis_back: Callable[[], None] | None = None,
        reachability: RedisReachability | None = None,
    ):
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self.seen_ttl = seen_ttl
        self.on_redis_back = on_redis_back
        #: Told of every write's outcome (the streamer shares one with its main loop).
        self.reachability = reachability or RedisReachability(client, log)
        self._script = client.register_script(_RECORD_BATCH)
        self._script_loaded = False
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Set while Redis refuses writes; None when healthy (the health hash shows the outage after it).
        self.redis_down_since: datetime | None = None
        self.recorded = 0
        self.duplicates = 0

    # -- one attempt (the writer thread's unit of work; also usable directly) -------------------
    def write(self, update: TradeUpdate) -> str | None:
        """Record `update` once: the new entry id, or None when its event id was already recorded.
        Raises redis errors; the dedup mark makes a retry after an unknown outcome safe."""
        return self.write_many([update])[0]

    def write_many(self, updates: list[TradeUpdate]) -> list[str | None]:
        """Record each update once, in order, with its pub/sub mirror for live watchers, in ONE
        script call: a burst of fills costs one round trip. Entry ids, None for duplicates.
        Raises redis errors (nothing of the batch is then known to be written: the dedup marks make
        retrying the whole batch safe)."""
        if not updates:
            return []
        if not self._script_loaded:
            # Loaded up front (again after any Redis failure: a restart empties the script cache), so
            # the batch never meets NOSCRIPT on a connection that drops on an error reply.
            self._script.sha = self.client.script_load(_RECORD_BATCH)
            self._script_loaded = True
        keys = [self.keys.trade_updates, self.keys.streamer_health, self.keys.notifications,
                self.keys.notification_stream]
        args: list[str] = [str(self.seen_ttl), str(self.maxlen), datetime.now(UTC).isoformat(),
                           str(bus.NOTIFICATIONS_MAXLEN)]
        for update in updates:
            keys.append(self.keys.streamer_seen(update.event_id))
            # The encoding round-trips exactly (tests/unit/test_trade_events.py); the manager validates on read.
            fields = encode_entry(update)
            args += [update.event_id, update.timestamp.isoformat(), _mirror_note(update), str(len(fields))]
            for name, value in fields.items():
                args += [name, value]
        try:
            entry_ids = self.client.evalsha(self._script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # Someone ran SCRIPT FLUSH: nothing of the batch ran. Load, retry once.
            self._script_loaded = False
            return self.write_many(updates)
        except (redis.RedisError, OSError):
            self._script_loaded = False
            raise
        return [entry_id or None for entry_id in entry_ids]

    # -- queue -------------------------------------------------------------------------------
    def submit(self, update: TradeUpdate, *, source: str = "live", batch: Batch | None = None) -> None:
        """Queue an update for recording; never blocks on Redis. Thread-safe."""
        with self._cond:
            self._queue.append(_Pending(update, source, batch))
            self._cond.notify()

    def submit_many(
        self, updates: Iterable[TradeUpdate], *, source: str, on_done: Callable[[Batch], None] | None = None
    ) -> Batch:
        """Queue several updates in order; `on_done(batch)` runs once every one of them is recorded."""
        items = list(updates)
        batch = Batch(total=len(items), on_done=on_done)
        if not items:
            batch._finish()
            return batch
        with self._cond:
            self._queue.extend(_Pending(u, source, batch) for u in items)
            self._cond.notify()
        return batch

    @property
    def pending(self) -> int:
        return len(self._queue)

    def idle(self) -> bool:
        """True when everything submitted so far is in Redis (the in-flight item stays queued)."""
        return not self._queue

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout)

    # -- writer thread -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._drain, name="streamer-recorder", daemon=True)
            self._thread.start()

    def stop(self, drain_timeout: float = 5.0) -> int:
        """Stop the writer after trying to drain for up to `drain_timeout`; returns how many updates
        were left unwritten (the next leader's backfill covers them: see docs/streamer.md)."""
        self.wait_idle(drain_timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=RETRY_MAX_DELAY + 1)
            self._thread = None
        left = len(self._queue)
        if left:
            logs.event(log, "updates_unwritten_at_exit", level=logging.ERROR, count=left,
                       event_ids=",".join(p.update.event_id for p in list(self._queue)[:20]))
        return left

    def _drain(self) -> None:
        delay = RETRY_FIRST_DELAY
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                # Everything queued so far (up to WRITE_BATCH), in order: a burst goes in one round trip.
                items = [self._queue[i] for i in range(min(len(self._queue), WRITE_BATCH))]
            try:
                entry_ids = self._write_items(items)
            except (redis.RedisError, OSError) as exc:
                self.reachability.failed(exc)
                self._note_redis_failure(exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            self.reachability.answered()
            delay = RETRY_FIRST_DELAY
            if self.redis_down_since is not None:
                self._note_redis_back()
            with self._cond:
                for _ in items:
                    self._queue.popleft()
                self._cond.notify_all()
            for item, entry_id in zip(items, entry_ids, strict=True):
                self._report(item, entry_id)
                if item.batch is not None:
                    item.batch._count(added=entry_id is not None)

    def _write_items(self, items: list[_Pending]) -> list[str | None]:
        try:
            return self.write_many([item.update for item in items])
        except (redis.RedisError, OSError):
            raise
        except Exception:
            if len(items) > 1:
                # Find the one that cannot be written; write the rest.
                return [self._write_items([item])[0] for item in items]
            item = items[0]
            # A bug or an update that cannot be encoded: keep it out of the stream, keep it in the log.
            logs.event(log, "trade_update_unrecordable", level=logging.ERROR, event_id=item.update.event_id,
                       symbol=item.update.order.symbol, client_order_id=item.update.order.client_order_id,
                       update=item.update.model_dump_json())
            log.exception("trade_update_unrecordable")
            return [None]

    def _report(self, item: _Pending, entry_id: str | None) -> None:
        update = item.update
        if entry_id is None:
            self.duplicates += 1
            logs.event(log, "trade_update_duplicate", level=logging.DEBUG, symbol=update.order.symbol,
                       client_order_id=update.order.client_order_id, trade_event=update.event.value,
                       event_id=update.event_id, source=item.source)
            return
        self.recorded += 1
        logs.event(log, "trade_update_recorded", symbol=update.order.symbol,
                   client_order_id=update.order.client_order_id, trade_event=update.event.value,
                   filled_qty=update.order.filled_qty, event_id=update.event_id, source=item.source,
                   entry_id=entry_id)

    def _note_redis_failure(self, exc: BaseException) -> None:
        if self.redis_down_since is None:
            self.redis_down_since = datetime.now(UTC)
            logs.event(log, "redis_unavailable_buffering", level=logging.WARNING,
                       error=f"{type(exc).__name__}: {exc}", buffered=len(self._queue))

    def _note_redis_back(self) -> None:
        since, self.redis_down_since = self.redis_down_since, None
        logs.event(log, "redis_back", down_since=since.isoformat() if since else None, buffered=len(self._queue))
        if self.on_redis_back is not None:
            try:
                self.on_redis_back()
            except Exception:
                log.exception("redis_back_callback_failed")


def _mirror_note(update: TradeUpdate) -> str:
    """The `trade_update` notification (`bus.publish`'s JSON) without its closing brace: the
    script appends the entry id, known only once the entry is written."""
    payload = json.dumps({
        "kind": "trade_update", "event_id": update.event_id, "event": update.event.value,
        "symbol": update.order.symbol, "client_order_id": update.order.client_order_id,
        "order_status": update.order.status.value, "filled_qty": update.order.filled_qty,
        "price": update.price, "at": update.timestamp.isoformat(),
    }, default=str)
    return payload[:-1]
