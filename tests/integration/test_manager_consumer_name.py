"""The manager's consumer name: stable across recreated containers (a leased `manager-<n>`, not the
host name), distinct between live replicas, and dead consumers removed from the group without ever
dropping a pending entry (a fill not yet protected). Real Redis."""

from __future__ import annotations

import time

import pytest
from test_manager_faults import PRE_OPEN, line_factory, wait_until  # noqa: F401 - a fixture

from services.manager.consumer import GROUP, ensure_group
from services.manager.consumer_name import ConsumerLease, prune_dead_consumers
from services.manager.settings import ManagerSettings


def test_the_default_name_is_leased_not_the_host_name(clean_env):
    assert ManagerSettings(_env_file=None).FL_MANAGER_CONSUMER == ""


def test_live_replicas_get_distinct_names_and_a_recreated_one_takes_the_released_name(redis_client, keys):
    first = ConsumerLease.acquire(redis_client, keys)
    second = ConsumerLease.acquire(redis_client, keys)
    assert (first.name, second.name) == ("manager-1", "manager-2")
    first.release()  # the container stopped (docker compose up --force-recreate)
    again = ConsumerLease.acquire(redis_client, keys)
    assert again.name == "manager-1"
    assert redis_client.get(keys.manager_consumer("manager-2")) == second.token
    again.release()
    second.release()
    assert redis_client.get(keys.manager_consumer("manager-1")) is None


def test_the_lease_is_renewed_while_the_manager_runs(redis_client, keys):
    lease = ConsumerLease.acquire(redis_client, keys)
    redis_client.pexpire(keys.manager_consumer(lease.name), 200)
    lease.keep(GROUP, idle_ms=60_000)
    try:
        time.sleep(0.5)
        assert redis_client.pttl(keys.manager_consumer(lease.name)) > 1000
    finally:
        lease.release()


def _deliver(client, keys, consumer: str, count: int = 1) -> None:
    client.xreadgroup(GROUP, consumer, {keys.trade_updates: ">"}, count=count)


@pytest.fixture
def stream(redis_client, keys):
    ensure_group(redis_client, keys, GROUP)
    return keys.trade_updates


def test_dead_consumers_are_removed_but_never_one_holding_a_pending_entry(redis_client, keys, stream):
    for symbol in ("AAPL", "MSFT", "NVDA"):
        redis_client.xadd(stream, {"symbol": symbol})
    _deliver(redis_client, keys, "old-container-a")          # holds an unacknowledged fill
    _deliver(redis_client, keys, "old-container-b")          # handled and acknowledged its entry
    redis_client.xack(stream, GROUP, redis_client.xpending_range(stream, GROUP, "-", "+", 1, "old-container-b")[0]["message_id"])
    _deliver(redis_client, keys, "manager-1")                # the live one (own name)
    redis_client.xack(stream, GROUP, redis_client.xpending_range(stream, GROUP, "-", "+", 1, "manager-1")[0]["message_id"])
    time.sleep(0.15)
    removed = prune_dead_consumers(redis_client, keys, GROUP, "manager-1", idle_ms=100)
    names = {c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)}
    assert removed == ["old-container-b"]
    assert names == {"old-container-a", "manager-1"}
    # Once a live manager has claimed the entry (XAUTOCLAIM), the dead name goes too; the entry stays pending.
    redis_client.xautoclaim(stream, GROUP, "manager-1", min_idle_time=0)
    time.sleep(0.15)
    assert prune_dead_consumers(redis_client, keys, GROUP, "manager-1", idle_ms=100) == ["old-container-a"]
    assert redis_client.xpending(stream, GROUP)["pending"] == 1
    assert {c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)} == {"manager-1"}


def test_a_leased_name_is_not_removed_even_when_idle(redis_client, keys, stream):
    other = ConsumerLease.acquire(redis_client, keys)   # manager-1, a live replica
    redis_client.xadd(stream, {"symbol": "AAPL"})
    _deliver(redis_client, keys, other.name)
    redis_client.xack(stream, GROUP, redis_client.xpending_range(stream, GROUP, "-", "+", 1, other.name)[0]["message_id"])
    time.sleep(0.15)
    try:
        assert prune_dead_consumers(redis_client, keys, GROUP, "manager-2", idle_ms=100) == []
    finally:
        other.release()


def test_a_manager_process_restarted_takes_back_its_name_and_leaves_one_consumer(line_factory, redis_client, keys):  # noqa: F811 - the imported fixture
    """What `docker compose up --force-recreate manager` does twice, with real processes (a new process,
    and under compose a new host name, each time): one consumer in the group, `manager-1`."""
    line = line_factory(start=PRE_OPEN)
    for attempt in range(3):
        name = f"manager-run{attempt}"
        line.start(name, "services.manager", FL_MANAGER_CONSUMER="")
        wait_until(f"{name} to start", lambda name=name: "reconcile_all_done trigger=start" in line.log(name)
                   or line.processes[name].poll() is not None)
        assert line.processes[name].poll() is None, line.log(name)[-2000:]
        assert "consumer=manager-1" in line.log(name)
        process = line.processes.pop(name)
        process.terminate()
        assert process.wait(timeout=30) == 0
        assert redis_client.get(keys.manager_consumer("manager-1")) is None   # released on a clean stop
    assert [c["name"] for c in redis_client.xinfo_consumers(keys.trade_updates, GROUP)] in ([], ["manager-1"])


def test_a_replica_beyond_the_last_free_name_is_a_one_line_config_error(redis_client, keys, monkeypatch):
    from services.manager import consumer_name
    from shared.errors import ConfigError

    monkeypatch.setattr(consumer_name, "MAX_REPLICAS", 2)
    held = [ConsumerLease.acquire(redis_client, keys) for _ in range(2)]
    try:
        with pytest.raises(ConfigError, match="all 2 manager consumer names are leased.*set FL_MANAGER_CONSUMER"):
            ConsumerLease.acquire(redis_client, keys)
    finally:
        for lease in held:
            lease.release()
