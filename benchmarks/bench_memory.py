"""Resident memory of each service's process, outside containers, against a floor measured in the same run.

Starts every long-running process docker-compose.yml runs (the nine pillars' `python -m services...`,
rq-dashboard and the simulator) as real processes, all at once as compose does, against the real
Redis (a namespace of its own, deleted after) and a simulator process. Once a process's resident set
stops growing (3 s unchanged, at most 30 s) it is read from /proc: the process's resident set plus
its children's private pages (an RQ worker forks a scheduler), so shared pages count once.
Floor, measured in the same run: a bare `python -c 'import redis'` process, the least any service can be.

    .venv/bin/python benchmarks/bench_memory.py [--runs 3]

Prints per service the median RSS in MiB, its ratio to the floor, and the total (compare with the
containers' figures `scripts/test-containers` prints from `docker stats` during a trading day).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import redis  # noqa: E402
import yaml  # noqa: E402
from conftest import redis_url, remove_namespace  # noqa: E402
from simhelpers import start_sim  # noqa: E402

FLOOR = "floor: python -c 'import redis'"


def rss_kib(pid: int) -> int:
    """Resident memory of the process and its descendants, KiB (0 once it is gone): the process's
    whole resident set (Rss) plus each descendant's private pages only, so what a forked child (an RQ
    worker's scheduler) shares with its parent counts once, as it does in a container's figure."""
    total = 0
    todo = [(pid, True)]
    while todo:
        current, root = todo.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup if line.rstrip().endswith("kB")}
            total += fields.get("Rss", 0) if root else fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [(int(child), False) for child in children.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def commands() -> dict[str, list[str]]:
    """What each compose service runs (its `command`), with this venv's executables."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    found: dict[str, list[str]] = {}
    for name, service in services.items():
        command = service.get("command")
        if service.get("image") != "factoryline:latest" or not command:
            continue
        if name == "sim":
            continue  # measured as the simulator the others talk to
        if command[0] == "python":
            found[name] = [sys.executable, *command[1:]]
        else:
            port = str(free_port())
            argv = [str(Path(sys.executable).parent / command[0]), *command[1:]]
            found[name] = [port if part == "9181" else "127.0.0.1" if part == "0.0.0.0" else part for part in argv]
    found[FLOOR] = [sys.executable, "-c", "import redis, time; time.sleep(600)"]
    return found


def settle(processes: dict[str, subprocess.Popen], timeout: float = 30.0) -> dict[str, int]:
    """Each process's RSS once it has not grown for 3 s (or at the timeout)."""
    last = {name: (-1, time.monotonic()) for name in processes}
    done: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.5)
        for name, process in processes.items():
            if name in done:
                continue
            if process.poll() is not None:
                out = (process.stderr.read() if process.stderr else "")[-400:]
                raise SystemExit(f"bench_memory: {name} exited {process.returncode}: {out}")
            value = rss_kib(process.pid)
            if value > last[name][0]:
                last[name] = (value, time.monotonic())
            elif time.monotonic() - last[name][1] >= 3:
                done[name] = value
    for name, (value, _) in last.items():
        done.setdefault(name, value)
    return done


def one_run(sim, namespace: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL", "RQ_"))}
    with tempfile.TemporaryDirectory() as folder:
        env.update(sim.broker_env(), REDIS_URL=redis_url(), FL_NAMESPACE=namespace, FL_SIGNALS_DIR=folder,
                   FL_REPORTS_DIR=folder, PYTHONPATH=str(ROOT), RQ_DASHBOARD_REDIS_URL=redis_url(),
                   RQ_DASHBOARD_JSON="1", RQ_DASHBOARD_USERNAME="bench", RQ_DASHBOARD_PASSWORD="bench",
                   FL_MANAGER_CONSUMER="bench")
        processes = {name: subprocess.Popen(argv, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True)
                     for name, argv in commands().items()}
        try:
            return settle(processes)
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sim = start_sim(process=True, speed=1.0)
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    runs: list[dict[str, int]] = []
    try:
        for _ in range(args.runs):
            namespace = f"bench-mem-{uuid.uuid4().hex[:8]}"
            try:
                runs.append(one_run(sim, namespace))
            finally:
                remove_namespace(client, namespace)
        sim_kib = rss_kib(sim.process.pid)
    finally:
        sim.stop()
        client.close()
    median = {name: statistics.median(run[name] for run in runs) / 1024 for name in runs[0]}
    median["sim (the simulator)"] = sim_kib / 1024
    floor = median.pop(FLOOR)
    print(f"resident memory per process, MiB (median of {args.runs} run(s); outside containers)")
    print(f"  {FLOOR:<32} {floor:7.1f}")
    for name, mib in sorted(median.items(), key=lambda item: -item[1]):
        print(f"  {name:<32} {mib:7.1f}  {mib / floor:4.1f}x floor")
    print(f"  {'total (' + str(len(median)) + ' processes)':<32} {sum(median.values()):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
