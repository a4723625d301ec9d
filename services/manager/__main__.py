"""`python -m services.manager`: protect every position; consume trade updates; reconcile on a timer.

Run one per host or container, or several (`--scale manager=3`): each gets its own consumer name,
the lowest free `manager-<n>` (leased in Redis while it runs), or FL_MANAGER_CONSUMER. SIGTERM/SIGINT stop it after the current step.

`--check` validates the settings, that Redis answers and that the broker's REST API answers, then
exits 0 (docker-compose healthcheck). Any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

from shared import bus, config, metrics, service_main

from .settings import ManagerSettings


def serve(_args: argparse.Namespace) -> int:
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    exit_settings = config.load(config.ExitSettings)
    manager_settings = config.load(ManagerSettings)
    from shared.broker import make_executor
    from shared.exits import ExitRules
    from shared.ownership import ForeignPolicy

    from .consumer import GROUP
    from .consumer_name import ConsumerLease
    from .daemon import Manager

    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    executor = make_executor(broker_settings)
    client = bus.connect(redis_settings)
    stream_client = bus.connect(redis_settings, blocking=True)
    lease = None
    if not manager_settings.FL_MANAGER_CONSUMER:
        lease = ConsumerLease.acquire(client, keys)
        manager_settings = manager_settings.model_copy(update={"FL_MANAGER_CONSUMER": lease.name})
        lease.keep(GROUP, max(2 * manager_settings.FL_MANAGER_CLAIM_IDLE_MS, 60_000))
    manager = Manager(executor, client, stream_client, keys, ExitRules.from_settings(exit_settings), manager_settings,
                      ForeignPolicy(exit_settings.FL_FOREIGN_POSITIONS))
    # The line-state collector lives here only, so a sum over services never counts the line twice.
    metrics.start("manager", collectors=[metrics.LineStateCollector(client, keys)])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: manager.stop())
    try:
        manager.run()
    finally:
        if lease is not None:
            lease.release()
        manager.close()
        executor.close()
        client.close()
        stream_client.close()
    return 0


def check(_args: argparse.Namespace) -> str:
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    config.load(config.ExitSettings)
    manager_settings = config.load(ManagerSettings)
    service_main.check_redis(redis_settings)
    clock = service_main.check_broker(broker_settings)
    return (f"config valid, Redis answers, broker answers ({service_main.market_state(clock)}),"
            f" consumer {manager_settings.FL_MANAGER_CONSUMER or 'manager-<n> (leased at start)'} of {bus.Keys(redis_settings.FL_NAMESPACE).trade_updates}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("manager", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
