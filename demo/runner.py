"""The demo's plumbing: an embedded Redis (or REDIS_URL), the environment the services read their
settings from, and New York times. `demo/days.py` runs the line on top of it."""

from __future__ import annotations

import os
import threading
from contextlib import ExitStack
from datetime import date, datetime, time
from urllib.parse import urlsplit, urlunsplit

from shared.market.calendar import NEW_YORK


def _at(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, tzinfo=NEW_YORK)


def _redis(stack: ExitStack) -> tuple[str, str]:
    """REDIS_URL when set; otherwise an embedded, in-memory Redis on a free loopback port."""
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        parts = urlsplit(url)
        # A password in the URL is a secret: show where, never how to log in.
        shown = parts._replace(netloc=f"***@{parts.hostname}:{parts.port or 6379}") if parts.password else parts
        return url, urlunsplit(shown)
    server = _embedded_redis_server()
    threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True).start()
    stack.callback(server.shutdown)
    host, port = server.server_address
    return f"redis://{host}:{port}/0", "embedded (in-memory, set REDIS_URL to use a real one)"


def _embedded_redis_server():
    import socket

    from fakeredis import TcpFakeServer

    class _NoDelayServer(TcpFakeServer):
        # Replies go out in several small writes; without TCP_NODELAY, Nagle and delayed ACKs cost
        # ~40 ms on pipelined calls (the manager's tick pipelines its compare-and-set scripts).
        def get_request(self):
            conn, addr = super().get_request()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, addr

    return _NoDelayServer(("127.0.0.1", 0), server_type="redis")


class _environment:
    """Set variables for the services' settings loaders; restore them afterwards."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
