"""NYSE trading sessions (weekends, holidays, early closes) from exchange_calendars' XNYS.

Loaded once per process into plain dicts of aware America/New_York datetimes, so lookups are
cheap and nothing downstream touches pandas.
"""

from __future__ import annotations

import bisect
import warnings
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from shared.models import TradingDay

NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


class NyseCalendar:
    def __init__(self, start: date | None = None, end: date | None = None):
        import exchange_calendars as xcals  # slow import (pandas): only when a calendar is needed

        kwargs = {}
        if start is not None:
            kwargs["start"] = start.isoformat()
        if end is not None:
            kwargs["end"] = end.isoformat()
        with warnings.catch_warnings():
            # exchange_calendars 4.13 uses a pandas API that pandas 3.1 deprecates; harmless here.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            cal = xcals.get_calendar("XNYS", **kwargs)
        sched = cal.schedule
        self._days: dict[date, TradingDay] = {}
        for label, row in zip(sched.index, sched.itertuples(index=False), strict=True):
            day = label.date()
            self._days[day] = TradingDay(
                date=day,
                open=row.open.to_pydatetime().astimezone(NEW_YORK),
                close=row.close.to_pydatetime().astimezone(NEW_YORK),
            )
        self._dates = sorted(self._days)
        self.first_date = self._dates[0]
        self.last_date = self._dates[-1]

    def session(self, day: date) -> TradingDay | None:
        """The trading session on `day`, or None on a weekend or holiday."""
        self._check_range(day)
        return self._days.get(day)

    def sessions(self, start: date, end: date) -> list[TradingDay]:
        """Sessions with start <= date <= end."""
        lo = bisect.bisect_left(self._dates, start)
        hi = bisect.bisect_right(self._dates, end)
        return [self._days[d] for d in self._dates[lo:hi]]

    def next_session(self, day: date, *, include: bool = False) -> TradingDay:
        """The first session after `day` (or on it, with include=True)."""
        idx = bisect.bisect_left(self._dates, day) if include else bisect.bisect_right(self._dates, day)
        if idx >= len(self._dates):
            raise ValueError(f"{day} is past the end of the NYSE calendar ({self.last_date})")
        return self._days[self._dates[idx]]

    def previous_session(self, day: date) -> TradingDay:
        idx = bisect.bisect_left(self._dates, day) - 1
        if idx < 0:
            raise ValueError(f"{day} is before the start of the NYSE calendar ({self.first_date})")
        return self._days[self._dates[idx]]

    def is_open(self, at: datetime) -> bool:
        session = self._days.get(at.astimezone(NEW_YORK).date())
        return session is not None and session.open <= at < session.close

    def _check_range(self, day: date) -> None:
        if not self.first_date <= day <= self.last_date + timedelta(days=6):
            raise ValueError(f"{day} is outside the NYSE calendar ({self.first_date} to {self.last_date})")


@lru_cache(maxsize=1)
def nyse() -> NyseCalendar:
    """The process-wide calendar: 1990 (real history replayed and backtested goes back that far) to
    two years ahead of today."""
    today = datetime.now(UTC).date()
    return NyseCalendar(start=date(1990, 1, 1), end=date(today.year + 2, 12, 31))
