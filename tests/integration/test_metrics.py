"""Prometheus metrics (shared/metrics.py): the endpoint templates, the Redis-read collector against the
real Redis, and real processes (the simulator, `python -m services.streamer`, `python -m services.manager`)
scraped over HTTP while a fill is protected."""

from __future__ import annotations

import json
import socket
import urllib.request
from decimal import Decimal

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_manager_faults import OPEN, line_factory, wait_until  # noqa: F401 - a fixture

from shared import metrics
from shared import position_store as store
from shared.bus import Keys
from shared.exits import PositionState

D = Decimal


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """name and sorted labels -> value, from the text exposition format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def total(found: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in found.items()
               if n == name and all(dict(lbls).get(k) == want for k, want in labels.items()))


def collected(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(generate_latest(registry).decode())


# -- endpoint templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "template"), [
    ("https://paper-api.alpaca.markets/v2/orders", "/v2/orders"),
    ("https://paper-api.alpaca.markets/v2/orders/61e69015-8549-4bfd-b9c3-01e75843f47d", "/v2/orders/{id}"),
    ("https://paper-api.alpaca.markets/v2/orders:by_client_order_id?client_order_id=fl-x", "/v2/orders:by_client_order_id"),
    ("https://paper-api.alpaca.markets/v2/positions/AAPL", "/v2/positions/{symbol}"),
    ("https://paper-api.alpaca.markets/v2/assets/BRK.B", "/v2/assets/{symbol}"),
    ("https://data.alpaca.markets/v2/stocks/bars?symbols=AAPL,MSFT", "/v2/stocks/bars"),
    ("https://data.alpaca.markets/v2/stocks/AAPL/bars", "/v2/stocks/{symbol}/bars"),
    ("http://127.0.0.1:8080/v2/account", "/v2/account"),
    ("http://127.0.0.1:8080/v2/something-new/123", "/v2/{id}/{id}"),
])
def test_an_endpoint_template_names_no_symbol_and_no_id(url, template):
    assert metrics.endpoint_template(url) == template


# -- the Redis-read collector -----------------------------------------------------------------------------


def _state(symbol: str) -> PositionState:
    from datetime import UTC, datetime

    return PositionState.at_entry(symbol, D("100"), D("3"), datetime(2024, 3, 4, 14, 31, tzinfo=UTC))


def test_the_line_state_collector_reads_positions_queues_exits_tick_and_risk_from_redis(redis_client, keys):
    found = collected(metrics.LineStateCollector(redis_client, keys))
    assert value(found, "factoryline_redis_up") == 1
    assert value(found, "factoryline_open_positions") == 0
    assert value(found, "factoryline_unprotected_positions") == 0
    assert value(found, "factoryline_rq_queue_jobs", queue="trader") == 0
    assert value(found, "factoryline_halted") == 0
    assert value(found, "factoryline_tick_duration_seconds") is None  # no tick yet: absent, not 0

    store.save(redis_client, keys, _state("AAPL"), store.ProtectionRecord(symbol="AAPL", client_order_ids=["fl-a"]))
    store.save(redis_client, keys, _state("MSFT"), store.ProtectionRecord(symbol="MSFT"))
    store.save(redis_client, keys, _state("NVDA"), store.ProtectionRecord(symbol="NVDA"))
    redis_client.rpush(metrics.rq_queue_key(keys.queue("trader")), "job-1", "job-2")
    redis_client.zadd(metrics.rq_failed_key(keys.queue("scanner")), {"job-3": 1.0})
    metrics.count_exit(redis_client, keys, "stop_loss")
    metrics.count_exit(redis_client, keys, "stop_loss")
    metrics.count_exit(redis_client, keys, "time_stop")
    redis_client.set(f"{keys.ns}:manager:last_tick", json.dumps({"status": "done", "at": "2024-03-04T10:00:00-05:00",
                                                                 "seconds": 0.25}))
    redis_client.set(f"{keys.ns}:risk:last", json.dumps({"at": "2024-03-04T10:00:00-05:00", "source": "manager", "readings": [
        {"limit": "daily_loss", "value_pct": "1.50", "threshold_pct": "3", "tripped": False, "detail": ""},
        {"limit": "drawdown", "value_pct": "12.00", "threshold_pct": "10", "tripped": True, "detail": ""}]}))
    redis_client.set(keys.halt, "risk limit")
    try:
        found = collected(metrics.LineStateCollector(redis_client, keys))
    finally:
        for service in ("trader", "scanner"):
            redis_client.delete(metrics.rq_queue_key(keys.queue(service)), metrics.rq_failed_key(keys.queue(service)))

    assert value(found, "factoryline_open_positions") == 3
    assert value(found, "factoryline_unprotected_positions") == 2
    assert value(found, "factoryline_rq_queue_jobs", queue="trader") == 2
    assert value(found, "factoryline_rq_failed_jobs", queue="scanner") == 1
    assert value(found, "factoryline_rq_failed_jobs", queue="trader") == 0
    assert value(found, "factoryline_exits_total", reason="stop_loss") == 2
    assert value(found, "factoryline_exits_total", reason="time_stop") == 1
    assert value(found, "factoryline_tick_duration_seconds") == 0.25
    assert value(found, "factoryline_tick_last_timestamp_seconds") == 1709564400.0
    assert value(found, "factoryline_risk_limit_ratio", limit="daily_loss") == pytest.approx(0.015)
    assert value(found, "factoryline_risk_limit_threshold_ratio", limit="drawdown") == pytest.approx(0.10)
    assert value(found, "factoryline_risk_limit_tripped", limit="drawdown") == 1
    assert value(found, "factoryline_risk_limit_tripped", limit="daily_loss") == 0
    assert value(found, "factoryline_halted") == 1


def test_the_collector_says_redis_is_down_instead_of_failing_the_scrape():
    client = redis.Redis.from_url(f"redis://127.0.0.1:{_free_port()}/0", socket_connect_timeout=0.5)
    found = collected(metrics.LineStateCollector(client, Keys("fl-nowhere")))
    assert found == {("factoryline_redis_up", ()): 0.0}


def test_the_streamer_collector_reads_the_live_streamer():
    class Fake:
        is_leader, connected, last_event_monotonic = True, False, None

    found = collected(metrics.StreamerCollector(Fake()))
    assert value(found, "factoryline_streamer_leader") == 1
    assert value(found, "factoryline_streamer_connected") == 0
    assert value(found, "factoryline_streamer_last_event_age_seconds") is None


def test_metrics_are_off_unless_a_port_is_set():
    from shared.config import MetricsSettings

    assert MetricsSettings().FL_METRICS_PORT == 0
    assert metrics.start("test", settings=MetricsSettings()) is None


# -- real processes, scraped over HTTP ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return samples(response.read().decode())


def test_the_manager_and_the_streamer_serve_metrics_that_move_when_a_fill_is_protected(line_factory):  # noqa: F811
    line = line_factory(start=OPEN)
    manager_port, streamer_port = _free_port(), _free_port()
    line.start("streamer", "services.streamer", FL_METRICS_PORT=str(streamer_port))
    wait_until("the streamer to listen", lambda: line.sim.control.state()["stream_connections"] >= 1)
    line.start_manager("manager", FL_METRICS_PORT=str(manager_port))
    assert f"metrics_serving service=manager addr=127.0.0.1 port={manager_port}" in line.log("manager")

    before = wait_until("the manager's metrics", lambda: _try_scrape(manager_port))
    for name in ("factoryline_broker_requests_total", "factoryline_fill_to_protection_seconds_count",
                 "factoryline_open_positions", "factoryline_unprotected_positions", "factoryline_rq_queue_jobs",
                 "factoryline_rq_failed_jobs", "factoryline_halted", "factoryline_redis_up"):
        assert any(n == name for n, _l in before), name
    assert value(before, "factoryline_open_positions") == 0
    assert value(before, "factoryline_fill_to_protection_seconds_count") == 0
    requests_before = total(before, "factoryline_broker_requests_total")
    assert requests_before > 0  # the start-up reconcile read the broker
    assert total(before, "factoryline_broker_requests_total", endpoint="/v2/positions", method="GET") >= 1
    streamer = scrape(streamer_port)
    assert value(streamer, "factoryline_streamer_leader") == 1
    assert value(streamer, "factoryline_streamer_connected") == 1

    line.buy("AAPL", "4")
    wait_until("AAPL protected", lambda: line.open_protection("AAPL") == [("oco", D("4"))])
    after = wait_until("the latency observed", lambda: (
        found := scrape(manager_port))["factoryline_fill_to_protection_seconds_count", ()] >= 1 and found)
    assert value(after, "factoryline_fill_to_protection_seconds_count") == 1
    assert value(after, "factoryline_fill_to_protection_seconds_sum") >= 0
    assert total(after, "factoryline_broker_requests_total") > requests_before
    assert total(after, "factoryline_broker_requests_total", method="POST", endpoint="/v2/orders", status="200") >= 1
    assert value(after, "factoryline_open_positions") == 1
    assert value(after, "factoryline_unprotected_positions") == 0
    streamer = scrape(streamer_port)
    assert 0 <= value(streamer, "factoryline_streamer_last_event_age_seconds") < 30
    assert not [labels for (name, labels) in after.items() if name == "factoryline_broker_requests_total"
                and "AAPL" in dict(labels)["endpoint"]]


def _try_scrape(port: int) -> dict | None:
    try:
        return scrape(port)
    except OSError:
        return None
