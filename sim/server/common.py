"""What every part of the simulator's server shares: its defaults and the bounds of the /sim controls,
JSON answers and errors, and reading query strings and bodies."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from shared.errors import FactoryLineError, InputError, OrderRejected
from shared.market.calendar import NEW_YORK
from shared.money import to_decimal
from sim.engine.rules import reject
from sim.server import wire

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
    return _json_text(_dumps(data), status, headers)


def _json_text(text: str, status: int = 200, headers: dict | None = None) -> web.Response:
    """An answer whose JSON is already written."""
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


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
