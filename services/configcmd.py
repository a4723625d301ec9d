"""`factoryline config`: validate every setting and show the effective values, secrets masked.

The first thing to run after editing `.env`: every settings group of every service is loaded (a
missing or invalid variable is reported as one line naming it, exactly as the service would report
it at start), a line of `.env` that is not `NAME=value` is an error naming the line, and a FL_* or
ALPACA_* name that is no setting is a warning naming the closest one. `--check` then also reaches
Redis (PING) and the broker (GET account, read-only; a live account needs FL_ALLOW_LIVE_TRADING=true),
one line per check; exit status 0 when every check passes, else 2.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import SecretStr

from shared import config, logs


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="validate settings from the environment and .env and print them")
    parser.add_argument("--no-broker", action="store_true", help="skip broker settings (ranker-only hosts)")
    parser.add_argument("--check", action="store_true",
                        help="also reach Redis (PING) and the broker (GET account, read-only); exit 0 or 2")
    parser.set_defaults(func=run)


def shown(value: object) -> str:
    """A setting's value as printed: secrets hidden, URL passwords as ***, registered secrets masked."""
    if isinstance(value, SecretStr):
        return "(set, hidden)"
    if value is None:
        return "(not set)"
    text = str(value)
    return logs.safe_url(text) if "://" in text else logs.redact(text)


def run(args: argparse.Namespace) -> int:
    groups = [group for group in config.all_groups() if not (args.no_broker and group is config.BrokerSettings)]
    loaded = {}
    for group in groups:
        loaded[group] = settings = config.load(group)
        print(f"[{group.__name__}]")
        for name in type(settings).model_fields:
            print(f"  {name} = {shown(getattr(settings, name))}")
    print(f"configuration OK ({len(groups)} settings groups)")
    if not args.check:
        return 0
    results = [_check_redis(loaded[config.RedisSettings])]
    if config.BrokerSettings in loaded:
        results.append(_check_broker(loaded[config.BrokerSettings]))
    for ok, line in results:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if all(ok for ok, _ in results) else 2


def _check_redis(settings: config.RedisSettings) -> tuple[bool, str]:
    from shared import bus

    where = settings.where
    try:
        client = bus.connect(settings)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach it is the check's answer, in one line
        return False, f"check redis: FAILED: {where}: {logs.redact(f'{type(exc).__name__}: {exc}')}"
    return True, f"check redis: ok: {where} answers PING"


def _check_broker(settings: config.BrokerSettings) -> tuple[bool, str]:
    from shared.broker import make_executor
    from shared.errors import FactoryLineError

    where = logs.safe_url(settings.ALPACA_ENDPOINT)
    try:
        executor = make_executor(settings)
        try:
            account = executor.get_account()
        finally:
            executor.close()
        settings.check_account(account.account_number)
    except FactoryLineError as exc:
        return False, f"check broker: FAILED: {where}: {logs.redact(str(exc))}"
    except Exception as exc:  # a transport error the adapter did not translate: still one line
        return False, f"check broker: FAILED: {where}: {logs.redact(f'{type(exc).__name__}: {exc}')}"
    kind = "paper" if account.account_number.startswith(config.PAPER_ACCOUNT_PREFIX) else "LIVE (allowed)"
    return True, (f"check broker: ok: {where} answers GET account ({kind} account {account.account_number}, "
                  f"{account.currency} {account.equity} equity)")
