"""The simulator's `/sim` controls (time, prices, assets, fills, splits, faults, rate limit, reset)
and the faults and rate limits they set."""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal

from aiohttp import web

from shared.errors import InputError
from shared.models import OrderStatus
from sim.engine import MAX_MARKET_PRICE, MIN_PRICE, SPLIT_ORDER_MODES, MarketEngine
from sim.engine.orders import QTY_QUANTUM
from sim.engine.rules import MAX_QTY
from sim.server import wire
from sim.server.common import (
    DEFAULT_RATE_LIMIT,
    HTTP_METHODS,
    MAX_ADVANCE_SECONDS,
    MAX_CASH,
    MAX_FAULT_COUNT,
    MAX_FAULT_SECONDS,
    MAX_PATH_PREFIX,
    MAX_RATE_LIMIT,
    MAX_REFUSE_SECONDS,
    MAX_SEED,
    MAX_SPEED,
    MAX_UNIVERSE_SIZE,
    RATE_WINDOW_SECONDS,
    Fields,
    _body,
    _int,
    _json,
    _moment,
    _plain,
)

log = logging.getLogger(__name__)


@dataclass
class Fault:
    """Delay or fail the next `count` matching requests (to `/v2` paths by default)."""

    kind: str  # "delay" | "fail"
    count: int
    seconds: float = 0.0
    status: int = 500
    path_prefix: str = "/v2/"
    method: str | None = None
    #: "before": the request is not processed; "after": processed, then the answer is delayed or
    #: replaced (a submitted order then exists although the client saw an error).
    when: str = "before"

    def matches(self, request: web.Request) -> bool:
        return (
            self.count > 0
            and request.path.startswith(self.path_prefix)
            and (self.method is None or self.method.upper() == request.method)
        )


@dataclass
class RateLimiter:
    per_minute: int
    _hits: dict[tuple[str, str], collections.deque] = field(default_factory=dict)

    def check(self, key: str, api: str) -> tuple[bool, dict[str, str]]:
        """(allowed, X-RateLimit headers) for one request of `key` to `api`."""
        if self.per_minute <= 0:
            return True, {}
        now = time.monotonic()
        hits = self._hits.setdefault((key, api), collections.deque())
        while hits and hits[0] <= now - RATE_WINDOW_SECONDS:
            hits.popleft()
        allowed = len(hits) < self.per_minute
        if allowed:
            hits.append(now)
        reset = time.time() + (hits[0] + RATE_WINDOW_SECONDS - now if hits else RATE_WINDOW_SECONDS)
        headers = {
            "X-RateLimit-Limit": str(self.per_minute),
            "X-RateLimit-Remaining": str(max(self.per_minute - len(hits), 0)),
            "X-RateLimit-Reset": str(int(reset)),
        }
        return allowed, headers


class ControlRoutes:
    """The `/sim` endpoints (a `SimServer` part): never delayed or failed by a fault."""

    # -- /sim controls --------------------------------------------------------------------------------
    async def sim_health(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "now": self.engine.now()})

    async def sim_state(self, request: web.Request) -> web.Response:
        state = self.engine.state()

        def order_entry(entry: dict) -> dict:
            return {
                **wire.order_json(entry["order"], nested=False),
                "history": entry["history"],
                "legs": [
                    {**wire.order_json(leg["order"], nested=False), "history": leg["history"]}
                    for leg in entry["legs"]
                ],
            }

        account = state["account"]
        return _json(
            {
                "now": state["now"],
                "clock": wire.clock_json(self.engine.clock_view()),
                "account": wire.account_json(account),
                "positions": [wire.position_json(p) for p in state["positions"]],
                "orders": [order_entry(e) for e in state["orders"]],
                "fills": state["fills"],
                "rejections": state["rejections"],
                "splits": state["splits"],
                "event_count": state["event_count"],
                "stream_connections": sum(1 for s in self.sessions if s.listening),
            }
        )

    async def sim_events(self, request: web.Request) -> web.Response:
        since = _int(request, "since", 0, 0, 10**12)
        events = self.engine.events_since(since)
        return _json([{"seq": e.seq, **wire.trade_update_json(e)["data"]} for e in events])

    async def sim_advance(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("seconds", "to"))
        limit = self.clock_limit()
        if fields.has("to"):
            text = fields.text("to", max_chars=64)
            moment = _moment(text, "to")
            if moment > limit:
                raise InputError(f"to must not be after {wire.ts(limit)} (the simulated calendar ends then)")
            now = self.engine.advance_to(moment)
        elif fields.has("seconds"):
            seconds = fields.number("seconds", lo=0, hi=MAX_ADVANCE_SECONDS)
            room = max((limit - self.engine.now()).total_seconds(), 0.0)
            if seconds > room:
                raise InputError(
                    f"seconds must be at most {_plain(math.floor(room))} from now: time cannot pass "
                    f"{wire.ts(limit)} (the simulated calendar ends then)"
                )
            now = self.engine.advance(seconds)
        else:
            raise InputError('send {"seconds": N} or {"to": "ISO time"}')
        return _json({"now": now, "clock": wire.clock_json(self.engine.clock_view())})

    async def sim_speed(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("speed",))
        speed = fields.number("speed", lo=0, hi=MAX_SPEED)
        return _json({"now": self.engine.set_speed(speed), "speed": speed})

    async def sim_price(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("symbol", "price"))
        symbol = self.engine.asset(fields.symbol()).symbol
        price = fields.amount("price", lo=MIN_PRICE, hi=MAX_MARKET_PRICE)
        self.engine.set_price(symbol, price)
        last = self.engine.latest_trade(symbol)
        return _json({"symbol": symbol, "last_trade": wire.trade_json(last[0], last[1], 0)["p"]})

    async def sim_quote(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("symbol", "ask_missing"))
        self.engine.set_ask_missing(fields.symbol(), fields.boolean("ask_missing", True))
        return _json({"ok": True})

    async def sim_asset(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("symbol", "fractionable", "listed_fractionable", "tradable"))
        asset = self.engine.set_asset(
            fields.symbol(),
            fractionable=fields.boolean("fractionable"),
            listed_fractionable=fields.boolean("listed_fractionable"),
            tradable=fields.boolean("tradable"),
        )
        return _json({**wire.asset_json(asset), "order_checks_fractionable": asset.fractionable})

    async def sim_fill(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("order_id", "client_order_id", "qty", "price"))
        order_id = fields.text("order_id") or fields.text("client_order_id")
        if not order_id:
            raise InputError("send order_id or client_order_id")
        qty = fields.amount("qty", lo=QTY_QUANTUM, hi=MAX_QTY) if fields.has("qty") else None
        price = fields.amount("price", lo=MIN_PRICE, hi=MAX_MARKET_PRICE) if fields.has("price") else None
        return _json(wire.order_json(self.engine.fill_order(order_id, qty, price)))

    async def sim_order_status(self, request: web.Request) -> web.Response:
        """The broker changes an order's state on its own (`broker_status`): 422 for a status it does
        not set or a change the transition table forbids, 404 for an unknown order."""
        fields = Fields(await _body(request), ("order_id", "client_order_id", "status"))
        order_id = fields.text("order_id") or fields.text("client_order_id")
        if not order_id:
            raise InputError("send order_id or client_order_id")
        wanted = fields.text("status") or ""
        try:
            status = OrderStatus(wanted)
        except ValueError:
            raise InputError(f"unknown order status {wire.echo(wanted)}") from None
        return _json(wire.order_json(self.engine.broker_status(order_id, status)))

    async def sim_partial_fill(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("symbol", "fraction"))
        symbol = fields.symbol()
        fraction = fields.amount("fraction", lo=Decimal(0), hi=Decimal(1))
        self.engine.partial_fill_next(symbol, fraction)
        return _json({"ok": True})

    async def sim_split(self, request: web.Request) -> web.Response:
        """Split a symbol now. Unknown symbol: 404; bad rates, `orders` or `announce`: 422 with
        one line, like every control."""
        fields = Fields(await _body(request), ("symbol", "new_rate", "old_rate", "orders", "announce"))
        symbol = fields.symbol()
        announce = fields.boolean("announce", True)
        orders = fields.text("orders", default="adjust", choices=SPLIT_ORDER_MODES)
        action = self.engine.split(
            symbol, fields.body.get("new_rate"), fields.body.get("old_rate"), orders=orders, announce=announce
        )
        last = self.engine.latest_trade(action.symbol)
        return _json(
            {
                "symbol": action.symbol,
                "type": action.type,
                "ratio": action.ratio,
                "ex_date": action.ex_date,
                "announced": announce,
                "last_trade": wire.trade_json(last[0], last[1], 0)["p"] if last else None,
                "corporate_action": wire.split_json(action),
            }
        )

    async def sim_drop_stream(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("refuse_seconds",))
        dropped = await self.drop_streams(
            fields.number("refuse_seconds", lo=0, hi=MAX_REFUSE_SECONDS, default=0.0)
        )
        return _json({"dropped": dropped})

    async def sim_fault(self, request: web.Request) -> web.Response:
        kind = "delay" if request.path.endswith("/delay") else "fail"
        detail = "seconds" if kind == "delay" else "status"
        fields = Fields(await _body(request), ("count", detail, "path_prefix", "method", "when"))
        prefix = fields.text("path_prefix", default="/v2/", max_chars=MAX_PATH_PREFIX)
        if not prefix.startswith("/") or prefix.startswith("/sim"):
            raise InputError(
                f"path_prefix must start with / and not be a /sim control, got {wire.echo(prefix)}"
            )
        method = fields.text("method", max_chars=10)
        if method is not None and method.upper() not in HTTP_METHODS:
            raise InputError(f"method must be one of {', '.join(HTTP_METHODS)}, got {wire.echo(method)}")
        fault = Fault(
            kind=kind,
            count=fields.number("count", lo=1, hi=MAX_FAULT_COUNT, default=1, integer=True),
            seconds=fields.number("seconds", lo=0, hi=MAX_FAULT_SECONDS, default=0.0)
            if kind == "delay"
            else 0.0,
            status=fields.number("status", lo=400, hi=599, default=500, integer=True)
            if kind == "fail"
            else 500,
            path_prefix=prefix,
            method=method.upper() if method else None,
            when=fields.text("when", default="before", choices=("before", "after")),
        )
        self.faults.append(fault)
        return _json({"ok": True, "pending_faults": len(self.faults)})

    async def sim_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self._refuse_streams_until = 0.0
        return _json({"ok": True})

    async def sim_rate_limit(self, request: web.Request) -> web.Response:
        fields = Fields(await _body(request), ("per_minute",))
        per_minute = fields.number(
            "per_minute", lo=0, hi=MAX_RATE_LIMIT, default=DEFAULT_RATE_LIMIT, integer=True
        )
        self.rate_limiter = RateLimiter(per_minute)
        return _json({"per_minute": per_minute})

    async def sim_reset(self, request: web.Request) -> web.Response:
        """A fresh market, whatever state the old one is in: a new engine (built first, so a bad
        body leaves everything as it was), no faults, no stream refusal, the server's starting
        rate limit, every trade stream dropped."""
        fields = Fields(await _body(request), ("seed", "start", "cash", "speed", "universe_size"))
        start = _moment(fields.text("start", max_chars=64), "start") if fields.has("start") else None
        seed = fields.number("seed", lo=0, hi=MAX_SEED, default=self.engine.seed, integer=True)
        cash = fields.amount("cash", lo=Decimal(0), hi=MAX_CASH, default=Decimal("200000"))
        speed = fields.number("speed", lo=0, hi=MAX_SPEED, default=0.0)
        size = (
            fields.number("universe_size", lo=1, hi=MAX_UNIVERSE_SIZE, integer=True)
            if fields.has("universe_size")
            else None
        )
        engine = MarketEngine.create(seed=seed, start=start, cash=cash, speed=speed, universe_size=size)
        if engine.now() > self.clock_limit(engine):
            raise InputError(
                f"start must not be after {wire.ts(self.clock_limit(engine))} (the simulated calendar ends then)"
            )
        self.replace_engine(engine)
        self.faults.clear()
        self.rate_limiter = RateLimiter(self.initial_rate_limit)
        await self.drop_streams(0)
        self._refuse_streams_until = 0.0
        return _json({"now": engine.now()})
