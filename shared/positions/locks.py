"""The per-symbol lock every change to a symbol's sell orders runs under.

Several manager replicas (and the soft-exit code, which cancels protection before selling) may act
on one symbol at once; each would read the broker, see nothing protecting the shares and place a
set, so the account would get two. The lock makes "read the broker, decide, cancel, place" one step
per symbol across processes: `SET key token NX PX ttl`, released only by its holder
(compare-and-delete in Lua), and expiring on its own if the holder dies.

The TTL is short (5 s) so a killed holder leaves its symbols unprotectable only briefly; a live holder
keeps its locks by a keeper thread that extends them (compare-and-pexpire) every second, however long
a broker call takes.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared import logs
from shared.bus import Keys
from shared.errors import FactoryLineError

log = logging.getLogger(__name__)

#: How long a lock outlives its holder's last sign of life. The keeper extends held locks every
#: KEEP_ALIVE_SECONDS, so a live holder never loses one however long the broker takes.
LOCK_TTL_MS = 5_000
KEEP_ALIVE_SECONDS = 1.0
WAIT_SECONDS = 20.0

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class _Keeper:
    """Extends every lock this process holds until it is released (one daemon thread per process)."""

    def __init__(self) -> None:
        self._held: dict[tuple[int, str], tuple[redis.Redis, str, int]] = {}
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, client: redis.Redis, key: str, token: str, ttl_ms: int) -> None:
        with self._mutex:
            self._held[(id(client), key)] = (client, token, ttl_ms)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="symbol-lock-keeper", daemon=True)
                self._thread.start()

    def drop(self, client: redis.Redis, key: str) -> None:
        with self._mutex:
            self._held.pop((id(client), key), None)

    def _run(self) -> None:
        while True:
            time.sleep(KEEP_ALIVE_SECONDS)
            with self._mutex:
                held = list(self._held.items())
            for (client_id, key), (client, token, ttl_ms) in held:
                try:
                    kept = client.eval(_EXTEND, 1, key, token, ttl_ms)
                except redis.RedisError:
                    continue  # Redis away: the next round tries again; the TTL is the safety net
                if not kept:
                    with self._mutex:
                        self._held.pop((client_id, key), None)
                    logs.event(log, "symbol_lock_lost", level=logging.WARNING, key=key,
                               reason="expired before it could be extended")


_KEEPER = _Keeper()


class SymbolBusy(FactoryLineError):
    """Another process held the symbol's lock for longer than we were willing to wait."""




def try_acquire(client: redis.Redis, keys: Keys, symbol: str, ttl_ms: int = LOCK_TTL_MS, *,
                keep_alive: bool = True) -> str | None:
    """The lock's token when we got it, else None (someone else holds it). With `keep_alive` the
    process keeps extending it until `release`."""
    token = secrets.token_hex(12)
    key = keys.symbol_lock(symbol)
    if not client.set(key, token, nx=True, px=ttl_ms):
        return None
    if keep_alive:
        _KEEPER.hold(client, key, token, ttl_ms)
    return token


def release(client: redis.Redis, keys: Keys, symbol: str, token: str) -> bool:
    """Delete the lock only if it is still ours (it may have expired and been taken by another)."""
    key = keys.symbol_lock(symbol)
    _KEEPER.drop(client, key)
    return bool(client.eval(_RELEASE, 1, key, token))


def try_acquire_many(client: redis.Redis, keys: Keys, symbols: list[str], ttl_ms: int = LOCK_TTL_MS) -> dict[str, str]:
    """Take every free lock among `symbols` in one round trip; {symbol: token} of those we got (kept
    alive until released)."""
    tokens = {symbol: secrets.token_hex(12) for symbol in symbols}
    pipe = client.pipeline(transaction=False)
    for symbol, token in tokens.items():
        pipe.set(keys.symbol_lock(symbol), token, nx=True, px=ttl_ms)
    got = {symbol: token for (symbol, token), ok in zip(tokens.items(), pipe.execute(), strict=True) if ok}
    for symbol, token in got.items():
        _KEEPER.hold(client, keys.symbol_lock(symbol), token, ttl_ms)
    return got


def release_many(client: redis.Redis, keys: Keys, tokens: dict[str, str]) -> list[str]:
    """Release the locks still ours in one round trip; returns the symbols whose lock had been lost."""
    if not tokens:
        return []
    pipe = client.pipeline(transaction=False)
    for symbol, token in tokens.items():
        _KEEPER.drop(client, keys.symbol_lock(symbol))
        pipe.eval(_RELEASE, 1, keys.symbol_lock(symbol), token)
    return [symbol for symbol, released in zip(tokens, pipe.execute(), strict=True) if not released]


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
