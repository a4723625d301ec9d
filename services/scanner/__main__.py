"""`python -m services.scanner`: the scanner's RQ worker, serving the `<FL_NAMESPACE>-scanner` queue.

The job is `services.scanner.jobs.scan_targets`. `--check` validates the settings and that Redis
answers, then exits 0 (docker-compose healthcheck); any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import redis

from services.scanner.settings import ScannerSettings
from shared import bus, config, logs
from shared.errors import FactoryLineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scanner", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="validate config and Redis connectivity, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        scanner_settings = config.load(ScannerSettings)
        ranker_settings = config.load(config.RankerSettings)
        config.load(config.BrokerSettings)
        config.load(config.ExitSettings)
        redis_settings = config.load(config.RedisSettings)
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if args.check:
            return check(scanner_settings, ranker_settings, redis_settings)
        logs.setup(args.log_level.upper())
        from shared.queues import run_worker

        run_worker(bus.connect_rq(redis_settings.REDIS_URL), keys, "scanner")
        return 0
    except FactoryLineError as exc:
        print(f"scanner: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"scanner: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check(scanner_settings: ScannerSettings, ranker_settings: config.RankerSettings,
          redis_settings: config.RedisSettings) -> int:
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
    finally:
        client.close()
    folder = ranker_settings.FL_SIGNALS_DIR
    targets = scanner_settings.FL_SCAN_TARGETS
    notes = []
    if not folder.is_dir():
        notes.append(f"signals folder {folder} does not exist")
    if targets is not None and not targets.is_file():
        notes.append(f"targets file {targets} does not exist")
    note = f" ({'; '.join(notes)})" if notes else ""
    print(f"scanner: ok: config valid, Redis answers, queue {bus.Keys(redis_settings.FL_NAMESPACE).queue('scanner')}"
          f"{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
