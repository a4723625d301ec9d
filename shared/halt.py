"""The halt flag (`Keys.halt`): no new entries and no soft exits while it is set; protection keeps running.

Set by `factoryline halt` and `flatten` (a person), and by a tripped risk limit (`shared.risk`).
Cleared only by `factoryline resume`. The value is JSON `{"reason","at","by"}`, readable with
`redis-cli GET fl:halt` and shown by `factoryline status`.
"""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime

from shared import bus
from shared.bus import Keys


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def halt_value(reason: str, at: datetime, by: str | None = None) -> str:
    """What the halt key holds: readable with `redis-cli GET`, parsed by `status`."""
    return json.dumps({"reason": reason, "at": at.isoformat(timespec="seconds"), "by": by or who()})


def set_halt(client, keys: Keys, reason: str, *, keep_existing: bool = False, by: str | None = None) -> bool:
    """Set the halt flag and announce it; with `keep_existing` an earlier halt (and its reason) stays.
    True when this call set it."""
    if not client.set(keys.halt, halt_value(reason, datetime.now(UTC), by), nx=keep_existing):
        return False
    bus.publish(client, keys, "halted", message=f"halt flag set: {reason or 'no reason given'}", reason=reason)
    return True


def halt_reason(client, keys: Keys) -> str | None:
    """The reason of the halt flag, or None when it is not set ('' for a flag without one)."""
    raw = client.get(keys.halt)
    if raw is None:
        return None
    try:
        return str(json.loads(raw).get("reason", ""))
    except (ValueError, AttributeError):
        return str(raw)
