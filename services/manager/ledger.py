"""Moved to `shared.ledger` (the reporter, scanner and ops read it too). Kept while the demo moves over."""

from shared.ledger import *  # noqa: F403
from shared.ledger import ClosedTrade, announce, append_once, read  # noqa: F401
