"""The reporter's settings (documented in .env.example)."""

from __future__ import annotations

from pathlib import Path

from shared.config import _Settings


class ReporterSettings(_Settings):
    #: Folder that receives report-YYYY-MM-DD.html and report-YYYY-MM-DD.json (created when missing).
    FL_REPORTS_DIR: Path = Path("reports")
    #: The tearsheet's benchmark: a symbol whose daily bars the broker serves, drawn from the same start.
    FL_BENCHMARK_SYMBOL: str = "SPY"
