"""`python -m services.ranker`: the ranker's RQ worker, serving the `<FL_NAMESPACE>-ranker` queue.

`--check` validates the settings and that Redis answers, then exits 0 (docker-compose healthcheck);
any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from shared import bus, config, service_main


def serve(_args: argparse.Namespace) -> None:
    config.load(config.RankerSettings)
    redis_settings = config.load(config.RedisSettings)
    from shared.queues import run_worker

    run_worker(bus.connect_rq(redis_settings), bus.Keys(redis_settings.FL_NAMESPACE), "ranker")


def check(_args: argparse.Namespace) -> str:
    ranker_settings = config.load(config.RankerSettings)
    redis_settings = config.load(config.RedisSettings)
    service_main.check_redis(redis_settings)
    folder = ranker_settings.FL_SIGNALS_DIR
    # A missing folder is reported, not fatal: the scanner may create it before 06:00.
    note = "" if folder.is_dir() else f" (signals folder {folder} does not exist yet)"
    return f"config valid, Redis answers, queue {bus.Keys(redis_settings.FL_NAMESPACE).queue('ranker')}{note}"


def main(argv: list[str] | None = None) -> int:
    return service_main.run("ranker", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
