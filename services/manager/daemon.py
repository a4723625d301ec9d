"""The manager process: the trade-update consumer plus reconcile-all at start and on a timer.

Reads: the trade-update stream (consumer group), the broker, the positions' state in Redis.
Decides: which symbols to reconcile (those an event touched; all of them at start and every
FL_MANAGER_RECONCILE_SECONDS).
Writes: protective orders at the broker, acknowledgements, dead letters, ledger, state, notifications.

Start-up and recovery are one path: first this consumer's own unacknowledged entries (a crash
between a fill and its protection), then entries left by dead replicas, then everything new, then a
reconcile of every position, which also protects what no event explains.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from services.manager.consumer import ConsumerOptions, TradeUpdateConsumer
from services.manager.settings import ManagerSettings
from shared import logs
from shared.broker.contract import OrderExecutor
from shared.bus import Keys, RedisReachability
from shared.exits import ExitRules
from shared.models import TradeUpdate
from shared.ownership import ForeignPolicy
from shared.positions import reconcile as rec
from shared.positions.context import ManagerContext
from shared.protection import Trigger

log = logging.getLogger(__name__)

#: Redis failures `start` and `step` wait out (RedisReachability logs them) instead of dying.
REDIS_DOWN = (redis.RedisError, OSError)
#: Pause before the next try while Redis does not answer.
REDIS_RETRY_SECONDS = 1.0


class Manager:
    def __init__(
        self,
        executor: OrderExecutor,
        client: redis.Redis,
        stream_client: redis.Redis,
        keys: Keys,
        rules: ExitRules,
        settings: ManagerSettings,
        foreign_policy: ForeignPolicy = ForeignPolicy.PROTECT,
    ):
        """`stream_client` blocks in XREADGROUP: it must come from `bus.connect(url, blocking=True)`."""
        self.executor = executor
        self.client = client
        self.keys = keys
        self.rules = rules
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.FL_MANAGER_WORKERS, thread_name_prefix="reconcile")
        self.ctx = ManagerContext(executor, client, keys, rules, foreign_policy, self.pool)
        self.consumer = TradeUpdateConsumer(
            stream_client,
            keys,
            self.protect,
            ConsumerOptions(
                consumer=settings.FL_MANAGER_CONSUMER,
                claim_idle_ms=settings.FL_MANAGER_CLAIM_IDLE_MS,
                max_deliveries=settings.FL_MANAGER_MAX_DELIVERIES,
                retry_base_seconds=settings.FL_MANAGER_RETRY_SECONDS,
                max_in_flight=settings.FL_MANAGER_MAX_IN_FLIGHT,
            ),
        )
        self._stop = threading.Event()
        self._next_reconcile_all = 0.0
        #: `redis_unreachable` within a poll of losing Redis, every 10 s while it lasts; `redis_reachable_again`.
        self.reachability = RedisReachability(client, log)

    def protect(self, symbols: list[str], updates: list[TradeUpdate]) -> dict[str, BaseException | None]:
        """The consumer's handler: reconcile the symbols the events touched."""
        reports = rec.reconcile_symbols(self.ctx, symbols, Trigger.FILL, updates=updates)
        return {symbol: report.error for symbol, report in reports.items()}

    def reconcile_all(self, reason: Trigger) -> dict[str, rec.SymbolReport]:
        try:
            reports = rec.reconcile_all(self.ctx, reason)
        except Exception as exc:  # noqa: BLE001 - the broker may be down; the next timer run tries again
            logs.event(log, "reconcile_all_failed", level=logging.WARNING, trigger=reason,
                       error=type(exc).__name__, reason=str(exc))
            return {}
        failed = [s for s, r in reports.items() if r.error is not None]
        logs.event(log, "reconcile_all_done", trigger=reason, symbols=len(reports),
                   changed=sum(r.changed for r in reports.values()), failed=",".join(failed) or None)
        return reports

    def start(self) -> None:
        """Catch up (own pending entries, dead replicas' entries, everything new), then reconcile every
        position. While Redis does not answer it waits and tries the catch-up again (the entries stay
        in the stream); it returns early only when `stop` is called meanwhile."""
        logs.event(log, "manager_starting", consumer=self.settings.FL_MANAGER_CONSUMER,
                   stream=self.keys.trade_updates)
        while True:
            try:
                recovered = self.consumer.start()
                while (batch := self.consumer.poll(block_ms=0)).acked or batch.failed or batch.dead_lettered:
                    recovered.acked += batch.acked
                break
            except REDIS_DOWN as exc:
                self.reachability.failed(exc)
                if self._stop.wait(REDIS_RETRY_SECONDS):
                    return
        self.reachability.answered()
        logs.event(log, "manager_caught_up", acked=recovered.acked, failed=recovered.failed,
                   dead_lettered=recovered.dead_lettered)
        self.reconcile_all(Trigger.START)
        self._next_reconcile_all = time.monotonic() + self.settings.FL_MANAGER_RECONCILE_SECONDS

    def run(self) -> None:
        self.start()
        while not self._stop.is_set():
            self.step()
        logs.event(log, "manager_stopped", consumer=self.settings.FL_MANAGER_CONSUMER)

    def step(self) -> None:
        until_timer = self._next_reconcile_all - time.monotonic()
        if until_timer <= 0:
            self.reconcile_all(Trigger.TIMER)
            self._next_reconcile_all = time.monotonic() + self.settings.FL_MANAGER_RECONCILE_SECONDS
            return
        try:
            # Pipelined: the next entries are read while earlier submits are still at the broker.
            self.consumer.poll(block_ms=int(min(1000, until_timer * 1000)) + 1, pipelined=True)
        except REDIS_DOWN as exc:
            # Redis restarting: nothing is lost (entries stay in the stream); wait and read again.
            self.reachability.failed(exc)
            self._stop.wait(REDIS_RETRY_SECONDS)
            return
        self.reachability.answered()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.consumer.close()
        self.pool.shutdown(wait=True)
