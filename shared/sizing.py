"""Entry sizing: which of today's signals get an order, and how big. Pure: no broker, no Redis.

Reads the ranked signals plus a snapshot of the account (cash, buying power, positions, open orders,
asset facts, latest prices); decides one market buy per signal that is not already held, pending or
unpriceable; returns the orders and, for every other signal, a typed reason.

Money rules:
- The base is min(cash, buying power): the seed "splits cash", and buying power can exceed cash on a
  margin account (we never borrow for an entry) or fall below it (open buy orders already hold some).
- FL_CASH_BUFFER_PCT (default 3%) of it is kept back. Alpaca checks a market buy against buying power
  with a price cushion above the market (about 2.5%), so spending 100% gets the last order refused.
- The rest is split equally across the signals that can still be entered, rounded down to the cent:
  $200,000 and 5 signals gives 5 x $38,800.
- A fractionable asset gets a notional order for exactly its share. Any other asset gets the most whole
  shares its share buys at the reference price (the ask, or the last trade without one); zero shares is a
  skip. Money a skipped or whole-share signal leaves unused is not given to the others: every signal's
  size is known before the first order is sent, and a re-run sizes the rest the same way.
- Shares below FL_MIN_ORDER_NOTIONAL, and whole-share orders costing less, are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_DOWN, Decimal
from enum import StrEnum
from typing import Protocol

from shared import client_ids
from shared.config import TraderSettings
from shared.models import Account, Asset, LatestPrice
from shared.money import CENT, ONE, ZERO, fmt_money, whole_shares

HUNDRED = Decimal("100")


class HasTicker(Protocol):
    ticker: str


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

    @property
    def total_amount(self) -> Decimal:
        return sum((o.amount for o in self.orders), ZERO)


def usable_cash(account: Account, settings: TraderSettings) -> Decimal:
    """min(cash, buying power) less FL_CASH_BUFFER_PCT, never negative, rounded down to the cent."""
    base = min(account.cash, account.buying_power)
    usable = base * (HUNDRED - settings.FL_CASH_BUFFER_PCT) / HUNDRED
    return max(ZERO, usable.quantize(CENT, rounding=ROUND_DOWN))


def plan_entries(
    signals: Sequence[HasTicker],
    account: Account,
    held_symbols: Iterable[str],
    open_order_symbols: Iterable[str],
    assets: Mapping[str, Asset],
    prices: Mapping[str, LatestPrice],
    settings: TraderSettings,
    trade_date: date,
    *,
    namespace: str = client_ids.DEFAULT_NAMESPACE,
) -> EntryPlan:
    """One market entry per enterable signal, in ranked order; every other signal is a `Skip`."""
    held, pending = frozenset(held_symbols), frozenset(open_order_symbols)
    skips: list[Skip] = []
    enterable: list[tuple[Asset, Decimal]] = []
    seen: set[str] = set()
    for signal in signals:
        symbol = signal.ticker
        asset, latest = assets.get(symbol), prices.get(symbol)
        if symbol in seen:
            skips.append(Skip(symbol, SkipReason.DUPLICATE_SIGNAL))
            continue
        seen.add(symbol)
        if symbol in held:
            skips.append(Skip(symbol, SkipReason.ALREADY_HELD, "a position is open"))
        elif symbol in pending:
            skips.append(Skip(symbol, SkipReason.OPEN_ORDER, "an order is already working"))
        elif asset is None:
            skips.append(Skip(symbol, SkipReason.UNKNOWN_ASSET, "the broker does not list it"))
        elif not asset.tradable:
            skips.append(Skip(symbol, SkipReason.NOT_TRADABLE, "the broker marks it not tradable"))
        elif latest is None or latest.price <= ZERO:
            skips.append(Skip(symbol, SkipReason.NO_PRICE, "no ask and no last trade"))
        else:
            enterable.append((asset, latest.price))

    usable = usable_cash(account, settings)
    if not enterable:
        return EntryPlan([], skips, usable, ZERO)
    allocation = (usable / len(enterable)).quantize(CENT, rounding=ROUND_DOWN)
    minimum = settings.FL_MIN_ORDER_NOTIONAL
    orders: list[PlannedEntry] = []
    for asset, price in enterable:
        symbol = asset.symbol
        if allocation <= ZERO:
            skips.append(Skip(symbol, SkipReason.NO_FUNDS, f"usable cash {fmt_money(usable)}"))
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
    return EntryPlan(orders, skips, usable, allocation)


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
