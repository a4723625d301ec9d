"""`factoryline demo`: run the line on the built-in simulated market (no keys, no Redis, no network)."""

from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path

from demo.days import DEFAULT_DAYS, DEFAULT_FIRST_DAY, DaysOptions, run_days


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the whole line for several days on the built-in simulated market")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS,
                        help=f"trading days to simulate (default {DEFAULT_DAYS})")
    parser.add_argument("--seed", type=int, default=7, help="market and sample-log seed (default 7)")
    parser.add_argument("--day", type=date.fromisoformat, default=None,
                        help=f"first trading day, YYYY-MM-DD (default {DEFAULT_FIRST_DAY}; with --data, two "
                             "years into the data)")
    parser.add_argument("--data", default=None, metavar="SOURCE",
                        help="run on real daily prices: csv:PATH, bokeh (pip install 'factoryline[data]') or "
                             "broker (docs/data.md); the universe is the data's symbols")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep logs, signals and reports here (default: a temporary folder, kept at the end)")
    parser.add_argument("--verbose", action="store_true", help="also print the services' own log lines")
    parser.set_defaults(func=lambda args: _run(args))


def _run(args: argparse.Namespace) -> int:
    root = logging.getLogger()
    if not args.verbose:
        # The services log every fix loudly (by design, for operators); the demo prints its own story.
        # The records still reach the demo's capture (the secret audit reads them), not the terminal.
        for handler in root.handlers:
            handler.setLevel(logging.ERROR)
    root.setLevel(logging.INFO)
    workdir = args.workdir
    return run_days(DaysOptions(seed=args.seed, first_day=args.day, days=args.days, workdir=workdir,
                                data=args.data))
