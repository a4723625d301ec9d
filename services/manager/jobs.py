"""The manager's scheduled RQ jobs besides the tick: `pre_open_check` (FL_SCHEDULE_PRE_OPEN, 09:10).

Reads: the positions, the day's corporate actions of the symbols held (one request), Redis state.
Decides: `shared.exits.PositionState.follow_broker` re-bases each split position's state (entry,
high-water mark, levels); the reconcile's plan makes its protective orders right, whatever the
broker did to them on the split (cancelled, adjusted or left as they were).
Writes: the states, the protective orders, one WARNING per split and per fix.
"""

from __future__ import annotations

from shared.market.calendar import NEW_YORK
from shared.positions import reconcile as rec
from shared.positions.context import context_from_environment


def pre_open_check() -> dict:
    """The RQ job: the pre-open reconcile with the settings from the environment."""
    with context_from_environment() as ctx:
        day = ctx.executor.get_clock().timestamp.astimezone(NEW_YORK).date()
        reports = rec.pre_open(ctx, day)
    return {"day": day.isoformat(), "symbols": {s: r.summary() for s, r in reports.items()},
            "failed": sorted(s for s, r in reports.items() if r.error is not None)}
