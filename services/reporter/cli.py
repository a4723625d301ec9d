"""`factoryline report`: write today's report now (same code as the 16:05 job) and print it as a table;
`--since DATE`: the tearsheet over DATE..today instead."""

from __future__ import annotations

import argparse
from datetime import date

from shared.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write today's HTML/JSON report and print the account and positions")
    parser.add_argument("--out", metavar="DIR", help="folder for the report files (default: FL_REPORTS_DIR)")
    parser.add_argument("--since", metavar="DATE",
                        help="write the tearsheet over DATE (YYYY-MM-DD) to today instead of the daily report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.reporter import render_tearsheet, render_text
    from services.reporter.jobs import TearsheetFiles, run_from_settings

    since = None
    if getattr(args, "since", None):
        try:
            since = date.fromisoformat(args.since)
        except ValueError:
            raise InputError(f"--since {args.since}: give a date as YYYY-MM-DD") from None
    files = run_from_settings(args.out, since)
    if isinstance(files, TearsheetFiles):
        print(render_tearsheet.render_text(files.sheet))
        print()
        print(f"tearsheet: {files.html_path}")
        print(f"json: {files.json_path}")
        return 0
    print(render_text.render(files.report))
    print()
    print(f"html: {files.html_path}")
    print(f"json: {files.json_path}")
    return 0
