"""The project's typed errors.

Only a definitive broker answer is a rejection (`OrderRejected`). Timeouts, 5xx and dropped
connections are `BrokerUnavailable`: the order may or may not exist, and the caller must look it up
by client order id before doing anything else (see ../shared/design/STYLE.md).
"""

from __future__ import annotations

from decimal import Decimal


class FactoryLineError(Exception):
    """Base class; its message is one line meant for a person."""


class ConfigError(FactoryLineError):
    """A missing or invalid setting. The message names the variable."""


class InputError(FactoryLineError):
    """Bad input from a user or a file (not a bug, not the broker)."""


class BrokerError(FactoryLineError):
    """Anything the broker answered with an error, or failed to answer."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class NotFound(BrokerError):
    pass


class OrderRejected(BrokerError):
    """The broker refused the request; nothing was created."""


class NotFractionable(OrderRejected):
    pass


class NotTradable(OrderRejected):
    """The asset is halted or not tradable: no order is accepted. Resting orders may stay, so a
    working stop must not be cancelled in the hope of replacing it (../shared/reference/alpaca.md
    section 14)."""


class FractionalRuleViolation(OrderRejected):
    """Fractional/notional order broke a fractional rule (TIF not day, not simple, short...)."""


class InsufficientQty(OrderRejected):
    def __init__(self, message: str, *, available: Decimal | None = None, **kw):
        super().__init__(message, **kw)
        self.available = available


class InsufficientBuyingPower(OrderRejected):
    pass


class DuplicateClientOrderId(OrderRejected):
    """The client order id was used before: the earlier order must be looked up, not re-sent."""


class WashTrade(OrderRejected):
    pass


class InvalidPrice(OrderRejected):
    pass


class MarketClosed(OrderRejected):
    pass


class NotCancelable(OrderRejected):
    pass


class RateLimited(BrokerError):
    """429: try again later. Not definitive for an order submit (alpaca-py may have retried)."""


class BrokerUnavailable(BrokerError):
    """Timeout, connection error or 5xx: outcome unknown."""
