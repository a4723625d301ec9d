"""The per-symbol lock every change to a symbol's sell orders runs under.

Several manager replicas (and the soft-exit code, which cancels protection before selling) may act
on one symbol at once; each would read the broker, see nothing protecting the shares and place a
set, so the account would get two. The lock makes "read the broker, decide, cancel, place" one step
per symbol across processes: `SET key token NX PX ttl`, released only by its holder
(compare-and-delete in Lua), and expiring on its own if the holder dies.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared import logs
from shared.bus import Keys
from shared.errors import FactoryLineError

log = logging.getLogger(__name__)

#: Longer than a reconcile can take (reads, cancel, wait for the release, place), so a live holder
#: never loses it; short enough that a killed holder blocks the symbol only briefly.
LOCK_TTL_MS = 30_000
WAIT_SECONDS = 20.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SymbolBusy(FactoryLineError):
    """Another process held the symbol's lock for longer than we were willing to wait."""


def lock_key(keys: Keys, symbol: str) -> str:
    return f"{keys.ns}:lock:symbol:{symbol}"


def try_acquire(client: redis.Redis, keys: Keys, symbol: str, ttl_ms: int = LOCK_TTL_MS) -> str | None:
    """The lock's token when we got it, else None (someone else holds it)."""
    token = secrets.token_hex(12)
    return token if client.set(lock_key(keys, symbol), token, nx=True, px=ttl_ms) else None


def release(client: redis.Redis, keys: Keys, symbol: str, token: str) -> bool:
    """Delete the lock only if it is still ours (it may have expired and been taken by another)."""
    return bool(client.eval(_RELEASE, 1, lock_key(keys, symbol), token))


@contextmanager
def symbol_lock(
    client: redis.Redis,
    keys: Keys,
    symbol: str,
    *,
    wait_seconds: float = WAIT_SECONDS,
    ttl_ms: int = LOCK_TTL_MS,
) -> Iterator[str]:
    """Hold `symbol`'s lock for the block; wait for it up to `wait_seconds`, else SymbolBusy.

    Waiting (rather than skipping) matters: the holder read the broker before our event's fill
    may have happened, so we must still look ourselves once it is done.
    """
    deadline = time.monotonic() + wait_seconds
    pause = 0.002
    while (token := try_acquire(client, keys, symbol, ttl_ms)) is None:
        if time.monotonic() >= deadline:
            raise SymbolBusy(f"{symbol}: another manager held the symbol lock for over {wait_seconds:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    try:
        yield token
    finally:
        if not release(client, keys, symbol, token):
            logs.event(log, "symbol_lock_lost", level=logging.WARNING, symbol=symbol,
                       reason="expired before release; another process may have acted meanwhile")
