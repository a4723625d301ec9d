"""Redis conventions: one namespace prefix for every key, stream, channel and queue we own.

Every name the line uses in Redis is made here, by `Keys` (and nowhere else: a test checks that each
name `docs/redis.md` lists is one `Keys` makes). `docs/redis.md` lists each key with a redis-cli
command to inspect it. The prefix (FL_NAMESPACE, default `fl`) keeps several accounts, and the
tests, apart on one Redis server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, ClassVar

import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry
from redis.sentinel import SentinelManagedConnection

from shared import logs

if TYPE_CHECKING:
    from shared.config import RedisSettings

SERVICES = ("ranker", "trader", "manager", "reporter", "scanner")


@dataclass(frozen=True)
class Keys:
    ns: str = "fl"

    #: Consumer groups (not namespaced: each lives on a namespaced stream).
    trade_updates_group: ClassVar[str] = "manager"
    notifications_group: ClassVar[str] = "notifier"

    def signals(self, day: date) -> str:
        """JSON list of the day's ranked signals, written by the ranker, read by the trader."""
        return f"{self.ns}:signals:{day.isoformat()}"

    def signals_signature(self, day: date) -> str:
        """The day's list signature `hmac-sha256:<hex>`, written with the list when FL_SIGNALS_HMAC_KEY is set."""
        return f"{self.signals(day)}:hmac"

    def entry_skips(self, day: date) -> str:
        """JSON list of the signals the trader skipped for the session `day`, with their reasons (the
        day's report lists them)."""
        return f"{self.ns}:trader:skips:{day.isoformat()}"

    @property
    def trade_updates(self) -> str:
        """Stream of every trade update (the streamer writes, the manager's group reads)."""
        return f"{self.ns}:stream:trade-updates"

    @property
    def dead_letters(self) -> str:
        return f"{self.ns}:stream:dead-letters"

    @property
    def notifications(self) -> str:
        """Pub/sub channel of live notifications for people (`factoryline watch`)."""
        return f"{self.ns}:notify"

    @property
    def notification_stream(self) -> str:
        """Capped durable copy of every notification (`publish`), read by the notifier's group."""
        return f"{self.ns}:stream:notifications"

    @property
    def notify_failed(self) -> str:
        """Stream of messages the notifier could not deliver after its retries."""
        return f"{self.ns}:stream:notify-failed"

    @property
    def notify_unprotected(self) -> str:
        """Hash symbol -> JSON {"since", "said"}: positions the notifier has seen without protection."""
        return f"{self.ns}:notify:unprotected"

    @property
    def notify_failed_jobs(self) -> str:
        """Set of the failed RQ job ids the notifier already announced."""
        return f"{self.ns}:notify:failed-jobs"

    @property
    def notify_dead_letters_cursor(self) -> str:
        """The last dead letter the notifier announced (a stream id)."""
        return f"{self.ns}:notify:dead-letters-cursor"

    @property
    def notify_streamer_down(self) -> str:
        """Epoch seconds since the streamer is down, while a `streamer_disconnected` is announced."""
        return f"{self.ns}:notify:streamer-down"

    @property
    def halt(self) -> str:
        return f"{self.ns}:halt"

    def position_state(self, symbol: str) -> str:
        return f"{self.ns}:position:{symbol}"

    def protection(self, symbol: str) -> str:
        """JSON: the protective client order ids placed, the revision counter, the entry's client order id."""
        return f"{self.ns}:protection:{symbol}"

    def symbol_lock(self, symbol: str) -> str:
        """The symbol's lock (reconcile, exits, flatten): the holder's token, a short PX, kept alive while held."""
        return f"{self.ns}:lock:symbol:{symbol}"

    def manager_refused(self, symbol: str) -> str:
        """The order the broker last refused for the symbol, TTL 5 min: not sent again unchanged meanwhile."""
        return f"{self.ns}:manager:refused:{symbol}"

    def manager_halted(self, symbol: str) -> str:
        """Set when an order of the symbol was refused as not tradable (TTL 15 min)."""
        return f"{self.ns}:manager:halted:{symbol}"

    def manager_consumer(self, consumer: str) -> str:
        """The lease on a manager replica's consumer name `manager-<n>`: its holder's token, PX 15 s, renewed
        while it runs, deleted on a clean stop (services/manager/consumer_name.py)."""
        return f"{self.ns}:manager:consumer:{consumer}"

    @property
    def manager_last_tick(self) -> str:
        """JSON summary of the last completed manage tick."""
        return f"{self.ns}:manager:last_tick"

    @property
    def risk_equity_peak(self) -> str:
        """The highest equity the line has recorded (the drawdown limit's base)."""
        return f"{self.ns}:risk:equity_peak"

    @property
    def risk_daily_ack(self) -> str:
        """The session a person resumed in after a risk-limit halt."""
        return f"{self.ns}:risk:daily_ack"

    @property
    def risk_last(self) -> str:
        """JSON of the last risk check's readings (`factoryline status` shows them)."""
        return f"{self.ns}:risk:last"

    @property
    def metrics_exits(self) -> str:
        """Hash exit reason -> count of positions closed (trades written to the ledger) for it."""
        return f"{self.ns}:metrics:exits"

    @property
    def ledger(self) -> str:
        return f"{self.ns}:ledger"

    @property
    def ledger_order_ids(self) -> str:
        """Set of the closing order ids already in the ledger (exactly once)."""
        return f"{self.ledger}:order-ids"

    @property
    def manager_notes(self) -> str:
        """Hash symbol -> JSON {verdict, notes, at}: what the manager's last reconcile had to say about
        a symbol (halted, short, a gap through the stop, shares the user's orders hold, a position
        the line did not enter). Written by the manager, shown by `factoryline status`."""
        return f"{self.ns}:manager:notes"

    @property
    def equity_history(self) -> str:
        return f"{self.ns}:equity"

    @property
    def equity_start(self) -> str:
        """The starting capital `{"at","equity"}`, set once (the tearsheet's curve starts there)."""
        return f"{self.equity_history}:start"

    def market_session(self, day: date) -> str:
        """The broker's session that New York date as JSON, or `"closed"`."""
        return f"{self.ns}:market:session:{day.isoformat()}"

    @property
    def scheduler_health(self) -> str:
        """Hash with the scheduler's last look at the clock."""
        return f"{self.ns}:scheduler:health"

    def streamer_seen(self, event_id: str) -> str:
        """Set by the streamer's record-once script: this trade update is already in the stream."""
        return f"{self.ns}:streamer:seen:{event_id}"

    def manager_seen(self, event_id: str) -> str:
        """Set by the manager's consumer: this trade update's reconcile succeeded (a duplicate is skipped)."""
        return f"{self.ns}:manager:seen:{event_id}"

    @property
    def streamer_health(self) -> str:
        return f"{self.ns}:streamer:health"

    @property
    def streamer_leader(self) -> str:
        return f"{self.ns}:streamer:leader"

    def queue(self, service: str) -> str:
        """RQ queue name of a service (RQ keys it as rq:queue:<name>)."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        return f"{self.ns}-{service}"


#: Socket timeout of the clients that block in XREADGROUP: well above the longest BLOCK the line asks
#: for (1 s), so a block never times out, yet a primary that vanishes without closing the connection
#: (its host down, the network cut) is given up on and the client reconnects (to the new primary).
#: redis-py 8's default of 5 s would turn a long BLOCK into a TimeoutError (rq-redis.md section 3.6).
BLOCKING_SOCKET_TIMEOUT = 30.0
#: Socket timeout of every other command.
SOCKET_TIMEOUT = 10.0
#: Connect and read timeout of a question to a sentinel: a dead one is passed over quickly.
SENTINEL_TIMEOUT = 2.0


class FailoverRetry(Retry):
    """redis-py's retry of a command on a connection error or timeout, bounded by time instead of by
    count: it tries again every `pause` seconds until `seconds` after the first failure. With Sentinel
    that outlasts a failover (the sentinels take their down-after-milliseconds to call the primary
    down, then a few seconds to promote a replica): each try asks them again where the primary is, so
    the command lands on the new primary instead of failing, and RQ's workers (whose main loop quits
    on a Redis error outside its dequeue) and jobs carry on. Without Sentinel redis-py's own retry
    stays (3 quick tries): a lone Redis that is down stays down."""

    def __init__(self, seconds: float, pause: float = 0.25):
        super().__init__(ConstantBackoff(pause), retries=1_000_000)
        self.seconds = seconds

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        failures = 0
        give_up_at: float | None = None
        while True:
            try:
                return do()
            except self._supported_errors as error:
                if is_retryable and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                now = time.monotonic()
                give_up_at = give_up_at if give_up_at is not None else now + self.seconds
                if now >= give_up_at:
                    raise error
                time.sleep(min(self._backoff.compute(failures), give_up_at - now))


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, reconnecting through the sentinels on every path.

    redis-py 8.1 asks the sentinels where the primary is only in `connect()`; a command retried after
    a lost connection reconnects in `send_packed_command` to the address it had, the dead primary's,
    until its retries run out (redis/redis-py#3874, open; #3560). A blocking XREADGROUP caught by the
    primary's death kept knocking on the old port for the whole FailoverRetry window. Here that
    reconnect goes through `connect()`, so it lands on the primary the sentinels name now."""

    def send_packed_command(self, command, check_health=True):
        if not self._sock:
            self.connect()
        return super().send_packed_command(command, check_health)


class SentinelSSLConnection(SentinelConnection, redis.SSLConnection):
    pass


class SentinelRedis(redis.Redis):
    """A client of the primary the sentinels name (redis-py's `Sentinel.master_for`): every new
    connection asks them where the primary is, so after a failover the client reconnects to the new
    one. `close` also closes the connections to the sentinels."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            if manager is not None:
                manager.close()


def connect(target: RedisSettings | str, *, blocking: bool = False, rq: bool = False) -> redis.Redis:
    """THE way the line connects to Redis: every service, job, command and RQ worker gets its client
    here. `target` is the RedisSettings (REDIS_URL, or the sentinels of FL_REDIS_SENTINELS and the
    primary's name) or a bare URL (tests, benchmarks: no Sentinel).

    Responses are str, except with `rq=True` (bytes: RQ breaks with decode_responses=True). Blocking
    consumers (`blocking=True`) get `BLOCKING_SOCKET_TIMEOUT`; RQ clients keep redis-py's, which RQ's
    worker raises to its own needs (rq-redis.md section 3.6)."""
    from shared import config

    settings = target if isinstance(target, config.RedisSettings) else None
    url = settings.REDIS_URL if settings is not None else target
    options: dict[str, object] = {"socket_connect_timeout": 5, "health_check_interval": 30}
    if not rq:
        options.update(decode_responses=True, socket_timeout=BLOCKING_SOCKET_TIMEOUT if blocking else SOCKET_TIMEOUT)
    if settings is None or not settings.FL_REDIS_SENTINELS:
        return redis.Redis.from_url(url, **options)
    from redis.connection import parse_url
    from redis.sentinel import Sentinel

    # REDIS_URL gives the primary's password, user, database and TLS; the sentinels give its address.
    url_options = parse_url(url)
    url_options.pop("host", None)
    url_options.pop("port", None)
    ssl = url_options.pop("connection_class", None) is redis.SSLConnection
    connection_class = SentinelSSLConnection if ssl else SentinelConnection
    password = settings.FL_REDIS_SENTINEL_PASSWORD
    sentinel = Sentinel(settings.sentinels, sentinel_kwargs={
        "socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT,
        "password": password.get_secret_value() if password is not None else None})
    return sentinel.master_for(settings.FL_REDIS_SENTINEL_MASTER, redis_class=SentinelRedis,
                               connection_class=connection_class, retry=FailoverRetry(settings.FL_REDIS_FAILOVER_SECONDS), **{**url_options, **options})


def connect_rq(target: RedisSettings | str) -> redis.Redis:
    """The connection RQ needs (bytes responses): `connect(target, rq=True)`."""
    return connect(target, rq=True)


def twin(client: redis.Redis, *, decode_responses: bool) -> redis.Redis:
    """A new client of the same server as `client` (the same primary, through the same sentinels),
    with other response decoding: a str client's bytes twin reads RQ's jobs. Close it after use."""
    pool = client.connection_pool
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class, **{**pool.connection_kwargs, "decode_responses": decode_responses}))


#: Entries kept in `Keys.notification_stream` (approximate trim): days of events, a few MB at most.
NOTIFICATIONS_MAXLEN = 10_000


def publish(client: redis.Redis, keys: Keys, kind: str, **fields: object) -> None:
    """Notify people: pub/sub for live watchers (`factoryline watch`), and one entry in the capped
    durable stream `Keys.notification_stream` that the notifier (services/notifier) sends on. One
    round trip (added to `client` when it is a pipeline); never waits for any sending."""
    payload = json.dumps({"kind": kind, **fields}, default=str)
    pipe = client if isinstance(client, redis.client.Pipeline) else client.pipeline(transaction=False)
    pipe.publish(keys.notifications, payload)
    pipe.xadd(keys.notification_stream, {"kind": kind, "data": payload}, maxlen=NOTIFICATIONS_MAXLEN,
              approximate=True)
    if pipe is not client:
        pipe.execute()


# -- saying that Redis cannot be reached -----------------------------------------------------------

#: While Redis stays unreachable, `redis_unreachable` is logged again at most this often.
UNREACHABLE_REPEAT_SECONDS = 10.0


def redis_address(client: redis.Redis) -> str:
    """Where `client` connects, as a URL without its password (`redis://:***@host:port/db`; with
    Sentinel `redis+sentinel://:***@sentinel:port,.../<primary name>/db`)."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    login = f"{kwargs.get('username') or ''}{':***' if kwargs.get('password') else ''}"
    login = f"{login}@" if login else ""
    db = kwargs.get("db", 0)
    proxy = kwargs.get("connection_pool")  # a Sentinel-managed connection's way to its sentinels
    if proxy is not None and hasattr(proxy, "sentinel_manager"):
        sentinels = ",".join("{host}:{port}".format_map(s.connection_pool.connection_kwargs)
                             for s in proxy.sentinel_manager.sentinels)
        return logs.redact(f"redis+sentinel://{login}{sentinels}/{proxy.service_name}/{db}")
    if kwargs.get("path"):
        return logs.redact(f"unix://{login}{kwargs['path']}?db={db}")
    scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
    return logs.redact(f"{scheme}://{login}{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{db}")


class RedisReachability:
    """Says in the log that Redis cannot be reached, and keeps saying so until it can.

    `failed(exc)` after any Redis error: the first one logs WARNING `redis_unreachable` (the address
    without its password, the error, redacted), later ones repeat it at most every `repeat_seconds`
    with `down_seconds`, how long it has lasted. `answered()` after any Redis command that worked:
    once after an outage it logs INFO `redis_reachable_again` with the outage's length. Thread-safe:
    every thread that talks to Redis may report to one instance."""

    def __init__(self, client: redis.Redis, logger: logging.Logger, *,
                 repeat_seconds: float = UNREACHABLE_REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        password = client.connection_pool.connection_kwargs.get("password")
        if password:
            logs.register_secret(str(password))  # so no error text can carry it either
        self.address = redis_address(client)
        self.log = logger
        self.repeat_seconds = repeat_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._said_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = self.clock()
            if self._down_since is None:
                self._down_since = now
            elif now - self._said_at < self.repeat_seconds:
                return
            self._said_at = now
            lasted = now - self._down_since
        logs.event(self.log, "redis_unreachable", level=logging.WARNING, redis=self.address,
                   error=logs.redact(f"{type(exc).__name__}: {exc}"), down_seconds=f"{lasted:.1f}")

    def answered(self) -> None:
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = self.clock() - self._down_since
            self._down_since = None
        logs.event(self.log, "redis_reachable_again", redis=self.address, down_seconds=f"{lasted:.1f}")
