"""`python -m services.reporter`: the reporter's RQ worker, serving the `<FL_NAMESPACE>-reporter` queue.

The scheduler enqueues `services.reporter.jobs.daily_report` there at 16:05 New York. `--check`
validates the settings and that Redis and the broker answer, then exits 0 (docker-compose healthcheck); any problem
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from services.reporter.settings import ReporterSettings
from shared import bus, config, service_main


def serve(_args: argparse.Namespace) -> None:
    config.load(ReporterSettings)
    config.load(config.BrokerSettings)
    config.load(config.ExitSettings)
    redis_settings = config.load(config.RedisSettings)
    from shared.queues import run_worker

    run_worker(bus.connect_rq(redis_settings), bus.Keys(redis_settings.FL_NAMESPACE), "reporter")


def check(_args: argparse.Namespace) -> str:
    settings = config.load(ReporterSettings)
    broker_settings = config.load(config.BrokerSettings)
    config.load(config.ExitSettings)
    redis_settings = config.load(config.RedisSettings)
    service_main.check_redis(redis_settings)
    service_main.check_broker(broker_settings)
    return (f"config valid, Redis and the broker answer, queue {bus.Keys(redis_settings.FL_NAMESPACE).queue('reporter')}, "
            f"reports to {settings.FL_REPORTS_DIR}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("reporter", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
