"""The ranker's RQ job (06:00 New York): scanner logs in, today's ranked signals out.

Reads every `*.log` in FL_SIGNALS_DIR; decides with `shared.ranking.rank`; writes
actionable_signals.csv (atomically), the kept list to Redis under `Keys.signals(<New York date>)`,
and a `signals_ranked` notification. With FL_SIGNALS_HMAC_KEY set, the Redis list is signed
(`shared.signals.sign_list`) for the trader to check. Re-running it rewrites the same outputs: it is
idempotent.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import redis

from shared import bus, config, logs, ranking, signals
from shared.errors import FactoryLineError, InputError
from shared.market.calendar import NEW_YORK

log = logging.getLogger(__name__)


def rank_signals(
    signals_dir: str | None = None,
    csv_path: str | None = None,
    use_redis: bool = True,
    now: str | None = None,
) -> dict:
    """Rank the scanner logs now. Arguments override FL_SIGNALS_DIR / FL_SIGNALS_CSV; `use_redis=False`
    writes only the CSV; `now` (ISO 8601 with offset) replaces the clock. Returns a JSON-friendly
    summary: day, counts, the kept list and every rejected file with its reason."""
    settings = config.load(config.RankerSettings)
    redis_settings = config.load(config.RedisSettings) if use_redis else None
    moment = _moment(now)
    folder = Path(signals_dir) if signals_dir else settings.FL_SIGNALS_DIR
    csv_file = Path(csv_path) if csv_path else settings.FL_SIGNALS_CSV
    day = moment.astimezone(NEW_YORK).date()

    parsed = signals.read_logs(folder, settings)
    result = ranking.rank(parsed, settings, moment)
    signals.write_signals_csv(csv_file, result.kept)

    redis_key = None
    if redis_settings is not None:
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        client = bus.connect(redis_settings)
        try:
            redis_key = signals.save_signals_to_redis(client, keys, day, result.kept,
                                                      hmac_key=settings.FL_SIGNALS_HMAC_KEY)
            bus.publish(client, keys, "signals_ranked", day=day.isoformat(), kept=len(result.kept),
                        rejected=len(result.rejected), tickers=[s.ticker for s in result.kept])
        except redis.RedisError as exc:
            raise FactoryLineError(f"Redis at {_where(redis_settings)}: {exc}") from None
        finally:
            client.close()

    for rejection in result.rejected:
        logs.event(log, "log_rejected", file=rejection.source_file, symbol=rejection.ticker,
                   reason=rejection.reason.value, detail=rejection.detail)
    logs.event(log, "signals_ranked", day=day.isoformat(), logs=len(parsed), kept=len(result.kept),
               rejected=len(result.rejected), tickers=",".join(s.ticker for s in result.kept) or "-",
               csv=str(csv_file), redis_key=redis_key,
               signed=settings.FL_SIGNALS_HMAC_KEY is not None if redis_key else None)
    return {
        "day": day.isoformat(),
        "ranked_at": moment.isoformat(),
        "signals_dir": str(folder),
        "csv_path": str(csv_file),
        "redis_key": redis_key,
        "logs": len(parsed),
        "kept": [s.model_dump(mode="json") for s in result.kept],
        "rejected": [r.as_dict() for r in result.rejected],
    }


def _moment(now: str | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(now)
    except ValueError:
        raise InputError(f"now: {now!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InputError(f"now: {now!r} needs a UTC offset")
    return moment


def _where(redis_settings: config.RedisSettings) -> str:
    """host:port of REDIS_URL (or the primary and its sentinels), never a password."""
    if redis_settings.FL_REDIS_SENTINELS:
        return redis_settings.where
    parsed = urlparse(redis_settings.REDIS_URL)
    return f"{parsed.hostname}:{parsed.port or 6379}" if parsed.hostname else parsed.scheme + "://..."
