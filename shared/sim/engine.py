"""`MarketEngine`: the simulated market's account, orders, matching and time.

One engine is one Alpaca account trading in one simulated market. Every public method first
catches the market up to the virtual clock's `now` (`_sync`), processing what happened in between
in time order: at each session open queued orders become `new` and market orders fill at the open;
resting limits and stops trigger on the minute bars' highs and lows; `day` orders expire at the
close. Only symbols with open orders are examined, so advancing days at a time stays fast.

Both the Alpaca-compatible server (`services.sim.server`) and the in-process adapter
(`shared.broker.simulated.SimulatedExecutor`) call these methods, so the two expose one behaviour.
Refusals are the typed errors of `shared.errors`, carrying Alpaca's status, code and body fields
(see `shared.sim.rules`). Every state change is a `TradeEvent` delivered to subscribers.

Thread-safety: one re-entrant lock around every public method. Subscribers are called while it is
held, in event order, and must only hand the event over (e.g. put it on a queue), never call back.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from pathlib import Path

from shared import logs
from shared.errors import InputError, NotCancelable, NotFound, OrderRejected
from shared.market.calendar import NEW_YORK, nyse
from shared.models import OrderClass, OrderStatus, OrderType, Side, TimeInForce, TradingDay, can_transition
from shared.money import ZERO, round_qty, to_decimal
from shared.sim import rules
from shared.sim.clock import VirtualClock
from shared.sim.market import (
    MINUTE,
    MarketData,
    Quote,
    TimedBar,
    ask_ticks,
    bar_series,
    bid_ticks,
    parse_timeframe,
)
from shared.sim.orders import HistoryEntry, OrderRequest, SimOrder, TradeEvent
from shared.sim.paths import TICKS_PER_DOLLAR, stable_seed, to_price
from shared.sim.universe import SimAsset, build_universe

log = logging.getLogger(__name__)

DEFAULT_CASH = Decimal("200000")
DEFAULT_SEED = 7
#: Market buys for a quantity reserve qty x ask x (1 + cushion) of buying power, like Alpaca's
#: legacy docs describe (2.5% to 4%); limit buys reserve qty x limit.
DEFAULT_BUYING_POWER_CUSHION = Decimal("0.025")
CENT = Decimal("0.01")
_MICRO = timedelta(microseconds=1)
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


@dataclass
class Holding:
    qty: Decimal
    avg_entry_price: Decimal
    opened_at: datetime


@dataclass(frozen=True)
class PositionView:
    symbol: str
    asset_id: str
    exchange: str
    qty: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal
    cost_basis: Decimal
    current_price: Decimal
    market_value: Decimal
    unrealized_pl: Decimal
    unrealized_plpc: Decimal
    lastday_price: Decimal
    change_today: Decimal
    unrealized_intraday_pl: Decimal
    unrealized_intraday_plpc: Decimal


@dataclass(frozen=True)
class AccountView:
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    last_equity: Decimal
    long_market_value: Decimal
    created_at: datetime


class IllegalTransition(RuntimeError):
    """An order state change `ORDER_TRANSITIONS` forbids: a bug of the simulated market."""


@dataclass(frozen=True)
class ClockView:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime


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


def _control_price(value: object, name: str) -> Decimal:
    """A price a control sets: finite, from one tick to `MAX_MARKET_PRICE` (InputError otherwise)."""
    try:
        price = to_decimal(value)
    except ValueError:
        raise InputError(f"{name} must be a finite number, got {value!r}") from None
    if not MIN_PRICE <= price <= MAX_MARKET_PRICE:
        raise InputError(f"{name} must be from {MIN_PRICE} to {MAX_MARKET_PRICE:,}, got {price}")
    return price


def _money(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _price_ticks(price: Decimal) -> int:
    return int(price * TICKS_PER_DOLLAR)


class MarketEngine:
    """The simulated account and market. Build one with `MarketEngine.create(...)`."""

    def __init__(
        self,
        *,
        seed: int = DEFAULT_SEED,
        start: datetime | None = None,
        cash: Decimal = DEFAULT_CASH,
        speed: float = 0.0,
        universe_size: int | None = None,
        bars_csv: Path | None = None,
        buying_power_cushion: Decimal = DEFAULT_BUYING_POWER_CUSHION,
        wall: Callable[[], float] = time.monotonic,
    ):
        start = datetime.now(UTC) if start is None else start
        if start.tzinfo is None or start.utcoffset() is None:
            raise InputError("the simulated market's start time must be timezone-aware")
        cash = to_decimal(cash)
        if cash < ZERO:
            raise InputError("starting cash cannot be negative")
        calendar = nyse()
        if not calendar.first_date < start.astimezone(NEW_YORK).date() < calendar.last_date:
            raise InputError(
                f"start {start.isoformat()} is outside the NYSE calendar ({calendar.first_date} to {calendar.last_date})"
            )
        self._lock = threading.RLock()
        self.seed = seed
        self.cushion = buying_power_cushion
        self.clock = VirtualClock(start, speed, wall)
        self.sessions: list[TradingDay] = calendar.sessions(calendar.first_date, calendar.last_date)
        self._closes = [s.close for s in self.sessions]
        self._opens = [s.open for s in self.sessions]
        anchor = max(bisect.bisect_right(self._opens, start) - 1, 0)
        self.market = MarketData(
            build_universe(universe_size, seed), calendar, self.sessions, anchor, seed, bars_csv=bars_csv
        )
        self.created_at = start.astimezone(UTC)
        self.starting_cash = cash
        self._cash = cash
        self._holdings: dict[str, Holding] = {}
        self._orders: dict[str, SimOrder] = {}
        self._top_level: list[SimOrder] = []
        self._by_client_id: dict[str, SimOrder] = {}
        self._open: dict[str, SimOrder] = {}
        self._events: list[TradeEvent] = []
        self._subscribers: list[Callable[[TradeEvent], None]] = []
        self._fills: list[dict] = []
        self._rejections: list[dict] = []
        self._partial_next: dict[str, Decimal] = {}
        #: Announced splits, in the order they took effect (the corporate-actions feed).
        self._splits: list[SplitAction] = []
        #: A symbol's CUSIP once a reverse split gave it a new one.
        self._cusips: dict[str, str] = {}
        #: Alpaca's last_equity: equity at the previous trading day's close. A session's closing
        #: equity becomes last_equity only at the next open, so a 16:05 report still compares
        #: today's equity with yesterday's close.
        self._last_equity = cash
        self._close_equity = cash
        self._processed_until = self.clock.now()
        self._last_stamp = self._processed_until - _MICRO
        self._seq = 0

    @classmethod
    def create(
        cls,
        *,
        seed: int = DEFAULT_SEED,
        start: datetime | None = None,
        cash: Decimal | int | str = DEFAULT_CASH,
        speed: float = 0.0,
        universe_size: int | None = None,
        bars_csv: Path | str | None = None,
        buying_power_cushion: Decimal | str = DEFAULT_BUYING_POWER_CUSHION,
    ) -> MarketEngine:
        """A fresh market: `start` defaults to now, `speed` 0 freezes the clock (tests)."""
        return cls(
            seed=seed,
            start=start,
            cash=to_decimal(cash),
            speed=speed,
            universe_size=universe_size,
            bars_csv=Path(bars_csv) if bars_csv is not None else None,
            buying_power_cushion=to_decimal(buying_power_cushion),
        )

    # =========================================================================================
    # Time
    # =========================================================================================
    def now(self) -> datetime:
        with self._lock:
            self._sync()
            return self._processed_until

    def sync(self) -> datetime:
        """Process everything up to the clock's now (a server calls this on a timer)."""
        return self.now()

    def advance(self, seconds: float) -> datetime:
        """Move virtual time forward, processing every open, fill and close on the way."""
        with self._lock:
            self._sync()
            self.clock.advance(seconds)
            self._sync()
            return self._processed_until

    def advance_to(self, moment: datetime) -> datetime:
        with self._lock:
            self._sync()
            self.clock.advance_to(moment)
            self._sync()
            return self._processed_until

    def set_speed(self, speed: float) -> datetime:
        with self._lock:
            self._sync()
            return self.clock.set_speed(speed)

    def clock_view(self) -> ClockView:
        with self._lock:
            now = self._sync_now()
            index = self.market.session_at(now)
            if index is not None:
                return ClockView(now, True, self.sessions[index + 1].open, self.sessions[index].close)
            upcoming = self.sessions[self.market.next_index(now)]
            return ClockView(now, False, upcoming.open, upcoming.close)

    def calendar(self, start: date, end: date) -> list[TradingDay]:
        lo = bisect.bisect_left(self.sessions, start, key=lambda s: s.date)
        hi = bisect.bisect_right(self.sessions, end, key=lambda s: s.date)
        return self.sessions[lo:hi]

    def _sync_now(self) -> datetime:
        self._sync()
        return self._processed_until

    def _stamp(self, moment: datetime) -> datetime:
        """Strictly increasing timestamps, so orders submitted at one frozen instant still sort
        and page by submission time (Alpaca's `after` is exclusive)."""
        stamp = moment if moment > self._last_stamp else self._last_stamp + _MICRO
        self._last_stamp = stamp
        return stamp

    def _sync(self) -> None:
        now = self.clock.now()
        if now <= self._processed_until:
            return
        start = self._processed_until
        i = bisect.bisect_right(self._closes, start)  # first session still to close after `start`
        while i < len(self.sessions) and self.sessions[i].open <= now:
            session = self.sessions[i]
            if start < session.open:
                self._open_session(i)
            self._match_window(i, max(start, session.open - _MICRO), min(now, session.close))
            if session.close <= now:
                self._close_session(i)
            i += 1
        self._processed_until = now

    def _open_session(self, index: int) -> None:
        session = self.sessions[index]
        self._last_equity = self._close_equity
        queued = sorted(
            (o for o in self._open.values() if o.status is OrderStatus.ACCEPTED and o.session_index <= index),
            key=lambda o: o.seq,
        )
        for order in queued:
            if order.status is not OrderStatus.ACCEPTED:
                continue  # an OCO sibling already handled it
            for member in self._group_of(order).group():
                if member.status is OrderStatus.ACCEPTED:
                    member.active_since = session.open
                    new_status = OrderStatus.HELD if member.parent_id is not None else OrderStatus.NEW
                    self._set_status(member, new_status, "new", self._stamp(session.open))
        for order in queued:
            if order.is_open and order.parent_id is None:
                self._match_immediately(order, session.open)

    def _close_session(self, index: int) -> None:
        session = self.sessions[index]
        for order in sorted(self._open.values(), key=lambda o: o.seq):
            if (
                order.parent_id is None
                and order.is_open
                and order.time_in_force is TimeInForce.DAY
                and order.session_index <= index
            ):
                for member in order.group():
                    if member.is_open:
                        member.expired_at = self._stamp(session.close)
                        self._set_status(member, OrderStatus.EXPIRED, "expired", member.expired_at)
        self._close_equity = self._equity(session.close)

    # =========================================================================================
    # Matching
    # =========================================================================================
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

    # =========================================================================================
    # Order entry
    # =========================================================================================
    def submit_order(self, req: OrderRequest) -> SimOrder:
        """Validate against Alpaca's rules, then accept (and match at once if the market is open).

        Returns the order as accepted (before any fill: fills follow as trade updates). Raises an
        `OrderRejected` subclass with Alpaca's status, code and body fields otherwise."""
        with self._lock:
            now = self._sync_now()
            try:
                order = self._accept(req, now)
            except OrderRejected as exc:
                self._rejections.append(
                    {
                        "at": now,
                        "symbol": req.symbol,
                        "client_order_id": req.client_order_id,
                        "side": req.side.value,
                        "type": req.type.value,
                        "qty": req.qty,
                        "notional": req.notional,
                        "status": exc.status,
                        "code": exc.code,
                        "message": exc.message,
                    }
                )
                raise
            accepted = order.snapshot()
            if order.status is not OrderStatus.ACCEPTED:
                self._match_immediately(order, now)
            return accepted

    def _accept(self, req: OrderRequest, now: datetime) -> SimOrder:
        req.symbol = req.symbol.strip().upper()
        rules.check_request_shape(req)
        asset = self.market.asset(req.symbol)
        if req.client_order_id is not None:
            rules.check_client_order_id(req.client_order_id, req.client_order_id in self._by_client_id)
        rules.check_asset(req, asset)
        last = self.market.last_trade(req.symbol, now)
        if last is None:
            raise rules.reject(
                OrderRejected, 422, 42210000, f"no market for {req.symbol} at {now.isoformat()}"
            )
        last_ticks = last[0]
        holding = self._holdings.get(req.symbol)
        position_qty = holding.qty if holding else ZERO
        if req.order_class is OrderClass.OCO:
            rules.check_oco_is_exit(req, position_qty)
        if req.side is Side.SELL:
            requested = (
                req.qty if req.qty is not None else round_qty(req.notional / to_price(bid_ticks(last_ticks)))
            )
            held, related = self._held_for_orders(req.symbol)
            rules.check_sell_qty(req, requested, position_qty, held, related)
        rules.check_stop_against_market(req, to_price(last_ticks))
        opposite = Side.SELL if req.side is Side.BUY else Side.BUY
        rules.check_wash_trade(
            req, [o for o in self._open.values() if o.symbol == req.symbol and o.side is opposite]
        )
        reserve_price = None
        if req.side is Side.BUY:
            reserve_price, required = self._reserve_for(req, last_ticks)
            rules.check_buying_power(required, self._buying_power())
        return self._create(req, asset, now, reserve_price)

    def _reserve_for(self, req: OrderRequest, last_ticks: int) -> tuple[Decimal | None, Decimal]:
        if req.notional is not None:
            return None, req.notional
        if req.type is OrderType.LIMIT or req.type is OrderType.STOP_LIMIT:
            per_share = req.limit_price
        elif req.type is OrderType.STOP:
            per_share = req.stop_price * (1 + self.cushion)
        else:
            per_share = to_price(ask_ticks(last_ticks)) * (1 + self.cushion)
        return per_share, req.qty * per_share

    def _create(
        self, req: OrderRequest, asset: SimAsset, now: datetime, reserve_price: Decimal | None
    ) -> SimOrder:
        stamp = self._stamp(now)
        session_at = self.market.session_at(now)
        session_index = session_at if session_at is not None else self.market.next_index(now)
        queued = session_at is None
        self._seq += 1
        order = SimOrder(
            id=str(uuid.uuid4()),
            client_order_id=req.client_order_id or str(uuid.uuid4()),
            symbol=req.symbol,
            asset_id=asset.asset_id,
            side=req.side,
            type=req.type,
            order_class=req.order_class,
            time_in_force=req.time_in_force,
            status=OrderStatus.ACCEPTED if queued else OrderStatus.NEW,
            created_at=stamp,
            updated_at=stamp,
            submitted_at=stamp,
            qty=req.qty,
            notional=req.notional,
            limit_price=req.take_profit_limit_price if req.order_class is OrderClass.OCO else req.limit_price,
            stop_price=req.stop_price,
            extended_hours=req.extended_hours,
            session_index=session_index,
            active_since=stamp,
            reserve_price=reserve_price,
            first_fill_fraction=self._partial_next.pop(req.symbol, None),
            seq=self._seq,
        )
        if req.time_in_force is TimeInForce.DAY:
            order.expires_at = self.sessions[session_index].close
        if req.order_class is OrderClass.OCO:
            leg_type = OrderType.STOP_LIMIT if req.stop_loss_limit_price is not None else OrderType.STOP
            self._seq += 1
            leg = SimOrder(
                id=str(uuid.uuid4()),
                client_order_id=str(uuid.uuid4()),
                symbol=req.symbol,
                asset_id=asset.asset_id,
                side=req.side,
                type=leg_type,
                order_class=OrderClass.OCO,
                time_in_force=req.time_in_force,
                # The stop leg waits `held` while its take-profit parent works at the venue.
                status=OrderStatus.ACCEPTED if queued else OrderStatus.HELD,
                created_at=stamp,
                updated_at=stamp,
                submitted_at=stamp,
                qty=req.qty,
                limit_price=req.stop_loss_limit_price,
                stop_price=req.stop_loss_stop_price,
                session_index=session_index,
                active_since=stamp,
                expires_at=order.expires_at,
                parent_id=order.id,
                seq=self._seq,
            )
            order.legs.append(leg)
        self._by_client_id[order.client_order_id] = order
        self._top_level.append(order)
        for member in order.group():
            self._orders[member.id] = member
            self._open[member.id] = member
            event = "accepted" if queued else "new"
            self._record(member, event, stamp)
            if member.parent_id is None:
                self._emit(member, event, stamp)
        logs.event(
            log,
            "sim_order_accepted",
            level=logging.DEBUG,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            side=order.side.value,
            type=order.type.value,
            order_class=order.order_class.value,
            status=order.status.value,
        )
        return order

    # =========================================================================================
    # Cancels and closes
    # =========================================================================================
    def cancel_order(self, order_id: str) -> None:
        """Cancel an open order (with its OCO group). NotFound / NotCancelable otherwise."""
        with self._lock:
            now = self._sync_now()
            order = self._orders.get(order_id)
            if order is None:
                raise rules.reject(NotFound, 404, 40410000, "order not found")
            if not order.is_open:
                raise rules.reject(NotCancelable, 422, 42210000, "order is not cancelable")
            self._cancel_group(order, now)

    def cancel_all_orders(self) -> list[tuple[str, int, SimOrder | None]]:
        """Cancel every open order: (order id, HTTP status, the canceled order) for each."""
        with self._lock:
            now = self._sync_now()
            results = []
            for order in [o for o in self._top_level if o.is_open]:
                self._cancel_group(order, now)
                results.append((order.id, 200, order.snapshot()))
            return results

    def _cancel_group(self, order: SimOrder, when: datetime) -> None:
        root = self._group_of(order)
        stamp = self._stamp(when)
        for member in root.group():
            if member.is_open:
                member.canceled_at = stamp
                self._set_status(member, OrderStatus.CANCELED, "canceled", stamp)

    def close_position(
        self, symbol: str, qty: Decimal | None = None, percentage: Decimal | None = None
    ) -> SimOrder:
        """Sell the position (or `qty` of it, or `percentage` percent) at market, `day`."""
        with self._lock:
            self._sync()
            symbol = symbol.strip().upper()
            holding = self._holdings.get(symbol)
            if holding is None:
                raise rules.reject(NotFound, 404, 40410000, "position does not exist")
            if qty is not None and percentage is not None:
                raise rules.reject(
                    OrderRejected, 422, 40010001, "only one of qty or percentage may be specified"
                )
            if percentage is not None:
                if not ZERO < percentage <= 100:
                    raise rules.reject(OrderRejected, 422, 40010001, "percentage must be in (0, 100]")
                qty = round_qty(holding.qty * percentage / 100)
            sell_qty = holding.qty if qty is None else qty
            return self.submit_order(
                OrderRequest(
                    symbol=symbol,
                    side=Side.SELL,
                    type=OrderType.MARKET,
                    time_in_force=TimeInForce.DAY,
                    qty=sell_qty,
                )
            )

    def close_all_positions(self, cancel_orders: bool = False) -> list[tuple[str, int, object]]:
        """(symbol, status, order or error) for each position, like Alpaca's 207 answer."""
        with self._lock:
            if cancel_orders:
                self.cancel_all_orders()
            results: list[tuple[str, int, object]] = []
            for symbol in sorted(self._holdings):
                try:
                    results.append((symbol, 200, self.close_position(symbol)))
                except OrderRejected as exc:
                    results.append((symbol, exc.status or 403, exc))
            return results

    # =========================================================================================
    # Reads
    # =========================================================================================
    def get_order(self, order_id: str) -> SimOrder:
        with self._lock:
            self._sync()
            order = self._orders.get(order_id)
            if order is None:
                raise rules.reject(NotFound, 404, 40410000, "order not found")
            return order.snapshot()

    def get_order_by_client_id(self, client_order_id: str) -> SimOrder:
        with self._lock:
            self._sync()
            order = self._by_client_id.get(client_order_id)
            if order is None:
                raise rules.reject(NotFound, 404, 40410000, "order not found")
            return order.snapshot()

    def list_orders(
        self,
        *,
        status: str = "open",
        limit: int = 50,
        after: datetime | None = None,
        until: datetime | None = None,
        direction: str = "desc",
        nested: bool = False,
        symbols: Iterable[str] | None = None,
        side: Side | None = None,
    ) -> list[SimOrder]:
        """Alpaca's GET /v2/orders: filter on status, submission time (after/until exclusive),
        symbols and side; newest first unless direction is asc; legs nested in their parent when
        `nested`, else listed on their own."""
        with self._lock:
            self._sync()
            wanted = {s.strip().upper() for s in symbols} if symbols else None
            pool = self._top_level if nested else [m for o in self._top_level for m in o.group()]
            chosen = []
            for order in pool:
                if status == "open" and not order.is_open:
                    continue
                if status == "closed" and order.is_open:
                    continue
                if after is not None and not order.submitted_at > after:
                    continue
                if until is not None and not order.submitted_at < until:
                    continue
                if wanted is not None and order.symbol not in wanted:
                    continue
                if side is not None and order.side is not side:
                    continue
                chosen.append(order)
            chosen.sort(key=lambda o: (o.submitted_at, o.seq), reverse=direction != "asc")
            result = []
            for order in chosen[:limit]:
                copied = order.snapshot()
                if not nested:
                    copied.legs = []
                result.append(copied)
            return result

    def orders_updated_since(self, since: datetime) -> list[SimOrder]:
        """Every order (legs nested) created or updated at or after `since`, by submission."""
        with self._lock:
            self._sync()
            chosen = [
                o
                for o in self._top_level
                if any(m.updated_at is not None and m.updated_at >= since for m in o.group())
            ]
            return [o.snapshot() for o in sorted(chosen, key=lambda o: (o.submitted_at, o.seq))]

    def account(self) -> AccountView:
        with self._lock:
            now = self._sync_now()
            long_value = sum((self._market_value(s, h, now) for s, h in self._holdings.items()), ZERO)
            return AccountView(
                cash=_money(self._cash),
                buying_power=_money(self._buying_power()),
                equity=_money(self._cash + long_value),
                last_equity=_money(self._last_equity),
                long_market_value=_money(long_value),
                created_at=self.created_at,
            )

    def positions(self) -> list[PositionView]:
        with self._lock:
            now = self._sync_now()
            return [self._position_view(symbol, now) for symbol in sorted(self._holdings)]

    def position(self, symbol: str) -> PositionView:
        with self._lock:
            now = self._sync_now()
            symbol = symbol.strip().upper()
            if symbol not in self._holdings:
                raise rules.reject(NotFound, 404, 40410000, "position does not exist")
            return self._position_view(symbol, now)

    def assets(self) -> list[SimAsset]:
        return list(self.market.assets.values())

    def asset(self, symbol: str) -> SimAsset:
        asset = self.market.asset(symbol.strip().upper())
        if asset is None:
            for candidate in self.market.assets.values():
                if candidate.asset_id == symbol:
                    return candidate
            raise rules.reject(NotFound, 404, 40410000, "asset not found")
        return asset

    def events_since(self, seq: int) -> list[TradeEvent]:
        with self._lock:
            self._sync()
            start = bisect.bisect_right(self._events, seq, key=lambda e: e.seq)
            return self._events[start:]

    # -- market data -------------------------------------------------------------------------
    def latest_quote(self, symbol: str) -> Quote | None:
        with self._lock:
            now = self._sync_now()
            return self.market.quote(symbol, now) if symbol in self.market.assets else None

    def latest_trade(self, symbol: str) -> tuple[int, datetime] | None:
        """(price in ticks, time) of the last trade."""
        with self._lock:
            now = self._sync_now()
            return self.market.last_trade(symbol, now) if symbol in self.market.assets else None

    def latest_minute_bar(self, symbol: str) -> TimedBar | None:
        with self._lock:
            now = self._sync_now()
            return self.market.latest_minute_bar(symbol, now) if symbol in self.market.assets else None

    def daily_bars_now(self, symbol: str) -> tuple[TimedBar | None, TimedBar | None]:
        """(the current or latest session's daily bar, the one before it)."""
        with self._lock:
            now = self._sync_now()
            if symbol not in self.market.assets:
                return None, None
            index = self.market.index_on_or_before(now)
            if index is None:
                return None, None
            current = self.market.daily_timed_bar(symbol, index, now)
            previous = self.market.daily_timed_bar(symbol, index - 1, now) if index > 0 else None
            return current, previous

    def bars(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> list[TimedBar]:
        """Historical bars, oldest first (`timeframe` like `1Min`, `5Min`, `1Hour`, `1Day`)."""
        amount, unit = parse_timeframe(timeframe)
        with self._lock:
            now = self._sync_now()
            return bar_series(self.market, symbol, amount, unit, start, end, now)

    # -- account arithmetic ------------------------------------------------------------------
    def _held_for_orders(self, symbol: str) -> tuple[Decimal, list[str]]:
        """Shares reserved by open sell orders of `symbol` (an OCO group reserves once)."""
        held = ZERO
        related = []
        for order in self._open.values():
            if order.symbol != symbol or order.side is not Side.SELL or order.parent_id is not None:
                continue
            if order.qty is not None:
                held += order.qty - order.filled_qty
            else:
                last = self.market.last_trade(symbol, self._processed_until)
                held += round_qty((order.notional - order.filled_value) / to_price(bid_ticks(last[0])))
            related.append(order.id)
        return held, related

    def _buying_power(self) -> Decimal:
        reserved = ZERO
        for order in self._open.values():
            if order.side is not Side.BUY or order.parent_id is not None:
                continue
            if order.notional is not None:
                reserved += max(order.notional - order.filled_value, ZERO)
            elif order.reserve_price is not None:
                reserved += (order.qty - order.filled_qty) * order.reserve_price
        return max(self._cash - reserved, ZERO)

    def _mark(self, symbol: str, now: datetime) -> Decimal:
        last = self.market.last_trade(symbol, now)
        return to_price(last[0]) if last else self._holdings[symbol].avg_entry_price

    def _market_value(self, symbol: str, holding: Holding, now: datetime) -> Decimal:
        return holding.qty * self._mark(symbol, now)

    def _equity(self, now: datetime) -> Decimal:
        return self._cash + sum((self._market_value(s, h, now) for s, h in self._holdings.items()), ZERO)

    def _previous_close(self, symbol: str, now: datetime) -> Decimal:
        """The close before the current trading day (today's session, running or done, or else
        the most recent one)."""
        index = self.market.index_on_or_before(now)
        if index is not None and self.sessions[index].date == now.astimezone(NEW_YORK).date():
            index -= 1
        day = self.market.day_bar(symbol, index) if index is not None and index >= 0 else None
        return to_price(day.close) if day else self._mark(symbol, now)

    def _position_view(self, symbol: str, now: datetime) -> PositionView:
        holding = self._holdings[symbol]
        asset = self.market.assets[symbol]
        price = self._mark(symbol, now)
        held, _ = self._held_for_orders(symbol)
        avg = holding.avg_entry_price.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP).normalize() + ZERO
        cost = _money(holding.qty * holding.avg_entry_price)
        value = _money(holding.qty * price)
        previous = self._previous_close(symbol, now)
        intraday_base = holding.qty * previous
        return PositionView(
            symbol=symbol,
            asset_id=asset.asset_id,
            exchange=asset.exchange,
            qty=holding.qty,
            qty_available=max(holding.qty - held, ZERO),
            avg_entry_price=avg,
            cost_basis=cost,
            current_price=price,
            market_value=value,
            unrealized_pl=value - cost,
            unrealized_plpc=((value - cost) / cost).quantize(Decimal("0.000001")) if cost else ZERO,
            lastday_price=previous,
            change_today=((price - previous) / previous).quantize(Decimal("0.000001")) if previous else ZERO,
            unrealized_intraday_pl=_money(value - intraday_base),
            unrealized_intraday_plpc=((value - intraday_base) / intraday_base).quantize(Decimal("0.000001"))
            if intraday_base
            else ZERO,
        )

    # =========================================================================================
    # Controls (the /sim endpoints and tests)
    # =========================================================================================
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

    def subscribe(self, callback: Callable[[TradeEvent], None]) -> Callable[[], None]:
        """Call `callback(event)` for every later trade event; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def state(self) -> dict:
        """Everything, for audits: orders with their history, fills, positions, cash, refusals."""
        with self._lock:
            now = self._sync_now()
            account = self.account()
            return {
                "now": now,
                "account": account,
                "positions": [self._position_view(s, now) for s in sorted(self._holdings)],
                "orders": [self._order_state(o) for o in self._top_level],
                "fills": list(self._fills),
                "rejections": list(self._rejections),
                "splits": [{"type": a.type, **vars(a)} for a in self._splits],
                "event_count": len(self._events),
            }

    def _order_state(self, order: SimOrder) -> dict:
        return {
            "order": order.snapshot(),
            "history": [vars(entry) for entry in order.history],
            "legs": [
                {"order": leg.snapshot(), "history": [vars(e) for e in leg.history]} for leg in order.legs
            ],
        }

    # =========================================================================================
    # Bookkeeping
    # =========================================================================================
    def _group_of(self, order: SimOrder) -> SimOrder:
        return self._orders[order.parent_id] if order.parent_id else order

    def _set_status(
        self, order: SimOrder, status: OrderStatus, event: str, when: datetime, **details
    ) -> None:
        # The one table of legal order states (shared.models.ORDER_TRANSITIONS) is enforced here: a
        # change the table does not allow is a bug of this market, never a state Alpaca would report.
        if not can_transition(order.status, status):
            raise IllegalTransition(f"order {order.id}: {order.status.value} -> {status.value} is not a legal transition")
        order.status = status
        order.updated_at = when
        if not status.is_open:
            self._open.pop(order.id, None)
        self._record(
            order, event, when, details.get("qty"), details.get("price"), details.get("execution_id")
        )
        self._emit(order, event, when, **details)

    def _record(self, order, event, when, qty=None, price=None, execution_id=None) -> None:
        order.history.append(HistoryEntry(when, event, order.status, qty, price, execution_id))

    def _emit(self, order: SimOrder, event: str, when: datetime, **details) -> None:
        if order.parent_id is not None and event == "new":
            return  # a leg's activation is reported with its parent
        trade_event = TradeEvent(
            seq=len(self._events) + 1,
            event=event,
            order=order.snapshot(),
            timestamp=when,
            price=details.get("price"),
            qty=details.get("qty"),
            position_qty=details.get("position_qty"),
            execution_id=details.get("execution_id"),
        )
        self._events.append(trade_event)
        for callback in list(self._subscribers):
            try:
                callback(trade_event)
            except Exception:  # noqa: BLE001 - one broken listener must not stop the market
                log.exception("sim trade-event subscriber failed")
