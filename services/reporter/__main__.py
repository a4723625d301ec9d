"""`python -m services.reporter`: the reporter's RQ worker, serving the `<FL_NAMESPACE>-reporter` queue.

The scheduler enqueues `services.reporter.jobs.daily_report` there at 16:05 New York. `--check`
validates the settings and that Redis and the broker answer, then exits 0 (docker-compose healthcheck); any problem
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import redis

from services.reporter.settings import ReporterSettings
from shared import bus, config, logs
from shared.errors import FactoryLineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.reporter", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="validate config and Redis connectivity, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        settings = config.load(ReporterSettings)
        broker_settings = config.load(config.BrokerSettings)
        config.load(config.ExitSettings)
        redis_settings = config.load(config.RedisSettings)
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            client = bus.connect(redis_settings.REDIS_URL)
            try:
                client.ping()
            finally:
                client.close()
            from shared.broker import make_executor

            executor = make_executor(broker_settings)
            try:
                executor.get_clock()
            finally:
                executor.close()
            print(f"reporter: ok: config valid, Redis and the broker answer, queue {keys.queue('reporter')}, "
                  f"reports to {settings.FL_REPORTS_DIR}")
            return 0
        logs.setup(args.log_level.upper())
        from shared.queues import run_worker

        run_worker(bus.connect_rq(redis_settings.REDIS_URL), keys, "reporter")
        return 0
    except FactoryLineError as exc:
        print(f"reporter: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"reporter: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
