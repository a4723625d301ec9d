"""The manager replica's name in the trade-update consumer group, and the removal of dead names.

A stable name: unless FL_MANAGER_CONSUMER names one, a manager takes `manager-<n>`, the lowest n
whose lease `<ns>:manager:consumer:<n>` is free (SET NX PX LEASE_MS, renewed every LEASE_MS / 3 by
a daemon thread, deleted on a clean stop). Under docker compose a container gets a new host name at
every recreate, so the host name (the old default) left a new consumer in the group each time, with
the old one's pending entries stuck until another claimed them. With the lease, the recreated
container takes the name its predecessor released and re-reads that name's pending entries at once;
replicas (`--scale manager=N`) hold different leases, so two live managers never share a name.

Dead consumers: `prune_dead_consumers` deletes members of the group that no live manager holds, that
have been idle longer than `idle_ms` and that have no pending entries. It never deletes one with
pending entries (XGROUP DELCONSUMER would drop them, and with them an unprotected fill): those are
first taken over by a live manager's XAUTOCLAIM (FL_MANAGER_CLAIM_IDLE_MS), and pruned after that.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading

import redis

from shared import logs
from shared.bus import Keys
from shared.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "manager-"
LEASE_MS = 15_000
MAX_REPLICAS = 64
#: How often the lease thread also removes dead consumers.
PRUNE_EVERY_SECONDS = 60.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 2 or 0
"""
_DELETE_IF_NO_PENDING = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class ConsumerLease:
    """The lease on one `manager-<n>` name; `acquire` finds the lowest free one."""

    def __init__(self, client: redis.Redis, keys: Keys, name: str, token: str):
        self.client, self.keys, self.name, self.token = client, keys, name, token
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, client: redis.Redis, keys: Keys) -> ConsumerLease:
        token = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        for n in range(1, MAX_REPLICAS + 1):
            name = f"{PREFIX}{n}"
            if client.set(keys.manager_consumer(name), token, nx=True, px=LEASE_MS):
                return cls(client, keys, name, token)
        raise ConfigError(f"all {MAX_REPLICAS} manager consumer names are leased "
                          f"({keys.manager_consumer(PREFIX + '*')}): run fewer replicas or set FL_MANAGER_CONSUMER")

    def renew(self) -> bool:
        """Extend the lease (or take it back if it lapsed while Redis was away); False if another holds it."""
        return bool(self.client.eval(_RENEW, 1, self.keys.manager_consumer(self.name), self.token, LEASE_MS))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.eval(_RELEASE, 1, self.keys.manager_consumer(self.name), self.token)
        except redis.RedisError:
            pass  # it lapses in LEASE_MS anyway

    def keep(self, group: str, idle_ms: int) -> None:
        """Renew in a daemon thread until `release`; every PRUNE_EVERY_SECONDS also prune dead consumers."""

        def loop() -> None:
            waited = PRUNE_EVERY_SECONDS  # prune once at start
            while True:
                try:
                    if not self.renew():
                        logs.event(log, "consumer_lease_taken", level=logging.ERROR, consumer=self.name)
                    if waited >= PRUNE_EVERY_SECONDS:
                        waited = 0.0
                        prune_dead_consumers(self.client, self.keys, group, self.name, idle_ms)
                except redis.RedisError:
                    pass  # Redis restarting: the manager's own loop reports it; try again next round
                if self._stop.wait(LEASE_MS / 3000):
                    return
                waited += LEASE_MS / 3000

        self._thread = threading.Thread(target=loop, name="consumer-lease", daemon=True)
        self._thread.start()


def prune_dead_consumers(client: redis.Redis, keys: Keys, group: str, own: str, idle_ms: int) -> list[str]:
    """Delete the group's consumers that are not `own`, hold no lease, have no pending entries and have
    been idle more than `idle_ms`. Returns the names deleted."""
    stream = keys.trade_updates
    try:
        consumers = client.xinfo_consumers(stream, group)
    except redis.ResponseError:
        return []  # no stream or no group yet
    removed: list[str] = []
    for consumer in consumers:
        name = consumer["name"]
        if name == own or int(consumer["pending"]) > 0 or int(consumer["idle"]) <= idle_ms:
            continue
        if name.startswith(PREFIX) and client.exists(keys.manager_consumer(name)):
            continue  # a live replica's name (idle only because it is busy)
        # Deleted only if still without pending entries, in one step inside the server.
        if client.eval(_DELETE_IF_NO_PENDING, 1, stream, group, name):
            removed.append(name)
    if removed:
        logs.event(log, "dead_consumers_removed", level=logging.WARNING, consumers=",".join(removed), group=group)
    return removed
