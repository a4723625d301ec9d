"""The day's schedule: pure, in `shared.schedule` (the portfolio backtest replays the same times)."""

from shared.schedule import (  # noqa: F401 - re-exported for the scheduler's modules
    JOBS,
    MANAGE,
    PRE_OPEN,
    RANK,
    REPORT,
    SCAN,
    TRADE,
    Decision,
    Entry,
    Job,
    Plan,
    TimeSpec,
    day_entries,
    decide,
    next_run,
    next_session,
)
