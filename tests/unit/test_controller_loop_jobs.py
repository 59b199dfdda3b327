"""The reconcile loop (controller.loop) driving a real JobScheduler on a SQLite file: job workers launched per
job, worker exits accounted by the scheduler, AsyncAPI queue demand waking an API at zero, routes by kind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.controller.jobs import JobScheduler
from modelport.controller.jobstore import JobRecord
from modelport.controller.loop import Controller
from modelport.controller.ports import (
    Backend,
    DesiredApi,
    ReplicaLaunch,
    RouteSink,
    StateStore,
    TrafficSource,
)
from modelport.spec.job import parse_batch_job, parse_task_job, plan_batches
from modelport.spec.model import ApiSpec
from modelport.store.jobs import SqliteJobStore
from modelport.types import (
    ApiKind,
    ApiName,
    ApiStatus,
    JobStatus,
    Revision,
    WorkloadRole,
)
from tests.unit.fakes import FakeBackend, Fakes

BATCH, TASK, ASYNC, REALTIME = ApiName("sum"), ApiName("train"), ApiName("echo"), ApiName("iris")
AUTOSCALE_SECONDS = 1.0


class JobBackend(FakeBackend):
    def of_role(self, role: WorkloadRole) -> list[ReplicaLaunch]:
        return [launch for launch in self.launches if launch.role is role]


class Cluster(Fakes):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.backend = JobBackend(self.clock, self.routes)
        self.jobs_store = SqliteJobStore(path)
        self.scheduler = JobScheduler(store=self.jobs_store, clock=self.clock)
        backend: Backend = self.backend
        routes: RouteSink = self.routes
        traffic: TrafficSource = self.traffic
        store: StateStore = self.store
        self.controller = Controller(
            backend=backend,
            routes=routes,
            traffic=traffic,
            store=store,
            clock=self.clock,
            autoscale_interval_seconds=AUTOSCALE_SECONDS,
            jobs=self.scheduler,
        )

    def deploy(self, name: ApiName, kind: str, **fields: Any) -> DesiredApi:
        spec = ApiSpec.model_validate(
            {"name": name, "kind": kind, "predictor": {"type": "python", "path": "predictor.py"}, **fields}
        )
        desired = DesiredApi(
            spec=spec,
            revision=Revision(f"{name}-rev1"),
            project_dir=Path(f"/snapshots/{name}"),
            spec_path=Path(f"/snapshots/{name}/spec.json"),
            deployed_at=self.clock.wall(),
        )
        assert self.controller.deploy(desired) == "created"
        return desired

    def submit(self, *, workers: int, batches: int) -> JobRecord:
        body = {"workers": workers, "item_list": {"items": list(range(batches)), "batch_size": 1}}
        request = parse_batch_job(json.dumps(body).encode())
        desired = self.controller.desired_api(BATCH)
        return self.scheduler.submit_batch(desired, request, plan_batches(request))

    def tick(self) -> None:
        asyncio.run(self.controller.tick())

    def job(self, job: JobRecord) -> JobRecord:
        return self.scheduler.job(job.job_id)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    harness = Cluster(tmp_path / "state.db")
    yield harness
    harness.jobs_store.close()


def test_deploy_publishes_the_route_before_any_pass_of_the_loop(cluster: Cluster) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    cluster.deploy(ApiName("iris"), "RealtimeAPI")

    assert cluster.routes.latest[BATCH].kind is ApiKind.BATCH  # submissions are taken at once
    assert cluster.routes.latest[ApiName("iris")].replicas == ()  # 503 not ready, not 404, until one is


def test_a_batch_api_starts_no_replica_and_takes_submissions_at_once(cluster: Cluster) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    for _ in range(3):
        cluster.tick()
        cluster.clock.advance(AUTOSCALE_SECONDS)
    assert cluster.backend.launches == []
    route = cluster.routes.latest[BATCH]
    assert (route.kind, route.status, route.replicas, route.hold_when_empty) == (
        ApiKind.BATCH,
        ApiStatus.LIVE,
        (),
        False,
    )
    view = cluster.controller.api(BATCH)
    assert (view.status, view.requested, view.replicas) == (ApiStatus.LIVE, 0, ())


def test_routes_carry_each_apis_kind(cluster: Cluster) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    cluster.deploy(TASK, "TaskAPI")
    cluster.deploy(ASYNC, "AsyncAPI")
    cluster.deploy(REALTIME, "RealtimeAPI")
    cluster.tick()
    kinds = {name: (route.kind, route.endpoint) for name, route in cluster.routes.latest.items()}
    assert kinds == {
        BATCH: (ApiKind.BATCH, "/sum"),
        TASK: (ApiKind.TASK, "/train"),
        ASYNC: (ApiKind.ASYNC, "/echo"),
        REALTIME: (ApiKind.REALTIME, "/iris"),
    }
    # Replicas only for the kinds served by long-running replicas.
    assert {launch.api_name for launch in cluster.backend.launches} == {ASYNC, REALTIME}


def test_a_jobs_workers_start_with_their_role_and_job_and_are_replaced_by_the_scheduler(
    cluster: Cluster,
) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    job = cluster.submit(workers=2, batches=3)
    cluster.tick()
    started = cluster.backend.launches
    assert [(w.role, w.job_id, w.api_name, w.revision) for w in started] == [
        (WorkloadRole.BATCH_WORKER, job.job_id, BATCH, Revision("sum-rev1"))
    ] * 2
    assert all(w.replica_id.startswith(f"sum-{job.job_id}-") for w in started)
    assert set(cluster.store.replicas) == {w.replica_id for w in started}  # a restarted daemon finds them
    assert {w.replica_id for w in cluster.controller.workers()} == {w.replica_id for w in started}
    cluster.tick()
    assert len(cluster.backend.launches) == 2

    # A crashed worker is the scheduler's business: the API's own crash backoff stays untouched.
    crashed = started[0].replica_id
    cluster.backend.exit(crashed, code=3)
    cluster.tick()
    assert crashed in cluster.backend.forgotten and crashed not in cluster.store.replicas
    assert cluster.scheduler.view(cluster.job(job), cluster.controller.workers()).workers.failed == 1
    view = cluster.controller.api(BATCH)
    assert (view.status, view.reason) == (ApiStatus.LIVE, None)
    assert len(cluster.backend.launches) == 2  # the job's restart delay: 1 s
    cluster.clock.advance(1)
    cluster.tick()
    assert [w.job_id for w in cluster.backend.launches[2:]] == [job.job_id]

    logs = cluster.controller.log_paths(BATCH, job.job_id)
    assert {path.stem for path in logs} == {w.replica_id for w in cluster.backend.launches}
    assert cluster.controller.log_paths(BATCH) == []  # the API's replicas' logs: it has none


def test_workers_failing_to_start_end_the_job_as_worker_error_and_the_api_stays_live(
    cluster: Cluster,
) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    job = cluster.submit(workers=1, batches=2)
    for delay in (1.0, 2.0, 0.0):
        cluster.tick()
        (worker,) = cluster.backend.live()
        cluster.backend.exit(worker.replica_id, code=3)
        cluster.tick()
        cluster.clock.advance(delay)
    ended = cluster.job(job)
    assert ended.status is JobStatus.WORKER_ERROR
    assert ended.reason is not None and "exited with code 3 (the predictor failed to load)" in ended.reason
    cluster.tick()
    assert len(cluster.backend.launches) == 3 and cluster.backend.live() == []
    assert cluster.controller.api(BATCH).status is ApiStatus.LIVE


def test_workers_of_a_stopped_job_are_stopped_and_their_exit_is_no_failure(cluster: Cluster) -> None:
    cluster.deploy(BATCH, "BatchAPI")
    job = cluster.submit(workers=2, batches=2)
    cluster.tick()
    cluster.backend.ready()
    cluster.scheduler.stop(job.job_id)
    cluster.tick()
    assert sorted(cluster.backend.terminated) == sorted(w.replica_id for w in cluster.backend.launches)
    cluster.backend.finish_draining()
    cluster.tick()
    assert cluster.backend.replicas == {}
    counts = cluster.scheduler.view(cluster.job(job), []).workers
    assert (counts.succeeded, counts.failed) == (2, 0)
    assert len(cluster.backend.launches) == 2


def test_deleting_a_job_api_stops_its_jobs_and_their_workers(cluster: Cluster) -> None:
    cluster.deploy(TASK, "TaskAPI")
    desired = cluster.controller.desired_api(TASK)
    task = cluster.scheduler.submit_task(desired, parse_task_job(b""))
    cluster.tick()
    assert [(w.role, w.job_id) for w in cluster.backend.launches] == [(WorkloadRole.TASK, task.job_id)]
    assert cluster.controller.delete(TASK)
    assert (cluster.job(task).status, cluster.job(task).reason) == (JobStatus.STOPPED, "the API was deleted")
    assert cluster.backend.terminated == [cluster.backend.launches[0].replica_id]
    assert TASK not in cluster.routes.latest


def test_queued_async_requests_wake_an_async_api_at_zero_replicas(cluster: Cluster) -> None:
    cluster.deploy(ASYNC, "AsyncAPI", autoscaling={"min_replicas": 0})
    for _ in range(3):  # idle, past several autoscaler runs: it stays at zero
        cluster.tick()
        cluster.clock.advance(AUTOSCALE_SECONDS)
    assert cluster.backend.launches == []
    assert cluster.routes.latest[ASYNC].status is ApiStatus.SCALED_TO_ZERO
    assert not cluster.routes.latest[ASYNC].hold_when_empty  # submissions are queued, not held

    request = cluster.scheduler.submit_async(
        ASYNC, body=b"{}", content_type="application/json", query="", headers={}
    )
    cluster.tick()  # at once, not at the next autoscaler run
    (replica,) = cluster.backend.launches
    assert (replica.api_name, replica.role, replica.job_id) == (ASYNC, WorkloadRole.REPLICA, None)
    assert cluster.controller.api(ASYNC).requested == 1

    # A replica that dies mid-request gives the request back at once.
    lease = cluster.scheduler.async_lease(ASYNC, worker=replica.replica_id)
    assert lease is not None and lease.item_id == request.request_id
    assert cluster.scheduler.async_lease(ASYNC, worker="other") is None
    cluster.backend.exit(replica.replica_id, code=-9)
    cluster.tick()
    again = cluster.scheduler.async_lease(ASYNC, worker="other")
    assert again is not None and (again.item_id, again.receive_count) == (request.request_id, 2)
