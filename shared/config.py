"""Settings from the environment and `.env`, validated once, with one-line errors.

Each pillar loads only the groups it needs (the ranker never needs broker keys). `load(SomeSettings)`
turns any validation problem into a `ConfigError` whose message names the variable, so commands
print one line and exit instead of a traceback. Secrets are `SecretStr`: hidden in reprs and logs.

Every variable is documented in `.env.example`.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import logging
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

log = logging.getLogger(__name__)

LIVE_TRADING_HOST = "api.alpaca.markets"
#: Alpaca's paper accounts have numbers beginning with this (e.g. PA3...); anything else counts as live.
PAPER_ACCOUNT_PREFIX = "PA"
PAPER_TRADING_URL = "https://paper-api.alpaca.markets"
ALPACA_DATA_URL = "https://data.alpaca.markets"


def env_file() -> str:
    """The .env file to read: FL_ENV_FILE if set, else ./.env (missing is fine)."""
    return os.environ.get("FL_ENV_FILE", ".env")


class _Settings(BaseSettings):
    # An empty value (`FL_X=` as in .env.example) means "use the default", not "the empty string".
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", case_sensitive=True, frozen=True, env_ignore_empty=True
    )

    @model_validator(mode="after")
    def _percent_is_not_a_fraction(self) -> _Settings:
        """Every *_PCT setting is in percent: 0.05 meant as 5% would make a stop 0.05% away."""
        for name in type(self).model_fields:
            value = getattr(self, name) if name.endswith("_PCT") else None
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool) and 0 < value < Decimal("0.5"):
                meant = f"{(Decimal(str(value)) * 100).normalize():f}"
                raise ValueError(f"{name}: {value} is a fraction, but percent settings are in percent: did you mean "
                                 f"{meant}? (values between 0 and 0.5 are refused)")
        return self


class BrokerSettings(_Settings):
    """How to reach the broker (real Alpaca, paper, or the local simulator)."""

    ALPACA_API_KEY: SecretStr
    ALPACA_SECRET_KEY: SecretStr
    ALPACA_ENDPOINT: str = PAPER_TRADING_URL
    #: Market-data base URL. Empty: data.alpaca.markets for Alpaca endpoints, else ALPACA_ENDPOINT.
    ALPACA_DATA_ENDPOINT: str = ""
    #: trade_updates WebSocket URL. Empty: derived from ALPACA_ENDPOINT (ws[s]://host/stream).
    ALPACA_STREAM_ENDPOINT: str = ""
    ALPACA_DATA_FEED: str = "iex"
    #: Exactly `true` (any case) allows live trading; `false` or empty refuses it; anything else is an error.
    FL_ALLOW_LIVE_TRADING: bool = False
    FL_BROKER_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=120)

    @field_validator("FL_ALLOW_LIVE_TRADING", mode="before")
    @classmethod
    def _true_or_false(cls, value: object) -> object:
        # pydantic would read 1, yes, on, t, y as true: for real money only the word itself counts.
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"true", "false"}:
            return text == "true"
        raise ValueError(f"must be true or false, not {str(value)[:20]!r} (only true allows live trading)")

    @field_validator("ALPACA_API_KEY", "ALPACA_SECRET_KEY")
    @classmethod
    def _not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty")
        return value

    @field_validator("ALPACA_ENDPOINT", "ALPACA_DATA_ENDPOINT", "ALPACA_STREAM_ENDPOINT")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and (urlparse(value).scheme not in {"http", "https", "ws", "wss"} or not urlparse(value).hostname):
            raise ValueError(f"is not a URL: {value!r}")
        return value

    @field_validator("ALPACA_DATA_FEED")
    @classmethod
    def _feed(cls, value: str) -> str:
        if value not in {"iex", "sip"}:
            raise ValueError("must be iex or sip")
        return value

    @model_validator(mode="after")
    def _live_needs_opt_in(self) -> BrokerSettings:
        if self.is_live and not self.FL_ALLOW_LIVE_TRADING:
            raise ValueError(
                f"ALPACA_ENDPOINT points at live trading ({self.ALPACA_ENDPOINT} is {LIVE_TRADING_HOST}); "
                "set FL_ALLOW_LIVE_TRADING=true to trade real money"
            )
        return self

    def check_account(self, account_number: str) -> None:
        """Refuse a live account unless live trading is allowed, whatever the endpoint says: the account
        is paper only when its number begins with PA (docs/operations.md, "Live guard"). A missing or
        other number counts as live."""
        if self.FL_ALLOW_LIVE_TRADING or account_number.startswith(PAPER_ACCOUNT_PREFIX):
            return
        raise ConfigError(
            f"the account at {self.ALPACA_ENDPOINT} looks live (account number {account_number or '(none)'!r} "
            f"does not begin with {PAPER_ACCOUNT_PREFIX}, as Alpaca paper accounts' do); "
            "set FL_ALLOW_LIVE_TRADING=true to trade real money"
        )

    @model_validator(mode="after")
    def _mask_secrets_in_logs(self) -> BrokerSettings:
        from shared import logs

        logs.register_secret(self.ALPACA_API_KEY.get_secret_value())
        logs.register_secret(self.ALPACA_SECRET_KEY.get_secret_value())
        return self

    @property
    def is_live(self) -> bool:
        """The endpoint is Alpaca's live trading host, however written (case, a trailing dot, a port)."""
        return endpoint_host(self.ALPACA_ENDPOINT)[0] == LIVE_TRADING_HOST

    @property
    def is_alpaca_hosted(self) -> bool:
        host = endpoint_host(self.ALPACA_ENDPOINT)[0]
        return host == "alpaca.markets" or host.endswith(".alpaca.markets")

    @property
    def data_endpoint(self) -> str:
        if self.ALPACA_DATA_ENDPOINT:
            return self.ALPACA_DATA_ENDPOINT
        return ALPACA_DATA_URL if self.is_alpaca_hosted else self.ALPACA_ENDPOINT

    @property
    def stream_endpoint(self) -> str:
        if self.ALPACA_STREAM_ENDPOINT:
            return self.ALPACA_STREAM_ENDPOINT
        parsed = urlparse(self.ALPACA_ENDPOINT)
        scheme = "wss" if parsed.scheme == "https" else "ws"
        return f"{scheme}://{parsed.netloc}/stream"


def endpoint_host(url: str) -> tuple[str, int | None]:
    """(host, port) of a URL as a connection sees it: the host lowercased without trailing dots, the
    port explicit or the scheme's default (443 for https and wss, 80 for http and ws)."""
    parsed = urlparse(url)
    host = (parsed.hostname or "").rstrip(".").lower()
    try:
        port = parsed.port
    except ValueError:
        port = None
    if port is None:
        port = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parsed.scheme.lower())
    return host, port


class RedisSettings(_Settings):
    #: Without FL_REDIS_SENTINELS: where Redis is. With them: only its password, user, database and
    #: scheme (rediss:// for TLS) are used; the sentinels say which host and port the primary is.
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    #: Prefix of every key, stream, channel and queue this deployment owns.
    FL_NAMESPACE: str = Field(default="fl", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    #: A REDIS_URL without a password is refused unless its host is this machine (loopback) or this
    #: is true: whoever can write to Redis decides what the line does (docs/operations.md, "Threat model").
    #: With sentinels the same goes for a sentinel without FL_REDIS_SENTINEL_PASSWORD.
    FL_ALLOW_REDIS_WITHOUT_PASSWORD: bool = False
    #: Redis Sentinel (docs/operations.md, "Redis that fails over"): comma-separated host:port of the
    #: sentinels; empty = no Sentinel, REDIS_URL is the server.
    FL_REDIS_SENTINELS: str = ""
    #: The primary's name as the sentinels know it (`sentinel monitor <name> ...`); needed with sentinels.
    FL_REDIS_SENTINEL_MASTER: str = ""
    #: The sentinels' own password (their `requirepass`), if they have one.
    FL_REDIS_SENTINEL_PASSWORD: SecretStr | None = None
    #: With sentinels: how long a Redis command waits for a primary (through a failover) before it
    #: fails. Above the sentinels' down-after-milliseconds plus their failover's own few seconds.
    FL_REDIS_FAILOVER_SECONDS: float = Field(default=60.0, gt=0, le=600)

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if urlparse(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("FL_REDIS_SENTINELS")
    @classmethod
    def _sentinel_list(cls, value: str) -> str:
        parse_sentinels(value)  # raises ValueError with the bad item
        return value.strip()

    @field_validator("FL_REDIS_SENTINEL_MASTER")
    @classmethod
    def _master_name(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError(f"{value[:40]!r} is not a sentinel master name (letters, digits, . _ - only)")
        return value

    @model_validator(mode="after")
    def _sentinel_settings(self) -> RedisSettings:
        if self.FL_REDIS_SENTINEL_PASSWORD is not None:
            from shared import logs

            logs.register_secret(self.FL_REDIS_SENTINEL_PASSWORD.get_secret_value())
        if not self.FL_REDIS_SENTINELS:
            if self.FL_REDIS_SENTINEL_MASTER:
                raise ValueError("FL_REDIS_SENTINEL_MASTER: is set but FL_REDIS_SENTINELS is empty: list the "
                                 "sentinels (host:port,host:port,...) or unset it")
            return self
        if not self.FL_REDIS_SENTINEL_MASTER:
            raise ValueError("FL_REDIS_SENTINEL_MASTER: is not set: with FL_REDIS_SENTINELS it must name the "
                             "primary the sentinels monitor (their `sentinel monitor <name> ...` line)")
        if urlparse(self.REDIS_URL).scheme == "unix":
            raise ValueError("REDIS_URL: a unix:// socket cannot be used with FL_REDIS_SENTINELS (the sentinels "
                             "name a host and port); use redis://[:PASSWORD@]host/0, whose host is then not used")
        remote = [host for host, _port in self.sentinels if not is_loopback(host)]
        if remote and self.FL_REDIS_SENTINEL_PASSWORD is None and not self.FL_ALLOW_REDIS_WITHOUT_PASSWORD:
            raise ValueError(
                f"FL_REDIS_SENTINEL_PASSWORD: is not set and the sentinel {remote[0]} is not this machine: anyone "
                f"who reaches it can point the line at a Redis of their own; give the sentinels a password "
                f"(requirepass in sentinel.conf) and set it here, or set FL_ALLOW_REDIS_WITHOUT_PASSWORD=true")
        return self

    @model_validator(mode="after")
    def _password_unless_loopback(self) -> RedisSettings:
        from shared import logs

        password = redis_password(self.REDIS_URL)
        if password:
            logs.register_secret(password)
            return self
        parsed = urlparse(self.REDIS_URL)
        if self.FL_REDIS_SENTINELS:
            # The primary is wherever the sentinels say: it is this machine only if they all are.
            remote = next((host for host, _port in self.sentinels if not is_loopback(host)), None)
            if remote is None or self.FL_ALLOW_REDIS_WITHOUT_PASSWORD:
                return self
            raise ValueError(
                f"REDIS_URL: {logs.safe_url(self.REDIS_URL)} has no password and the sentinel {remote} is not "
                f"this machine, so neither is the primary it names: anyone who reaches it can run the line's "
                f"jobs; put the primary's password in the URL (redis://:PASSWORD@redis/0) or set "
                f"FL_ALLOW_REDIS_WITHOUT_PASSWORD=true")
        if parsed.scheme == "unix" or self.FL_ALLOW_REDIS_WITHOUT_PASSWORD or is_loopback(parsed.hostname):
            return self
        raise ValueError(
            f"REDIS_URL: {logs.safe_url(self.REDIS_URL)} has no password and {parsed.hostname} is not this "
            f"machine: anyone who reaches it can run the line's jobs; put the password in the URL "
            f"(redis://:PASSWORD@{parsed.hostname}:{parsed.port or 6379}/0) or set FL_ALLOW_REDIS_WITHOUT_PASSWORD=true"
        )

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The sentinels' (host, port), in the order given; empty without Sentinel."""
        return parse_sentinels(self.FL_REDIS_SENTINELS)

    @property
    def where(self) -> str:
        """Where the line's Redis is, for messages, never with a password: REDIS_URL, or the primary's
        name and its sentinels."""
        from shared import logs

        if not self.FL_REDIS_SENTINELS:
            return logs.safe_url(self.REDIS_URL)
        sentinels = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)
        return f"primary {self.FL_REDIS_SENTINEL_MASTER} via sentinels {sentinels}"


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` (an IPv6 host in brackets, `[::1]:26379`) as (host, port) pairs; a
    ValueError names the first item that is not host:port."""
    result: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})", item)
        port = int(match.group(2)) if match else 0
        if not match or not 1 <= port <= 65535:
            raise ValueError(f"{item[:60]!r} is not host:port (e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)")
        result.append((match.group(1).strip("[]"), port))
    if text.strip() and not result:
        raise ValueError(f"{text[:60]!r} lists no sentinel (host:port,host:port,...)")
    return result


class MetricsSettings(_Settings):
    """Prometheus `/metrics` of the long-running services (shared/metrics.py; docs/operations.md, "Metrics")."""

    #: Port of each service's `/metrics`; 0 = no metrics server (the default for local runs). Compose
    #: sets 9100: every container listens on its own 9100, Prometheus scrapes <service>:9100.
    FL_METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    #: Address the metrics server binds: loopback by default; compose sets 0.0.0.0 (the compose network only).
    FL_METRICS_ADDR: str = "127.0.0.1"


def redis_password(url: str) -> str | None:
    """The password a Redis URL carries (`redis://:pw@host`, `redis://user:pw@host` or `?password=pw`)."""
    parsed = urlparse(url)
    if parsed.password:
        return unquote(parsed.password)
    query = parse_qs(parsed.query).get("password")
    return query[0] if query and query[0] else None


def is_loopback(host: str | None) -> bool:
    """True for this machine: localhost, 127.0.0.0/8, ::1 (and no host at all, which redis-py reads as
    localhost)."""
    if not host:
        return True
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


class _BookSize(_Settings):
    #: The book's size: the ranker keeps this many signals; `slots` sizing gives each equity / this.
    FL_MAX_POSITIONS: int = Field(default=5, ge=1, le=500)


class RankerSettings(_BookSize):
    FL_SIGNALS_DIR: Path = Path("NIGHTLY_SCANNER/LOGS_QUICKSTRIKE")
    FL_SIGNALS_CSV: Path = Path("actionable_signals.csv")
    FL_MIN_BACKTEST_TRADES: int = Field(default=10, ge=0)
    FL_MAX_SCAN_AGE_HOURS: float = Field(default=36.0, gt=0)
    FL_ALLOW_BLACK_SHEEP: bool = False
    #: Comma-separated strategy names always treated as black sheep.
    FL_BLACK_SHEEP_STRATEGIES: str = ""
    #: Files larger than this are rejected unread (a scanner log is a few KB).
    FL_MAX_LOG_BYTES: int = Field(default=1_000_000, ge=1024)
    #: Secret shared by the ranker and the trader (docs/operations.md, "Threat model"). Set: the ranker
    #: signs the day's Redis list (HMAC-SHA256) and the trader refuses a list without a valid signature.
    #: Unset: nothing is signed or checked.
    FL_SIGNALS_HMAC_KEY: SecretStr | None = None

    @field_validator("FL_SIGNALS_HMAC_KEY")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from shared import logs

            logs.register_secret(value.get_secret_value())
            if len(value.get_secret_value()) < 32:
                raise ValueError("must be at least 32 characters (e.g. the output of `openssl rand -hex 32`)")
        return value

    @property
    def black_sheep_strategies(self) -> frozenset[str]:
        return frozenset(s.strip().lower() for s in self.FL_BLACK_SHEEP_STRATEGIES.split(",") if s.strip())


class TraderSettings(_BookSize):
    """Sizing and entry sanity (docs/trader.md)."""

    #: Percent of buying power kept back so Alpaca's buying-power cushion never refuses the last order.
    FL_CASH_BUFFER_PCT: Decimal = Field(default=Decimal("3"), ge=0, lt=100)
    #: Smallest entry worth sending, in dollars (Alpaca's notional minimum is $1).
    FL_MIN_ORDER_NOTIONAL: Decimal = Field(default=Decimal("1"), ge=1)
    #: `slots`: each entry gets equity / FL_MAX_POSITIONS, open positions occupy their slots;
    #: `signals`: the usable cash split across the day's signals (the seed's rule).
    FL_SIZING: Literal["slots", "signals"] = "slots"
    #: No position above this percent of equity (an addition counts with what is held).
    FL_MAX_POSITION_PCT: Decimal = Field(default=Decimal("25"), gt=0, le=100)
    #: Give the share of a signal skipped for price, volume, drift or cooldown to the others
    #: (`signals` sizing only; a slot is never larger than equity / FL_MAX_POSITIONS).
    FL_REALLOCATE_SKIPPED: bool = False
    #: No entry below this share price, in dollars.
    FL_MIN_PRICE: Decimal = Field(default=Decimal("2"), ge=0)
    #: No entry below this average daily dollar volume over the last 20 sessions (0 turns it off).
    FL_MIN_DOLLAR_VOLUME: Decimal = Field(default=Decimal("1000000"), ge=0)
    #: No entry when the live price is more than this percent away from the signal's price.
    FL_MAX_SIGNAL_DRIFT_PCT: Decimal = Field(default=Decimal("10"), gt=0)
    #: Buy more of a symbol the line already holds (within FL_MAX_POSITION_PCT).
    FL_ALLOW_ADDING: bool = False
    #: No re-entry in a symbol for this many days after a stop_loss exit (0 turns it off).
    FL_COOLDOWN_DAYS: int = Field(default=5, ge=0, le=365)
    #: At most this many new entries per trading day.
    FL_MAX_ENTRIES_PER_DAY: int = Field(default=5, ge=0, le=500)


class RiskSettings(_Settings):
    """Account-level limits, checked before every entry batch and on every manage tick."""

    #: Halt entries when the day's P/L (realized + unrealized since the previous close) reaches this
    #: loss, in percent of the previous close's equity.
    FL_DAILY_LOSS_LIMIT_PCT: Decimal = Field(default=Decimal("3"), gt=0, le=100)
    #: Halt entries when equity falls this far below the highest equity the line has recorded.
    FL_MAX_DRAWDOWN_PCT: Decimal = Field(default=Decimal("15"), gt=0, le=100)
    #: When a limit trips, also sell every position the line manages through the safe exit.
    FL_FLATTEN_ON_LIMIT: bool = False


class ExitSettings(_Settings):
    """Protection and soft-exit thresholds, in percent of the average entry price."""

    FL_STOP_LOSS_PCT: Decimal = Field(default=Decimal("5"), gt=0, lt=100)
    FL_TAKE_PROFIT_PCT: Decimal = Field(default=Decimal("20"), gt=0)
    FL_BREAKEVEN_ARM_PCT: Decimal = Field(default=Decimal("1.5"), gt=0)
    FL_TRAILING_ARM_PCT: Decimal = Field(default=Decimal("2"), gt=0)
    FL_TRAILING_GIVEBACK_PCT: Decimal = Field(default=Decimal("50"), gt=0, lt=100)
    FL_TIME_STOP_DAYS: int = Field(default=7, ge=1)
    #: Long positions the line did not enter (docs/operations.md, "Positions the line did not make"):
    #: `protect` puts a stop FL_STOP_LOSS_PCT below the price when first seen (no target, no soft
    #: exits, never an immediate sale); `ignore` leaves them and their orders alone.
    FL_FOREIGN_POSITIONS: Literal["protect", "ignore"] = "protect"


S = TypeVar("S", bound=_Settings)


def load(settings_cls: type[S], **overrides: object) -> S:
    """Load a settings group from the environment and the .env file; ConfigError on any problem (a line
    of the file that is not `NAME=value` included); a warning for a FL_* or ALPACA_* name that is no
    setting (once per process, naming the closest setting)."""
    path = env_file()
    if "FL_ENV_FILE" in os.environ and not Path(path).is_file():
        raise ConfigError(f"FL_ENV_FILE: no such file: {path}")
    file = path if Path(path).is_file() else None
    names = read_env_file(file) if file else {}
    warn_unknown_names(names, file)
    try:
        return settings_cls(_env_file=file, **overrides)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


#: Every production module that defines a settings group (`factoryline config` validates them all;
#: unknown names are looked up among their fields).
SETTINGS_MODULES = ("shared.config", "services.streamer.settings", "services.manager.settings",
                    "services.reporter.settings", "services.scheduler.settings", "services.manager.portfolio",
                    "services.scanner.settings", "services.notifier.settings", "shared.linebacktest")
#: Optional packages (the simulator: `pip install 'factoryline[sim]'`) add their settings modules
#: through this entry-point group, so production code never imports them by name; one that is
#: declared but not installed (an image without it) is left out.
SETTINGS_ENTRY_POINTS = "factoryline.settings"
#: FL_* names read outside the settings groups (the last three by docker-compose.yml only: host ports).
OTHER_NAMES = frozenset({"FL_ENV_FILE", "FL_TEST_REDIS_URL", "FL_REDIS_PORT", "FL_DASHBOARD_PORT",
                         "FL_PROMETHEUS_PORT"})


def _optional_settings_modules() -> list:
    from importlib.metadata import entry_points

    modules = []
    for point in sorted(entry_points(group=SETTINGS_ENTRY_POINTS), key=lambda p: p.name):
        try:
            modules.append(importlib.import_module(point.value))
        except ImportError:
            log.debug("settings of %s are not installed (%s)", point.name, point.value)
    return modules


def all_groups() -> list[type[_Settings]]:
    """Every settings group of the project, each once, in module order (the optional packages' last)."""
    groups: list[type[_Settings]] = []
    for module in [*map(importlib.import_module, SETTINGS_MODULES), *_optional_settings_modules()]:
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, _Settings) and value is not _Settings
                    and not value.__name__.startswith("_") and value not in groups):
                groups.append(value)
    return groups


def known_names() -> frozenset[str]:
    return frozenset(name for group in all_groups() for name in group.model_fields) | OTHER_NAMES


def read_env_file(path: str) -> dict[str, int]:
    """The names a .env file sets, with their line numbers; a line python-dotenv cannot read (it
    would only warn and skip it) is a ConfigError naming the file and the line. Values are never shown."""
    from dotenv.parser import parse_stream

    try:
        with open(path, encoding="utf-8") as stream:
            bindings = list(parse_stream(stream))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({type(exc).__name__})") from None
    names: dict[str, int] = {}
    for binding in bindings:
        if binding.error:
            raise ConfigError(f"{path} line {binding.original.line}: not a setting line: expected NAME=value "
                              f"(a comment starts with #; an opened quote must be closed on the same line)")
        if binding.key:
            names.setdefault(binding.key, binding.original.line)
    return names


_warned: set[tuple[str, str]] = set()


def warn_unknown_names(file_names: dict[str, int], file: str | None) -> None:
    """Log a warning for each FL_* or ALPACA_* name set in the file or the environment that is not a
    setting, with the closest setting's name (a typo would otherwise be silently ignored)."""
    candidates = [(f"{file} line {line}", name) for name, line in file_names.items()]
    candidates += [("environment", name) for name, value in os.environ.items() if value]
    candidates = [(where, name) for where, name in candidates
                  if name.startswith(("FL_", "ALPACA_")) and (where, name) not in _warned]
    if not candidates:
        return
    known = known_names()
    for where, name in candidates:
        _warned.add((where, name))
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see .env.example"
        log.warning("%s: %s is not a Factory Line setting and is ignored (%s)", where, name, hint)


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    names = [".".join(str(p) for p in e.get("loc", ())) for e in errors]
    if all(e.get("type") == "missing" for e in errors):
        return f"{', '.join(names)}: {'is' if len(names) == 1 else 'are'} not set (put {'it' if len(names) == 1 else 'them'} in .env or the environment; see .env.example)"
    first = next(e for e in errors if e.get("type") != "missing")
    name = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", "is invalid").removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{name}: {message}{more}" if name else f"{message}{more}"
