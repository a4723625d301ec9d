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

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError

from .settings import StreamerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.streamer", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="validate config, Redis and broker connectivity, then exit 0 (or 2)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        broker_settings = config.load(config.BrokerSettings)
        redis_settings = config.load(config.RedisSettings)
        streamer_settings = config.load(StreamerSettings)
        logs.register_secret(broker_settings.ALPACA_API_KEY.get_secret_value())
        logs.register_secret(broker_settings.ALPACA_SECRET_KEY.get_secret_value())
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(broker_settings, redis_settings, keys)
        logs.setup(args.log_level.upper())
        return serve(broker_settings, redis_settings, streamer_settings, keys)
    except FactoryLineError as exc:
        print(f"streamer: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"streamer: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def serve(broker_settings: config.BrokerSettings, redis_settings: config.RedisSettings,
          streamer_settings: StreamerSettings, keys: bus.Keys) -> int:
    from shared.broker import make_executor

    from .daemon import Streamer

    executor = make_executor(broker_settings)
    client = bus.connect(redis_settings.REDIS_URL)
    streamer = Streamer(executor, client, keys, streamer_settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: streamer.stop())
    try:
        streamer.run()
    finally:
        executor.close()
        client.close()
    return 0


def check(broker_settings: config.BrokerSettings, redis_settings: config.RedisSettings, keys: bus.Keys) -> int:
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
        leader = client.get(keys.streamer_leader)
    finally:
        client.close()
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    try:
        clock = executor.get_clock()
    except FactoryLineError:
        raise
    except Exception as exc:  # a transport error the adapter did not translate: still one line
        raise FactoryLineError(f"broker at {broker_settings.ALPACA_ENDPOINT}: {type(exc).__name__}: {exc}") from None
    finally:
        executor.close()
    print(f"streamer: ok: config valid, Redis answers, broker answers at {broker_settings.ALPACA_ENDPOINT} "
          f"(market {'open' if clock.is_open else 'closed'}), leader: {leader or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
