"""The common shell of every `python -m services.<name>` entry point.

`--check` runs the service's self-check (settings, Redis, broker) and prints `<name>: ok: ...`: the
docker-compose healthcheck. Without it the service runs. Either way a bad setting, an unreachable
Redis or a broker error ends the process with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import redis

from shared import bus, config, logs
from shared.errors import FactoryLineError
from shared.models import MarketClock

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def run(name: str, doc: str, argv: list[str] | None, *, serve: Callable[[argparse.Namespace], int | None],
        check: Callable[[argparse.Namespace], str], prog: str | None = None,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse `--check` / `--log-level` (plus the service's own flags from `add_arguments`), then call
    `check(args)` (its text follows "ok:") or `serve(args)`. `prog` defaults to `python -m services.<name>`."""
    parser = argparse.ArgumentParser(prog=prog or f"python -m services.{name}",
                                     description=doc.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="self-check (settings, Redis, broker), then exit 0 or 2")
    parser.add_argument("--log-level", default=None,
                        help="log level: DEBUG, INFO, WARNING or ERROR (default INFO; WARNING with --check)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    level = (args.log_level or ("WARNING" if args.check else "INFO")).upper()
    if level not in LOG_LEVELS:
        print(f"{name}: error: --log-level: unknown level {args.log_level!r} (use {', '.join(LOG_LEVELS)})",
              file=sys.stderr)
        return 2
    try:
        logs.setup(level)
        if args.check:
            print(f"{name}: ok: {check(args)}")
            return 0
        return int(serve(args) or 0)
    except FactoryLineError as exc:
        print(f"{name}: error: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"{name}: error: Redis: {logs.redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check_redis(redis_settings: config.RedisSettings) -> None:
    client = bus.connect(redis_settings)
    try:
        client.ping()
    finally:
        client.close()


def check_broker(broker_settings: config.BrokerSettings) -> MarketClock:
    """The broker answers and accepts the keys (the account is read, not just the clock), and the
    account is paper unless live trading is allowed (BrokerSettings.check_account)."""
    from shared.broker import make_executor

    executor = make_executor(broker_settings)
    try:
        clock = executor.get_clock()
        broker_settings.check_account(executor.get_account().account_number)
        return clock
    except FactoryLineError:
        raise
    except Exception as exc:  # a transport error the adapter did not translate: still one line
        raise FactoryLineError(f"broker at {logs.safe_url(broker_settings.ALPACA_ENDPOINT)}: "
                               f"{type(exc).__name__}: {exc}") from None
    finally:
        executor.close()


def market_state(clock: MarketClock) -> str:
    return f"market {'open' if clock.is_open else 'closed'}"
