"""`factoryline manage`: run the manager's soft-exit tick now, in this process, and print what it did.

The same code as the RQ job the scheduler enqueues every 5 minutes: safe while managers run (each
exit takes the symbol's lock), and a no-op (with a line saying why) while halted or the market is
closed. Exit status 0, or 1 when an exit was refused (its position was protected again and an
`exit_failed` alert raised).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("manage", help="check every open position's soft exits now and sell what fired")
    parser.add_argument("--json", action="store_true", help="print the tick's summary as JSON")
    parser.set_defaults(func=run_manage)


def run_manage(args: argparse.Namespace) -> int:
    from services.manager.tick import tick_from_settings
    from shared.positions.exiting import ExitOutcome

    report = tick_from_settings()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            print(line)
    return 1 if any(e.outcome is ExitOutcome.REFUSED for e in report.exits) else 0
