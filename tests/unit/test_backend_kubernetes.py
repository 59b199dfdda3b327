"""Unit tests of backends.kubernetes: KubernetesBackend against FakeKubeApi (tests/unit/fake_kube.py), the one
fake these tests allow, since no API server can run here; and ClientKubeApi's own failures on real sockets
(a closed loopback port, a kubeconfig without the context) and without the client installed (a subprocess).

Live-cluster runs are not part of CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from modelport.backends.kube_state import LogCursor, new_log_lines, parse_log_timestamp
from modelport.backends.kubernetes import (
    ApplyAction,
    ClientKubeApi,
    Kind,
    KubeApiError,
    KubernetesBackend,
)
from modelport.cluster.kube_cluster import kube_layout
from modelport.errors import (
    ConflictError,
    ModelportError,
    NotFoundError,
    UnavailableError,
    UserInputError,
)
from modelport.manifests import RenderOptions, render_api, render_cluster
from modelport.spec.load import parse_apis
from modelport.spec.model import ApiSpec
from modelport.types import Address, ApiKind, ApiStatus, ReplicaPhase, Revision
from tests.support import IRIS_SPEC, free_port
from tests.unit.fake_kube import FakeKubeApi, Object

NS = "mp"
CONTEXT = "prod-eu"
OPTIONS = RenderOptions(namespace=NS, image="registry.example.com/team/iris:0123456789ab")
REV1 = Revision("aaaaaaaaaaaa")
REV2 = Revision("bbbbbbbbbbbb")
BATCH_SPEC = """\
- name: sums
  kind: BatchAPI
  predictor: {type: python, path: batch.py}
"""


def spec(text: str = IRIS_SPEC) -> ApiSpec:
    return parse_apis(text, file="modelport.yaml")[0]


def scaled(minimum: int, maximum: int, *, init: int | None = None) -> ApiSpec:
    init_line = "" if init is None else f", init_replicas: {init}"
    return spec(
        IRIS_SPEC + f"  autoscaling: {{min_replicas: {minimum}, max_replicas: {maximum}{init_line}}}\n"
    )


@pytest.fixture
def fake() -> FakeKubeApi:
    return FakeKubeApi(namespaces=("default", NS))


@pytest.fixture
def backend(fake: FakeKubeApi) -> KubernetesBackend:
    return KubernetesBackend(fake, namespace=NS, context=CONTEXT, layout=kube_layout(), clock=fake.clock)


def deploy(backend: KubernetesBackend, api: ApiSpec, revision: Revision) -> ApplyAction:
    return backend.apply_api(
        api, render_api(api, revision=revision, options=OPTIONS), revision=revision
    ).action


def without_server_fields(obj: Object) -> Object:
    meta = {
        k: v for k, v in obj["metadata"].items() if k not in ("uid", "creationTimestamp", "resourceVersion")
    }
    meta.pop("generation", None)
    return {k: v for k, v in {**obj, "metadata": meta}.items() if k != "status"}


def start_all(fake: FakeKubeApi) -> list[str]:
    """Let the Deployment controller make pods, start each, and retire the old ones."""
    fake.settle()
    pods = [
        p for p in fake.pod_names(NS) if not fake.pod(p, namespace=NS)["metadata"].get("deletionTimestamp")
    ]
    for pod in pods:
        if "podIP" not in fake.pod(pod, namespace=NS)["status"]:
            fake.start(pod, namespace=NS)
    fake.settle()
    fake.finish_terminating()
    fake.settle()
    return fake.pod_names(NS)


# Deploy, scale, delete ------------------------------------------------------------------------------------


def test_deploy_applies_the_cluster_objects_and_every_object_of_render_api(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    api = spec()
    assert backend.apply_objects(render_cluster(OPTIONS)) == []
    rendered = render_api(api, revision=REV1, options=OPTIONS)
    outcome = backend.apply_api(api, rendered, revision=REV1)
    assert (outcome.action, outcome.kind, outcome.replicas) == (ApplyAction.CREATED, ApiKind.REALTIME, 1)
    for obj in [*render_cluster(OPTIONS), *rendered]:
        kind = Kind.of(obj)
        stored = fake.stored(kind, obj["metadata"]["name"], namespace=NS)
        assert without_server_fields(stored) == json.loads(json.dumps(obj)), f"{kind} differs"
    assert [call.method for call in fake.calls].count("apply") == len(render_cluster(OPTIONS)) + 4


def test_redeploying_the_same_revision_changes_nothing_and_keeps_the_scale(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    api = scaled(1, 10)
    deploy(backend, api, REV1)
    backend.scale("iris", 6)
    generation = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)["metadata"]["generation"]
    assert deploy(backend, api, REV1) is ApplyAction.UNCHANGED
    deployment = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)
    assert deployment["spec"]["replicas"] == 6
    assert deployment["metadata"]["generation"] == generation  # no change, so no rollout


def test_a_new_revision_rolls_out_with_the_scale_clamped_and_old_specs_pruned_once_unused(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, scaled(1, 10), REV1)
    backend.scale("iris", 7)
    start_all(fake)
    assert deploy(backend, scaled(1, 4), REV2) is ApplyAction.UPDATED
    deployment = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)
    assert deployment["spec"]["replicas"] == 4  # 7 clamped to the new max_replicas
    assert deployment["spec"]["template"]["metadata"]["annotations"]["modelport.dev/revision"] == REV2
    # The old pods still run REV1 and read its spec: both ConfigMaps stay.
    assert fake.names(Kind.CONFIG_MAP, namespace=NS) == [
        "api-iris-spec-aaaaaaaaaaaa",
        "api-iris-spec-bbbbbbbbbbbb",
    ]
    pods = start_all(fake)
    assert len(pods) == 4
    assert deploy(backend, scaled(1, 4), REV2) is ApplyAction.UNCHANGED
    assert fake.names(Kind.CONFIG_MAP, namespace=NS) == ["api-iris-spec-bbbbbbbbbbbb"]


def test_a_new_deployment_starts_at_init_replicas_and_a_raised_minimum_lifts_the_scale(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    assert (
        backend.apply_api(
            scaled(2, 9, init=5),
            render_api(scaled(2, 9, init=5), revision=REV1, options=OPTIONS),
            revision=REV1,
        ).replicas
        == 5
    )
    backend.scale("iris", 2)
    deploy(backend, scaled(3, 9), REV2)
    assert fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)["spec"]["replicas"] == 3


def test_scale_patches_only_the_replicas_through_the_scale_subresource(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, spec(), REV1)
    before = json.loads(json.dumps(fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)))
    fake.calls.clear()
    backend.scale("iris", 3)
    after = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)
    assert [(c.method, c.target) for c in fake.calls] == [("patch_scale", "Deployment mp/api-iris 3")]
    assert after["spec"] == {**before["spec"], "replicas": 3}
    assert {k: v for k, v in after["metadata"].items() if k != "generation"} == {
        k: v for k, v in before["metadata"].items() if k != "generation"
    }


def test_scale_refuses_a_missing_deployment_and_a_negative_count(backend: KubernetesBackend) -> None:
    with pytest.raises(NotFoundError, match=r"API 'iris' has no Deployment 'api-iris' in namespace 'mp' of "):
        backend.scale("iris", 2)
    with pytest.raises(UserInputError, match="replicas: expected a whole number >= 0, got -1"):
        backend.scale("iris", -1)


def test_delete_removes_every_object_of_the_api_and_nothing_else(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    backend.apply_objects(render_cluster(OPTIONS))
    deploy(backend, spec(), REV1)
    other = spec(IRIS_SPEC.replace("name: iris", "name: other"))
    deploy(backend, other, REV1)
    start_all(fake)
    cluster_objects = {(Kind.of(o), o["metadata"]["name"]) for o in render_cluster(OPTIONS)}
    deleted = backend.delete_api("iris")
    assert sorted(deleted) == [
        "ConfigMap/api-iris-spec-aaaaaaaaaaaa",
        "Deployment/api-iris",
        "PodDisruptionBudget/api-iris",
        "Service/api-iris",
    ]
    left = {(kind, name) for (kind, ns, name) in fake.objects if kind not in (Kind.POD, Kind.ENDPOINT_SLICE)}
    other_objects = {
        (Kind.of(o), o["metadata"]["name"]) for o in render_api(other, revision=REV1, options=OPTIONS)
    }
    assert left == cluster_objects | other_objects | {(Kind.NAMESPACE, "default")}
    iris_pods = [p for p in fake.pod_names(NS) if p.startswith("api-iris-")]
    assert iris_pods and all(
        fake.pod(p, namespace=NS)["metadata"].get("deletionTimestamp") for p in iris_pods
    )
    with pytest.raises(
        NotFoundError, match="API 'iris' is not deployed in namespace 'mp' of context 'prod-eu'"
    ):
        backend.delete_api("iris")


def test_redeploying_a_realtime_api_as_a_batch_api_removes_its_replicas(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, spec(IRIS_SPEC.replace("iris", "sums")), REV1)
    assert fake.names(Kind.DEPLOYMENT, namespace=NS) == ["api-sums"]
    assert deploy(backend, spec(BATCH_SPEC), REV2) is ApplyAction.UPDATED
    assert fake.names(Kind.DEPLOYMENT, namespace=NS) == []
    assert fake.names(Kind.SERVICE, namespace=NS) == []
    assert fake.names(Kind.CONFIG_MAP, namespace=NS) == ["api-sums-spec-bbbbbbbbbbbb"]


def test_a_manifest_for_another_namespace_is_refused_before_anything_is_sent(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    api = spec()
    elsewhere = render_api(api, revision=REV1, options=RenderOptions(namespace="other", image=OPTIONS.image))
    with pytest.raises(
        UserInputError, match="is for namespace 'other', but this environment deploys to 'mp'"
    ):
        backend.apply_api(api, elsewhere, revision=REV1)
    assert [c.method for c in fake.calls if c.method == "apply"] == []


# Observing ------------------------------------------------------------------------------------------------


def test_observe_maps_pods_to_replicas(fake: FakeKubeApi, backend: KubernetesBackend) -> None:
    deploy(backend, scaled(4, 4), REV1)
    fake.settle()
    starting, ready, draining, exited = fake.pod_names(NS)
    fake.start(ready, namespace=NS)
    fake.start(draining, namespace=NS)
    fake.pod(draining, namespace=NS)["metadata"]["deletionTimestamp"] = "2026-06-01T00:00:00Z"
    fake.start(exited, namespace=NS)
    fake.exit(exited, namespace=NS, exit_code=3)
    replicas = {str(r.replica_id): r for r in backend.observe("iris")}
    assert {name: r.phase for name, r in replicas.items()} == {
        starting: ReplicaPhase.STARTING,
        ready: ReplicaPhase.READY,
        draining: ReplicaPhase.DRAINING,
        exited: ReplicaPhase.EXITED,
    }
    ip = fake.pod(ready, namespace=NS)["status"]["podIP"]
    assert replicas[ready].address == Address(host=ip, port=8080)
    assert replicas[ready].ready_at == fake.clock.wall() // 1
    assert replicas[starting].address is None
    assert replicas[exited].exit_code == 3
    assert {r.revision for r in replicas.values()} == {REV1}
    assert {r.api_name for r in replicas.values()} == {"iris"}


def test_status_is_updating_until_every_replica_of_the_revision_is_ready_then_live(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, scaled(2, 5), REV1)
    assert backend.api_status("iris").status is ApiStatus.UPDATING  # not observed by the controller yet
    fake.settle()
    first, second = fake.pod_names(NS)
    fake.start(first, namespace=NS)
    fake.settle()
    state = backend.api_status("iris")
    assert (state.status, state.requested, state.up_to_date, state.stale) == (ApiStatus.UPDATING, 2, 1, 0)
    fake.start(second, namespace=NS)
    fake.settle()
    state = backend.api_status("iris")
    assert (state.status, state.reason, state.up_to_date) == (ApiStatus.LIVE, None, 2)
    assert state.spec == scaled(2, 5)
    assert state.revision == REV1
    # A rolling update: the old replicas serve (stale) until the new ones are ready.
    deploy(backend, scaled(2, 5), REV2)
    fake.settle()
    state = backend.api_status("iris")
    assert (state.status, state.up_to_date, state.stale, state.revision) == (ApiStatus.UPDATING, 0, 2, REV2)
    start_all(fake)
    state = backend.api_status("iris")
    assert (state.status, state.up_to_date, state.stale) == (ApiStatus.LIVE, 2, 0)


def test_a_crash_loop_is_an_error_with_the_restarts_and_the_exit_code(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, spec(), REV1)
    fake.settle()
    (pod,) = fake.pod_names(NS)
    fake.crash_loop(pod, namespace=NS, restarts=5, exit_code=3)
    state = backend.api_status("iris")
    assert state.status is ApiStatus.ERROR
    assert state.reason == (
        f"replica {pod} keeps failing (CrashLoopBackOff, restarted 5 times, last exit code 3): "
        "back-off 5m0s restarting failed container=replica"
    )
    assert state.pods[0].restarts == 5


def test_an_image_that_cannot_be_pulled_is_an_error_that_says_so(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, spec(), REV1)
    fake.settle()
    (pod,) = fake.pod_names(NS)
    fake.fail_image_pull(pod, namespace=NS, message='Back-off pulling image "registry.example.com/team/iris"')
    state = backend.api_status("iris")
    assert state.status is ApiStatus.ERROR
    assert state.reason is not None
    assert f"replica {pod} cannot pull its image (ImagePullBackOff)" in state.reason
    assert 'Back-off pulling image "registry.example.com/team/iris"' in state.reason
    assert "imagePullSecrets" in state.reason


def test_a_pod_no_node_fits_is_compute_unavailable(fake: FakeKubeApi, backend: KubernetesBackend) -> None:
    deploy(backend, spec(), REV1)
    fake.settle()
    (pod,) = fake.pod_names(NS)
    fake.leave_unscheduled(
        pod, namespace=NS, message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )
    state = backend.api_status("iris")
    assert state.status is ApiStatus.COMPUTE_UNAVAILABLE
    assert (
        state.reason
        == f"replica {pod} does not fit on any node: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )


def test_a_stalled_rollout_and_a_replica_failure_are_errors(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, spec(), REV1)
    start_all(fake)
    deployment = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace=NS)
    deployment["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    assert (backend.api_status("iris").status, backend.api_status("iris").reason) == (
        ApiStatus.ERROR,
        "the rollout stalled: too slow",
    )
    deployment["status"]["conditions"] = [
        {"type": "ReplicaFailure", "status": "True", "message": 'pods "x" is forbidden: exceeded quota'}
    ]
    assert backend.api_status("iris").reason == (
        'Kubernetes cannot create replicas: pods "x" is forbidden: exceeded quota'
    )


def test_an_api_scaled_to_zero_says_so(fake: FakeKubeApi, backend: KubernetesBackend) -> None:
    deploy(backend, scaled(0, 3, init=1), REV1)
    start_all(fake)
    backend.scale("iris", 0)
    fake.settle()
    fake.finish_terminating()
    assert backend.api_status("iris").status is ApiStatus.SCALED_TO_ZERO
    assert backend.observe("iris") == []


def test_list_apis_reads_every_api_of_the_namespace(fake: FakeKubeApi, backend: KubernetesBackend) -> None:
    deploy(backend, spec(), REV1)
    deploy(backend, spec(BATCH_SPEC), REV2)
    start_all(fake)
    states = backend.list_apis()
    assert [(s.name, s.kind, s.status, s.requested, s.revision) for s in states] == [
        ("iris", ApiKind.REALTIME, ApiStatus.LIVE, 1, REV1),
        ("sums", ApiKind.BATCH, ApiStatus.LIVE, 0, REV2),
    ]
    with pytest.raises(
        NotFoundError, match="API 'nope' is not deployed in namespace 'mp' of context 'prod-eu'"
    ):
        backend.api_status("nope")


def test_ready_endpoints_come_from_the_endpoint_slices_ready_ones_only(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    deploy(backend, scaled(3, 3), REV1)
    fake.settle()
    ready, not_ready, leaving = fake.pod_names(NS)
    fake.start(ready, namespace=NS)
    fake.start(not_ready, namespace=NS, ready=False)
    fake.start(leaving, namespace=NS)
    fake.pod(leaving, namespace=NS)["metadata"]["deletionTimestamp"] = "2026-06-01T00:00:00Z"
    fake.settle()
    ip = fake.pod(ready, namespace=NS)["status"]["podIP"]
    targets = backend.ready_endpoints("iris")
    assert [(t.replica_id, t.address, t.revision) for t in targets] == [
        (ready, Address(host=ip, port=8080), REV1)
    ]
    # A second slice repeating an address, and an endpoint whose readiness is unknown (nil means ready).
    fake.put(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "api-iris-extra",
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": "api-iris"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"name": ready}},
                {"addresses": ["192.0.2.200"], "conditions": {}, "targetRef": {"name": "api-iris-x-9"}},
                {"addresses": ["192.0.2.201"], "conditions": {"ready": False}},
            ],
        }
    )
    addresses = [str(t.address) for t in backend.ready_endpoints("iris")]
    assert addresses == [f"{ip}:8080", "192.0.2.200:8080"]


# Logs -----------------------------------------------------------------------------------------------------


def test_read_logs_gives_each_line_once_across_polls(fake: FakeKubeApi, backend: KubernetesBackend) -> None:
    deploy(backend, scaled(2, 2), REV1)
    fake.settle()
    first, late = fake.pod_names(NS)
    fake.start(first, namespace=NS)
    fake.write_log(first, "loading model")
    fake.write_log(first, "ready")  # the same timestamp as the line before
    batch = backend.read_logs("iris", cursor=None)
    assert [(line.replica, line.line) for line in batch.lines] == [(first, "loading model"), (first, "ready")]
    assert batch.cursor.pods.keys() == {first}  # the other container has not started: no log yet
    fake.clock.advance(0.5)
    fake.write_log(first, "ready")  # a repeated text is a new line
    fake.start(late, namespace=NS)
    fake.write_log(late, "loading model")
    batch = backend.read_logs("iris", cursor=batch.cursor)
    assert [(line.replica, line.line) for line in batch.lines] == [(first, "ready"), (late, "loading model")]
    fake.clock.advance(30)
    assert backend.read_logs("iris", cursor=batch.cursor).lines == ()
    log_reads = [c.target for c in fake.calls if c.method == "pod_log"]
    assert log_reads[0].endswith("since=None tail=1000")  # the first read shows the recent past only
    assert log_reads[-1].endswith("since=32 tail=None")  # 30 s since the last read, plus 2 s of overlap


def test_log_timestamps_with_trimmed_fractions_compare_by_time() -> None:
    assert parse_log_timestamp("2026-01-02T03:04:05.5Z") == parse_log_timestamp(
        "2026-01-02T03:04:05.500000000Z"
    )
    earlier = parse_log_timestamp("2026-01-02T03:04:05.123456789Z")
    later = parse_log_timestamp("2026-01-02T03:04:05.5Z")
    assert earlier is not None and later is not None and earlier < later
    assert parse_log_timestamp("not-a-time") is None
    lines, position = new_log_lines(
        "p", "2026-01-02T03:04:05.5Z b\n2026-01-02T03:04:05.123456789Z a\n", position=None, read_at=0.0
    )
    assert [line.line for line in lines] == ["b"]  # a line older than one already read is not new
    assert position is not None and position.seen_at_last == 1


def test_an_empty_cursor_reads_like_none_but_without_a_tail(
    backend: KubernetesBackend, fake: FakeKubeApi
) -> None:
    deploy(backend, spec(), REV1)
    fake.settle()
    (pod,) = fake.pod_names(NS)
    fake.start(pod, namespace=NS)
    for number in range(1500):
        fake.write_log(pod, f"line {number}")
    assert len(backend.read_logs("iris", cursor=None).lines) == 1000
    assert len(backend.read_logs("iris", cursor=LogCursor()).lines) == 1500


# Errors ---------------------------------------------------------------------------------------------------


APPLY = "apply ConfigMap api-iris-spec-aaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("status", "message", "error", "words"),
    [
        (
            None,
            "127.0.0.1:6443: Connection refused",
            UnavailableError,
            f"cannot reach the Kubernetes API server of context 'prod-eu' to {APPLY}: 127.0.0.1:6443: "
            "Connection refused: check that the cluster is up and that `kubectl --context prod-eu -n mp get "
            "pods` works",
        ),
        (401, "Unauthorized", ModelportError, "refused the credentials of context 'prod-eu'"),
        (
            403,
            'configmaps is forbidden: User "bob" cannot patch',
            ModelportError,
            f"context 'prod-eu' is not allowed to {APPLY} in namespace 'mp': configmaps is forbidden: User "
            '"bob" cannot patch: ask a cluster admin for a Role',
        ),
        (
            409,
            "the object has been modified",
            ConflictError,
            "another client changed it at the same time; run the command again",
        ),
        (
            422,
            "data: Too long",
            UserInputError,
            f"the Kubernetes API server rejected the request to {APPLY}: data: Too long",
        ),
        (503, "etcd unavailable", UnavailableError, "answered 503 ServiceUnavailable to apply ConfigMap"),
    ],
)
def test_api_failures_become_modelport_errors_naming_the_context_namespace_and_fix(
    fake: FakeKubeApi,
    backend: KubernetesBackend,
    status: int | None,
    message: str,
    error: type[ModelportError],
    words: str,
) -> None:
    reason = {503: "ServiceUnavailable"}.get(status or 0, "Failure")
    fake.fail_next("apply", KubeApiError(status=status, reason=reason, message=message))
    with pytest.raises(error) as caught:
        deploy(backend, spec(), REV1)
    assert type(caught.value) is error
    assert words in str(caught.value)
    assert caught.value.retryable == (error is UnavailableError)


def test_deploying_into_a_namespace_that_does_not_exist_says_how_to_fix_it() -> None:
    fake = FakeKubeApi(namespaces=("default",))
    backend = KubernetesBackend(fake, namespace=NS, context=CONTEXT, layout=kube_layout(), clock=fake.clock)
    with pytest.raises(
        NotFoundError, match=r"namespace 'mp' does not exist in context 'prod-eu'.*deploy creates it"
    ):
        deploy(backend, spec(), REV1)
    # Applying the cluster's objects first creates it.
    assert backend.apply_objects(render_cluster(OPTIONS)) == []
    assert deploy(backend, spec(), REV1) is ApplyAction.CREATED


def test_a_context_that_may_not_manage_namespaces_still_deploys_into_an_existing_one(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    fake.fail_next("apply", KubeApiError(status=403, reason="Forbidden", message="namespaces is forbidden"))
    warnings = backend.apply_objects(render_cluster(OPTIONS))
    assert warnings == [
        "context 'prod-eu' may not manage namespaces, so namespace 'mp' was left as it is (it must exist, "
        "with the label pod-security.kubernetes.io/enforce=restricted if you want it enforced)"
    ]
    assert fake.names(Kind.DEPLOYMENT, namespace=NS) == ["modelport-controller"]
    assert "modelport-gateway" in fake.names(Kind.SERVICE, namespace=NS)


def test_the_fake_api_server_is_as_strict_as_a_real_one(
    fake: FakeKubeApi, backend: KubernetesBackend
) -> None:
    """The backend's tests mean something only if the fake refuses what the API server refuses."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}}
    for broken, status in [
        ({k: v for k, v in config_map.items() if k != "apiVersion"}, 400),
        ({k: v for k, v in config_map.items() if k != "kind"}, 400),
        ({**config_map, "metadata": {"namespace": NS}}, 422),
        ({**config_map, "apiVersion": "apps/v1"}, 404),
        ({**config_map, "metadata": {"name": "c", "namespace": "nowhere"}}, 404),
    ]:
        with pytest.raises(KubeApiError) as caught:
            fake.apply(broken)
        assert caught.value.status == status, broken
    with pytest.raises(KubeApiError, match="404 NotFound"):
        fake.patch_scale("api-iris", namespace=NS, replicas=1)
    api = spec()
    deploy(backend, api, REV1)
    config, _, _, deployment = render_api(api, revision=REV1, options=OPTIONS)
    with pytest.raises(KubeApiError, match="field is immutable when `immutable` is set"):
        fake.apply({**config, "data": {"spec.json": "{}"}})
    moved = json.loads(json.dumps(deployment))
    moved["spec"]["selector"]["matchLabels"]["extra"] = "x"
    with pytest.raises(KubeApiError, match="`selector` does not match template `labels`"):
        fake.apply(moved)
    moved["spec"]["template"]["metadata"]["labels"]["extra"] = "x"
    with pytest.raises(KubeApiError, match=r"spec\.selector: Invalid value: field is immutable"):
        fake.apply(moved)


# The official client, where no API server is needed ---------------------------------------------------------


def kubeconfig(tmp_path: Path, *, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "contexts": [{"name": CONTEXT, "context": {"cluster": "c", "user": "u", "namespace": NS}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "current-context": CONTEXT,
            }
        )
    )
    return path


def test_client_refuses_a_context_the_kubeconfig_lacks(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    path = kubeconfig(tmp_path, server="https://127.0.0.1:6443")
    with pytest.raises(UserInputError) as caught:
        ClientKubeApi.connect(context="staging", kubeconfig=path)
    message = str(caught.value)
    assert f"cannot use context 'staging' of the kubeconfig ({path})" in message
    assert "kubectl config get-contexts" in message


def test_client_on_a_closed_port_is_an_unavailable_cluster_named_by_its_context(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    port = free_port()  # nothing listens there: the connection is refused at once
    api = ClientKubeApi.connect(
        context=CONTEXT, kubeconfig=kubeconfig(tmp_path, server=f"http://127.0.0.1:{port}")
    )
    backend = KubernetesBackend(api, namespace=NS, context=CONTEXT, layout=kube_layout())
    with pytest.raises(UnavailableError) as caught:
        backend.api_status("iris")
    message = str(caught.value)
    assert "cannot reach the Kubernetes API server of context 'prod-eu' to list ConfigMap objects" in message
    assert f"http://127.0.0.1:{port}" in message and "refused" in message.lower()


def test_without_the_client_installed_the_backend_imports_and_says_what_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['kubernetes'] = None  # as if not installed\n"
        "import modelport.backends.kubernetes as backend\n"
        "from modelport.errors import UserInputError\n"
        "try:\n"
        "    backend.ClientKubeApi.connect(context='prod')\n"
        "except UserInputError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == (
        "Kubernetes environments need the Kubernetes client: pip install 'modelport[kubernetes]'"
    )
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, modelport.backends.kubernetes; print('kubernetes' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert imported.stdout.strip() == "False"  # imported lazily, only when a client is made


class _LeaseServer(BaseHTTPRequestHandler):
    """Just enough of an API server for the official client: discovery of coordination.k8s.io/v1 and PUT of a
    Lease, 409 unless the body names resourceVersion 7 (what optimistic concurrency asks of the server)."""

    puts: ClassVar[list[tuple[str, Object]]] = []
    _DISCOVERY: ClassVar[dict[str, Object]] = {
        "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
        "/apis": {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": "coordination.k8s.io",
                    "versions": [{"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "coordination.k8s.io/v1", "version": "v1"},
                }
            ],
        },
        "/apis/coordination.k8s.io/v1": {
            "kind": "APIResourceList",
            "groupVersion": "coordination.k8s.io/v1",
            "resources": [
                {
                    "name": "leases",
                    "singularName": "lease",
                    "namespaced": True,
                    "kind": "Lease",
                    "verbs": ["get", "update"],
                }
            ],
        },
    }

    def do_GET(self) -> None:
        found = self._DISCOVERY.get(self.path)
        if found is None:
            self._send(404, {"kind": "Status", "reason": "NotFound", "message": f"{self.path} not found"})
        else:
            self._send(200, found)

    def do_PUT(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.puts.append((self.path, body))
        if body["metadata"].get("resourceVersion") != "7":
            message = 'Operation cannot be fulfilled on leases.coordination.k8s.io "modelport-controller"'
            self._send(409, {"kind": "Status", "status": "Failure", "reason": "Conflict", "message": message})
            return
        self._send(200, {**body, "metadata": {**body["metadata"], "resourceVersion": "8"}})

    def _send(self, status: int, body: Object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_client_replaces_over_the_read_version_and_a_stale_one_is_a_conflict(tmp_path: Path) -> None:
    """ClientKubeApi.replace on a real socket: a PUT to the Lease's path with the body's resourceVersion and
    modelport's field manager; the server's 409 is a KubeApiError the leader election reads as a lost race."""
    pytest.importorskip("kubernetes")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LeaseServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = ClientKubeApi.connect(
            context=CONTEXT, kubeconfig=kubeconfig(tmp_path, server=f"http://127.0.0.1:{server.server_port}")
        )
        lease: Object = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "modelport-controller", "namespace": NS, "resourceVersion": "7"},
            "spec": {"holderIdentity": "controller-0", "leaseDurationSeconds": 15},
        }
        stored = api.replace(lease)
        assert stored["metadata"]["resourceVersion"] == "8"
        path, body = _LeaseServer.puts[-1]
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        assert path == f"{leases}/modelport-controller?fieldManager=modelport"
        assert body == lease
        with pytest.raises(KubeApiError) as caught:
            api.replace({**lease, "metadata": {**lease["metadata"], "resourceVersion": "6"}})
        assert (caught.value.status, caught.value.reason) == (409, "Conflict")
        backend = KubernetesBackend(api, namespace=NS, context=CONTEXT, layout=kube_layout())
        with pytest.raises(ConflictError, match="another client changed it at the same time"):
            backend.replace_lease({**lease, "metadata": {**lease["metadata"], "resourceVersion": "5"}})
    finally:
        server.shutdown()
        server.server_close()
