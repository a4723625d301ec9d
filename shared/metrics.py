"""Prometheus metrics: the one place that defines them (docs/operations.md, "Metrics").

Each long-running service (streamer, manager, scheduler, the RQ workers) calls `start(service, ...)`
once: with FL_METRICS_PORT set (0 = off, the default) it serves `/metrics` with prometheus_client's
own HTTP server, in a daemon thread, on FL_METRICS_ADDR:FL_METRICS_PORT.

Two kinds of metric:
- In-process, counted where things happen: broker requests (`AlpacaExecutor`'s request path), the
  fill-to-protection latency (the manager daemon, when a protective order for a fill is accepted),
  the streamer's connection state (read from the `Streamer` at scrape time).
- Line state, read from Redis at scrape time by `LineStateCollector`: open and unprotected
  positions, RQ queue depth and failed jobs, the last manage tick, the risk limits, exits by reason
  (a Redis hash every process adds to, so exits made in a forked RQ job are not lost). Only the
  manager daemon registers it, so a Prometheus sum over services never counts the line twice.

An RQ worker runs each job in a forked child: what a job counts in process memory (its broker
requests) dies with the child. What matters from the jobs (exits, the tick) goes through Redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlparse

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import logs
from shared.bus import SERVICES, Keys
from shared.errors import FactoryLineError

log = logging.getLogger(__name__)

PREFIX = "factoryline"

BROKER_REQUESTS = Counter(
    f"{PREFIX}_broker_requests", "HTTP requests to the broker, by method, endpoint template and status code "
    "(status 'error': no answer: a timeout or a refused connection).",
    ["method", "endpoint", "status"])

PROTECTION_LATENCY = Histogram(
    f"{PREFIX}_fill_to_protection_seconds", "From an entry fill (the trade update's time) to the broker "
    "accepting its protective order (the order's created_at: both on the broker's clock).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0))


# -- broker requests -------------------------------------------------------------------------------

#: Path segments kept as they are; anything else (an order id, a symbol, a date) becomes a placeholder.
_STATIC_SEGMENTS = frozenset({
    "v1", "v2", "v1beta1", "v1beta3", "orders", "positions", "account", "clock", "calendar", "assets",
    "stocks", "bars", "trades", "quotes", "snapshots", "latest", "corporate-actions", "activities",
    "portfolio", "history", "configurations", "watchlists", "options", "contracts", "auctions", "meta",
    "orders:by_client_order_id", "announcements", "corporate_actions", "sim", "health", "control",
})
#: The placeholder for a segment after these: `/v2/positions/{symbol}`, `/v2/orders/{id}`.
_SYMBOL_AFTER = frozenset({"positions", "assets", "stocks"})


def endpoint_template(url: str) -> str:
    """The path of a broker URL with ids and symbols replaced (`/v2/orders/{id}`), so the label has
    a handful of values, never one per order or symbol. The query string is dropped."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    out: list[str] = []
    for part in parts:
        if part in _STATIC_SEGMENTS:
            out.append(part)
        else:
            out.append("{symbol}" if out and out[-1] in _SYMBOL_AFTER else "{id}")
    return "/" + "/".join(out)


def count_broker_request(method: str, url: str, status: int | str) -> None:
    """One HTTP request to the broker (`status`: the code, or "error" when nothing came back)."""
    try:
        BROKER_REQUESTS.labels(method.upper(), endpoint_template(url), str(status)).inc()
    except Exception:  # noqa: BLE001 - a metric must never break a broker call
        log.debug("broker request not counted", exc_info=True)


# -- fill to protection ------------------------------------------------------------------------------


def observe_protection(fill_at: datetime, accepted_at: datetime | None = None) -> None:
    """A protective order for a fill at `fill_at` was accepted at `accepted_at` (the broker's time of
    the order, so both ends are on one clock, the simulator's virtual one included; else now)."""
    accepted = accepted_at or datetime.now(UTC)
    PROTECTION_LATENCY.observe(max((accepted - fill_at).total_seconds(), 0.0))


# -- exits (kept in Redis: exits happen in forked RQ jobs too) ----------------------------------------




def count_exit(client, keys: Keys, reason: str) -> None:
    try:
        client.hincrby(keys.metrics_exits, reason, 1)
    except Exception:  # noqa: BLE001 - a metric must never break an exit
        log.debug("exit not counted", exc_info=True)


# -- line state from Redis at scrape time ------------------------------------------------------------


def rq_queue_key(name: str) -> str:
    return f"rq:queue:{name}"


def rq_failed_key(name: str) -> str:
    return f"rq:failed:{name}"


class LineStateCollector(Collector):
    """Reads the line's state from Redis on every scrape (a few SCANs and one pipeline): nothing is
    cached, so a scrape always says what Redis says now. A Redis error leaves the line-state metrics
    out of that scrape and sets `factoryline_redis_up` to 0."""

    def __init__(self, client, keys: Keys, *, services: Iterable[str] = SERVICES):
        self.client = client
        self.keys = keys
        self.services = tuple(services)

    def describe(self):
        return []  # collected at scrape time only: registering never touches Redis

    def collect(self):
        up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 when the line-state metrics could be read from Redis.")
        try:
            families = list(self._families())
        except Exception as exc:  # noqa: BLE001 - Redis away: report it, not a traceback per scrape
            logs.event(log, "metrics_redis_unreadable", level=logging.WARNING, error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self):
        from shared import risk

        client, keys = self.client, self.keys
        state_prefix = keys.position_state("")
        symbols = sorted({_text(k)[len(state_prefix):] for k in client.scan_iter(match=f"{state_prefix}*", count=500)}
                         - {""})
        pipe = client.pipeline(transaction=False)
        for symbol in symbols:
            pipe.get(keys.protection(symbol))
        for service in self.services:
            pipe.llen(rq_queue_key(keys.queue(service)))
            pipe.zcard(rq_failed_key(keys.queue(service)))
        pipe.hgetall(keys.metrics_exits)
        pipe.get(keys.manager_last_tick)
        pipe.exists(keys.halt)
        replies = pipe.execute()
        records, replies = replies[:len(symbols)], replies[len(symbols):]

        unprotected = 0
        for raw in records:
            try:
                ids = json.loads(_text(raw)).get("client_order_ids") if raw else None
            except ValueError:
                ids = None
            if not ids:
                unprotected += 1
        yield _gauge("open_positions", "Positions the manager keeps state for (one Redis key each).",
                     len(symbols))
        yield _gauge("unprotected_positions", "Open positions whose protection record lists no protective "
                     "order placed and not yet seen closed.", unprotected)

        depth = GaugeMetricFamily(f"{PREFIX}_rq_queue_jobs", "Jobs waiting in each RQ queue.", labels=["queue"])
        failed = GaugeMetricFamily(f"{PREFIX}_rq_failed_jobs", "Jobs in each RQ queue's failed registry.",
                                   labels=["queue"])
        for service in self.services:
            depth.add_metric([service], replies.pop(0))
            failed.add_metric([service], replies.pop(0))
        yield depth
        yield failed

        exits = CounterMetricFamily(f"{PREFIX}_exits", "Positions closed, by exit reason (trades written to "
                                    "the ledger; kept in Redis).", labels=["reason"])
        for reason, count in sorted((_text(k), int(v)) for k, v in (replies.pop(0) or {}).items()):
            exits.add_metric([reason], count)
        yield exits

        raw_tick = replies.pop(0)
        tick = _json(raw_tick)
        if tick:
            yield _gauge("tick_duration_seconds", "How long the last completed manage tick took.",
                         float(tick.get("seconds") or 0.0))
            at = _timestamp(tick.get("at"))
            if at is not None:
                yield _gauge("tick_last_timestamp_seconds", "When the last manage tick ran (Unix time, the "
                             "broker's clock).", at)
        yield _gauge("halted", "1 while the halt flag is set.", 1 if replies.pop(0) else 0)

        readings = risk.last_readings(client, keys)
        if readings:
            value = GaugeMetricFamily(f"{PREFIX}_risk_limit_ratio", "Each risk limit's last reading (a loss "
                                      "is positive; 0.02 = 2%).", labels=["limit"])
            threshold = GaugeMetricFamily(f"{PREFIX}_risk_limit_threshold_ratio", "Each risk limit's threshold.",
                                          labels=["limit"])
            tripped = GaugeMetricFamily(f"{PREFIX}_risk_limit_tripped", "1 when the limit's last reading "
                                        "tripped it.", labels=["limit"])
            for reading in readings.get("readings", []):
                limit = str(reading.get("limit"))
                value.add_metric([limit], float(reading.get("value_pct", 0)) / 100)
                threshold.add_metric([limit], float(reading.get("threshold_pct", 0)) / 100)
                tripped.add_metric([limit], 1 if reading.get("tripped") else 0)
            yield value
            yield threshold
            yield tripped
            at = _timestamp(readings.get("at"))
            if at is not None:
                yield _gauge("risk_check_last_timestamp_seconds", "When the risk limits were last measured.", at)


# -- the streamer, read from the live object at scrape time ----------------------------------------------


class StreamerCollector(Collector):
    """The streamer's connection state and the age of the last update it received. `streamer` needs
    `is_leader`, `connected` and `last_event_monotonic` (None until an update arrives)."""

    def __init__(self, streamer):
        self.streamer = streamer

    def describe(self):
        return []

    def collect(self):
        s = self.streamer
        yield _gauge("streamer_leader", "1 while this streamer holds the leader lock.", 1 if s.is_leader else 0)
        yield _gauge("streamer_connected", "1 while this streamer's broker trade-update stream is connected.",
                     1 if s.connected else 0)
        last = s.last_event_monotonic
        if last is not None:
            yield _gauge("streamer_last_event_age_seconds", "Seconds since this streamer received its last "
                         "trade update (absent until the first).", time.monotonic() - last)


# -- serving -----------------------------------------------------------------------------------------


_started: dict[str, object] = {}


def start(service: str, *, collectors: Iterable[Collector] = (),
          settings=None) -> int | None:
    """Serve /metrics for `service` when FL_METRICS_PORT is set; register `collectors` first. Returns
    the port (None: off). Idempotent per process."""
    from shared import config

    settings = settings or config.load(config.MetricsSettings)
    port = settings.FL_METRICS_PORT
    if not port:
        return None
    for collector in collectors:
        REGISTRY.register(collector)
    if "server" not in _started:
        try:
            server, _thread = start_http_server(port, addr=settings.FL_METRICS_ADDR)
        except OSError as exc:
            raise FactoryLineError(f"FL_METRICS_PORT: cannot serve /metrics on {settings.FL_METRICS_ADDR}:{port}: "
                                   f"{exc.strerror or exc}") from None
        _started["server"] = server
        logs.event(log, "metrics_serving", service=service, addr=settings.FL_METRICS_ADDR, port=port)
    return port


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _json(raw) -> dict | None:
    if not raw:
        return None
    try:
        value = json.loads(_text(raw))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _timestamp(value) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp() if value else None
    except (TypeError, ValueError):
        return None


__all__ = ["BROKER_REQUESTS", "PROTECTION_LATENCY", "LineStateCollector", "StreamerCollector", "count_broker_request",
           "count_exit", "endpoint_template", "observe_protection", "start"]
