"""Alpaca's error answers become the project's typed errors, and the adapter's network policy holds.

The table uses the real error bodies collected in ../shared/reference/alpaca.md section 5, wrapped in
alpaca-py `APIError`s built from real `requests.Response` objects (no network). The policy tests
run the real `AlpacaExecutor` against a tiny loopback HTTP server that plays a misbehaving Alpaca.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError
from simhelpers import start_sim

from shared.broker.alpaca import AlpacaExecutor, error_from_api_error
from shared.config import BrokerSettings
from shared.errors import (
    BrokerError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    FractionalRuleViolation,
    InputError,
    InsufficientBuyingPower,
    InsufficientQty,
    InvalidPrice,
    NotCancelable,
    NotFound,
    NotFractionable,
    OrderRejected,
    RateLimited,
    WashTrade,
)
from shared.models import BarRow, Timeframe

API_KEY = "PKTESTKEY0123456789"
SECRET_KEY = "SecretValue-abcdefghijklmnopqrstuvwxyz"


def api_error(status: int, body: str, url: str = "https://paper-api.alpaca.markets/v2/orders") -> APIError:
    """What alpaca-py raises for this HTTP answer (RESTClient._one_request does exactly this)."""
    response = requests.Response()
    response.status_code = status
    response.raw = io.BytesIO(body.encode())  # requests reads .content and .text from it
    response.url = url
    response.encoding = "utf-8"
    try:
        response.raise_for_status()
    except requests.HTTPError as http_error:
        return APIError(response.text, http_error)
    raise AssertionError(f"status {status} is not an error")


INSUFFICIENT_QTY = (
    '{"code":40310000,"message":"insufficient qty available for order (requested: 10, available: 0)",'
    '"available":"0","existing_qty":"10","held_for_orders":"10","symbol":"AAPL"}'
)

# (status, body, expected error class, text the message must carry)
ORDER_ERRORS = [
    (403, INSUFFICIENT_QTY, InsufficientQty, "insufficient qty available"),
    (403, '{"code":40310000,"message":"insufficient buying power"}', InsufficientBuyingPower, "buying power"),
    (
        403,
        '{"code":40310000,"message":"potential wash trade detected. use complex orders"}',
        WashTrade,
        "wash trade",
    ),
    (422, '{"code":40010001,"message":"client_order_id must be unique"}', DuplicateClientOrderId, "unique"),
    (
        422,
        '{"code":40010001,"message":"qty must be integer"}',
        FractionalRuleViolation,
        "qty must be integer",
    ),
    (
        422,
        '{"code":42210000,"message":"invalid limit_price 290.123. sub-penny increment does not fulfill '
        'minimum pricing criteria"}',
        InvalidPrice,
        "sub-penny",
    ),
    (
        422,
        '{"code":42210000,"message":"stop price must be less than base_price - 0.01"}',
        InvalidPrice,
        "base_price",
    ),
    (
        422,
        '{"code":42210000,"message":"fractional orders must be DAY orders"}',
        FractionalRuleViolation,
        "DAY",
    ),
    (
        422,
        '{"code":42210000,"message":"fractional orders must be simple orders"}',
        FractionalRuleViolation,
        "simple",
    ),
    (
        403,
        '{"code":40310000,"message":"requested asset is not fractionable"}',
        NotFractionable,
        "fractionable",
    ),
    (
        422,
        '{"code":42210000,"message":"requested asset is not fractionable"}',
        NotFractionable,
        "fractionable",
    ),
    (
        403,
        '{"code":40310000,"message":"fractional orders are not allowed to short"}',
        FractionalRuleViolation,
        "short",
    ),
    (422, '{"code":42210000,"message":"order is not cancelable"}', NotCancelable, "not cancelable"),
    (404, '{"code":40410000,"message":"order not found"}', NotFound, "order not found"),
    (404, '{"code":40410000,"message":"position does not exist"}', NotFound, "position does not exist"),
    (429, '{"code":42910000,"message":"rate limit exceeded"}', RateLimited, "rate limit"),
    (
        422,
        '{"code":42210000,"message":"bracket orders must be entry orders"}',
        OrderRejected,
        "bracket orders must be entry orders",
    ),
    (
        403,
        '{"code":40310100,"message":"trade denied due to pattern day trading protection"}',
        OrderRejected,
        "pattern day trading",
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    ORDER_ERRORS,
    ids=[f"{c[0]}-{c[2].__name__}" for c in ORDER_ERRORS],
)
def test_broker_error_answer_becomes_the_matching_typed_error(status, body, expected, text):
    error = error_from_api_error(api_error(status, body), action="submit AAPL")

    assert type(error) is expected
    assert text in error.message
    assert error.status == status
    assert error.code == json.loads(body)["code"]
    assert "\n" not in str(error)
    assert str(error).startswith("submit AAPL: ")


def test_rejections_are_definitive_and_rate_limits_are_not():
    rejected = error_from_api_error(api_error(403, INSUFFICIENT_QTY), action="sell")
    limited = error_from_api_error(
        api_error(429, '{"code":42910000,"message":"rate limit exceeded"}'), action="x"
    )

    assert isinstance(rejected, OrderRejected)  # a definitive refusal: nothing was created
    assert not isinstance(limited, OrderRejected)


def test_insufficient_qty_reports_the_shares_the_broker_still_has_free():
    body = (
        '{"code":40310000,"message":"insufficient qty available for order (requested: 10, available: 3.5)",'
        '"available":"3.5","existing_qty":"10","held_for_orders":"6.5","symbol":"AAPL"}'
    )
    error = error_from_api_error(api_error(403, body), action="sell")

    assert isinstance(error, InsufficientQty)
    assert error.available == Decimal("3.5")


def test_insufficient_qty_without_the_field_reads_available_from_the_message():
    body = (
        '{"code":40310000,"message":"insufficient qty available for order (requested: 2, available: 1.25)"}'
    )
    error = error_from_api_error(api_error(403, body), action="sell")

    assert error.available == Decimal("1.25")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_failures_mean_outcome_unknown(status):
    html = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>"
    error = error_from_api_error(api_error(status, html), action="submit AAPL")

    assert type(error) is BrokerUnavailable
    assert not isinstance(error, OrderRejected)
    assert "outcome unknown" in str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize(
    ("status", "body"), [(401, '{"message":"unauthorized"}'), (403, '{"message":"forbidden."}')]
)
def test_refused_keys_name_the_settings_to_check(status, body):
    error = error_from_api_error(api_error(status, body), action="get account", for_order=False)

    assert type(error) is BrokerError
    assert "ALPACA_API_KEY" in str(error)


def test_unknown_refusal_of_a_read_is_not_an_order_rejection():
    body = '{"code":42210000,"message":"subscription does not permit querying recent SIP data"}'
    error = error_from_api_error(
        api_error(403, body, "https://data.alpaca.markets/v2/stocks/bars"), action="get bars", for_order=False
    )

    assert type(error) is BrokerError
    assert "subscription does not permit" in str(error)


def test_empty_error_body_still_gives_a_one_line_message():
    error = error_from_api_error(api_error(422, ""), action="cancel order 1")

    assert type(error) is OrderRejected
    assert str(error) == "cancel order 1: no message (HTTP 422)"


# -- network policy, against a loopback server playing Alpaca -----------------------------------


class FakeAlpaca(http.server.ThreadingHTTPServer):
    """Answers each request with the next scripted (status, body, delay[, headers]) and records the
    calls; `always`, when set, answers every request once the script is used up."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple] = []
        self.always: tuple | None = None
        self.calls: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeAlpaca

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.calls.append((self.command, self.path))
        if self.server.script:
            answer = self.server.script.pop(0)
        else:
            answer = self.server.always or (500, "{}", 0.0)
        status, body, delay = answer[:3]
        headers = {"Content-Type": "application/json", **(answer[3] if len(answer) > 3 else {})}
        time.sleep(delay)
        body = body.replace("{KEY}", self.headers.get("APCA-API-KEY-ID", "")).replace(
            "{SECRET}", self.headers.get("APCA-API-SECRET-KEY", "")
        )
        payload = body.encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    do_GET = do_POST = do_DELETE = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_alpaca() -> Iterator[FakeAlpaca]:
    server = FakeAlpaca()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make_executor(url: str, timeout: float = 5.0) -> AlpacaExecutor:
    settings = BrokerSettings(
        ALPACA_API_KEY=API_KEY,
        ALPACA_SECRET_KEY=SECRET_KEY,
        ALPACA_ENDPOINT=url,
        FL_BROKER_TIMEOUT_SECONDS=timeout,
    )
    return AlpacaExecutor(settings, read_retry_wait=0.01)


ACCOUNT = '{"id":"e6fe16f3-64a4-4921-8928-cadf02f92f98","account_number":"PA1","status":"ACTIVE","cash":"1000.5","buying_power":"2000","equity":"1000.5"}'
RATE_LIMITED = '{"code":42910000,"message":"rate limit exceeded"}'


def test_order_submit_hit_by_a_rate_limit_is_sent_once_not_retried(clean_env, fake_alpaca):
    fake_alpaca.script = [(429, RATE_LIMITED, 0.0)] * 4
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(RateLimited):
        executor.buy_qty("AAPL", Decimal("1"), "fl-test-1")

    assert fake_alpaca.calls == [("POST", "/v2/orders")]


def test_order_submit_answered_with_a_gateway_timeout_is_outcome_unknown_and_sent_once(
    clean_env, fake_alpaca
):
    fake_alpaca.script = [(504, "<html>gateway timeout</html>", 0.0)] * 4
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable, match="outcome unknown"):
        executor.buy_notional("AAPL", Decimal("25"), "fl-test-2")

    assert len(fake_alpaca.calls) == 1


def test_read_hit_by_a_rate_limit_is_retried(clean_env, fake_alpaca):
    fake_alpaca.script = [(429, RATE_LIMITED, 0.0), (200, ACCOUNT, 0.0)]
    executor = make_executor(fake_alpaca.url)

    account = executor.get_account()

    assert account.cash == Decimal("1000.5")
    assert fake_alpaca.calls == [("GET", "/v2/account"), ("GET", "/v2/account")]


def test_stalled_broker_gives_broker_unavailable_instead_of_hanging(clean_env, fake_alpaca):
    fake_alpaca.script = [(200, ACCOUNT, 3.0)]
    executor = make_executor(fake_alpaca.url, timeout=0.3)

    with pytest.raises(BrokerUnavailable, match="no answer from the broker"):
        executor.get_account()


def test_unreachable_broker_gives_broker_unavailable(clean_env, fake_alpaca):
    url = fake_alpaca.url
    fake_alpaca.shutdown()
    fake_alpaca.server_close()
    executor = make_executor(url)

    with pytest.raises(BrokerUnavailable, match="cannot reach the broker"):
        executor.get_positions()


def test_error_text_echoing_the_keys_never_reaches_the_message(clean_env, fake_alpaca):
    fake_alpaca.script = [(403, '{"code":40310000,"message":"bad key {KEY} with secret {SECRET}"}', 0.0)]
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(OrderRejected) as caught:
        executor.sell_market("AAPL", Decimal("1"), "fl-test-3")

    text = str(caught.value)
    assert "bad key" in text
    assert API_KEY not in text and SECRET_KEY not in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert API_KEY not in repr(executor) and SECRET_KEY not in repr(executor)


def test_missing_position_is_none_not_an_error(clean_env, fake_alpaca):
    fake_alpaca.script = [(404, '{"code":40410000,"message":"position does not exist"}', 0.0)]
    executor = make_executor(fake_alpaca.url)

    assert executor.get_position("AAPL") is None


def test_unknown_client_order_id_is_none(clean_env, fake_alpaca):
    fake_alpaca.script = [(404, '{"code":40410000,"message":"order not found"}', 0.0)]
    executor = make_executor(fake_alpaca.url)

    assert executor.get_order_by_client_id("never-sent") is None
    assert fake_alpaca.calls == [("GET", "/v2/orders:by_client_order_id?client_order_id=never-sent")]


@pytest.mark.parametrize(
    "send",
    [
        lambda ex: ex.buy_qty("AAPL", Decimal("NaN"), "fl-bad-1"),
        lambda ex: ex.buy_notional("AAPL", Decimal("Infinity"), "fl-bad-2"),
        lambda ex: ex.sell_market("AAPL", Decimal("-Infinity"), "fl-bad-3"),
        lambda ex: ex.submit_protective_exit("AAPL", Decimal("1"), Decimal("NaN"), None, "fl-bad-4"),
    ],
    ids=["nan-qty", "infinite-notional", "minus-infinite-qty", "nan-stop"],
)
def test_non_finite_sizes_and_prices_are_refused_before_anything_is_sent(clean_env, fake_alpaca, send):
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(InputError, match="must be a finite number"):
        send(executor)

    assert fake_alpaca.calls == []


# -- against the simulated market --------------------------------------------------------------


@pytest.fixture
def market(clean_env):
    handle = start_sim()
    yield handle
    handle.stop()


def test_wrong_keys_name_the_settings_and_never_echo_the_secret(market):
    executor = AlpacaExecutor(market.broker_settings(ALPACA_SECRET_KEY="wrong-secret-value-123"))

    with pytest.raises(BrokerError) as refused:
        executor.get_account()

    assert type(refused.value) is BrokerError
    assert "ALPACA_API_KEY" in str(refused.value)
    assert "wrong-secret-value-123" not in str(refused.value)


def test_submit_whose_answer_is_lost_is_unknown_and_then_found_by_client_order_id(market):
    # The broker creates the order, then the client sees a gateway timeout.
    market.control.fail_requests(1, 504, path_prefix="/v2/orders", method="POST", when="after")
    executor = AlpacaExecutor(market.broker_settings())

    with pytest.raises(BrokerUnavailable, match="outcome unknown"):
        executor.buy_qty("AAPL", Decimal("3"), "fl-lost-answer")

    found = executor.get_order_by_client_id("fl-lost-answer")
    assert found is not None and found.qty == Decimal("3")
    orders = [o for o in market.control.state()["orders"] if o["client_order_id"] == "fl-lost-answer"]
    assert len(orders) == 1  # sent once, never resent


# -- answers the adapter cannot use: empty, not JSON, wrong shape, redirects ----------------------

#: Every AlpacaExecutor call that reads an answer, trading and data clients alike.
BROKER_CALLS = {
    "account": lambda ex: ex.get_account(),
    "positions": lambda ex: ex.get_positions(),
    "position": lambda ex: ex.get_position("AAPL"),
    "asset": lambda ex: ex.get_asset("AAPL"),
    "assets": lambda ex: ex.get_assets(),
    "open orders": lambda ex: ex.get_open_orders(),
    "orders since": lambda ex: ex.get_orders_updated_since(datetime(2024, 3, 4, tzinfo=UTC)),
    "order by client id": lambda ex: ex.get_order_by_client_id("fl-x"),
    "clock": lambda ex: ex.get_clock(),
    "calendar": lambda ex: ex.get_calendar(date(2024, 3, 4), date(2024, 3, 8)),
    "latest prices": lambda ex: ex.get_latest_prices(["AAPL"]),
    "bars": lambda ex: ex.get_bars(
        ["AAPL"], Timeframe.DAY, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    ),
    "bar rows": lambda ex: ex.get_bar_rows(
        ["AAPL"], Timeframe.DAY, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC)
    ),
    "splits": lambda ex: ex.get_splits(["AAPL"], date(2024, 3, 1), date(2024, 3, 4)),
    "submit buy qty": lambda ex: ex.buy_qty("AAPL", Decimal("1"), "fl-h-1"),
    "submit buy notional": lambda ex: ex.buy_notional("AAPL", Decimal("50"), "fl-h-2"),
    "submit stop": lambda ex: ex.submit_protective_exit("AAPL", Decimal("1"), Decimal("90"), None, "fl-h-3"),
    "submit oco": lambda ex: ex.submit_protective_exit(
        "AAPL", Decimal("1"), Decimal("90"), Decimal("120"), "fl-h-4"
    ),
    "submit sell": lambda ex: ex.sell_market("AAPL", Decimal("1"), "fl-h-5"),
    "cancel": lambda ex: ex.cancel_order("11111111-2222-3333-4444-555555555555"),
}

HOSTILE_ANSWERS = {
    "empty 200": ((200, "", 0.0), "with an empty body"),
    "empty 201": ((201, "", 0.0), "with an empty body"),
    "garbage": (
        (200, "<html>\n<b>Service moved</b>\n</html>", 0.0, {"Content-Type": "text/html"}),
        "not JSON",
    ),
    "truncated json": ((200, '{"id": "e6fe16f3', 0.0), "not JSON"),
    "wrong shape": ((200, '{"unexpected": [1, {"nested": null}]}', 0.0), "unexpected shape"),
    "list for object": ((200, '[1, "two", null]', 0.0), "unexpected shape"),
    "bare number": ((200, "42", 0.0), "unexpected shape"),
    "302": (
        (302, "", 0.0, {"Location": "http://elsewhere.invalid/login"}),
        "HTTP 302, a redirect to http://elsewhere.invalid/login",
    ),
    "301 with a body": (
        (301, "<a href=x>moved</a>", 0.0, {"Location": "https://elsewhere.invalid/"}),
        "HTTP 301, a redirect",
    ),
    "304 without location": ((304, "", 0.0), "HTTP 304 with no data and no Location"),
}


def _expected_to_pass(call: str, answer: str) -> bool:
    # A cancel answers 204 with no body: any 2xx that parses is Alpaca's "done" there, whatever it holds.
    return call == "cancel" and HOSTILE_ANSWERS[answer][1] in ("with an empty body", "unexpected shape")


@pytest.mark.parametrize("answer", list(HOSTILE_ANSWERS))
@pytest.mark.parametrize("call", list(BROKER_CALLS))
def test_an_answer_the_adapter_cannot_use_is_one_line_of_broker_unavailable(
    clean_env, fake_alpaca, call, answer
):
    scripted, says = HOSTILE_ANSWERS[answer]
    fake_alpaca.always = scripted
    executor = make_executor(fake_alpaca.url)

    if _expected_to_pass(call, answer):
        assert BROKER_CALLS[call](executor) is None
        return
    with pytest.raises(BrokerUnavailable) as caught:
        BROKER_CALLS[call](executor)

    text = str(caught.value)
    assert says in text, text
    assert "\n" not in text and "Traceback" not in text
    assert "outcome unknown" in text
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert API_KEY not in text and SECRET_KEY not in text
    assert len(fake_alpaca.calls) == 1  # a submit is never re-sent; a 2xx/3xx is never retried


def test_the_message_quotes_what_came_back(clean_env, fake_alpaca):
    fake_alpaca.always = (200, "<html><body>Please log in</body></html>", 0.0, {"Content-Type": "text/html"})
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable) as caught:
        executor.get_account()

    assert str(caught.value) == (
        "get account: the broker's answer is not JSON (HTTP 200, text/html: "
        "'<html><body>Please log in</body></html>'); outcome unknown"
    )


def test_an_empty_answer_to_an_order_submit_is_outcome_unknown(clean_env, fake_alpaca):
    fake_alpaca.always = (200, "", 0.0)
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable) as caught:
        executor.buy_qty("AAPL", Decimal("2"), "fl-empty-1")

    assert str(caught.value) == (
        "buy 2 AAPL (client_order_id=fl-empty-1): the broker answered HTTP 200 with an empty body; outcome unknown"
    )
    assert not isinstance(caught.value, OrderRejected)  # the caller looks the order up by its client order id


def test_a_redirect_echoing_the_keys_never_shows_them(clean_env, fake_alpaca):
    fake_alpaca.always = (307, "", 0.0, {"Location": "http://elsewhere.invalid/?k={KEY}&s={SECRET}"})
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable) as caught:
        executor.get_positions()

    text = str(caught.value)
    assert "elsewhere.invalid" in text and API_KEY not in text and SECRET_KEY not in text


@pytest.mark.parametrize("read", ["bars", "bar rows"])
def test_a_bars_listing_that_repeats_its_page_token_stops_instead_of_looping(clean_env, fake_alpaca, read):
    fake_alpaca.always = (200, '{"bars": {"AAPL": []}, "next_page_token": "same-again"}', 0.0)
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable, match="same page token twice"):
        BROKER_CALLS[read](executor)

    assert len(fake_alpaca.calls) == 2


@pytest.mark.parametrize("read", ["bars", "bar rows"])
def test_a_bars_listing_that_pages_forever_stops(clean_env, fake_alpaca, monkeypatch, read):
    import shared.broker.alpaca as adapter

    monkeypatch.setattr(adapter, "MAX_REQUESTS_PER_CALL", 5)
    counter = iter(range(10**6))

    class Endless(list):
        def pop(self, index=-1):
            return (200, f'{{"bars": {{"AAPL": []}}, "next_page_token": "t{next(counter)}"}}', 0.0)

        def __bool__(self):
            return True

    fake_alpaca.script = Endless()
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable, match="kept paging past 5 pages"):
        BROKER_CALLS[read](executor)

    assert len(fake_alpaca.calls) == 5


def test_a_usable_answer_after_an_unusable_one_is_read_normally(clean_env, fake_alpaca):
    fake_alpaca.script = [(200, "", 0.0), (200, ACCOUNT, 0.0)]
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable):
        executor.get_account()
    assert executor.get_account().cash == Decimal("1000.5")


def _bar(day: str, o, h, low, c, v) -> dict:
    return {"t": f"{day}T05:00:00Z", "o": o, "h": h, "l": low, "c": c, "v": v, "n": 12, "vw": 101.2}


#: Two pages of daily bars; integer prices and volumes, as a broker may send them.
BARS_PAGES = [
    json.dumps({"bars": {"AAPL": [_bar("2024-03-01", 101, 102.5, 100.25, 101.5, 1200)]}, "next_page_token": "p2"}),
    json.dumps({"bars": {"AAPL": [_bar("2024-03-04", 101.5, 103, 101, 102.99, 900)],
                         "MSFT": [_bar("2024-03-01", 400, 401.01, 399.1, 400.5, 50000.0)]},
                "next_page_token": None}),
]


def test_bar_rows_are_read_with_the_requests_retries_and_pages_of_the_bars_read(clean_env, fake_alpaca):
    script = [(429, RATE_LIMITED, 0.0), (200, BARS_PAGES[0], 0.0), (200, BARS_PAGES[1], 0.0)]
    executor = make_executor(fake_alpaca.url)
    args = (["aapl", "MSFT", "KO"], Timeframe.DAY, datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 4, tzinfo=UTC))

    fake_alpaca.script = list(script)
    bars = executor.get_bars(*args)
    model_calls = list(fake_alpaca.calls)
    fake_alpaca.calls.clear()
    fake_alpaca.script = list(script)
    rows = executor.get_bar_rows(*args)

    assert fake_alpaca.calls == model_calls  # the same query (symbols, feed, limit), retry and page token
    assert len(model_calls) == 3 and "feed=iex" in model_calls[0][1] and "page_token=p2" in model_calls[2][1]
    assert list(rows) == list(bars) == ["AAPL", "MSFT", "KO"] and rows["KO"] == []
    assert {s: [tuple(str(v) for v in row) for row in series] for s, series in rows.items()} == {
        s: [tuple(str(getattr(b, f)) for f in BarRow._fields) for b in series] for s, series in bars.items()}
    assert str(rows["AAPL"][0].o) == "101.0" and rows["AAPL"][1].t == datetime(2024, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("bad", [
    {"o": None}, {"h": "high"}, {"c": True}, {"l": float("nan")}, {"t": 1709528400}, {"t": "yesterday"},
])
def test_a_bar_row_the_adapter_cannot_read_is_one_line_of_broker_unavailable(clean_env, fake_alpaca, bad):
    bar = {**_bar("2024-03-01", 101, 102, 100, 101.5, 1200), **bad}
    fake_alpaca.always = (200, json.dumps({"bars": {"AAPL": [bar]}, "next_page_token": None}), 0.0)
    executor = make_executor(fake_alpaca.url)

    with pytest.raises(BrokerUnavailable, match="^get bars \\(1 symbols\\): the broker's answer has an unexpected"):
        BROKER_CALLS["bar rows"](executor)
