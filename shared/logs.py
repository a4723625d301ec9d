"""Structured logs: one event a line, `key=value`, carrying symbol and client order id where
they apply, and never a secret.

Every registered secret (the broker keys, the Redis password, the signals key...) is masked wherever
text leaves the process through this module: any run of 8 or more of its characters (a truncated or
split copy as much as the whole value) becomes `***`, in every log record of every logger at every
level (messages, arguments, exception text: `setup` and `register_secret` install a record factory),
in uncaught exceptions, in what `redact`/`redact_data` are given (RQ job data and results, error
lines), and printed URLs show no password (`safe_url`). Third-party loggers that echo wire frames
(websockets, urllib3, aiohttp...) never log below INFO, whatever `--log-level` says.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

#: A fragment of a secret this long or longer is a leak; shorter secrets are masked whole.
FRAGMENT = 8
#: Loggers that would print frames, headers or bodies at DEBUG: kept at INFO at most.
WIRE_LOGGERS = ("websockets", "urllib3", "aiohttp", "requests", "httpx", "httpcore", "hpack")

_SECRETS: set[str] = set()
#: Secrets masked only as a whole (a notification URL: its 8-character fragments, `https://` or
#: `127.0.0.`, are no secret; its secret parts are registered on their own, by fragments).
_WHOLE_ONLY: set[str] = set()
_lock = threading.Lock()
_fragments: re.Pattern[str] | None = None
_whole: re.Pattern[str] | None = None


def register_secret(value: str, *, fragments: bool = True) -> None:
    """Mask `value` (4 characters or more) from now on, with every 8-character fragment of it
    (`fragments=False`: only the whole value, for a string whose secret parts are registered apart)."""
    global _fragments, _whole
    if not value or len(value) < 4 or value in _SECRETS or (not fragments and value in _WHOLE_ONLY):
        return
    with _lock:
        (_SECRETS if fragments else _WHOLE_ONLY).add(value)
        windows = {s[i:i + FRAGMENT] for s in _SECRETS if len(s) >= FRAGMENT for i in range(len(s) - FRAGMENT + 1)}
        short = sorted([s for s in _SECRETS if len(s) < FRAGMENT] + list(_WHOLE_ONLY), key=len, reverse=True)
        # A zero-width look-ahead matches at every position where a fragment starts, overlaps included.
        _fragments = re.compile("(?=(?:" + "|".join(map(re.escape, sorted(windows))) + "))") if windows else None
        _whole = re.compile("|".join(map(re.escape, short))) if short else None
    _install_record_factory()


def redact(text: str) -> str:
    """`text` with every registered secret, and every 8-character fragment of one, as `***`."""
    fragments, whole = _fragments, _whole
    if not text or (fragments is None and whole is None):
        return text
    spans: list[tuple[int, int]] = []
    if fragments is not None:
        spans += [(m.start(), m.start() + FRAGMENT) for m in fragments.finditer(text)]
    if whole is not None:
        spans += [m.span() for m in whole.finditer(text)]
    if not spans:
        return text
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], "***"]
        at = end
    out.append(text[at:])
    return "".join(out)


def redact_data(value: object) -> object:
    """A JSON-like value (dicts, lists, strings...) with `redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def safe_url(url: str) -> str:
    """`url` as it may be printed: a password (`redis://:pw@host`, `?password=pw`) shows as `***`."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            login, _, host = netloc.rpartition("@")
            user = login.split(":", 1)[0]
            netloc = f"{user}:***@{host}"
        query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
        return redact(urlunsplit(parts._replace(netloc=netloc, query=query)))
    except ValueError:
        return "(unreadable URL)"


def _fmt(value: object) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields = getattr(record, "fields", {})
        parts = [ts, record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    _install_record_factory()
    _install_excepthooks()
    if any(getattr(h, "_factoryline", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    handler._factoryline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    quiet_wire_loggers()


def quiet_wire_loggers() -> None:
    """Loggers that echo frames and headers log at INFO at most, even with the root at DEBUG."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


# -- masking at the source: every record, every handler --------------------------------------------

_factory_installed = False


def _install_record_factory() -> None:
    """Wrap the log record factory once: a record's message (with its arguments), exception text and
    stack are redacted when it is made, so every handler, ours or a library's, sees it masked."""
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
        make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _fragments is None and _whole is None:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template, masked
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)


_hooks_installed = False


def _install_excepthooks() -> None:
    """An uncaught exception (main thread or any other) is printed redacted."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True

    def excepthook(kind, value, tb) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    def thread_excepthook(args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread else "?"
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        sys.stderr.write(redact(f"Exception in thread {name}:\n{text}"))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event: `event(log, "entry_submitted", symbol="AAPL", client_order_id=cid)`."""
    logger.log(level, name, extra={"fields": fields})
