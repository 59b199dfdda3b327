"""Unit tests of controller.kube_loop (KubeController), the in-cluster reconcile loop, wired as in the pod:
the Kubernetes backend (through cluster/kube_cluster.py) against FakeKubeApi, the only fake allowed here (no
API server can run), the real LeaderElector on the rendered Lease, a real JobScheduler on a SQLite file,
driven tick by tick on a FakeClock. The gateway's side: tests/unit/fakes.py's recording routes and traffic.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelport.backends.kube_lease import KubeLeaseStore, lease_record, lease_spec
from modelport.backends.kubernetes import Kind, KubeApiError, KubernetesBackend
from modelport.cluster.kube_cluster import KubeCluster, kube_layout
from modelport.controller.jobs import JobScheduler
from modelport.controller.jobstore import JobRecord
from modelport.controller.kube_loop import KubeController
from modelport.controller.kube_ports import LeaseRecord
from modelport.controller.leader import LeaderElector
from modelport.manifests import RenderOptions, render_api, render_cluster
from modelport.spec.job import parse_batch_job, parse_task_job, plan_batches
from modelport.spec.load import parse_apis
from modelport.spec.model import ApiSpec
from modelport.store.jobs import SqliteJobStore
from modelport.types import (
    Address,
    ApiKind,
    ApiName,
    ApiStatus,
    JobStatus,
    ReplicaPhase,
    Revision,
    WorkloadRole,
)
from tests.unit.fake_kube import FakeKubeApi, Object, timestamp
from tests.unit.fakes import FakeTraffic, RecordingRoutes

NS = "mp"
IMAGE = "registry.example.com/team/iris:0123456789ab"
OPTIONS = RenderOptions(namespace=NS, image=IMAGE)
LEASE = "modelport-controller"
IRIS, SUMS, TRAIN = ApiName("iris"), ApiName("sums"), ApiName("train")
REV1, REV2 = Revision("aaaaaaaaaaaa"), Revision("bbbbbbbbbbbb")


def realtime(**autoscaling: object) -> ApiSpec:
    fields = {
        "window": "10s",
        "downscale_stabilization_period": "0s",
        "upscale_stabilization_period": "0s",
        "target_replica_concurrency": 1,
        **autoscaling,
    }
    scaling = ", ".join(f"{key}: {value}" for key, value in fields.items())
    text = (
        "- name: iris\n  kind: RealtimeAPI\n  predictor: {type: python, path: p.py}\n"
        f"  autoscaling: {{{scaling}}}\n"
    )
    return parse_apis(text, file="modelport.yaml")[0]


def job_api(name: str, kind: str) -> ApiSpec:
    text = f"- name: {name}\n  kind: {kind}\n  predictor: {{type: python, path: p.py}}\n"
    return parse_apis(text, file="modelport.yaml")[0]


class Namespace:
    """A namespace with the rendered cluster objects and one controller pod's loop over it."""

    def __init__(
        self, state: Path | None = None, *, identity: str = "controller-a", fake: FakeKubeApi | None = None
    ) -> None:
        self.fake = fake or FakeKubeApi(namespaces=(NS,))
        self.clock = self.fake.clock
        self.backend = KubernetesBackend(
            self.fake, namespace=NS, context=None, layout=kube_layout(), clock=self.clock
        )
        self.backend.apply_objects(render_cluster(OPTIONS))
        self.routes = RecordingRoutes()
        self.traffic = FakeTraffic()
        self.store = None if state is None else SqliteJobStore(state)
        self.scheduler = None if self.store is None else JobScheduler(store=self.store, clock=self.clock)
        self.controller = KubeController(
            cluster=KubeCluster(self.backend, namespace=NS),
            leader=LeaderElector(
                KubeLeaseStore(self.backend, name=LEASE, namespace=NS), identity=identity, clock=self.clock
            ),
            routes=self.routes,
            traffic=self.traffic,
            clock=self.clock,
            autoscale_interval_seconds=10.0,
            jobs=self.scheduler,
        )

    def deploy(self, spec: ApiSpec, revision: Revision = REV1) -> None:
        """What `modelport deploy --env` does: apply the API's rendered objects."""
        self.backend.apply_api(spec, render_api(spec, revision=revision, options=OPTIONS), revision=revision)

    def tick(self) -> None:
        asyncio.run(self.controller.tick())

    def pods(self, api: str = "iris") -> list[str]:
        return self.fake.pod_names(NS, owner=f"api-{api}")

    def replicas(self, api: str = "iris") -> int:
        return int(self.fake.stored(Kind.DEPLOYMENT, f"api-{api}", namespace=NS)["spec"]["replicas"])

    def calls(self, method: str) -> list[str]:
        return [call.target for call in self.fake.calls if call.method == method]

    def hold_lease(self, holder: str) -> None:
        """Another controller holds the Lease, renewed just now."""
        lease = self.fake.stored(Kind.LEASE, LEASE, namespace=NS)
        record = LeaseRecord(
            holder=holder,
            duration_seconds=15,
            acquired_at=self.clock.wall(),
            renewed_at=self.clock.wall(),
            transitions=lease_record(lease).transitions + 1,
            version=lease["metadata"]["resourceVersion"],
        )
        self.fake.replace({**lease, "spec": lease_spec(record)})


@pytest.fixture
def namespace() -> Namespace:
    return Namespace()


@pytest.fixture
def with_jobs(tmp_path: Path) -> Iterator[Namespace]:
    harness = Namespace(tmp_path / "state.db")
    yield harness
    assert harness.store is not None
    harness.store.close()


# --- routes -------------------------------------------------------------------------------------------


def test_routes_are_published_from_ready_endpoints_only(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=3, max_replicas=5))
    namespace.fake.settle()
    ready, starting, pending = namespace.pods()
    namespace.fake.start(ready, namespace=NS)
    namespace.fake.start(starting, namespace=NS, ready=False)
    namespace.fake.settle()
    namespace.tick()

    route = namespace.routes.latest[IRIS]
    ip = namespace.fake.pod(ready, namespace=NS)["status"]["podIP"]
    assert [(t.replica_id, t.address, t.revision) for t in route.replicas] == [
        (ready, Address(host=ip, port=8080), REV1)
    ]
    assert (route.endpoint, route.kind, route.status) == ("/iris", ApiKind.REALTIME, ApiStatus.UPDATING)
    assert namespace.controller.is_leader

    # The pod Kubernetes terminates leaves the routes on the next pass; nothing else changes.
    namespace.fake.start(starting, namespace=NS)
    namespace.fake.pod(ready, namespace=NS)["metadata"]["deletionTimestamp"] = timestamp(
        namespace.clock.wall()
    )
    namespace.fake.settle()
    published = len(namespace.routes.tables)
    namespace.clock.advance(1)
    namespace.tick()
    assert [t.replica_id for t in namespace.routes.latest[IRIS].replicas] == [starting]
    assert len(namespace.routes.tables) == published + 1
    namespace.clock.advance(1)
    namespace.tick()
    assert len(namespace.routes.tables) == published + 1  # an unchanged table is not published again
    assert pending not in {t.replica_id for t in namespace.routes.latest[IRIS].replicas}


def test_a_batch_api_is_routed_to_the_submission_handler(namespace: Namespace) -> None:
    namespace.deploy(job_api("sums", "BatchAPI"))
    namespace.tick()
    route = namespace.routes.latest[SUMS]
    assert (route.kind, route.replicas, route.status) == (ApiKind.BATCH, (), ApiStatus.LIVE)
    assert namespace.controller.requested(SUMS) is None  # nothing to scale
    assert namespace.calls("patch_scale") == []


# --- autoscaling --------------------------------------------------------------------------------------


def test_the_autoscaler_scales_through_the_scale_subresource(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=1, max_replicas=5))
    namespace.fake.settle()
    (pod,) = namespace.pods()
    namespace.fake.start(pod, namespace=NS)
    namespace.fake.settle()
    namespace.tick()
    assert namespace.controller.requested(IRIS) == 1
    for _ in range(9):  # three in flight all along: the window's average is 3 per replica (target 1)
        namespace.traffic.load("iris", in_flight={pod: 3})
        namespace.clock.advance(1)
        namespace.tick()
    assert namespace.calls("patch_scale") == []  # the autoscaler runs every 10 s
    namespace.clock.advance(1)
    namespace.tick()
    assert namespace.calls("patch_scale") == ["Deployment mp/api-iris 2"]  # +50% per step: 1 -> 2
    assert namespace.replicas() == 2
    namespace.clock.advance(1)
    namespace.tick()
    assert namespace.calls("patch_scale") == ["Deployment mp/api-iris 2"]  # done: the count matches


def test_a_controller_adopts_the_count_the_deployment_has(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=1, max_replicas=10))
    namespace.backend.scale("iris", 4)  # what a previous leader's autoscaler left
    namespace.tick()
    assert namespace.controller.requested(IRIS) == 4
    assert namespace.calls("patch_scale") == ["Deployment mp/api-iris 4"]  # the test's own, nothing since
    # A redeploy keeps it too (the backend clamps it into the new range, the autoscaler the same way).
    namespace.deploy(realtime(min_replicas=1, max_replicas=3), revision=REV2)
    namespace.clock.advance(1)
    namespace.tick()
    assert (namespace.replicas(), namespace.controller.requested(IRIS)) == (3, 3)


def test_held_requests_wake_an_api_at_zero_at_once(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=0, max_replicas=3))
    namespace.fake.settle()
    namespace.tick()
    assert namespace.replicas() == 0
    route = namespace.routes.latest[IRIS]
    assert (route.hold_when_empty, route.status) == (True, ApiStatus.SCALED_TO_ZERO)
    namespace.traffic.load("iris", held=2)
    namespace.clock.advance(0.5)
    namespace.tick()
    assert namespace.replicas() == 1


def test_a_crash_looping_api_keeps_its_count(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=1, max_replicas=5))
    namespace.fake.settle()
    (pod,) = namespace.pods()
    namespace.fake.crash_loop(pod, namespace=NS, restarts=4, exit_code=3)
    for _ in range(12):
        namespace.traffic.load("iris", in_flight={pod: 5})
        namespace.clock.advance(1)
        namespace.tick()
    assert namespace.routes.latest[IRIS].status is ApiStatus.ERROR
    assert namespace.calls("patch_scale") == []


# --- leadership ---------------------------------------------------------------------------------------


def test_nothing_is_done_while_another_controller_leads_and_it_takes_over_on_expiry(
    namespace: Namespace,
) -> None:
    namespace.deploy(realtime(min_replicas=2, max_replicas=5))
    namespace.hold_lease("controller-b")
    namespace.fake.calls.clear()
    for _ in range(7):  # 14 s: controller-b's Lease (15 s) has not expired as this one saw it
        namespace.tick()
        namespace.clock.advance(2)
    assert {call.method for call in namespace.fake.calls} == {"get"}  # only the Lease is read
    assert namespace.routes.tables == []
    assert not namespace.controller.is_leader
    assert namespace.controller.leader_identity == "controller-b"

    namespace.clock.advance(2)
    namespace.tick()
    assert namespace.controller.is_leader
    assert lease_record(namespace.fake.stored(Kind.LEASE, LEASE, namespace=NS)).holder == "controller-a"
    assert IRIS in namespace.routes.latest
    assert namespace.controller.requested(IRIS) == 2


def test_a_leader_that_loses_the_lease_stops_acting(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=1, max_replicas=5))
    namespace.fake.settle()
    (pod,) = namespace.pods()
    namespace.tick()
    assert namespace.controller.is_leader
    namespace.hold_lease("controller-b")  # e.g. this pod was cut off long enough for b to take over
    namespace.clock.advance(2)
    namespace.tick()
    assert not namespace.controller.is_leader
    published = len(namespace.routes.tables)
    for _ in range(12):
        namespace.traffic.load("iris", in_flight={pod: 5})
        namespace.clock.advance(1)
        namespace.tick()
    assert namespace.calls("patch_scale") == []
    assert len(namespace.routes.tables) == published
    assert namespace.controller.deployed_apis() == []


def test_shutdown_releases_the_lease(namespace: Namespace) -> None:
    namespace.tick()
    asyncio.run(namespace.controller.shutdown())
    assert not namespace.controller.is_leader
    assert lease_record(namespace.fake.stored(Kind.LEASE, LEASE, namespace=NS)).holder is None


class SlowKubeApi(FakeKubeApi):
    """An API server whose next listing takes `stall` seconds (of the fake clock)."""

    stall: float = 0.0

    def list_objects(self, kind: Kind, *, namespace: str, selector: str) -> list[Object]:
        stall, self.stall = self.stall, 0.0
        self.clock.advance(stall)
        return super().list_objects(kind, namespace=namespace, selector=selector)


def test_a_pass_that_outlived_the_renew_deadline_writes_nothing() -> None:
    """Another controller may lead once this one's Lease has gone unrenewed: a pass whose observation took
    that long scales nothing; the next pass renews first, then scales."""
    slow = SlowKubeApi(namespaces=(NS,))
    namespace = Namespace(fake=slow)
    namespace.deploy(realtime(min_replicas=0, max_replicas=3))
    namespace.tick()
    namespace.traffic.load("iris", held=1)
    slow.stall = 10.0
    namespace.clock.advance(0.5)
    namespace.tick()
    assert namespace.calls("patch_scale") == []
    namespace.clock.advance(2)
    namespace.tick()
    assert namespace.calls("patch_scale") == ["Deployment mp/api-iris 1"]


# --- failures -----------------------------------------------------------------------------------------


def test_a_failed_observation_changes_nothing_and_the_next_pass_goes_on(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=1, max_replicas=5))
    namespace.fake.settle()
    (pod,) = namespace.pods()
    namespace.fake.start(pod, namespace=NS)
    namespace.fake.settle()
    namespace.tick()
    routes = namespace.routes.latest
    namespace.fake.fail_next(
        "list_objects", KubeApiError(status=503, reason="ServiceUnavailable", message="etcd is down")
    )
    namespace.clock.advance(1)
    namespace.tick()  # the observe phase fails: routes stay as they were, nothing is scaled
    assert namespace.routes.latest is routes
    assert namespace.controller.is_leader
    namespace.backend.scale("iris", 1)  # no-op, to see the next pass run in full
    namespace.fake.delete(Kind.DEPLOYMENT, name="api-iris", namespace=NS)
    namespace.fake.finish_terminating()
    namespace.fake.settle()
    namespace.clock.advance(1)
    namespace.tick()
    assert namespace.routes.latest[IRIS].replicas == ()


def test_a_failed_scale_is_tried_again_next_pass(namespace: Namespace) -> None:
    namespace.deploy(realtime(min_replicas=0, max_replicas=3))
    namespace.tick()
    namespace.traffic.load("iris", held=1)
    namespace.fake.fail_next("patch_scale", KubeApiError(status=500, reason="InternalError", message="boom"))
    namespace.clock.advance(0.5)
    namespace.tick()
    assert namespace.replicas() == 0
    namespace.clock.advance(0.5)
    namespace.tick()
    assert namespace.replicas() == 1
    assert namespace.calls("patch_scale") == ["Deployment mp/api-iris 1"] * 2


# --- jobs ---------------------------------------------------------------------------------------------


def submit_batch(space: Namespace, *, workers: int, batches: int) -> JobRecord:
    assert space.scheduler is not None
    body = {"workers": workers, "item_list": {"items": list(range(batches)), "batch_size": 1}}
    request = parse_batch_job(json.dumps(body).encode())
    return space.scheduler.submit_batch(space.controller.desired_api(SUMS), request, plan_batches(request))


def test_a_batch_job_runs_as_a_kubernetes_job_and_its_worker_exits_are_accounted(
    with_jobs: Namespace,
) -> None:
    space, scheduler = with_jobs, with_jobs.scheduler
    assert scheduler is not None
    space.deploy(job_api("sums", "BatchAPI"))
    space.tick()
    job = submit_batch(space, workers=2, batches=5)
    space.clock.advance(1)
    space.tick()
    name = f"sums-{job.job_id}"
    created = space.fake.stored(Kind.JOB, name, namespace=NS)
    assert created["spec"]["parallelism"] == 2
    worker = created["spec"]["template"]["spec"]["containers"][0]
    assert worker["image"] == IMAGE  # the image the API's revision was deployed with
    assert worker["command"][-2:] == ["--control-url", "http://modelport-controller.mp.svc:8889"]
    assert space.calls("apply").count(f"Job mp/{name}") == 1

    first, second = space.fake.start_job_pods(name, namespace=NS, count=2)
    space.fake.start(first, namespace=NS)
    space.clock.advance(1)
    space.tick()
    assert space.calls("apply").count(f"Job mp/{name}") == 1  # the Job exists: Kubernetes runs its pods
    workers = {w.replica_id: w for w in space.controller.workers()}
    assert set(workers) == {first, second}
    assert {(w.role, w.job_id, w.api_name) for w in workers.values()} == {
        (WorkloadRole.BATCH_WORKER, job.job_id, SUMS)
    }

    space.fake.exit(first, namespace=NS, exit_code=3)
    for _ in range(2):  # counted once, however many passes see the exited pod
        space.clock.advance(1)
        space.tick()
    counts = scheduler.view(scheduler.job(job.job_id), space.controller.workers()).workers
    assert (counts.failed, counts.succeeded) == (1, 0)
    assert space.calls("apply").count(f"Job mp/{name}") == 1

    scheduler.stop(job.job_id)
    space.clock.advance(1)
    space.tick()
    assert name not in space.fake.names(Kind.JOB, namespace=NS)  # deleted: Kubernetes stops its pods
    assert space.fake.pod(second, namespace=NS)["metadata"].get("deletionTimestamp")
    space.clock.advance(1)
    space.tick()
    assert space.calls("delete").count(f"Job {NS}/{name}") == 1


def test_a_finished_kubernetes_job_of_a_running_job_is_replaced(with_jobs: Namespace) -> None:
    """A Job starts no pods once one exited 0 (an evicted worker drains and exits 0) or once it failed past
    its backoffLimit: while batches are left, the controller makes it again."""
    space = with_jobs
    space.deploy(job_api("sums", "BatchAPI"))
    space.tick()
    job = submit_batch(space, workers=1, batches=3)
    space.clock.advance(1)
    space.tick()
    name = f"sums-{job.job_id}"
    (pod,) = space.fake.start_job_pods(name, namespace=NS, count=1)
    space.fake.exit(pod, namespace=NS, exit_code=0)
    space.fake.finish_job(name, namespace=NS, condition="Complete")
    space.clock.advance(1)
    space.tick()
    assert [target for target in space.calls("delete") if target.startswith("Job")] == [f"Job {NS}/{name}"]
    assert space.calls("apply").count(f"Job mp/{name}") == 2
    assert "status" not in space.fake.stored(Kind.JOB, name, namespace=NS)  # a new, active Job


def test_a_new_leader_accounts_for_a_task_that_exited_before_its_term(tmp_path: Path) -> None:
    space = Namespace(tmp_path / "state.db")
    assert space.scheduler is not None and space.store is not None
    space.deploy(job_api("train", "TaskAPI"))
    space.tick()
    task = space.scheduler.submit_task(space.controller.desired_api(TRAIN), parse_task_job(b""))
    space.clock.advance(1)
    space.tick()
    name = f"train-{task.job_id}"
    created = space.fake.stored(Kind.JOB, name, namespace=NS)
    assert (created["spec"]["parallelism"], created["spec"]["backoffLimit"]) == (1, 0)  # a task runs once
    (pod,) = space.fake.start_job_pods(name, namespace=NS, count=1)
    space.fake.exit(pod, namespace=NS, exit_code=137)
    space.fake.finish_job(name, namespace=NS, condition="Failed")
    # The leader dies before its next pass; another controller takes over with the same job queue.
    space.store.close()
    store = SqliteJobStore(tmp_path / "state.db")
    successor = KubeController(
        cluster=KubeCluster(space.backend, namespace=NS),
        leader=LeaderElector(
            KubeLeaseStore(space.backend, name=LEASE, namespace=NS),
            identity="controller-b",
            clock=space.clock,
        ),
        routes=RecordingRoutes(),
        traffic=FakeTraffic(),
        clock=space.clock,
        jobs=JobScheduler(store=store, clock=space.clock),
    )
    try:
        asyncio.run(successor.tick())  # sees controller-a's Lease: stands by
        space.clock.advance(16)
        asyncio.run(successor.tick())
        assert successor.is_leader
        ended = JobScheduler(store=store, clock=space.clock).job(task.job_id)
        assert ended.status is JobStatus.FAILED
        assert ended.reason is not None and "its process exited with code 137" in ended.reason
        assert [w.phase for w in successor.workers()] == [ReplicaPhase.EXITED]
        assert space.calls("apply").count(f"Job mp/{name}") == 1  # an ended task is not run again
    finally:
        store.close()
