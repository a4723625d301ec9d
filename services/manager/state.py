"""Moved to `shared.position_store` (the reporter and ops read it too). Kept while the demo moves over."""

from shared.position_store import *  # noqa: F403
