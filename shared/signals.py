"""Scanner signals: parse one nightly-scanner log into a `Signal` or a typed `Rejection`, and read and
write the ranked list (`actionable_signals.csv`, today's Redis key).

The log format is defined in docs/signals.md. Parsing never raises on a file's contents: anything
that is not exactly a well-formed log becomes a `Rejection` naming the reason. Whether a valid
signal is *actionable* (state, verdict, age, black sheep, trade count) is decided by
`shared.ranking`, not here.

The trader reads the day's list through `load_for_trading`, which trusts nothing it reads: it checks
the list's signature when FL_SIGNALS_HMAC_KEY is set, then re-applies the ranker's own rules
(`shared.ranking.recheck`) and drops, with a reason, every signal that fails one.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from pydantic import Field, SecretStr, ValidationError, model_validator

from shared import config, logs, userfiles
from shared.bus import Keys
from shared.config import RankerSettings
from shared.errors import InputError
from shared.models import AwareDatetime, Model

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TICKER_PATTERN = r"^[A-Z][A-Z0-9.]{0,9}$"
#: Starts with a letter or digit, so a strategy name can never be a spreadsheet formula (=, +, -, @).
STRATEGY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.+()/-]{0,63}$"
LOG_NAME = re.compile(r"^(IN_TRADE|WATCHING|NO_SIGNAL|EXITED)_live_qs_([A-Z][A-Z0-9.]{0,9})\.log$")
CSV_COLUMNS = (
    "rank", "ticker", "strategy", "win_rate", "profit_factor", "trades", "avg_return",
    "signal_date", "signal_price", "scanned_at", "source_file",
)
#: Today's list outlives a long weekend, so a late look on Tuesday still finds Friday's ranking.
REDIS_TTL_SECONDS = 4 * 24 * 3600
#: actionable_signals.csv holds a few rows; a file this large is not one (refused, never read whole).
MAX_SIGNALS_CSV_BYTES = 10 * 1024 * 1024
#: Prefix of the day's list signature (the value of `<signals key>:hmac`).
SIGNATURE_SCHEME = "hmac-sha256:"

_TICKER = re.compile(TICKER_PATTERN)
_STRATEGY = re.compile(STRATEGY_PATTERN)
# Plain decimal notation only: no exponents, NaN, Infinity, underscores or non-ASCII digits,
# which Decimal() would otherwise accept.
_NUMBER = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MAX_VALUE_CHARS = 40
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_UTF8_BOM = b"\xef\xbb\xbf"


class ScanState(StrEnum):
    IN_TRADE = "IN_TRADE"
    WATCHING = "WATCHING"
    NO_SIGNAL = "NO_SIGNAL"
    EXITED = "EXITED"


class Verdict(StrEnum):
    PROFITABLE = "PROFITABLE"
    UNPROFITABLE = "UNPROFITABLE"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


class RejectReason(StrEnum):
    """Why a log is not on the list. The value is the reason a person reads in the table."""

    # The file itself
    BAD_FILE_NAME = "file name not {STATE}_live_qs_{TICKER}.log"
    NOT_A_FILE = "not a regular file"
    UNREADABLE = "unreadable"
    TOO_LARGE = "too large"
    EMPTY = "empty"
    BINARY = "binary content"
    NOT_UTF8 = "not UTF-8 text"
    # Its contents
    MISSING_KEYS = "missing keys"
    DUPLICATE_KEY = "duplicate key"
    TICKER_MISMATCH = "ticker does not match file name"
    STATUS_MISMATCH = "status does not match file name"
    INVALID_NUMBER = "unparsable number"
    OUT_OF_RANGE = "value out of range"
    INVALID_DATE = "unparsable date or time"
    NAIVE_TIMESTAMP = "scanned_at has no UTC offset"
    INVALID_VALUE = "invalid value"
    # The ranking rules (shared.ranking)
    SUPERSEDED = "superseded by a newer scan of the ticker"
    CONFLICTING_SCANS = "conflicting scans of the ticker"
    NOT_IN_TRADE = "not IN_TRADE"
    NOT_PROFITABLE = "verdict not PROFITABLE"
    BLACK_SHEEP = "black-sheep strategy"
    STALE_SCAN = "stale scan"
    FUTURE_SCAN = "scanned_at in the future"
    TOO_FEW_TRADES = "too few backtest trades"
    BEYOND_MAX_POSITIONS = "beyond max positions"
    # The trader's re-check of a list it reads (load_for_trading)
    MALFORMED = "malformed signal"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A log that is not on the list, with the reason and a detail a person can act on."""

    source_file: str
    reason: RejectReason
    detail: str
    ticker: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"source_file": self.source_file, "ticker": self.ticker, "reason": self.reason.value,
                "detail": self.detail}


class Signal(Model):
    """One scanner signal, validated. Its JSON form is version-tolerant: unknown fields are ignored
    and `schema_version` tells a reader which writer produced it."""

    schema_version: int = SCHEMA_VERSION
    ticker: str = Field(pattern=TICKER_PATTERN)
    strategy: str = Field(pattern=STRATEGY_PATTERN)
    state: ScanState
    verdict: Verdict
    #: Backtest win rate as a fraction, 0 to 1 (0.635 is 63.5%).
    win_rate: Decimal = Field(ge=0, le=1)
    #: Backtest trade count.
    trades: int = Field(ge=0)
    profit_factor: Decimal = Field(ge=0)
    #: Mean return per backtest trade as a fraction (0.012 is +1.2%); a long trade loses at most 100%.
    avg_return: Decimal = Field(ge=-1)
    signal_date: date | None = None
    signal_price: Decimal | None = Field(default=None, gt=0)
    scanned_at: AwareDatetime
    black_sheep: bool = False
    #: The log's file name (never its full path).
    source_file: str = ""
    #: 1 = best; set on the ranked list only.
    rank: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _in_trade_has_an_entry(self) -> Signal:
        if self.state is ScanState.IN_TRADE and (self.signal_date is None or self.signal_price is None):
            raise ValueError("an IN_TRADE signal needs signal_date and signal_price")
        return self


# ---------------------------------------------------------------------------------------------
# Parsing one log


def parse_log_name(name: str) -> tuple[ScanState, str] | None:
    """(STATE, TICKER) from `{STATE}_live_qs_{TICKER}.log`, or None if the name does not match."""
    match = LOG_NAME.match(name)
    return (ScanState(match.group(1)), match.group(2)) if match else None


def is_log_name(name: str) -> bool:
    """Files ending in .log (any case) are scanner logs; anything else in the folder is ignored."""
    return name.lower().endswith(".log")


def parse_log(path: str | os.PathLike[str], settings: RankerSettings) -> Signal | Rejection:
    """Read and parse one scanner log. Never raises for anything about the file: a directory, a
    FIFO, a symlink loop, a missing permission or a 50 MB file are all rejections. Only the first
    FL_MAX_LOG_BYTES + 1 bytes are ever read."""
    name = os.path.basename(os.fspath(path))
    parsed_name = parse_log_name(name)
    if parsed_name is None:
        return Rejection(name, RejectReason.BAD_FILE_NAME, "expected e.g. IN_TRADE_live_qs_AAPL.log")
    ticker = parsed_name[1]
    max_bytes = settings.FL_MAX_LOG_BYTES
    try:
        info = os.stat(path)  # follows symlinks: a link to a good log is read, a loop is an error
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            return Rejection(name, RejectReason.NOT_A_FILE, f"{kind}", ticker)
        if info.st_size > max_bytes:
            return Rejection(name, RejectReason.TOO_LARGE,
                             f"{info.st_size} bytes > FL_MAX_LOG_BYTES={max_bytes}", ticker)
        # O_NONBLOCK: if the file was swapped for a FIFO after the stat, opening must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            raw = os.read(fd, max_bytes + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        return Rejection(name, RejectReason.UNREADABLE, _os_error(exc), ticker)
    if len(raw) > max_bytes:  # grew between stat and read
        return Rejection(name, RejectReason.TOO_LARGE, f"more than FL_MAX_LOG_BYTES={max_bytes} bytes", ticker)
    return parse_log_bytes(name, raw)


def _os_error(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "vanished or a dangling symlink"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or type(exc).__name__


class _Reject(Exception):
    def __init__(self, reason: RejectReason, detail: str):
        self.reason = reason
        self.detail = detail


_REQUIRED = ("ticker", "strategy", "status", "verdict", "win_rate", "trades", "profit_factor",
             "avg_return", "scanned_at")
_ENTRY = ("signal_date", "signal_price")
_KNOWN = frozenset(_REQUIRED + _ENTRY + ("black_sheep",))


def parse_log_bytes(name: str, raw: bytes) -> Signal | Rejection:
    """Parse a log's bytes (pure; never raises). `name` is the file name, which carries the
    STATE and TICKER the contents must agree with."""
    parsed_name = parse_log_name(name)
    if parsed_name is None:
        return Rejection(name, RejectReason.BAD_FILE_NAME, "expected e.g. IN_TRADE_live_qs_AAPL.log")
    state, ticker = parsed_name
    try:
        return _parse(name, state, ticker, raw)
    except _Reject as rejected:
        return Rejection(name, rejected.reason, rejected.detail, ticker)


def _parse(name: str, state: ScanState, ticker: str, raw: bytes) -> Signal:
    if not raw.strip():
        raise _Reject(RejectReason.EMPTY, "no content" if not raw else "only whitespace")
    if b"\x00" in raw:
        raise _Reject(RejectReason.BINARY, "contains NUL bytes")
    try:
        text = raw.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(RejectReason.NOT_UTF8, f"undecodable byte at offset {exc.start}") from None

    values: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key = key.strip().lower()
        if key not in _KNOWN:
            continue
        if key in values:
            raise _Reject(RejectReason.DUPLICATE_KEY, f"{key} appears more than once")
        values[key] = value.strip()

    # A key with an empty value says nothing: it counts as missing.
    missing = [k for k in _REQUIRED if not values.get(k)]
    if state is ScanState.IN_TRADE:
        missing += [k for k in _ENTRY if not values.get(k)]
    if missing:
        raise _Reject(RejectReason.MISSING_KEYS, ", ".join(missing))

    if values["ticker"] != ticker:
        raise _Reject(RejectReason.TICKER_MISMATCH, f"ticker {_show(values['ticker'])} in a file named for {ticker}")
    status = _enum(ScanState, "status", values["status"])
    if status is not state:
        raise _Reject(RejectReason.STATUS_MISMATCH, f"status {status.value} in a file named {state.value}_...")
    verdict = _enum(Verdict, "verdict", values["verdict"])
    strategy = values["strategy"]
    if not _STRATEGY.match(strategy):
        raise _Reject(RejectReason.INVALID_VALUE, f"strategy {_show(strategy)} is not a strategy name")

    win_rate = _fraction("win_rate", values["win_rate"])
    if not 0 <= win_rate <= 1:
        raise _Reject(RejectReason.OUT_OF_RANGE, f"win_rate {_show(values['win_rate'])} is not between 0% and 100%")
    trades = _count("trades", values["trades"])
    profit_factor = _number("profit_factor", values["profit_factor"])
    if profit_factor < 0:
        raise _Reject(RejectReason.OUT_OF_RANGE, f"profit_factor {_show(values['profit_factor'])} is negative")
    avg_return = _fraction("avg_return", values["avg_return"])
    if avg_return < -1:
        raise _Reject(RejectReason.OUT_OF_RANGE, f"avg_return {_show(values['avg_return'])} is below -100%")

    signal_date = _date("signal_date", values["signal_date"]) if values.get("signal_date") else None
    signal_price = None
    if values.get("signal_price"):
        signal_price = _number("signal_price", values["signal_price"])
        if signal_price <= 0:
            raise _Reject(RejectReason.OUT_OF_RANGE, f"signal_price {_show(values['signal_price'])} is not positive")
    scanned_at = _timestamp(values["scanned_at"])
    black_sheep = _flag("black_sheep", values.get("black_sheep", "false"))

    try:
        return Signal(
            ticker=ticker, strategy=strategy, state=state, verdict=verdict, win_rate=win_rate, trades=trades,
            profit_factor=profit_factor, avg_return=avg_return, signal_date=signal_date,
            signal_price=signal_price, scanned_at=scanned_at, black_sheep=black_sheep, source_file=name,
        )
    except ValidationError as exc:  # a rule the checks above missed: still a rejection, never a crash
        raise _Reject(RejectReason.INVALID_VALUE, _validation_line(exc)) from None


def _show(value: str) -> str:
    return repr(value if len(value) <= 30 else value[:27] + "...")


def _enum(enum: type[StrEnum], key: str, value: str) -> Any:
    try:
        return enum(value.upper())
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise _Reject(RejectReason.INVALID_VALUE, f"{key} {_show(value)} is not one of {allowed}") from None


def _number(key: str, value: str) -> Decimal:
    if len(value) > _MAX_VALUE_CHARS or not _NUMBER.match(value):
        raise _Reject(RejectReason.INVALID_NUMBER, f"{key} {_show(value)} is not a decimal number")
    return Decimal(value)


def _fraction(key: str, value: str) -> Decimal:
    """`63.5%` is 0.635; a bare number is already a fraction."""
    if value.endswith("%"):
        return _number(key, value[:-1].rstrip()).scaleb(-2)
    return _number(key, value)


def _count(key: str, value: str) -> int:
    if len(value) > _MAX_VALUE_CHARS or not _INTEGER.match(value):
        raise _Reject(RejectReason.INVALID_NUMBER, f"{key} {_show(value)} is not a whole number")
    count = int(value)
    if not 0 <= count <= 10**9:
        raise _Reject(RejectReason.OUT_OF_RANGE, f"{key} {_show(value)} is not a count")
    return count


def _date(key: str, value: str) -> date:
    try:
        if not _DATE.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise _Reject(RejectReason.INVALID_DATE, f"{key} {_show(value)} is not a YYYY-MM-DD date") from None


def _timestamp(value: str) -> datetime:
    try:
        if len(value) > _MAX_VALUE_CHARS or not value[:4].isascii() or not value[:4].isdigit():
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Reject(RejectReason.INVALID_DATE, f"scanned_at {_show(value)} is not an ISO 8601 time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise _Reject(RejectReason.NAIVE_TIMESTAMP, f"scanned_at {_show(value)} needs an offset such as -05:00 or Z")
    return moment


def _flag(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Reject(RejectReason.INVALID_VALUE, f"{key} {_show(value)} is not true or false")


def _validation_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = first.get("msg", "is invalid").removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


# ---------------------------------------------------------------------------------------------
# The folder


def read_logs(folder: str | os.PathLike[str], settings: RankerSettings) -> list[Signal | Rejection]:
    """Parse every `*.log` in the folder (not its subfolders), in file-name order. Files not
    ending in .log are ignored; a missing or unlistable folder is an InputError."""
    folder = os.fspath(folder)
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries if is_log_name(entry.name))
    except FileNotFoundError:
        raise InputError(f"signals folder not found: {folder} (set FL_SIGNALS_DIR or --dir)") from None
    except NotADirectoryError:
        raise InputError(f"signals folder is not a folder: {folder}") from None
    except OSError as exc:
        raise InputError(f"signals folder cannot be listed: {folder}: {exc.strerror}") from None
    return [parse_log(os.path.join(folder, name), settings) for name in names]


# ---------------------------------------------------------------------------------------------
# actionable_signals.csv


def csv_row(signal: Signal) -> list[str]:
    return [
        str(signal.rank or ""),
        signal.ticker,
        signal.strategy,
        str(signal.win_rate.quantize(Decimal("0.0001"))),
        str(signal.profit_factor),
        str(signal.trades),
        str(signal.avg_return),
        signal.signal_date.isoformat() if signal.signal_date else "",
        str(signal.signal_price) if signal.signal_price is not None else "",
        signal.scanned_at.isoformat(),
        signal.source_file,
    ]


def write_signals_csv(path: str | os.PathLike[str], ranked: Iterable[Signal]) -> None:
    """Write the ranked list atomically: a reader sees the old file or the new one, never half."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {target}: folder {folder} does not exist")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_row(signal) for signal in ranked)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_signals_csv(path: str | os.PathLike[str]) -> list[Signal]:
    """The ranked list from actionable_signals.csv, validated; a bad row is an InputError naming its
    line number (the header is line 1). Every row is an IN_TRADE, PROFITABLE signal.

    Only a regular file is read (a directory, FIFO or device such as /dev/zero is refused at once), at
    most MAX_SIGNALS_CSV_BYTES of it, as UTF-8 with or without a byte-order mark (`shared.userfiles`)."""
    target = Path(path)
    try:
        with userfiles.open_text(target, max_bytes=MAX_SIGNALS_CSV_BYTES, what="signals file") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{target}: line 1: missing columns {', '.join(missing)}")
            signals: list[Signal] = []
            for row in reader:
                line = reader.line_num
                if None in row or any(row[c] is None for c in CSV_COLUMNS):
                    raise InputError(f"{target}: line {line}: wrong number of fields")
                try:
                    signals.append(Signal(
                        state=ScanState.IN_TRADE, verdict=Verdict.PROFITABLE,
                        **{c: row[c] for c in CSV_COLUMNS},
                    ))
                except ValidationError as exc:
                    raise InputError(f"{target}: line {line}: {_validation_line(exc)}") from None
    except UnicodeDecodeError:
        raise InputError(f"{target}: not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"{target}: {exc}") from None
    tickers = [s.ticker for s in signals]
    if len(set(tickers)) != len(tickers):
        raise InputError(f"{target}: a ticker appears on more than one row")
    return signals


# ---------------------------------------------------------------------------------------------
# Redis


def save_signals_to_redis(client: redis.Redis, keys: Keys, day: date, ranked: Iterable[Signal],
                          ttl_seconds: int = REDIS_TTL_SECONDS, *,
                          hmac_key: SecretStr | str | None = None) -> str:
    """Store the day's ranked list (an empty list too: "ranked, nothing to buy" differs from
    "not ranked yet"). Returns the key.

    With `hmac_key` (FL_SIGNALS_HMAC_KEY) the list's signature is stored beside it under
    `keys.signals_signature(day)`; without, any old signature is deleted. Both in one transaction, so a
    reader never sees a list with the signature of another."""
    key = keys.signals(day)
    payload = json.dumps([signal.model_dump(mode="json") for signal in ranked])
    pipe = client.pipeline(transaction=True)
    pipe.set(key, payload, ex=ttl_seconds)
    if hmac_key is not None:
        pipe.set(keys.signals_signature(day), sign_list(hmac_key, day, json.loads(payload)), ex=ttl_seconds)
    else:
        pipe.delete(keys.signals_signature(day))
    pipe.execute()
    return key




def canonical_list(day: date, items: list) -> bytes:
    """What is signed: the day and the list as JSON with sorted keys, no spaces, ASCII only. `items`
    is the list as parsed from its JSON (decimals are strings there, so no float is ever signed).
    ValueError for what JSON cannot carry exactly (NaN, infinities)."""
    return json.dumps({"day": day.isoformat(), "signals": items}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False).encode("ascii")


def sign_list(hmac_key: SecretStr | str, day: date, items: list) -> str:
    """`hmac-sha256:<64 hex digits>`: HMAC-SHA256 of `canonical_list(day, items)` under the key."""
    secret = hmac_key.get_secret_value() if isinstance(hmac_key, SecretStr) else hmac_key
    digest = hmac.new(secret.encode("utf-8"), canonical_list(day, items), hashlib.sha256).hexdigest()
    return SIGNATURE_SCHEME + digest


def load_signals_from_redis(client: redis.Redis, keys: Keys, day: date) -> list[Signal] | None:
    """The day's ranked list, validated, or None if the ranker has not written one."""
    key = keys.signals(day)
    payload = client.get(key)
    if payload is None:
        return None
    try:
        items = json.loads(payload)
        if not isinstance(items, list):
            raise InputError(f"Redis key {key}: expected a JSON list")
        return [Signal.model_validate(item) for item in items]
    except json.JSONDecodeError as exc:
        raise InputError(f"Redis key {key}: not JSON ({exc.msg})") from None
    except ValidationError as exc:
        raise InputError(f"Redis key {key}: {_validation_line(exc)}") from None


# ---------------------------------------------------------------------------------------------
# The trader's reading of the day's list


@dataclass(frozen=True, slots=True)
class TradeList:
    """The day's list as the trader may act on it (`load_for_trading`)."""

    #: The signals that pass the ranker's rules, best first, ranked 1..n; None when the day has no
    #: list in Redis (never ranked).
    signals: list[Signal] | None
    #: Where the list was read: the Redis key, or the CSV path.
    source: str
    #: Every signal read that fails a rule, with its reason.
    dropped: tuple[Rejection, ...] = ()
    #: Set when the whole list is refused (FL_SIGNALS_HMAC_KEY is set and the signature is missing or
    #: wrong): nothing may be bought. `signals` is then empty.
    refused: str | None = None

    def dropped_as_dicts(self) -> list[dict[str, str | None]]:
        return [rejection.as_dict() for rejection in self.dropped]


def load_for_trading(
    client: redis.Redis,
    keys: Keys,
    day: date,
    now: datetime,
    *,
    csv_path: str | os.PathLike[str] | None = None,
    settings: RankerSettings | None = None,
) -> TradeList:
    """The day's list for the trader, checked as if it came from anyone.

    Read from `csv_path` when given (`read_signals_csv`), else from the day's Redis key. With
    FL_SIGNALS_HMAC_KEY set, a Redis list whose signature is missing or does not match is refused
    whole (`refused`, one ERROR log line). Then every signal goes through the ranker's own rules at
    `now` (`shared.ranking.recheck`: one scan per ticker; IN_TRADE; PROFITABLE; no black sheep unless
    allowed; scanned_at neither in the future nor older than FL_MAX_SCAN_AGE_HOURS; at least
    FL_MIN_BACKTEST_TRADES; the list's best-ranked FL_MAX_POSITIONS). A Redis item that is not
    a valid signal (a malformed ticker, a win rate outside 0..1, ...) is dropped as `malformed signal`;
    a CSV with a bad row is refused whole (InputError naming the line), as `read_signals_csv` does.
    Each dropped signal is logged at WARNING with its reason. `settings` default: the environment's."""
    from shared import ranking  # shared.ranking imports this module

    settings = settings if settings is not None else config.load(RankerSettings)
    read: list[Signal | Rejection]
    if csv_path:
        source = os.fspath(csv_path)
        read = list(read_signals_csv(csv_path))
    else:
        source = keys.signals(day)
        payload, signature = client.mget(source, keys.signals_signature(day))
        if payload is None:
            return TradeList(None, source)
        items = _json_list(source, payload)
        if settings.FL_SIGNALS_HMAC_KEY is not None:
            refusal = _signature_problem(settings.FL_SIGNALS_HMAC_KEY, day, items, signature, source)
            if refusal is not None:
                logs.event(log, "signals_refused", level=logging.ERROR, source=source, reason=refusal)
                return TradeList([], source, refused=refusal)
        read = [_list_item(source, index, item) for index, item in enumerate(items, 1)]

    result = ranking.recheck(read, settings, now)
    for rejection in result.rejected:
        logs.event(log, "signal_dropped", level=logging.WARNING, symbol=rejection.ticker,
                   reason=rejection.reason.value, detail=rejection.detail, file=rejection.source_file or None,
                   source=source)
    logs.event(log, "signals_checked", source=source, read=len(read), kept=len(result.kept),
               dropped=len(result.rejected))
    return TradeList(list(result.kept), source, result.rejected)


def _json_list(key: str, payload: str | bytes) -> list:
    try:
        items = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"Redis key {key}: not JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(items, list):
        raise InputError(f"Redis key {key}: expected a JSON list")
    return items


def _signature_problem(hmac_key: SecretStr, day: date, items: list, signature: str | bytes | None,
                       key: str) -> str | None:
    """None when `signature` is the list's; else why the list is refused."""
    if signature is None:
        return (f"{key} is not signed but FL_SIGNALS_HMAC_KEY is set: nothing is bought "
                "(was the ranker run without the key?)")
    if isinstance(signature, bytes):
        signature = signature.decode("utf-8", "replace")
    try:
        expected = sign_list(hmac_key, day, items)
    except ValueError:  # NaN or an infinity: nothing the ranker writes, so not what it signed
        expected = ""
    if not expected or not hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii")):
        return (f"{key}: the signature does not match the list (altered, or signed with another "
                "FL_SIGNALS_HMAC_KEY): nothing is bought")
    return None


def _list_item(key: str, index: int, item: object) -> Signal | Rejection:
    """One item of a Redis list: a Signal, or a `malformed signal` rejection saying which rule."""
    try:
        return Signal.model_validate(item)
    except ValidationError as exc:
        fields = item if isinstance(item, dict) else {}
        ticker = fields.get("ticker")
        if isinstance(ticker, str):
            ticker = ticker if _TICKER.match(ticker) else _show(ticker)
        else:
            ticker = None
        name = fields.get("source_file")
        name = name if isinstance(name, str) and LOG_NAME.match(name) else ""
        return Rejection(name, RejectReason.MALFORMED, f"item {index} of {key}: {_validation_line(exc)}", ticker)
