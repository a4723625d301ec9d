"""The tearsheet: the line's performance over many days, from its recorded equity and closed trades.

`build_tearsheet` is pure (points, trades, benchmark bars in; a `Tearsheet` model out). The daily
equity series is the last recorded point of each New York date in the window, preceded by the
starting point: the last recorded point before the window, else the recorded starting capital
(`record_start`: the broker's `last_equity` at the close before the line's first report), else the
window's first point itself. Daily returns are that series' simple returns.

Return and risk statistics come from empyrical-reloaded over those daily returns: total return
(`cum_returns_final`), annualized return (`annual_return`, 252 days a year), max drawdown
(`max_drawdown`, its dates from `drawdown_series`), Sharpe and Sortino (`sharpe_ratio`,
`sortino_ratio`: risk-free rate 0, annualized with 252), monthly returns (`aggregate_returns`).
Trade statistics are counts and sums over the closed trades (one per position close, realized P/L in
cents). Exposure is the share of days in the window on which the line held a position at any time
of the session. `gather_tearsheet` does the reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal

import empyrical
import pandas as pd
import redis
from empyrical.stats import drawdown_series

from services.reporter.report import (
    EquityPoint,
    TradeLine,
    _trade_line,
    equity_history,
    previous_close,
    read_broker,
    read_start,
    record_equity,
    record_start,
)
from shared import ledger, position_store
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.errors import FactoryLineError
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK
from shared.models import AwareDatetime, Bar, Model, Timeframe
from shared.money import ZERO

TEARSHEET_SCHEMA_VERSION = 1
#: Everything the line recorded (years of daily reports) is read for a tearsheet.
MAX_HISTORY_POINTS = 100_000


class DailyPoint(Model):
    day: date
    equity: Decimal
    #: Simple return from the previous day's equity (None on the starting point).
    daily_return: float | None
    #: (equity - running peak) / running peak, <= 0.
    drawdown: float


class MonthlyReturn(Model):
    year: int
    month: int
    #: Compounded daily returns of the month.
    monthly_return: float


class BenchmarkPoint(Model):
    day: date
    close: Decimal
    #: The benchmark's value had the starting capital been put in it at the starting point's close.
    value: Decimal


class Tearsheet(Model):
    schema_version: int = TEARSHEET_SCHEMA_VERSION
    since: date
    until: date
    generated_at: AwareDatetime
    start_day: date | None
    start_equity: Decimal | None
    end_equity: Decimal | None
    #: Where the starting point came from: "before window", "recorded start", "first point", "none".
    start_source: str
    trading_days: int
    total_return: float | None
    annual_return: float | None
    max_drawdown: float | None
    drawdown_peak: date | None
    drawdown_trough: date | None
    #: None when the equity has not come back to the peak's level yet.
    drawdown_recovery: date | None
    sharpe: float | None
    sortino: float | None
    trades: int
    wins: int
    losses: int
    win_rate: float | None
    #: Gross profit / gross loss (None without a losing trade).
    profit_factor: float | None
    average_win: Decimal | None
    average_loss: Decimal | None
    exposure: float | None
    exposed_days: int
    daily: list[DailyPoint]
    monthly: list[MonthlyReturn]
    closed_trades: list[TradeLine]
    benchmark_symbol: str
    benchmark: list[BenchmarkPoint]
    #: Why there is no benchmark line, when there is none ("" otherwise).
    benchmark_note: str = ""
    benchmark_return: float | None = None


class Holding(Model):
    """A span the line held a position: closed trades, and open positions (closed_at None)."""

    symbol: str
    opened_at: AwareDatetime
    closed_at: AwareDatetime | None = None


def _ny(at: datetime) -> date:
    return at.astimezone(NEW_YORK).date()


def _finite(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def daily_equity(points: Iterable[EquityPoint], since: date, until: date,
                 start: EquityPoint | None = None) -> tuple[list[tuple[date, Decimal]], str]:
    """The window's daily equity (last point of each New York date), with the starting point first."""
    points = sorted(points, key=lambda p: p.at)
    by_day: dict[date, Decimal] = {}
    for point in points:
        day = _ny(point.at)
        if since <= day <= until:
            by_day[day] = point.equity
    series = sorted(by_day.items())
    before = [p for p in points if _ny(p.at) < since]
    if before:
        return [(_ny(before[-1].at), before[-1].equity), *series], "before window"
    if start is not None and (not series or _ny(start.at) < series[0][0]):
        return [(_ny(start.at), start.equity), *series], "recorded start"
    return series, "first point" if series else "none"


def build_tearsheet(*, since: date, until: date, generated_at: datetime, points: Iterable[EquityPoint],
                    closed_trades: Iterable[ClosedTrade], start: EquityPoint | None = None,
                    holdings: Iterable[Holding] = (), benchmark_symbol: str = "SPY",
                    benchmark_bars: list[Bar] | None = None, benchmark_error: str = "") -> Tearsheet:
    series, source = daily_equity(points, since, until, start)
    days = [d for d, _ in series]
    equity = pd.Series([float(e) for _, e in series], index=pd.DatetimeIndex(days), dtype="float64")
    returns = equity.pct_change().iloc[1:]
    stats: dict = {"total_return": None, "annual_return": None, "max_drawdown": None, "sharpe": None,
                   "sortino": None, "drawdown_peak": None, "drawdown_trough": None, "drawdown_recovery": None}
    drawdowns = [0.0] * len(series)
    monthly: list[MonthlyReturn] = []
    if len(returns):
        stats["total_return"] = _finite(empyrical.cum_returns_final(returns))
        stats["annual_return"] = _finite(empyrical.annual_return(returns, period=empyrical.DAILY))
        stats["max_drawdown"] = _finite(empyrical.max_drawdown(returns))
        stats["sharpe"] = _finite(empyrical.sharpe_ratio(returns, period=empyrical.DAILY))
        stats["sortino"] = _finite(empyrical.sortino_ratio(returns, period=empyrical.DAILY))
        underwater = drawdown_series(returns)  # one value per return, anchored at the starting point
        drawdowns = [0.0, *(float(v) for v in underwater)]
        if stats["max_drawdown"] is not None and stats["max_drawdown"] < 0:
            stats.update(_drawdown_dates(days, [float(e) for _, e in series], drawdowns))
        for (year, month), value in empyrical.aggregate_returns(returns, empyrical.MONTHLY).items():
            monthly.append(MonthlyReturn(year=int(year), month=int(month), monthly_return=float(value)))
    daily = [DailyPoint(day=d, equity=e, daily_return=None if i == 0 else float(returns.iloc[i - 1]),
                        drawdown=drawdowns[i]) for i, (d, e) in enumerate(series)]

    trades = sorted((_trade_line(t) for t in closed_trades if since <= _ny(t.closed_at) <= until),
                    key=lambda t: (t.closed_at, t.symbol))
    wins = [t.realized_pl for t in trades if t.realized_pl > ZERO]
    losses = [t.realized_pl for t in trades if t.realized_pl < ZERO]
    gross_win, gross_loss = sum(wins, ZERO), -sum(losses, ZERO)

    # Exposure: the window's days (not the starting point's) on which a position was held at any time.
    window_days = [d for d in days if since <= d]
    spans = [(_ny(h.opened_at), _ny(h.closed_at) if h.closed_at else date.max) for h in holdings]
    spans += [(_ny(t.opened_at), _ny(t.closed_at)) for t in trades]
    exposed = sum(1 for d in window_days if any(a <= d <= b for a, b in spans))

    start_equity = series[0][1] if series else None
    bench, note = _benchmark(benchmark_symbol, benchmark_bars, benchmark_error, series)
    return Tearsheet(
        since=since, until=until, generated_at=generated_at,
        start_day=days[0] if days else None, start_equity=start_equity,
        end_equity=series[-1][1] if series else None, start_source=source, trading_days=len(returns),
        **stats,
        trades=len(trades), wins=len(wins), losses=len(losses),
        win_rate=len(wins) / len(trades) if trades else None,
        profit_factor=float(gross_win / gross_loss) if gross_loss else None,
        average_win=(gross_win / len(wins)).quantize(Decimal("0.01")) if wins else None,
        average_loss=(-gross_loss / len(losses)).quantize(Decimal("0.01")) if losses else None,
        exposure=exposed / len(window_days) if window_days else None, exposed_days=exposed,
        daily=daily, monthly=monthly, closed_trades=trades,
        benchmark_symbol=benchmark_symbol, benchmark=bench, benchmark_note=note,
        benchmark_return=(float(bench[-1].value / bench[0].value) - 1) if len(bench) > 1 else None,
    )


def _drawdown_dates(days: list[date], equity: list[float], drawdowns: list[float]) -> dict:
    trough = min(range(len(drawdowns)), key=lambda i: (drawdowns[i], i))
    peak = max(range(trough + 1), key=lambda i: (equity[i], -i))
    recovery = next((days[i] for i in range(trough + 1, len(equity)) if equity[i] >= equity[peak]), None)
    return {"drawdown_peak": days[peak], "drawdown_trough": days[trough], "drawdown_recovery": recovery}


def _benchmark(symbol: str, bars: list[Bar] | None, error: str,
               series: list[tuple[date, Decimal]]) -> tuple[list[BenchmarkPoint], str]:
    """The benchmark's daily closes on the series' days, scaled so it starts at the starting equity."""
    if not series:
        return [], "no equity recorded in the window"
    if error:
        return [], f"the broker has no daily bars for {symbol}: {error}"
    closes = {_ny(b.t): b.c for b in bars or ()}
    if not closes:
        return [], f"the broker has no daily bars for {symbol} in this window"
    start_day, capital = series[0]
    known = sorted(closes)
    base_day = next((d for d in reversed(known) if d <= start_day), None)
    if base_day is None or not capital:
        return [], f"the broker has no daily bar for {symbol} on or before {start_day}"
    base = closes[base_day]
    points = []
    for day, _ in series:
        at = next((d for d in reversed(known) if d <= day), None)
        if at is not None:
            points.append(BenchmarkPoint(day=day, close=closes[at], value=(capital * closes[at] / base)
                                         .quantize(Decimal("0.01"))))
    return points, ""


# -- the reads ----------------------------------------------------------------------------------------


def fetch_benchmark(executor: OrderExecutor, symbol: str, since: date, until: date) -> tuple[list[Bar], str]:
    """Daily bars from a week before `since` (the starting point's close) to `until`; ([], why) if none."""
    start = datetime.combine(since - timedelta(days=10), datetime.min.time(), NEW_YORK)
    end = datetime.combine(until, datetime.max.time(), NEW_YORK)
    try:
        bars = executor.get_bars([symbol], Timeframe.DAY, start, end).get(symbol, [])
    except FactoryLineError as exc:
        return [], str(exc).splitlines()[0][:200]
    return bars, ""


def gather_tearsheet(executor: OrderExecutor, client: redis.Redis, keys: Keys, since: date, *,
                     benchmark_symbol: str, record: bool = True,
                     states: Mapping | None = None) -> Tearsheet:
    """Read the broker (clock, account, positions: today's equity, recorded like a report's), the
    equity history, the ledger and the benchmark's bars; build the tearsheet over since..today."""
    snapshot = read_broker(executor)
    now = snapshot.clock.timestamp
    if record:
        record_start(client, keys, previous_close(now), snapshot.account.last_equity)
        record_equity(client, keys, now, snapshot.account.equity)
    until = _ny(now)
    holdings = []
    for position in snapshot.positions:
        state = (states or {}).get(position.symbol) or position_store.load_state(client, keys, position.symbol)
        holdings.append(Holding(symbol=position.symbol, opened_at=state.first_fill_at if state else now))
    bars, error = fetch_benchmark(executor, benchmark_symbol, since, until)
    return build_tearsheet(since=since, until=until, generated_at=now,
                           points=equity_history(client, keys, limit=MAX_HISTORY_POINTS),
                           closed_trades=ledger.read_closes(client, keys), start=read_start(client, keys),
                           holdings=holdings, benchmark_symbol=benchmark_symbol, benchmark_bars=bars,
                           benchmark_error=error)
