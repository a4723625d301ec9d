"""The day's schedule as pure functions (moved from services/scheduler/ so the portfolio backtest
replays the same manage ticks; the scheduler imports it from here): which job runs at which New York time of a trading day,
and which of them are due now (with catch-up inside a grace window, never later).

No I/O here: the trading sessions come in as `TradingDay`s (from the broker's calendar) and the
clock comes in as an aware `now`, so DST changes, early closes and missed runs are tested without
Redis, a broker or waiting.

A time spec is `HH:MM` (New York wall time), `open+N` / `close+N` / `close-N` (minutes from that
session's open or close, so early closes move it), or empty (the job is off).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from pydantic import Field

from shared import job_table
from shared.config import _Settings
from shared.errors import ConfigError
from shared.market.calendar import NEW_YORK
from shared.models import TradingDay

_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_RELATIVE = re.compile(r"^(open|close)\s*([+-])\s*(\d{1,3})$")


@dataclass(frozen=True)
class Job:
    """One kind of scheduled work: the RQ job to enqueue and on which service's queue."""

    name: str
    service: str
    func: str
    #: True for work that only makes sense while the market is open (entries, manage ticks).
    in_session: bool = False


# The functions come from the one table the workers allow (shared/job_table.py).
SCAN = Job("scan", "scanner", job_table.SCAN_TARGETS)
RANK = Job("rank", "ranker", job_table.RANK_SIGNALS)
TRADE = Job("trade", "trader", job_table.TRADE_SIGNALS, in_session=True)
MANAGE = Job("manage", "manager", job_table.MANAGE_POSITIONS, in_session=True)
#: Before the open: the day's splits re-base the positions, every protection is made right.
PRE_OPEN = Job("pre_open", "manager", job_table.PRE_OPEN_CHECK)
REPORT = Job("report", "reporter", job_table.DAILY_REPORT)
JOBS = (SCAN, RANK, PRE_OPEN, TRADE, MANAGE, REPORT)


@dataclass(frozen=True)
class TimeSpec:
    """`HH:MM` New York time, or minutes from the session's open/close."""

    anchor: str  # "clock", "open" or "close"
    minutes: int  # minutes after midnight for "clock"; signed offset otherwise

    @classmethod
    def parse(cls, name: str, text: str) -> TimeSpec:
        value = text.strip().lower()
        if match := _CLOCK.match(value):
            return cls("clock", int(match[1]) * 60 + int(match[2]))
        if match := _RELATIVE.match(value):
            offset = int(match[3])
            return cls(match[1], offset if match[2] == "+" else -offset)
        raise ConfigError(f"{name}: not a schedule time: {text!r} (use HH:MM New York time, open+N or close+N "
                          f"minutes, or empty to turn the job off)")

    def on(self, session: TradingDay) -> datetime:
        """The moment on this session's day, in New York time (DST-correct through zoneinfo)."""
        if self.anchor == "open":
            return (session.open + timedelta(minutes=self.minutes)).astimezone(NEW_YORK)
        if self.anchor == "close":
            return (session.close + timedelta(minutes=self.minutes)).astimezone(NEW_YORK)
        wall = datetime.combine(session.date, time(self.minutes // 60, self.minutes % 60), tzinfo=NEW_YORK)
        # A wall time inside the spring-forward gap does not exist; a UTC round trip moves it to the
        # real instant an hour later, as a person's clock would.
        return wall.astimezone(UTC).astimezone(NEW_YORK)


@dataclass(frozen=True)
class Plan:
    """The configured schedule: a time per once-a-day job, a period for manage ticks, the grace window."""

    times: dict[str, TimeSpec | None]
    manage_every: timedelta | None
    grace: timedelta

    def time_of(self, job: Job) -> TimeSpec | None:
        return self.times.get(job.name)


@dataclass(frozen=True)
class Entry:
    """One run of a job at one moment."""

    job: Job
    at: datetime  # aware, New York
    session: date

    def job_id(self, namespace: str) -> str:
        """RQ job id, unique per namespace, job and moment. RQ ids allow only [A-Za-z0-9_-] and are
        global to the Redis server, hence the namespace; a replica enqueueing the same entry gets
        rq's DuplicateJobError instead of a second run."""
        return f"{namespace}-sched-{self.job.name}-{self.at.strftime('%Y%m%d-%H%M')}"


def day_entries(session: TradingDay, plan: Plan) -> list[Entry]:
    """Every run scheduled on one trading session, in time order. In-session jobs falling outside
    [open, close) are dropped: no entry after an early close, no manage tick before the open."""
    entries: list[Entry] = []
    for job in (SCAN, RANK, TRADE, REPORT):
        spec = plan.time_of(job)
        if spec is None:
            continue
        moment = spec.on(session)
        if job.in_session and not session.open <= moment < session.close:
            continue
        entries.append(Entry(job, moment, session.date))
    if plan.manage_every is not None:
        tick = session.open.astimezone(NEW_YORK)
        while tick < session.close:
            entries.append(Entry(MANAGE, tick, session.date))
            tick = (tick + plan.manage_every).astimezone(NEW_YORK)
    return sorted(entries, key=lambda e: (e.at, e.job.name))


@dataclass(frozen=True)
class Decision:
    """What to do at `now`: enqueue `due`; `missed` are past their grace window and are dropped;
    `superseded` are older manage ticks a newer due tick replaces."""

    due: list[Entry]
    missed: list[Entry]
    superseded: list[Entry]


def decide(entries: list[Entry], now: datetime, grace: timedelta) -> Decision:
    """Split the entries whose time has come. An entry is due from its time until `grace` after it,
    and never later: a scheduler back at 14:00 places no 09:35 entries. Of several manage ticks
    inside the window only the newest runs (each tick reconciles everything; one is enough)."""
    due: list[Entry] = []
    missed: list[Entry] = []
    for entry in entries:
        if entry.at > now:
            continue
        (due if now - entry.at <= grace else missed).append(entry)
    ticks = [e for e in due if e.job is MANAGE]
    superseded = ticks[:-1]
    due = [e for e in due if e not in superseded]
    return Decision(due, missed, superseded)


def next_run(entries: list[Entry], now: datetime) -> datetime | None:
    """The earliest scheduled moment after `now`, if any."""
    later = [e.at for e in entries if e.at > now]
    return min(later) if later else None


class SchedulerSettings(_Settings):
    #: Scanner run, the night before the session (the ranker reads its logs at 06:00).
    FL_SCHEDULE_SCAN: str = "02:00"
    FL_SCHEDULE_RANK: str = "06:00"
    FL_SCHEDULE_TRADE: str = "09:35"
    #: The manager's pre-open check (corporate actions, then every position's protection).
    FL_SCHEDULE_PRE_OPEN: str = "open-20"
    #: Report after the close: 16:05 on a normal day, 13:05 after an early close.
    FL_SCHEDULE_REPORT: str = "close+5"
    #: Minutes between manage ticks during the session (0 turns them off).
    FL_SCHEDULE_MANAGE_MINUTES: int = Field(default=5, ge=0, le=390)
    #: A run missed while the scheduler was down is still enqueued this many minutes late, never later.
    #: At least 1: the loop wakes a moment after a run's time, and a zero window would miss it.
    FL_SCHEDULE_GRACE_MINUTES: int = Field(default=15, ge=1, le=240)
    #: Longest sleep between two looks at the clock and the calendar (seconds).
    FL_SCHEDULE_POLL_SECONDS: float = Field(default=30.0, gt=0, le=300)

    def plan(self) -> Plan:
        """The validated plan; a bad time is a one-line ConfigError naming the variable."""
        times: dict[str, TimeSpec | None] = {}
        for job in JOBS:
            if job is MANAGE:
                continue
            name = f"FL_SCHEDULE_{job.name.upper()}"
            text = getattr(self, name)
            times[job.name] = TimeSpec.parse(name, text) if text.strip() else None
        every = timedelta(minutes=self.FL_SCHEDULE_MANAGE_MINUTES) if self.FL_SCHEDULE_MANAGE_MINUTES else None
        return Plan(times=times, manage_every=every, grace=timedelta(minutes=self.FL_SCHEDULE_GRACE_MINUTES))


def next_session(sessions: list[TradingDay], plan: Plan, now: datetime) -> TradingDay | None:
    """The first of `sessions` (in date order) with a run still to come after `now`: today's until its
    last run (the report, 16:05), then the next trading day's, never a session already done."""
    for session in sorted(sessions, key=lambda s: s.date):
        if next_run(day_entries(session, plan), now) is not None:
            return session
    return None
