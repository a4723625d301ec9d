"""The scheduler's settings (FL_SCHEDULE_*): one time per job, the manage period, the grace window.

Times are New York wall time (`HH:MM`) or minutes from the session's open/close (`open+5`,
`close+5`), so an early close moves a close-relative job with it. Empty turns a job off.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from services.scheduler.schedule import JOBS, MANAGE, Plan, TimeSpec
from shared.config import _Settings


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
