"""The leader lock: Alpaca allows ONE trade-update connection per account, so only one streamer
replica holds it; the others wait as hot standbys and take over when the leader's lock expires.

The lock is `Keys.streamer_leader` = a token unique to the process (SET NX PX). The leader extends
it every few seconds with a compare-and-extend script, so it can only ever extend its own lock.
A refresh that finds another token means the lock was lost: the caller stops streaming at once.
A refresh that finds no lock at all (Redis was restarted and forgot it, or it expired with nobody
taking it) takes it back: nobody else can have streamed under it, since nobody held it.
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

# KEYS: lock. ARGV: token, ttl ms. 1 = ours (extended or retaken), 0 = someone else's.
_EXTEND_IF_OURS = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def new_token() -> str:
    """host:pid:random, so the health hash and `redis-cli GET` say which replica leads."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaderLock:
    def __init__(self, client: redis.Redis, key: str, token: str, ttl_seconds: float):
        self.client = client
        self.key = key
        self.token = token
        self.ttl_ms = int(ttl_seconds * 1000)
        self._extend = client.register_script(_EXTEND_IF_OURS)
        self._release = client.register_script(_RELEASE_IF_OURS)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (or keep it if we already do). Raises redis errors."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return self.refresh()

    def refresh(self) -> bool:
        """Extend our lock; False when another replica holds it. Raises redis errors."""
        return bool(self._extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> bool:
        """Give the lock up so a standby takes over without waiting for the expiry."""
        return bool(self._release(keys=[self.key], args=[self.token]))

    def holder(self) -> str | None:
        return self.client.get(self.key)
