"""`factoryline notify --test`: one test message to every FL_NOTIFY_URLS URL, one line per URL
(masked), exit 0 when every one was delivered, else 1."""

from __future__ import annotations

import argparse
import socket

from shared import config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("notify", help="send a test notification to every FL_NOTIFY_URLS URL")
    parser.add_argument("--test", action="store_true", required=True,
                        help="send one test message to every configured URL and print each result")
    parser.set_defaults(func=run)


def run(_args: argparse.Namespace) -> int:
    from services.notifier.sender import Sender
    from services.notifier.settings import NotifySettings

    settings = config.load(NotifySettings)
    if not settings.urls:
        print("notify: FL_NOTIFY_URLS is empty: nothing to send (see .env.example)")
        return 1
    title = "Factory Line: test"
    body = f"Test notification from {socket.gethostname()}: this URL receives Factory Line's alerts."
    results = [Sender(url).send(title, body) for url in settings.urls]
    for result in results:
        print(f"notify: ok: {result.url}" if result.ok else f"notify: FAILED: {result.url}: {result.error}")
    return 0 if all(r.ok for r in results) else 1
