"""`factoryline demo`: run the line on the built-in simulated market (no keys, no Redis, no network)."""

from __future__ import annotations

import argparse
import logging
from datetime import date
from pathlib import Path

from services.demo.runner import DEFAULT_DAY, DemoOptions, run


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the line end to end on the built-in simulated market")
    parser.add_argument("--seed", type=int, default=7, help="market and sample-log seed (default 7)")
    parser.add_argument("--day", type=date.fromisoformat, default=DEFAULT_DAY,
                        help=f"trading day to simulate, YYYY-MM-DD (default {DEFAULT_DAY})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep logs and actionable_signals.csv here (default: a temporary folder)")
    parser.add_argument("--verbose", action="store_true", help="also print the services' own log lines")
    parser.set_defaults(func=lambda args: _run(args))


def _run(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The services log every fix loudly (by design, for operators); the demo prints its own story.
        logging.getLogger().setLevel(logging.ERROR)
    run(DemoOptions(seed=args.seed, day=args.day, workdir=args.workdir))
    return 0
