"""`factoryline rank`: run the ranker's job now, in this process, and print what it kept and why
it refused the rest. Same code as the 06:00 job; `--no-redis` writes only the CSV."""

from __future__ import annotations

import argparse
from decimal import Decimal

from shared.texttable import table


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("rank", help="rank the scanner logs now and write actionable_signals.csv")
    parser.add_argument("--dir", help="scanner logs folder (default: FL_SIGNALS_DIR)")
    parser.add_argument("--csv", help="CSV to write (default: FL_SIGNALS_CSV)")
    parser.add_argument("--no-redis", action="store_true", help="do not write today's list to Redis")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.ranker.jobs import rank_signals

    summary = rank_signals(signals_dir=args.dir, csv_path=args.csv, use_redis=not args.no_redis)
    print(render(summary))
    return 0


def render(summary: dict) -> str:
    """The summary as two tables a person can read: kept (best first) and rejected (by file)."""
    kept, rejected = summary["kept"], summary["rejected"]
    lines = [f"ranked {summary['logs']} logs in {summary['signals_dir']} for {summary['day']}: "
             f"{len(kept)} kept, {len(rejected)} rejected", ""]
    if kept:
        lines.append("kept")
        lines += table(
            ("rank", "ticker", "strategy", "win rate", "profit factor", "trades", "signal price", "scanned at"),
            [(str(s["rank"]), s["ticker"], s["strategy"], _percent(s["win_rate"]), s["profit_factor"],
              str(s["trades"]), s["signal_price"], s["scanned_at"]) for s in kept],
            right={0, 3, 4, 5, 6},
        )
    else:
        lines.append("kept: none (no actionable signal today)")
    if rejected:
        lines += ["", "rejected"]
        lines += table(("file", "reason", "detail"),
                        [(r["source_file"], r["reason"], r["detail"]) for r in rejected])
    lines += ["", f"csv: {summary['csv_path']}", f"redis: {summary['redis_key'] or 'not written (--no-redis)'}"]
    return "\n".join(lines)


def _percent(fraction: str) -> str:
    return f"{(Decimal(fraction) * 100).quantize(Decimal('0.01'))}%"
