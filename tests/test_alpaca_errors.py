"""Alpaca's error answers become the project's typed errors, and the adapter's network policy holds.

The table uses the real error bodies collected in ../shared/reference/alpaca.md section 5, wrapped in
alpaca-py `APIError`s built from real `requests.Response` objects (no network). The policy tests
run the real `AlpacaExecutor` against a tiny loopback HTTP server that plays a misbehaving Alpaca.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
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

API_KEY = "PKTESTKEY0123456789"
SECRET_KEY = "SecretValue-abcdefghijklmnopqrstuvwxyz"


def api_error(status: int, body: str, url: str = "https://paper-api.alpaca.markets/v2/orders") -> APIError:
    """What alpaca-py raises for this HTTP answer (RESTClient._one_request does exactly this)."""
    response = requests.Response()
    response.status_code = status
    response._content = body.encode()
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

    assert rejected.definitive is True
    assert limited.definitive is False


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
    assert error.definitive is False
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
    """Answers each request with the next scripted (status, body, delay) and records the calls."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[int, str, float]] = []
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
        status, body, delay = self.server.script.pop(0) if self.server.script else (500, "{}", 0.0)
        time.sleep(delay)
        body = body.replace("{KEY}", self.headers.get("APCA-API-KEY-ID", "")).replace(
            "{SECRET}", self.headers.get("APCA-API-SECRET-KEY", "")
        )
        payload = body.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
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
