"""`factoryline trade`: run the trader's job now, in this process, and print the entries and skips.

Same code as the 09:35 job. `--dry-run` prints the plan and sends nothing; `--csv PATH` reads the ranked
list from a file instead of today's Redis key; `--queue-for-open` sends even while the market is
closed (the broker fills the day orders at the next open).

Exit status: 0 when the run completed (entries sent or already there, dry run, nothing to buy);
1 when it was refused (halted, market closed, the signals' signature missing or wrong) or an entry was
rejected, not sent or of unknown outcome; 2 for bad configuration or input (one line on stderr).
Signals dropped by the re-check of the ranker's rules are listed with their reasons.
"""

from __future__ import annotations

import argparse

from shared.texttable import table

_PROBLEMS = frozenset({"rejected", "unknown outcome", "not sent"})


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("trade", help="enter today's ranked signals now (--dry-run prints the plan)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; send nothing")
    parser.add_argument("--csv", metavar="PATH", help="read the ranked signals from this CSV instead of Redis")
    parser.add_argument("--queue-for-open", action="store_true",
                        help="send even while the market is closed; the broker queues them for the open")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.trader.jobs import trade_signals

    summary = trade_signals(csv_path=args.csv, dry_run=args.dry_run, queue_for_open=args.queue_for_open)
    print(render(summary))
    return exit_status(summary)


def exit_status(summary: dict) -> int:
    if summary["status"] in ("halted", "market_closed", "signals_refused"):
        return 1
    return 1 if any(e["status"] in _PROBLEMS for e in summary["entries"]) else 0


def render(summary: dict) -> str:
    """The summary as tables a person can read: orders (ranked order), then skips with reasons."""
    status = summary["status"]
    if status == "halted":
        return f"halted: {summary['reason']}"
    head = f"trade date {summary['trade_date']} (signals of {summary['signals_day']})"
    if status == "market_closed":
        return f"{head}: refused: {summary['reason']}"
    if status == "signals_refused":
        return f"{head}: refused: {summary['reason']}"
    if status == "no_signals":
        return "\n".join([f"{head}: {summary['reason']}", *_dropped(summary)])
    account = summary["account"]
    lines = [
        f"{head} from {summary['signals_source']}" + ("  [DRY RUN: nothing sent]" if summary["dry_run"] else ""),
        f"cash {_money(account['cash'])}, buying power {_money(account['buying_power'])}, usable "
        f"{_money(summary['usable'])}, per signal {_money(summary['allocation'])}",
    ]
    if summary.get("reason"):
        lines.append(summary["reason"])
    lines.append("")
    entries = summary["entries"]
    if entries:
        lines.append("orders")
        lines += table(
            ("symbol", "kind", "amount", "qty", "ref price", "client order id", "status", "detail"),
            [(e["symbol"], e["kind"], _money(e["amount"]), e["qty"] or "-", e["reference_price"],
              e["client_order_id"], e["status"] + (f" ({e['order_status']})" if e.get("order_status") else ""),
              e.get("detail") or "") for e in entries],
            right={2, 3, 4},
        )
    else:
        lines.append("orders: none")
    lines += _dropped(summary)
    if summary["skips"]:
        lines += ["", "skipped"]
        lines += table(("symbol", "reason", "detail"),
                        [(s["symbol"], s["reason"], s["detail"]) for s in summary["skips"]])
    if summary["counts"]:
        lines += ["", ", ".join(f"{n} {status}" for status, n in summary["counts"].items())]
    return "\n".join(lines)


def _dropped(summary: dict) -> list[str]:
    """The signals the re-check of the ranker's rules dropped, with their reasons."""
    dropped = summary.get("signals_dropped") or []
    if not dropped:
        return []
    return ["", f"dropped by the re-check of the ranker's rules ({len(dropped)})",
            *table(("symbol", "reason", "detail"), [(d["ticker"] or "-", d["reason"], d["detail"]) for d in dropped])]


def _money(amount: str | None) -> str:
    from decimal import Decimal

    from shared.money import fmt_money

    return "-" if amount is None else fmt_money(Decimal(amount))
