"""Structured logs: one event a line, `key=value`, carrying symbol and client order id where
they apply, and never a secret (registered secrets are masked in every record)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


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
    if any(getattr(h, "_factoryline", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    handler._factoryline = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one event: `event(log, "entry_submitted", symbol="AAPL", client_order_id=cid)`."""
    logger.log(level, name, extra={"fields": fields})
