"""`factoryline backtest --compare-ledger`: read the line's real ledger (Redis of FL_NAMESPACE, or a
file of closed trades) and lay it over the backtest (`shared.reconciliation`); writes divergences.csv."""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

from pydantic import ValidationError

from shared.errors import InputError
from shared.ledger import ClosedTrade
from shared.reconciliation import DEFAULT_TOLERANCE_PCT, reconcile

#: A ledger file larger than this is refused unread.
MAX_LEDGER_BYTES = 64 * 1024 * 1024


def read_ledger_file(path: Path) -> list[ClosedTrade]:
    """Closed trades from a file: a JSON array of `ClosedTrade`s, or one per line (JSON lines, as the
    ledger stream's `trade` fields read with `redis-cli XRANGE`). InputError naming the line otherwise."""
    from shared import userfiles

    with userfiles.open_text(path, max_bytes=MAX_LEDGER_BYTES, what="ledger file") as handle:
        text = handle.read()
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            return [ClosedTrade.model_validate(item) for item in json.loads(stripped)]
        trades = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    trades.append(ClosedTrade.model_validate_json(line))
                except ValidationError as exc:
                    raise InputError(f"ledger file {path}, line {number}: not a closed trade "
                                     f"({exc.errors()[0].get('msg', 'invalid')})") from None
        return trades
    except (ValueError, ValidationError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"ledger file {path}: not a JSON array or JSON lines of closed trades") from None


def read_ledger_redis() -> tuple[list[ClosedTrade], str]:
    from shared import bus, config, ledger

    settings = config.load(config.RedisSettings)
    client = bus.connect(settings)
    try:
        return ledger.read_closes(client, bus.Keys(settings.FL_NAMESPACE)), f"Redis {settings.where} namespace " \
                                                                           f"{settings.FL_NAMESPACE}"
    finally:
        client.close()


def compare_from_source(source: str, result, start: date, end: date, folder: Path,
                        tolerance_pct: Decimal = DEFAULT_TOLERANCE_PCT) -> list[str]:
    if source == "redis":
        live, where = read_ledger_redis()
    else:
        live, where = read_ledger_file(Path(source)), str(source)
    outcome = reconcile(live, result.trades, start, end, tolerance_pct=tolerance_pct)
    path = folder / "divergences.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("entry_day", "symbol", "cause", "detail"))
        writer.writerows((d.entry_day, d.symbol, d.cause.value, d.detail) for d in outcome.divergences)
    return [*outcome.lines(), f"ledger: {where}; divergences: {path}"]
