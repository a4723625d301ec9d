"""Which scanner signals are actionable today, best first (pure: no files, no Redis, no clock).

Reads parsed logs (signals and rejections), decides with the ranker settings and the moment of
ranking, returns the kept list (ranked 1..FL_MAX_POSITIONS) and every other log with its reason.
The order of the rules is documented in docs/signals.md; the first rule a signal breaks is the
reason reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.config import RankerSettings
from shared.signals import Rejection, RejectReason, ScanState, Signal, Verdict

#: A scanner clock this far ahead of ours is tolerated; further ahead, the timestamp is wrong.
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class RankResult:
    #: Actionable signals, best first, each with `rank` set (1 = best).
    kept: tuple[Signal, ...]
    #: Every other log, with its reason, in file-name order.
    rejected: tuple[Rejection, ...]


def rank(parsed: Iterable[Signal | Rejection], settings: RankerSettings, now: datetime) -> RankResult:
    """Keep IN_TRADE + PROFITABLE signals that pass the rules, best first, at most FL_MAX_POSITIONS."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    candidates, rejected = _passing(parsed, settings, now)
    candidates.sort(key=ranking_key)
    kept = tuple(s.model_copy(update={"rank": i}) for i, s in enumerate(candidates[: settings.FL_MAX_POSITIONS], 1))
    for position, signal in enumerate(candidates[settings.FL_MAX_POSITIONS:], settings.FL_MAX_POSITIONS + 1):
        rejected.append(_reject(signal, RejectReason.BEYOND_MAX_POSITIONS,
                                f"ranked {position}; FL_MAX_POSITIONS={settings.FL_MAX_POSITIONS}"))
    rejected.sort(key=lambda r: r.source_file)
    return RankResult(kept=kept, rejected=tuple(rejected))


def recheck(listed: Iterable[Signal | Rejection], settings: RankerSettings, now: datetime) -> RankResult:
    """The ranker's rules again, over a list already ranked (the trader's re-check of what it reads,
    docs/trader.md): one scan per ticker (`current_scans`), the first rule broken (`refuse`), then at
    most FL_MAX_POSITIONS. Unlike `rank` it keeps the list's own order (by `rank`, then position):
    "the best ranked" are the ones the list ranks first. Rejections passed in are kept, first."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    passed, rejected = _passing(listed, settings, now)
    position = {id(signal): i for i, signal in enumerate(passed)}
    passed.sort(key=lambda s: (s.rank is None, s.rank or 0, position[id(s)]))
    limit = settings.FL_MAX_POSITIONS
    for signal in passed[limit:]:
        where = f"rank {signal.rank}" if signal.rank is not None else "unranked"
        rejected.append(_reject(signal, RejectReason.BEYOND_MAX_POSITIONS,
                                f"{where} in the list; FL_MAX_POSITIONS={limit}"))
    return RankResult(kept=tuple(passed[:limit]), rejected=tuple(rejected))


def _passing(items: Iterable[Signal | Rejection], settings: RankerSettings,
             now: datetime) -> tuple[list[Signal], list[Rejection]]:
    """The signals that pass the rules (one scan per ticker, then `refuse`), in the order given, and
    every rejection: those passed in first, then the ones the rules made."""
    rejected: list[Rejection] = []
    valid: list[Signal] = []
    for item in items:
        (valid if isinstance(item, Signal) else rejected).append(item)
    passed: list[Signal] = []
    for signal in current_scans(valid, rejected):
        refusal = refuse(signal, settings, now)
        if refusal is None:
            passed.append(signal)
        else:
            rejected.append(refusal)
    return passed, rejected


def ranking_key(signal: Signal) -> tuple:
    """Win rate, then profit factor, then trade count (all higher first), then ticker A to Z."""
    return (-signal.win_rate, -signal.profit_factor, -signal.trades, signal.ticker)


def current_scans(signals: list[Signal], rejected: list[Rejection]) -> list[Signal]:
    """One scan per ticker: the newest. The same ticker under two STATE prefixes means one file is
    left over from an earlier night; the newer scan tells the ticker's state now (an IN_TRADE log
    older than an EXITED one is stale news). Two different scans with the same scanned_at cannot be
    told apart, so both are refused. Refusals are appended to `rejected`."""
    by_ticker: dict[str, list[Signal]] = defaultdict(list)
    for signal in signals:
        by_ticker[signal.ticker].append(signal)
    current: list[Signal] = []
    for ticker, scans in by_ticker.items():
        if len(scans) == 1:
            current.append(scans[0])
            continue
        newest = max(s.scanned_at for s in scans)
        latest = [s for s in scans if s.scanned_at == newest]
        if len(latest) > 1:
            files = ", ".join(sorted(s.source_file for s in latest))
            rejected.extend(_reject(s, RejectReason.CONFLICTING_SCANS, f"{ticker} scanned at the same time in {files}")
                            for s in latest)
        else:
            current.append(latest[0])
        rejected.extend(
            _reject(s, RejectReason.SUPERSEDED, f"{latest[0].source_file} was scanned later ({newest.isoformat()})")
            for s in scans if s.scanned_at != newest
        )
    return current


def refuse(signal: Signal, settings: RankerSettings, now: datetime) -> Rejection | None:
    """The first rule the signal breaks, or None if it is actionable."""
    if signal.state is not ScanState.IN_TRADE:
        return _reject(signal, RejectReason.NOT_IN_TRADE, f"status {signal.state.value}")
    if signal.verdict is not Verdict.PROFITABLE:
        return _reject(signal, RejectReason.NOT_PROFITABLE, f"verdict {signal.verdict.value}")
    if not settings.FL_ALLOW_BLACK_SHEEP:
        if signal.black_sheep:
            return _reject(signal, RejectReason.BLACK_SHEEP, f"{signal.strategy} flagged black_sheep in the log")
        if signal.strategy.lower() in settings.black_sheep_strategies:
            return _reject(signal, RejectReason.BLACK_SHEEP, f"{signal.strategy} is in FL_BLACK_SHEEP_STRATEGIES")
    age = now - signal.scanned_at
    if age < -MAX_CLOCK_SKEW:
        return _reject(signal, RejectReason.FUTURE_SCAN, f"scanned_at {signal.scanned_at.isoformat()} is "
                       f"{_hours(-age)} h after now ({now.isoformat(timespec='seconds')})")
    if age > timedelta(hours=settings.FL_MAX_SCAN_AGE_HOURS):
        return _reject(signal, RejectReason.STALE_SCAN, f"scanned {_hours(age)} h ago; "
                       f"FL_MAX_SCAN_AGE_HOURS={settings.FL_MAX_SCAN_AGE_HOURS:g}")
    if signal.trades < settings.FL_MIN_BACKTEST_TRADES:
        return _reject(signal, RejectReason.TOO_FEW_TRADES, f"{signal.trades} backtest trades; "
                       f"FL_MIN_BACKTEST_TRADES={settings.FL_MIN_BACKTEST_TRADES}")
    return None


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:.1f}"


def _reject(signal: Signal, reason: RejectReason, detail: str) -> Rejection:
    return Rejection(signal.source_file, reason, detail, signal.ticker)
