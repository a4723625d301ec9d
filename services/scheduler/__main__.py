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

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError
from shared.market.calendar import NEW_YORK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="validate config, Redis and the broker calendar, print the next schedule, exit")
    parser.add_argument("--once", action="store_true", help="enqueue what is due now, then exit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        from services.scheduler.settings import SchedulerSettings

        settings = config.load(SchedulerSettings)
        plan = settings.plan()
        redis_settings = config.load(config.RedisSettings)
        broker_settings = config.load(config.BrokerSettings)
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        from shared.broker import make_executor

        executor = make_executor(broker_settings)
        try:
            if args.check:
                return check(executor, redis_settings, plan, keys)
            logs.setup(args.log_level.upper())
            from services.scheduler.runner import Scheduler

            scheduler = Scheduler(bus.connect_rq(redis_settings.REDIS_URL), keys, executor, plan)
            if args.once:
                result = scheduler.tick()
                print(f"scheduler: enqueued {len(result.enqueued)}, already enqueued "
                      f"{len(result.already_enqueued)}, next run "
                      f"{result.next_at.isoformat() if result.next_at else 'none today'}")
                return 0
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            scheduler.run(stop, settings.FL_SCHEDULE_POLL_SECONDS)
            return 0
        finally:
            executor.close()
    except FactoryLineError as exc:
        print(f"scheduler: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"scheduler: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check(executor, redis_settings: config.RedisSettings, plan, keys: bus.Keys) -> int:
    from services.scheduler.schedule import day_entries

    client = bus.connect(redis_settings.REDIS_URL)
    try:
        client.ping()
    finally:
        client.close()
    today = datetime.now(UTC).astimezone(NEW_YORK).date()
    sessions = executor.get_calendar(today, today + timedelta(days=10))
    if not sessions:
        raise FactoryLineError(f"the broker's calendar has no trading session from {today} for 10 days")
    session = sessions[0]
    entries = day_entries(session, plan)
    ticks = [e for e in entries if e.job.name == "manage"]
    others = [e for e in entries if e.job.name != "manage"]
    print(f"scheduler: ok: config valid, Redis answers, broker calendar answers; next session {session.date} "
          f"{session.open.strftime('%H:%M')}-{session.close.strftime('%H:%M')} New York; grace "
          f"{int(plan.grace.total_seconds() // 60)} min")
    for entry in others:
        print(f"  {entry.at.strftime('%H:%M %Z')}  {entry.job.name:<7} -> {keys.queue(entry.job.service)}"
              f"  {entry.job.func}")
    if ticks:
        print(f"  {ticks[0].at.strftime('%H:%M')}-{ticks[-1].at.strftime('%H:%M %Z')}  manage  x{len(ticks)} -> "
              f"{keys.queue('manager')}  {ticks[0].job.func}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
