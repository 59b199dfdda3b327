"""The job scheduler: batch jobs, tasks and async requests on the durable queue (controller/jobstore.py).

The control loop (controller/loop.py) calls `reconcile()` every tick and carries out the `WorkerPlan` it
returns through the backend; the cluster's HTTP adapters call the submission, status and worker-protocol
methods (docs/jobs.md). Job statuses are derived from the queue and the workers, never assumed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from modelport.clock import Clock
from modelport.controller.jobstore import (
    COMPLETION_ITEM_ID,
    ItemView,
    JobRecord,
    JobStore,
    Lease,
    QueueDepth,
    QueueItem,
    Settlement,
    async_queue,
    completion_queue,
)
from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.errors import NotFoundError, UserInputError
from modelport.spec.job import BatchJobRequest, BatchPlan, TaskJobRequest, merge_config
from modelport.types import ApiKind, ApiName, JobId, JobStatus, ReplicaId, ReplicaPhase, WorkloadRole

DEFAULT_VISIBILITY_SECONDS = 30.0  # a lease's life between heartbeats (workers extend every third of it)
WAIT_SECONDS = 0.25  # what a worker with nothing to lease is told to wait
# Workers of a job that exit with an error, one after the other with no batch settled in between, before
# the job ends as worker_error (a predictor whose __init__ raises would otherwise restart forever).
MAX_WORKER_FAILURES = 3
MAX_RESTART_DELAY_SECONDS = 30.0
PURGE_EVERY_SECONDS = 60.0


class LeaseKind(StrEnum):
    BATCH = "batch"
    TASK = "task"
    ON_JOB_COMPLETE = "on_job_complete"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class LeaseReply:
    """The answer to a worker's lease request (docs/jobs.md)."""

    kind: LeaseKind
    lease: Lease | None = None
    reason: str | None = None  # why STOP


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    job: JobRecord
    count: int
    role: WorkloadRole


@dataclass(frozen=True, slots=True)
class WorkerStop:
    replica: ObservedReplica
    reason: str


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    launches: tuple[WorkerLaunch, ...] = ()
    stops: tuple[WorkerStop, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    """Cortex's worker_counts of a job."""

    pending: int = 0  # wanted but not started (waiting for compute or a restart delay)
    initializing: int = 0  # started, predictor not yet constructed (no lease asked for yet)
    running: int = 0
    succeeded: int = 0  # exited 0
    failed: int = 0  # exited with an error


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as `GET <endpoint>/<job_id>` and `modelport get API JOB_ID` show it."""

    job: JobRecord
    batches: QueueDepth
    workers: WorkerCounts
    failed_batches: tuple[ItemView, ...]  # dead letters, with their errors
    completion: ItemView | None  # the on_job_complete item of a batch job
    waiting: str | None  # why workers are pending ("compute unavailable: cpu ...")


@dataclass(frozen=True, slots=True)
class AsyncSubmission:
    request_id: str
    api_name: ApiName


@dataclass(slots=True)
class _JobProgress:
    """What the scheduler remembers about a running job between ticks (not persisted)."""

    settled: int = 0  # batches succeeded or dead at the last tick
    failures: int = 0  # workers exited with an error since the last settled batch
    last_exit_code: int | None = None
    next_launch_at: float = 0.0  # monotonic
    exited_ok: int = 0
    exited_failed: int = 0
    waiting: str | None = None
    depth: QueueDepth | None = None  # the queue's counts at the last check


@dataclass(slots=True)
class _AsyncApi:
    retention_seconds: float
    max_receive_count: int
    last_purge: float = field(default=-PURGE_EVERY_SECONDS)


class JobScheduler:
    def __init__(
        self,
        *,
        store: JobStore,
        clock: Clock,
        visibility_seconds: float = DEFAULT_VISIBILITY_SECONDS,
        logger: logging.Logger | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._visibility = visibility_seconds
        self._log = logger or logging.getLogger("modelport.controller.jobs")
        self._progress: dict[JobId, _JobProgress] = {}
        self._async: dict[ApiName, _AsyncApi] = {}

    @property
    def visibility_seconds(self) -> float:
        return self._visibility

    # ---- submissions (the gateway's front door) ----

    def submit_batch(self, desired: DesiredApi, request: BatchJobRequest, plan: BatchPlan) -> JobRecord:
        job = JobRecord(
            job_id=_new_job_id(self._clock.wall()),
            api_name=desired.name,
            kind=ApiKind.BATCH,
            revision=desired.revision,
            workers=request.workers,
            config=merge_config(desired.spec.predictor.config, request.config),
            timeout_seconds=request.timeout,
            max_receive_count=request.max_receive_count,
            total_batches=len(plan.batches),
            status=JobStatus.RUNNING,
            created_at=self._clock.wall(),
            submission=request.model_dump(mode="json", exclude={"item_list": {"items"}}, exclude_none=True),
        )
        items = [
            QueueItem(item_id=str(index), payload=orjson.dumps(batch))
            for index, batch in enumerate(plan.batches)
        ]
        self._store.create_job(job, items, completion=True)
        self._log.info(
            "job %s of api %s: %d batches for %d workers", job.job_id, job.api_name, len(items), job.workers
        )
        return job

    def submit_task(self, desired: DesiredApi, request: TaskJobRequest) -> JobRecord:
        job = JobRecord(
            job_id=_new_job_id(self._clock.wall()),
            api_name=desired.name,
            kind=ApiKind.TASK,
            revision=desired.revision,
            workers=1,
            config=merge_config(desired.spec.predictor.config, request.config),
            timeout_seconds=request.timeout,
            max_receive_count=1,  # a task runs once: a failure is the task's result, not a reason to rerun
            total_batches=1,
            status=JobStatus.RUNNING,
            created_at=self._clock.wall(),
            submission=request.model_dump(mode="json", exclude_none=True),
        )
        self._store.create_job(
            job, [QueueItem(item_id="task", payload=orjson.dumps(job.config))], completion=False
        )
        self._log.info("task %s of api %s submitted", job.job_id, job.api_name)
        return job

    def stop(self, job_id: JobId) -> JobRecord:
        job = self.job(job_id)
        if job.status.is_terminal:
            return job
        return self._finish(job, JobStatus.STOPPED, "stopped by the user")

    def stop_all(self, api_name: ApiName, reason: str) -> None:
        """End every running job of an API (it was deleted); the next reconcile stops their workers."""
        for job in self._store.active_jobs():
            if job.api_name == api_name:
                self._finish(job, JobStatus.STOPPED, reason)

    # ---- read models ----

    def job(self, job_id: JobId, api_name: ApiName | None = None) -> JobRecord:
        job = self._store.get_job(job_id)
        if job is None or (api_name is not None and job.api_name != api_name):
            where = f" of api {api_name}" if api_name else ""
            raise NotFoundError(
                f"job {job_id}{where} does not exist (see `modelport get {api_name or 'API'}`)"
            )
        return job

    def jobs(self, api_name: ApiName) -> Sequence[JobRecord]:
        return self._store.list_jobs(api_name)

    def view(self, job: JobRecord, workers: Sequence[ObservedReplica]) -> JobView:
        now = self._clock.wall()
        progress = self._progress.get(job.job_id, _JobProgress())
        depth = self._store.depth(job.job_id, now=now)
        completion = (
            self._store.item(completion_queue(job.job_id), COMPLETION_ITEM_ID)
            if job.kind is ApiKind.BATCH
            else None
        )
        own = [w for w in workers if w.job_id == job.job_id and w.phase is not ReplicaPhase.EXITED]
        seen = self._store.workers_seen(job.job_id) | self._store.workers_seen(completion_queue(job.job_id))
        running = sum(1 for w in own if w.replica_id in seen)
        wanted = 0 if job.status.is_terminal else self._wanted(job, depth)
        counts = WorkerCounts(
            pending=max(0, wanted - len(own)),
            initializing=len(own) - running,
            running=running,
            succeeded=progress.exited_ok,
            failed=progress.exited_failed,
        )
        failed = tuple(self._store.dead_letters(job.job_id))
        return JobView(
            job=job,
            batches=depth,
            workers=counts,
            failed_batches=failed,
            completion=completion,
            waiting=None if job.status.is_terminal else progress.waiting,
        )

    # ---- the worker protocol (control API) ----

    def job_spec(self, job_id: JobId) -> dict[str, Any]:
        """What `PythonPredictor(config, job_spec)` receives (Cortex's job_spec keys)."""
        job = self.job(job_id)
        return {
            "job_id": job.job_id,
            "api_name": job.api_name,
            "kind": str(job.kind),
            "config": dict(job.config),
            "workers": job.workers,
            "total_batch_count": job.total_batches,
            "start_time": job.created_at,
            "timeout": job.timeout_seconds,
            "max_receive_count": job.max_receive_count,
        }

    def lease(self, job_id: JobId, *, worker: str) -> LeaseReply:
        job = self.job(job_id)
        if job.status.is_terminal:
            return LeaseReply(LeaseKind.STOP, reason=job.reason or f"the job is {job.status}")
        now = self._clock.wall()
        lease = self._store.lease(job_id, worker=worker, now=now, visibility_seconds=self._visibility)
        if lease is not None:
            if job.started_at is None:
                self._store.mark_started(job_id, at=now)
            return LeaseReply(LeaseKind.TASK if job.kind is ApiKind.TASK else LeaseKind.BATCH, lease)
        if self._store.depth(job_id, now=now).unsettled:
            return LeaseReply(LeaseKind.WAIT)  # other workers hold the rest
        if job.kind is ApiKind.TASK:
            return LeaseReply(LeaseKind.STOP, reason="the task has run")
        queue = completion_queue(job_id)
        lease = self._store.lease(queue, worker=worker, now=now, visibility_seconds=self._visibility)
        if lease is not None:
            return LeaseReply(LeaseKind.ON_JOB_COMPLETE, lease)
        if self._store.depth(queue, now=now).unsettled:
            return LeaseReply(LeaseKind.WAIT)
        return LeaseReply(LeaseKind.STOP, reason="every batch is settled")

    def extend(self, job_id: JobId, token: str) -> bool:
        now = self._clock.wall()
        return any(
            self._store.extend(queue, token, now=now, visibility_seconds=self._visibility)
            for queue in (job_id, completion_queue(job_id))
        )

    def ack(self, job_id: JobId, token: str) -> bool:
        now = self._clock.wall()
        return any(self._store.ack(queue, token, now=now) for queue in (job_id, completion_queue(job_id)))

    def fail(self, job_id: JobId, token: str, *, error: str) -> Settlement:
        now = self._clock.wall()
        outcome = self._store.fail(job_id, token, now=now, error=error)
        if outcome is Settlement.STALE:
            outcome = self._store.fail(completion_queue(job_id), token, now=now, error=error)
        return outcome

    # ---- async requests ----

    def configure_async(self, desired: DesiredApi) -> None:
        settings = desired.spec.async_settings
        if settings is None:
            self._async.pop(desired.name, None)
            return
        self._async[desired.name] = _AsyncApi(
            retention_seconds=settings.result_retention, max_receive_count=settings.max_receive_count
        )

    def forget_async(self, api_name: ApiName) -> None:
        self._async.pop(api_name, None)

    def submit_async(
        self, api_name: ApiName, *, body: bytes, content_type: str, query: str, headers: Mapping[str, str]
    ) -> AsyncSubmission:
        config = self._async.get(api_name)
        if config is None:
            raise NotFoundError(f"api {api_name} is not an AsyncAPI")
        request_id = _new_request_id(self._clock.wall())
        item = QueueItem(
            item_id=request_id,
            payload=body,
            content_type=content_type,
            metadata={"query": query, "headers": dict(headers)},
        )
        self._store.enqueue(
            async_queue(api_name), [item], now=self._clock.wall(), max_receive_count=config.max_receive_count
        )
        return AsyncSubmission(request_id=request_id, api_name=api_name)

    def async_request(self, api_name: ApiName, request_id: str) -> ItemView:
        item = self._store.item(async_queue(api_name), request_id)
        if item is None:
            raise NotFoundError(
                f"async request {request_id} of api {api_name} does not exist "
                "(results are kept for the API's async.result_retention)"
            )
        return item

    def async_lease(self, api_name: ApiName, *, worker: str) -> Lease | None:
        return self._store.lease(
            async_queue(api_name), worker=worker, now=self._clock.wall(), visibility_seconds=self._visibility
        )

    def async_extend(self, api_name: ApiName, token: str) -> bool:
        return self._store.extend(
            async_queue(api_name), token, now=self._clock.wall(), visibility_seconds=self._visibility
        )

    def async_ack(self, api_name: ApiName, token: str, *, result: bytes, result_type: str) -> bool:
        return self._store.ack(
            async_queue(api_name), token, now=self._clock.wall(), result=result, result_type=result_type
        )

    def async_fail(self, api_name: ApiName, token: str, *, error: str) -> Settlement:
        return self._store.fail(async_queue(api_name), token, now=self._clock.wall(), error=error)

    def async_demand(self) -> dict[ApiName, int]:
        """Queued and in-progress requests of every AsyncAPI: the autoscaler's in-flight signal."""
        now = self._clock.wall()
        return {name: self._store.depth(async_queue(name), now=now).unsettled for name in self._async}

    # ---- the control loop ----

    def worker_exited(self, worker: ObservedReplica, *, asked: bool) -> None:
        """Account for an exited worker: its leases go back to the queue at once, errors count."""
        if worker.job_id is None:
            return
        now = self._clock.wall()
        queues = (worker.job_id, completion_queue(worker.job_id))
        released = sum(self._store.release_worker(q, worker.replica_id, now=now) for q in queues)
        if released:
            self._log.info(
                "worker %s exited holding %d leases: back in the queue", worker.replica_id, released
            )
        progress = self._progress.setdefault(worker.job_id, _JobProgress())
        # A batch it settled before dying ends the run of failures before this exit is counted (its ack
        # may have come after the last reconcile): the count and the restart delay start again at 1.
        self._note_settled(worker.job_id, progress, now=now)
        if worker.exit_code == 0:
            progress.exited_ok += 1
        elif not asked:
            progress.exited_failed += 1
            progress.failures += 1
            progress.last_exit_code = worker.exit_code
            delay = min(2.0 ** (progress.failures - 1), MAX_RESTART_DELAY_SECONDS)
            progress.next_launch_at = self._clock.monotonic() + delay
            if worker.role is WorkloadRole.TASK:
                self._task_process_failed(worker)

    def _task_process_failed(self, worker: ObservedReplica) -> None:
        """A task runs once: its process dying (killed, out of memory, its class failing to load) fails the
        task at once rather than starting it again."""
        job = self._store.get_job(JobId(worker.job_id or ""))
        if job is None or job.status.is_terminal:
            return
        code = worker.exit_code
        cause = "the Task class failed to load" if code == 3 else f"its process exited with code {code}"
        self._finish(job, JobStatus.FAILED, f"{cause}: see `modelport logs {job.api_name} {job.job_id}`")

    def release_async_leases(self, replica: ObservedReplica) -> None:
        """An AsyncAPI replica exited: the requests it was working on are leasable again at once."""
        released = self._store.release_worker(
            async_queue(replica.api_name), replica.replica_id, now=self._clock.wall()
        )
        if released:
            self._log.info(
                "replica %s exited holding %d async requests: back in the queue", replica.replica_id, released
            )

    def reconcile(
        self,
        *,
        workers: Sequence[ObservedReplica],
        stopping: frozenset[ReplicaId],
        desired: Mapping[ApiName, DesiredApi],
    ) -> WorkerPlan:
        """Decide which workers to start and stop, and end the jobs that are over."""
        now, mono = self._clock.wall(), self._clock.monotonic()
        live = [w for w in workers if w.phase is not ReplicaPhase.EXITED and w.replica_id not in stopping]
        launches: list[WorkerLaunch] = []
        active: set[JobId] = set()
        for job in self._store.active_jobs():
            try:
                ended = self._settle(job, desired=desired, now=now)
            except Exception:
                self._log.exception("checking job %s failed; it is left as it is this pass", job.job_id)
                active.add(job.job_id)
                continue
            if ended is not None:
                continue
            active.add(job.job_id)
            progress = self._progress.setdefault(job.job_id, _JobProgress())
            # Counted by _settle this pass: depth is the one store call that grows with the queue.
            depth = progress.depth or self._store.depth(job.job_id, now=now)
            own = sum(1 for w in live if w.job_id == job.job_id)
            missing = self._wanted(job, depth) - own
            if missing > 0 and mono >= progress.next_launch_at:
                role = WorkloadRole.TASK if job.kind is ApiKind.TASK else WorkloadRole.BATCH_WORKER
                launches.append(WorkerLaunch(job=job, count=missing, role=role))
        stops = tuple(WorkerStop(w, "its job has ended") for w in live if w.job_id not in active)
        # Ended jobs' worker counts stay for `get`, the oldest dropped past a bound.
        for job_id in [j for j in self._progress if j not in active][: max(0, len(self._progress) - 1000)]:
            del self._progress[job_id]
        self._purge_async(now=now, mono=mono)
        return WorkerPlan(launches=tuple(launches), stops=stops)

    def note_waiting(self, job_id: JobId, reason: str | None) -> None:
        """Why the job's workers cannot start now (compute), shown by `get`; None clears it."""
        progress = self._progress.setdefault(job_id, _JobProgress())
        if progress.waiting != reason and reason is not None:
            self._log.warning("job %s waits: %s", job_id, reason)
        progress.waiting = reason

    # ---- helpers ----

    def _settle(
        self, job: JobRecord, *, desired: Mapping[ApiName, DesiredApi], now: float
    ) -> JobRecord | None:
        """End the job if it is over; returns the ended record, or None while it runs."""
        if job.api_name not in desired:
            return self._finish(job, JobStatus.STOPPED, "the API was deleted")
        if job.timeout_seconds is not None and now - job.created_at >= job.timeout_seconds:
            return self._finish(job, JobStatus.TIMED_OUT, f"timed out after {job.timeout_seconds:g} s")
        progress = self._progress.setdefault(job.job_id, _JobProgress())
        depth = self._note_settled(job.job_id, progress, now=now)
        if depth.unsettled == 0:
            return self._complete(job, depth, now=now)
        if progress.failures >= MAX_WORKER_FAILURES:
            code = progress.last_exit_code
            cause = " (the predictor failed to load)" if code == 3 else ""
            return self._finish(
                job,
                JobStatus.WORKER_ERROR,
                f"{progress.failures} workers in a row exited with code {code}{cause} before settling a "
                f"batch: see `modelport logs {job.api_name} {job.job_id}`",
            )
        return None

    def _note_settled(self, job_id: JobId, progress: _JobProgress, *, now: float) -> QueueDepth:
        depth = self._store.depth(job_id, now=now)
        progress.depth = depth
        settled = depth.succeeded + depth.dead
        if settled != progress.settled:
            progress.settled = settled
            progress.failures = 0  # a batch settled: the workers do work
        return depth

    def _complete(self, job: JobRecord, depth: QueueDepth, *, now: float) -> JobRecord | None:
        dead = self._store.dead_letters(job.job_id)
        if job.kind is ApiKind.TASK:
            if depth.dead:
                error = dead[0].error if dead else None
                return self._finish(job, JobStatus.FAILED, f"the task raised: {_first_line(error)}")
            return self._finish(job, JobStatus.SUCCEEDED, None)
        completion = self._store.depth(completion_queue(job.job_id), now=now)
        if completion.unsettled:
            return None  # on_job_complete has yet to run
        reasons = []
        if depth.dead:
            ids = ", ".join(item.item_id for item in dead[:20])
            more = f" and {len(dead) - 20} more" if len(dead) > 20 else ""
            reasons.append(f"{depth.dead} of {job.total_batches} batches failed: {ids}{more}")
        if completion.dead:
            failed = self._store.dead_letters(completion_queue(job.job_id))
            reasons.append(f"on_job_complete failed: {_first_line(failed[0].error if failed else None)}")
        if reasons:
            return self._finish(job, JobStatus.COMPLETED_WITH_FAILURES, "; ".join(reasons))
        return self._finish(job, JobStatus.SUCCEEDED, None)

    def _finish(self, job: JobRecord, status: JobStatus, reason: str | None) -> JobRecord:
        ended = self._store.finish_job(job.job_id, status=status, at=self._clock.wall(), reason=reason)
        if ended.status is status:
            log = self._log.info if status in (JobStatus.SUCCEEDED, JobStatus.STOPPED) else self._log.warning
            log("job %s of api %s: %s%s", job.job_id, job.api_name, status, f" ({reason})" if reason else "")
        return ended

    def _wanted(self, job: JobRecord, depth: QueueDepth) -> int:
        if depth.unsettled:
            return min(job.workers, depth.unsettled)
        return 1  # on_job_complete (or the end of a task) is one worker's work

    def _purge_async(self, *, now: float, mono: float) -> None:
        for name, config in self._async.items():
            if mono - config.last_purge < PURGE_EVERY_SECONDS:
                continue
            config.last_purge = mono
            purged = self._store.purge(async_queue(name), finished_before=now - config.retention_seconds)
            if purged:
                self._log.info("api %s: purged %d async results past their retention", name, purged)


def _new_job_id(now: float) -> JobId:
    # Sortable by submission time, unique without coordination (Cortex's ids are random hex too).
    return JobId(f"{int(now):x}{secrets.token_hex(4)}")


def _new_request_id(now: float) -> str:
    return f"{int(now * 1000):x}-{secrets.token_hex(6)}"


def _first_line(text: str | None) -> str:
    if not text:
        return "no error recorded"
    return text.strip().splitlines()[0]


def require_kind(desired: DesiredApi, *kinds: ApiKind) -> None:
    if desired.spec.kind not in kinds:
        wanted = " or ".join(kinds)
        raise UserInputError(f"api {desired.name} is a {desired.spec.kind}, not a {wanted}")
