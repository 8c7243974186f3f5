"""The one job state machine, shared by every long operation whoever started it.

``queued -> running -> succeeded | failed | cancelled``; ``interrupted`` is the final
state of a job whose process ended before it could say (a server stopped, a ``kvmops``
command killed). Kept apart from :mod:`kvmops.store.jobs` so the CLI can name states
without loading SQLAlchemy.
"""

from __future__ import annotations

from contextvars import ContextVar
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def final(self) -> bool:
        return self not in ACTIVE_STATES


ACTIVE_STATES: tuple[JobState, ...] = (JobState.QUEUED, JobState.RUNNING)
FINAL_STATES: tuple[JobState, ...] = (JobState.SUCCEEDED, JobState.FAILED,
                                      JobState.CANCELLED, JobState.INTERRUPTED)
# Which state may follow which (a job never leaves a final state).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, *FINAL_STATES}),
    JobState.RUNNING: frozenset(FINAL_STATES),
    **{state: frozenset() for state in FINAL_STATES},
}


def can_move(old: JobState | str, new: JobState | str) -> bool:
    return JobState(new) in TRANSITIONS[JobState(old)] or JobState(old) == JobState(new)


# The id of the job row the running use case recorded (set by kvmops.services.jobs, read
# by lower layers that name their job, e.g. the backup lock record).
current_job: ContextVar[str | None] = ContextVar("kvmops_current_job", default=None)
