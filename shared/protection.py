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
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

from shared.broker.contract import protective_exit_shape
from shared.broker.procedures import open_sell_hold
from shared.exits import ExitReason, ExitRules, PositionState, protective_levels
from shared.models import Order, OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.money import ONE, ZERO, round_price, round_qty, whole_shares
from shared.ownership import ForeignPolicy, split_by_owner

#: Out of the session, a position already through its stop gets a stop this far below the last
#: price instead (the broker refuses a sell stop at or above the market); the next session exits it.
GAP_STOP_MARGIN = Decimal("0.01")


class Trigger(StrEnum):
    """Why a reconcile runs. Every trigger runs the same plan; anything but FILL means the broker
    was found out of line with the desired state, so each change is a fix and is reported loudly."""

    FILL = "fill"
    START = "start"
    TIMER = "timer"
    MANUAL = "manual"
    #: Right after a soft exit or a flatten: settle what sold, re-protect what is left.
    EXIT = "exit"
    #: Before the open: the day's corporate actions re-base positions first.
    PRE_OPEN = "pre_open"

    @property
    def is_fix(self) -> bool:
        return self is not Trigger.FILL


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
    return protection_at(symbol, qty, entry_price, stop, target, fractional_allowed=fractional_allowed,
                         oco_allowed=oco_allowed)


def protection_at(symbol: str, qty: Decimal, entry_price: Decimal, stop: Decimal, target: Decimal | None, *,
                  fractional_allowed: bool = True, oco_allowed: bool = True) -> ProtectionPlan:
    """The protective orders for `qty` shares at the given levels, in the broker's shapes
    (`protective_exit_shape`, the one place that rule lives): whole shares one OCO (a plain `gtc`
    stop without a target or OCO support), a fractional remainder one `day` stop."""
    qty = round_qty(qty)
    whole = whole_shares(qty)
    remainder = qty - whole
    orders: list[DesiredOrder] = []
    unprotected = ZERO
    if whole > ZERO:
        shape = protective_exit_shape(whole, target if oco_allowed else None)
        kind = ProtectionKind.OCO if shape.oco else ProtectionKind.STOP
        orders.append(DesiredOrder(symbol, kind, whole, stop, target if shape.oco else None, shape.time_in_force))
    if remainder > ZERO:
        if fractional_allowed:
            shape = protective_exit_shape(remainder, None)
            orders.append(DesiredOrder(symbol, ProtectionKind.STOP, remainder, stop, None, shape.time_in_force))
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


# -- the plan of one position -------------------------------------------------------------------------


class Verdict(StrEnum):
    #: Hold exactly `protection`'s orders (cancel the rest of ours, place what is missing).
    PROTECT = "protect"
    #: Sell at market now, through the safe exit: the price is through a level in the session.
    EXIT = "exit"
    #: No position: cancel our sells, settle the ledger, forget the state.
    FLAT = "flat"
    #: A short position: an alert. Our sells are cancelled (they would deepen it); nothing is bought.
    SHORT = "short"
    #: A position the line did not enter, under FL_FOREIGN_POSITIONS=ignore: nothing is touched.
    IGNORE = "ignore"
    #: The asset does not trade (halted, not tradable): every order stays as it is.
    HALTED = "halted"


@dataclass(frozen=True, slots=True)
class PositionPlan:
    """What one reconcile pass should do for one symbol, and why (`notes`, for people)."""

    verdict: Verdict
    actions: ReconcileActions = field(default_factory=ReconcileActions)
    protection: ProtectionPlan | None = None
    exit_reason: ExitReason | None = None
    #: Shares the user's own open sells hold: the line protects only the rest.
    user_held: Decimal = ZERO
    notes: tuple[str, ...] = ()


def plan_position(
    symbol: str,
    qty: Decimal,
    price: Decimal | None,
    state: PositionState | None,
    orders: Iterable[Order],
    rules: ExitRules,
    *,
    namespace: str,
    in_session: bool | None = None,
    tradable: bool = True,
    foreign_policy: ForeignPolicy = ForeignPolicy.PROTECT,
    fractional_allowed: bool = True,
    oco_allowed: bool = True,
    exit_refused: bool = False,
) -> PositionPlan:
    """The one decision every trigger runs for a symbol: the broker's quantity, the last price, the
    position's state and the symbol's open orders in; what to do out. Pure.

    Only the line's orders (`shared.ownership`) are ever cancelled or kept; the user's open sells
    are left alone and the shares they hold are not protected again. With the price at or through
    the stop level (a gap while no manager ran, an adopted position under water), a stop would be
    refused: in the session the verdict is EXIT (stop_loss); out of it, resting protection the broker
    already holds is kept and anything new goes just below the last price (GAP_STOP_MARGIN), so the
    next session exits. A line position already above its target takes the profit in the session
    (out of it the OCO's limit is marketable at the open). `in_session` None means unknown: the
    caller asks the clock only when the price is through a level. `exit_refused`: an exit this
    pass was refused, so protect instead (never a refused order in a loop).
    """
    order_list = [o for o in orders if o.symbol == symbol]
    ours, theirs = split_by_owner(order_list, namespace)
    our_sells = [o.id for o in _protective_candidates(symbol, ours)]
    if qty < ZERO:
        return PositionPlan(Verdict.SHORT, ReconcileActions(cancel=our_sells),
                            notes=(f"SHORT {qty} {symbol}: never expected; buy it back by hand",))
    if qty == ZERO:
        return PositionPlan(Verdict.FLAT, ReconcileActions(cancel=our_sells))
    if state is None:
        raise ValueError(f"{symbol}: a long position needs its state (the caller adopts it first)")
    if state.foreign and foreign_policy is ForeignPolicy.IGNORE:
        return PositionPlan(Verdict.IGNORE, notes=(f"{symbol}: not entered by the line; left alone "
                                                   f"(FL_FOREIGN_POSITIONS=ignore)",))
    if not tradable:
        return PositionPlan(Verdict.HALTED, ReconcileActions(keep=our_sells),
                            notes=(f"{symbol}: not tradable (halted?): every order kept as it is, "
                                   f"retried next pass",))
    user_held = sum((open_sell_hold(o) for o in theirs), ZERO)
    protectable = max(round_qty(qty) - user_held, ZERO)
    notes: list[str] = []
    if user_held > ZERO:
        notes.append(f"{symbol}: {user_held} held by the user's own orders; the line protects {protectable}")
    stop, target = state.levels(rules)
    normal = protection_at(symbol, protectable, state.basis, stop, target, fractional_allowed=fractional_allowed,
                           oco_allowed=oco_allowed)
    actions = reconcile(normal, ours)
    if price is not None and price <= stop:
        if in_session and not exit_refused:
            return PositionPlan(Verdict.EXIT, ReconcileActions(cancel=our_sells), normal, ExitReason.STOP_LOSS,
                                user_held, (*notes, f"{symbol}: price {price} at or through the stop {stop}: "
                                                    f"exit at market"))
        if actions.place:
            # The broker refuses a stop at or above the market: one just below the last price instead.
            gap_stop = round_price(price * (ONE - GAP_STOP_MARGIN), ROUND_FLOOR)
            normal = protection_at(symbol, protectable, state.basis, gap_stop, None,
                                   fractional_allowed=fractional_allowed, oco_allowed=oco_allowed)
            actions = reconcile(normal, ours)
            why = "the exit was refused" if exit_refused else "out of the session"
            notes.append(f"{symbol}: price {price} at or through the stop {stop}, {why}: stop at {gap_stop} "
                         f"below the market{'' if exit_refused else ', exit in the next session'}")
    elif (price is not None and target is not None and price >= target and in_session and not exit_refused):
        return PositionPlan(Verdict.EXIT, ReconcileActions(cancel=our_sells), normal, ExitReason.TAKE_PROFIT,
                            user_held, (*notes, f"{symbol}: price {price} at or above the target {target}: "
                                                f"take the profit at market"))
    if normal.unprotected_qty > ZERO:
        notes.append(f"{symbol}: {normal.unprotected_qty} shares no protective order can hold")
    return PositionPlan(Verdict.PROTECT, actions, normal, None, user_held, tuple(notes))


def through_a_level(price: Decimal | None, state: PositionState | None, rules: ExitRules) -> bool:
    """True when the price is at or through the stop, or (line positions) at or above the target:
    the only case where the plan needs to know whether the session is open."""
    if price is None or state is None:
        return False
    stop, target = state.levels(rules)
    return price <= stop or (target is not None and price >= target)
