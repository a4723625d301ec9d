"""`factoryline backtest`: the whole line over history (shared.linebacktest), written as the reporter's
tearsheet, the trade list and the parameters; `--sweep` runs a grid of settings in parallel.

A thin shell in the reporter (the Audit pillar), so the backtest's tearsheet is the reporter's own
(`build_tearsheet`, `render_tearsheet.render`), not a copy. Reads: the history (`shared.history.load`),
the settings (environment, .env, `name=value` overrides). Decides: `shared.linebacktest.run`. Writes:
a folder with tearsheet.html, trades.csv, equity.csv and params.json (sweep.csv for a sweep), printed.

A sweep forks one worker process per core (`--workers`); the history is loaded once before the fork.
Ctrl-C stops the workers and ends with exit status 130 and one line, writing nothing half-done.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from shared.errors import InputError

DEFAULT_SOURCE = "bokeh"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "backtest", help="replay the whole line over daily history and write its tearsheet (docs/backtest.md)",
        description="Replay the line (scan, rank, size, enter at the next open, protection, soft exits, limits) "
                    "over daily history. Overrides: name=value for any setting (stop_loss_pct=3, max_positions=8, "
                    "slippage_bps=10).")
    parser.add_argument("--from", dest="start", metavar="DATE", required=True, help="first session (YYYY-MM-DD)")
    parser.add_argument("--to", dest="end", metavar="DATE", required=True, help="last session (YYYY-MM-DD)")
    parser.add_argument("--data", metavar="SOURCE", default=DEFAULT_SOURCE,
                        help="history: csv:PATH, bokeh (pip install 'factoryline[data]') or broker (default bokeh); "
                             "docs/data.md")
    parser.add_argument("--symbols", metavar="A,B", help="only these symbols of the source")
    parser.add_argument("--out", metavar="DIR", help="folder for the files (default backtests/<from>_<to>_<time>)")
    parser.add_argument("--sweep", nargs="+", metavar="NAME=V1,V2", help="run every combination of these values")
    parser.add_argument("--out-of-sample", dest="out_of_sample", type=float, metavar="FRACTION",
                        help="sweep: hold out the last FRACTION of the sessions (e.g. 0.3) and show each run on it")
    parser.add_argument("--workers", type=int, metavar="N", help="sweep processes (default: the cores available)")
    parser.add_argument("--compare-ledger", dest="compare_ledger", nargs="?", const="redis", metavar="FILE",
                        help="overlay the line's real ledger (Redis of FL_NAMESPACE, or a JSON-lines FILE of "
                             "closed trades) on the backtest and list each divergence")
    parser.add_argument("--tolerance-pct", dest="tolerance_pct", default="0.5", metavar="PCT",
                        help="--compare-ledger: prices further apart than this percent are a divergence (0.5)")
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="setting overrides")
    parser.set_defaults(func=run)


# -- arguments ------------------------------------------------------------------------------------------


def parse_day(flag: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{flag} {text}: give a date as YYYY-MM-DD") from None


def _decimal_arg(flag: str, text: str):
    from shared.money import non_negative

    value = non_negative(text)
    if value is None:
        raise InputError(f"{flag} {text}: give a number of percent (e.g. 0.5)")
    return value


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"{item!r}: an override is name=value (e.g. stop_loss_pct=3)")
        out[name.strip()] = value.strip()
    return out


def parse_grid(items: Sequence[str]) -> list[dict[str, str]]:
    """`stop_loss_pct=3,5,8 trailing_giveback_pct=30,50` -> the 6 combinations, in order."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        name, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not choices:
            raise InputError(f"--sweep {item!r}: give name=value1,value2 (e.g. stop_loss_pct=3,5,8)")
        axes.append((name.strip(), choices))
    names = [n for n, _ in axes]
    if len(set(names)) != len(names):
        raise InputError("--sweep: a setting is named twice")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))]


# -- the command ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from shared import history as history_source
    from shared.linebacktest import BacktestSettings, setting_name

    start, end = parse_day("--from", args.start), parse_day("--to", args.end)
    if end < start:
        raise InputError(f"--to {end} is before --from {start}")
    overrides = parse_overrides(args.overrides)
    grid = parse_grid(args.sweep) if args.sweep else []
    for name in [*overrides, *(n for combo in grid[:1] for n in combo)]:
        setting_name(name)
    settings = BacktestSettings.load(overrides)
    for combo in grid:  # every combination's values are checked before anything runs
        BacktestSettings.load({**overrides, **combo})
    if args.out_of_sample is not None and not 0 < args.out_of_sample < 1:
        raise InputError(f"--out-of-sample {args.out_of_sample}: give a fraction between 0 and 1 (e.g. 0.3)")
    args.tolerance = _decimal_arg("--tolerance-pct", args.tolerance_pct)
    if args.compare_ledger and grid:
        raise InputError("--compare-ledger compares one backtest: leave out --sweep")
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    # The scanner looks FL_SCAN_HISTORY_DAYS back from the first session: load that much before it.
    lookback = timedelta(days=settings.scanner.FL_SCAN_HISTORY_DAYS + 7)
    history = history_source.load(args.data, start=start - lookback, end=end, symbols=symbols)
    folder = Path(args.out) if args.out else Path("backtests") / (
        f"{start}_{end}_{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    if grid:
        return _sweep(history, overrides, grid, start, end, folder, args)
    return _single(history, settings, start, end, folder, args)


def _single(history, settings, start: date, end: date, folder: Path, args) -> int:
    from services.reporter.settings import ReporterSettings
    from shared import config
    from shared.linebacktest import run as backtest

    result = backtest(history, settings, start=start, end=end)
    symbol = config.load(ReporterSettings).FL_BENCHMARK_SYMBOL
    files = write_outputs(result, settings, folder, start, end, benchmark_symbol=symbol,
                          benchmark_bars=history.bars.get(symbol))
    sheet = files.pop("sheet")
    from services.reporter import render_tearsheet

    print(f"backtest {start} to {end} on {result.source}: {len(result.closed)} closed trade(s), "
          f"{len(result.trades) - len(result.closed)} open at the end, {len(result.halts)} halt(s)")
    print(render_tearsheet.render_text(sheet))
    if args.compare_ledger:
        from services.reporter.ledger_compare import compare_from_source

        lines = compare_from_source(args.compare_ledger, result, start, end, folder, args.tolerance)
        print()
        print("\n".join(lines))
    print()
    print(f"folder: {folder}")
    return 0


# -- files --------------------------------------------------------------------------------------------

TRADE_COLUMNS = ("symbol", "strategy", "entry_day", "entry_at", "entry_price", "qty", "cost", "exit_day", "exit_at",
                 "exit_price", "reason", "fees", "realized_pl", "detail")


def write_outputs(result, settings, folder: Path, start: date, end: date, *, benchmark_symbol: str = "SPY",
                  benchmark_bars=None) -> dict:
    """tearsheet.html, trades.csv, equity.csv and params.json in `folder`; returns the paths and the sheet."""
    from services.reporter import render_tearsheet

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {folder}: cannot create the folder ({exc.strerror})") from None
    sheet = tearsheet_of(result, start, end, benchmark_symbol, benchmark_bars)
    html = render_tearsheet.render(sheet).replace(
        "<h1>Factory Line tearsheet", "<h1>Factory Line backtest tearsheet", 1).replace(
        "</h1>", f"</h1><div class=\"meta\">backtest on {_escape(result.source)}; parameters in "
                 "params.json, trades in trades.csv</div>", 1)
    paths = {"tearsheet": folder / "tearsheet.html", "trades": folder / "trades.csv",
             "equity": folder / "equity.csv", "params": folder / "params.json"}
    paths["tearsheet"].write_text(html, encoding="utf-8")
    with paths["trades"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(TRADE_COLUMNS)
        for t in result.trades:
            writer.writerow([t.symbol, t.strategy, t.entry_day, t.entry_at.isoformat() if t.entry_at else "",
                             t.entry_price, t.qty, t.cost, t.exit_day or "", t.exit_at.isoformat() if t.exit_at else "",
                             "" if t.exit_price is None else t.exit_price, t.reason.value if t.reason else "",
                             t.fees, "" if t.realized_pl is None else t.realized_pl, t.detail])
    with paths["equity"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("day", "equity"))
        writer.writerows(result.equity)
    params = {"from": str(start), "to": str(end), "source": result.source, "settings": result.params,
              "halts": [{"day": str(d), "reason": r} for d, r in result.halts]}
    paths["params"].write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {**paths, "sheet": sheet}


def _escape(text: str) -> str:
    from html import escape

    return escape(text)


def tearsheet_of(result, start: date, end: date, benchmark_symbol: str = "SPY", benchmark_bars=None):
    """The reporter's tearsheet of a backtest: its end-of-day equity, its closed trades, the starting cash
    the evening before the first session."""
    from services.reporter.report import EquityPoint
    from services.reporter.tearsheet import Holding, build_tearsheet
    from shared.ledger import ClosedTrade
    from shared.market.calendar import NEW_YORK

    def close_of(day: date) -> datetime:
        return datetime.combine(day, time(16, 0), NEW_YORK)

    first = result.equity[0][0] if result.equity else start
    begin = EquityPoint(at=close_of(first - timedelta(days=1)), equity=result.start_cash)
    points = [EquityPoint(at=close_of(d), equity=e) for d, e in result.equity]
    closed = [ClosedTrade(symbol=t.symbol, qty=t.qty, entry_price=t.entry_price, exit_price=t.exit_price,
                          realized_pl=t.realized_pl, exit_reason=t.reason, opened_at=t.entry_at, closed_at=t.exit_at,
                          closing_order_id=f"backtest-{i}", closing_client_order_id=f"backtest-{i}")
              for i, t in enumerate(result.closed)]
    holdings = [Holding(symbol=t.symbol, opened_at=t.entry_at) for t in result.trades if t.exit_day is None]
    bench = list(benchmark_bars or ())
    return build_tearsheet(since=start, until=end, generated_at=datetime.now(UTC), points=points,
                           closed_trades=closed, start=begin, holdings=holdings, benchmark_symbol=benchmark_symbol,
                           benchmark_bars=bench, benchmark_error="" if bench else "not in the backtest's history")


# -- the sweep ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRow:
    combo: dict[str, str]
    total_return: float | None
    max_drawdown: float | None
    sharpe: float | None
    trades: int
    oos_return: float | None = None
    oos_max_drawdown: float | None = None
    oos_sharpe: float | None = None


#: What a forked sweep worker reads: set in the parent before the fork, inherited (never pickled).
_JOB: dict = {}


def _ignore_sigint() -> None:
    # Ctrl-C goes to the whole process group: the parent alone handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stats_of(result) -> tuple[float | None, float | None, float | None]:
    """(total return, max drawdown, Sharpe) of a backtest's equity, as its tearsheet computes them."""
    sheet = tearsheet_of(result, result.equity[0][0], result.equity[-1][0])
    return sheet.total_return, sheet.max_drawdown, sheet.sharpe


def sweep_one(combo: dict[str, str]) -> SweepRow:
    from shared.linebacktest import BacktestSettings
    from shared.linebacktest import run as backtest

    job = _JOB
    settings = BacktestSettings.load({**job["overrides"], **combo})
    result = backtest(job["history"], settings, start=job["start"], end=job["split_end"])
    ret, dd, sharpe = stats_of(result)
    row = SweepRow(combo, ret, dd, sharpe, len(result.closed))
    if job["oos_start"] is not None:
        held_out = backtest(job["history"], settings, start=job["oos_start"], end=job["end"])
        o_ret, o_dd, o_sharpe = stats_of(held_out)
        row = SweepRow(combo, ret, dd, sharpe, len(result.closed), o_ret, o_dd, o_sharpe)
    return row


def run_grid(history, overrides: Mapping[str, str], grid: list[dict[str, str]], start: date, end: date, *,
             workers: int, out_of_sample: float | None = None) -> list[SweepRow]:
    """Every combination, in `workers` forked processes, ranked: best Sharpe first (in-sample), then return."""
    split_end, oos_start = end, None
    if out_of_sample is not None:
        days = sorted({b.t.date() for bars in history.bars.values() for b in bars if start <= b.t.date() <= end})
        cut = int(len(days) * (1 - out_of_sample))
        if cut < 2 or cut >= len(days) - 1:
            raise InputError(f"--out-of-sample {out_of_sample}: too few sessions ({len(days)}) to split")
        split_end, oos_start = days[cut - 1], days[cut]
    _JOB.update(history=history, overrides=dict(overrides), start=start, end=end, split_end=split_end,
                oos_start=oos_start)
    if workers <= 1 or len(grid) == 1:
        rows = [sweep_one(c) for c in grid]
    else:
        context = multiprocessing.get_context("fork")
        pool = context.Pool(processes=min(workers, len(grid)), initializer=_ignore_sigint)
        try:
            rows = list(pool.imap_unordered(sweep_one, grid))
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    return sorted(rows, key=lambda r: (-(r.sharpe if r.sharpe is not None else float("-inf")),
                                       -(r.total_return or 0.0), json.dumps(r.combo)))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _sweep(history, overrides, grid, start, end, folder: Path, args) -> int:
    from shared.texttable import table

    workers = max(1, args.workers or available_cores())
    print(f"sweep: {len(grid)} combination(s) on {workers} process(es), {start} to {end} on {history.source}",
          flush=True)
    rows = run_grid(history, overrides, grid, start, end, workers=workers, out_of_sample=args.out_of_sample)
    names = list(grid[0])
    header = ["rank", *names, "return", "max drawdown", "sharpe", "trades"]
    oos = args.out_of_sample is not None
    if oos:
        header += ["oos return", "oos max dd", "oos sharpe"]
    body = []
    for i, r in enumerate(rows, 1):
        line = [i, *(r.combo[n] for n in names), _pct(r.total_return), _pct(r.max_drawdown), _num(r.sharpe), r.trades]
        if oos:
            line += [_pct(r.oos_return), _pct(r.oos_max_drawdown), _num(r.oos_sharpe)]
        body.append(line)
    print("\n".join(table(header, body, right=range(len(header)))))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {folder}: cannot create the folder ({exc.strerror})") from None
    with (folder / "sweep.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    if oos:
        print("in-sample ranks; the oos columns are the held-out sessions: trust a setting only if it holds up there")
    print(f"folder: {folder}")
    sys.stdout.flush()
    return 0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
