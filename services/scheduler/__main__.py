"""`python -m services.scheduler`: enqueue the day's jobs at New York times on trading days.

`--check` validates the schedule settings, that Redis answers and that the broker's calendar
answers, prints the next trading session's schedule, then exits 0 (docker-compose healthcheck).
`--once` makes one look at the clock (enqueue what is due) and exits. Any problem is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta

from shared import bus, config, metrics, service_main
from shared.errors import FactoryLineError
from shared.market.calendar import NEW_YORK


def _load():
    """The schedule first: a bad time is the likeliest mistake and names its variable."""
    from services.scheduler.settings import SchedulerSettings

    settings = config.load(SchedulerSettings)
    plan = settings.plan()
    redis_settings = config.load(config.RedisSettings)
    broker_settings = config.load(config.BrokerSettings)
    return settings, plan, redis_settings, broker_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="enqueue what is due now, then exit")


def serve(args: argparse.Namespace) -> None:
    settings, plan, redis_settings, broker_settings = _load()
    from services.scheduler.runner import Scheduler
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    try:
        scheduler = Scheduler(bus.connect_rq(redis_settings), bus.Keys(redis_settings.FL_NAMESPACE),
                              executor, plan)
        if args.once:
            result = scheduler.tick()
            print(f"scheduler: enqueued {len(result.enqueued)}, already enqueued "
                  f"{len(result.already_enqueued)}, next run "
                  f"{result.next_at.isoformat() if result.next_at else 'none today'}")
            return
        metrics.start("scheduler")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        scheduler.run(stop, settings.FL_SCHEDULE_POLL_SECONDS)
    finally:
        executor.close()


def check(_args: argparse.Namespace) -> str:
    """The next session's schedule, one line per job (the 5-minute ticks folded into one)."""
    from services.scheduler.schedule import day_entries, next_session
    from shared.broker import make_executor

    _, plan, redis_settings, broker_settings = _load()
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    executor = make_executor(broker_settings)
    try:
        service_main.check_redis(redis_settings)
        now = datetime.now(UTC).astimezone(NEW_YORK)
        today = now.date()
        sessions = executor.get_calendar(today, today + timedelta(days=10))
        broker_settings.check_account(executor.get_account().account_number)  # the live guard
    finally:
        executor.close()
    session = next_session(sessions, plan, now)
    if session is None:
        raise FactoryLineError(f"the broker's calendar has no trading session from {today} for 10 days")
    entries = day_entries(session, plan)
    ticks = [e for e in entries if e.job.name == "manage"]
    others = [e for e in entries if e.job.name != "manage"]
    lines = [f"config valid, Redis answers, broker calendar answers; next session {session.date} "
             f"{session.open.strftime('%H:%M')}-{session.close.strftime('%H:%M')} New York; grace "
             f"{int(plan.grace.total_seconds() // 60)} min"]
    lines += [f"  {entry.at.strftime('%H:%M %Z')}  {entry.job.name:<7} -> {keys.queue(entry.job.service)}"
              f"  {entry.job.func}" for entry in others]
    if ticks:
        lines.append(f"  {ticks[0].at.strftime('%H:%M')}-{ticks[-1].at.strftime('%H:%M %Z')}  manage  "
                     f"x{len(ticks)} -> {keys.queue('manager')}  {ticks[0].job.func}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return service_main.run("scheduler", __doc__, argv, serve=serve, check=check, add_arguments=add_arguments)


if __name__ == "__main__":
    sys.exit(main())
