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
from needs import IN_CI

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
        elif IN_CI:
            raise RuntimeError(f"CI needs a real Redis at {_REDIS_URL}; none answered")
        else:
            _backend.update(url=_start_fake_server(), kind="fakeredis (no real Redis reachable)")
    return _backend["url"]


def pytest_report_header(config):
    url = redis_url()
    return f"redis: {_backend['kind']} at {url}"


_KEPT = pytest.StashKey[list]()


#: The suite's shape: each folder of tests/ is one set, and its tests carry that set's marker, so
#: `pytest tests/unit` and `pytest -m unit` are the same set (tests/README.md says what goes where).
SETS = ("unit", "integration", "faults")


def pytest_configure(config):
    config.stash[_KEPT] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = item.path.parent.name
        if folder in SETS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def keep_artifact(pytestconfig):
    """Name a file a test leaves for people to look at (a screenshot); listed after the run."""
    def keep(label: str, path) -> None:
        pytestconfig.stash[_KEPT].append((label, path))
    return keep


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    kept = config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.section("kept for people to look at")
        for label, path in kept:
            terminalreporter.write_line(f"{label}: {path}")


@pytest.fixture
def namespace():
    """A fresh key prefix; at the end every key of it is removed from the test Redis, with the RQ
    jobs, results, workers and schedulers that served its queues (RQ names those by uuid, not by
    queue), whoever wrote them: the test, a job, or a service run as a subprocess."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    try:
        remove_namespace(client, name)
    finally:
        client.close()


def remove_namespace(client: redis.Redis, namespace: str) -> None:
    doomed = list(client.scan_iter(match=f"{namespace}*", count=1000))
    doomed += client.scan_iter(match=f"rq:*{namespace}*", count=1000)
    for job_key in client.scan_iter(match="rq:job:*", count=1000):
        origin = client.hget(job_key, "origin") if client.type(job_key) == "hash" else None
        if origin and origin.startswith(namespace):
            job_id = job_key.removeprefix("rq:job:")
            doomed += [job_key, f"rq:results:{job_id}", f"rq:executions:{job_id}"]
            doomed += client.scan_iter(match=f"rq:execution:{job_id}:*", count=1000)
    for registry in ("rq:worker:*", "rq:scheduler:*"):
        for key in client.scan_iter(match=registry, count=1000):
            queues = client.hget(key, "queues") if client.type(key) == "hash" else None
            if queues and namespace in queues:
                doomed.append(key)
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start:start + 500])
    # RQ also lists every queue and worker in registry sets: remove only the members that are ours.
    for registry in ("rq:queues", "rq:workers"):
        ours = [m for m in client.smembers(registry) if namespace in m or m in doomed]
        if ours:
            client.srem(registry, *ours)


@pytest.fixture
def redis_client(namespace):
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    yield client
    remove_namespace(client, namespace)
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
