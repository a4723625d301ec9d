"""The simulated market's server: Alpaca's REST API, the trade_updates WebSocket and `/sim` controls.

Reads: HTTP requests from alpaca-py (TradingClient, StockHistoricalDataClient, TradingStream with
`url_override`) and from tests/demos on `/sim/...`. Decides: nothing itself; every request is one
`MarketEngine` call. Writes: Alpaca-shaped JSON answers and trade updates to the one listening
WebSocket. Control endpoints are unauthenticated: the server listens on loopback by default.

Faithful details: key/secret headers checked on every `/v2` and `/v1` (corporate actions) call
(401 missing, 403 wrong); 200 requests a minute per key and API (trading, market data) answered
with 429 and X-RateLimit-* headers; one trade_updates connection per key (a second is refused, see
docs/simulator.md); binary WebSocket frames holding one JSON object each, like the paper endpoint.

Hostile input never gets a 5xx (docs/simulator.md, "Validation"): a body that cannot be read (not
JSON, not an object) is 400; a field that is unknown, missing, of the wrong type, not finite or out
of range is 422 with a one-line `message`; `/sim` controls are never delayed or failed by a fault,
and `/sim/reset` always brings back a fresh market, whatever state the old one was left in.

The server is one class, `SimServer`, put together from its routes: `trading` (/v2 account,
positions, orders, assets, clock, calendar), `data` (/v2/stocks market data, /v1 corporate actions),
`stream` (the trade_updates WebSocket) and `controls` (/sim); `common` holds what they share and
`wire` the engine-to-JSON conversions. This module adds the middleware (faults, keys, rate limit,
errors) and running it (`ServerThread`, `serve_forever`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from shared import logs
from shared.errors import BrokerError, FactoryLineError, InputError
from shared.market.calendar import NEW_YORK
from sim.engine import MarketEngine
from sim.engine.orders import TradeEvent
from sim.server import wire
from sim.server.common import (
    CLOCK_END_MARGIN,
    DEFAULT_API_KEY,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SECRET_KEY,
    TICK_SECONDS,
    UnreadableBody,
    _dumps,
    _error,
    _json,
    _one_line,
)
from sim.server.controls import ControlRoutes, Fault, RateLimiter
from sim.server.data import DataRoutes
from sim.server.stream import StreamRoutes, StreamSession
from sim.server.trading import TradingRoutes

log = logging.getLogger(__name__)


class SimServer(TradingRoutes, DataRoutes, StreamRoutes, ControlRoutes):
    """The aiohttp application around one engine (replaceable by POST /sim/reset)."""

    def __init__(
        self,
        engine: MarketEngine,
        *,
        api_key: str = DEFAULT_API_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        rate_limit: int = DEFAULT_RATE_LIMIT,
        tick_seconds: float = TICK_SECONDS,
    ):
        if not api_key or not secret_key:
            raise InputError("the simulator's API key and secret key cannot be empty")
        self.api_key = api_key
        self.secret_key = secret_key
        self.initial_rate_limit = rate_limit
        self.rate_limiter = RateLimiter(rate_limit)
        self.tick_seconds = tick_seconds
        self.faults: list[Fault] = []
        self.sessions: set[StreamSession] = set()
        self._refuse_streams_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task | None = None
        self._trade_ids = 0
        self.engine = engine
        self._unsubscribe: Callable[[], None] = engine.subscribe(self._on_event)
        logs.register_secret(secret_key)

    # -- engine events -------------------------------------------------------------------------
    def _on_event(self, event: TradeEvent) -> None:
        # tuple() copies the set in one step: the engine may call this from another thread.
        listeners = [s for s in tuple(self.sessions) if s.listening]
        if not listeners:
            return
        frame = _dumps(wire.trade_update_json(event)).encode()
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for session in listeners:
            if running is loop:
                session.queue.put_nowait(frame)
            else:
                loop.call_soon_threadsafe(session.queue.put_nowait, frame)

    def replace_engine(self, engine: MarketEngine) -> None:
        self._unsubscribe()
        self.engine = engine
        self._unsubscribe = engine.subscribe(self._on_event)

    # -- app ---------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * 1024 * 1024)
        r = app.router
        r.add_get("/v2/account", self.get_account)
        r.add_get("/v2/account/configurations", self.get_account_configurations)
        r.add_patch("/v2/account/configurations", self.get_account_configurations)
        r.add_get("/v2/positions", self.get_positions)
        r.add_delete("/v2/positions", self.close_all_positions)
        r.add_get("/v2/positions/{symbol}", self.get_position)
        r.add_delete("/v2/positions/{symbol}", self.close_position)
        r.add_post("/v2/orders", self.submit_order)
        r.add_get("/v2/orders", self.list_orders)
        r.add_delete("/v2/orders", self.cancel_all_orders)
        r.add_get("/v2/orders:by_client_order_id", self.get_order_by_client_id)
        r.add_get("/v2/orders/{order_id}", self.get_order)
        r.add_delete("/v2/orders/{order_id}", self.cancel_order)
        r.add_patch("/v2/orders/{order_id}", self.replace_order)
        r.add_get("/v2/assets", self.list_assets)
        r.add_get("/v2/assets/{symbol}", self.get_asset)
        r.add_get("/v2/clock", self.get_clock)
        r.add_get("/v2/calendar", self.get_calendar)
        r.add_get("/v2/stocks/quotes/latest", self.latest_quotes)
        r.add_get("/v2/stocks/trades/latest", self.latest_trades)
        r.add_get("/v2/stocks/bars/latest", self.latest_bars)
        r.add_get("/v2/stocks/snapshots", self.snapshots)
        r.add_get("/v2/stocks/bars", self.bars)
        r.add_get("/v1/corporate-actions", self.corporate_actions)
        r.add_get("/stream", self.stream)
        r.add_get("/sim/health", self.sim_health)
        r.add_get("/sim/state", self.sim_state)
        r.add_get("/sim/events", self.sim_events)
        r.add_post("/sim/clock/advance", self.sim_advance)
        r.add_post("/sim/clock/speed", self.sim_speed)
        r.add_post("/sim/price", self.sim_price)
        r.add_post("/sim/quote", self.sim_quote)
        r.add_post("/sim/asset", self.sim_asset)
        r.add_post("/sim/fill", self.sim_fill)
        r.add_post("/sim/order_status", self.sim_order_status)
        r.add_post("/sim/partial_fill", self.sim_partial_fill)
        r.add_post("/sim/split", self.sim_split)
        r.add_post("/sim/faults/drop_stream", self.sim_drop_stream)
        r.add_post("/sim/faults/delay", self.sim_fault)
        r.add_post("/sim/faults/fail", self.sim_fault)
        r.add_post("/sim/faults/clear", self.sim_clear_faults)
        r.add_post("/sim/rate_limit", self.sim_rate_limit)
        r.add_post("/sim/reset", self.sim_reset)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._ticker = asyncio.create_task(self._tick())

    async def _on_shutdown(self, app: web.Application) -> None:
        self._ticker.cancel()
        for session in list(self.sessions):
            await session.ws.close(code=1001, message=b"server shutdown")

    async def _tick(self) -> None:
        """With a running clock, fills and expiries happen (and stream out) without requests. A
        clock running toward the calendar's end is frozen `CLOCK_END_MARGIN` before it."""
        while True:
            await asyncio.sleep(self.tick_seconds)
            engine = self.engine
            if engine.clock.speed > 0:
                try:
                    if engine.now() >= self.clock_limit():
                        engine.set_speed(0)
                        logs.event(
                            log,
                            "sim_clock_frozen",
                            level=logging.WARNING,
                            now=engine.now().isoformat(),
                            reason="the simulated calendar ends soon after",
                        )
                except Exception:  # noqa: BLE001 - the ticker must survive anything
                    log.exception("sim clock tick failed")

    def clock_limit(self, engine: MarketEngine | None = None) -> datetime:
        """The latest virtual time the clock may reach (the calendar's last session less a margin)."""
        return (engine or self.engine).sessions[-1].open - CLOCK_END_MARGIN

    # -- middleware: faults, auth, rate limit, errors -------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        # The controls are never delayed or failed: /sim/faults/clear and /sim/reset always answer.
        control = request.path.startswith("/sim/")
        fault = None if control else next((f for f in self.faults if f.matches(request)), None)
        if fault is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            if fault.when == "before":
                if fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                else:
                    return _error(fault.status, fault.status * 100000, "simulated fault")
        response = await self._handle(request, handler)
        if fault is not None and fault.when == "after":
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            else:
                return _error(fault.status, fault.status * 100000, "simulated fault")
        return response

    async def _handle(self, request: web.Request, handler) -> web.StreamResponse:
        headers: dict[str, str] = {}
        if request.path.startswith(("/v2/", "/v1/")):
            key = request.headers.get("APCA-API-KEY-ID")
            secret = request.headers.get("APCA-API-SECRET-KEY")
            if not key or not secret:
                return _error(401, None, "unauthorized.")
            if key != self.api_key or secret != self.secret_key:
                return _error(403, None, "forbidden.")
            # /v1 is the data API's corporate-actions feed: it counts against market data.
            api = "data" if request.path.startswith(("/v2/stocks/", "/v1/")) else "trading"
            allowed, headers = self.rate_limiter.check(key, api)
            if not allowed:
                response = _error(429, 42910000, "rate limit exceeded")
                response.headers.update(headers)
                return response
        alpaca = request.path.startswith(("/v2/", "/v1/"))
        try:
            response = await handler(request)
        except BrokerError as exc:
            body = wire.error_json(exc)
            body["message"] = _one_line(body.get("message"))
            response = _json(body, exc.status or 500)
        except UnreadableBody as exc:
            # Alpaca's code for a body it cannot parse; the controls answer a bare message.
            response = _error(400, 40010000 if alpaca else None, str(exc))
        except (InputError, ValueError) as exc:
            response = _error(422, 40010001 if alpaca else None, str(exc))
        except FactoryLineError as exc:
            response = _error(422, 40010001 if alpaca else None, str(exc))
        except ArithmeticError as exc:
            # A number beyond what Decimal arithmetic holds got past validation: still the input's fault.
            log.warning(
                "sim request with a number out of range: %s %s (%r)", request.method, request.path, exc
            )
            response = _error(422, 40010001 if alpaca else None, "a number in the request is out of range")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # Unknown paths and methods answer JSON, like Alpaca's API.
            response = _error(exc.status, exc.status * 100000, exc.reason.lower())
        except Exception:  # noqa: BLE001 - a bug answers 500 like a real server, and is logged
            log.exception("sim request failed: %s %s", request.method, request.path)
            response = _error(500, 50010000, "internal server error")
        if headers and not response.prepared:
            response.headers.update(headers)
        if not response.prepared:
            # The server's own time, as every HTTP server states it (RFC 9110 s. 6.6.1): here the
            # virtual time, which the manager's tick reads instead of asking GET /v2/clock.
            try:
                response.headers["Date"] = format_datetime(self.engine.now().astimezone(UTC), usegmt=True)
            except Exception:  # noqa: BLE001 - an answer without the header beats no answer
                log.exception("sim: cannot read the virtual time for the Date header")
        return response


# -- running ------------------------------------------------------------------------------------


async def start_site(server: SimServer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the bound port (useful with port 0)."""
    runner = web.AppRunner(server.build_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound


class ServerThread:
    """A SimServer on its own event loop in a daemon thread (tests, benchmarks, demos)."""

    def __init__(self, server: SimServer, host: str = "127.0.0.1", port: int = 0):
        self.server = server
        self.host = host
        self.port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sim-server", daemon=True)

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the simulated market did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the simulated market failed to start: {self._error}") from self._error
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner, self.port = loop.run_until_complete(start_site(self.server, self.host, self.port))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def call(self, coroutine_factory: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. `lambda: server.drop_streams()`)."""
        return asyncio.run_coroutine_threadsafe(coroutine_factory(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def serve_forever(server: SimServer, host: str, port: int) -> None:
    runner, bound = await start_site(server, host, port)
    logs.event(log, "sim_listening", host=host, port=bound, now=server.engine.now().isoformat())
    print(
        f"simulated market listening on http://{host}:{bound} (virtual time {server.engine.now().astimezone(NEW_YORK).isoformat()})",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
