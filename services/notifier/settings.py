"""Notification settings (docs/operations.md, "Notifications")."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from shared.config import _Settings

#: Every event the notifier knows (`FL_NOTIFY_EVENTS` takes these names, or `all`).
EVENTS = (
    "entry_filled", "protected", "protection_failed", "unprotected", "position_closed", "exit_failed",
    "risk_limit", "halted", "resumed", "job_failed", "dead_letter", "streamer_disconnected",
    "streamer_reconnected", "report_written", "alert", "reconcile_fix", "entry_submitted", "signals_ranked",
    "trade_update", "test",
)
#: What a careful trader wants on a phone: money in and out (entries filled, exits with their P/L),
#: anything that needs a person now (protection failed, a position left unprotected, an exit refused,
#: a risk limit or a halt, a failed job, a dead letter, the broker's stream down and back), and the
#: day's summary. Not the routine (each protection placed, orders submitted, partial fills, the
#: manager's fixes and notes): `factoryline watch` and the logs have those.
DEFAULT_EVENTS = ("entry_filled,protection_failed,unprotected,position_closed,exit_failed,risk_limit,halted,"
                  "job_failed,dead_letter,streamer_disconnected,streamer_reconnected,report_written")


def split_urls(text: str) -> list[str]:
    """URLs separated by commas and/or whitespace, each once, in order."""
    return list(dict.fromkeys(part for part in re.split(r"[\s,]+", text.strip()) if part))


class NotifySettings(_Settings):
    #: One or more Apprise URLs (comma or whitespace separated), e.g. tgram://BOT_TOKEN/CHAT_ID. A
    #: secret: masked in every log line and in `factoryline config`. Empty: nothing is sent.
    FL_NOTIFY_URLS: SecretStr | None = None
    #: Comma-separated events to send (settings.EVENTS), or `all`.
    FL_NOTIFY_EVENTS: str = DEFAULT_EVENTS
    #: A position with no protection (from its entry fill or a failed protection until `protected`)
    #: for longer than this is an `unprotected` event.
    FL_NOTIFY_UNPROTECTED_SECONDS: float = Field(default=60.0, gt=0)
    #: The streamer's broker connection down (or its heartbeat stale) longer than this is a
    #: `streamer_disconnected` event (and `streamer_reconnected` when it is back).
    FL_NOTIFY_STREAMER_DOWN_SECONDS: float = Field(default=60.0, gt=0)
    #: Events within this many seconds of the first become one message.
    FL_NOTIFY_GROUP_SECONDS: float = Field(default=5.0, ge=0, le=300)
    #: At most this many messages per minute per URL; more events wait and join the next message.
    FL_NOTIFY_MAX_PER_MINUTE: int = Field(default=6, ge=1, le=600)
    #: Attempts after the first failed one, with doubling waits from FL_NOTIFY_RETRY_SECONDS.
    FL_NOTIFY_RETRIES: int = Field(default=5, ge=0, le=20)
    FL_NOTIFY_RETRY_SECONDS: float = Field(default=2.0, gt=0, le=300)

    @field_validator("FL_NOTIFY_URLS")
    @classmethod
    def _urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from services.notifier.sender import register_url_secrets

        for url in split_urls(value.get_secret_value()):
            register_url_secrets(url)
        return value

    @field_validator("FL_NOTIFY_EVENTS")
    @classmethod
    def _events(cls, value: str) -> str:
        names = [part.strip().lower() for part in value.split(",") if part.strip()]
        if names == ["all"]:
            return "all"
        unknown = [name for name in names if name not in EVENTS]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r} (use all, or some of: {', '.join(EVENTS)})")
        return ",".join(names)

    @property
    def urls(self) -> list[str]:
        return split_urls(self.FL_NOTIFY_URLS.get_secret_value()) if self.FL_NOTIFY_URLS else []

    @property
    def events(self) -> frozenset[str]:
        if self.FL_NOTIFY_EVENTS == "all":
            return frozenset(EVENTS)
        return frozenset(self.FL_NOTIFY_EVENTS.split(",")) | {"test"}
