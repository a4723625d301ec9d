"""Workers run only the project's own jobs (shared/job_table.py): a job in Redis naming anything else
fails unrun, is logged, and lands in the failed registry. Real worker processes, real Redis."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import redis_url
from rq import Callback, Queue, Retry, SimpleWorker
from rq.registry import FailedJobRegistry
from simhelpers import ROOT

from services.scheduler.schedule import JOBS
from shared import job_table, queues
from shared.bus import SERVICES, connect_rq

#: service -> the command that runs its worker (what docker-compose.yml runs).
WORKERS = {
    "scanner": ["-m", "services.scanner"],
    "ranker": ["-m", "services.ranker"],
    "trader": ["-m", "services.trader"],
    "reporter": ["-m", "services.reporter"],
    "manager": ["-m", "services.manager.worker"],
}


def test_one_table_names_every_queue_and_every_scheduled_job():
    assert set(job_table.ALLOWED) == set(SERVICES) == set(WORKERS)
    for job in JOBS:
        assert job.func in job_table.allowed(job.service), job
    assert job_table.allowed("manager") == {"services.manager.tick.manage_positions",
                                            "services.manager.jobs.pre_open_check"}


def test_enqueue_refuses_a_function_that_is_not_the_queues_job(redis_client, keys):
    client = connect_rq(redis_url())
    with pytest.raises(ValueError, match=r"os\.system is not a job of the trader queue"):
        queues.enqueue(client, keys, "trader", "os.system", kwargs={"command": "true"})
    with pytest.raises(ValueError, match="not a job of the ranker queue"):
        queues.enqueue(client, keys, "ranker", job_table.TRADE_SIGNALS)
    assert redis_client.llen(f"rq:queue:{keys.queue('trader')}") == 0


def worker_env(namespace: str, tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(ALPACA_API_KEY="key-unused", ALPACA_SECRET_KEY="secret-unused",
               ALPACA_ENDPOINT="http://127.0.0.1:9", REDIS_URL=redis_url(), FL_NAMESPACE=namespace,
               FL_SIGNALS_DIR=str(tmp_path / "signals"), FL_REPORTS_DIR=str(tmp_path / "reports"),
               FL_PORTFOLIO_CSV=str(tmp_path / "portfolio.csv"), PYTHONPATH=str(ROOT))
    return env


def stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the worker and any work horse (its own session)
    process.wait(timeout=10)


def test_a_job_naming_os_system_fails_unrun_on_every_queue_and_is_logged(redis_client, keys, namespace,
                                                                          tmp_path):
    """What someone who can write to Redis would do: an RQ job (JSON, as the workers read) whose
    function is os.system, with a retry, on each service's queue."""
    client = connect_rq(redis_url())
    markers, job_ids = {}, {}
    for service in WORKERS:
        markers[service] = tmp_path / f"pwned-{service}"
        job = Queue(keys.queue(service), connection=client, serializer="json").enqueue(
            "os.system", f"touch {markers[service]}", job_id=f"{namespace}-evil-{service}", retry=Retry(max=2))
        job_ids[service] = job.id
    env = worker_env(namespace, tmp_path)
    logs, processes = {}, {}
    try:
        for service, argv in WORKERS.items():
            logs[service] = tmp_path / f"{service}.log"
            with open(logs[service], "w") as out:
                processes[service] = subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=env, stdout=out,
                                                      stderr=subprocess.STDOUT, start_new_session=True)
        pending = set(WORKERS)
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            for service in list(pending):
                registry = FailedJobRegistry(keys.queue(service), connection=client, serializer="json")
                if job_ids[service] in registry.get_job_ids():
                    pending.discard(service)
                else:
                    assert processes[service].poll() is None, logs[service].read_text()
            time.sleep(0.1)
        assert pending == set(), {s: logs[s].read_text()[-2000:] for s in pending}
    finally:
        for process in processes.values():
            stop(process)
    for service in WORKERS:
        assert not markers[service].exists(), f"{service}: os.system ran"
        text = logs[service].read_text()
        refused = [line for line in text.splitlines() if " job_refused " in line]
        assert len(refused) == 1, text
        assert refused[0].split()[1] == "error"
        assert f"job_id={job_ids[service]}" in refused[0] and "func=os.system" in refused[0]
        assert "Traceback" not in text
        job = queues.job_class(service).fetch(job_ids[service], connection=client, serializer="json")
        assert job.get_status() == "failed" and job.retries_left == 0
        assert job.latest_result().exc_string.startswith(
            f"JobRefused: job refused: os.system is not a job of the {service} queue")
        # Still in Redis as written: the id, the name, the arguments (rq-dashboard shows them).
        assert job.func_name == "os.system"


def test_a_project_job_with_a_callback_or_webhook_is_refused_before_anything_runs(redis_client, keys, tmp_path):
    client = connect_rq(redis_url())
    marker = tmp_path / "callback-ran"
    queue = Queue(keys.queue("ranker"), connection=client, serializer="json")
    job = queue.enqueue(job_table.RANK_SIGNALS, on_failure=Callback("os.system"), on_success=Callback("os.system"),
                        kwargs={"now": f"; touch {marker}"})
    worker = SimpleWorker([queues.queue(client, keys, "ranker")], connection=client, serializer="json",
                          job_class=queues.job_class("ranker"))
    worker.work(burst=True)
    job = queues.job_class("ranker").fetch(job.id, connection=client, serializer="json")
    assert job.get_status() == "failed"
    assert "came with callbacks" in job.latest_result().exc_string
    assert not marker.exists()


def test_the_job_classes_refuse_what_is_not_theirs():
    client = connect_rq(redis_url())  # only to build the jobs: nothing is written
    for service, names in job_table.ALLOWED.items():
        cls = queues.job_class(service)
        assert cls.service == service
        for other in set().union(*job_table.ALLOWED.values()) - names:
            job = cls.create(other, connection=client, serializer="json")
            assert re.match(rf"{re.escape(other)} is not a job of the {service} queue", job.refusal())
        for name in names:
            assert cls.create(name, connection=client, serializer="json").refusal() is None
