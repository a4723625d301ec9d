"""`python -m services.ranker`: the ranker's RQ worker, serving the `<FL_NAMESPACE>-ranker` queue.

`--check` validates the settings and that Redis answers, then exits 0 (docker-compose healthcheck);
any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.ranker", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="validate config and Redis connectivity, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        ranker_settings = config.load(config.RankerSettings)
        redis_settings = config.load(config.RedisSettings)
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(ranker_settings, redis_settings)
        logs.setup(args.log_level.upper())
        from shared.queues import run_worker

        run_worker(bus.connect_rq(redis_settings.REDIS_URL), keys, "ranker")
        return 0
    except FactoryLineError as exc:
        print(f"ranker: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"ranker: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check(ranker_settings: config.RankerSettings, redis_settings: config.RedisSettings) -> int:
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
    finally:
        client.close()
    folder = ranker_settings.FL_SIGNALS_DIR
    # A missing folder is reported, not fatal: the scanner may create it before 06:00.
    note = "" if folder.is_dir() else f" (signals folder {folder} does not exist yet)"
    print(f"ranker: ok: config valid, Redis answers, queue {bus.Keys(redis_settings.FL_NAMESPACE).queue('ranker')}"
          f"{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
