"""The scheduler loop: look at the clock and the broker's calendar, enqueue what is due, sleep.

Every run is enqueued with a fixed job id (namespace, job, New York minute) and `unique=True`, so
two replicas, or a restart inside the grace window, never put the same run on a queue twice: the
second enqueue gets rq's DuplicateJobError and is counted as `already_enqueued`. RQ keeps the job
hash 7 days after success and 30 after failure (shared.queues), far longer than any grace window.

Trading days come from the broker (`executor.get_calendar`), fetched once per New York date and kept
in Redis for the manager's tick (`shared.market.sessions`); a broker that does not answer skips that
look, and the next one tries again.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import redis
from rq.exceptions import DuplicateJobError

from services.scheduler.schedule import MANAGE, Entry, Plan, day_entries, decide, next_run, next_session
from shared import logs, queues
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.errors import FactoryLineError
from shared.market import sessions as market_sessions
from shared.market.calendar import NEW_YORK
from shared.models import TradingDay

log = logging.getLogger(__name__)

#: How long the health hash outlives the last look (a dead scheduler's hash disappears).
HEALTH_TTL_SECONDS = 600




@dataclass
class TickResult:
    enqueued: list[Entry] = field(default_factory=list)
    already_enqueued: list[Entry] = field(default_factory=list)
    missed: list[Entry] = field(default_factory=list)
    next_at: datetime | None = None


class Scheduler:
    def __init__(
        self,
        rq_client: redis.Redis,
        keys: Keys,
        executor: OrderExecutor,
        plan: Plan,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.rq_client = rq_client
        self.keys = keys
        self.executor = executor
        self.plan = plan
        self.clock = clock
        self._sessions: dict[date, list[TradingDay]] = {}
        self._reported_missed: set[str] = set()
        self._ahead: list[TradingDay] = []
        self._ahead_day: date | None = None

    def sessions_near(self, day: date) -> list[TradingDay]:
        """Yesterday's and today's sessions (New York dates): a grace window may reach back over
        midnight. Cached per date; the broker is asked once a day."""
        if day not in self._sessions:
            start = day - timedelta(days=1)
            self._sessions = {day: self.executor.get_calendar(start, day)}
            # Shared with the manager's tick, which then never asks the broker for the calendar.
            market_sessions.store(self.rq_client, self.keys, start, day, self._sessions[day])
        return self._sessions[day]

    def next_after_today(self, now: datetime) -> datetime | None:
        """After today's last run: the first run of the next trading session (asked of the broker's
        calendar once a day), so `next_run` is never empty between the close and midnight."""
        day = now.astimezone(NEW_YORK).date()
        if self._ahead_day != day:
            self._ahead = self.executor.get_calendar(day + timedelta(days=1), day + timedelta(days=10))
            self._ahead_day = day
        session = next_session(self._ahead, self.plan, now)
        return next_run(day_entries(session, self.plan), now) if session else None

    def entries_near(self, now: datetime) -> list[Entry]:
        entries: list[Entry] = []
        for session in self.sessions_near(now.astimezone(NEW_YORK).date()):
            entries += day_entries(session, self.plan)
        return entries

    def tick(self, now: datetime | None = None) -> TickResult:
        """One look at the clock: enqueue every due run once; report runs past their grace window."""
        now = (now or self.clock()).astimezone(NEW_YORK)
        entries = self.entries_near(now)
        decision = decide(entries, now, self.plan.grace)
        result = TickResult(next_at=next_run(entries, now) or self.next_after_today(now))
        for entry in decision.due:
            job_id = entry.job_id(self.keys.ns)
            try:
                queues.enqueue(self.rq_client, self.keys, entry.job.service, entry.job.func, job_id=job_id)
            except DuplicateJobError:
                result.already_enqueued.append(entry)
                continue
            result.enqueued.append(entry)
            logs.event(log, "job_enqueued", job=entry.job.name, queue=self.keys.queue(entry.job.service),
                       job_id=job_id, scheduled_for=entry.at.isoformat(),
                       late_seconds=int((now - entry.at).total_seconds()))
        for entry in decision.missed:
            result.missed.append(entry)
            job_id = entry.job_id(self.keys.ns)
            # Warn about today's missed runs only, once each; a missed manage tick needs no warning
            # (the next tick reconciles everything anyway).
            if (entry.job is MANAGE or entry.session != now.date() or job_id in self._reported_missed
                    or self._was_enqueued(job_id)):
                continue
            self._reported_missed.add(job_id)
            logs.event(log, "job_missed", level=logging.WARNING, job=entry.job.name, job_id=job_id,
                       scheduled_for=entry.at.isoformat(),
                       reason=f"past the {int(self.plan.grace.total_seconds() // 60)} min grace window")
        self._write_health(now, result)
        return result

    def _was_enqueued(self, job_id: str) -> bool:
        return bool(self.rq_client.exists(f"rq:job:{job_id}"))

    def _write_health(self, now: datetime, result: TickResult) -> None:
        key = self.keys.scheduler_health
        self.rq_client.hset(key, mapping={
            "host": socket.gethostname(),
            "last_look": now.isoformat(),
            "next_run": result.next_at.isoformat() if result.next_at else "",
        })
        self.rq_client.expire(key, HEALTH_TTL_SECONDS)

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        """Look, enqueue, sleep until the next run (at most `poll_seconds`) until `stop` is set."""
        logs.event(log, "scheduler_started", namespace=self.keys.ns,
                   grace_minutes=int(self.plan.grace.total_seconds() // 60))
        while not stop.is_set():
            wait = poll_seconds
            try:
                result = self.tick()
                if result.next_at is not None:
                    until = (result.next_at - self.clock()).total_seconds()
                    wait = min(poll_seconds, max(0.05, until))
            except (FactoryLineError, redis.RedisError) as exc:
                # The broker's calendar or Redis did not answer: nothing is lost while the grace
                # window lasts, so log and look again.
                logs.event(log, "scheduler_look_failed", level=logging.WARNING, error=logs.redact(str(exc)))
            stop.wait(wait)
        logs.event(log, "scheduler_stopped", namespace=self.keys.ns)
