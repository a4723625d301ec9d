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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from aiohttp import WSMsgType, web

from services.sim import wire
from shared import logs
from shared.errors import BrokerError, FactoryLineError, InputError, NotFound, OrderRejected
from shared.market.calendar import NEW_YORK
from shared.models import Side
from shared.money import to_decimal
from shared.sim.engine import MAX_MARKET_PRICE, MIN_PRICE, SPLIT_ORDER_MODES, MarketEngine
from shared.sim.orders import QTY_QUANTUM, TradeEvent
from shared.sim.rules import MAX_QTY, reject

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "sim-key"
DEFAULT_SECRET_KEY = "sim-secret"
DEFAULT_RATE_LIMIT = 200
RATE_WINDOW_SECONDS = 60.0
STREAM_AUTH_TIMEOUT_SECONDS = 10.0
TICK_SECONDS = 0.2
MAX_BARS_PAGE = 10_000
DEFAULT_BARS_PAGE = 1_000
MAX_CORPORATE_ACTIONS_PAGE = 1_000
DEFAULT_CORPORATE_ACTIONS_PAGE = 100

# Bounds of the /sim controls (docs/simulator.md, "Validation"). Beyond them the engine's Decimal
# arithmetic, its calendar or the server itself would fail, so they are refused (422) instead.
#: Fastest clock: a trading day in under a second of wall time.
MAX_SPEED = 100_000.0
#: The running clock stops this long before the calendar's last session (the tick freezes it), and
#: `advance` may not go beyond that point either: past the calendar's end the market has no session.
CLOCK_END_MARGIN = timedelta(days=30)
#: Longest single advance (the calendar's whole span is shorter).
MAX_ADVANCE_SECONDS = 20 * 365 * 86_400.0
MAX_FAULT_SECONDS = 3_600.0
MAX_FAULT_COUNT = 1_000_000
MAX_REFUSE_SECONDS = 3_600.0
MAX_RATE_LIMIT = 1_000_000
MAX_CASH = Decimal(10) ** 12
MAX_SEED = 2**63 - 1
MAX_UNIVERSE_SIZE = 25 + 26**3
MAX_PATH_PREFIX = 200
MAX_ID_CHARS = 128
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
#: Longest `message` of an error answer (one line).
MAX_MESSAGE_CHARS = 300


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return wire.num(value)
    if isinstance(value, datetime):
        return wire.ts(value)
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _dumps(value: object) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json(data: object, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=_dumps(data), status=status, content_type="application/json", headers=headers)


def _one_line(message: object) -> str:
    text = " ".join(str(message).split()) or "invalid request"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _error(status: int, code: int | None, message: str, **fields: object) -> web.Response:
    message = _one_line(message)
    body: dict[str, Any] = {"code": code, "message": message} if code is not None else {"message": message}
    body.update(fields)
    return _json(body, status)


def _bad_request(message: str) -> OrderRejected:
    return reject(OrderRejected, 422, 40010001, message)


class UnreadableBody(FactoryLineError):
    """The request body is not a JSON object at all: 400 (a field with a bad value is 422)."""


# -- query parsing ---------------------------------------------------------------------------


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("true", "1", "yes")


def _moment(text: str, name: str) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise _bad_request(f"invalid {name}: {text!r}") from None
    # alpaca-py sends naive datetimes as UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _optional_moment(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    return _moment(value, name) if value else None


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    value = request.query.get(name)
    if not value:
        return default
    try:
        number = int(float(value))
    except (ValueError, OverflowError):  # "abc", "nan"; "inf", "1e999"
        raise _bad_request(f"invalid {name}: {wire.echo(value)}") from None
    if not lo <= number <= hi:
        raise _bad_request(f"{name} must be between {lo} and {hi}")
    return number


def _list(request: web.Request, name: str) -> list[str]:
    """A comma-separated query parameter, each item once (empty when absent)."""
    raw = request.query.get(name, "")
    return list(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))


def _day(request: web.Request, name: str, default: date) -> date:
    value = request.query.get(name)
    if not value:
        return default
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise reject(OrderRejected, 400, 40010001, f"invalid {name}: {value!r} (YYYY-MM-DD)") from None


def _symbols(request: web.Request) -> list[str]:
    raw = request.query.get("symbols", "")
    symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
    if not symbols:
        raise reject(OrderRejected, 400, 40010001, "missing symbols")
    return list(dict.fromkeys(symbols))


async def _body(request: web.Request) -> dict:
    """The JSON object of the request body ({} when there is none); UnreadableBody (400) otherwise."""
    try:
        body = await request.json() if request.can_read_body else {}
    except (ValueError, UnicodeDecodeError):  # not JSON, not UTF-8, an integer of 5,000 digits
        raise UnreadableBody("request body is not valid JSON") from None
    except RecursionError:
        raise UnreadableBody("request body is not valid JSON (nested too deeply)") from None
    if not isinstance(body, dict):
        raise UnreadableBody(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


class Fields:
    """A `/sim` control's JSON body, read field by field. Every reader raises `InputError` (422,
    one line naming the field and echoing a short form of what came) for a value of the wrong type,
    not finite or out of range; a field the endpoint does not know is refused too, so a typo never
    passes silently. Numbers may come as JSON numbers or numeric strings; booleans only as booleans."""

    def __init__(self, body: dict, known: Iterable[str]):
        known = tuple(known)
        unknown = [key for key in body if key not in known]
        if unknown:
            names = ", ".join(known) if known else "none"
            raise InputError(f"unknown field {wire.echo(unknown[0])} (known: {names})")
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def number(
        self, name: str, *, lo: float, hi: float, default: float | None = None, integer: bool = False
    ) -> Any:
        value = self.body.get(name)
        if value is None:
            if default is None:
                raise InputError(f"{name} is required")
            return default
        kind = "a whole number" if integer else "a number"
        wanted = f"{name} must be {kind} from {_plain(lo)} to {_plain(hi)}, got {wire.echo(value)}"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(wanted)
        if isinstance(value, int):
            number: float | int = value
        else:
            try:
                number = float(value)
            except ValueError:
                raise InputError(wanted) from None
            if not math.isfinite(number):
                raise InputError(wanted)
        if not lo <= number <= hi:
            raise InputError(wanted)
        if integer:
            if number != int(number):
                raise InputError(wanted)
            return int(number)
        return float(number)

    def amount(self, name: str, *, lo: Decimal, hi: Decimal, default: Decimal | None = None) -> Decimal:
        """A Decimal (money, a quantity, a fraction) with lo <= value <= hi."""
        value = self.body.get(name)
        if value is None:
            if default is None:
                raise InputError(f"{name} is required")
            return default
        wanted = f"{name} must be a number from {wire.num(lo)} to {wire.num(hi)}, got {wire.echo(value)}"
        try:
            amount = to_decimal(value)
        except ValueError:
            raise InputError(wanted) from None
        if not lo <= amount <= hi:
            raise InputError(wanted)
        return amount

    def boolean(self, name: str, default: bool | None = None) -> bool | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InputError(f"{name} must be true or false, got {wire.echo(value)}")
        return value

    def text(
        self,
        name: str,
        *,
        default: str | None = None,
        choices: Iterable[str] | None = None,
        max_chars: int = MAX_ID_CHARS,
        required: bool = False,
    ) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise InputError(f"{name} is required")
            return default
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > max_chars
            or not value.isprintable()
        ):
            raise InputError(
                f"{name} must be a string of 1 to {max_chars} printable characters, got {wire.echo(value)}"
            )
        if choices is not None:
            choices = tuple(choices)
            if value not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got {wire.echo(value)}")
        return value

    def symbol(self) -> str:
        return self.text("symbol", required=True, max_chars=wire.MAX_SYMBOL_CHARS)  # type: ignore[return-value]


# -- faults and rate limits --------------------------------------------------------------------


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


# -- trade_updates stream ------------------------------------------------------------------


@dataclass(eq=False)
class StreamSession:
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    key: str | None = None
    listening: bool = False


class SimServer:
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

    # -- market data -----------------------------------------------------------------------------
    async def latest_quotes(self, request: web.Request) -> web.Response:
        quotes = {}
        for symbol in _symbols(request):
            quote = self.engine.latest_quote(symbol)
            if quote is not None:
                quotes[symbol] = wire.quote_json(quote)
        return _json({"quotes": quotes})

    def _trade(self, symbol: str) -> dict | None:
        last = self.engine.latest_trade(symbol)
        if last is None:
            return None
        self._trade_ids += 1
        return wire.trade_json(last[0], last[1], self._trade_ids)

    async def latest_trades(self, request: web.Request) -> web.Response:
        trades = {}
        for symbol in _symbols(request):
            trade = self._trade(symbol)
            if trade is not None:
                trades[symbol] = trade
        return _json({"trades": trades})

    async def latest_bars(self, request: web.Request) -> web.Response:
        bars = {}
        for symbol in _symbols(request):
            bar = self.engine.latest_minute_bar(symbol)
            if bar is not None:
                bars[symbol] = wire.bar_json(bar)
        return _json({"bars": bars})

    async def snapshots(self, request: web.Request) -> web.Response:
        result = {}
        for symbol in _symbols(request):
            quote = self.engine.latest_quote(symbol)
            if quote is None:
                continue
            minute = self.engine.latest_minute_bar(symbol)
            daily, previous = self.engine.daily_bars_now(symbol)
            result[symbol] = {
                "latestTrade": self._trade(symbol),
                "latestQuote": wire.quote_json(quote),
                "minuteBar": wire.bar_json(minute) if minute else None,
                "dailyBar": wire.bar_json(daily) if daily else None,
                "prevDailyBar": wire.bar_json(previous) if previous else None,
            }
        return _json(result)

    async def bars(self, request: web.Request) -> web.Response:
        symbols = sorted(_symbols(request))
        timeframe = request.query.get("timeframe")
        if not timeframe:
            raise _bad_request("timeframe is required")
        now = self.engine.now()
        start = _optional_moment(request, "start")
        if start is None:
            local = now.astimezone(NEW_YORK)
            start = datetime(local.year, local.month, local.day, tzinfo=NEW_YORK)
        end = _optional_moment(request, "end") or now
        limit = _int(request, "limit", DEFAULT_BARS_PAGE, 1, MAX_BARS_PAGE)
        descending = request.query.get("sort", "asc").lower() == "desc"
        resume_symbol, resume_index = _decode_page_token(request.query.get("page_token"))
        page: dict[str, list[dict]] = {}
        taken = 0
        next_token = None
        for symbol in symbols:
            if resume_symbol is not None and symbol < resume_symbol:
                continue
            try:
                series = self.engine.bars(symbol, timeframe, start, end)
            except ValueError as exc:
                raise _bad_request(str(exc)) from None
            if descending:
                series.reverse()
            skip = resume_index if symbol == resume_symbol else 0
            chunk = series[skip : skip + (limit - taken)]
            if chunk:
                page[symbol] = [wire.bar_json(b) for b in chunk]
                taken += len(chunk)
            if skip + len(chunk) < len(series):
                next_token = _encode_page_token(symbol, skip + len(chunk))
                break
            if taken >= limit:
                following = [s for s in symbols if s > symbol]
                if following:
                    next_token = _encode_page_token(following[0], 0)
                break
        return _json({"bars": page, "next_page_token": next_token})

    async def corporate_actions(self, request: web.Request) -> web.Response:
        """GET /v1/corporate-actions: the announced splits, filtered by `symbols`, `cusips`,
        `types` and ex_date in [start, end] (default: today, New York), or by `ids` alone; paged
        by `limit` and `page_token` like Alpaca's data API."""
        types = [t.lower() for t in _list(request, "types")]
        unknown = [t for t in types if t not in wire.CORPORATE_ACTION_TYPES]
        if unknown:
            raise reject(OrderRejected, 400, 40010001, f"invalid types: {','.join(unknown)}")
        limit = _int(request, "limit", DEFAULT_CORPORATE_ACTIONS_PAGE, 1, MAX_CORPORATE_ACTIONS_PAGE)
        sort = request.query.get("sort", "asc").lower()
        if sort not in ("asc", "desc"):
            raise _bad_request(f"invalid sort: {sort!r}")
        actions = self._corporate_actions_matching(request, types)
        if sort == "desc":
            actions.reverse()
        offset = _decode_offset_token(request.query.get("page_token"))
        page = actions[offset : offset + limit]
        more = offset + limit < len(actions)
        return _json(
            {
                "corporate_actions": wire.corporate_actions_json(page),
                "next_page_token": _encode_page_token("corporate-actions", offset + limit) if more else None,
            }
        )

    def _corporate_actions_matching(self, request: web.Request, types: list[str]) -> list:
        ids = set(_list(request, "ids"))
        if ids:  # Alpaca: ids exclude every other filter
            return [a for a in self.engine.splits() if a.id in ids]
        today = self.engine.now().astimezone(NEW_YORK).date()
        start, end = _day(request, "start", today), _day(request, "end", today)
        if end < start:
            raise reject(OrderRejected, 400, 40010001, "end must not be before start")
        symbols = [s.upper() for s in _list(request, "symbols")]
        cusips = {c.upper() for c in _list(request, "cusips")}
        return [
            a
            for a in self.engine.splits(symbols or None, start, end)
            if (not types or a.type in types) and (not cusips or {a.old_cusip, a.new_cusip} & cusips)
        ]

    # -- trade_updates stream ------------------------------------------------------------------------
    def _stream_busy(self, key: str | None = None) -> bool:
        return any(
            s.key is not None and (key is None or s.key == key) and not s.ws.closed for s in self.sessions
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_streams_until:
            return _error(503, None, "trade stream unavailable (simulated outage)")
        if self._stream_busy():
            # Alpaca allows one trade_updates connection per account; a second gets 429 on upgrade.
            return _error(429, 42910000, "connection limit exceeded")
        ws = web.WebSocketResponse(heartbeat=None, autoping=True)
        await ws.prepare(request)
        session = StreamSession(ws)
        sender: asyncio.Task | None = None
        try:
            authorized = await self._authenticate(session)
            if not authorized:
                return ws
            self.sessions.add(session)
            sender = asyncio.create_task(self._send_updates(session))
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                request_body = _parse_ws_json(message.data)
                if request_body.get("action") == "listen":
                    streams = (request_body.get("data") or {}).get("streams") or []
                    session.listening = "trade_updates" in streams
                    await ws.send_bytes(
                        _dumps(
                            {
                                "stream": "listening",
                                "data": {"streams": ["trade_updates"] if session.listening else []},
                            }
                        ).encode()
                    )
                elif request_body.get("action") == "authenticate":
                    await ws.send_bytes(
                        _dumps(
                            {
                                "stream": "authorization",
                                "data": {
                                    "action": "authenticate",
                                    "status": "unauthorized",
                                    "message": "already authenticated",
                                },
                            }
                        ).encode()
                    )
                else:
                    await ws.send_bytes(
                        _dumps({"stream": "listening", "data": {"error": "invalid action"}}).encode()
                    )
        finally:
            self.sessions.discard(session)
            session.listening = False
            if sender is not None:
                sender.cancel()
        return ws

    async def _authenticate(self, session: StreamSession) -> bool:
        ws = session.ws
        try:
            message = await ws.receive(timeout=STREAM_AUTH_TIMEOUT_SECONDS)
        except TimeoutError:
            await ws.close(code=1008, message=b"auth timeout")
            return False
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        body = _parse_ws_json(message.data)
        data = body.get("data") or {}
        key, secret = data.get("key_id"), data.get("secret_key")
        ok = body.get("action") == "authenticate" and key == self.api_key and secret == self.secret_key
        reason = None if ok else "invalid credentials"
        if ok and self._stream_busy(key):
            ok, reason = False, "connection limit exceeded"
        reply: dict[str, Any] = {"action": "authenticate", "status": "authorized" if ok else "unauthorized"}
        if reason:
            reply["message"] = reason
        await ws.send_bytes(_dumps({"stream": "authorization", "data": reply}).encode())
        if not ok:
            await ws.close(code=1008, message=reason.encode())
            return False
        session.key = key
        return True

    async def _send_updates(self, session: StreamSession) -> None:
        while True:
            frame = await session.queue.get()
            if session.ws.closed:
                return
            try:
                await session.ws.send_bytes(frame)
            except ConnectionError:
                return

    async def drop_streams(self, refuse_seconds: float = 0.0) -> int:
        self._refuse_streams_until = time.monotonic() + refuse_seconds
        dropped = 0
        for session in list(self.sessions):
            self.sessions.discard(session)
            session.listening = False
            await session.ws.close(code=1011, message=b"simulated stream drop")
            dropped += 1
        return dropped

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


def _parse_ws_json(data: str | bytes) -> dict:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _encode_page_token(symbol: str, index: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{index}".encode()).decode()


def _decode_offset_token(token: str | None) -> int:
    """The position a page token (from `_encode_page_token`) resumes at."""
    _, offset = _decode_page_token(token)
    if offset < 0:
        raise _bad_request("invalid page_token")
    return offset


def _decode_page_token(token: str | None) -> tuple[str | None, int]:
    if not token:
        return None, 0
    try:
        symbol, index = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return symbol, int(index)
    except (ValueError, binascii.Error):
        raise _bad_request("invalid page_token") from None


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
