"""Domain models shared by every pillar: broker-neutral, Decimal money, timezone-aware times.

These are what the `OrderExecutor` contract returns and what crosses Redis. Everything is a
pydantic model validated when read; unknown JSON fields are ignored so an older reader accepts a
newer writer's payload (version-tolerant), and `schema_version` lets a reader tell them apart.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from shared.money import ZERO


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class Model(BaseModel):
    """Base for every model that crosses a process boundary."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"


class OrderClass(StrEnum):
    SIMPLE = "simple"
    BRACKET = "bracket"
    OCO = "oco"
    OTO = "oto"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    OPG = "opg"
    CLS = "cls"
    IOC = "ioc"
    FOK = "fok"


class OrderStatus(StrEnum):
    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    NEW = "new"
    HELD = "held"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    DONE_FOR_DAY = "done_for_day"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    REJECTED = "rejected"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    CALCULATED = "calculated"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    PENDING_REVIEW = "pending_review"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_open(self) -> bool:
        """Still able to fill (and so still holding shares, for a sell)."""
        return not self.is_terminal


_TERMINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REPLACED, OrderStatus.REJECTED}
)

_S = OrderStatus
#: Legal order-status transitions, including the real-world odd ones: a cancel request can lose
#: the race against a fill (PENDING_CANCEL -> FILLED), and a late fill report can arrive after a
#: cancel was reported (CANCELED -> FILLED, as NautilusTrader documents).
ORDER_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    _S.PENDING_NEW: frozenset({_S.ACCEPTED, _S.NEW, _S.HELD, _S.REJECTED, _S.CANCELED, _S.PARTIALLY_FILLED, _S.FILLED}),
    _S.ACCEPTED: frozenset({_S.NEW, _S.HELD, _S.REJECTED, _S.CANCELED, _S.EXPIRED, _S.PARTIALLY_FILLED, _S.FILLED, _S.PENDING_CANCEL}),
    _S.HELD: frozenset({_S.NEW, _S.CANCELED, _S.EXPIRED, _S.PARTIALLY_FILLED, _S.FILLED, _S.PENDING_CANCEL}),
    _S.NEW: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.PENDING_CANCEL, _S.PENDING_REPLACE, _S.CANCELED, _S.EXPIRED, _S.DONE_FOR_DAY, _S.REPLACED, _S.STOPPED, _S.SUSPENDED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.PENDING_CANCEL, _S.PENDING_REPLACE, _S.CANCELED, _S.EXPIRED, _S.DONE_FOR_DAY, _S.REPLACED}),
    _S.PENDING_CANCEL: frozenset({_S.CANCELED, _S.PARTIALLY_FILLED, _S.FILLED, _S.NEW, _S.EXPIRED}),
    _S.PENDING_REPLACE: frozenset({_S.REPLACED, _S.NEW, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED}),
    _S.DONE_FOR_DAY: frozenset({_S.NEW, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELED, _S.EXPIRED}),
    _S.STOPPED: frozenset({_S.FILLED, _S.CANCELED}),
    _S.SUSPENDED: frozenset({_S.NEW, _S.CANCELED}),
    _S.CALCULATED: frozenset({_S.FILLED}),
    _S.ACCEPTED_FOR_BIDDING: frozenset({_S.NEW, _S.FILLED, _S.CANCELED}),
    _S.PENDING_REVIEW: frozenset({_S.NEW, _S.ACCEPTED, _S.REJECTED}),
    _S.CANCELED: frozenset({_S.FILLED, _S.PARTIALLY_FILLED}),
    _S.FILLED: frozenset(),
    _S.EXPIRED: frozenset(),
    _S.REPLACED: frozenset(),
    _S.REJECTED: frozenset(),
}


def can_transition(current: OrderStatus, new: OrderStatus) -> bool:
    return current == new or new in ORDER_TRANSITIONS[current]


class Account(Model):
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    last_equity: Decimal = ZERO
    currency: str = "USD"
    #: Alpaca's account number: paper accounts' begin with PA (BrokerSettings.check_account).
    account_number: str = ""


class Asset(Model):
    symbol: str
    fractionable: bool
    tradable: bool = True
    name: str = ""


class Position(Model):
    symbol: str
    qty: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal
    current_price: Decimal | None = None
    market_value: Decimal | None = None
    unrealized_pl: Decimal | None = None
    cost_basis: Decimal | None = None

    @property
    def qty_held_for_orders(self) -> Decimal:
        return self.qty - self.qty_available


class Order(Model):
    id: str
    client_order_id: str
    symbol: str
    side: Side
    type: OrderType
    order_class: OrderClass = OrderClass.SIMPLE
    time_in_force: TimeInForce
    status: OrderStatus
    qty: Decimal | None = None
    notional: Decimal | None = None
    filled_qty: Decimal = ZERO
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    submitted_at: AwareDatetime | None = None
    filled_at: AwareDatetime | None = None
    legs: list[Order] = Field(default_factory=list)

    def all_orders(self) -> list[Order]:
        """This order and its legs (an OCO's stop leg is a child of its limit)."""
        return [self, *(leg for leg in self.legs for leg in leg.all_orders())]

    @property
    def remaining_qty(self) -> Decimal | None:
        return None if self.qty is None else self.qty - self.filled_qty


class PriceSource(StrEnum):
    ASK = "ask"
    LAST_TRADE = "last_trade"


class LatestPrice(Model):
    """The price to act on for a symbol: the ask, or the last trade when there is no ask."""

    symbol: str
    price: Decimal
    source: PriceSource
    bid: Decimal | None = None
    ask: Decimal | None = None
    last_trade: Decimal | None = None
    as_of: AwareDatetime | None = None


class Bar(Model):
    t: AwareDatetime
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - the market's own name for the low
    c: Decimal
    v: Decimal = ZERO


class BarRow(NamedTuple):
    """A bar as a plain row: the fields of `Bar`, the same Decimals and aware time, no validation.

    What `OrderExecutor.get_bar_rows` returns for reads of many bars (the scanner's two years of 500
    tickers), where building a pydantic model per bar was most of the cost. The adapter that makes one
    checks what the broker sent (every field present, a number, a time); a row is not for crossing a
    process boundary (use `Bar` for that). Reads `bar.t`, `bar.c`, ... like a `Bar`.
    """

    t: datetime
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - the market's own name for the low
    c: Decimal
    v: Decimal = ZERO


#: What the pure bar code (strategies, backtest, the scanner's checks) reads: either form, by attribute.
AnyBar = Bar | BarRow


class Timeframe(StrEnum):
    MINUTE = "1Min"
    DAY = "1Day"


class MarketClock(Model):
    timestamp: AwareDatetime
    is_open: bool
    next_open: AwareDatetime
    next_close: AwareDatetime


class TradingDay(Model):
    date: date
    open: AwareDatetime
    close: AwareDatetime


class Split(Model):
    """A stock split as the broker's corporate-actions feed announces it.

    On `ex_date` (a New York session date) the share count re-bases by `ratio` and the price by
    its inverse: a 2-for-1 forward split is new_rate 2, old_rate 1 (ratio 2); a 1-for-4 reverse
    split is new_rate 1, old_rate 4 (ratio 0.25)."""

    symbol: str
    ex_date: date
    old_rate: Decimal
    new_rate: Decimal

    @property
    def ratio(self) -> Decimal:
        """The factor on share counts (prices divide by it)."""
        return self.new_rate / self.old_rate


class TradeEventType(StrEnum):
    NEW = "new"
    FILL = "fill"
    PARTIAL_FILL = "partial_fill"
    CANCELED = "canceled"
    EXPIRED = "expired"
    DONE_FOR_DAY = "done_for_day"
    REPLACED = "replaced"
    REJECTED = "rejected"
    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    OTHER = "other"

    @classmethod
    def parse(cls, value: str) -> TradeEventType:
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


class TradeUpdate(Model):
    """One trade update from the broker's stream (or rebuilt from an order during backfill)."""

    schema_version: int = 1
    event: TradeEventType
    order: Order
    timestamp: AwareDatetime
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None
    execution_id: str | None = None

    @property
    def event_id(self) -> str:
        """Identifies the same update however often it is delivered or backfilled.

        A fill is identified by the order and its cumulative filled quantity, so a backfilled copy
        of an update the stream already delivered gets the same id.
        """
        return f"{self.order.id}:{self.event.value}:{self.order.filled_qty.normalize()}"
