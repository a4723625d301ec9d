"""Redis conventions: one namespace prefix for every key, stream, channel and queue we own.

`docs/redis.md` lists each key with a redis-cli command to inspect it. The prefix (FL_NAMESPACE,
default `fl`) keeps several accounts, and the tests, apart on one Redis server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import redis

SERVICES = ("ranker", "trader", "manager", "reporter", "scanner")


@dataclass(frozen=True)
class Keys:
    ns: str = "fl"

    def signals(self, day: date) -> str:
        """JSON list of the day's ranked signals, written by the ranker, read by the trader."""
        return f"{self.ns}:signals:{day.isoformat()}"

    @property
    def trade_updates(self) -> str:
        """Stream of every trade update (the streamer writes, the manager's group reads)."""
        return f"{self.ns}:stream:trade-updates"

    @property
    def dead_letters(self) -> str:
        return f"{self.ns}:stream:dead-letters"

    @property
    def notifications(self) -> str:
        """Pub/sub channel of live notifications for people (`factoryline watch`)."""
        return f"{self.ns}:notify"

    @property
    def halt(self) -> str:
        return f"{self.ns}:halt"

    def position_state(self, symbol: str) -> str:
        return f"{self.ns}:position:{symbol}"

    @property
    def ledger(self) -> str:
        return f"{self.ns}:ledger"

    @property
    def equity_history(self) -> str:
        return f"{self.ns}:equity"

    @property
    def streamer_health(self) -> str:
        return f"{self.ns}:streamer:health"

    @property
    def streamer_leader(self) -> str:
        return f"{self.ns}:streamer:leader"

    def queue(self, service: str) -> str:
        """RQ queue name of a service (RQ keys it as rq:queue:<name>)."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        return f"{self.ns}-{service}"


def connect(url: str, *, blocking: bool = False) -> redis.Redis:
    """A Redis client that returns str. Blocking consumers get no socket timeout: redis-py 8's
    default of 5 s turns a long XREADGROUP BLOCK into a TimeoutError (rq-redis.md section 3.6)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=None if blocking else 10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


def publish(client: redis.Redis, keys: Keys, kind: str, **fields: object) -> None:
    """Fire-and-forget notification for watchers; losing one loses nothing that matters."""
    client.publish(keys.notifications, json.dumps({"kind": kind, **fields}, default=str))


def connect_rq(url: str) -> redis.Redis:
    """The connection RQ needs: bytes responses (RQ breaks with decode_responses=True)."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
