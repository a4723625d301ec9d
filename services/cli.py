"""`factoryline`: the command line. Each command lives in a service module that defines
`register(subparsers)`; only the module of the command being run is imported, so start-up stays fast
and a command never pays for another service's imports.

Any FactoryLineError (bad config, bad input, a broker refusal) ends the command with one line on
stderr and exit status 2; never a traceback.

`demo` and `sim` run the optional packages `demo` and `sim` (the `sim` extra); only those two
commands import them, and without the extra they end with a one-line error saying how to install it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.errors import FactoryLineError

#: command -> (module defining register(subparsers), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo.cli", "run the line end to end on the built-in simulated market, offline"),
    "config": ("services.configcmd", "validate settings from the environment and .env and print them"),
    "sim": ("sim.cli", "run the Alpaca-compatible simulated market"),
    "scan": ("services.scanner.cli", "scan the targets now and write one QuickStrike log per ticker"),
    "rank": ("services.ranker.cli", "rank the scanner logs now and write actionable_signals.csv"),
    "trade": ("services.trader.cli", "enter today's ranked signals now (--dry-run prints the plan)"),
    "manage": ("services.manager.tick_cli", "check every open position's soft exits now and sell what fired"),
    "reconcile": ("services.manager.cli", "check every position's protective orders now and fix them"),
    "backtest": ("services.reporter.backtest_cli", "replay the whole line over daily history: tearsheet, trades, sweep"),
    "report": ("services.reporter.cli", "write today's HTML/JSON report and print the account and positions"),
    "status": ("services.ops.cli", "one screen: queues, workers, streamer, scheduler, positions and their protection"),
    "halt": ("services.ops.cli", "stop new entries and soft exits (protection keeps running)"),
    "resume": ("services.ops.cli", "clear the halt flag"),
    "flatten": ("services.ops.cli", "halt, cancel every order and sell every position at market (asks first)"),
    "watch": ("services.manager.cli", "follow live notifications (fills, protections, exits)"),
    "notify": ("services.notifier.cli", "send a test notification to every FL_NOTIFY_URLS URL (--test)"),
}
#: Commands of the optional `sim` extra -> the modules it installs that they need.
NEEDS_SIM_EXTRA: dict[str, tuple[str, ...]] = {
    "demo": ("sim", "demo", "aiohttp", "fakeredis"),
    "sim": ("sim", "aiohttp"),
}


def missing_extra(command: str | None) -> str | None:
    """The one-line error for an optional command whose extra is not installed, else None."""
    for name in NEEDS_SIM_EXTRA.get(command, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            return (f"factoryline {command} needs the simulated market, which is not installed "
                    f"(no module {name!r}): pip install 'factoryline[sim]'")
    return None


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factoryline",
        description="Factory Line: scanner logs to managed Alpaca positions.",
        epilog="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="WARNING", help="log level for stderr (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--log-level":
            skip_next = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    from shared import logs

    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    if command is not None and command not in COMMANDS:
        print(f"factoryline: error: unknown command {command!r} (see factoryline --help)", file=sys.stderr)
        return 2
    if (missing := missing_extra(command)) is not None:
        print(f"factoryline: error: {missing}", file=sys.stderr)
        return 2
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        print(f"factoryline: error: --log-level: unknown level {args.log_level!r} (use DEBUG, INFO, WARNING or ERROR)",
              file=sys.stderr)
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
