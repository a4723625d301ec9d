"""`python -m services.manager.worker`: the RQ worker of the `manager` queue (runs the tick job).

The scheduler enqueues `services.manager.tick.manage_positions` every 5 minutes in market hours;
this worker runs it. Several workers may serve the queue: each exit takes the symbol's lock.
SIGTERM finishes the current tick first.

`--check` validates the settings, that Redis answers and that the broker's REST API answers, then
exits 0 (docker-compose healthcheck). Any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError

SERVICE = "manager"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.manager.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="validate config, Redis and broker connectivity, then exit 0 (or 2)")
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        from services.manager.portfolio import PortfolioSettings

        broker_settings = config.load(config.BrokerSettings)
        redis_settings = config.load(config.RedisSettings)
        config.load(config.ExitSettings)
        portfolio_settings = config.load(PortfolioSettings)
        logs.register_secret(broker_settings.ALPACA_API_KEY.get_secret_value())
        logs.register_secret(broker_settings.ALPACA_SECRET_KEY.get_secret_value())
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(broker_settings, redis_settings, keys, portfolio_settings)
        logs.setup(args.log_level.upper())
        from shared.queues import run_worker

        client = bus.connect_rq(redis_settings.REDIS_URL)
        try:
            run_worker(client, keys, SERVICE, burst=args.burst)
        finally:
            client.close()
        return 0
    except FactoryLineError as exc:
        print(f"manager worker: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"manager worker: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check(broker_settings: config.BrokerSettings, redis_settings: config.RedisSettings, keys: bus.Keys,
          portfolio_settings) -> int:
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
    print(f"manager worker: ok: config valid, Redis answers, broker answers (market "
          f"{'open' if clock.is_open else 'closed'}), queue {keys.queue(SERVICE)}, "
          f"portfolio {portfolio_settings.FL_PORTFOLIO_CSV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
