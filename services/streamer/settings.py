"""The streamer's own settings (FL_STREAMER_*), loaded with `shared.config.load` like every group.

The defaults are the production values; tests shorten the lock timings to keep fail-over quick.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.config import _Settings


class StreamerSettings(_Settings):
    #: A dead leader's lock expires after this long; a standby then takes the broker connection.
    FL_STREAMER_LOCK_TTL_SECONDS: float = Field(default=15.0, ge=1, le=300)
    #: How often the leader extends its lock (and standbys try to take it).
    FL_STREAMER_LOCK_REFRESH_SECONDS: float = Field(default=5.0, gt=0, le=100)
    #: Backfill asks for orders updated since the last recorded event minus this margin.
    FL_STREAMER_BACKFILL_MARGIN_SECONDS: float = Field(default=60.0, ge=0, le=86_400)
    #: Approximate length the trade-update stream is trimmed to (never below 10,000: trimming
    #: deletes entries a consumer group has not acknowledged yet).
    FL_STREAMER_MAXLEN: int = Field(default=100_000, ge=10_000)
    #: How long an event id is remembered for de-duplication (seconds; 7 days).
    FL_STREAMER_SEEN_TTL_SECONDS: int = Field(default=604_800, ge=3_600)

    @model_validator(mode="after")
    def _refresh_well_inside_ttl(self) -> StreamerSettings:
        if self.FL_STREAMER_LOCK_REFRESH_SECONDS * 2 > self.FL_STREAMER_LOCK_TTL_SECONDS:
            raise ValueError(
                "FL_STREAMER_LOCK_REFRESH_SECONDS must be at most half of FL_STREAMER_LOCK_TTL_SECONDS "
                "(else the leader's lock can expire between two refreshes)"
            )
        return self
