"""The simulator's trading API (`/v2` account, positions, orders, assets, clock and calendar):
one engine call per request, answered in Alpaca's wire format."""

from __future__ import annotations

import logging
from datetime import date

from aiohttp import web

from shared.errors import BrokerError, NotFound, OrderRejected
from shared.models import Side
from shared.money import to_decimal
from sim.engine.rules import reject
from sim.server import wire
from sim.server.common import (
    _bad_request,
    _body,
    _flag,
    _int,
    _json,
    _optional_moment,
)

log = logging.getLogger(__name__)


class TradingRoutes:
    """Alpaca's trading routes (a `SimServer` part)."""

    # -- account and positions ---------------------------------------------------------------
    async def get_account(self, request: web.Request) -> web.Response:
        return _json(wire.account_json(self.engine.account()))

    async def get_account_configurations(self, request: web.Request) -> web.Response:
        return _json(wire.account_configuration_json())

    async def get_positions(self, request: web.Request) -> web.Response:
        return _json([wire.position_json(p) for p in self.engine.positions()])

    def _symbol_of(self, text: str) -> str:
        try:
            return self.engine.asset(text).symbol
        except NotFound:
            return text.upper()

    async def get_position(self, request: web.Request) -> web.Response:
        return _json(wire.position_json(self.engine.position(self._symbol_of(request.match_info["symbol"]))))

    async def close_position(self, request: web.Request) -> web.Response:
        qty = request.query.get("qty")
        percentage = request.query.get("percentage")
        try:
            qty_value = to_decimal(qty) if qty else None
            pct_value = to_decimal(percentage) if percentage else None
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        order = self.engine.close_position(
            self._symbol_of(request.match_info["symbol"]), qty_value, pct_value
        )
        return _json(wire.order_json(order))

    async def close_all_positions(self, request: web.Request) -> web.Response:
        results = self.engine.close_all_positions(cancel_orders=_flag(request, "cancel_orders"))
        body = []
        for symbol, status, outcome in results:
            if isinstance(outcome, BrokerError):
                body.append({"symbol": symbol, "status": status, "body": wire.error_json(outcome)})
            else:
                body.append(
                    {
                        "symbol": symbol,
                        "status": status,
                        "order_id": outcome.id,
                        "body": wire.order_json(outcome),
                    }
                )
        return _json(body, 207)

    # -- orders -------------------------------------------------------------------------------
    async def submit_order(self, request: web.Request) -> web.Response:
        order = self.engine.submit_order(wire.parse_order_request(await _body(request)))
        return _json(wire.order_json(order))

    async def list_orders(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "open").lower()
        if status not in ("open", "closed", "all"):
            raise _bad_request(f"invalid status: {status!r}")
        direction = request.query.get("direction", "desc").lower()
        if direction not in ("asc", "desc"):
            raise _bad_request(f"invalid direction: {direction!r}")
        side = request.query.get("side")
        symbols = request.query.get("symbols")
        nested = _flag(request, "nested")
        orders = self.engine.list_orders(
            status=status,
            limit=_int(request, "limit", 50, 1, 500),
            after=_optional_moment(request, "after"),
            until=_optional_moment(request, "until"),
            direction=direction,
            nested=nested,
            symbols=[s for s in symbols.split(",") if s.strip()] if symbols else None,
            side=Side(side.lower()) if side else None,
        )
        return _json([wire.order_json(o, nested=nested) for o in orders])

    async def cancel_all_orders(self, request: web.Request) -> web.Response:
        results = self.engine.cancel_all_orders()
        return _json(
            [{"id": oid, "status": status, "body": wire.order_json(o)} for oid, status, o in results], 207
        )

    async def get_order(self, request: web.Request) -> web.Response:
        nested = _flag(request, "nested")
        order = self.engine.get_order(request.match_info["order_id"])
        return _json(wire.order_json(order, nested=nested))

    async def get_order_by_client_id(self, request: web.Request) -> web.Response:
        client_order_id = request.query.get("client_order_id")
        if not client_order_id:
            raise _bad_request("client_order_id is required")
        return _json(wire.order_json(self.engine.get_order_by_client_id(client_order_id)))

    async def cancel_order(self, request: web.Request) -> web.Response:
        self.engine.cancel_order(request.match_info["order_id"])
        return web.Response(status=204)

    async def replace_order(self, request: web.Request) -> web.Response:
        self.engine.get_order(request.match_info["order_id"])  # 404 first, like Alpaca
        raise reject(
            OrderRejected,
            422,
            42210000,
            "order replacement is not supported by the simulated market: cancel and resubmit",
        )

    # -- assets, clock, calendar ----------------------------------------------------------------
    async def list_assets(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        asset_class = request.query.get("asset_class")
        exchange = request.query.get("exchange")
        assets = self.engine.assets()
        if status and status.lower() != "active":
            assets = []
        if asset_class and asset_class.lower() != "us_equity":
            assets = []
        if exchange:
            assets = [a for a in assets if a.exchange == exchange.upper()]
        return _json([wire.asset_json(a) for a in assets])

    async def get_asset(self, request: web.Request) -> web.Response:
        return _json(wire.asset_json(self.engine.asset(request.match_info["symbol"])))

    async def get_clock(self, request: web.Request) -> web.Response:
        return _json(wire.clock_json(self.engine.clock_view()))

    async def get_calendar(self, request: web.Request) -> web.Response:
        sessions = self.engine.sessions
        try:
            start = (
                date.fromisoformat(request.query["start"][:10])
                if request.query.get("start")
                else sessions[0].date
            )
            end = (
                date.fromisoformat(request.query["end"][:10])
                if request.query.get("end")
                else sessions[-1].date
            )
        except ValueError:
            raise _bad_request("start and end must be dates (YYYY-MM-DD)") from None
        return _json([wire.calendar_json(day) for day in self.engine.calendar(start, end)])
