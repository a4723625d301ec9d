"""RQ plumbing shared by every service: one queue per service, JSON serializer everywhere.

JSON (not pickle) so a Redis writer cannot make workers unpickle arbitrary objects, and so
rq-dashboard (`--json`) can show arguments and results. Job arguments are JSON types only:
Decimal as str, datetimes as ISO strings.

The Redis client passed here must come from `shared.bus.connect_rq` (bytes responses).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from rq import Queue, Retry, Worker
from rq.job import Job

from shared import logs
from shared.bus import Keys

log = logging.getLogger(__name__)

SERIALIZER = "json"
#: Short heartbeats so a worker killed mid-job is noticed in about a minute, not 7 (rq-redis.md 1.10).
WORKER_TTL = 60
MAINTENANCE_INTERVAL = 30
JOB_MONITORING_INTERVAL = 10


def queue(client: redis.Redis, keys: Keys, service: str, *, is_async: bool = True) -> Queue:
    return Queue(keys.queue(service), connection=client, serializer=SERIALIZER, is_async=is_async)


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
    enqueue with the same id raises rq's DuplicateJobError instead of running the job twice."""
    return queue(client, keys, service).enqueue(
        func,
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
    worker = Worker(
        [queue(client, keys, service)],
        connection=client,
        serializer=SERIALIZER,
        worker_ttl=WORKER_TTL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
        maintenance_interval=MAINTENANCE_INTERVAL,
    )
    return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
