"""`python -m services.notifier`: send the line's notifications to people through Apprise.

Reads `<ns>:stream:notifications` (every `shared.bus.publish`) through the consumer group `notifier`,
groups bursts, rate-limits, retries, and records what could not be delivered
(docs/operations.md, "Notifications"). Run one replica. With FL_NOTIFY_URLS empty it sends nothing
and just waits. SIGTERM/SIGINT stop it; a message being sent is finished first.

`--check` validates the settings (every URL readable by Apprise) and that Redis answers, then exits 0
(docker-compose healthcheck). Any problem is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from shared import bus, config, logs, metrics, service_main
from shared.errors import ConfigError

log = logging.getLogger("services.notifier")


def _load():
    from services.notifier.sender import check_url
    from services.notifier.settings import NotifySettings

    settings = config.load(NotifySettings)
    for url in settings.urls:
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(f"FL_NOTIFY_URLS: {exc}") from None
    return settings, config.load(config.RedisSettings)


def serve(_args: argparse.Namespace) -> int:
    settings, redis_settings = _load()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    metrics.start("notifier")
    if not settings.urls:
        logs.event(log, "notifier_idle", level=logging.WARNING, reason="FL_NOTIFY_URLS is empty: nothing is sent")
        stop.wait()
        return 0
    from services.notifier.daemon import Notifier

    client = bus.connect(redis_settings, blocking=True)
    try:
        Notifier(client, bus.Keys(redis_settings.FL_NAMESPACE), settings).run(stop)
    finally:
        client.close()
    return 0


def check(_args: argparse.Namespace) -> str:
    from services.notifier.sender import shown

    settings, redis_settings = _load()
    service_main.check_redis(redis_settings)
    if not settings.urls:
        return "config valid, Redis answers; FL_NOTIFY_URLS is empty: nothing is sent"
    return (f"config valid, Redis answers; {len(settings.urls)} URL(s): {', '.join(map(shown, settings.urls))}; "
            f"events: {settings.FL_NOTIFY_EVENTS}")


def main(argv: list[str] | None = None) -> int:
    return service_main.run("notifier", __doc__, argv, serve=serve, check=check)


if __name__ == "__main__":
    sys.exit(main())
