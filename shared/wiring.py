"""A job's or a command's connections, from the environment and `.env`: the broker adapter, a Redis
client and the namespace's keys, both closed at the end; a Redis failure is one line
(FactoryLineError), never a traceback. The trader's job and the manager's jobs and commands use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from shared import bus, config, logs
from shared.broker.contract import OrderExecutor
from shared.errors import FactoryLineError


@contextmanager
def connected(broker_settings: config.BrokerSettings | None = None,
              redis_settings: config.RedisSettings | None = None) -> Iterator[tuple[OrderExecutor, redis.Redis, bus.Keys]]:
    broker_settings = broker_settings or config.load(config.BrokerSettings)
    redis_settings = redis_settings or config.load(config.RedisSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    client = bus.connect(redis_settings)
    try:
        from shared.broker import make_executor

        executor = make_executor(broker_settings)
        try:
            yield executor, client, keys
        finally:
            executor.close()
    except redis.RedisError as exc:
        raise FactoryLineError(f"Redis: {logs.redact(str(exc))}") from None
    finally:
        client.close()
