"""Selling a position's shares at market exactly once: the last step of every exit (soft exits,
flatten). Order creation is never retried blindly: a duplicate id or a lost answer is looked up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from shared.broker.contract import OrderExecutor
from shared.errors import BrokerUnavailable, DuplicateClientOrderId, OrderRejected
from shared.models import Order, Side

MAX_ATTEMPTS = 5


def sell_once(executor: OrderExecutor, symbol: str, qty: Decimal, client_order_id: Callable[[int], str],
              *, what: str = "exit") -> Order:
    """Submit the market sell under the first unused attempt's id (`client_order_id(1)`, `(2)`, ...).

    An id already used by an open sell is this sell sent by a run that crashed: it is adopted, not
    sent again. One used by a finished order is an earlier attempt, so the next attempt's id is used.
    A lost answer (timeout, 5xx) is looked up by id; if the broker has no such order, OrderRejected.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        cid = client_order_id(attempt)
        try:
            return executor.sell_market(symbol, qty, cid)
        except DuplicateClientOrderId:
            existing = executor.get_order_by_client_id(cid)
            if existing is not None and existing.status.is_open and existing.side is Side.SELL:
                return existing
            continue
        except BrokerUnavailable:
            existing = executor.get_order_by_client_id(cid)
            if existing is None:
                raise OrderRejected(f"sell {qty} {symbol}: the broker did not answer and has no order {cid}") from None
            return existing
    raise OrderRejected(f"sell {qty} {symbol}: {MAX_ATTEMPTS} {what} client order ids already used today")


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
