"""`factoryline report`: write today's report now (same code as the 16:05 job) and print it as a table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write today's HTML/JSON report and print the account and positions")
    parser.add_argument("--out", metavar="DIR", help="folder for the report files (default: FL_REPORTS_DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.reporter import render_text
    from services.reporter.jobs import run_from_settings

    files = run_from_settings(args.out)
    print(render_text.render(files.report))
    print()
    print(f"html: {files.html_path}")
    print(f"json: {files.json_path}")
    return 0
