"""What every manager procedure works with, as one object instead of `executor, client, keys, ...`."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import redis

from shared import config
from shared.broker.contract import BrokerCapabilities, OrderExecutor
from shared.bus import Keys
from shared.exits import ExitRules
from shared.ownership import ForeignPolicy
from shared.positions import locks
from shared.wiring import connected

#: How long a market sell may take to fill before the exit takes it back and re-protects.
FILL_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class ManagerContext:
    executor: OrderExecutor
    client: redis.Redis
    keys: Keys
    rules: ExitRules
    foreign_policy: ForeignPolicy = ForeignPolicy.PROTECT
    #: Broker calls of different symbols overlap here (a burst of fills at the open, reconcile-all).
    pool: ThreadPoolExecutor | None = None
    lock_wait_seconds: float = locks.WAIT_SECONDS
    fill_wait_seconds: float = FILL_WAIT_SECONDS
    #: The account's risk limits (the tick measures them; shared.risk).
    risk: config.RiskSettings = field(default_factory=lambda: config.RiskSettings(_env_file=None))

    @property
    def capabilities(self) -> BrokerCapabilities:
        return self.executor.capabilities

    def with_(self, **changes: object) -> ManagerContext:
        return replace(self, **changes)

    @classmethod
    def from_settings(cls, executor: OrderExecutor, client: redis.Redis, keys: Keys,
                      pool: ThreadPoolExecutor | None = None) -> ManagerContext:
        """The rules and the foreign-position policy from the environment (ConfigError if invalid)."""
        exit_settings = config.load(config.ExitSettings)
        return cls(executor, client, keys, ExitRules.from_settings(exit_settings),
                   ForeignPolicy(exit_settings.FL_FOREIGN_POSITIONS), pool, risk=config.load(config.RiskSettings))

    def map(self, fn, items):
        """`fn` over `items`, in the pool when there is one and more than one item."""
        items = list(items)
        if self.pool is not None and len(items) > 1:
            return list(self.pool.map(fn, items))
        return [fn(item) for item in items]


@contextmanager
def context_from_environment() -> Iterator[ManagerContext]:
    """A context wired from the environment and `.env` (the RQ jobs and the commands): the broker
    adapter, a Redis client, the rules and the foreign-position policy; both connections closed at
    the end, a Redis failure one line (FactoryLineError), never a traceback."""
    with connected() as (executor, client, keys):
        yield ManagerContext.from_settings(executor, client, keys)
