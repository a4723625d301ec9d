"""Redis high availability with Sentinel, with real processes: a primary and a replica (`redis-server`),
three sentinels (`redis-server <conf> --sentinel`), all on free loopback ports in this test's temporary
folder; the simulator, the streamer, the manager and the trader's RQ worker as `python -m services.*`
subprocesses, pointed at the sentinels only (FL_REDIS_SENTINELS; REDIS_URL's host is a port where
nothing listens, so nothing can reach Redis but through the sentinels).

The primary is SIGKILLed in the middle of a burst of fills flowing through the streamer and the manager,
just after the trader's job was enqueued, with the replica cut off for the last fraction of a second
(so those writes are lost, as with an asynchronous replica that lags); the sentinels promote the
replica. Audited is what the broker saw: one entry per symbol, one protective set per position, no
refusal.

In CI (CI=true) a missing `redis-server` fails these tests; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import signal as signals_module
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import yaml
from needs import redis_server_binary
from rq.connections import parse_connection
from rq.exceptions import DuplicateJobError
from simhelpers import start_sim
from test_line_faults import assert_one_protective_set_each, protection_of
from test_manager_faults import Line, wait_until
from test_streamer_faults import _free_port
from test_trader import DAY, signal

from shared import bus, config, job_table, queues, signals
from shared.errors import ConfigError

D = Decimal
MASTER = "flprimary"
#: The data nodes' password (REDIS_URL carries it) and the sentinels' own (FL_REDIS_SENTINEL_PASSWORD).
DATA_PASSWORD = "dp-5be1c0a7f2"
SENTINEL_PASSWORD = "sp-9d2f47c3e1"
#: The sentinels call a silent primary down after this long, and give a failover this long.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


@dataclass
class Node:
    name: str
    port: int
    args: list[str]
    process: subprocess.Popen | None = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class SentinelSet:
    """1 primary, 1 replica, 3 sentinels (quorum 2), each a process of its own in `workdir`."""

    binary: str
    workdir: Path
    primary: Node = field(init=False)
    replica: Node = field(init=False)
    sentinels: list[Node] = field(default_factory=list)
    cut_off_at: float = 0.0

    def __post_init__(self) -> None:
        data = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", DATA_PASSWORD,
                "--masterauth", DATA_PASSWORD]
        p0, p1 = _free_port(), _free_port()
        self.primary = Node("primary", p0, ["--port", str(p0), *data])
        self.replica = Node("replica", p1, ["--port", str(p1), *data, "--replicaof", "127.0.0.1", str(p0)])
        for n in range(3):
            port = _free_port()
            conf = self.workdir / f"sentinel-{n}.conf"  # a sentinel rewrites its own file: one each
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {self.workdir}",
                f"requirepass {SENTINEL_PASSWORD}", f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
                f"sentinel monitor {MASTER} 127.0.0.1 {p0} 2",
                f"sentinel auth-pass {MASTER} {DATA_PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1", ""]))
            self.sentinels.append(Node(f"sentinel-{n}", port, [str(conf), "--sentinel"]))

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, self.replica, *self.sentinels]

    def start(self) -> None:
        for node in self.nodes:
            log = open(self.workdir / f"{node.name}.log", "w")  # noqa: SIM115 - owned by the process
            node.process = subprocess.Popen([self.binary, *node.args], cwd=self.workdir, stdout=log,
                                            stderr=subprocess.STDOUT)
        # The primary answers at once; the sentinels take a few seconds more to find the replica and
        # each other (`agree`): the test waits for that only before it kills anything.
        wait_until("the primary", lambda: self._ask_data(self.primary, "PING"), timeout=10)

    def _ask(self, node: Node, *command: str, password: str = SENTINEL_PASSWORD):
        """One command to one node (a sentinel unless `password` is the data nodes'); None if it fails."""
        client = redis.Redis(port=node.port, password=password, decode_responses=True, socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _ask_data(self, node: Node, *command: str):
        return self._ask(node, *command, password=DATA_PASSWORD)

    def cut_off_replica(self) -> None:
        """Stop the replica (SIGSTOP) and close its link on the primary: whatever the primary is told
        from now on never reaches it, as with a replica lagging behind."""
        self.cut_off_at = time.monotonic()
        self.replica.process.send_signal(signals_module.SIGSTOP)
        assert self._ask_data(self.primary, "CLIENT", "KILL", "TYPE", "replica") == 1

    def resume_replica(self) -> None:
        self.replica.process.send_signal(signals_module.SIGCONT)

    def agree(self) -> bool:
        """Every sentinel sees the primary, its replica and the two other sentinels."""
        for node in self.sentinels:
            master = self._ask(node, "SENTINEL", "MASTER", MASTER)
            if not master or int(master.get("num-slaves", 0)) < 1 or int(master.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def primary_port(self) -> set[int]:
        """The primary's port as each sentinel that answers names it."""
        answers = [self._ask(node, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER) for node in self.sentinels]
        return {int(answer[1]) for answer in answers if answer}

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def env(self) -> dict[str, str]:
        """The settings that point the line at the sentinels. REDIS_URL gives only the password and the
        database: its port 1 has no server, so a service that ignored the sentinels would fail."""
        return {
            "REDIS_URL": f"redis://:{DATA_PASSWORD}@127.0.0.1:1/0",
            "FL_REDIS_SENTINELS": ",".join(f"127.0.0.1:{n.port}" for n in self.sentinels),
            "FL_REDIS_SENTINEL_MASTER": MASTER,
            "FL_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    def settings(self) -> config.RedisSettings:
        return config.RedisSettings(**self.env(), FL_NAMESPACE="ha")


@pytest.fixture
def sentinel_set(tmp_path):
    binary = redis_server_binary("the Sentinel tests (a primary, a replica and 3 sentinels)")
    group = SentinelSet(binary, tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


# -- the settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "message"), [
    ({"FL_REDIS_SENTINELS": "sentinel-1:26379,sentinel-2"},
     "FL_REDIS_SENTINELS: 'sentinel-2' is not host:port (e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)"),
    ({"FL_REDIS_SENTINELS": "127.0.0.1:70000", "FL_REDIS_SENTINEL_MASTER": "m"},
     "FL_REDIS_SENTINELS: '127.0.0.1:70000' is not host:port"),
    ({"FL_REDIS_SENTINELS": "127.0.0.1:26379"}, "FL_REDIS_SENTINEL_MASTER: is not set: with FL_REDIS_SENTINELS"),
    ({"FL_REDIS_SENTINEL_MASTER": "m"}, "FL_REDIS_SENTINEL_MASTER: is set but FL_REDIS_SENTINELS is empty"),
    ({"FL_REDIS_SENTINELS": "127.0.0.1:26379", "FL_REDIS_SENTINEL_MASTER": "my master"},
     "FL_REDIS_SENTINEL_MASTER: 'my master' is not a sentinel master name"),
    ({"FL_REDIS_SENTINELS": "127.0.0.1:26379", "FL_REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "unix:///tmp/r.sock"},
     "REDIS_URL: a unix:// socket cannot be used with FL_REDIS_SENTINELS"),
    ({"FL_REDIS_SENTINELS": "10.0.0.5:26379", "FL_REDIS_SENTINEL_MASTER": "m",
      "REDIS_URL": "redis://:pw@redis/0"}, "FL_REDIS_SENTINEL_PASSWORD: is not set and the sentinel 10.0.0.5"),
    ({"FL_REDIS_SENTINELS": "10.0.0.5:26379", "FL_REDIS_SENTINEL_MASTER": "m", "FL_REDIS_SENTINEL_PASSWORD": "s"},
     "REDIS_URL: redis://127.0.0.1:6379/0 has no password and the sentinel 10.0.0.5 is not this machine"),
])
def test_a_bad_sentinel_setting_is_one_line_naming_it(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        config.load(config.RedisSettings)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_bad_sentinel_setting_stops_a_service_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(ALPACA_API_KEY="k", ALPACA_SECRET_KEY="s", FL_REDIS_SENTINELS="sentinel-1:26379,oops",
               FL_REDIS_SENTINEL_MASTER="m")
    result = subprocess.run([sys.executable, "-m", "services.manager", "--check"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "manager: error: FL_REDIS_SENTINELS: 'oops' is not host:port "
        "(e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)"]


def test_sentinel_settings_are_read_and_described(clean_env):
    clean_env.setenv("FL_REDIS_SENTINELS", " 10.0.0.5:26379, sentinel-2:26380 ,[::1]:26381")
    clean_env.setenv("FL_REDIS_SENTINEL_MASTER", "flprimary")
    clean_env.setenv("FL_REDIS_SENTINEL_PASSWORD", "s3cret-x81k2q")
    clean_env.setenv("REDIS_URL", "redis://:pw@redis/2")
    settings = config.load(config.RedisSettings)
    assert settings.sentinels == [("10.0.0.5", 26379), ("sentinel-2", 26380), ("::1", 26381)]
    assert settings.where == "primary flprimary via sentinels 10.0.0.5:26379,sentinel-2:26380,[::1]:26381"
    client = bus.connect(settings)
    try:
        # The address a log line gives: the sentinels and the primary's name, never a password.
        assert bus.redis_address(client) == ("redis+sentinel://:***@10.0.0.5:26379,sentinel-2:26380,::1:26381"
                                             "/flprimary/2")
    finally:
        client.close()


# -- one factory, through the sentinels ---------------------------------------------------------------------


def test_every_kind_of_client_reaches_the_primary_through_the_sentinels(sentinel_set):
    settings = sentinel_set.settings()
    plain, blocking, rq_client = bus.connect(settings), bus.connect(settings, blocking=True), bus.connect_rq(settings)
    try:
        plain.set("ha:probe", "1")
        assert blocking.get("ha:probe") == "1" and rq_client.get("ha:probe") == b"1"
        # The replica may still be syncing when the primary first answers (CI saw 0 replicas here).
        wait_until("the replica linked", lambda: plain.info("replication")["connected_slaves"] == 1, timeout=15)
        info = plain.info("replication")
        assert info["role"] == "master" and info["connected_slaves"] == 1
        assert plain.connection_pool.get_master_address() == ("127.0.0.1", sentinel_set.primary.port)
        twin = bus.twin(plain, decode_responses=False)
        assert twin.get("ha:probe") == b"1"
        twin.close()
        # RQ's scheduler rebuilds the worker's connection from its pool in its own process: it still
        # goes through the sentinels (a pool without host would otherwise mean localhost:6379).
        connection_class, pool_class, pool_kwargs = parse_connection(rq_client)
        rebuilt = connection_class(connection_pool=redis.ConnectionPool(connection_class=pool_class, **pool_kwargs))
        assert int(rebuilt.info("server")["tcp_port"]) == sentinel_set.primary.port
        rebuilt.close()
    finally:
        for client in (plain, blocking, rq_client):
            client.close()


# -- the failover in the middle of a burst of fills ------------------------------------------------------------

#: The burst: entries the test sends itself, one after the other, each filled at once (session open).
BURST = {s: D(n) for s, n in (("AAPL", 3), ("MSFT", 2), ("NVDA", 4), ("AMZN", 5), ("GOOGL", 1), ("META", 2),
                              ("TSLA", 3), ("AMD", 6), ("NFLX", 1), ("INTC", 9), ("JPM", 2), ("KO", 8))}
#: The trader's signals: its RQ job, enqueued inside the lag just before the failover, enters these.
TRADED = ("PFE", "XOM", "JNJ", "DIS", "BAC")
TRADE_JOB_ID = "ha-trade-signals-20240304-0935"


def test_primary_killed_mid_burst_fails_over_and_every_fill_ends_protected_once(sentinel_set, tmp_path):
    """The worst case of asynchronous replication: the replica is cut off (its link killed, the process
    stopped) for the last ~0.3 s before the primary is SIGKILLed, so everything written then is lost
    with the primary: the fills the streamer recorded, the manager's acknowledgements and state, the
    enqueue of the trader's job. The replica is promoted all the same (it answers the sentinels again
    before their down-after-milliseconds), and the line must converge from the broker."""
    settings = sentinel_set.settings()
    keys = bus.Keys(settings.FL_NAMESPACE)
    sim = start_sim(process=True)
    client = bus.connect(settings)
    rq_client = bus.connect_rq(settings)
    line = Line(sim, keys, client, tmp_path)
    line.env.update(sentinel_set.env())
    slots = len(BURST) + len(TRADED)
    line.env.update(FL_MAX_POSITIONS=str(slots), FL_MAX_ENTRIES_PER_DAY=str(slots), FL_MAX_POSITION_PCT="10")
    timings: dict[str, float] = {}
    try:
        line.start_streamer()
        line.start_manager("manager", consumer="m1", FL_MANAGER_RECONCILE_SECONDS="2")
        line.start("trader", "services.trader")
        prices = {s: p.price for s, p in line.executor.get_latest_prices(list(TRADED)).items()}
        signals.save_signals_to_redis(client, keys, DAY, [signal(s, n + 1, prices[s]) for n, s in enumerate(TRADED)])
        wait_until("the sentinels to know the primary, the replica and each other", sentinel_set.agree, timeout=30)
        wait_until("the trader's worker", lambda: "Listening on" in line.log("trader"), timeout=30)
        assert client.wait(1, 2000) == 1  # the replica has everything so far

        started = time.monotonic()
        for n, (symbol, qty) in enumerate(BURST.items()):
            line.buy(symbol, str(qty))
            if n == 4:
                sentinel_set.cut_off_replica()  # from here on, nothing reaches the replica
            if n == 5:
                # As the scheduler does at 09:35: a fixed id, unique. Lost with the primary.
                queues.enqueue(rq_client, keys, "trader", job_table.TRADE_SIGNALS, job_id=TRADE_JOB_ID)
            if n == 7:
                killed_at = time.monotonic()
                sentinel_set.primary.kill()  # SIGKILL
                sentinel_set.resume_replica()
                timings["lag"] = killed_at - sentinel_set.cut_off_at
            time.sleep(0.02)
        fills_before_kill = list(BURST)[:8]
        wait_until("the sentinels to promote the replica",
                   lambda: sentinel_set.primary_port() == {sentinel_set.replica.port}, timeout=30, pause=0.05)
        timings["failover"] = time.monotonic() - killed_at

        # What the new primary lacks: the fills recorded in the lag (the streamer thinks them written).
        recorded = {f["symbol"] for f in line.stream_events("fill")}
        lost_fills = [s for s in fills_before_kill if s not in recorded]
        lost_job = job_status(rq_client, keys) is None
        # The scheduler's next look within its grace window (its loop looks every poll): the same id again.
        try:
            queues.enqueue(rq_client, keys, "trader", job_table.TRADE_SIGNALS, job_id=TRADE_JOB_ID)
            job_rerun = True  # the enqueue was lost with the old primary: the job runs (again), idempotently
        except DuplicateJobError:
            job_rerun = False  # the job's hash is on the new primary: it finishes there (or its retry runs)
        wait_until("an entry for every burst symbol and every signal",
                   lambda: {o["symbol"] for o in buy_orders(sim)} >= set(BURST) | set(TRADED), timeout=60)
        wait_until("the trade job finished", lambda: job_status(rq_client, keys) == "finished", timeout=60)
        positions = {p.symbol: p.qty for p in line.executor.get_positions()}
        for symbol, qty in positions.items():
            wait_until(f"{symbol} protected", lambda s=symbol, q=qty: line.open_protection(s) == protection_of(q),
                       timeout=60)
        timings["all_protected"] = time.monotonic() - killed_at
        runs = line.log("manager").count("reconcile_all_done")
        wait_until("one more reconcile of every position", lambda: line.log("manager").count("reconcile_all_done")
                   > runs, timeout=15)

        entries = sorted(o["symbol"] for o in buy_orders(sim))
        assert entries == sorted([*BURST, *TRADED]), "an entry doubled or missing"
        assert set(positions) == set(BURST) | set(TRADED)
        assert {s: positions[s] for s in BURST} == BURST
        assert_one_protective_set_each(line, positions)
        assert line.refusals() == []
        # The test did what it says: writes were lost with the primary, and the services lived through it.
        assert lost_fills and lost_job, (lost_fills, lost_job)
        for name in ("streamer", "manager", "trader"):
            assert line.processes[name].poll() is None, f"{name} died:\n{line.log(name)[-3000:]}"
        print(f"\nfailover {timings['failover']:.2f} s after the SIGKILL (replica cut off {timings['lag']:.2f} s "
              f"before it); burst {len(BURST)} fills + {len(TRADED)} trader entries; lost with the primary: "
              f"{len(lost_fills)} recorded fills ({','.join(lost_fills)}), the job's enqueue; job "
              f"{'re-enqueued and run' if job_rerun else 'found on the new primary'}; every position protected "
              f"{timings['all_protected']:.2f} s after the kill; burst started {killed_at - started:.2f} s before it")
    finally:
        line.stop_all()
        sim.stop()
        client.close()
        rq_client.close()
    for name in ("streamer", "manager", "trader"):
        text = line.log(name)
        assert DATA_PASSWORD not in text and SENTINEL_PASSWORD not in text, name
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"


def buy_orders(sim) -> list[dict]:
    return [o for o in sim.control.state()["orders"] if o["side"] == "buy"]


def job_status(rq_client: redis.Redis, keys: bus.Keys) -> str | None:
    job = queues.queue(rq_client, keys, "trader").fetch_job(TRADE_JOB_ID)
    return job.get_status(refresh=True) if job is not None else None


# -- docker-compose.sentinel.yml ------------------------------------------------------------------------------

SENTINEL_COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.sentinel.yml"


def merged_compose() -> dict:
    """docker-compose.yml with the override laid over it, as `docker compose -f ... -f ...` does for
    the keys the override uses (services merged key by key, `command` replaced)."""
    from test_compose import compose

    document, override = compose(), yaml.safe_load(SENTINEL_COMPOSE.read_text())
    for name, service in override["services"].items():
        document["services"][name] = {**document["services"].get(name, {}), **service}
    document.setdefault("volumes", {}).update(override.get("volumes") or {})
    return document


def test_the_sentinel_override_validates_and_adds_a_replica_and_three_sentinels():
    from test_compose import schema_errors

    document = merged_compose()
    assert schema_errors(document) == []
    services = document["services"]
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    assert services["redis-replica"]["command"][-4:-2] == ["redis", "6379"]  # --replicaof redis 6379
    assert "--masterauth" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]
    for n in (1, 2, 3):
        script = services[f"sentinel-{n}"]["entrypoint"][-1]
        assert "sentinel monitor $$SENTINEL_MASTER redis 6379 2" in script
        assert services[f"sentinel-{n}"]["environment"]["SENTINEL_NAME"] == f"sentinel-{n}"
    assert not any(p for s in services.values() for p in s.get("ports", []) if not str(p).startswith("127.0.0.1:"))


def test_every_variable_the_sentinel_override_uses_is_documented_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", SENTINEL_COMPOSE.read_text()))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (Path(__file__).resolve().parents[2] / ".env.example").read_text(),
                                flags=re.M))
    assert used >= {"FL_REDIS_SENTINEL_MASTER", "FL_REDIS_SENTINEL_PASSWORD", "REDIS_PASSWORD"}
    assert sorted(used - documented) == []
