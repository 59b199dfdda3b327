"""The job scheduler's policies (controller.jobs.JobScheduler) on a real SqliteJobStore file and a FakeClock:
leases, completion, worker restarts and errors, timeouts, stops, tasks, worker counts and async requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from modelport.clock import FakeClock
from modelport.controller.jobs import (
    PURGE_EVERY_SECONDS,
    JobScheduler,
    LeaseKind,
    WorkerCounts,
    WorkerPlan,
)
from modelport.controller.jobstore import ItemState, JobRecord, Lease, Settlement
from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.errors import NotFoundError
from modelport.spec.job import parse_batch_job, parse_task_job, plan_batches
from modelport.spec.model import ApiSpec
from modelport.store.jobs import SqliteJobStore
from modelport.types import (
    ApiKind,
    ApiName,
    JobId,
    JobStatus,
    ReplicaId,
    ReplicaPhase,
    Revision,
    WorkloadRole,
)

BATCH, TASK, ASYNC = ApiName("sum"), ApiName("train"), ApiName("echo")
VISIBILITY = 30.0

# ---- harness -----------------------------------------------------------------------------------------


def desired_api(name: ApiName, kind: str, **fields: Any) -> DesiredApi:
    spec = ApiSpec.model_validate(
        {
            "name": name,
            "kind": kind,
            "predictor": {"type": "python", "path": "predictor.py", "config": {"scale": 1, "keep": "api"}},
            **fields,
        }
    )
    return DesiredApi(
        spec=spec,
        revision=Revision(f"{name}-rev1"),
        project_dir=Path(f"/snapshots/{name}"),
        spec_path=Path(f"/snapshots/{name}/spec.json"),
        deployed_at=0.0,
    )


class Jobs:
    """A JobScheduler on a SQLite file, its FakeClock, and the deployed APIs passed to reconcile()."""

    def __init__(self, path: Path) -> None:
        self.clock = FakeClock()
        self.store = SqliteJobStore(path)
        self.scheduler = JobScheduler(store=self.store, clock=self.clock, visibility_seconds=VISIBILITY)
        self.desired: dict[ApiName, DesiredApi] = {
            BATCH: desired_api(BATCH, "BatchAPI"),
            TASK: desired_api(TASK, "TaskAPI"),
            ASYNC: desired_api(
                ASYNC,
                "AsyncAPI",
                autoscaling={"min_replicas": 0},
                **{"async": {"result_retention": "1h", "max_receive_count": 2}},
            ),
        }

    def submit(self, *, workers: int = 2, items: int = 5, batch_size: int = 2, **fields: Any) -> JobRecord:
        body = {
            "workers": workers,
            "item_list": {"items": list(range(items)), "batch_size": batch_size},
            **fields,
        }
        request = parse_batch_job(json.dumps(body).encode())
        return self.scheduler.submit_batch(self.desired[BATCH], request, plan_batches(request))

    def submit_task(self, body: Mapping[str, Any] | None = None) -> JobRecord:
        request = parse_task_job(json.dumps(body).encode() if body is not None else b"")
        return self.scheduler.submit_task(self.desired[TASK], request)

    def reconcile(
        self,
        *workers: ObservedReplica,
        stopping: frozenset[ReplicaId] = frozenset(),
        desired: Mapping[ApiName, DesiredApi] | None = None,
    ) -> WorkerPlan:
        return self.scheduler.reconcile(
            workers=workers, stopping=stopping, desired=self.desired if desired is None else desired
        )

    def status(self, job: JobRecord) -> JobRecord:
        return self.scheduler.job(job.job_id)

    def lease(self, job: JobRecord, worker: str) -> Lease:
        reply = self.scheduler.lease(job.job_id, worker=worker)
        assert reply.kind in (LeaseKind.BATCH, LeaseKind.TASK), reply
        assert reply.lease is not None
        return reply.lease

    def exited(self, job: JobRecord, rid: str, *, code: int, asked: bool = False) -> ObservedReplica:
        """A worker of `job` that exited with `code`, accounted for as the control loop does."""
        gone = worker(job, rid, phase=ReplicaPhase.EXITED, exit_code=code)
        self.scheduler.worker_exited(gone, asked=asked)
        return gone


def worker(
    job: JobRecord,
    rid: str,
    *,
    phase: ReplicaPhase = ReplicaPhase.READY,
    exit_code: int | None = None,
) -> ObservedReplica:
    role = WorkloadRole.TASK if job.kind is ApiKind.TASK else WorkloadRole.BATCH_WORKER
    return ObservedReplica(
        replica_id=ReplicaId(rid),
        api_name=job.api_name,
        revision=job.revision,
        generation=0,
        phase=phase,
        address=None,
        pid=None,
        started_at=0.0,
        exit_code=exit_code,
        role=role,
        job_id=job.job_id,
    )


def launched(plan: WorkerPlan) -> dict[JobId, int]:
    return {launch.job.job_id: launch.count for launch in plan.launches}


def batch_ids(jobs: Jobs, job: JobRecord) -> list[str]:
    return [item.item_id for item in jobs.store.dead_letters(job.job_id)]


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Jobs]:
    harness = Jobs(tmp_path / "state.db")
    yield harness
    harness.store.close()


# ---- batch jobs: submission, leases, completion ---------------------------------------------------------


def test_a_batch_job_is_stored_running_with_the_job_config_over_the_apis(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=5, batch_size=2, config={"scale": 3}, timeout=600)
    assert (job.api_name, job.kind, job.revision, job.status) == (
        BATCH,
        ApiKind.BATCH,
        Revision("sum-rev1"),
        JobStatus.RUNNING,
    )
    assert (job.total_batches, job.workers, job.max_receive_count, job.timeout_seconds) == (3, 2, 3, 600)
    assert job.created_at == jobs.clock.wall() and job.started_at is None
    assert dict(job.config) == {"scale": 3, "keep": "api"}
    assert "items" not in job.submission["item_list"]  # the items live in the queue, not in the record
    assert jobs.scheduler.job_spec(job.job_id) == {
        "job_id": job.job_id,
        "api_name": "sum",
        "kind": "BatchAPI",
        "config": {"scale": 3, "keep": "api"},
        "workers": 2,
        "total_batch_count": 3,
        "start_time": job.created_at,
        "timeout": 600,
        "max_receive_count": 3,
    }
    assert [j.job_id for j in jobs.scheduler.jobs(BATCH)] == [job.job_id]
    with pytest.raises(NotFoundError, match=f"job {job.job_id} of api train does not exist"):
        jobs.scheduler.job(job.job_id, TASK)
    with pytest.raises(NotFoundError):
        jobs.scheduler.lease(JobId("nope"), worker="w1")


def test_batches_lease_in_order_and_on_job_complete_only_once_every_batch_is_settled(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=5, batch_size=2)
    first = jobs.lease(job, "w1")
    assert (first.item_id, json.loads(first.payload), first.receive_count) == ("0", [0, 1], 1)
    assert first.expires_at == jobs.clock.wall() + VISIBILITY
    assert jobs.status(job).started_at == jobs.clock.wall()
    second = jobs.lease(job, "w2")
    assert (second.item_id, json.loads(second.payload)) == ("1", [2, 3])
    assert jobs.scheduler.ack(job.job_id, first.token)
    assert not jobs.scheduler.ack(job.job_id, first.token)  # settled once
    third = jobs.lease(job, "w1")
    assert (third.item_id, json.loads(third.payload)) == ("2", [4])
    assert jobs.scheduler.ack(job.job_id, third.token)

    # One batch is still held: nobody may run on_job_complete yet.
    assert jobs.scheduler.lease(job.job_id, worker="w1").kind is LeaseKind.WAIT
    jobs.reconcile()
    assert jobs.status(job).status is JobStatus.RUNNING
    assert jobs.scheduler.ack(job.job_id, second.token)

    complete = jobs.scheduler.lease(job.job_id, worker="w2")
    assert complete.kind is LeaseKind.ON_JOB_COMPLETE and complete.lease is not None
    assert jobs.scheduler.lease(job.job_id, worker="w1").kind is LeaseKind.WAIT  # w2 runs it
    jobs.reconcile()
    assert jobs.status(job).status is JobStatus.RUNNING  # on_job_complete has yet to finish
    assert jobs.scheduler.extend(job.job_id, complete.lease.token)
    assert jobs.scheduler.ack(job.job_id, complete.lease.token)

    stop = jobs.scheduler.lease(job.job_id, worker="w1")
    assert (stop.kind, stop.reason) == (LeaseKind.STOP, "every batch is settled")
    jobs.reconcile()
    ended = jobs.status(job)
    assert (ended.status, ended.reason, ended.ended_at) == (JobStatus.SUCCEEDED, None, jobs.clock.wall())
    after = jobs.scheduler.lease(job.job_id, worker="w3")
    assert (after.kind, after.reason) == (LeaseKind.STOP, "the job is succeeded")


def test_a_worker_waits_while_another_holds_the_last_lease_until_that_lease_expires(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=1, batch_size=1)
    held = jobs.lease(job, "w1")
    assert jobs.scheduler.lease(job.job_id, worker="w2").kind is LeaseKind.WAIT
    jobs.clock.advance(VISIBILITY - 1)
    assert jobs.scheduler.extend(job.job_id, held.token)  # w1's heartbeat: good for 30 s more
    jobs.clock.advance(VISIBILITY - 1)
    assert jobs.scheduler.lease(job.job_id, worker="w2").kind is LeaseKind.WAIT
    jobs.clock.advance(1)  # w1 missed its heartbeats: the batch goes to w2, as a second attempt
    again = jobs.lease(job, "w2")
    assert (again.item_id, again.receive_count) == ("0", 2)
    assert not jobs.scheduler.extend(job.job_id, held.token)
    assert not jobs.scheduler.ack(job.job_id, held.token)
    assert jobs.scheduler.fail(job.job_id, held.token, error="late") is Settlement.STALE


# ---- reconcile: launching workers ------------------------------------------------------------------------


def test_reconcile_launches_the_lesser_of_workers_and_unsettled_batches(jobs: Jobs) -> None:
    wide = jobs.submit(workers=3, items=2, batch_size=1)
    narrow = jobs.submit(workers=2, items=5, batch_size=1)
    plan = jobs.reconcile()
    assert launched(plan) == {wide.job_id: 2, narrow.job_id: 2}
    assert {launch.role for launch in plan.launches} == {WorkloadRole.BATCH_WORKER}
    assert plan.stops == ()

    # Running workers count; workers being stopped and exited ones do not.
    running = [worker(wide, "a"), worker(narrow, "b", phase=ReplicaPhase.STARTING)]
    draining = worker(narrow, "c", phase=ReplicaPhase.DRAINING)
    gone = worker(narrow, "d", phase=ReplicaPhase.EXITED, exit_code=0)
    plan = jobs.reconcile(*running, draining, gone, stopping=frozenset({ReplicaId("c")}))
    assert launched(plan) == {wide.job_id: 1, narrow.job_id: 1}

    # A settled batch lowers what the job needs.
    lease = jobs.lease(wide, "a")
    assert jobs.scheduler.ack(wide.job_id, lease.token)
    assert launched(jobs.reconcile(*running)) == {narrow.job_id: 1}


def test_workers_that_exit_are_replaced_for_as_long_as_batches_remain(jobs: Jobs) -> None:
    job = jobs.submit(workers=1, items=2, batch_size=1)
    assert launched(jobs.reconcile()) == {job.job_id: 1}
    for number in range(4):
        rid = f"w{number}"
        assert launched(jobs.reconcile(worker(job, rid))) == {}
        # exits 0 without settling anything (e.g. SIGTERM by the machine): no backoff, no failure
        gone = jobs.exited(job, rid, code=0)
        assert launched(jobs.reconcile(gone)) == {job.job_id: 1}
    assert jobs.scheduler.view(jobs.status(job), []).workers.succeeded == 4
    assert jobs.status(job).status is JobStatus.RUNNING


# ---- worker errors and restart delays ---------------------------------------------------------------------


def test_three_workers_failing_in_a_row_end_the_job_as_worker_error_after_1_and_2_second_delays(
    jobs: Jobs,
) -> None:
    job = jobs.submit(workers=1, items=3, batch_size=1)
    assert launched(jobs.reconcile()) == {job.job_id: 1}

    jobs.exited(job, "w1", code=3)
    assert launched(jobs.reconcile()) == {}  # restarts wait 1 s
    jobs.clock.advance(0.75)
    assert launched(jobs.reconcile()) == {}
    jobs.clock.advance(0.25)
    assert launched(jobs.reconcile()) == {job.job_id: 1}

    jobs.exited(job, "w2", code=3)
    jobs.clock.advance(1.75)
    assert launched(jobs.reconcile()) == {}  # then 2 s
    jobs.clock.advance(0.25)
    assert launched(jobs.reconcile()) == {job.job_id: 1}

    jobs.exited(job, "w3", code=3)
    plan = jobs.reconcile()
    assert plan.launches == ()
    ended = jobs.status(job)
    assert ended.status is JobStatus.WORKER_ERROR
    assert ended.reason == (
        "3 workers in a row exited with code 3 (the predictor failed to load) before settling a batch: "
        f"see `modelport logs sum {job.job_id}`"
    )
    assert batch_ids(jobs, job) == ["0", "1", "2"]
    assert {item.error for item in jobs.store.dead_letters(job.job_id)} == {ended.reason}
    counts = jobs.scheduler.view(ended, []).workers
    assert counts == WorkerCounts(pending=0, initializing=0, running=0, succeeded=0, failed=3)


def test_a_batch_settled_between_failures_restarts_the_count_and_the_delay(jobs: Jobs) -> None:
    job = jobs.submit(workers=1, items=3, batch_size=1)
    jobs.exited(job, "w1", code=1)
    jobs.clock.advance(1)
    jobs.exited(job, "w2", code=1)
    jobs.reconcile()
    jobs.clock.advance(2)
    assert launched(jobs.reconcile()) == {job.job_id: 1}

    lease = jobs.lease(job, "w3")  # this worker does work before it, too, dies
    assert jobs.scheduler.ack(job.job_id, lease.token)
    jobs.exited(job, "w3", code=1)
    jobs.reconcile()
    assert jobs.status(job).status is JobStatus.RUNNING
    jobs.clock.advance(1)  # the count started again: 1 s, not 4 s
    assert launched(jobs.reconcile()) == {job.job_id: 1}

    jobs.exited(job, "w4", code=1)
    jobs.clock.advance(2)
    assert jobs.status(job).status is JobStatus.RUNNING
    jobs.exited(job, "w5", code=137)
    jobs.reconcile()
    ended = jobs.status(job)
    assert ended.status is JobStatus.WORKER_ERROR
    assert ended.reason is not None
    assert ended.reason.startswith("3 workers in a row exited with code 137 before settling a batch")
    assert batch_ids(jobs, job) == ["1", "2"]


def test_workers_the_controller_stopped_are_not_failures(jobs: Jobs) -> None:
    job = jobs.submit(workers=1, items=2, batch_size=1)
    for rid in ("w1", "w2", "w3"):
        jobs.exited(job, rid, code=-15, asked=True)
    assert launched(jobs.reconcile()) == {job.job_id: 1}  # no restart delay either
    assert jobs.status(job).status is JobStatus.RUNNING
    counts = jobs.scheduler.view(jobs.status(job), []).workers
    assert (counts.succeeded, counts.failed) == (0, 0)


def test_a_worker_that_exits_gives_its_lease_back_at_once(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=3, batch_size=1)
    held = jobs.lease(job, "w1")
    assert held.item_id == "0"
    jobs.exited(job, "w1", code=-9)  # SIGKILLed mid-batch; no clock moves
    again = jobs.lease(job, "w2")
    assert (again.item_id, again.receive_count) == ("0", 2)  # the attempt counted
    assert not jobs.scheduler.ack(job.job_id, held.token)  # the dead worker's token is void


# ---- ends: timeout, stop, API deleted, dead letters ----------------------------------------------------


def test_a_job_past_its_timeout_is_timed_out_and_its_workers_stopped(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=3, batch_size=1, timeout="1m")
    other = jobs.submit(workers=1, items=1, batch_size=1)
    done = jobs.lease(job, "a")
    assert jobs.scheduler.ack(job.job_id, done.token)
    held = jobs.lease(job, "b")
    workers = (worker(job, "a"), worker(job, "b"), worker(other, "c"))

    jobs.clock.advance(59.5)
    plan = jobs.reconcile(*workers)
    assert plan.stops == () and jobs.status(job).status is JobStatus.RUNNING

    jobs.clock.advance(0.5)
    plan = jobs.reconcile(*workers)
    ended = jobs.status(job)
    assert (ended.status, ended.reason) == (JobStatus.TIMED_OUT, "timed out after 60 s")
    assert [(stop.replica.replica_id, stop.reason) for stop in plan.stops] == [
        ("a", "its job has ended"),
        ("b", "its job has ended"),
    ]
    assert plan.launches == ()
    view = jobs.scheduler.view(ended, workers)
    assert [(b.item_id, b.error) for b in view.failed_batches] == [
        ("1", "timed out after 60 s"),
        ("2", "timed out after 60 s"),
    ]
    assert (view.batches.succeeded, view.batches.dead, view.batches.unsettled) == (1, 2, 0)
    assert view.completion is not None and view.completion.state is ItemState.DEAD
    assert not jobs.scheduler.ack(job.job_id, held.token)  # a late result is refused
    stop = jobs.scheduler.lease(job.job_id, worker="b")
    assert (stop.kind, stop.reason) == (LeaseKind.STOP, "timed out after 60 s")
    assert jobs.status(other).status is JobStatus.RUNNING


def test_stop_ends_the_job_as_stopped_once(jobs: Jobs) -> None:
    job = jobs.submit(workers=2, items=2, batch_size=1)
    jobs.lease(job, "a")
    stopped = jobs.scheduler.stop(job.job_id)
    assert (stopped.status, stopped.reason) == (JobStatus.STOPPED, "stopped by the user")
    assert batch_ids(jobs, job) == ["0", "1"]
    jobs.clock.advance(5)
    assert jobs.scheduler.stop(job.job_id).ended_at == stopped.ended_at  # the first end stays
    plan = jobs.reconcile(worker(job, "a"), worker(job, "b", phase=ReplicaPhase.STARTING))
    assert plan.launches == ()
    assert {stop.replica.replica_id for stop in plan.stops} == {"a", "b"}
    assert jobs.scheduler.lease(job.job_id, worker="a").reason == "stopped by the user"


def test_jobs_of_an_api_no_longer_deployed_are_stopped(jobs: Jobs) -> None:
    kept, dropped = jobs.submit(workers=1, items=1), jobs.submit_task()
    plan = jobs.reconcile(worker(dropped, "t1"), desired={BATCH: jobs.desired[BATCH]})
    assert (jobs.status(dropped).status, jobs.status(dropped).reason) == (
        JobStatus.STOPPED,
        "the API was deleted",
    )
    assert [stop.replica.replica_id for stop in plan.stops] == ["t1"]
    assert launched(plan) == {kept.job_id: 1}

    jobs.scheduler.stop_all(BATCH, "the API was deleted")
    assert jobs.status(kept).status is JobStatus.STOPPED


def test_dead_letters_end_the_job_completed_with_failures_naming_the_batches(jobs: Jobs) -> None:
    job = jobs.submit(workers=1, items=4, batch_size=1, max_receive_count=2)
    for expected in ("0", "1", "1", "2", "3", "3"):
        lease = jobs.lease(job, "w1")
        assert lease.item_id == expected  # a failed batch is leasable again at once, in its place
        if expected in ("1", "3"):
            outcome = jobs.scheduler.fail(job.job_id, lease.token, error=f"ValueError: bad {expected}")
            assert outcome is (Settlement.REQUEUED if lease.receive_count == 1 else Settlement.DEAD)
        else:
            assert jobs.scheduler.ack(job.job_id, lease.token)
    complete = jobs.scheduler.lease(job.job_id, worker="w1")
    assert complete.kind is LeaseKind.ON_JOB_COMPLETE and complete.lease is not None
    assert jobs.scheduler.ack(job.job_id, complete.lease.token)
    jobs.reconcile()
    ended = jobs.status(job)
    assert (ended.status, ended.reason) == (
        JobStatus.COMPLETED_WITH_FAILURES,
        "2 of 4 batches failed: 1, 3",
    )
    view = jobs.scheduler.view(ended, [])
    assert [(b.item_id, b.error, b.receive_count) for b in view.failed_batches] == [
        ("1", "ValueError: bad 1", 2),
        ("3", "ValueError: bad 3", 2),
    ]


def test_a_failed_on_job_complete_ends_the_job_completed_with_failures(jobs: Jobs) -> None:
    job = jobs.submit(workers=1, items=1, batch_size=1, max_receive_count=1)
    lease = jobs.lease(job, "w1")
    assert jobs.scheduler.ack(job.job_id, lease.token)
    complete = jobs.scheduler.lease(job.job_id, worker="w1")
    assert complete.lease is not None
    error = "RuntimeError: upload failed\nTraceback (most recent call last):\n  ..."
    assert jobs.scheduler.fail(job.job_id, complete.lease.token, error=error) is Settlement.DEAD
    jobs.reconcile()
    ended = jobs.status(job)
    assert (ended.status, ended.reason) == (
        JobStatus.COMPLETED_WITH_FAILURES,
        "on_job_complete failed: RuntimeError: upload failed",
    )


# ---- tasks ---------------------------------------------------------------------------------------------


def test_a_task_runs_once_with_its_config_and_succeeds(jobs: Jobs) -> None:
    job = jobs.submit_task({"config": {"epochs": 2}})
    assert (job.kind, job.workers, job.max_receive_count, job.total_batches) == (ApiKind.TASK, 1, 1, 1)
    plan = jobs.reconcile()
    assert [(launch.count, launch.role) for launch in plan.launches] == [(1, WorkloadRole.TASK)]
    lease = jobs.lease(job, "t1")
    assert json.loads(lease.payload) == {"scale": 1, "keep": "api", "epochs": 2}
    assert jobs.scheduler.lease(job.job_id, worker="t2").kind is LeaseKind.WAIT
    assert jobs.scheduler.ack(job.job_id, lease.token)
    stop = jobs.scheduler.lease(job.job_id, worker="t1")
    assert (stop.kind, stop.reason) == (LeaseKind.STOP, "the task has run")
    jobs.reconcile()
    assert (jobs.status(job).status, jobs.status(job).reason) == (JobStatus.SUCCEEDED, None)


def test_a_task_that_raises_fails_with_the_errors_first_line(jobs: Jobs) -> None:
    job = jobs.submit_task()
    lease = jobs.lease(job, "t1")
    error = "KeyError: 'dataset'\nTraceback (most recent call last):\n  File \"task.py\", line 3"
    assert jobs.scheduler.fail(job.job_id, lease.token, error=error) is Settlement.DEAD  # never rerun
    plan = jobs.reconcile(worker(job, "t1"))
    ended = jobs.status(job)
    assert (ended.status, ended.reason) == (JobStatus.FAILED, "the task raised: KeyError: 'dataset'")
    assert [stop.replica.replica_id for stop in plan.stops] == ["t1"]


@pytest.mark.parametrize(
    ("code", "cause"), [(-9, "its process exited with code -9"), (3, "the Task class failed to load")]
)
def test_a_task_whose_process_dies_fails_at_once_and_is_not_started_again(
    jobs: Jobs, code: int, cause: str
) -> None:
    job = jobs.submit_task()
    jobs.lease(job, "t1")

    jobs.exited(job, "t1", code=code)
    plan = jobs.reconcile()

    ended = jobs.status(job)
    assert ended.status is JobStatus.FAILED and ended.reason is not None and ended.reason.startswith(cause)
    assert plan.launches == ()
    assert [item.item_id for item in jobs.store.dead_letters(job.job_id)] == ["task"]


# ---- worker counts -------------------------------------------------------------------------------------


def test_view_counts_workers_by_what_they_did(jobs: Jobs) -> None:
    job = jobs.submit(workers=3, items=4, batch_size=1)
    other = jobs.submit(workers=1, items=1, batch_size=1)
    jobs.lease(job, "running")
    jobs.exited(job, "done", code=0)
    jobs.exited(job, "crashed", code=1)
    jobs.scheduler.note_waiting(job.job_id, "compute unavailable: cpu: requested 4, 1.5 free")
    observed = [
        worker(job, "starting", phase=ReplicaPhase.STARTING),  # not yet asked for a lease
        worker(job, "running"),
        worker(job, "done", phase=ReplicaPhase.EXITED, exit_code=0),
        worker(other, "elsewhere"),
    ]
    view = jobs.scheduler.view(jobs.status(job), observed)
    assert view.workers == WorkerCounts(pending=1, initializing=1, running=1, succeeded=1, failed=1)
    assert (view.batches.queued, view.batches.in_progress) == (3, 1)
    assert view.completion is not None and view.completion.state is ItemState.QUEUED
    assert view.waiting == "compute unavailable: cpu: requested 4, 1.5 free"
    assert view.failed_batches == ()

    jobs.scheduler.note_waiting(job.job_id, None)
    assert jobs.scheduler.view(jobs.status(job), observed).waiting is None
    jobs.scheduler.note_waiting(job.job_id, "compute unavailable: mem")
    ended = jobs.scheduler.stop(job.job_id)
    view = jobs.scheduler.view(ended, observed)
    assert (view.workers.pending, view.waiting) == (0, None)  # nothing is wanted of an ended job
    assert len(view.failed_batches) == 4


# ---- async requests ------------------------------------------------------------------------------------


@pytest.fixture
def async_jobs(jobs: Jobs) -> Jobs:
    jobs.scheduler.configure_async(jobs.desired[ASYNC])
    return jobs


def async_replica(rid: str) -> ObservedReplica:
    """An AsyncAPI replica that was SIGKILLed."""
    return ObservedReplica(
        replica_id=ReplicaId(rid),
        api_name=ASYNC,
        revision=Revision("echo-rev1"),
        generation=0,
        phase=ReplicaPhase.EXITED,
        address=None,
        pid=None,
        started_at=0.0,
        exit_code=-9,
    )


def submit_async(jobs: Jobs, body: bytes = b'{"x": 1}') -> str:
    submission = jobs.scheduler.submit_async(
        ASYNC,
        body=body,
        content_type="application/json",
        query="verbose=1",
        headers={"Accept": "application/json"},
    )
    assert submission.api_name == ASYNC
    return submission.request_id


def test_an_async_request_is_queued_leased_and_answered_with_its_result(async_jobs: Jobs) -> None:
    scheduler = async_jobs.scheduler
    request_id = submit_async(async_jobs)
    queued = scheduler.async_request(ASYNC, request_id)
    assert (queued.state, queued.receive_count, queued.result) == (ItemState.QUEUED, 0, None)
    assert scheduler.async_demand() == {ASYNC: 1}

    lease = scheduler.async_lease(ASYNC, worker="r1")
    assert lease is not None
    assert (lease.item_id, lease.payload, lease.content_type) == (request_id, b'{"x": 1}', "application/json")
    assert lease.metadata == {"query": "verbose=1", "headers": {"Accept": "application/json"}}
    assert scheduler.async_lease(ASYNC, worker="r2") is None
    assert scheduler.async_request(ASYNC, request_id).state is ItemState.LEASED
    assert scheduler.async_demand() == {ASYNC: 1}  # in progress still counts as demand
    assert scheduler.async_extend(ASYNC, lease.token)

    assert scheduler.async_ack(ASYNC, lease.token, result=b'{"y": 2}', result_type="application/json")
    assert not scheduler.async_ack(ASYNC, lease.token, result=b"again", result_type="text/plain")
    done = scheduler.async_request(ASYNC, request_id)
    assert (done.state, done.result, done.result_type) == (
        ItemState.SUCCEEDED,
        b'{"y": 2}',
        "application/json",
    )
    assert scheduler.async_demand() == {ASYNC: 0}


def test_an_async_request_is_retried_up_to_max_receive_count(async_jobs: Jobs) -> None:
    scheduler = async_jobs.scheduler
    request_id = submit_async(async_jobs)
    first = scheduler.async_lease(ASYNC, worker="r1")
    assert first is not None
    scheduler.release_async_leases(async_replica("r9"))
    assert scheduler.async_lease(ASYNC, worker="r2") is None  # r9 held nothing: r1 still has it
    scheduler.release_async_leases(async_replica("r1"))
    second = scheduler.async_lease(ASYNC, worker="r2")  # at once: no visibility timeout to wait out
    assert second is not None and (second.item_id, second.receive_count) == (request_id, 2)
    assert scheduler.async_fail(ASYNC, second.token, error="ValueError: no x") is Settlement.DEAD
    failed = scheduler.async_request(ASYNC, request_id)
    assert (failed.state, failed.error) == (ItemState.DEAD, "ValueError: no x")
    assert scheduler.async_demand() == {ASYNC: 0}


def test_async_results_are_purged_after_their_retention(async_jobs: Jobs) -> None:
    scheduler, clock = async_jobs.scheduler, async_jobs.clock
    async_jobs.reconcile()  # the first purge pass
    answered, waiting = submit_async(async_jobs), submit_async(async_jobs, b"{}")
    lease = scheduler.async_lease(ASYNC, worker="r1")
    assert lease is not None and lease.item_id == answered
    assert scheduler.async_ack(ASYNC, lease.token, result=b"ok", result_type="text/plain")

    clock.advance(3599)  # an hour's retention: not yet
    async_jobs.reconcile()
    assert scheduler.async_request(ASYNC, answered).state is ItemState.SUCCEEDED
    clock.advance(2)  # past the retention, but the last purge pass was under a minute ago
    async_jobs.reconcile()
    assert scheduler.async_request(ASYNC, answered).state is ItemState.SUCCEEDED
    clock.advance(PURGE_EVERY_SECONDS)
    async_jobs.reconcile()
    with pytest.raises(NotFoundError, match=r"async\.result_retention"):
        scheduler.async_request(ASYNC, answered)
    assert scheduler.async_request(ASYNC, waiting).state is ItemState.QUEUED  # unanswered ones stay


def test_only_configured_async_apis_take_requests(async_jobs: Jobs) -> None:
    scheduler = async_jobs.scheduler
    with pytest.raises(NotFoundError, match="api sum is not an AsyncAPI"):
        scheduler.submit_async(BATCH, body=b"", content_type="text/plain", query="", headers={})
    scheduler.configure_async(async_jobs.desired[BATCH])  # not async: nothing configured
    assert set(scheduler.async_demand()) == {ASYNC}
    scheduler.forget_async(ASYNC)
    assert scheduler.async_demand() == {}
    with pytest.raises(NotFoundError):
        submit_async(async_jobs)
