"""`factoryline config`: validate every setting and show the effective values, secrets masked.

The first thing to run after editing `.env`: a missing or invalid variable is reported as one line
naming it, exactly as every service would report it at start.
"""

from __future__ import annotations

import argparse

from pydantic import SecretStr

from shared import config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="validate settings from the environment and .env and print them")
    parser.add_argument("--no-broker", action="store_true", help="skip broker settings (ranker-only hosts)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    groups: list[type] = [config.RedisSettings, config.RankerSettings, config.TraderSettings, config.ExitSettings]
    if not args.no_broker:
        groups.insert(0, config.BrokerSettings)
    for group in groups:
        settings = config.load(group)
        print(f"[{group.__name__}]")
        for name, value in settings.model_dump().items():
            shown = "(set, hidden)" if isinstance(value, SecretStr) else value
            print(f"  {name} = {shown}")
    print("configuration OK")
    return 0
