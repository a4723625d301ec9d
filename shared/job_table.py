"""The project's RQ jobs: the one table of which function may run on which service's queue.

The scheduler (services/scheduler/schedule.py) names its jobs from here, `shared.queues.enqueue`
refuses anything else, and every worker runs only these (shared.queues.ProjectJob): a job in Redis
naming any other function (`os.system`, ...) fails without being imported or run, is logged as
`job_refused`, and lands in the queue's failed registry. Anyone who can write to Redis can still put
jobs on the queues, but only the project's own jobs, with JSON arguments (docs/operations.md,
"Threat model").

No imports beyond the standard library: the scheduler's pure schedule module uses it.
"""

from __future__ import annotations

SCAN_TARGETS = "services.scanner.jobs.scan_targets"
RANK_SIGNALS = "services.ranker.jobs.rank_signals"
TRADE_SIGNALS = "services.trader.jobs.trade_signals"
MANAGE_POSITIONS = "services.manager.tick.manage_positions"
PRE_OPEN_CHECK = "services.manager.jobs.pre_open_check"
DAILY_REPORT = "services.reporter.jobs.daily_report"

#: service -> the job functions its queue (`<FL_NAMESPACE>-<service>`) may run, by dotted name.
ALLOWED: dict[str, frozenset[str]] = {
    "scanner": frozenset({SCAN_TARGETS}),
    "ranker": frozenset({RANK_SIGNALS}),
    "trader": frozenset({TRADE_SIGNALS}),
    "manager": frozenset({MANAGE_POSITIONS, PRE_OPEN_CHECK}),
    "reporter": frozenset({DAILY_REPORT}),
}


def allowed(service: str) -> frozenset[str]:
    """The job functions `service`'s queue may run (none for a name that is not a service)."""
    return ALLOWED.get(service, frozenset())
