"""The nightly QuickStrike scan: targets in, one log per ticker out, with a summary.

Reads the target tickers (a file, or every active tradable asset the broker lists), the broker's clock,
two years of daily bars in batches through the `OrderExecutor`, and the ledger's live trades; decides with
`shared.strategies` and `shared.backtest` (pure) and `report_for_ticker` (pure); writes each ticker's log
atomically (services/scanner/logfile.py). A ticker whose bars are missing or broken is reported as an
error and skipped (its stale IN_TRADE log is removed so the ranker never buys on old analysis); the rest of
the scan completes.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from services.scanner.logfile import TickerLog, remove_logs, write_log
from shared import logs
from shared.backtest import BlackSheepRule, LiveTrade, backtest, is_black_sheep
from shared.broker.contract import OrderExecutor
from shared.errors import BrokerError, BrokerUnavailable, FactoryLineError, InputError
from shared.exits import ExitRules
from shared.market.calendar import NEW_YORK
from shared.models import AnyBar, BarRow, Timeframe
from shared.scanning import report_order, state_of
from shared.signals import TICKER_PATTERN, ScanState
from shared.strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)

_TICKER = re.compile(TICKER_PATTERN)


@dataclass
class ScanSummary:
    scanned_at: datetime
    signals_dir: str
    tickers: int = 0
    scanned: int = 0
    #: (ticker, strategy) pairs whose rule fired on the latest bar.
    signals_found: int = 0
    states: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in ScanState})
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def in_trade(self) -> int:
        return self.states[ScanState.IN_TRADE.value]

    def as_dict(self) -> dict:
        return {
            "scanned_at": self.scanned_at.isoformat(), "signals_dir": self.signals_dir, "tickers": self.tickers,
            "scanned": self.scanned, "signals_found": self.signals_found, "in_trade": self.in_trade,
            "states": dict(self.states), "errors": list(self.errors),
        }


# -- targets -------------------------------------------------------------------------------------


def read_targets(path: Path) -> list[str]:
    """Tickers from a file: whitespace or commas between them, `#` starts a comment, case-insensitive,
    duplicates dropped (first kept). InputError naming the line for anything that is not a ticker."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"targets file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"targets file {path}: unreadable ({type(exc).__name__})") from None
    tickers: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for word in line.split("#", 1)[0].replace(",", " ").split():
            ticker = word.upper()
            if not _TICKER.match(ticker):
                raise InputError(f"targets file {path}, line {number}: {word!r} is not a ticker")
            tickers.setdefault(ticker, None)
    if not tickers:
        raise InputError(f"targets file {path}: no tickers in it")
    return list(tickers)


def broker_universe(settings) -> list[str]:
    """Every active, tradable US equity the broker lists, sorted.

    The `OrderExecutor` contract has no asset listing; this is the scanner's own small read, made
    through `AlpacaExecutor.get_assets` so it has the adapter's timeout (`FL_BROKER_TIMEOUT_SECONDS`),
    read retries and one-line typed errors, like every other request of the scan. Tickers the log
    format cannot name are left out.
    """
    from shared.broker.alpaca import AlpacaExecutor

    executor = AlpacaExecutor(settings)
    try:
        assets = executor.get_assets()
    finally:
        executor.close()
    return sorted(a.symbol for a in assets if a.tradable and _TICKER.match(a.symbol))


# -- bars ----------------------------------------------------------------------------------------


def fetch_daily_bars(
    executor: OrderExecutor, tickers: Sequence[str], start: datetime, end: datetime, batch_size: int
) -> tuple[dict[str, list[BarRow]], dict[str, str]]:
    """({ticker: bars}, {ticker: error}), the bars as light rows (`get_bar_rows`: no model per bar). Batches of `batch_size`; a batch the broker refuses is asked
    again ticker by ticker, so one bad ticker costs only itself. A batch the broker does not answer
    (`BrokerUnavailable`: a timeout, a 5xx, an unusable answer) is not asked again ticker by ticker:
    that would cost one timeout per ticker; its tickers are errors."""
    bars: dict[str, list[BarRow]] = {}
    errors: dict[str, str] = {}
    for i in range(0, len(tickers), batch_size):
        batch = list(tickers[i:i + batch_size])
        try:
            bars.update(executor.get_bar_rows(batch, Timeframe.DAY, start, end))
        except BrokerError as exc:
            if len(batch) == 1 or isinstance(exc, BrokerUnavailable):
                errors.update((ticker, f"bars request failed: {exc}") for ticker in batch)
                continue
            logs.event(log, "bars_batch_failed", level=logging.WARNING, tickers=len(batch), error=str(exc))
            for ticker in batch:
                try:
                    bars.update(executor.get_bar_rows([ticker], Timeframe.DAY, start, end))
                except BrokerError as single:
                    errors[ticker] = f"bars request failed: {single}"
    return bars, errors


def completed_sessions(bars: Sequence[AnyBar], now: datetime, market_open: bool) -> list[AnyBar]:
    """Drop today's bar while the session is still running: it is not a daily bar yet."""
    if not market_open or not bars:
        return list(bars)
    today = now.astimezone(NEW_YORK).date()
    # Bars are oldest first: only the last one can be today's.
    return list(bars[:-1]) if bars[-1].t.astimezone(NEW_YORK).date() == today else list(bars)


def check_series(bars: Sequence[AnyBar]) -> None:
    """InputError when the series cannot be backtested: no bars, a bar that is not a bar, time going back."""
    if not bars:
        raise InputError("no daily bars")
    previous = None
    for bar in bars:
        if not (bar.l > 0 and bar.l <= min(bar.o, bar.c) and max(bar.o, bar.c) <= bar.h and bar.h.is_finite()):
            raise InputError(f"bar {_day(bar)}: impossible or non-positive (open {bar.o} high {bar.h} "
                             f"low {bar.l} close {bar.c})")
        if previous is not None and bar.t <= previous:
            raise InputError(f"bar {_day(bar)}: not after the bar before it")
        previous = bar.t


def _day(bar: AnyBar) -> str:
    return bar.t.astimezone(NEW_YORK).date().isoformat()


# -- the decision, pure --------------------------------------------------------------------------


def report_for_ticker(
    ticker: str,
    bars: Sequence[AnyBar],
    rules: ExitRules,
    min_trades: int,
    live_trades: Sequence[LiveTrade],
    black_sheep_rule: BlackSheepRule,
    scanned_at: datetime,
    strategies: Sequence[Strategy] = STRATEGIES,
) -> tuple[TickerLog, int]:
    """(the log to write, how many strategies fired on the latest bar). Every strategy is backtested;
    the log reports one: a fresh entry first, then (same state) not black sheep, PROFITABLE, higher win
    rate, profit factor, trade count, then name."""
    candidates = []
    fired = 0
    for strategy in strategies:
        result = backtest(ticker, bars, strategy, rules, min_trades)
        state = state_of(result, bars[-1])
        fired += result.signal_on_last_bar
        sheep = is_black_sheep(result, live_trades, black_sheep_rule)
        candidates.append((state, result, sheep))
    candidates.sort(key=report_order)
    state, best, sheep = candidates[0]
    last = bars[-1]
    notes = tuple(
        f"{r.strategy} = {s.value} {r.verdict.value}, win rate {r.win_rate}, {r.trade_count} trades, "
        f"profit factor {r.profit_factor}, avg return {r.avg_return}" for s, r, _ in candidates
    )
    if sheep.live_trades:
        notes += (f"live check = {'BLACK SHEEP' if sheep.flagged else 'ok'}, {sheep.detail}",)
    entry = TickerLog(
        ticker=ticker, strategy=best.strategy, state=state, verdict=best.verdict, win_rate=best.win_rate,
        trades=best.trade_count, profit_factor=best.profit_factor, avg_return=best.avg_return,
        scanned_at=scanned_at, black_sheep=sheep.flagged,
        signal_date=last.t.astimezone(NEW_YORK).date() if state is ScanState.IN_TRADE else None,
        signal_price=last.c if state is ScanState.IN_TRADE else None, notes=notes,
    )
    return entry, fired


# -- the run -------------------------------------------------------------------------------------


def scan(
    make_executor: Callable[[], OrderExecutor],
    tickers: Sequence[str],
    folder: Path,
    *,
    rules: ExitRules,
    min_trades: int,
    history_days: int,
    batch_size: int,
    black_sheep_rule: BlackSheepRule,
    live_trades: Mapping[str, Sequence[LiveTrade]] | None = None,
    scanned_at: datetime,
    workers: int = 1,
) -> ScanSummary:
    """Fetch, backtest and write every ticker; returns the summary (errors listed, never raised per ticker).

    `make_executor` builds a broker connection (called once per worker). With `workers` > 1 the tickers
    are split into that many shards scanned by forked processes, each with its own connection: turning
    bar JSON into Decimals is CPU work, and the broker answers one shard while another is parsed.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"signals folder {folder} is not a folder") from None
    except OSError as exc:
        raise InputError(f"signals folder {folder}: cannot create it ({exc.strerror})") from None
    if not tickers:
        raise InputError("no tickers to scan")
    executor = make_executor()
    try:
        clock = executor.get_clock()
        end = clock.timestamp
        job = _ShardJob(folder=folder, rules=rules, min_trades=min_trades, start=end - timedelta(days=history_days),
                        end=end, market_open=clock.is_open, batch_size=batch_size, black_sheep_rule=black_sheep_rule,
                        live_trades=dict(live_trades or {}), scanned_at=scanned_at)
        shards = [list(tickers[i::workers]) for i in range(min(workers, len(tickers)))]
        if len(shards) <= 1:
            summary = job.run(executor, list(tickers))
        else:
            # Fork: the children inherit the loaded modules (no re-import); each opens its own connection.
            context = multiprocessing.get_context("fork")
            try:
                with ProcessPoolExecutor(max_workers=len(shards), mp_context=context) as pool:
                    parts = list(pool.map(_run_shard, [(make_executor, job, shard) for shard in shards]))
            except BrokenProcessPool:
                raise FactoryLineError("a scan worker process died (killed or out of memory); "
                                       "logs written so far are complete files, run the scan again") from None
            summary = _merge(parts, scanned_at, folder)
    finally:
        executor.close()
    logs.event(log, "scan_done", tickers=summary.tickers, scanned=summary.scanned,
               signals_found=summary.signals_found, in_trade=summary.in_trade, errors=len(summary.errors),
               folder=str(folder))
    return summary


@dataclass(frozen=True)
class _ShardJob:
    folder: Path
    rules: ExitRules
    min_trades: int
    start: datetime
    end: datetime
    market_open: bool
    batch_size: int
    black_sheep_rule: BlackSheepRule
    live_trades: dict[str, Sequence[LiveTrade]]
    scanned_at: datetime

    def run(self, executor: OrderExecutor, tickers: list[str]) -> ScanSummary:
        bars_by_ticker, fetch_errors = fetch_daily_bars(executor, tickers, self.start, self.end, self.batch_size)
        return write_reports(tickers, bars_by_ticker, fetch_errors, self.folder, rules=self.rules,
                             min_trades=self.min_trades, black_sheep_rule=self.black_sheep_rule,
                             live_trades=self.live_trades, scanned_at=self.scanned_at, now=self.end,
                             market_open=self.market_open)


def _run_shard(work: tuple[Callable[[], OrderExecutor], _ShardJob, list[str]]) -> ScanSummary:
    make_executor, job, tickers = work
    executor = make_executor()
    try:
        return job.run(executor, tickers)
    finally:
        executor.close()


def _merge(parts: Sequence[ScanSummary], scanned_at: datetime, folder: Path) -> ScanSummary:
    summary = ScanSummary(scanned_at=scanned_at, signals_dir=str(folder))
    for part in parts:
        summary.tickers += part.tickers
        summary.scanned += part.scanned
        summary.signals_found += part.signals_found
        for state, count in part.states.items():
            summary.states[state] += count
        summary.errors += part.errors
    summary.errors.sort(key=lambda e: e["ticker"])
    return summary


def write_reports(
    tickers: Iterable[str],
    bars_by_ticker: Mapping[str, Sequence[AnyBar]],
    fetch_errors: Mapping[str, str],
    folder: Path,
    *,
    rules: ExitRules,
    min_trades: int,
    black_sheep_rule: BlackSheepRule,
    live_trades: Mapping[str, Sequence[LiveTrade]],
    scanned_at: datetime,
    now: datetime,
    market_open: bool,
) -> ScanSummary:
    """Backtest each ticker's fetched bars and write its log; a missing or broken series is an error."""
    summary = ScanSummary(scanned_at=scanned_at, signals_dir=str(folder))
    for ticker in tickers:
        summary.tickers += 1
        try:
            if ticker in fetch_errors:
                raise InputError(fetch_errors[ticker])
            bars = completed_sessions(bars_by_ticker.get(ticker, []), now, market_open)
            check_series(bars)
            entry, fired = report_for_ticker(ticker, bars, rules, min_trades, live_trades.get(ticker, ()),
                                             black_sheep_rule, scanned_at)
        except InputError as exc:
            removed = remove_logs(folder, ticker, only=ScanState.IN_TRADE)
            summary.errors.append({"ticker": ticker, "error": str(exc)})
            logs.event(log, "ticker_skipped", level=logging.WARNING, symbol=ticker, error=str(exc),
                       removed=",".join(removed) or "-")
            continue
        write_log(folder, entry)
        summary.scanned += 1
        summary.signals_found += fired
        summary.states[entry.state.value] += 1
    return summary
