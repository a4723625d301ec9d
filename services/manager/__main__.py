"""`python -m services.manager`: protect every position; consume trade updates; reconcile on a timer.

Run one per host or container, or several (`--scale manager=3`): each needs its own
FL_MANAGER_CONSUMER (the host name by default). SIGTERM/SIGINT stop it after the current step.

`--check` validates the settings, that Redis answers and that the broker's REST API answers, then
exits 0 (docker-compose healthcheck). Any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError

from .settings import ManagerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.manager", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="validate config, Redis and broker connectivity, then exit 0 (or 2)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        broker_settings = config.load(config.BrokerSettings)
        redis_settings = config.load(config.RedisSettings)
        exit_settings = config.load(config.ExitSettings)
        manager_settings = config.load(ManagerSettings)
        logs.register_secret(broker_settings.ALPACA_API_KEY.get_secret_value())
        logs.register_secret(broker_settings.ALPACA_SECRET_KEY.get_secret_value())
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(broker_settings, redis_settings, manager_settings, keys)
        logs.setup(args.log_level.upper())
        return serve(broker_settings, redis_settings, exit_settings, manager_settings, keys)
    except FactoryLineError as exc:
        print(f"manager: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"manager: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def serve(broker_settings: config.BrokerSettings, redis_settings: config.RedisSettings,
          exit_settings: config.ExitSettings, manager_settings: ManagerSettings, keys: bus.Keys) -> int:
    from shared.broker import make_executor
    from shared.exits import ExitRules

    from .daemon import Manager

    executor = make_executor(broker_settings)
    client = bus.connect(redis_settings.REDIS_URL)
    stream_client = bus.connect(redis_settings.REDIS_URL, blocking=True)
    manager = Manager(executor, client, stream_client, keys, ExitRules.from_settings(exit_settings), manager_settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: manager.stop())
    try:
        manager.run()
    finally:
        manager.close()
        executor.close()
        client.close()
        stream_client.close()
    return 0


def check(broker_settings: config.BrokerSettings, redis_settings: config.RedisSettings,
          manager_settings: ManagerSettings, keys: bus.Keys) -> int:
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
    finally:
        client.close()
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    try:
        clock = executor.get_clock()
    finally:
        executor.close()
    print(f"manager: ok: config valid, Redis answers, broker answers (market {'open' if clock.is_open else 'closed'}),"
          f" consumer {manager_settings.FL_MANAGER_CONSUMER} of {keys.trade_updates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
