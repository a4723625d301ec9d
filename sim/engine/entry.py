"""Order entry: submit (Alpaca's rules, then accept), cancel, close positions, and order reads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from shared import logs
from shared.errors import NotCancelable, NotFound, OrderRejected
from shared.models import OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.money import ZERO, round_qty
from sim.engine import rules
from sim.engine.market import (
    ask_ticks,
    bid_ticks,
)
from sim.engine.orders import OrderRequest, SimOrder
from sim.engine.paths import to_price
from sim.engine.universe import SimAsset

log = logging.getLogger(__name__)


class OrderEntry:
    """Submitting, cancelling and reading orders (a `MarketEngine` part)."""

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
