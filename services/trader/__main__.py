"""`python -m services.trader`: the trader's RQ worker, serving the `<FL_NAMESPACE>-trader` queue.

`--check` validates the settings, that Redis answers and that the broker answers with the configured
keys, then exits 0 (docker-compose healthcheck); any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from shared import bus, config, service_main


def serve(_args: argparse.Namespace) -> None:
    config.load(config.TraderSettings)
    config.load(config.RankerSettings)  # the re-check of the day's signals and FL_SIGNALS_HMAC_KEY
    config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    from shared.queues import run_worker

    run_worker(bus.connect_rq(redis_settings), bus.Keys(redis_settings.FL_NAMESPACE), "trader")


def check(_args: argparse.Namespace) -> str:
    config.load(config.TraderSettings)
    config.load(config.RankerSettings)
    redis_settings = config.load(config.RedisSettings)
    broker_settings = config.load(config.BrokerSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    service_main.check_redis(redis_settings)
    client = bus.connect(redis_settings)
    try:
        halted = bool(client.exists(keys.halt))
    finally:
        client.close()
    clock = service_main.check_broker(broker_settings)
    return (f"config valid, Redis answers, broker at {broker_settings.ALPACA_ENDPOINT} answers "
            f"({service_main.market_state(clock)}), queue {keys.queue('trader')}"
            f"{' (HALTED: entries are refused until the halt key is deleted)' if halted else ''}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("trader", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
