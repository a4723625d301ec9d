"""`python -m services.scanner`: the scanner's RQ worker, serving the `<FL_NAMESPACE>-scanner` queue.

The job is `services.scanner.jobs.scan_targets`. `--check` validates the settings and that Redis
answers, then exits 0 (docker-compose healthcheck); any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from services.scanner.settings import ScannerSettings
from shared import bus, config, service_main


def _load() -> tuple[ScannerSettings, config.RankerSettings, config.RedisSettings]:
    """Every group the scan job reads, so a bad setting stops the worker before its first job."""
    scanner_settings = config.load(ScannerSettings)
    ranker_settings = config.load(config.RankerSettings)
    config.load(config.BrokerSettings)
    config.load(config.ExitSettings)
    return scanner_settings, ranker_settings, config.load(config.RedisSettings)


def serve(_args: argparse.Namespace) -> None:
    _, _, redis_settings = _load()
    from shared.queues import run_worker

    run_worker(bus.connect_rq(redis_settings), bus.Keys(redis_settings.FL_NAMESPACE), "scanner")


def check(_args: argparse.Namespace) -> str:
    scanner_settings, ranker_settings, redis_settings = _load()
    service_main.check_redis(redis_settings)
    folder = ranker_settings.FL_SIGNALS_DIR
    targets = scanner_settings.FL_SCAN_TARGETS
    # Missing files are reported, not fatal: a first run creates the folder, the targets may come later.
    notes = []
    if not folder.is_dir():
        notes.append(f"signals folder {folder} does not exist")
    if targets is not None and not targets.is_file():
        notes.append(f"targets file {targets} does not exist")
    note = f" ({'; '.join(notes)})" if notes else ""
    return f"config valid, Redis answers, queue {bus.Keys(redis_settings.FL_NAMESPACE).queue('scanner')}{note}"


def main(argv: list[str] | None = None) -> int:
    return service_main.run("scanner", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
