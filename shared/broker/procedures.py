"""The two broker procedures every order-placing caller shares (protection, exits, flatten).

- `submit_once`: send an order exactly once. An id the broker already knows is looked up, never
  re-sent blindly; a lost answer (timeout, 5xx, 429) is settled by looking the id up. The caller's
  `before_send` hook runs before each send (the manager writes the id to Redis first, so a crash
  right after the broker accepted the order still leaves a way to find it); `on_unused` runs for an
  id that turned out never to have created an order.
- `wait_until_done`: poll a sent order until it is no longer open (an exit's market sell).
- `cancel_and_release`: cancel the given orders and wait until the broker has released their
  shares. Alpaca reserves the shares of every open sell, so a sell placed before the cancels settle
  is refused ("insufficient qty"). Only the orders named are cancelled: the user's orders and the
  shares they hold are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from decimal import Decimal

from shared.broker.contract import OrderExecutor
from shared.errors import (
    BrokerUnavailable,
    DuplicateClientOrderId,
    NotCancelable,
    NotFound,
    OrderRejected,
    RateLimited,
)
from shared.models import Order, Position, Side
from shared.money import ZERO

#: Client order ids tried for one intent when earlier ones belong to finished orders.
MAX_ATTEMPTS = 5
RELEASE_TIMEOUT_SECONDS = 10.0


def submit_once(
    executor: OrderExecutor,
    send: Callable[[str], Order],
    client_order_id: Callable[[int], str],
    *,
    side: Side = Side.SELL,
    max_attempts: int = MAX_ATTEMPTS,
    before_send: Callable[[str], None] | None = None,
    on_unused: Callable[[str], None] | None = None,
    on_found: Callable[[Order, str], None] | None = None,
    accept_finished: bool = False,
) -> Order:
    """Send under `client_order_id(1)`, `(2)`, ... until one is accepted or found.

    An id already used by an open order of `side` is this intent, sent by a run that crashed or
    lost its answer: that order is returned, not sent again. An id used by a finished order is an
    earlier attempt, so the next attempt's id is tried. A lost answer is looked up by id: found, it
    is returned; absent, BrokerUnavailable (nothing was created; the caller retries later). A
    definitive refusal (OrderRejected) propagates after `on_unused`. `on_found(order, why)` hears of
    an order that was found rather than created (why: "duplicate id" or "lost answer").
    `accept_finished`: the id stands for one intent only (the day's entry of a signal), so an order
    already under it is that intent whatever its status, and no further id is tried.
    """
    for attempt in range(1, max_attempts + 1):
        cid = client_order_id(attempt)
        if before_send is not None:
            before_send(cid)
        try:
            return send(cid)
        except DuplicateClientOrderId:
            existing = executor.get_order_by_client_id(cid)
            if existing is not None and existing.side is side and (existing.status.is_open or accept_finished):
                if on_found is not None:
                    on_found(existing, "duplicate id")
                return existing
            if on_unused is not None and existing is None:
                on_unused(cid)
            continue
        except (BrokerUnavailable, RateLimited) as exc:
            existing = executor.get_order_by_client_id(cid)
            if existing is not None:
                if on_found is not None:
                    on_found(existing, "lost answer")
                return existing
            if on_unused is not None:
                on_unused(cid)
            raise BrokerUnavailable(f"{cid}: the broker did not answer ({exc}) and has no such order") from None
        except OrderRejected:
            if on_unused is not None:
                on_unused(cid)
            raise
    raise DuplicateClientOrderId(f"{client_order_id(1)}: {max_attempts} client order id(s) already used by finished "
                                 f"orders")


def cancel_and_release(
    executor: OrderExecutor,
    symbol: str,
    order_ids: Iterable[str],
    *,
    timeout: float = RELEASE_TIMEOUT_SECONDS,
) -> tuple[Position | None, list[Order]]:
    """Cancel `order_ids` (top-level ids of the symbol's open orders), then poll until none of them
    is open and the shares they held are free: qty_available plus what the symbol's other open sells
    still hold covers the position. Returns the position (None when flat: a protective order may
    have filled meanwhile) and the symbol's open orders as they then stand. BrokerUnavailable when
    that does not happen within `timeout`."""
    wanted = set(order_ids)
    for order_id in wanted:
        try:
            executor.cancel_order(order_id)
        except (NotCancelable, NotFound):
            pass  # it filled or ended meanwhile: the re-read below shows what it became
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        position, orders = executor.get_position(symbol), executor.get_open_orders(symbol)
        if _released(position, orders, wanted):
            return position, orders
        if time.monotonic() >= deadline:
            raise BrokerUnavailable(f"{symbol}: shares still held by sell orders {timeout:g} s after canceling them")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _released(position: Position | None, orders: list[Order], canceled: set[str]) -> bool:
    open_ids = {o.id for parent in orders for o in parent.all_orders() if o.status.is_open}
    if open_ids & canceled:
        return False
    if position is None or position.qty <= ZERO:
        return True
    held_by_others = sum((open_sell_hold(o) for o in orders), ZERO)
    return position.qty_available + held_by_others >= position.qty


def open_sell_hold(order: Order) -> Decimal:
    """Shares an open top-level sell order holds (an OCO holds its quantity once, not per leg)."""
    if order.side is not Side.SELL or not order.status.is_open or order.remaining_qty is None:
        return ZERO
    return max(order.remaining_qty, ZERO)


def wait_until_done(executor: OrderExecutor, order: Order, timeout: float) -> Order:
    """Poll the order (by client id) until it is no longer open or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    while order.status.is_open and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
        try:
            order = executor.get_order_by_client_id(order.client_order_id) or order
        except BrokerUnavailable:
            continue  # a failed read says nothing about the sell: ask again until the deadline
    return order
