"""The manager's scheduled RQ jobs besides the tick: `pre_open_check` (FL_SCHEDULE_PRE_OPEN, 09:10).

Reads: the positions, the day's corporate actions of the symbols held (one request), Redis state.
Decides: `shared.exits.PositionState.follow_broker` re-bases each split position's state (entry,
high-water mark, levels); the reconcile's plan makes its protective orders right, whatever the
broker did to them on the split (cancelled, adjusted or left as they were).
Writes: the states, the protective orders, one WARNING per split and per fix.
"""

from __future__ import annotations

import redis

from services.manager import reconcile as rec
from services.manager.context import ManagerContext
from shared import bus, config, logs
from shared.errors import FactoryLineError
from shared.market.calendar import NEW_YORK


def pre_open_check() -> dict:
    """The RQ job: the pre-open reconcile with the settings from the environment."""
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    client = bus.connect(redis_settings.REDIS_URL)
    try:
        from shared.broker import make_executor

        executor = make_executor(broker_settings)
        try:
            ctx = ManagerContext.from_settings(executor, client, keys)
            day = executor.get_clock().timestamp.astimezone(NEW_YORK).date()
            reports = rec.pre_open(ctx, day)
        finally:
            executor.close()
    except redis.RedisError as exc:
        raise FactoryLineError(f"Redis: {logs.redact(str(exc))}") from None
    finally:
        client.close()
    return {"day": day.isoformat(), "symbols": {s: r.summary() for s, r in reports.items()},
            "failed": sorted(s for s, r in reports.items() if r.error is not None)}
