"""The manager's reader of the durable trade-update stream (a Redis consumer group).

Reads: `Keys.trade_updates` through the group `manager`, first this consumer's own pending entries
(a restart picks up where a crash left off), then entries idle > FL_MANAGER_CLAIM_IDLE_MS in dead
consumers' hands (XAUTOCLAIM), then new ones (XREADGROUP ">" with BLOCK).
Decides: which symbols an entry touches (fills, cancels and expiries move protection; "new" and
"accepted" do not).
Writes: an XACK only once the handler says the symbol is protected (the broker accepted the orders);
an entry delivered FL_MANAGER_MAX_DELIVERIES times without success goes to `Keys.dead_letters`
(ERROR log and an `alert` notification) and is then acknowledged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import redis
from pydantic import ValidationError

from shared import bus, logs
from shared.bus import Keys
from shared.models import TradeEventType, TradeUpdate
from shared.trade_events import decode_entry

log = logging.getLogger(__name__)

GROUP = Keys.trade_updates_group
SEEN_TTL_SECONDS = 3 * 24 * 3600
#: Entries written longer ago than this are acknowledged without a reconcile of their own: after such
#: a gap (first start on a long stream, a long outage) the reconcile of every position that follows
#: start-up covers them, and replaying thousands of old fills one by one would only spend the
#: broker's rate limit.
STALE_ENTRY_SECONDS = 12 * 3600

#: Events after which a symbol's protection may need to change. "new", "accepted", "pending_new"
#: change nothing the broker holds for the position, so they are acknowledged without a broker call.
RECONCILING_EVENTS = frozenset(
    {
        TradeEventType.FILL,
        TradeEventType.PARTIAL_FILL,
        TradeEventType.CANCELED,
        TradeEventType.EXPIRED,
        TradeEventType.DONE_FOR_DAY,
        TradeEventType.REPLACED,
        TradeEventType.REJECTED,
    }
)

#: handler(symbols, updates) -> {symbol: None when protected, else the error}. Symbols absent from
#: the answer count as failed.
SymbolHandler = Callable[[list[str], list[TradeUpdate]], dict[str, BaseException | None]]


@dataclass(frozen=True)
class ConsumerOptions:
    consumer: str
    group: str = GROUP
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    block_ms: int = 1_000
    count: int = 200
    #: First retry of a failed entry after this many seconds, doubling per delivery.
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    #: Batches whose reconcile may run at once: with more than 1, the next entries are read (and
    #: their submits started) while earlier ones are still at the broker; at this many the reader
    #: waits for one to finish. 1: each batch is finished before the next read.
    max_in_flight: int = 1


@dataclass
class BatchResult:
    acked: int = 0
    failed: int = 0
    dead_lettered: int = 0
    skipped_duplicates: int = 0
    symbols: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    """A batch read and sorted, its handler not yet run."""

    entries: list[tuple[str, dict[str, str]]]
    result: BatchResult
    ack: list[str]
    waiting: dict[str, list[tuple[str, TradeUpdate]]]


def ensure_group(client: redis.Redis, keys: Keys, group: str = GROUP) -> None:
    """Create the group at the stream's start (entries written before the first manager ran are
    protected too); BUSYGROUP means it exists, which is the normal case."""
    try:
        client.xgroup_create(keys.trade_updates, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class TradeUpdateConsumer:
    """One consumer of the group. `client` must not time out blocking reads (bus.connect(blocking=True))."""

    def __init__(self, client: redis.Redis, keys: Keys, handler: SymbolHandler, options: ConsumerOptions):
        self.client = client
        self.keys = keys
        self.handler = handler
        self.options = options
        self._retry_at: float | None = None
        self._last_claim = 0.0
        self._in_flight: set[Future[BatchResult]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._retry_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def start(self) -> BatchResult:
        """Group, then own pending (crash recovery), then dead consumers' idle entries."""
        ensure_group(self.client, self.keys, self.options.group)
        total = self.retry_own_pending()
        claimed = self.claim_idle()
        return _merge(total, claimed)

    def retry_own_pending(self) -> BatchResult:
        # Entries still in flight are pending too: finish them first, or they would be handled twice.
        total = self.drain()
        self._retry_at = None  # failures below schedule the next retry afresh
        last_id = "0"
        while True:
            entries = self._read(last_id, block_ms=None)
            if not entries:
                break
            total = _merge(total, self.handle(entries))
            last_id = entries[-1][0]
        return total

    def claim_idle(self) -> BatchResult:
        """Take over entries a dead (or stuck) consumer left unacknowledged for claim_idle_ms."""
        self._last_claim = time.monotonic()
        # Our own in-flight entries may be idle long enough to be claimed back by ourselves.
        total = self.drain()
        start = "0-0"
        while True:
            next_start, claimed, deleted = _autoclaim(self.client, self.keys, self.options, start)
            if deleted:
                # Trimmed before anyone acknowledged them: the timer's reconcile-all covers these symbols.
                logs.event(log, "trade_updates_lost_to_trim", level=logging.ERROR, count=len(deleted))
            if claimed:
                logs.event(log, "trade_updates_claimed", level=logging.WARNING, count=len(claimed),
                           consumer=self.options.consumer)
                total = _merge(total, self.handle(claimed))
            if next_start in ("0-0", start) or not claimed and not deleted:
                break
            start = next_start
        return total

    def poll(self, block_ms: int | None = None, *, pipelined: bool = False) -> BatchResult:
        """One step of the loop: due retries, due claims, then new entries (blocking up to block_ms).

        `pipelined` (the manager's loop), with `max_in_flight` > 1: the new entries' reconcile runs
        in the background, and the answer counts the batches that finished meanwhile. Otherwise the
        step is finished when it returns (every batch started earlier too)."""
        result = self._reap() if pipelined else self.drain()
        now = time.monotonic()
        if self._retry_at is not None and now >= self._retry_at:
            result = _merge(result, self.retry_own_pending())
        if now - self._last_claim >= max(self.options.claim_idle_ms / 2000, 1.0):
            result = _merge(result, self.claim_idle())
        block = self.options.block_ms if block_ms is None else block_ms
        if self._retry_at is not None:
            block = max(1, min(block, int((self._retry_at - time.monotonic()) * 1000)))
        if self._in_flight:
            # At the bound, wait for a batch before reading more; below it, read without a long
            # block so a finished batch is acknowledged and counted promptly.
            if len(self._in_flight) >= self.options.max_in_flight:
                wait(list(self._in_flight), timeout=max(block, 0) / 1000,
                     return_when=FIRST_COMPLETED)
                result = _merge(result, self._reap())
                if len(self._in_flight) >= self.options.max_in_flight:
                    return result
            block = min(block, 5)
        # BLOCK 0 would wait forever: a zero budget is a plain non-blocking read.
        entries = self._read(">", block_ms=block if block > 0 else None)
        if entries:
            if pipelined and self.options.max_in_flight > 1:
                prepared = self._prepare(entries)
                self._in_flight.add(self._executor().submit(self._finish, prepared))
            else:
                result = _merge(result, self.handle(entries))
        if not pipelined:
            result = _merge(result, self.drain())
        return _merge(result, self._reap())

    def drain(self) -> BatchResult:
        """Wait for every batch in flight; their results."""
        if self._in_flight:
            wait(list(self._in_flight))
        return self._reap()

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.options.max_in_flight, thread_name_prefix="consumer-batch")
        return self._pool

    def _reap(self) -> BatchResult:
        result = BatchResult()
        for future in [f for f in self._in_flight if f.done()]:
            self._in_flight.discard(future)
            # _finish never raises for a handler's failure (it answers per symbol); a Redis error
            # acknowledging leaves the entries pending: retried by the own-pending pass.
            try:
                result = _merge(result, future.result())
            except (redis.RedisError, OSError) as exc:
                logs.event(log, "trade_update_ack_failed", level=logging.WARNING, error=type(exc).__name__,
                           reason=str(exc))
                self._schedule_retry(self.options.retry_base_seconds)
        return result

    def _read(self, last_id: str, *, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        try:
            reply = self.client.xreadgroup(
                self.options.group, self.options.consumer, {self.keys.trade_updates: last_id},
                count=self.options.count, block=block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis came back empty (restarted without persistence) or the stream was deleted: the
            # group went with it. Without it no entry is ever read again; what the lost entries
            # covered, the reconcile of every position re-checks.
            logs.event(log, "consumer_group_recreated", level=logging.WARNING, group=self.options.group,
                       stream=self.keys.trade_updates)
            ensure_group(self.client, self.keys, self.options.group)
            return []
        return [entry for _stream, entries in (reply or []) for entry in entries if entry[1] is not None]

    # -- handling --------------------------------------------------------------------------
    def handle(self, entries: list[tuple[str, dict[str, str]]]) -> BatchResult:
        """Handle a batch now: reconcile the symbols it touches, acknowledge what succeeded."""
        return self._finish(self._prepare(entries))

    def _prepare(self, entries: list[tuple[str, dict[str, str]]]) -> _Prepared:
        """Decode, drop the stale and the already handled: what the handler must still see."""
        result = BatchResult()
        ack: list[str] = []
        waiting: dict[str, list[tuple[str, TradeUpdate]]] = {}
        stale_before_ms = (time.time() - STALE_ENTRY_SECONDS) * 1000
        stale = 0
        for entry_id, fields in entries:
            if _id_key(entry_id)[0] < stale_before_ms:
                ack.append(entry_id)
                stale += 1
                continue
            try:
                update = decode_entry(fields)
            except (ValidationError, KeyError, ValueError) as exc:
                # It will never decode: retrying only delays the alarm.
                self._dead_letter(entry_id, fields, f"undecodable entry: {str(exc).splitlines()[0]}", None)
                result.dead_lettered += 1
                continue
            if update.event not in RECONCILING_EVENTS or not update.order.symbol:
                ack.append(entry_id)
                continue
            waiting.setdefault(update.order.symbol, []).append((entry_id, update))
        if waiting:
            already = self._already_handled([u.event_id for items in waiting.values() for _, u in items])
            for symbol in list(waiting):
                fresh = [(i, u) for i, u in waiting[symbol] if u.event_id not in already]
                result.skipped_duplicates += len(waiting[symbol]) - len(fresh)
                ack += [i for i, u in waiting[symbol] if u.event_id in already]
                if fresh:
                    waiting[symbol] = fresh
                else:
                    del waiting[symbol]
        if stale:
            logs.event(log, "stale_trade_updates_skipped", level=logging.WARNING, count=stale,
                       reason=f"written over {STALE_ENTRY_SECONDS // 3600} h ago; the reconcile of every "
                              "position covers them")
        return _Prepared(entries, result, ack, waiting)

    def _finish(self, prepared: _Prepared) -> BatchResult:
        """Run the handler on a prepared batch, acknowledge what it protected, schedule the rest."""
        entries, result, ack, waiting = prepared.entries, prepared.result, prepared.ack, prepared.waiting
        seen_to_mark: list[str] = []
        failed: dict[str, tuple[list[str], BaseException]] = {}
        if waiting:
            symbols = sorted(waiting)
            result.symbols = symbols
            try:
                outcome = self.handler(symbols, [u for items in waiting.values() for _, u in items])
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the consumer
                logs.event(log, "protect_batch_failed", level=logging.ERROR, error=type(exc).__name__,
                           reason=str(exc))
                outcome = {symbol: exc for symbol in symbols}
            for symbol, items in waiting.items():
                error = outcome.get(symbol, RuntimeError("handler gave no answer for the symbol"))
                if error is None:
                    ack += [i for i, _ in items]
                    seen_to_mark += [u.event_id for _, u in items]
                else:
                    failed[symbol] = ([i for i, _ in items], error)
        self._ack(ack, seen_to_mark)
        result.acked += len(ack)
        if failed:
            result.failed, dead = self._after_failures(failed, {i: f for i, f in entries})
            result.dead_lettered += dead
        return result

    def _already_handled(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        pipe = self.client.pipeline(transaction=False)
        for event_id in ids:
            pipe.exists(self.keys.manager_seen(event_id))
        return {event_id for event_id, present in zip(ids, pipe.execute(), strict=True) if present}

    def _ack(self, entry_ids: list[str], seen_event_ids: list[str]) -> None:
        if not entry_ids:
            return
        pipe = self.client.pipeline(transaction=True)
        for event_id in seen_event_ids:
            pipe.set(self.keys.manager_seen(event_id), "1", ex=SEEN_TTL_SECONDS)
        pipe.xack(self.keys.trade_updates, self.options.group, *entry_ids)
        pipe.execute()

    def _after_failures(
        self, failed: dict[str, tuple[list[str], BaseException]], fields_by_id: dict[str, dict[str, str]]
    ) -> tuple[int, int]:
        """Dead-letter entries out of deliveries; schedule a retry for the rest."""
        deliveries = self._deliveries([i for ids, _ in failed.values() for i in ids])
        retrying = dead = 0
        most = 0
        for symbol, (ids, error) in failed.items():
            for entry_id in ids:
                times = deliveries.get(entry_id, 1)
                if times >= self.options.max_deliveries:
                    self._dead_letter(entry_id, fields_by_id[entry_id], f"{type(error).__name__}: {error}", times)
                    dead += 1
                else:
                    retrying += 1
                    most = max(most, times)
                    logs.event(log, "protect_failed_will_retry", level=logging.WARNING, symbol=symbol,
                               entry_id=entry_id, deliveries=times, error=type(error).__name__, reason=str(error))
        if retrying:
            self._schedule_retry(min(self.options.retry_base_seconds * 2 ** (most - 1),
                                     self.options.retry_max_seconds))
        return retrying, dead

    def _schedule_retry(self, delay: float) -> None:
        due = time.monotonic() + delay
        with self._retry_lock:  # batches finish in their own threads
            self._retry_at = due if self._retry_at is None else min(self._retry_at, due)

    def _deliveries(self, entry_ids: list[str]) -> dict[str, int]:
        if not entry_ids:
            return {}
        ordered = sorted(entry_ids, key=_id_key)
        rows = self.client.xpending_range(
            self.keys.trade_updates, self.options.group, ordered[0], ordered[-1], len(ordered) + 1000,
            consumername=self.options.consumer,
        )
        wanted = set(entry_ids)
        return {row["message_id"]: int(row["times_delivered"]) for row in rows if row["message_id"] in wanted}

    def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str, deliveries: int | None) -> None:
        symbol = fields.get("symbol", "")
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letters, {
            "source_stream": self.keys.trade_updates,
            "entry_id": entry_id,
            "symbol": symbol,
            "client_order_id": fields.get("client_order_id", ""),
            "event": fields.get("event", ""),
            "deliveries": str(deliveries or 0),
            "consumer": self.options.consumer,
            "reason": reason,
            "fields": json.dumps(fields),
        })
        pipe.xack(self.keys.trade_updates, self.options.group, entry_id)
        pipe.execute()
        logs.event(log, "trade_update_dead_lettered", level=logging.ERROR, symbol=symbol,
                   client_order_id=fields.get("client_order_id"), entry_id=entry_id, deliveries=deliveries,
                   reason=reason, dead_letters=self.keys.dead_letters)
        bus.publish(self.client, self.keys, "alert", symbol=symbol, entry_id=entry_id,
                    message=f"trade update {entry_id} for {symbol or '?'} moved to dead letters: {reason}")


def _autoclaim(client: redis.Redis, keys: Keys, options: ConsumerOptions, start: str):
    reply = client.xautoclaim(keys.trade_updates, options.group, options.consumer,
                              min_idle_time=options.claim_idle_ms, start_id=start, count=options.count)
    next_start, claimed = reply[0], reply[1]
    deleted = reply[2] if len(reply) > 2 else []
    return next_start, [entry for entry in claimed if entry and entry[1] is not None], deleted


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _merge(a: BatchResult, b: BatchResult) -> BatchResult:
    return BatchResult(
        acked=a.acked + b.acked,
        failed=a.failed + b.failed,
        dead_lettered=a.dead_lettered + b.dead_lettered,
        skipped_duplicates=a.skipped_duplicates + b.skipped_duplicates,
        symbols=sorted({*a.symbols, *b.symbols}),
    )
