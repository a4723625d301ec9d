"""Order matching: what executes, at what price and when, on the minute bars; and fills."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal

from shared import logs
from shared.models import OrderStatus, OrderType, Side, TimeInForce, TradingDay
from shared.money import ZERO, round_qty
from sim.engine.account import Holding, _money
from sim.engine.market import (
    MINUTE,
    ask_ticks,
    bid_ticks,
)
from sim.engine.orders import SimOrder
from sim.engine.paths import TICKS_PER_DOLLAR, to_price

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Trigger:
    """The next moment a resting order executes inside the window being processed."""

    at: datetime
    kind: int  # 0: a bar's high/low reached the price; 1: the price at a bar's open
    seq: int
    order: SimOrder
    price_ticks: int

    @property
    def key(self) -> tuple[datetime, int, int]:
        return (self.at, self.kind, self.seq)



class Matching:
    """Resting and marketable orders against the price path (a `MarketEngine` part)."""

    def _match_immediately(self, order: SimOrder, when: datetime) -> None:
        """Execute what is marketable right now at the last trade price (submission, open)."""
        for member in order.group():
            if not member.is_open:
                continue
            last = self.market.last_trade(member.symbol, when)
            if last is None:
                continue
            price, triggered = self._executable_price(member, last[0], last[0], last[0], at_open=True)
            member.triggered = triggered
            if price is not None:
                self._fill(member, price, when)
        if order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK) and order.is_open:
            self._cancel_group(order, when)

    @staticmethod
    def _executable_price(
        order: SimOrder, o: int, h: int, lo: int, *, at_open: bool, triggered: bool | None = None
    ) -> tuple[int | None, bool]:
        """(price in ticks at which `order` executes on this bar or None, whether its stop has
        been reached). Pure: the order is not changed.

        at_open: only the price `o` counts (the open of a minute, or the price at submission);
        market orders and triggered stops pay the half spread there, limits fill at the quote
        if it reaches them. Otherwise the bar's range [lo, h] counts: a limit fills at its limit,
        a stop at its stop price (or the open, if the bar opened past it) less the half spread.
        """
        buy = order.side is Side.BUY
        kind = order.type
        triggered = order.triggered if triggered is None else triggered
        limit = int(order.limit_price * TICKS_PER_DOLLAR) if order.limit_price is not None else None
        stop = int(order.stop_price * TICKS_PER_DOLLAR) if order.stop_price is not None else None
        if kind is OrderType.MARKET or (kind is OrderType.STOP and triggered):
            return ((ask_ticks(o) if buy else bid_ticks(o)) if at_open else None), triggered
        if kind in (OrderType.STOP, OrderType.STOP_LIMIT) and not triggered:
            if at_open:
                hit, trigger_price = (o >= stop if buy else o <= stop), o
            else:
                hit, trigger_price = (
                    (h >= stop if buy else lo <= stop),
                    (max(stop, o) if buy else min(stop, o)),
                )
            if not hit:
                return None, False
            if kind is OrderType.STOP:
                return (ask_ticks(trigger_price) if buy else bid_ticks(trigger_price)), True
            # Stop-limit: the stop turns it into a limit order.
            if (buy and trigger_price <= limit) or (not buy and trigger_price >= limit):
                return trigger_price, True
            return None, True
        if kind in (OrderType.LIMIT, OrderType.STOP_LIMIT):
            if at_open:
                if buy and ask_ticks(o) <= limit:
                    return ask_ticks(o), triggered
                if not buy and bid_ticks(o) >= limit:
                    return bid_ticks(o), triggered
                return None, triggered
            if (buy and lo <= limit) or (not buy and h >= limit):
                return limit, triggered
            return None, triggered
        return None, triggered

    def _next_trigger(
        self, order: SimOrder, bars: list, session: TradingDay, lo: datetime, hi: datetime
    ) -> _Trigger | None:
        """The first execution of `order` in (lo, hi] on the session's minute bars, if any. A
        stop-limit whose stop is reached without a fill is left triggered (it is then a limit)."""
        lower = lo
        if order.active_since is not None and order.active_since > lower:
            lower = order.active_since
        if order.last_fill_at is not None and order.last_fill_at > lower:
            lower = order.last_fill_at
        first = max(0, int((lower - session.open) // MINUTE) - 1)
        triggered = order.triggered
        for k in range(first, len(bars)):
            bar_open = session.open + MINUTE * k
            if bar_open > hi:
                break
            o, h, low, _, _ = bars[k]
            if bar_open > lower:
                price, triggered = self._executable_price(order, o, o, o, at_open=True, triggered=triggered)
                if price is not None:
                    return _Trigger(bar_open, 1, order.seq, order, price)
            bar_end = bar_open + MINUTE
            if lower < bar_end <= hi:
                price, triggered = self._executable_price(
                    order, o, h, low, at_open=False, triggered=triggered
                )
                if price is not None:
                    return _Trigger(bar_end, 0, order.seq, order, price)
        order.triggered = triggered
        return None

    def _match_window(self, index: int, lo: datetime, hi: datetime) -> None:
        """Execute resting orders whose prices the minute bars reach in (lo, hi], earliest first."""
        if not self._open or hi <= lo:
            return
        session = self.sessions[index]
        by_symbol: dict[str, list[SimOrder]] = {}
        for order in self._open.values():
            if order.status is not OrderStatus.ACCEPTED and order.session_index <= index:
                by_symbol.setdefault(order.symbol, []).append(order)
        candidates: dict[str, _Trigger] = {}

        def consider(symbol: str) -> None:
            bars = self.market.minute_bars(symbol, index)
            for order in by_symbol[symbol]:
                candidates.pop(order.id, None)
                if order.is_open:
                    trigger = self._next_trigger(order, bars, session, lo, hi)
                    if trigger is not None:
                        candidates[order.id] = trigger

        for symbol in sorted(by_symbol):
            consider(symbol)
        while candidates:
            best = min(candidates.values(), key=lambda t: t.key)
            order = best.order
            if order.type in (OrderType.STOP, OrderType.STOP_LIMIT):
                order.triggered = True
            self._fill(order, best.price_ticks, best.at)
            consider(order.symbol)

    def _fill_qty(
        self, order: SimOrder, price: Decimal, requested: Decimal | None = None
    ) -> tuple[Decimal, bool]:
        """(qty to execute now, whether this completes the order)."""
        if order.qty is not None:
            remaining = order.qty - order.filled_qty
        else:
            left = order.notional - order.filled_value
            remaining = round_qty(left / price)
        if order.side is Side.SELL:
            held = self._holdings.get(order.symbol)
            remaining = min(remaining, held.qty if held else ZERO)
        qty = remaining
        if requested is not None:
            qty = min(requested, remaining)
        elif order.first_fill_fraction is not None and order.filled_qty == ZERO:
            part = remaining * order.first_fill_fraction
            part = (
                part.to_integral_value(rounding=ROUND_DOWN)
                if remaining == remaining.to_integral_value()
                else round_qty(part)
            )
            if ZERO < part < remaining:
                qty = part
        return qty, qty >= remaining

    def _fill(self, order: SimOrder, price_ticks: int, when: datetime, qty: Decimal | None = None) -> None:
        price = to_price(price_ticks)
        fill_qty, completes = self._fill_qty(order, price, qty)
        if fill_qty <= ZERO:
            if order.side is Side.SELL and not self._holdings.get(order.symbol):
                # Nothing left to sell (shares gone some other way): the order cannot fill.
                self._cancel_group(order, when)
            return
        when = self._stamp(when)
        value = fill_qty * price
        order.filled_qty += fill_qty
        order.filled_value += value
        order.last_fill_at = when
        holding = self._holdings.get(order.symbol)
        if order.side is Side.BUY:
            self._cash -= _money(value)
            if holding is None:
                self._holdings[order.symbol] = Holding(fill_qty, price, when)
            else:
                total = holding.qty + fill_qty
                holding.avg_entry_price = (holding.qty * holding.avg_entry_price + value) / total
                holding.qty = total
        else:
            self._cash += _money(value)
            holding.qty -= fill_qty
            if holding.qty <= ZERO:
                del self._holdings[order.symbol]
        position_qty = self._holdings[order.symbol].qty if order.symbol in self._holdings else ZERO
        execution_id = str(uuid.uuid4())
        self._fills.append(
            {
                "execution_id": execution_id,
                "order_id": order.id,
                "client_order_id": order.client_order_id,
                "symbol": order.symbol,
                "side": order.side.value,
                "qty": fill_qty,
                "price": price,
                "timestamp": when,
                "position_qty_after": position_qty,
            }
        )
        if completes:
            order.filled_at = when
            status, event = OrderStatus.FILLED, "fill"
        else:
            status, event = OrderStatus.PARTIALLY_FILLED, "partial_fill"
        self._set_status(
            order,
            status,
            event,
            when,
            price=price,
            qty=fill_qty,
            position_qty=position_qty,
            execution_id=execution_id,
        )
        logs.event(
            log,
            "sim_fill",
            level=logging.DEBUG,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            side=order.side.value,
            qty=fill_qty,
            price=price,
            status=status.value,
        )
        group = self._group_of(order)
        siblings = [m for m in group.group() if m is not order and m.is_open]
        if completes:
            for sibling in siblings:
                sibling.canceled_at = self._stamp(when)
                self._set_status(sibling, OrderStatus.CANCELED, "canceled", sibling.canceled_at)
        else:
            # One OCO exit partly filled: the other now covers only what is left.
            for sibling in siblings:
                if sibling.qty is not None:
                    sibling.qty = max(sibling.qty - fill_qty, sibling.filled_qty)
                    sibling.updated_at = when
