"""`factoryline reconcile [--symbol S]` and `factoryline watch`.

`reconcile` runs the manager's own reconcile now, in this process (the same code a fill, a restart
and the timer run), and prints one line per symbol: what it found and what it fixed. It is safe
while managers run: the per-symbol lock serialises them.
`watch` prints one line per live notification until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

import redis

from shared.errors import FactoryLineError


class RedisUnavailable(FactoryLineError):
    pass


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("reconcile", help="check every position's protection now and fix what is missing")
    parser.add_argument("--symbol", help="only this symbol (default: every position, open sell and tracked symbol)")
    parser.set_defaults(func=run_reconcile)
    parser = sub.add_parser("watch", help="print live notifications (fills, protections, exits) until Ctrl-C")
    parser.add_argument("--raw", action="store_true", help="print each notification's JSON as published")
    parser.add_argument("--count", type=int, default=None, help="stop after this many notifications")
    parser.set_defaults(func=run_watch)


def run_reconcile(args: argparse.Namespace) -> int:
    from shared.errors import InputError
    from shared.positions import reconcile as rec
    from shared.positions.context import context_from_environment
    from shared.protection import Trigger

    symbol = (args.symbol or "").strip().upper() or None
    if args.symbol is not None and (not symbol or not symbol.replace(".", "").replace("-", "").isalnum()):
        raise InputError(f"--symbol: not a ticker: {args.symbol!r}")
    with context_from_environment() as ctx:
        if symbol:
            reports = {symbol: rec.reconcile_symbol(ctx, symbol, Trigger.MANUAL)}
        else:
            reports = rec.reconcile_all(ctx, Trigger.MANUAL)
    if not reports:
        print("reconcile: no positions, no open sell orders, nothing tracked")
    for report in reports.values():
        print(report.summary())
    failed = [r for r in reports.values() if r.error is not None]
    print(f"reconcile: {len(reports)} symbol(s), {sum(r.changed for r in reports.values())} changed, "
          f"{len(failed)} failed")
    return 1 if failed else 0


def run_watch(args: argparse.Namespace) -> int:
    from services.manager.watch import watch
    from shared import bus, config

    redis_settings = config.load(config.RedisSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    client = bus.connect(redis_settings, blocking=True)
    print(f"watching {keys.notifications} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        watch(client, keys, lambda line: print(line, flush=True), limit=args.count, raw=args.raw)
    except KeyboardInterrupt:
        return 0
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis: {exc}") from None
    finally:
        client.close()
    return 0
