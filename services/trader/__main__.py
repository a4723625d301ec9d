"""`python -m services.trader`: the trader's RQ worker, serving the `<FL_NAMESPACE>-trader` queue.

`--check` validates the settings, that Redis answers and that the broker answers with the configured
keys, then exits 0 (docker-compose healthcheck); any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.trader", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="validate config, Redis and broker connectivity, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        config.load(config.TraderSettings)
        redis_settings = config.load(config.RedisSettings)
        broker_settings = config.load(config.BrokerSettings)
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(redis_settings, broker_settings)
        logs.setup(args.log_level.upper())
        from shared.queues import run_worker

        run_worker(bus.connect_rq(redis_settings.REDIS_URL), keys, "trader")
        return 0
    except FactoryLineError as exc:
        print(f"trader: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"trader: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check(redis_settings: config.RedisSettings, broker_settings: config.BrokerSettings) -> int:
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
        halted = bool(client.exists(bus.Keys(redis_settings.FL_NAMESPACE).halt))
    finally:
        client.close()
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    try:
        clock = executor.get_clock()
        executor.get_account()  # proves the keys, not just the host
    finally:
        executor.close()
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    print(f"trader: ok: config valid, Redis answers, broker at {broker_settings.ALPACA_ENDPOINT} answers "
          f"(market {'open' if clock.is_open else 'closed'}), queue {keys.queue('trader')}"
          f"{' (HALTED: entries are refused until the halt key is deleted)' if halted else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
