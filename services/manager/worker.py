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

from shared import bus, config, logs, service_main

SERVICE = "manager"


def _load():
    """Every group the tick job reads; the broker keys are registered so no log line can show them."""
    from services.manager.portfolio import PortfolioSettings

    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    config.load(config.ExitSettings)
    portfolio_settings = config.load(PortfolioSettings)
    logs.register_secret(broker_settings.ALPACA_API_KEY.get_secret_value())
    logs.register_secret(broker_settings.ALPACA_SECRET_KEY.get_secret_value())
    return broker_settings, redis_settings, portfolio_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")


def serve(args: argparse.Namespace) -> None:
    _, redis_settings, _ = _load()
    from shared.queues import run_worker

    client = bus.connect_rq(redis_settings)
    try:
        run_worker(client, bus.Keys(redis_settings.FL_NAMESPACE), SERVICE, burst=args.burst)
    finally:
        client.close()


def check(_args: argparse.Namespace) -> str:
    broker_settings, redis_settings, portfolio_settings = _load()
    service_main.check_redis(redis_settings)
    clock = service_main.check_broker(broker_settings)
    return (f"config valid, Redis answers, broker answers ({service_main.market_state(clock)}), "
            f"queue {bus.Keys(redis_settings.FL_NAMESPACE).queue(SERVICE)}, "
            f"portfolio {portfolio_settings.FL_PORTFOLIO_CSV}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("manager worker", __doc__, argv, serve=serve, check=check,
                            prog="python -m services.manager.worker", add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
