"""Entry sizing: which of today's signals get an order, and how big. Pure: no broker, no Redis.

Reads the ranked signals plus a snapshot of the account (equity, cash, buying power, positions, open
orders, asset facts, latest prices, 20-session dollar volumes, cooldowns, today's entries so far);
decides one market buy per signal that passes every check; returns the orders and, for every other
signal, a typed reason (docs/trader.md has the worked example).

Money rules:
- The base of what may be spent is min(cash, buying power) less FL_CASH_BUFFER_PCT (3%): buying
  power can exceed cash on a margin account (we never borrow for an entry) or fall below it (open buy
  orders already hold some), and Alpaca checks a market buy with a price cushion (about 2.5%).
- `slots` sizing (the default): the book has FL_MAX_POSITIONS slots of equity / FL_MAX_POSITIONS;
  open positions and working entries occupy theirs; the best signals take the free ones, each for one
  slot, less when the usable cash cannot pay every slot (then it is split equally). $200,000 equity,
  5 slots, 2 open, 3 signals and $116,400 usable: 3 x $38,800.
- `signals` sizing (the seed's rule): the usable cash split equally across the day's signals that
  can be entered.
- No position above FL_MAX_POSITION_PCT of equity (an addition counts with what is held).
- A fractionable asset gets a notional order for exactly its share. Any other asset gets the most whole
  shares its share buys at the reference price (the ask, or the last trade without one); zero shares is a
  skip. Money a skipped or whole-share signal leaves unused is not given to the others, unless
  FL_REALLOCATE_SKIPPED (signals sizing): every signal's size is known before the first order is
  sent, and a re-run sizes the rest the same way.
- Entry sanity: no entry below FL_MIN_PRICE, below FL_MIN_DOLLAR_VOLUME of average daily dollar
  volume over the last 20 sessions, with the price more than FL_MAX_SIGNAL_DRIFT_PCT away from the
  signal's, in a symbol held (unless FL_ALLOW_ADDING), in cooldown after a stop-out, or beyond
  FL_MAX_ENTRIES_PER_DAY.
- Shares below FL_MIN_ORDER_NOTIONAL, and whole-share orders costing less, are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Protocol

from shared import client_ids
from shared.config import TraderSettings
from shared.models import Account, Asset, Bar, LatestPrice
from shared.money import CENT, ONE, ZERO, fmt_money, whole_shares

HUNDRED = Decimal("100")


class HasTicker(Protocol):
    ticker: str
    #: The price the signal was taken at (its scanner log's entry), when it says.
    signal_price: Decimal | None


class EntryKind(StrEnum):
    NOTIONAL = "notional"
    QTY = "qty"


class SkipReason(StrEnum):
    """Why a signal gets no order today. The value is what a person reads in the table."""

    DUPLICATE_SIGNAL = "ticker listed twice"
    ALREADY_HELD = "already held"
    OPEN_ORDER = "open order"
    UNKNOWN_ASSET = "unknown asset"
    NOT_TRADABLE = "not tradable"
    NO_PRICE = "no price"
    NO_FUNDS = "no usable cash"
    BELOW_MINIMUM = "below minimum order"
    ZERO_SHARES = "share buys zero whole shares"
    NO_FREE_SLOT = "no free slot"
    DAILY_ENTRY_CAP = "daily entry cap reached"
    AT_POSITION_CAP = "position cap reached"
    BELOW_MIN_PRICE = "price below FL_MIN_PRICE"
    LOW_VOLUME = "dollar volume below FL_MIN_DOLLAR_VOLUME"
    NO_VOLUME = "no volume history"
    PRICE_DRIFT = "price moved away from the signal"
    COOLDOWN = "cooldown after a stop-out"

    @property
    def sanity(self) -> bool:
        """A check of the signal against the market (its share stays unspent unless reallocated)."""
        return self in _SANITY


_SANITY = frozenset({SkipReason.BELOW_MIN_PRICE, SkipReason.LOW_VOLUME, SkipReason.NO_VOLUME,
                     SkipReason.PRICE_DRIFT, SkipReason.COOLDOWN})


@dataclass(frozen=True, slots=True)
class PlannedEntry:
    """One market buy to send. `amount` is the dollars committed: the notional, or qty x price."""

    symbol: str
    kind: EntryKind
    amount: Decimal
    qty: Decimal | None
    reference_price: Decimal
    client_order_id: str
    #: The equal share this signal was given (amount <= allocation).
    allocation: Decimal
    #: Whole shares to retry with if the broker refuses the notional order as not fractionable
    #: (0 when the share buys none, or less than the minimum order), and the id that retry uses.
    whole_share_qty: Decimal = ZERO
    whole_share_client_order_id: str = ""

    def as_dict(self) -> dict[str, str | None]:
        return {
            "symbol": self.symbol,
            "kind": self.kind.value,
            "amount": str(self.amount),
            "qty": None if self.qty is None else str(self.qty),
            "reference_price": str(self.reference_price),
            "client_order_id": self.client_order_id,
            "allocation": str(self.allocation),
        }


@dataclass(frozen=True, slots=True)
class Skip:
    symbol: str
    reason: SkipReason
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"symbol": self.symbol, "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class EntryPlan:
    orders: list[PlannedEntry] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    #: min(cash, buying power) less the buffer: the most all orders together may commit.
    usable: Decimal = ZERO
    allocation: Decimal = ZERO
    #: `slots` sizing: equity / FL_MAX_POSITIONS, and the slots free before this plan.
    slot: Decimal = ZERO
    free_slots: int = 0

    @property
    def total_amount(self) -> Decimal:
        return sum((o.amount for o in self.orders), ZERO)


def usable_cash(account: Account, settings: TraderSettings) -> Decimal:
    """min(cash, buying power) less FL_CASH_BUFFER_PCT, never negative, rounded down to the cent."""
    base = min(account.cash, account.buying_power)
    usable = base * (HUNDRED - settings.FL_CASH_BUFFER_PCT) / HUNDRED
    return max(ZERO, usable.quantize(CENT, rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class MarketFacts:
    """What the planner knows of the market and the line's recent past, besides the account."""

    assets: Mapping[str, Asset]
    prices: Mapping[str, LatestPrice]
    #: Average daily dollar volume over the last 20 sessions (absent: no history).
    dollar_volumes: Mapping[str, Decimal] = field(default_factory=dict)
    #: Symbols in cooldown after a stop-out, with when it ends.
    cooldowns: Mapping[str, datetime] = field(default_factory=dict)
    #: Market value of each position held (an addition counts with it against the cap).
    held_values: Mapping[str, Decimal] = field(default_factory=dict)
    #: Symbols the line already sent an entry for, for this trading day. The daily cap counts them;
    #: one of today's signals among them is that same entry (a re-run), found and reported, not sent.
    sent_today: frozenset[str] = frozenset()


def plan_entries(
    signals: Sequence[HasTicker],
    account: Account,
    held_symbols: Iterable[str],
    open_order_symbols: Iterable[str],
    facts: MarketFacts,
    settings: TraderSettings,
    trade_date: date,
    *,
    namespace: str = client_ids.DEFAULT_NAMESPACE,
) -> EntryPlan:
    """One market entry per signal that passes every check, in ranked order; every other signal is a
    `Skip` with its reason."""
    held, pending = frozenset(held_symbols), frozenset(open_order_symbols)
    skips: list[Skip] = []
    enterable: list[tuple[Asset, Decimal]] = []
    seen: set[str] = set()
    for signal in signals:
        symbol = signal.ticker
        if symbol in seen:
            skips.append(Skip(symbol, SkipReason.DUPLICATE_SIGNAL))
            continue
        seen.add(symbol)
        skip, price = _check(signal, held, pending, facts, settings)
        if skip is not None:
            skips.append(skip)
        else:
            enterable.append((facts.assets[symbol], price))

    usable = usable_cash(account, settings)
    cap = (account.equity * settings.FL_MAX_POSITION_PCT / HUNDRED).quantize(CENT, rounding=ROUND_DOWN)
    todays = {signal.ticker for signal in signals}
    entries_left = max(settings.FL_MAX_ENTRIES_PER_DAY - len(facts.sent_today - todays), 0)
    slot, free = ZERO, 0
    taken: list[tuple[Asset, Decimal]] = []
    if settings.FL_SIZING == "slots":
        slot = (account.equity / settings.FL_MAX_POSITIONS).quantize(CENT, rounding=ROUND_DOWN)
        free = max(settings.FL_MAX_POSITIONS - len(held | pending), 0)
        slots_left = free
        for asset, price in enterable:
            adding = asset.symbol in held
            if len(taken) >= entries_left and asset.symbol not in facts.sent_today:
                skips.append(Skip(asset.symbol, SkipReason.DAILY_ENTRY_CAP,
                                  f"FL_MAX_ENTRIES_PER_DAY={settings.FL_MAX_ENTRIES_PER_DAY}"))
            elif not adding and slots_left <= 0:
                skips.append(Skip(asset.symbol, SkipReason.NO_FREE_SLOT,
                                  f"{len(held | pending)} of FL_MAX_POSITIONS={settings.FL_MAX_POSITIONS} in use"))
            else:
                slots_left -= 0 if adding else 1
                taken.append((asset, price))
        share = min(slot, (usable / len(taken)).quantize(CENT, rounding=ROUND_DOWN)) if taken else ZERO
    else:
        sanity_skipped = sum(1 for skip in skips if skip.reason.sanity)
        divisor = len(enterable) + (0 if settings.FL_REALLOCATE_SKIPPED else sanity_skipped)
        for asset, price in enterable:
            if len(taken) >= entries_left and asset.symbol not in facts.sent_today:
                skips.append(Skip(asset.symbol, SkipReason.DAILY_ENTRY_CAP,
                                  f"FL_MAX_ENTRIES_PER_DAY={settings.FL_MAX_ENTRIES_PER_DAY}"))
            else:
                taken.append((asset, price))
        share = (usable / divisor).quantize(CENT, rounding=ROUND_DOWN) if divisor else ZERO

    minimum = settings.FL_MIN_ORDER_NOTIONAL
    orders: list[PlannedEntry] = []
    for asset, price in taken:
        symbol = asset.symbol
        room = cap - facts.held_values.get(symbol, ZERO)
        allocation = max(min(share, room), ZERO)
        if share <= ZERO:
            skips.append(Skip(symbol, SkipReason.NO_FUNDS, f"usable cash {fmt_money(usable)}"))
            continue
        if allocation <= ZERO:
            skips.append(Skip(symbol, SkipReason.AT_POSITION_CAP,
                              f"{fmt_money(facts.held_values.get(symbol, ZERO))} held, FL_MAX_POSITION_PCT "
                              f"{settings.FL_MAX_POSITION_PCT}% of equity is {fmt_money(cap)}"))
            continue
        if allocation < minimum:
            skips.append(Skip(symbol, SkipReason.BELOW_MINIMUM,
                              f"share {fmt_money(allocation)} < FL_MIN_ORDER_NOTIONAL {fmt_money(minimum)}"))
            continue
        # quantize: a quotient like 1E+3 must read as 1000 on the wire and in the table.
        shares = whole_shares(allocation / price).quantize(ONE)
        entry_cid = client_ids.entry_id(trade_date, symbol, namespace)
        if asset.fractionable:
            orders.append(PlannedEntry(
                symbol=symbol, kind=EntryKind.NOTIONAL, amount=allocation, qty=None, reference_price=price,
                client_order_id=entry_cid, allocation=allocation,
                whole_share_qty=shares if shares * price >= minimum else ZERO,
                whole_share_client_order_id=client_ids.whole_share_entry_id(trade_date, symbol, namespace),
            ))
            continue
        cost = shares * price
        if shares <= ZERO:
            skips.append(Skip(symbol, SkipReason.ZERO_SHARES,
                              f"share {fmt_money(allocation)} < price {price} (not fractionable)"))
        elif cost < minimum:
            skips.append(Skip(symbol, SkipReason.BELOW_MINIMUM,
                              f"{shares} shares cost {fmt_money(cost)} < FL_MIN_ORDER_NOTIONAL {fmt_money(minimum)}"))
        else:
            orders.append(PlannedEntry(
                symbol=symbol, kind=EntryKind.QTY, amount=cost, qty=shares, reference_price=price,
                client_order_id=entry_cid, allocation=allocation, whole_share_qty=shares,
            ))
    return EntryPlan(orders, skips, usable, share, slot, free)


def _check(signal: HasTicker, held: frozenset[str], pending: frozenset[str], facts: MarketFacts,
           settings: TraderSettings) -> tuple[Skip | None, Decimal]:
    """The signal's skip, or None and the price to size it at."""
    symbol = signal.ticker
    asset, latest = facts.assets.get(symbol), facts.prices.get(symbol)
    if symbol in held and not settings.FL_ALLOW_ADDING:
        return Skip(symbol, SkipReason.ALREADY_HELD, "a position is open (FL_ALLOW_ADDING=false)"), ZERO
    if symbol in pending:
        return Skip(symbol, SkipReason.OPEN_ORDER, "an order is already working"), ZERO
    if asset is None:
        return Skip(symbol, SkipReason.UNKNOWN_ASSET, "the broker does not list it"), ZERO
    if not asset.tradable:
        return Skip(symbol, SkipReason.NOT_TRADABLE, "the broker marks it not tradable"), ZERO
    if latest is None or latest.price <= ZERO:
        return Skip(symbol, SkipReason.NO_PRICE, "no ask and no last trade"), ZERO
    price = latest.price
    if symbol in facts.cooldowns:
        return Skip(symbol, SkipReason.COOLDOWN,
                    f"stopped out; FL_COOLDOWN_DAYS={settings.FL_COOLDOWN_DAYS}, until "
                    f"{facts.cooldowns[symbol].isoformat(timespec='minutes')}"), price
    if price < settings.FL_MIN_PRICE:
        return Skip(symbol, SkipReason.BELOW_MIN_PRICE, f"{price} < {settings.FL_MIN_PRICE}"), price
    if signal.signal_price is not None and signal.signal_price > ZERO:
        drift = (price - signal.signal_price) / signal.signal_price * HUNDRED
        if abs(drift) > settings.FL_MAX_SIGNAL_DRIFT_PCT:
            return Skip(symbol, SkipReason.PRICE_DRIFT,
                        f"{price} is {drift:+.1f}% from the signal's {signal.signal_price}; "
                        f"FL_MAX_SIGNAL_DRIFT_PCT={settings.FL_MAX_SIGNAL_DRIFT_PCT}"), price
    if settings.FL_MIN_DOLLAR_VOLUME > ZERO:
        volume = facts.dollar_volumes.get(symbol)
        if volume is None:
            return Skip(symbol, SkipReason.NO_VOLUME, "no daily bars for the last 20 sessions"), price
        if volume < settings.FL_MIN_DOLLAR_VOLUME:
            return Skip(symbol, SkipReason.LOW_VOLUME,
                        f"{fmt_money(volume)} a day < {fmt_money(settings.FL_MIN_DOLLAR_VOLUME)}"), price
    return None, price


def average_dollar_volume(bars: Sequence[Bar], sessions: int = 20) -> Decimal | None:
    """Mean of close x volume over the last `sessions` daily bars (None without any bar)."""
    recent = list(bars)[-sessions:]
    if not recent:
        return None
    return (sum((bar.c * bar.v for bar in recent), ZERO) / len(recent)).quantize(CENT)


def whole_share_retry(entry: PlannedEntry) -> PlannedEntry | None:
    """The whole-share order to send after the broker refused `entry` as not fractionable (its asset
    list said otherwise), or None when the share buys no whole share."""
    if entry.kind is not EntryKind.NOTIONAL or entry.whole_share_qty <= ZERO:
        return None
    return PlannedEntry(
        symbol=entry.symbol, kind=EntryKind.QTY, amount=entry.whole_share_qty * entry.reference_price,
        qty=entry.whole_share_qty, reference_price=entry.reference_price,
        client_order_id=entry.whole_share_client_order_id, allocation=entry.allocation,
        whole_share_qty=entry.whole_share_qty,
    )
