"""The simulated market's controls (the `/sim` endpoints and tests): prices, splits, assets,
holdings and forced fills."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from shared import logs
from shared.errors import InputError, NotCancelable, NotFound
from shared.models import OrderStatus, Side
from shared.money import ZERO, round_qty, to_decimal
from sim.engine import rules
from sim.engine.account import Holding
from sim.engine.events import IllegalTransition
from sim.engine.market import (
    ask_ticks,
    bid_ticks,
)
from sim.engine.orders import SimOrder
from sim.engine.paths import TICKS_PER_DOLLAR, stable_seed, to_price
from sim.engine.universe import SimAsset

log = logging.getLogger(__name__)

#: What a split does to the symbol's resting orders (`MarketEngine.split`).
SPLIT_ORDER_MODES = ("adjust", "cancel", "keep")
#: Largest split either way (real ones stay far inside: 1-for-1000 reverse splits are rare); beyond
#: it quantities and prices would outgrow Decimal's 28 digits or the price grid.
MAX_SPLIT_RATIO = Decimal(10000)
_MIN_RATE, _MAX_RATE = Decimal("1E-9"), Decimal("1E+9")
#: Prices the controls may set (`set_price`, `fill_order`, a split's result): one tick to a million
#: dollars. Outside them the tick grid or Decimal's 28 digits of account arithmetic would break.
MIN_PRICE = Decimal("0.0001")
MAX_MARKET_PRICE = Decimal(10) ** 6
#: Stable corporate-action ids: the same split in the same market has the same id.
_ACTION_NAMESPACE = uuid.UUID("0f3b6a1e-2c4d-4e8f-9a7b-5d1c3e2f4a6b")
_CUSIP_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


#: The states an order reaches by the broker's own hand (`broker_status`).
BROKER_STATUSES = (OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED, OrderStatus.SUSPENDED,
                   OrderStatus.DONE_FOR_DAY)


@dataclass(frozen=True)
class SplitAction:
    """One announced split, with the fields Alpaca's corporate-actions feed carries
    (GET /v1/corporate-actions): a forward split keeps its CUSIP, a reverse split gets a new one."""

    id: str
    symbol: str
    new_rate: Decimal
    old_rate: Decimal
    ex_date: date
    process_date: date
    record_date: date
    payable_date: date
    #: Forward splits only: when the due bills of shares sold before the ex date settle.
    due_bill_redemption_date: date | None
    old_cusip: str
    new_cusip: str

    @property
    def ratio(self) -> Decimal:
        """The factor on share counts (prices divide by it)."""
        return self.new_rate / self.old_rate

    @property
    def type(self) -> str:
        """Alpaca's corporate action type."""
        return "forward_split" if self.ratio > 1 else "reverse_split"


def cusip_for(text: str) -> str:
    """A well-formed, made-up CUSIP (six issuer characters, issue "10", check digit) derived from
    `text`, the same in every run: the simulator has no real CUSIPs, the feed needs one."""
    number = stable_seed("cusip", text)
    issuer = ""
    for _ in range(6):
        number, digit = divmod(number, len(_CUSIP_CHARS))
        issuer += _CUSIP_CHARS[digit]
    body = issuer + "10"
    total = 0
    for position, char in enumerate(body):
        value = int(char) if char.isdigit() else ord(char) - ord("A") + 10
        if position % 2 == 1:
            value *= 2
        total += value // 10 + value % 10
    return body + str((10 - total % 10) % 10)


def _split_rate(value: object, name: str) -> Decimal:
    try:
        rate = to_decimal(value)
    except ValueError:
        raise InputError(f"{name} must be a finite number, got {value!r}") from None
    if rate <= ZERO:
        raise InputError(f"{name} must be > 0, got {rate}")
    if not _MIN_RATE <= rate <= _MAX_RATE:
        # Beyond these, Decimal arithmetic on the rates could overflow: an input error, not a 500.
        raise InputError(f"{name} must be between {_MIN_RATE} and {_MAX_RATE}, got {rate}")
    return rate



def _control_price(value: object, name: str) -> Decimal:
    """A price a control sets: finite, from one tick to `MAX_MARKET_PRICE` (InputError otherwise)."""
    try:
        price = to_decimal(value)
    except ValueError:
        raise InputError(f"{name} must be a finite number, got {value!r}") from None
    if not MIN_PRICE <= price <= MAX_MARKET_PRICE:
        raise InputError(f"{name} must be from {MIN_PRICE} to {MAX_MARKET_PRICE:,}, got {price}")
    return price



def _price_ticks(price: Decimal) -> int:
    return int(price * TICKS_PER_DOLLAR)



class Controls:
    """What tests and the `/sim` endpoints change by hand (a `MarketEngine` part)."""

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Make `symbol` trade at `price` from now on (the rest of the path is scaled to it);
        resting orders the new price reaches execute at once if the market is open."""
        with self._lock:
            now = self._sync_now()
            symbol = self.asset(symbol).symbol
            price = _control_price(price, "price")
            self.market.set_price(symbol, price, now)
            if self.market.session_at(now) is None:
                return
            ticks = self.market.last_trade(symbol, now)[0]
            for order in sorted((o for o in self._open.values() if o.symbol == symbol), key=lambda o: o.seq):
                if order.is_open and order.status is not OrderStatus.ACCEPTED:
                    executable, order.triggered = self._executable_price(
                        order, ticks, ticks, ticks, at_open=True
                    )
                    if executable is not None:
                        self._fill(order, executable, now)

    def split(
        self,
        symbol: str,
        new_rate: Decimal | int | str,
        old_rate: Decimal | int | str,
        *,
        orders: str = "adjust",
        announce: bool = True,
    ) -> SplitAction:
        """Split `symbol` now, new_rate for old_rate (2 for 1 forward, 1 for 4 reverse).

        Its ex date is the current New York session's date (outside a session, the next one's).
        The holding re-bases (qty x ratio, average entry / ratio: the cost basis stays; a reverse
        split may leave a fraction, kept, no cash in lieu), and so do the price path and all its
        history (`MarketData.split`). Resting orders of the symbol, by `orders`: "adjust" re-bases
        them (`SimOrder.split_adjust`, OCO groups whole), "cancel" cancels them (with `canceled`
        trade updates), "keep" leaves them stale. Shares held by open sells are derived from the
        orders, so they agree with the position in all three. What Alpaca does is not certain
        (docs/simulator.md). `announce=False` re-bases without a corporate-action record, like a
        feed that missed it. Returns the split (recorded only when announced)."""
        with self._lock:
            now = self._sync_now()
            symbol = self.asset(symbol).symbol
            new, old = _split_rate(new_rate, "new_rate"), _split_rate(old_rate, "old_rate")
            if new == old:
                raise InputError("new_rate and old_rate are equal: that is no split")
            if not 1 / MAX_SPLIT_RATIO <= new / old <= MAX_SPLIT_RATIO:
                raise InputError(
                    f"new_rate / old_rate must be between 1/{MAX_SPLIT_RATIO} and {MAX_SPLIT_RATIO}"
                )
            if orders not in SPLIT_ORDER_MODES:
                raise InputError(f"orders must be one of {', '.join(SPLIT_ORDER_MODES)}, got {orders!r}")
            last = self.market.last_trade(symbol, now)
            if last is not None and not MIN_PRICE <= to_price(last[0]) * old / new <= MAX_MARKET_PRICE:
                raise InputError(
                    f"the split would put {symbol} at {to_price(last[0]) * old / new:.6g}, outside "
                    f"{MIN_PRICE} to {MAX_MARKET_PRICE:,}"
                )
            action = self._split_action(symbol, new, old, now)
            self._split_orders(symbol, action.ratio, orders, now)
            self._split_holding(symbol, action.ratio)
            self.market.split(symbol, action.ratio)
            if announce:
                self._splits.append(action)
                self._cusips[symbol] = action.new_cusip
            logs.event(
                log,
                "sim_split",
                symbol=symbol,
                new_rate=new,
                old_rate=old,
                ex_date=action.ex_date.isoformat(),
                orders=orders,
                announced=announce,
            )
            return action

    def _apply_replay_splits(self, now: datetime) -> None:
        """The replayed history's splits whose ex date is the next session after `now` (or earlier):
        in effect from the previous session's close, before the manager's pre-open check, as a real
        split is processed overnight. Each is announced on the corporate-actions feed, re-bases the
        holding and adjusts the symbol's resting orders (`split`'s "adjust"); the raw prices from the
        ex date on stay as they are, those before are divided (`MarketData.replay_split`)."""
        upcoming = self.market.next_index(now) if now < self.sessions[-1].open else len(self.sessions)
        while self._replay_pending and self._replay_pending[0][0] <= upcoming:
            ex_index, symbol, ratio = self._replay_pending.pop(0)
            rates = Fraction(ratio).limit_denominator(10_000)
            new, old = Decimal(rates.numerator), Decimal(rates.denominator)
            action = self._split_action(symbol, new, old, self.sessions[ex_index].open - timedelta(hours=12))
            self._split_orders(symbol, action.ratio, "adjust", now)
            self._split_holding(symbol, action.ratio)
            self.market.replay_split(symbol, action.ratio, ex_index)
            self._splits.append(action)
            self._cusips[symbol] = action.new_cusip
            logs.event(log, "sim_replay_split", symbol=symbol, new_rate=new, old_rate=old,
                       ex_date=action.ex_date.isoformat())

    def _split_action(self, symbol: str, new: Decimal, old: Decimal, now: datetime) -> SplitAction:
        """The split's corporate-action record. Dates as big forward splits run (NVDA 2024: record
        two sessions before the ex date, payable the session before, due bills redeemed the session
        after); a reverse split's record and payable dates are its ex date."""
        index = self.market.next_index(now)

        def day(offset: int) -> date:
            return self.sessions[min(max(index + offset, 0), len(self.sessions) - 1)].date

        ex_date = day(0)
        forward = new > old
        old_cusip = self._cusips.get(symbol) or cusip_for(symbol)
        return SplitAction(
            id=str(uuid.uuid5(_ACTION_NAMESPACE, f"{symbol}|{ex_date}|{new}|{old}|{len(self._splits)}")),
            symbol=symbol,
            new_rate=new,
            old_rate=old,
            ex_date=ex_date,
            process_date=ex_date,
            record_date=day(-2) if forward else ex_date,
            payable_date=day(-1) if forward else ex_date,
            due_bill_redemption_date=day(1) if forward else None,
            old_cusip=old_cusip,
            new_cusip=old_cusip if forward else cusip_for(f"{symbol}|{ex_date}"),
        )

    def _split_orders(self, symbol: str, ratio: Decimal, mode: str, now: datetime) -> None:
        members = sorted((o for o in self._open.values() if o.symbol == symbol), key=lambda o: o.seq)
        if mode == "keep" or not members:
            return
        if mode == "cancel":
            for order in members:
                if order.is_open:  # an OCO sibling's cancel may have ended it already
                    self._cancel_group(order, now)
            return
        stamp = self._stamp(now)
        for order in members:
            order.split_adjust(ratio, stamp)
            self._record(order, "split_adjusted", stamp)

    def _split_holding(self, symbol: str, ratio: Decimal) -> None:
        holding = self._holdings.get(symbol)
        if holding is None:
            return
        cost = holding.qty * holding.avg_entry_price
        exact = holding.qty * ratio
        qty = round_qty(exact)
        if qty <= ZERO:
            del self._holdings[symbol]  # less than a billionth of a share: nothing left to hold
            return
        holding.avg_entry_price = holding.avg_entry_price / ratio if qty == exact else cost / qty
        holding.qty = qty

    def splits(
        self, symbols: Iterable[str] | None = None, start: date | None = None, end: date | None = None
    ) -> list[SplitAction]:
        """Announced splits of `symbols` (all when None) with start <= ex_date <= end, oldest first."""
        with self._lock:
            wanted = {s.strip().upper() for s in symbols} if symbols is not None else None
            return [
                action
                for action in self._splits
                if (wanted is None or action.symbol in wanted)
                and (start is None or action.ex_date >= start)
                and (end is None or action.ex_date <= end)
            ]

    def set_ask_missing(self, symbol: str, missing: bool = True) -> None:
        with self._lock:
            symbol = self.asset(symbol).symbol
            if missing:
                self.market.ask_missing.add(symbol)
            else:
                self.market.ask_missing.discard(symbol)

    def set_asset(
        self,
        symbol: str,
        *,
        fractionable: bool | None = None,
        listed_fractionable: bool | None = None,
        tradable: bool | None = None,
    ) -> SimAsset:
        """Change what orders enforce (`fractionable`, `tradable`) and what the asset list shows
        (`listed_fractionable`), e.g. to make them disagree."""
        with self._lock:
            asset = self.asset(symbol)
            if fractionable is not None:
                asset.fractionable = fractionable
            if listed_fractionable is not None:
                asset.listed_fractionable = listed_fractionable
            if tradable is not None:
                asset.tradable = tradable
            return asset

    def set_holding(self, symbol: str, qty: Decimal, avg_entry_price: Decimal) -> None:
        """Put a position in the book as if made outside this market's order rules: a short (which
        the simulator refuses to open by order, as the line never does) or a transfer in. No cash moves."""
        with self._lock:
            symbol = self.asset(symbol).symbol
            qty, avg_entry_price = to_decimal(qty), to_decimal(avg_entry_price)
            if not qty.is_finite() or not avg_entry_price.is_finite() or avg_entry_price <= ZERO:
                raise InputError("qty must be finite and avg_entry_price > 0")
            if qty == ZERO:
                self._holdings.pop(symbol, None)
            else:
                self._holdings[symbol] = Holding(qty, avg_entry_price, self._sync_now())

    def partial_fill_next(self, symbol: str, fraction: Decimal) -> None:
        """The next order submitted for `symbol` fills only `fraction` of its quantity first;
        the rest fills later (a market order at the next minute's open, or via `fill_order`)."""
        with self._lock:
            symbol = self.asset(symbol).symbol
            fraction = to_decimal(fraction)
            if not ZERO < fraction < 1:
                raise InputError("fraction must be between 0 and 1 (exclusive)")
            self._partial_next[symbol] = fraction

    def broker_status(self, order_id: str, status: OrderStatus) -> SimOrder:
        """The broker changes an order's state on its own, as Alpaca does: it cancels a resting order
        (a corporate action, a halt), expires or suspends it, rejects it. Only that order changes (not
        its OCO sibling), with the trade update Alpaca sends (`event` = the new status).

        A change the transition table forbids (shared.models.ORDER_TRANSITIONS: a filled order is
        never reopened or cancelled) is refused with a 422 and changes nothing: the engine's one
        status setter enforces the table for every change it makes, this control included."""
        if status not in BROKER_STATUSES:
            names = ", ".join(s.value for s in BROKER_STATUSES)
            raise InputError(f"status must be one the broker sets on its own: {names}")
        with self._lock:
            now = self._sync_now()
            order = self._orders.get(order_id) or self._by_client_id.get(order_id)
            if order is None:
                raise rules.reject(NotFound, 404, 40410000, "order not found")
            try:
                self._set_status(order, status, status.value, self._stamp(now))
            except IllegalTransition as exc:
                raise rules.reject(NotCancelable, 422, 42210000, str(exc)) from None
            return order.snapshot()

    def fill_order(self, order_id: str, qty: Decimal | None = None, price: Decimal | None = None) -> SimOrder:
        """Execute `qty` (default: all that is left) of an open order now, at `price` (default:
        the ask for buys, the bid for sells), whether or not the market is open."""
        with self._lock:
            now = self._sync_now()
            order = self._orders.get(order_id) or self._by_client_id.get(order_id)
            if order is None:
                raise rules.reject(NotFound, 404, 40410000, "order not found")
            if not order.is_open:
                raise rules.reject(
                    NotCancelable, 422, 42210000, f"order is {order.status.value}, it cannot fill"
                )
            if qty is not None and not ZERO < to_decimal(qty) <= rules.MAX_QTY:
                raise InputError(f"qty must be > 0 and <= {rules.MAX_QTY:,}")
            if price is not None:
                price = _control_price(price, "price")
            if price is None:
                last = self.market.last_trade(order.symbol, now)[0]
                ticks = ask_ticks(last) if order.side is Side.BUY else bid_ticks(last)
            else:
                ticks = _price_ticks(to_decimal(price))
            if order.status is OrderStatus.ACCEPTED:
                stamp = self._stamp(now)
                for member in self._group_of(order).group():
                    self._set_status(
                        member, OrderStatus.HELD if member.parent_id else OrderStatus.NEW, "new", stamp
                    )
            self._fill(order, ticks, now, to_decimal(qty) if qty is not None else None)
            return order.snapshot()
