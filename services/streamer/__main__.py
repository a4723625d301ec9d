"""`python -m services.streamer`: hold the broker's trade-update stream and record every update.

Run several replicas if you like: one leads (holds the one connection Alpaca allows per account),
the others wait as hot standbys. SIGTERM/SIGINT stop it cleanly (drain, release the lock).

`--check` validates the settings, that Redis answers and that the broker's REST API answers, then
exits 0 (docker-compose healthcheck). It does not open the trade-update WebSocket: Alpaca allows
one per account and the leader holds it. Any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

from shared import bus, config, logs, metrics, service_main

from .settings import StreamerSettings


def serve(_args: argparse.Namespace) -> int:
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    streamer_settings = config.load(StreamerSettings)
    from shared.broker import make_executor

    from .daemon import Streamer

    executor = make_executor(broker_settings)
    client = bus.connect(redis_settings)
    streamer = Streamer(executor, client, bus.Keys(redis_settings.FL_NAMESPACE), streamer_settings)
    metrics.start("streamer", collectors=[metrics.StreamerCollector(streamer)])
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: streamer.stop())
    try:
        streamer.run()
    finally:
        executor.close()
        client.close()
    return 0


def check(_args: argparse.Namespace) -> str:
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    config.load(StreamerSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    client = bus.connect(redis_settings)
    try:
        client.ping()
        leader = client.get(keys.streamer_leader)
    finally:
        client.close()
    # The REST API only: the trade-update WebSocket is the leader's (one per account).
    clock = service_main.check_broker(broker_settings)
    return (f"config valid, Redis answers, broker answers at {logs.safe_url(broker_settings.ALPACA_ENDPOINT)} "
            f"({service_main.market_state(clock)}), leader: {leader or 'none'}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("streamer", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
