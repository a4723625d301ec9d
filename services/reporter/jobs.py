"""The reporter's RQ job (16:05 New York): broker reads + ledger + equity history in, report files out.

Reads the broker (clock, account, positions, open orders: four requests), the manager's position state
and ledger; records today's equity point in `Keys.equity_history`; writes `report-<date>.html` and
`report-<date>.json` (the broker's New York date) into FL_REPORTS_DIR, atomically. Re-running it the
same day rewrites both files with fresh figures and adds one more point to the curve.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import redis

from services.reporter import render_html, render_tearsheet, render_text
from services.reporter.report import DailyReport, gather
from services.reporter.settings import ReporterSettings
from services.reporter.tearsheet import Tearsheet, gather_tearsheet
from shared import bus, config, logs
from shared.broker.contract import OrderExecutor
from shared.errors import FactoryLineError, InputError
from shared.exits import ExitRules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReportFiles:
    report: DailyReport
    html_path: Path
    json_path: Path

    def summary(self) -> dict:
        """JSON-friendly: what the RQ job returns (and rq-dashboard shows)."""
        totals = self.report.totals
        return {
            "report_date": self.report.report_date.isoformat(),
            "html": str(self.html_path),
            "json": str(self.json_path),
            "equity": str(self.report.account.equity),
            "change_today": str(self.report.account.change_today),
            "open_positions": totals.open_positions,
            "closed_trades": totals.closed_trades,
            "realized_pl": str(totals.realized_pl),
            "unrealized_pl": str(totals.unrealized_pl),
        }


def daily_report(out_dir: str | None = None) -> dict:
    """Write today's report now (the RQ job and `factoryline report`). `out_dir` overrides FL_REPORTS_DIR.
    Returns the summary with the paths written; the terminal table is logged at INFO."""
    files = run_from_settings(out_dir)
    return files.summary()


@dataclass(frozen=True, slots=True)
class TearsheetFiles:
    sheet: Tearsheet
    html_path: Path
    json_path: Path


def run_from_settings(out_dir: str | None = None, since: date | None = None) -> ReportFiles | TearsheetFiles:
    """Today's daily report, or with `since` the tearsheet over since..today."""
    settings = config.load(ReporterSettings)
    broker_settings = config.load(config.BrokerSettings)
    redis_settings = config.load(config.RedisSettings)
    rules = ExitRules.from_settings(config.load(config.ExitSettings))
    folder = Path(out_dir) if out_dir else settings.FL_REPORTS_DIR
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    client = bus.connect(redis_settings)
    try:
        keys = bus.Keys(redis_settings.FL_NAMESPACE)
        if since is not None:
            return write_tearsheet(executor, client, keys, folder, since, settings.FL_BENCHMARK_SYMBOL)
        return write_report(executor, client, keys, rules, folder)
    except redis.RedisError as exc:
        raise FactoryLineError(f"Redis: {exc}") from None
    finally:
        client.close()
        executor.close()


def write_report(executor: OrderExecutor, client: redis.Redis, keys: bus.Keys, rules: ExitRules,
                 folder: Path) -> ReportFiles:
    """Gather, record the equity point, write both files; the same code for the job, the CLI and tests."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"reports folder {folder}: {exc.strerror or exc}") from None
    report = gather(executor, client, keys, rules)
    stem = f"report-{report.report_date.isoformat()}"
    html_path, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    _write_atomically(json_path, report.model_dump_json(indent=2) + "\n")
    _write_atomically(html_path, render_html.render(report))
    logs.event(log, "report_written", report_date=report.report_date.isoformat(), equity=report.account.equity,
               positions=report.totals.open_positions, closed_trades=report.totals.closed_trades,
               realized_pl=report.totals.realized_pl, html=str(html_path), json=str(json_path))
    bus.publish(client, keys, "report_written", report_date=report.report_date.isoformat(),
                equity=str(report.account.equity), positions=report.totals.open_positions,
                closed_trades=report.totals.closed_trades, realized_pl=str(report.totals.realized_pl),
                html=str(html_path))
    log.info("daily report\n%s", render_text.render(report))
    return ReportFiles(report=report, html_path=html_path, json_path=json_path)


def write_tearsheet(executor: OrderExecutor, client: redis.Redis, keys: bus.Keys, folder: Path, since: date,
                    benchmark_symbol: str = "SPY", *, record: bool = True) -> TearsheetFiles:
    """The tearsheet over since..today (the broker's New York date): `tearsheet-<since>-<until>.html`
    and `.json` in `folder`, written atomically. Records today's equity point as a report does."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"reports folder {folder}: {exc.strerror or exc}") from None
    sheet = gather_tearsheet(executor, client, keys, since, benchmark_symbol=benchmark_symbol, record=record)
    if sheet.until < since:
        raise InputError(f"--since {since} is after today ({sheet.until})")
    stem = f"tearsheet-{since.isoformat()}-{sheet.until.isoformat()}"
    html_path, json_path = folder / f"{stem}.html", folder / f"{stem}.json"
    _write_atomically(json_path, sheet.model_dump_json(indent=2) + "\n")
    _write_atomically(html_path, render_tearsheet.render(sheet))
    logs.event(log, "tearsheet_written", since=since.isoformat(), until=sheet.until.isoformat(),
               html=str(html_path), json=str(json_path))
    return TearsheetFiles(sheet=sheet, html_path=html_path, json_path=json_path)


def _write_atomically(path: Path, text: str) -> None:
    """Readers (a browser, a mail job) never see half a report: write beside it, then rename."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
