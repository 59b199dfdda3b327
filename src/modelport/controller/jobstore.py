"""The durable queue's seam: job records, leases and the `JobStore` protocol the job scheduler drives.

store/jobs.py implements it on the local cluster's SQLite file; controller/jobs.py (the scheduler) and the
control API's worker routes use it. Every time is wall-clock seconds since the epoch, passed in by the
caller (leases must survive a daemon restart, so they cannot be monotonic).

Queues are named by the caller: a batch job's batches live in queue `<job_id>`, the single item that runs
its `on_job_complete` in `<job_id>/complete` (leasable once the batches are all settled), a task's one
item in `<job_id>`, an AsyncAPI's requests in `async/<api name>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from modelport.types import ApiKind, ApiName, JobId, JobStatus, Revision

# Queue names, shared by the scheduler that chooses them and the store that gates on them.
COMPLETION_QUEUE_SUFFIX = "/complete"
COMPLETION_ITEM_ID = "complete"  # the one item of a job's completion queue
ASYNC_QUEUE_PREFIX = "async/"


def completion_queue(job_id: JobId) -> str:
    """The queue of the item that runs a batch job's on_job_complete."""
    return f"{job_id}{COMPLETION_QUEUE_SUFFIX}"


def async_queue(api_name: ApiName) -> str:
    """The queue of an AsyncAPI's requests."""
    return f"{ASYNC_QUEUE_PREFIX}{api_name}"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One batch job or task run, as submitted, with its current status."""

    job_id: JobId
    api_name: ApiName
    kind: ApiKind  # BATCH or TASK
    revision: Revision  # the API's revision when the job was submitted: its workers run that code
    workers: int
    config: Mapping[str, Any]  # the API's predictor.config with the job's config merged over it
    timeout_seconds: float | None  # from submission to the end; None = no limit
    max_receive_count: int  # attempts per batch before it becomes a dead letter
    total_batches: int
    status: JobStatus
    created_at: float
    started_at: float | None = None  # the first worker lease
    ended_at: float | None = None
    reason: str | None = None  # why it ended as it did: "stopped by the user", "timed out after 60 s", ...
    # The submission as the user sent it, minus the items themselves (shown by `get API JOB_ID`).
    submission: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueueItem:
    """An item to enqueue: a batch of a job (a JSON list), a task's config, or an async request's body."""

    item_id: str  # unique within its queue: the batch id, the async request id
    payload: bytes
    content_type: str = "application/json"
    # An async request's query string and headers, replayed to the predictor; empty for jobs.
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Lease:
    """An item handed to one worker until `expires_at`; only its `token` may settle or extend it."""

    queue: str
    item_id: str
    token: str
    payload: bytes
    content_type: str
    metadata: Mapping[str, Any]
    receive_count: int  # including this lease: 1 on the first attempt
    expires_at: float


class ItemState(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # failed max_receive_count times, or abandoned when its job ended: kept with the error


class Settlement(StrEnum):
    """What `fail` did with an item."""

    REQUEUED = "requeued"  # attempts left: leasable again at once
    DEAD = "dead"  # no attempts left: a dead letter with the error
    STALE = "stale"  # the token's lease had expired (and may be someone else's now): nothing changed


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """Counts of one queue's items by state (a lease past its expiry counts as queued)."""

    queued: int = 0
    in_progress: int = 0
    succeeded: int = 0
    dead: int = 0
    succeeded_seconds_sum: float = 0.0  # time from lease to ack, over the succeeded items

    @property
    def unsettled(self) -> int:
        return self.queued + self.in_progress

    @property
    def avg_seconds(self) -> float | None:
        return self.succeeded_seconds_sum / self.succeeded if self.succeeded else None


@dataclass(frozen=True, slots=True)
class ItemView:
    """One item's state and outcome (an async request's status and result, a batch's error)."""

    queue: str
    item_id: str
    state: ItemState
    receive_count: int
    enqueued_at: float
    updated_at: float
    result: bytes | None = None
    result_type: str | None = None
    error: str | None = None


class JobStore(Protocol):
    """Jobs and the durable queue. Every mutation is one transaction: it happens whole or not at all."""

    # ---- jobs ----
    def create_job(self, job: JobRecord, items: Sequence[QueueItem], *, completion: bool) -> None:
        """Save the job and enqueue its items in queue `job_id` (and, with `completion`, one item in
        `<job_id>/complete`) at once: a failure leaves nothing enqueued."""

    def get_job(self, job_id: JobId) -> JobRecord | None: ...

    def list_jobs(self, api_name: ApiName | None = None) -> Sequence[JobRecord]:
        """Newest first."""

    def active_jobs(self) -> Sequence[JobRecord]:
        """Jobs whose status is not terminal, oldest first."""

    def mark_started(self, job_id: JobId, *, at: float) -> None:
        """Set started_at (status RUNNING) unless it is set already."""

    def finish_job(self, job_id: JobId, *, status: JobStatus, at: float, reason: str | None) -> JobRecord:
        """Set a terminal status once (a later call keeps the first) and return the record. Every item of
        the job's queues still queued or leased becomes a dead letter with `reason`: nothing vanishes."""

    def delete_jobs(self, api_name: ApiName) -> int:
        """Forget an API's jobs and their queues (the API was deleted)."""

    # ---- queue ----
    def enqueue(
        self, queue: str, items: Sequence[QueueItem], *, now: float, max_receive_count: int
    ) -> None: ...

    def lease(self, queue: str, *, worker: str, now: float, visibility_seconds: float) -> Lease | None:
        """The oldest queued item, or one whose lease expired, leased to `worker`. An expired item that has
        used its `max_receive_count` attempts becomes a dead letter ("lease expired N times") instead."""

    def extend(self, queue: str, token: str, *, now: float, visibility_seconds: float) -> bool:
        """Push a live lease's expiry to now + visibility; False when the lease is no longer this token's."""

    def ack(
        self,
        queue: str,
        token: str,
        *,
        now: float,
        result: bytes | None = None,
        result_type: str | None = None,
    ) -> bool:
        """Mark the item succeeded (keeping an async result); False when the token's lease is gone."""

    def fail(self, queue: str, token: str, *, now: float, error: str) -> Settlement: ...

    def release_worker(self, queue: str, worker: str, *, now: float) -> int:
        """Expire every live lease `worker` holds in the queue (the worker is known to have exited), so that
        the items are leasable again at once instead of after their visibility timeout; returns how many.
        The attempts they used still count towards max_receive_count."""

    def depth(self, queue: str, *, now: float) -> QueueDepth: ...

    def item(self, queue: str, item_id: str) -> ItemView | None: ...

    def dead_letters(self, queue: str) -> Sequence[ItemView]:
        """The queue's dead items, oldest first, with their errors."""

    def workers_seen(self, queue: str) -> frozenset[str]:
        """Every worker that leased an item of this queue."""

    def purge(self, queue: str, *, finished_before: float) -> int:
        """Delete settled items (succeeded or dead) last updated before the time; returns how many."""
