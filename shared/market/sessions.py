"""The broker's trading session for a New York date, asked once and kept in Redis.

`<ns>:market:session:<YYYY-MM-DD>` holds the day's session as JSON (`{"date", "open", "close"}`) or
`"closed"` for a weekend or holiday, for 4 days. The scheduler stores the sessions it reads anyway;
the manager's tick reads them, so a tick never spends a broker request on the calendar (a cold
cache costs one `GET /v2/calendar` for the day, then none).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import redis

from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.market.calendar import NEW_YORK
from shared.models import TradingDay

#: How long a stored session is kept: long enough for a weekend, short enough to pick up a
#: calendar the broker corrects (an unscheduled closure is announced days ahead).
TTL_SECONDS = 4 * 24 * 3600
_CLOSED = "closed"




def store(client: redis.Redis, keys: Keys, start: date, end: date, sessions: Iterable[TradingDay]) -> None:
    """Remember what the broker said for every date from `start` to `end` (dates without a session
    are closed)."""
    by_date = {s.date: s for s in sessions}
    pipe = client.pipeline(transaction=False)
    day = start
    while day <= end:
        session = by_date.get(day)
        value = session.model_dump_json() if session is not None else json.dumps(_CLOSED)
        pipe.set(keys.market_session(day), value, ex=TTL_SECONDS)
        day += timedelta(days=1)
    pipe.execute()


def session_on(executor: OrderExecutor, client: redis.Redis, keys: Keys, day: date) -> TradingDay | None:
    """The broker's session on the New York date `day` (None: the market does not open that day)."""
    raw = client.get(keys.market_session(day))
    if raw is not None:
        value = json.loads(raw)
        return None if value == _CLOSED else TradingDay.model_validate(value)
    sessions = executor.get_calendar(day, day)
    store(client, keys, day, day, sessions)
    return next((s for s in sessions if s.date == day), None)


def in_session(executor: OrderExecutor, client: redis.Redis, keys: Keys, at: datetime) -> bool:
    """Is the market in its regular session at `at` (open <= at < close, early closes included)?"""
    session = session_on(executor, client, keys, at.astimezone(NEW_YORK).date())
    return session is not None and session.open <= at < session.close
