"""Orders inside the simulated market: the request as received, the live order, and its events.

`OrderRequest` is what a client asked for (already parsed from Alpaca's JSON or built by the
in-process adapter). `SimOrder` is the engine's mutable order; callers only ever get copies
(`snapshot()`), so an order seen in a response or a trade update never changes under them.
`TradeEvent` is one trade update, stamped with the virtual time it happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from shared.models import OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.money import TICK_SUB_DOLLAR, ZERO, round_price, round_qty

QTY_QUANTUM = Decimal("0.000000001")


@dataclass
class OrderRequest:
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    qty: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    client_order_id: str | None = None
    order_class: OrderClass = OrderClass.SIMPLE
    take_profit_limit_price: Decimal | None = None
    stop_loss_stop_price: Decimal | None = None
    stop_loss_limit_price: Decimal | None = None
    extended_hours: bool = False
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None

    @property
    def fractional(self) -> bool:
        return self.notional is not None or (
            self.qty is not None and self.qty != self.qty.to_integral_value()
        )


@dataclass
class HistoryEntry:
    at: datetime
    event: str
    status: OrderStatus
    qty: Decimal | None = None
    price: Decimal | None = None
    execution_id: str | None = None


@dataclass
class SimOrder:
    id: str
    client_order_id: str
    symbol: str
    asset_id: str
    side: Side
    type: OrderType
    order_class: OrderClass
    time_in_force: TimeInForce
    status: OrderStatus
    created_at: datetime
    qty: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    filled_qty: Decimal = ZERO
    #: Exact sum of qty x price over the fills (the average price is this over filled_qty).
    filled_value: Decimal = ZERO
    updated_at: datetime | None = None
    submitted_at: datetime | None = None
    filled_at: datetime | None = None
    expired_at: datetime | None = None
    canceled_at: datetime | None = None
    failed_at: datetime | None = None
    expires_at: datetime | None = None
    extended_hours: bool = False
    legs: list[SimOrder] = field(default_factory=list)
    parent_id: str | None = None
    #: Index of the session a `day` order lives in (and that a queued order waits for).
    session_index: int = 0
    #: Orders and fills before this moment are not the order's business (its submission time).
    active_since: datetime | None = None
    #: Buying power held per share (qty buys) or in total (notional buys).
    reserve_price: Decimal | None = None
    #: The first fill takes only this fraction of the order (a control's partial fill).
    first_fill_fraction: Decimal | None = None
    #: A stop (or stop-limit) whose stop price was reached.
    triggered: bool = False
    #: The moment of the last fill; a remainder fills only after it.
    last_fill_at: datetime | None = None
    #: Submission order, for ties between orders that trigger at the same moment.
    seq: int = 0
    history: list[HistoryEntry] = field(default_factory=list)

    # -- derived ----------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.status.is_open

    @property
    def filled_avg_price(self) -> Decimal | None:
        if self.filled_qty == ZERO:
            return None
        return (self.filled_value / self.filled_qty).quantize(QTY_QUANTUM).normalize() + ZERO

    @property
    def remaining_qty(self) -> Decimal | None:
        """Shares still to fill (None for a notional order: it is sized at each fill)."""
        if self.qty is None:
            return None
        return self.qty - self.filled_qty

    @property
    def position_intent(self) -> str:
        return "buy_to_open" if self.side is Side.BUY else "sell_to_close"

    def split_adjust(self, ratio: Decimal, when: datetime) -> None:
        """Re-base the order to a split of `ratio` (the factor on share counts), as Alpaca says it
        adjusts GTC limit orders: quantities x ratio (rounded down to 9 decimals, like the
        position), stop and limit prices / ratio on the price grid. The filled value stays, so
        the average fill price re-bases with the filled quantity; a buy's per-share reserve
        divides too, so it holds the same buying power."""
        if self.qty is not None:
            self.qty = round_qty(self.qty * ratio)
        self.filled_qty = round_qty(self.filled_qty * ratio)
        if self.limit_price is not None:
            self.limit_price = _rebased_price(self.limit_price, ratio)
        if self.stop_price is not None:
            self.stop_price = _rebased_price(self.stop_price, ratio)
        if self.reserve_price is not None and self.qty is not None:
            self.reserve_price = self.reserve_price / ratio
        self.updated_at = when

    def group(self) -> list[SimOrder]:
        """This order and its legs (an OCO's stop leg is a child of its take-profit limit)."""
        return [self, *self.legs]

    def snapshot(self) -> SimOrder:
        """A copy without the history: what a response or a trade update shows. Every field
        value is immutable (Decimal, datetime, enums), so a shallow copy per order is enough."""
        copied = SimOrder.__new__(SimOrder)
        # The fields copied directly: copy.copy's generic __reduce_ex__ path costs more than the
        # rest of a snapshot, and there are three per order submitted.
        copied.__dict__.update(self.__dict__)
        copied.history = []
        copied.legs = [leg.snapshot() for leg in self.legs]
        return copied


def _rebased_price(price: Decimal, ratio: Decimal) -> Decimal:
    """price / ratio on Alpaca's grid, never below the smallest increment (never a zero price)."""
    return max(round_price(price / ratio), TICK_SUB_DOLLAR)


@dataclass(frozen=True)
class TradeEvent:
    """One trade update. `price`/`qty` are THIS execution's; the order carries cumulative
    `filled_qty` and `filled_avg_price`; `position_qty` is the position after the event."""

    seq: int
    event: str
    order: SimOrder
    timestamp: datetime
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None
    execution_id: str | None = None
