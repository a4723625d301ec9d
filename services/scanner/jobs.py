"""The scanner's RQ job (nightly, after the close): targets in, one QuickStrike log per ticker out.

Reads the settings (FL_SCAN_*, the exit rules, the ranker's FL_SIGNALS_DIR), the target tickers, the
ledger's closed live trades (for the black-sheep check) and the daily bars through the broker; writes the
logs the ranker reads at 06:00 and returns a JSON-friendly summary. Re-running it rewrites the same logs.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import redis

from services.scanner import scan
from services.scanner.settings import ScannerSettings
from shared import bus, config, logs
from shared.backtest import LiveTrade
from shared.errors import FactoryLineError, InputError
from shared.exits import ExitRules
from shared.market.calendar import NEW_YORK

log = logging.getLogger(__name__)


def scan_targets(
    targets: str | None = None,
    signals_dir: str | None = None,
    use_redis: bool = True,
    now: str | None = None,
    workers: int | None = None,
) -> dict:
    """Scan now. `targets` (a file) overrides FL_SCAN_TARGETS (neither: the broker's tradable assets);
    `signals_dir` overrides FL_SIGNALS_DIR; `use_redis=False` skips the ledger (no black-sheep check);
    `now` (ISO 8601 with offset) is written as `scanned_at` instead of the clock; `workers` overrides
    FL_SCAN_WORKERS."""
    settings = config.load(ScannerSettings)
    ranker_settings = config.load(config.RankerSettings)
    broker_settings = config.load(config.BrokerSettings)
    rules = ExitRules.from_settings(config.load(config.ExitSettings))
    folder = Path(signals_dir) if signals_dir else ranker_settings.FL_SIGNALS_DIR
    target_file = Path(targets) if targets else settings.FL_SCAN_TARGETS
    tickers = scan.read_targets(target_file) if target_file else scan.broker_universe(broker_settings)
    live = read_live_trades(config.load(config.RedisSettings)) if use_redis else {}
    from shared.broker import make_executor

    summary = scan.scan(
        functools.partial(make_executor, broker_settings), tickers, folder, rules=rules,
        min_trades=settings.FL_SCAN_MIN_TRADES, history_days=settings.FL_SCAN_HISTORY_DAYS,
        batch_size=settings.FL_SCAN_BATCH_SIZE, black_sheep_rule=settings.black_sheep_rule(),
        live_trades=live, scanned_at=_moment(now), workers=workers or settings.FL_SCAN_WORKERS,
    )
    result = summary.as_dict()
    result["targets"] = str(target_file) if target_file else "broker universe"
    return result


def read_live_trades(redis_settings: config.RedisSettings) -> dict[str, list[LiveTrade]]:
    """The ledger's closed trades by ticker (shared/ledger.py; the manager writes it), one per position
    close (`ledger.read_closes`): a stop-out filled as an OCO leg and a fractional day stop is one live trade."""
    from shared import ledger

    client = bus.connect(redis_settings)
    try:
        trades = ledger.read_closes(client, bus.Keys(redis_settings.FL_NAMESPACE))
    except redis.RedisError as exc:
        raise FactoryLineError(f"Redis (reading the ledger): {logs.redact(str(exc))}") from None
    finally:
        client.close()
    by_ticker: dict[str, list[LiveTrade]] = defaultdict(list)
    for trade in trades:
        by_ticker[trade.symbol].append(LiveTrade(trade.entry_price, trade.exit_price, trade.closed_at))
    return dict(by_ticker)


def _moment(now: str | None) -> datetime:
    if now is None:
        return datetime.now(UTC).astimezone(NEW_YORK)
    try:
        moment = datetime.fromisoformat(now)
    except ValueError:
        raise InputError(f"now: not an ISO 8601 time: {now!r}") from None
    if moment.utcoffset() is None:
        raise InputError(f"now: {now!r} has no UTC offset")
    return moment
