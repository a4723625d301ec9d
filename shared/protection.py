"""The protective orders a position should have, and the difference from what the broker holds. Pure.

The manager's reconcile: `desired_protection` says which sell orders protect a position,
`reconcile` compares them with the broker's open sell orders of the symbol and returns what to cancel,
what to keep and what to place. The caller applies them in that order (docs/exits.md):

1. cancel every order in `cancel`, and CONFIRM the broker released the shares (position
   qty_available back to qty minus what the kept orders hold) before going on: Alpaca reserves the
   shares of every open sell, so an order placed before the cancels settle is refused (insufficient qty);
2. place every order in `place`.

Shape of the protection (Alpaca's rules):
- the whole shares: ONE OCO sell (take-profit limit parent, stop leg child), `gtc`;
- a fractional remainder: ONE plain stop sell, `day` (fractional orders are simple and day only; it
  expires at the close and the timer reconcile places it again at the next session);
- the two never cover the same share: their quantities add up to the position, never more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from shared.exits import ExitRules, protective_levels
from shared.models import Order, OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.money import ZERO, round_price, round_qty, whole_shares


class ProtectionKind(StrEnum):
    #: Stop and take-profit for the same shares, one cancels the other.
    OCO = "oco"
    #: A plain stop sell, no target.
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class DesiredOrder:
    """One protective sell order the position should have at the broker."""

    symbol: str
    kind: ProtectionKind
    qty: Decimal
    stop_price: Decimal
    target_price: Decimal | None
    time_in_force: TimeInForce

    def describe(self) -> str:
        target = f" target {self.target_price}" if self.target_price is not None else ""
        return f"{self.kind.value} sell {self.qty} {self.symbol} stop {self.stop_price}{target} {self.time_in_force.value}"


@dataclass(frozen=True, slots=True)
class ProtectionPlan:
    """The protective orders of one position. `orders` holds at most one OCO and one STOP."""

    symbol: str
    position_qty: Decimal
    entry_price: Decimal
    stop_price: Decimal | None
    target_price: Decimal | None
    orders: tuple[DesiredOrder, ...] = ()
    #: Shares no order can protect (a fractional remainder when fractional orders are not allowed).
    unprotected_qty: Decimal = ZERO

    @property
    def protected_qty(self) -> Decimal:
        return sum((o.qty for o in self.orders), ZERO)


@dataclass(frozen=True, slots=True)
class ReconcileActions:
    """Apply in this order: cancel all of `cancel`, confirm the shares are released, then `place`."""

    cancel: list[str] = field(default_factory=list)
    place: list[DesiredOrder] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        """Nothing to do: the broker already holds exactly the desired protection."""
        return not self.cancel and not self.place


def desired_protection(
    position_qty: Decimal,
    entry_price: Decimal,
    rules: ExitRules,
    *,
    symbol: str = "",
    fractional_allowed: bool = True,
    oco_allowed: bool = True,
) -> ProtectionPlan:
    """The protective orders for a long position of `position_qty` shares bought at `entry_price`.

    Stop and target come from `protective_levels` (rounded to the broker's grid). Whole shares get one
    OCO (`oco_allowed=False`: one plain `gtc` stop instead); a fractional remainder gets one `day`
    stop, or is reported as `unprotected_qty` when `fractional_allowed` is False. A flat or short
    position gets no orders. With `symbol`, `reconcile` only looks at that symbol's orders.
    """
    qty = round_qty(position_qty)
    if qty <= ZERO:
        return ProtectionPlan(symbol, qty, entry_price, None, None)
    stop, target = protective_levels(entry_price, rules)
    whole = whole_shares(qty)
    remainder = qty - whole
    orders: list[DesiredOrder] = []
    unprotected = ZERO
    if whole > ZERO:
        if oco_allowed:
            orders.append(DesiredOrder(symbol, ProtectionKind.OCO, whole, stop, target, TimeInForce.GTC))
        else:
            orders.append(DesiredOrder(symbol, ProtectionKind.STOP, whole, stop, None, TimeInForce.GTC))
    if remainder > ZERO:
        if fractional_allowed:
            orders.append(DesiredOrder(symbol, ProtectionKind.STOP, remainder, stop, None, TimeInForce.DAY))
        else:
            unprotected = remainder
    return ProtectionPlan(symbol, qty, entry_price, stop, target, tuple(orders), unprotected)


def reconcile(plan: ProtectionPlan, open_orders: Iterable[Order]) -> ReconcileActions:
    """What to cancel, keep and place so the broker holds exactly `plan`'s orders for the symbol.

    Looks at the open SELL orders (with `plan.symbol` set, of that symbol only; buy orders, such as a
    still-open entry, are never touched). A sell that matches a desired order exactly (kind, remaining
    quantity, stop, target and time in force, prices compared on the broker's grid) is kept, the
    oldest one when there are duplicates; every other sell is cancelled (wrong size after the position
    grew, a second set, a stop without its target, a stray sell, an order already pending cancel),
    and each desired order without a match is placed.
    """
    sells = _protective_candidates(plan.symbol, open_orders)
    keep: list[str] = []
    place: list[DesiredOrder] = []
    claimed: set[str] = set()
    for desired in plan.orders:
        match = next((o for o in sells if o.id not in claimed and _matches(o, desired)), None)
        if match is None:
            place.append(desired)
        else:
            claimed.add(match.id)
            keep.append(match.id)
    cancel = [o.id for o in sells if o.id not in claimed]
    return ReconcileActions(cancel=cancel, place=place, keep=keep)


def _protective_candidates(symbol: str, open_orders: Iterable[Order]) -> list[Order]:
    """Top-level open sell orders of the symbol, oldest first. A leg listed on its own as well as
    under its parent is the same order and is handled through the parent."""
    orders = [o for o in open_orders if not symbol or o.symbol == symbol]
    leg_ids = {leg.id for o in orders for leg in o.all_orders()[1:]}
    sells = [o for o in orders if o.side is Side.SELL and o.status.is_open and o.id not in leg_ids]
    return sorted(sells, key=lambda o: (o.created_at, o.id))


def _matches(order: Order, desired: DesiredOrder) -> bool:
    if order.status is OrderStatus.PENDING_CANCEL or order.time_in_force is not desired.time_in_force:
        return False
    if desired.kind is ProtectionKind.OCO:
        open_legs = [leg for leg in order.legs if leg.status.is_open]
        return (
            order.order_class is OrderClass.OCO
            and order.type is OrderType.LIMIT
            and _same_qty(order, desired.qty)
            and _same_price(order.limit_price, desired.target_price)
            and len(open_legs) == 1
            and open_legs[0].side is Side.SELL
            and open_legs[0].type is OrderType.STOP
            and open_legs[0].status is not OrderStatus.PENDING_CANCEL
            and _same_qty(open_legs[0], desired.qty)
            and _same_price(open_legs[0].stop_price, desired.stop_price)
        )
    return (
        order.order_class is OrderClass.SIMPLE
        and order.type is OrderType.STOP
        and not order.legs
        and _same_qty(order, desired.qty)
        and _same_price(order.stop_price, desired.stop_price)
    )


def _same_qty(order: Order, qty: Decimal) -> bool:
    # What an order still holds is its remaining quantity: a protective stop that sold part of the
    # position still protects exactly the rest.
    remaining = order.remaining_qty
    return remaining is not None and remaining == qty


def _same_price(actual: Decimal | None, desired: Decimal | None) -> bool:
    if actual is None or desired is None:
        return actual is None and desired is None
    return round_price(actual) == desired
