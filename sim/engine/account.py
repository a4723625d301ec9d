"""The simulated account: cash, holdings, buying power and the account and position views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from shared.errors import NotFound
from shared.market.calendar import NEW_YORK
from shared.models import Side
from shared.money import ZERO, round_qty
from sim.engine import rules
from sim.engine.market import (
    bid_ticks,
)
from sim.engine.paths import to_price

CENT = Decimal("0.01")


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


def _money(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)



class Account:
    """Cash, holdings and what they are worth (a `MarketEngine` part)."""

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
