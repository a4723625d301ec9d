"""`OrderExecutor`: the only door to a broker.

Every pillar talks to the broker through this interface; adapters implement it for Alpaca
(`shared.broker.alpaca.AlpacaExecutor`, over alpaca-py) and for the in-process simulated market
(`sim.executor.SimulatedExecutor`). One contract test suite
(`tests/integration/test_broker_contract.py`) runs unchanged against both.

Conventions every adapter keeps:
- Money and quantities are `Decimal`; times are timezone-aware.
- A definitive refusal raises an `OrderRejected` subclass (nothing was created). A timeout, 5xx or
  dropped connection raises `BrokerUnavailable`: the order may exist, so callers look it up with
  `get_order_by_client_id` before trying again. Order creation is never retried blindly.
- Every order we send carries our own `client_order_id` (at most 48 characters; Alpaca keeps it
  unique for the life of the account and answers a reuse with `DuplicateClientOrderId`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from shared.models import (
    Account,
    Asset,
    Bar,
    BarRow,
    LatestPrice,
    MarketClock,
    Order,
    Position,
    Split,
    Timeframe,
    TimeInForce,
    TradeUpdate,
    TradingDay,
)
from shared.money import is_whole

MAX_CLIENT_ORDER_ID_LEN = 48


@dataclass(frozen=True)
class ExitShape:
    """The form a protective exit takes at the broker (see `submit_protective_exit`)."""

    oco: bool
    time_in_force: TimeInForce


def protective_exit_shape(qty: Decimal, target_price: Decimal | None) -> ExitShape:
    """Alpaca's rules, decided once for every adapter: whole shares with a target are one `gtc` OCO
    (stop and target hold the same shares; two plain sells cannot). Fractional shares may only be sold
    by simple `day` orders, so they get a plain day stop; without a target, a plain `gtc` stop."""
    fractional = not is_whole(qty)
    if target_price is not None and not fractional:
        return ExitShape(oco=True, time_in_force=TimeInForce.GTC)
    return ExitShape(oco=False, time_in_force=TimeInForce.DAY if fractional else TimeInForce.GTC)


@dataclass(frozen=True)
class BrokerCapabilities:
    """What the broker allows, as data (no `if broker == ...` branches in the pillars)."""

    #: Exit orders for whole shares can be one OCO (stop + target, one cancels the other).
    oco_exits: bool = True
    #: Fractional quantities may be sold with a plain stop order (Alpaca: simple, `day` only).
    fractional_stop_orders: bool = True


class TradeUpdateStream(abc.ABC):
    """The broker's trade-update feed. `run` blocks, reconnecting on its own, until `stop`."""

    @abc.abstractmethod
    def run(
        self,
        on_update: Callable[[TradeUpdate], None],
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        """Deliver updates to `on_update`; call `on_connect` after every (re)connect and
        authorization, so the caller can backfill what it missed while disconnected."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Make `run` return soon. Safe to call from another thread."""


class OrderExecutor(abc.ABC):
    capabilities: BrokerCapabilities = BrokerCapabilities()

    # -- account and positions -------------------------------------------------------------
    @abc.abstractmethod
    def get_account(self) -> Account:
        """Cash, buying power (already reduced by open buy orders) and equity."""

    @abc.abstractmethod
    def get_positions(self) -> list[Position]:
        """Every open position. `qty_available` excludes shares held by open sell orders."""

    def get_positions_at(self) -> tuple[list[Position], datetime | None]:
        """Every open position, and the broker's own time when it answered (None when the answer
        did not say). One request: the manager's tick takes "now" from it instead of asking the clock."""
        return self.get_positions(), None

    @abc.abstractmethod
    def get_position(self, symbol: str) -> Position | None:
        """The position in `symbol`, or None when flat."""

    @abc.abstractmethod
    def get_asset(self, symbol: str) -> Asset:
        """Asset facts; raises NotFound for an unknown symbol."""

    # -- market data ----------------------------------------------------------------------
    @abc.abstractmethod
    def get_latest_prices(self, symbols: Iterable[str]) -> dict[str, LatestPrice]:
        """One batched request for many symbols. The price is the ask; when the ask is missing or
        zero, the last trade. Symbols with neither are absent from the result."""

    @abc.abstractmethod
    def get_bars(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[Bar]]:
        """Bars in [start, end], oldest first, all pages fetched; batched across symbols."""

    @abc.abstractmethod
    def get_bar_rows(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[BarRow]]:
        """The same bars as `get_bars` (same request, pages, feed, retries and errors; equal prices and
        times), as light `BarRow`s instead of validated `Bar` models: for reads of many bars, where
        building a model per bar is the cost (the scanner)."""

    @abc.abstractmethod
    def get_splits(self, symbols: Iterable[str], start: date, end: date) -> list[Split]:
        """Forward and reverse splits of `symbols` with start <= ex_date <= end (New York dates),
        oldest first, from the broker's corporate-actions feed. No symbols: an empty list and no
        request. A feed can miss a split: callers still check quantities against positions."""

    # -- orders ---------------------------------------------------------------------------
    @abc.abstractmethod
    def buy_notional(self, symbol: str, notional: Decimal, client_order_id: str) -> Order:
        """Market buy for a dollar amount, `day` (fractionable assets only: NotFractionable)."""

    @abc.abstractmethod
    def buy_qty(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        """Market buy for a quantity, `day`. Whole shares for non-fractionable assets."""

    @abc.abstractmethod
    def submit_protective_exit(
        self,
        symbol: str,
        qty: Decimal,
        stop_price: Decimal,
        target_price: Decimal | None,
        client_order_id: str,
    ) -> Order:
        """Place the sell orders that protect `qty` shares.

        With a target and a whole quantity: one OCO (take-profit limit parent, stop leg child),
        `gtc`. Without a target, or for a fractional quantity: one plain stop sell (`day` when
        fractional, as Alpaca requires). Prices must already be rounded to the broker's increments.
        Raises InsufficientQty if other open sells hold the shares.
        """

    @abc.abstractmethod
    def sell_market(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        """Market sell of `qty` (never more than available: the broker refuses, InsufficientQty)."""

    @abc.abstractmethod
    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Open orders, parents with their legs nested (held OCO/bracket legs included)."""

    @abc.abstractmethod
    def get_orders_updated_since(self, since: datetime) -> list[Order]:
        """Every order (open or closed) created or updated at or after `since`, oldest first.
        The streamer's backfill after a reconnect."""

    @abc.abstractmethod
    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order we sent with this id, or None if the broker never accepted it."""

    @abc.abstractmethod
    def cancel_order(self, order_id: str) -> None:
        """Request cancellation. NotCancelable if it already filled or ended."""

    # -- calendar -------------------------------------------------------------------------
    @abc.abstractmethod
    def get_clock(self) -> MarketClock:
        """The broker's clock (the simulator's virtual time)."""

    @abc.abstractmethod
    def get_calendar(self, start: date, end: date) -> list[TradingDay]:
        """Trading sessions with start <= date <= end, open/close aware in New York time."""

    # -- trade updates --------------------------------------------------------------------
    @abc.abstractmethod
    def trade_update_stream(self) -> TradeUpdateStream:
        """A new connection to the trade-update feed (Alpaca allows one per account)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
