"""The scheduler's settings (FL_SCHEDULE_*): defined in `shared.schedule` beside the schedule they
configure (the portfolio backtest reads the same times); re-exported here for `factoryline config`.
"""

from shared.schedule import SchedulerSettings  # noqa: F401
