"""`SimulatedExecutor`: the `OrderExecutor` over an in-process `MarketEngine` (no HTTP).

It calls the same engine methods as the Alpaca-compatible server (`sim.server`), so a
refusal here is the refusal alpaca-py would get over the wire, raised as the same typed error
(`NotFractionable`, `NotTradable`, `InsufficientQty`, `DuplicateClientOrderId`, ...): the engine's
rules raise them typed, where `AlpacaExecutor` reads the type from the message. Orders are built
exactly as `AlpacaExecutor` builds them (same types, time in force and order class), so the
contract suite (tests/integration/test_broker_contract.py) sees one behaviour from both adapters.

    engine = MarketEngine.create(seed=7, start=datetime(2024, 3, 4, 10, tzinfo=NEW_YORK))
    executor = SimulatedExecutor(engine)
    engine.advance(3600)          # the test or demo drives time itself
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal

from shared import logs
from shared.broker.contract import OrderExecutor, TradeUpdateStream, protective_exit_shape
from shared.errors import BrokerError, InputError, NotFound
from shared.market.calendar import NEW_YORK
from shared.models import (
    Account,
    Asset,
    Bar,
    BarRow,
    LatestPrice,
    MarketClock,
    Order,
    OrderClass,
    OrderType,
    Position,
    PriceSource,
    Side,
    Split,
    Timeframe,
    TimeInForce,
    TradeEventType,
    TradeUpdate,
    TradingDay,
)
from sim.engine import MarketEngine, PositionView
from sim.engine.orders import OrderRequest, SimOrder, TradeEvent
from sim.engine.paths import to_price

log = logging.getLogger(__name__)

#: The in-process market is a paper account (a number beginning with PA, like the simulator's server's).
PAPER_ACCOUNT_NUMBER = "PA3SIM000001"


# -- converters (engine objects -> shared.models) ----------------------------------------------


def order_model(order: SimOrder) -> Order:
    return Order(
        id=order.id,
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        order_class=order.order_class,
        time_in_force=order.time_in_force,
        status=order.status,
        qty=order.qty,
        notional=order.notional,
        filled_qty=order.filled_qty,
        filled_avg_price=order.filled_avg_price,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        created_at=order.created_at,
        updated_at=order.updated_at,
        submitted_at=order.submitted_at,
        filled_at=order.filled_at,
        legs=[order_model(leg) for leg in order.legs],
    )


def position_model(view: PositionView) -> Position:
    return Position(
        symbol=view.symbol,
        qty=view.qty,
        qty_available=view.qty_available,
        avg_entry_price=view.avg_entry_price,
        current_price=view.current_price,
        market_value=view.market_value,
        unrealized_pl=view.unrealized_pl,
        cost_basis=view.cost_basis,
    )


def trade_update_model(event: TradeEvent) -> TradeUpdate:
    return TradeUpdate(
        event=TradeEventType.parse(event.event),
        order=order_model(event.order),
        timestamp=event.timestamp,
        price=event.price,
        qty=event.qty,
        position_qty=event.position_qty,
        execution_id=event.execution_id,
    )


class SimulatedExecutor(OrderExecutor):
    """`OrderExecutor` driving a `MarketEngine` in this process."""

    def __init__(self, engine: MarketEngine):
        self.engine = engine

    def __repr__(self) -> str:
        return f"SimulatedExecutor(seed={self.engine.seed})"

    def _call(self, action: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokerError as exc:
            # Same shape as AlpacaExecutor's messages: what we did, the broker's words, status.
            where = f"HTTP {exc.status}" if exc.status is not None else "no HTTP status"
            code = f", code {exc.code}" if exc.code is not None else ""
            exc.message = f"{action}: {exc.message} ({where}{code})"
            exc.args = (exc.message,)
            raise

    # -- account and positions -------------------------------------------------------------
    def get_account(self) -> Account:
        view = self.engine.account()
        return Account(
            cash=view.cash, buying_power=view.buying_power, equity=view.equity, last_equity=view.last_equity,
            account_number=PAPER_ACCOUNT_NUMBER,
        )

    def get_positions(self) -> list[Position]:
        return [position_model(p) for p in self.engine.positions()]

    def get_positions_at(self) -> tuple[list[Position], datetime | None]:
        return self.get_positions(), self.engine.now()

    def get_position(self, symbol: str) -> Position | None:
        try:
            return position_model(self.engine.position(symbol))
        except NotFound:
            return None

    def get_asset(self, symbol: str) -> Asset:
        asset = self._call(f"get asset {symbol}", self.engine.asset, symbol)
        return Asset(
            symbol=asset.symbol,
            fractionable=asset.advertised_fractionable,
            tradable=asset.tradable,
            name=asset.name,
        )

    # -- market data ----------------------------------------------------------------------
    def get_latest_prices(self, symbols: Iterable[str]) -> dict[str, LatestPrice]:
        prices: dict[str, LatestPrice] = {}
        for symbol in dict.fromkeys(s.strip().upper() for s in symbols if s and s.strip()):
            quote = self.engine.latest_quote(symbol)
            trade = self.engine.latest_trade(symbol)
            if quote is None or trade is None:
                continue
            ask = to_price(quote.ask) if quote.ask else None
            bid = to_price(quote.bid) if quote.bid else None
            last = to_price(trade[0])
            if ask is not None:
                price, source, as_of = ask, PriceSource.ASK, quote.t
            else:
                price, source, as_of = last, PriceSource.LAST_TRADE, trade[1]
            prices[symbol] = LatestPrice(
                symbol=symbol, price=price, source=source, bid=bid, ask=ask, last_trade=last, as_of=as_of
            )
        return prices

    def get_bars(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[Bar]]:
        if start.tzinfo is None or end.tzinfo is None:
            raise InputError("get_bars: start and end must be timezone-aware")
        frame = Timeframe(timeframe).value
        result: dict[str, list[Bar]] = {}
        for symbol in dict.fromkeys(s.strip().upper() for s in symbols if s and s.strip()):
            result[symbol] = [
                Bar(
                    t=b.t,
                    o=to_price(b.open),
                    h=to_price(b.high),
                    l=to_price(b.low),
                    c=to_price(b.close),
                    v=Decimal(b.volume),
                )
                for b in self.engine.bars(symbol, frame, start, end)
            ]
        return result

    def get_bar_rows(
        self, symbols: Iterable[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> dict[str, list[BarRow]]:
        # What `get_bars` returns (`to_price` of the engine's ticks), as rows instead of models.
        return {
            symbol: [BarRow(b.t, b.o, b.h, b.l, b.c, b.v) for b in bars]
            for symbol, bars in self.get_bars(symbols, timeframe, start, end).items()
        }

    def get_splits(self, symbols: Iterable[str], start: date, end: date) -> list[Split]:
        wanted = [s.strip().upper() for s in symbols if s and s.strip()]
        if not wanted:
            return []
        return [
            Split(symbol=a.symbol, ex_date=a.ex_date, old_rate=a.old_rate, new_rate=a.new_rate)
            for a in sorted(self.engine.splits(wanted, start, end), key=lambda a: (a.ex_date, a.symbol))
        ]

    # -- orders ---------------------------------------------------------------------------
    def _submit(self, action: str, request: OrderRequest) -> Order:
        try:
            order = self._call(action, self.engine.submit_order, request)
        except BrokerError as exc:
            logs.event(
                log,
                "order_not_accepted",
                level=logging.WARNING,
                symbol=request.symbol,
                client_order_id=request.client_order_id,
                error=type(exc).__name__,
                reason=exc.message,
            )
            raise
        result = order_model(order)
        logs.event(
            log,
            "order_accepted",
            symbol=result.symbol,
            client_order_id=result.client_order_id,
            order_id=result.id,
            type=result.type.value,
            order_class=result.order_class.value,
            status=result.status.value,
        )
        return result

    def buy_notional(self, symbol: str, notional: Decimal, client_order_id: str) -> Order:
        return self._submit(
            f"buy ${notional} of {symbol} (client_order_id={client_order_id})",
            OrderRequest(
                symbol=symbol,
                side=Side.BUY,
                type=OrderType.MARKET,
                time_in_force=TimeInForce.DAY,
                notional=notional,
                client_order_id=client_order_id,
            ),
        )

    def buy_qty(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        return self._submit(
            f"buy {qty} {symbol} (client_order_id={client_order_id})",
            OrderRequest(
                symbol=symbol,
                side=Side.BUY,
                type=OrderType.MARKET,
                time_in_force=TimeInForce.DAY,
                qty=qty,
                client_order_id=client_order_id,
            ),
        )

    def submit_protective_exit(
        self,
        symbol: str,
        qty: Decimal,
        stop_price: Decimal,
        target_price: Decimal | None,
        client_order_id: str,
    ) -> Order:
        shape = protective_exit_shape(qty, target_price)
        if shape.oco:
            return self._submit(
                f"protect {qty} {symbol} with OCO stop {stop_price} target {target_price} "
                f"(client_order_id={client_order_id})",
                OrderRequest(
                    symbol=symbol,
                    side=Side.SELL,
                    type=OrderType.LIMIT,
                    time_in_force=shape.time_in_force,
                    qty=qty,
                    order_class=OrderClass.OCO,
                    take_profit_limit_price=target_price,
                    stop_loss_stop_price=stop_price,
                    client_order_id=client_order_id,
                ),
            )
        tif = shape.time_in_force
        return self._submit(
            f"protect {qty} {symbol} with {tif.value} stop {stop_price} (client_order_id={client_order_id})",
            OrderRequest(
                symbol=symbol,
                side=Side.SELL,
                type=OrderType.STOP,
                time_in_force=tif,
                qty=qty,
                stop_price=stop_price,
                client_order_id=client_order_id,
            ),
        )

    def sell_market(self, symbol: str, qty: Decimal, client_order_id: str) -> Order:
        return self._submit(
            f"sell {qty} {symbol} at market (client_order_id={client_order_id})",
            OrderRequest(
                symbol=symbol,
                side=Side.SELL,
                type=OrderType.MARKET,
                time_in_force=TimeInForce.DAY,
                qty=qty,
                client_order_id=client_order_id,
            ),
        )

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        orders = self.engine.list_orders(
            status="open", limit=10**9, direction="asc", nested=True, symbols=[symbol] if symbol else None
        )
        return [order_model(o) for o in orders]

    def get_orders_updated_since(self, since: datetime) -> list[Order]:
        if since.tzinfo is None:
            raise InputError("get_orders_updated_since: `since` must be timezone-aware")
        return [order_model(o) for o in self.engine.orders_updated_since(since)]

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        try:
            return order_model(self.engine.get_order_by_client_id(client_order_id))
        except NotFound:
            return None

    def cancel_order(self, order_id: str) -> None:
        self._call(f"cancel order {order_id}", self.engine.cancel_order, order_id)
        logs.event(log, "order_cancel_requested", order_id=order_id)

    # -- calendar -------------------------------------------------------------------------
    def get_clock(self) -> MarketClock:
        view = self.engine.clock_view()
        return MarketClock(
            timestamp=view.timestamp.astimezone(NEW_YORK),
            is_open=view.is_open,
            next_open=view.next_open.astimezone(NEW_YORK),
            next_close=view.next_close.astimezone(NEW_YORK),
        )

    def get_calendar(self, start: date, end: date) -> list[TradingDay]:
        return list(self.engine.calendar(start, end))

    # -- trade updates --------------------------------------------------------------------
    def trade_update_stream(self) -> TradeUpdateStream:
        return SimulatedTradeUpdateStream(self.engine)


class SimulatedTradeUpdateStream(TradeUpdateStream):
    """Engine events as `TradeUpdate`s, delivered in order on the thread that calls `run`.

    Like the real stream, updates that happen while no one listens are not replayed: `on_connect`
    runs after the subscription is in place, so a backfill there misses nothing. `drop()`
    simulates a dropped connection (on_disconnect, a gap, then a reconnect with on_connect).
    """

    def __init__(self, engine: MarketEngine):
        self._engine = engine
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._dropping = threading.Event()
        self._connected = False

    def run(
        self,
        on_update: Callable[[TradeUpdate], None],
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        while not self._stop.is_set():
            unsubscribe = self._engine.subscribe(self._queue.put)
            self._connected = True
            try:
                if on_connect is not None:
                    on_connect()
                while not self._stop.is_set() and not self._dropping.is_set():
                    try:
                        event = self._queue.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    if event is None:
                        continue
                    try:
                        on_update(trade_update_model(event))
                    except Exception:  # noqa: BLE001 - like alpaca-py: log and keep consuming
                        log.exception("trade update handler failed")
            finally:
                unsubscribe()
                self._connected = False
                # Updates not yet handed over are lost with the connection, as on a real drop.
                self._queue = queue.Queue()
                if on_disconnect is not None:
                    on_disconnect()
            self._dropping.clear()

    def drop(self) -> None:
        """Simulate a dropped connection: the stream reconnects by itself right after."""
        self._dropping.set()
        self._queue.put(None)

    @property
    def connected(self) -> bool:
        return self._connected

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
