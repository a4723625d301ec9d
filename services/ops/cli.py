"""`factoryline status | halt | resume | flatten`: what a person runs to look at the line and to stop it.

- `status`: one screen (services/ops/status.py). Exit 1 when a position is UNPROTECTED or the broker
  or Redis is unreachable, else 0, so a cron job or a healthcheck can use it.
- `halt [--reason TEXT]`: sets `<ns>:halt` (JSON: reason, time, who). The trader refuses new entries and
  the manage tick sells nothing while it is set; the manager's protection keeps running.
- `resume`: deletes it.
- `flatten [--yes]`: sets the halt flag, then cancels every order and sells every position at market
  (services/ops/flatten.py). Without --yes it shows the plan and asks for the word `flatten` on stdin;
  without a terminal and without --yes it refuses (exit 2). Outside the session it changes nothing
  (exit 1): a market sell would wait for the open while the manager put the stops back.

`python -m services.ops.cli COMMAND` runs them before `factoryline` lists them in its COMMANDS.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from shared.halt import set_halt

#: command -> one-line help, as `factoryline --help` shows it.
HELP = {
    "status": "one screen: queues, workers, streamer, scheduler, positions and their protection, halt flag",
    "halt": "stop new entries and soft exits (sets the halt flag; protection keeps running)",
    "resume": "clear the halt flag",
    "flatten": "halt, cancel every order and sell every position at market (asks first)",
}


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("status", help=HELP["status"]).set_defaults(func=run_status)
    halt = sub.add_parser("halt", help=HELP["halt"])
    halt.add_argument("--reason", default="", help="why (shown by status and in the notification)")
    halt.set_defaults(func=run_halt)
    sub.add_parser("resume", help=HELP["resume"]).set_defaults(func=run_resume)
    flatten = sub.add_parser("flatten", help=HELP["flatten"])
    flatten.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flatten.set_defaults(func=run_flatten)


# -- shared plumbing ---------------------------------------------------------------------------------


def _redis():
    from shared import bus, config

    settings = config.load(config.RedisSettings)
    return settings, bus.Keys(settings.FL_NAMESPACE), bus.connect(settings)


def _redis_error(exc: Exception):
    from shared import logs
    from shared.errors import FactoryLineError

    return FactoryLineError(f"Redis: {logs.redact(str(exc))}")


# -- status --------------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    import redis

    from services.ops import status as st
    from shared import bus, config, logs
    from shared.errors import ConfigError, FactoryLineError

    redis_settings = config.load(config.RedisSettings)
    keys = bus.Keys(redis_settings.FL_NAMESPACE)
    report = st.Status(keys.ns, datetime.now(UTC))
    client = bus.connect(redis_settings)
    rq_client = bus.connect_rq(redis_settings)
    try:
        st.read_redis(report, client, rq_client, keys)
    except redis.RedisError as exc:
        report.redis_error = logs.redact(str(exc)) or type(exc).__name__
    finally:
        client.close()
        rq_client.close()
    from shared.broker import make_executor

    try:
        broker_settings = config.load(config.BrokerSettings)
    except ConfigError as exc:
        report.broker_error, report.broker_configured = str(exc), False
    else:
        try:
            executor = make_executor(broker_settings)
            try:
                st.read_broker(report, executor)
            finally:
                executor.close()
        except FactoryLineError as exc:
            report.broker_error = logs.redact(str(exc))
    print("\n".join(st.render(report)))
    return 1 if report.unprotected or report.broker_error or report.redis_error else 0


# -- halt / resume -------------------------------------------------------------------------------------


def run_halt(args: argparse.Namespace) -> int:
    import redis

    from services.ops.status import halt_line

    _settings, keys, client = _redis()
    try:
        set_halt(client, keys, args.reason.strip())
        print(halt_line(client.get(keys.halt)))
    except redis.RedisError as exc:
        raise _redis_error(exc) from None
    finally:
        client.close()
    return 0


def run_resume(args: argparse.Namespace) -> int:
    import redis

    from services.ops.status import halt_line
    from shared import bus

    _settings, keys, client = _redis()
    try:
        was = client.getdel(keys.halt)
        bus.publish(client, keys, "resumed", message="halt flag cleared" if was else "halt flag was not set")
        print(halt_line(client.get(keys.halt)) + ("" if was else " (it was not set)"))
        print(_rearm_limits(client, keys))
    except redis.RedisError as exc:
        raise _redis_error(exc) from None
    finally:
        client.close()
    return 0


def _rearm_limits(client, keys) -> str:
    """Resuming accepts the risk limits' state as it is now: the daily loss is not measured again
    this session, the drawdown from today's equity on (else the next check would trip again at once).
    Without the broker only the daily loss is re-armed, and the line says so."""
    from shared import config, risk
    from shared.broker import make_executor
    from shared.errors import FactoryLineError
    from shared.market.calendar import NEW_YORK

    try:
        executor = make_executor(config.load(config.BrokerSettings))
        try:
            equity = executor.get_account().equity
            session = executor.get_clock().timestamp.astimezone(NEW_YORK).date()
        finally:
            executor.close()
    except FactoryLineError as exc:
        risk.acknowledge(client, keys, None, datetime.now(UTC).astimezone(NEW_YORK).date())
        return f"risk limits: daily loss re-armed from the next session; drawdown peak NOT reset (broker: {exc})"
    risk.acknowledge(client, keys, equity, session)
    return f"risk limits: daily loss re-armed from the next session; drawdown measured from equity {equity} on"


# -- flatten -------------------------------------------------------------------------------------------


def run_flatten(args: argparse.Namespace, stdin=None) -> int:
    import redis

    from services.ops import flatten as fl
    from services.ops.status import coverage
    from shared import config
    from shared.broker import make_executor
    from shared.ownership import is_ours
    from shared.positions.context import ManagerContext
    from shared.texttable import table

    stdin = stdin if stdin is not None else sys.stdin
    if not args.yes and not stdin.isatty():
        print("flatten: refused: no terminal to confirm on; run it with --yes to sell everything", file=sys.stderr)
        return 2
    broker_settings = config.load(config.BrokerSettings)
    _settings, keys, client = _redis()
    executor = make_executor(broker_settings)
    try:
        ctx = ManagerContext.from_settings(executor, client, keys)
        positions = {p.symbol: p for p in executor.get_positions()}
        orders = executor.get_open_orders()
        symbols, left_alone = fl.managed_symbols(ctx, positions, orders)
        if not symbols:
            print("flatten: no positions and no open orders of the line: nothing to do (halt flag not changed)")
            for symbol in left_alone:
                print(f"{symbol}: not the line's (the user's orders or position): left alone")
            return 0
        plan = []
        for symbol in symbols:
            p = positions.get(symbol)
            n_orders = sum(1 for o in orders if o.symbol == symbol and is_ours(o.client_order_id, keys.ns))
            sell = "-" if p is None else (f"{p.qty} (all available)" if p.qty > 0 else f"none: short {p.qty}")
            covered = "-" if p is None else f"{coverage(p, orders).covered}/{p.qty}"
            plan.append((symbol, n_orders, sell, covered))
        print("flatten plan: set the halt flag, then for each symbol cancel the line's orders and sell at market")
        print("\n".join(table(("symbol", "orders to cancel", "shares to sell", "stops cover"), plan, right={1})))
        for symbol in left_alone:
            print(f"{symbol}: not the line's (the user's orders or position, FL_FOREIGN_POSITIONS): left alone")
        if (refusal := _closed_market_refusal(executor.get_clock())) is not None:
            print(refusal)
            return 1
        if not args.yes:
            print("type 'flatten' to go ahead: ", end="", flush=True)
            if stdin.readline().strip() != "flatten":
                print("flatten: not confirmed: nothing done")
                return 1
        clock = executor.get_clock()  # again: the prompt may have waited
        if (refusal := _closed_market_refusal(clock)) is not None:
            print(refusal)
            return 1
        if set_halt(client, keys, "flatten", keep_existing=True):
            print(f"halt flag {keys.halt} set")
        else:
            print(f"halt flag {keys.halt} already set; kept as it was")
        results = [fl.flatten_symbol(ctx, s, now=clock.timestamp) for s in symbols]
    except redis.RedisError as exc:
        raise _redis_error(exc) from None
    finally:
        executor.close()
        client.close()
    print("\n".join(table(
        ("symbol", "outcome", "held", "sold", "price", "client order id", "detail"),
        [(r.symbol, r.outcome, r.held_before, r.qty_sold, r.price if r.price is not None else "-",
          r.client_order_id or "-", r.detail) for r in results], right={2, 3, 4})))
    failed = [r.symbol for r in results if not r.ok]
    if failed:
        print(f"flatten: NOT flat: {', '.join(failed)} (see detail); the halt flag stays set")
        return 1
    print("flatten: done: the line holds no position and no open order; the halt flag stays set "
          "(`factoryline resume` clears it)")
    return 0


def _closed_market_refusal(clock) -> str | None:
    """Flatten sells at market, in the session only. Outside it a market sell would wait for the open,
    and the manager's reconcile would cancel it as "not the desired protection" and put the stops back:
    so nothing is canceled or sold, and the stops stay where they are."""
    from shared.market.calendar import NEW_YORK

    if clock.is_open:
        return None
    return (f"flatten: refused: the market is closed (next open "
            f"{clock.next_open.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}); nothing changed, protection left in "
            "place. Run it again in the session (`factoryline halt` stops the next entries meanwhile)")


def main(argv: list[str] | None = None) -> int:
    """`python -m services.ops.cli COMMAND`: the same commands through `factoryline`'s own main."""
    from services import cli

    for name, text in HELP.items():
        cli.COMMANDS.setdefault(name, ("services.ops.cli", text))
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
