"""The manager's own settings (FL_MANAGER_*), loaded with `shared.config.load` like every group.

The defaults are the production values; tests shorten the claim and retry timings.
"""

from __future__ import annotations

from pydantic import Field

from shared.config import _Settings


class ManagerSettings(_Settings):
    #: This replica's name in the stream's consumer group. Must differ between running replicas and
    #: stay the same across restarts of one, so a restarted manager re-reads its own pending entries.
    #: Empty (the default): the lowest free `manager-<n>`, leased in Redis while the process runs
    #: (services/manager/consumer_name.py); a container recreated under compose takes the same name.
    FL_MANAGER_CONSUMER: str = Field(default="", pattern=r"^([A-Za-z0-9_.:@-]{1,64})?$")
    #: Seconds between two reconcile-all runs (also re-arms fractional day stops after the open).
    FL_MANAGER_RECONCILE_SECONDS: float = Field(default=60.0, ge=1, le=3600)
    #: Entries unacknowledged this long by another consumer are taken over (it is presumed dead).
    FL_MANAGER_CLAIM_IDLE_MS: int = Field(default=30_000, ge=100, le=3_600_000)
    #: An entry that failed this many deliveries goes to the dead-letter stream.
    FL_MANAGER_MAX_DELIVERIES: int = Field(default=5, ge=1, le=100)
    #: First retry of a failed entry after this many seconds (doubling per delivery, at most 30 s).
    FL_MANAGER_RETRY_SECONDS: float = Field(default=1.0, gt=0, le=60)
    #: Symbols reconciled in parallel (broker round trips overlap in a burst of fills at the open):
    #: sized for a burst, so 100 fills at the open go out in two waves of round trips, not thirteen.
    FL_MANAGER_WORKERS: int = Field(default=64, ge=1, le=256)
    #: Batches of trade updates being reconciled at once: the consumer reads the next entries while
    #: earlier submits are at the broker, and waits when this many are in flight. 1: one at a time.
    FL_MANAGER_MAX_IN_FLIGHT: int = Field(default=4, ge=1, le=64)
