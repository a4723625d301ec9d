"""RQ plumbing shared by every service: one queue per service, JSON serializer everywhere.

JSON (not pickle) so a Redis writer cannot make workers unpickle arbitrary objects, and so
rq-dashboard (`--json`) can show arguments and results. Job arguments are JSON types only:
Decimal as str, datetimes as ISO strings.

Workers run only the project's own jobs (`shared.job_table`): `ProjectJob` checks a job's function
against its queue's allow-list before anything is imported, so a job in Redis naming any other
function fails, unrun, into the failed registry, with one ERROR line `job_refused` in the worker's log.

The Redis client passed here must come from `shared.bus.connect_rq` (bytes responses).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import redis
from rq import Queue, Retry, Worker
from rq.job import Job

from shared import job_table, logs, metrics
from shared.bus import Keys

log = logging.getLogger(__name__)



class RedactingJSONSerializer:
    """RQ's JSON serializer (what rq-dashboard `--json` and `serializer="json"` read), with every string
    the project writes to Redis (job arguments, results) passed through `shared.logs.redact` first."""

    @staticmethod
    def dumps(obj, *args, **kwargs) -> bytes:
        return json.dumps(logs.redact_data(obj), *args, **kwargs).encode("utf-8")

    @staticmethod
    def loads(data, *args, **kwargs):
        return json.loads(data.decode("utf-8") if isinstance(data, bytes | bytearray) else data, *args, **kwargs)


SERIALIZER = RedactingJSONSerializer
#: Short heartbeats so a worker killed mid-job is noticed in about a minute, not 7 (rq-redis.md 1.10).
WORKER_TTL = 60
MAINTENANCE_INTERVAL = 30
JOB_MONITORING_INTERVAL = 10


class JobRefused(Exception):
    """A job whose function is not on its queue's allow-list (or that asks for callbacks or webhooks)."""


def _shown(name: object) -> str:
    """A job's function name as the log shows it: as is when it looks like a dotted name, else quoted
    (a name from Redis may hold anything, a line break included)."""
    text = str(name)
    return text if re.fullmatch(r"[A-Za-z0-9_.]{1,200}", text) else repr(text[:200])


class ProjectJob(Job):
    """An RQ job that runs only if its function is one of its service's jobs (`shared.job_table`).

    RQ resolves a job's function in `Job.func` (rq.utils.import_attribute of the dotted name stored in
    Redis), just before calling it in the work horse. Here that property first checks the name
    against the allow-list: anything else raises `JobRefused` before any import, is logged once
    (ERROR `job_refused`, job id and name) and fails the job with no retry, so it lands in the failed
    registry (rq-dashboard's Failed). Callbacks and webhooks, which RQ would also import or call from
    what Redis says, are never used by the project and refuse the job too. Failure text stored in
    Redis is redacted (`shared.logs.redact`). Use `job_class(service)`, not this class."""

    service: str = ""

    def refusal(self) -> str | None:
        """Why this job may not run, or None."""
        name = self.func_name
        allowed = job_table.allowed(self.service)
        if name not in allowed:
            return (f"{_shown(name)} is not a job of the {self.service or '?'} queue "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})")
        if self.instance is not None:
            return f"{_shown(name)} was asked to run as a method of an object"
        if self._success_callback_name or self._failure_callback_name or self._stopped_callback_name:
            return f"{_shown(name)} came with callbacks, which the project never uses"
        if self.webhooks:
            return f"{_shown(name)} came with webhooks, which the project never uses"
        return None

    @property
    def func(self):
        try:
            refusal = self.refusal()
        except Exception as exc:  # data that does not even deserialize: refused all the same
            refusal = f"unreadable job data ({type(exc).__name__})"
        if refusal is not None:
            self.retries_left = 0  # a refused job is never retried: straight to the failed registry
            self._refusal = refusal
            logs.event(log, "job_refused", level=logging.ERROR, job_id=self.id, func=_shown(self._func_name_or_none()),
                       queue=self.origin, reason=refusal)
            raise JobRefused(f"job refused: {refusal}")
        return super().func

    def _func_name_or_none(self) -> object:
        try:
            return self.func_name
        except Exception:
            return None

    # The project uses no callbacks and no webhooks: never import or call what Redis names.
    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None

    def send_webhooks(self, status, *, exc_string=None) -> None:
        return None

    def _handle_failure(self, exc_string: str, *args, **kwargs):
        refusal = getattr(self, "_refusal", None)
        text = f"JobRefused: job refused: {refusal}" if refusal else exc_string
        return super()._handle_failure(logs.redact(text), *args, **kwargs)


_JOB_CLASSES: dict[str, type[ProjectJob]] = {
    service: type(f"{service.capitalize()}Job", (ProjectJob,), {"service": service, "__module__": __name__})
    for service in job_table.ALLOWED
}


def job_class(service: str) -> type[ProjectJob]:
    """The job class of a service's queue: it runs only that service's jobs."""
    return _JOB_CLASSES[service]


class ProjectWorker(Worker):
    """RQ's forking worker; a refused job is logged once, as one line (`job_refused`), not again with
    RQ's traceback."""

    def handle_exception(self, job: Job, *exc_info):
        if isinstance(exc_info[1], JobRefused):
            return
        return super().handle_exception(job, *exc_info)


def job_name(func: Callable | str) -> str:
    return func if isinstance(func, str) else f"{func.__module__}.{func.__qualname__}"


def queue(client: redis.Redis, keys: Keys, service: str, *, is_async: bool = True) -> Queue:
    return Queue(keys.queue(service), connection=client, serializer=SERIALIZER, is_async=is_async,
                 job_class=job_class(service))


def enqueue(
    client: redis.Redis,
    keys: Keys,
    service: str,
    func: Callable | str,
    *,
    job_id: str | None = None,
    kwargs: dict | None = None,
    job_timeout: int = 300,
    retries: int = 1,
) -> Job:
    """Enqueue a job on a service's queue. A fixed `job_id` makes the enqueue unique: a second
    enqueue with the same id raises rq's DuplicateJobError instead of running the job twice.
    Only the service's own jobs (`shared.job_table`): anything else is a ValueError."""
    name = job_name(func)
    if name not in job_table.allowed(service):
        raise ValueError(f"{name} is not a job of the {service} queue (shared/job_table.py)")
    return queue(client, keys, service).enqueue(
        name,
        kwargs=kwargs or {},
        job_id=job_id,
        unique=job_id is not None,
        job_timeout=job_timeout,
        retry=Retry(max=retries) if retries else None,
        result_ttl=7 * 24 * 3600,
        failure_ttl=30 * 24 * 3600,
    )


def run_worker(client: redis.Redis, keys: Keys, service: str, *, burst: bool = False) -> bool:
    """Serve one service's queue until stopped (SIGTERM finishes the current job first)."""
    logs.event(log, "worker_starting", service=service, queue=keys.queue(service))
    if not burst:
        # The worker's own process (its jobs run in forked children: their counts go through Redis).
        metrics.start(f"{service}-worker")
    worker = ProjectWorker(
        [queue(client, keys, service)],
        connection=client,
        serializer=SERIALIZER,
        job_class=job_class(service),
        worker_ttl=WORKER_TTL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        maintenance_interval=MAINTENANCE_INTERVAL,
    )
    # No RQ scheduler process: the line schedules nothing through RQ (the scheduler service enqueues at
    # New York times, and Retry has no interval, so a retry is enqueued at once). Each worker's forked
    # scheduler cost a process and about 10 MB per container (benchmarks/bench_memory.py).
    return worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
