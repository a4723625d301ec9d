"""`factoryline scan`: run the nightly QuickStrike scan now, in this process, and print its summary.
Same code as the RQ job; `--no-redis` skips the ledger (no black-sheep check)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("scan", help="scan the targets now and write one QuickStrike log per ticker")
    parser.add_argument("--targets", help="file of tickers (default: FL_SCAN_TARGETS, else the broker's assets)")
    parser.add_argument("--dir", help="logs folder to write (default: FL_SIGNALS_DIR)")
    parser.add_argument("--no-redis", action="store_true", help="do not read the ledger (no black-sheep check)")
    parser.add_argument("--workers", type=_positive, help="parallel processes (default: FL_SCAN_WORKERS)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.scanner.jobs import scan_targets

    summary = scan_targets(targets=args.targets, signals_dir=args.dir, use_redis=not args.no_redis,
                           workers=args.workers)
    print(render(summary))
    # Some tickers failed: the logs of the others are written, but say so in the exit status.
    return 1 if summary["errors"] else 0


def render(summary: dict) -> str:
    states = ", ".join(f"{state} {count}" for state, count in summary["states"].items())
    lines = [
        f"scanned {summary['scanned']} of {summary['tickers']} tickers ({summary['targets']}) into "
        f"{summary['signals_dir']} at {summary['scanned_at']}",
        f"signals found: {summary['signals_found']}; in trade: {summary['in_trade']}; logs by state: {states}",
        f"errors: {len(summary['errors'])}",
    ]
    lines += [f"  {error['ticker']}: {error['error']}" for error in summary["errors"]]
    return "\n".join(lines)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
