"""`factoryline`: the command line. Each service module registers its own subcommands.

Any FactoryLineError (bad config, bad input, a broker refusal) ends the command with one line on
stderr and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.errors import FactoryLineError

#: Modules that define `register(subparsers)`; each subcommand sets `func(args) -> int`.
COMMAND_MODULES = (
    "services.sim.cli",
    "services.ranker.cli",
    "services.trader.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factoryline", description="Factory Line trading system")
    parser.add_argument("--log-level", default="WARNING", help="log level for stderr (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shared import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logs.setup(args.log_level.upper())
    try:
        return int(args.func(args) or 0)
    except FactoryLineError as exc:
        print(f"factoryline: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("factoryline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
