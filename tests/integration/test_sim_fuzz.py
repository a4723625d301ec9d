"""Hostile input to the simulated market: random JSON to every `/sim` control endpoint and to
`POST /v2/orders` never gets a 5xx, every refusal is a 4xx with a one-line JSON `message`, and
afterwards the market still works: `/sim/health` answers, `/sim/reset` recovers it, an order fills.

Each body mixes the endpoint's own fields, now and then a stranger, and values that are either
plausible for the field (so requests get past the first check and reach the engine: real symbols,
prices near and far from the market, quantities up to billions, dates inside and outside the
calendar) or anything JSON can carry: nulls, booleans, huge and negative numbers, NaN and
infinities (Python's json writes them as bare `NaN` / `Infinity` tokens, which the server's parser
accepts), numeric-looking strings, nested lists and objects. Example counts are bounded so the file
runs in well under a minute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simhelpers import API_KEY, SECRET_KEY, SimHandle, start_sim

AUTH = {"APCA-API-KEY-ID": API_KEY, "APCA-API-SECRET-KEY": SECRET_KEY}
SYMBOLS = ["AAPL", "MSFT", "KO", "F", "SENS", "TELL", "FUBO", "aapl", " ko ", "NOSUCH"]

# -- hostile values ------------------------------------------------------------------------------

NUMBER_WORDS = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e999", "1e30", "1E+400",
     "0", "-0", "-1", "0.0000000001", "1e-30", "3600", "2", "0.5", "150.00", "150.123", " 7 ",
     "", " ", "abc", "0x10", "1_000", "١٢٣", "9" * 60]
)  # fmt: skip
WORDS = st.sampled_from(
    ["AAPL", "NOSUCH", "", " ", "A" * 300, "AAPL\nMSFT", "\x00", "day", "gtc", "buy", "sell", "market",
     "limit", "stop", "oco", "simple", "mleg", "before", "after", "adjust", "cancel", "keep", "POST",
     "get", "/v2/", "/", "/sim/", "2024-03-04T10:30:00-05:00", "2024-03-05", "2030-01-01", "2014-01-01",
     "1999-12-31T00:00:00Z", "2024-13-45", "true", "false", "null", "-1"]
)  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.sampled_from([10**18, 2**63, -(2**63), 10**100, 10**4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0]),
    NUMBER_WORDS,
    WORDS,
    st.text(max_size=12),
)
HOSTILE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)

# -- plausible values, per field -----------------------------------------------------------------


def decimals(lo: str, hi: str, places: int = 4) -> st.SearchStrategy:
    """A Decimal in [lo, hi] sent as a string or a float, like a client would."""
    value = st.decimals(min_value=Decimal(lo), max_value=Decimal(hi), places=places, allow_nan=False)
    return st.one_of(value.map(str), value.map(float))


def moments() -> st.SearchStrategy:
    days = st.dates(min_value=__import__("datetime").date(2014, 6, 1), max_value=__import__("datetime").date(2031, 1, 1))
    return st.builds(lambda d, h: f"{d.isoformat()}T{h:02d}:30:00-05:00", days, st.integers(0, 23))


PLAUSIBLE: dict[str, st.SearchStrategy] = {
    "symbol": st.sampled_from(SYMBOLS),
    "seconds": st.one_of(st.floats(0, 4e5), st.integers(0, 2 * 10**8)),
    "to": moments(),
    "speed": st.floats(0, 2e5),
    "price": st.one_of(decimals("0.5", "900", places=2), decimals("0", "2000000")),
    "ask_missing": st.booleans(),
    "fractionable": st.booleans(),
    "listed_fractionable": st.booleans(),
    "tradable": st.booleans(),
    "order_id": st.sampled_from(["11111111-2222-3333-4444-555555555555", "rest-1"]),
    "client_order_id": st.sampled_from(["rest-1", "rest-2", "rest-3", "fz-1", "fz-2"]),
    "qty": st.one_of(st.integers(1, 60).map(str), decimals("0.001", "20", places=3), decimals("-1", "2000000000")),
    "fraction": st.one_of(decimals("0.01", "0.99", places=2), decimals("-0.5", "1.5")),
    "new_rate": st.one_of(st.integers(0, 20000), decimals("0", "20")),
    "old_rate": st.one_of(st.integers(0, 20000), decimals("0", "20")),
    "orders": st.sampled_from(["adjust", "cancel", "keep", "replace"]),
    "announce": st.booleans(),
    "refuse_seconds": st.floats(0, 5000),
    "count": st.integers(-1, 20000),
    "status": st.integers(300, 700),
    "path_prefix": st.sampled_from(["/v2/", "/v2/orders", "/v1/", "/", "/sim/", "v2", "/stream"]),
    "method": st.sampled_from(["GET", "post", "PATCH", "TRACE", "", None]),
    "when": st.sampled_from(["before", "after", "later"]),
    "per_minute": st.integers(-5, 2_000_000),
    "seed": st.one_of(st.integers(-5, 2**64), st.just(7)),
    "start": moments(),
    "cash": decimals("-1", "2000000000000", places=2),
    "universe_size": st.integers(-1, 20000),
    # orders
    "notional": st.one_of(decimals("1", "5000", places=2), decimals("-1", "2000000000000", places=2)),
    "side": st.sampled_from(["buy", "buy", "sell", "sell", "SELL", "short"]),
    "type": st.sampled_from(["market", "market", "limit", "limit", "stop", "stop_limit", "trailing_stop", "iceberg"]),
    "order_type": st.sampled_from(["market", "limit"]),
    "time_in_force": st.sampled_from(["day", "day", "gtc", "gtc", "ioc", "opg", "cls", "fok", "week"]),
    "limit_price": st.one_of(decimals("0.5", "600", places=2), decimals("-1", "2000000000")),
    "stop_price": st.one_of(decimals("0.5", "600", places=2), decimals("-1", "2000000000")),
    "order_class": st.sampled_from(["simple", "simple", "oco", "oco", "bracket", "oto", "mleg", ""]),
    "extended_hours": st.booleans(),
    "trail_price": decimals("0", "100"),
    "trail_percent": decimals("0", "100"),
}

#: Every control endpoint (POST) and the fields it knows.
CONTROLS: dict[str, tuple[str, ...]] = {
    "/sim/clock/advance": ("seconds", "to"),
    "/sim/clock/speed": ("speed",),
    "/sim/price": ("symbol", "price"),
    "/sim/quote": ("symbol", "ask_missing"),
    "/sim/asset": ("symbol", "fractionable", "listed_fractionable", "tradable"),
    "/sim/fill": ("order_id", "client_order_id", "qty", "price"),
    "/sim/partial_fill": ("symbol", "fraction"),
    "/sim/split": ("symbol", "new_rate", "old_rate", "orders", "announce"),
    "/sim/faults/drop_stream": ("refuse_seconds",),
    "/sim/faults/delay": ("count", "seconds", "path_prefix", "method", "when"),
    "/sim/faults/fail": ("count", "status", "path_prefix", "method", "when"),
    "/sim/faults/clear": (),
    "/sim/rate_limit": ("per_minute",),
    "/sim/reset": ("seed", "start", "cash", "speed", "universe_size"),
}
ORDER_FIELDS = (
    "symbol", "qty", "notional", "side", "type", "order_type", "time_in_force", "limit_price",
    "stop_price", "client_order_id", "order_class", "take_profit", "stop_loss", "extended_hours",
    "trail_price", "trail_percent",
)  # fmt: skip


def plausible(field: str) -> st.SearchStrategy:
    if field in ("take_profit", "stop_loss"):
        return st.fixed_dictionaries(
            {}, optional={"limit_price": PLAUSIBLE["limit_price"], "stop_price": PLAUSIBLE["stop_price"]}
        )
    return PLAUSIBLE[field]


#: Fields a body of the endpoint usually carries (others come or not at random).
USUAL = {
    "/sim/price": ("symbol", "price"),
    "/sim/quote": ("symbol",),
    "/sim/asset": ("symbol",),
    "/sim/fill": ("client_order_id",),
    "/sim/partial_fill": ("symbol", "fraction"),
    "/sim/split": ("symbol", "new_rate", "old_rate"),
    "/sim/clock/speed": ("speed",),
    "/sim/rate_limit": ("per_minute",),
    "/v2/orders": ("symbol", "qty", "side", "type", "time_in_force"),
}


@st.composite
def plausible_orders(draw) -> dict:
    """An order as a client would send it: the price fields its type needs, qty or notional."""
    kind = draw(st.sampled_from(["market", "market", "limit", "stop", "stop_limit", "oco"]))
    body = {
        "symbol": draw(PLAUSIBLE["symbol"]),
        "side": draw(st.sampled_from(["buy", "sell"])),
        "type": "limit" if kind == "oco" else kind,
        "time_in_force": draw(st.sampled_from(["day", "gtc"])),
    }
    amount = "notional" if draw(st.integers(0, 4)) == 0 else "qty"
    body[amount] = draw(PLAUSIBLE[amount])
    if kind == "oco":
        body.update(order_class="oco", side="sell", take_profit={"limit_price": draw(PLAUSIBLE["limit_price"])},
                    stop_loss={"stop_price": draw(PLAUSIBLE["stop_price"])})  # fmt: skip
    if kind in ("limit", "stop_limit"):
        body["limit_price"] = draw(PLAUSIBLE["limit_price"])
    if kind in ("stop", "stop_limit"):
        body["stop_price"] = draw(PLAUSIBLE["stop_price"])
    if draw(st.booleans()):
        body["client_order_id"] = draw(st.sampled_from(["fz-1", "fz-2", "fz-3"]) | st.text(min_size=1, max_size=20))
    return body


def bodies(path: str, fields: tuple[str, ...]) -> st.SearchStrategy:
    """A plausible body of the endpoint (its usual fields, some others), then up to two fields
    (its own, or strangers) given hostile values."""
    usual = USUAL.get(path, ())
    base = plausible_orders() if path == "/v2/orders" else st.fixed_dictionaries(
        {field: plausible(field) for field in usual},
        optional={field: plausible(field) for field in fields if field not in usual},
    )  # fmt: skip
    names = st.sampled_from(fields) | st.text(max_size=8) if fields else st.text(max_size=8)
    none: st.SearchStrategy = st.just([])
    mutations = st.one_of(none, none, st.lists(st.tuples(names, HOSTILE), min_size=1, max_size=2))
    dropped = st.one_of(none, none, none, st.lists(st.sampled_from(usual), max_size=1)) if usual else none

    def build(body: dict, changes: list, drop: list) -> dict:
        body = {key: value for key, value in body.items() if key not in drop}
        body.update(changes)
        return body

    return st.builds(build, base, mutations, dropped)


RAW_BODIES = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40),
    st.sampled_from(
        ["", "{", "}", "[]", "null", "42", '"text"', "NaN", "{'single': 1}", '{"a":}', "[" * 5000,
         '{"a": ' * 3000, "\x00\xff", '{"seconds": 1e999}', '{"speed": -Infinity}', "1" * 5000]
    ),  # fmt: skip
    HOSTILE.filter(lambda value: not isinstance(value, dict)).map(json.dumps),
)

# -- the market ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market() -> Iterator[SimHandle]:
    handle = start_sim()
    _rest_orders(handle)
    yield handle
    handle.stop()


def _rest_orders(market: SimHandle) -> None:
    """Orders for /sim/fill and the splits to work on: a position with two sells resting on it, a buy."""
    orders = [
        {"symbol": "KO", "qty": "20", "side": "buy", "type": "market", "time_in_force": "day"},
        {"symbol": "KO", "qty": "5", "side": "sell", "type": "limit", "limit_price": "999",
         "time_in_force": "gtc", "client_order_id": "rest-1"},
        {"symbol": "KO", "qty": "5", "side": "sell", "type": "stop", "stop_price": "1.00",
         "time_in_force": "gtc", "client_order_id": "rest-2"},
        {"symbol": "F", "qty": "3", "side": "buy", "type": "limit", "limit_price": "1.00",
         "time_in_force": "gtc", "client_order_id": "rest-3"},
    ]  # fmt: skip
    for order in orders:
        assert _post(market, "/v2/orders", json.dumps(order), AUTH).status_code == 200


FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _post(market: SimHandle, path: str, data: bytes | str, headers: dict | None = None) -> requests.Response:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")  # lone surrogates: bytes that are not UTF-8
    return requests.post(f"{market.base_url}{path}", data=data, headers=headers, timeout=30)


def assert_sane(response: requests.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), f"{what} -> {response.text[:300]}"
        message = body.get("message")
        assert isinstance(message, str) and message, f"{what} -> {response.text[:300]}"
        assert "\n" not in message and "\r" not in message, f"{what} -> {message!r}"
        assert len(message) <= 300, f"{what} -> a {len(message)}-character message"
        assert response.headers["Content-Type"].startswith("application/json")


def _is_json_object(raw: bytes | str) -> bool:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw.encode("utf-8").decode("utf-8")
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _settle(market: SimHandle) -> None:
    """Between examples: no fault left to delay the next request, the clock frozen, no rate limit."""
    for path, body in (("/sim/faults/clear", ""), ("/sim/clock/speed", '{"speed": 0}'),
                       ("/sim/rate_limit", '{"per_minute": 0}')):  # fmt: skip
        assert _post(market, path, body).status_code == 200


def _send(market: SimHandle, path: str, body: object) -> None:
    # Python's json writes NaN and Infinity as bare tokens and huge ints in full: the hostility wanted.
    headers = AUTH if path.startswith("/v2/") else None
    assert_sane(_post(market, path, json.dumps(body), headers), f"POST {path} {body!r}")


# -- the properties --------------------------------------------------------------------------------

ENDPOINTS = {**CONTROLS, "/v2/orders": ORDER_FIELDS}
#: For sequences: the delay and fail faults answer the /v2 reads with their own 5xx (or hold them up
#: to 300 s) by design; alone, above, they are fuzzed like every control.
SEQUENCE_ENDPOINTS = {path: fields for path, fields in ENDPOINTS.items() if path not in
                      ("/sim/faults/delay", "/sim/faults/fail")}  # fmt: skip


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_random_json_to_any_control_endpoint_is_never_a_server_error(market, data):
    path = data.draw(st.sampled_from(sorted(CONTROLS)), label="path")
    _send(market, path, data.draw(bodies(path, CONTROLS[path]), label="body"))
    _settle(market)


@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), raw=RAW_BODIES)
def test_bodies_that_are_not_json_objects_are_a_400(market, path, raw):
    response = _post(market, path, raw, AUTH)
    assert_sane(response, f"POST {path} {raw!r:.80}")
    # No body at all is an empty object (then a missing field is a 422); /sim/faults/clear reads none.
    if not _is_json_object(raw) and raw not in ("", b"") and path != "/sim/faults/clear":
        assert response.status_code == 400, f"POST {path} {raw!r:.80} -> {response.status_code}"
    _settle(market)


@settings(FUZZ, max_examples=300)
@given(body=bodies("/v2/orders", ORDER_FIELDS))
def test_random_order_requests_are_never_a_server_error(market, body):
    _send(market, "/v2/orders", body)


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_random_sequences_of_controls_and_orders_never_jam_the_market(market, data):
    steps = data.draw(st.lists(st.sampled_from(sorted(SEQUENCE_ENDPOINTS)), min_size=1, max_size=6), label="steps")
    for path in steps:
        _send(market, path, data.draw(bodies(path, SEQUENCE_ENDPOINTS[path]), label=path))
    for path in ("/v2/account", "/v2/positions", "/v2/orders?status=all&nested=true", "/v2/clock"):
        response = requests.get(f"{market.base_url}{path}", headers=AUTH, timeout=30)
        assert response.status_code in (200, 429), f"GET {path} -> {response.status_code}: {response.text[:300]}"
    assert requests.get(f"{market.base_url}/sim/state", timeout=30).status_code == 200
    _settle(market)


@settings(FUZZ, max_examples=30)
@given(since=st.one_of(NUMBER_WORDS, WORDS, st.integers().map(str)))
def test_random_event_cursors_are_never_a_server_error(market, since):
    response = requests.get(f"{market.base_url}/sim/events", params={"since": since}, timeout=30)
    assert_sane(response, f"GET /sim/events?since={since!r}")


#: Order and position endpoints that take their input in the query string, and its parameters.
QUERIES = {
    ("GET", "/v2/orders"): ("status", "limit", "after", "until", "direction", "nested", "symbols", "side"),
    ("GET", "/v2/orders:by_client_order_id"): ("client_order_id",),
    ("DELETE", "/v2/positions/KO"): ("qty", "percentage"),
    ("GET", "/v2/calendar"): ("start", "end"),
}
QUERY_VALUES = st.one_of(NUMBER_WORDS, WORDS, st.text(max_size=10), st.integers().map(str))


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_random_query_strings_on_order_endpoints_are_never_a_server_error(market, data):
    method, path = data.draw(st.sampled_from(sorted(QUERIES)), label="route")
    params = data.draw(st.dictionaries(st.sampled_from(QUERIES[(method, path)]), QUERY_VALUES, max_size=4))
    response = requests.request(method, f"{market.base_url}{path}", params=params, headers=AUTH, timeout=30)
    assert_sane(response, f"{method} {path} {params!r}")


def test_after_all_of_it_the_market_answers_resets_and_fills_an_order(market):
    # Runs last in this module (pytest keeps file order): whatever the fuzzing left behind.
    assert requests.get(f"{market.base_url}/sim/health", timeout=10).json()["ok"] is True
    assert requests.get(f"{market.base_url}/sim/state", timeout=30).status_code == 200
    market.control.reset(start="2024-03-04T10:00:00-05:00", cash="200000", speed=0)
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    client = market.trading_client()
    order = client.submit_order(
        MarketOrderRequest(symbol="AAPL", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.DAY)
    )
    filled = client.get_order_by_id(order.id)
    assert filled.status.value == "filled" and filled.filled_qty == "3"
    assert client.get_open_position("AAPL").qty == "3"
