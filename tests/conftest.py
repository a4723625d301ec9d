"""Shared fixtures.

Redis: tests use the real server at FL_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) when it
answers. In CI (CI=true) an unreachable server is an error, never a silent skip. On a machine
without Redis, the tests run against a fakeredis TCP server instead and say so in the header.
Each test gets its own namespace and deletes only keys under it.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest
import redis

from shared.bus import Keys

_REDIS_URL = os.environ.get("FL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_backend: dict[str, str] = {}


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_fake_server() -> str:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    return f"redis://{host}:{port}/0"


def redis_url() -> str:
    if "url" not in _backend:
        if _reachable(_REDIS_URL):
            _backend.update(url=_REDIS_URL, kind="real")
        elif os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            raise RuntimeError(f"CI needs a real Redis at {_REDIS_URL}; none answered")
        else:
            _backend.update(url=_start_fake_server(), kind="fakeredis (no real Redis reachable)")
    return _backend["url"]


def pytest_report_header(config):
    url = redis_url()
    return f"redis: {_backend['kind']} at {url}"


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(namespace):
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    yield client
    for key in client.scan_iter(match=f"{namespace}*", count=1000):
        client.delete(key)
    for key in client.scan_iter(match=f"rq:*{namespace}*", count=1000):
        client.delete(key)
    # RQ also lists every queue and worker in registry sets: remove only the members that are ours.
    for registry in ("rq:queues", "rq:workers"):
        ours = [m for m in client.smembers(registry) if namespace in m]
        if ours:
            client.srem(registry, *ours)
    client.close()


@pytest.fixture
def keys(namespace) -> Keys:
    return Keys(namespace)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No Factory Line or Alpaca variables from the developer's shell, and no .env file."""
    for name in list(os.environ):
        if name.startswith(("ALPACA_", "FL_", "REDIS_URL")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch
