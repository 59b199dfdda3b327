"""Unit tests of manifests: every rendered object passes Kubernetes' own schemas (strict, three versions), and
the semantics that matter (resources, probes, rollout, RBAC, labels) hold; plus `modelport render kubernetes`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from click.testing import CliRunner

from modelport.cli.main import cli
from modelport.cli.render import render
from modelport.errors import UserInputError
from modelport.manifests.kubernetes import (
    GATEWAY_SERVICE_TYPES,
    GENERATED_HEADER,
    RenderOptions,
    render_api,
    render_cluster,
    render_job,
    render_project,
    to_yaml,
    write_manifests,
)
from modelport.runtime.options import parse_args, parse_worker_args
from modelport.spec.errors import SpecError
from modelport.spec.load import load_project, parse_apis
from modelport.spec.model import ApiSpec
from modelport.types import ApiKind
from tests.support import IRIS_SPEC, write_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Every example project, and the second spec file of bench-m2.
EXAMPLE_PROJECTS = [
    *sorted(path.parent for path in EXAMPLES.glob("*/modelport.yaml")),
    EXAMPLES / "bench-m2" / "batch.yaml",
]
KUBERNETES_VERSIONS = ["1.25.0", "1.30.0", "1.37.0"]
IMAGE = "registry.example.com/team/iris:1.0"
OPTIONS = RenderOptions(image=IMAGE)
REVISION = "0123456789ab"
JOB_ID = "69b183ed6bdf3e9b"
KIND_VARIANTS = """\
- name: gpu-api
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py, env: {MODEL: big, PRICE: "$(HOME) costs $5", THREADS: 4}}
  compute: {cpu: 1.5, gpu: 2, mem: 4Gi}
  update_strategy: {max_surge: 1, max_unavailable: 0}
- name: inf-api
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
  compute: {cpu: 3, inf: 1, mem: 512Mi}
  autoscaling: {min_replicas: 3, max_replicas: 9}
  update_strategy: {max_surge: 50%, max_unavailable: 2}
- name: zero
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
  compute: {cpu: 0.0001}
  autoscaling: {min_replicas: 0}
"""


def variants() -> dict[str, ApiSpec]:
    specs = {spec.name: spec for spec in parse_apis(KIND_VARIANTS, file="modelport.yaml")}
    iris = parse_apis(IRIS_SPEC, file="modelport.yaml")[0]
    # Async, batch and task specs: realtime ones of another kind (the spec's own tests cover those kinds).
    specs["async-api"] = iris.model_copy(update={"name": "async-api", "kind": ApiKind.ASYNC})
    specs["batch-api"] = specs["gpu-api"].model_copy(update={"name": "batch-api", "kind": ApiKind.BATCH})
    specs["task-api"] = iris.model_copy(update={"name": "task-api", "kind": ApiKind.TASK})
    return specs


SPECS = variants()


def find(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def every_object() -> Iterator[dict[str, Any]]:
    for path in EXAMPLE_PROJECTS:
        project = load_project(path)
        yield from render_project(project, OPTIONS)
        for spec in project.apis:
            if spec.kind in (ApiKind.BATCH, ApiKind.TASK):
                revision = project.revision(spec.name)
                yield render_job(spec, job_id=JOB_ID, workers=3, revision=revision, options=OPTIONS)
    other = RenderOptions(
        namespace="ml-prod",
        image="localhost:5000/iris@sha256:" + "a" * 64,
        gateway_service_type="NodePort",
        controller_image="ghcr.io/acme/modelport:0.1.0",
        storage_class="fast-ssd",
        storage_size="10Gi",
    )
    yield from render_cluster(other)
    for spec in SPECS.values():
        yield from render_api(spec, revision=REVISION, options=other)
    yield render_job(SPECS["batch-api"], job_id=JOB_ID, workers=8, revision=REVISION, options=OPTIONS)
    yield render_job(
        SPECS["task-api"], job_id="t1", workers=1, revision=REVISION, options=other, timeout_seconds=90.5
    )


@functools.cache
def all_objects() -> tuple[dict[str, Any], ...]:
    return tuple(every_object())


def distinct_objects() -> list[dict[str, Any]]:
    """Each example renders the same cluster objects: validate each distinct one once (~10 ms each)."""
    return list({json.dumps(obj, sort_keys=True): obj for obj in all_objects()}.values())


# --- schemas ------------------------------------------------------------------------------------------


def test_the_examples_are_all_rendered() -> None:
    names = {path.name for path in EXAMPLE_PROJECTS}
    assert {"iris-classifier", "sleep", "bench-m1", "bench-m2", "batch.yaml"} <= names
    rendered = {obj["metadata"]["name"] for obj in all_objects() if obj["kind"] == "Deployment"}
    expected = {"iris-classifier", "sleep", "bench-m1", "bench-m2", "bench-m2-batch"}
    assert {f"api-{name}" for name in expected} <= rendered


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_the_strict_schemas(version: str) -> None:
    failures = []
    for obj in distinct_objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    assert failures == []
    kinds = {obj["kind"] for obj in all_objects()}
    assert kinds == {
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "Lease", "PersistentVolumeClaim", "Deployment",
        "Service", "PodDisruptionBudget", "ConfigMap", "Job",
    }  # fmt: skip


def test_the_strict_schemas_catch_a_mistake() -> None:
    """The check above can fail: an unknown field and a wrong type are refused."""
    deployment = json.loads(json.dumps(find(all_objects(), "Deployment", "api-iris-classifier")))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)
    del deployment["spec"]["replica"]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)


# --- the cluster's objects ----------------------------------------------------------------------------


def test_cluster_objects_come_first_in_apply_order() -> None:
    objects = render_cluster(OPTIONS)
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in objects] == [
        ("Namespace", "modelport"),
        ("ServiceAccount", "modelport-controller"),
        ("Role", "modelport-controller"),
        ("RoleBinding", "modelport-controller"),
        ("Lease", "modelport-controller"),
        ("PersistentVolumeClaim", "modelport-controller-state"),
        ("Deployment", "modelport-controller"),
        ("Service", "modelport-controller"),
        ("Service", "modelport-gateway"),
    ]
    assert all(obj["metadata"]["namespace"] == "modelport" for obj in objects[1:])
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_controller_rbac_is_minimal_and_has_no_wildcards() -> None:
    role = find(render_cluster(OPTIONS), "Role", "modelport-controller")
    granted = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    manage = ["create", "delete", "get", "list", "patch", "update", "watch"]
    assert granted == {
        ("apps", "deployments"): manage,
        ("apps", "deployments/scale"): ["get", "patch", "update"],
        ("", "services"): manage,
        ("", "configmaps"): manage,
        ("policy", "poddisruptionbudgets"): manage,
        ("batch", "jobs"): manage,
        ("", "pods"): ["get", "list", "watch"],
        ("", "pods/log"): ["get"],
        ("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"],
        ("coordination.k8s.io", "leases"): ["get", "update"],
    }
    text = json.dumps(role["rules"])
    assert "*" not in text and "secrets" not in text and "escalate" not in text
    lease_rule = next(rule for rule in role["rules"] if rule["resources"] == ["leases"])
    assert lease_rule["resourceNames"] == ["modelport-controller"]
    binding = find(render_cluster(OPTIONS), "RoleBinding", "modelport-controller")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modelport-controller", "namespace": "modelport"}
    ]


def test_controller_runs_once_on_its_state_volume_with_a_lease() -> None:
    objects = render_cluster(OPTIONS)
    deployment = find(objects, "Deployment", "modelport-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modelport-controller"
    main = container(deployment)
    assert main["image"] == IMAGE
    assert main["command"] == [
        "modelport", "cluster", "run", "--backend", "kubernetes", "--namespace", "modelport",
        "--identity", "$(POD_NAME)",
    ]  # fmt: skip
    env = {item["name"]: item.get("value") for item in main["env"]}
    assert env["MODELPORT_HOME"] == "/var/lib/modelport"
    assert (env["MODELPORT_CONTROL_PORT"], env["MODELPORT_GATEWAY_PORT"]) == ("8889", "8888")
    pod_name = next(item for item in main["env"] if item["name"] == "POD_NAME")  # $(POD_NAME) expands
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {"name": "state", "mountPath": "/var/lib/modelport"} in main["volumeMounts"]
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "modelport-controller-state"}} in pod[
        "volumes"
    ]
    # Ready only while it leads (a standby gets no traffic); alive as long as it answers.
    assert main["readinessProbe"]["httpGet"] == {"path": "/v1/ready", "port": "control", "scheme": "HTTP"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v1/health", "port": "control", "scheme": "HTTP"}
    assert main["ports"] == [
        {"name": "control", "containerPort": 8889, "protocol": "TCP"},
        {"name": "http", "containerPort": 8888, "protocol": "TCP"},
    ]
    assert "sleep" in " ".join(main["lifecycle"]["preStop"]["exec"]["command"])
    claim = find(objects, "PersistentVolumeClaim", "modelport-controller-state")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]
    lease = find(objects, "Lease", "modelport-controller")
    assert lease["apiVersion"] == "coordination.k8s.io/v1"
    control = find(objects, "Service", "modelport-controller")
    assert control["spec"]["type"] == "ClusterIP"
    assert control["spec"]["ports"] == [
        {"name": "control", "port": 8889, "targetPort": "control", "protocol": "TCP"}
    ]


def test_the_gateway_service_of_the_chosen_type_leads_to_the_controller_pod() -> None:
    """The controller's pod serves the gateway (the autoscaler reads its in-flight counts in memory)."""
    options = RenderOptions(image=IMAGE, gateway_service_type="NodePort", controller_image="ghcr.io/a/mp:1")
    objects = render_cluster(options)
    assert [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Deployment"] == [
        "modelport-controller"
    ]
    assert not [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]  # one pod: drains go on
    deployment = find(objects, "Deployment", "modelport-controller")
    assert container(deployment)["image"] == "ghcr.io/a/mp:1"
    service = find(objects, "Service", "modelport-gateway")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "http" in {port["name"] for port in container(deployment)["ports"]}
    control = find(objects, "Service", "modelport-controller")
    assert control["spec"]["selector"] == service["spec"]["selector"]
    assert find(render_cluster(OPTIONS), "Service", "modelport-gateway")["spec"]["type"] == "LoadBalancer"


def test_every_pod_runs_as_non_root_without_privileges() -> None:
    workloads = [obj for obj in all_objects() if obj["kind"] in ("Deployment", "Job")]
    assert len(workloads) > 10
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        context = container(workload)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        system = workload["metadata"]["name"] in ("modelport-controller", "modelport-gateway")
        assert context["readOnlyRootFilesystem"] is system  # user predictors may write caches
        assert pod["automountServiceAccountToken"] is (workload["metadata"]["name"] == "modelport-controller")


def rendered_commands() -> list[tuple[str, list[str], set[str]]]:
    """(workload, command, env variable names) of every container of every rendered workload."""
    found = []
    for obj in all_objects():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for item in obj["spec"]["template"]["spec"]["containers"]:
            names = {env["name"] for env in item.get("env", [])}
            found.append((f"{obj['kind']}/{obj['metadata']['name']}", list(item["command"]), names))
    return found


# The hidden commands that hand their arguments to the runtime's own parser, and that parser.
PASS_THROUGH = {"replica": parse_args, "worker": parse_worker_args}


def test_every_rendered_command_exists_with_its_flags() -> None:
    """What each pod runs is a modelport command that exists, with flags it takes: the click command's own
    parser, or the runtime parser a pass-through command (`replica`, `worker`) hands its arguments to."""
    ran: set[tuple[str, ...]] = set()
    for workload, command, env in rendered_commands():
        prefix = 3 if command[:3] == ["python", "-m", "modelport"] else 1
        assert command[:prefix] in (["modelport"], ["python", "-m", "modelport"]), workload
        for variable in re.findall(r"\$\((\w+)\)", " ".join(command)):
            assert variable in env, f"{workload}: $({variable}) is not set in the container"
        words = command[prefix:]
        group: click.Command = cli
        path: list[str] = []
        while isinstance(group, click.Group) and words and words[0] in group.commands:
            group = group.commands[words[0]]
            path.append(words.pop(0))
        assert path, f"{workload}: {command} names no modelport command"
        ran.add(tuple(path))
        if path[-1] in PASS_THROUGH:
            assert group.context_settings.get("ignore_unknown_options"), workload
            PASS_THROUGH[path[-1]](words)  # exits 2 on a flag it does not take
        else:
            group.make_context(" ".join(path), list(words))  # click refuses unknown flags and bad choices
    assert ran == {("cluster", "run"), ("replica",), ("worker",)}


def test_the_command_check_catches_a_flag_that_does_not_exist() -> None:
    with pytest.raises(click.NoSuchOption):
        cli.commands["cluster"].commands["run"].make_context(  # type: ignore[attr-defined]
            "cluster run", ["--backend", "kubernetes", "--namespaces", "x"]
        )
    with pytest.raises(SystemExit):
        parse_worker_args(["--project-dir", "/app", "--spec", "s", "--job", "j"])


# --- an API's objects ---------------------------------------------------------------------------------


def test_realtime_api_objects_and_labels() -> None:
    project = load_project(EXAMPLES / "iris-classifier")
    revision = project.revision("iris-classifier")
    objects = render_api(project.apis[0], revision=revision, options=OPTIONS)
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in objects] == [
        ("ConfigMap", f"api-iris-classifier-spec-{revision}"),
        ("Service", "api-iris-classifier"),
        ("PodDisruptionBudget", "api-iris-classifier"),
        ("Deployment", "api-iris-classifier"),
    ]
    expected_labels = {
        "app.kubernetes.io/name": "iris-classifier",
        "app.kubernetes.io/instance": "iris-classifier",
        "app.kubernetes.io/component": "api",
        "app.kubernetes.io/part-of": "modelport",
        "app.kubernetes.io/managed-by": "modelport",
        "app.kubernetes.io/version": revision[:12],
        "modelport.dev/api": "iris-classifier",
        "modelport.dev/kind": "RealtimeAPI",
    }
    for obj in objects:
        assert obj["metadata"]["labels"] == expected_labels
        assert obj["metadata"]["annotations"]["modelport.dev/revision"] == revision
    config_map, service, budget, deployment = objects
    # The controller starts a job's workers from the image recorded with the spec.
    assert config_map["metadata"]["annotations"]["modelport.dev/image"] == IMAGE
    assert deployment["metadata"]["annotations"] == {"modelport.dev/revision": revision}
    assert json.loads(config_map["data"]["spec.json"]) == json.loads(project.apis[0].model_dump_json())
    assert ApiSpec.model_validate_json(config_map["data"]["spec.json"]) == project.apis[0]
    assert config_map["immutable"] is True
    selector = {"modelport.dev/api": "iris-classifier", "app.kubernetes.io/component": "api"}
    assert deployment["spec"]["selector"] == {"matchLabels": selector}
    assert deployment["spec"]["template"]["metadata"]["labels"] == expected_labels
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == selector
    assert budget["spec"]["selector"] == {"matchLabels": selector}
    assert deployment["spec"]["replicas"] == 2  # init_replicas = min_replicas
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert {"name": "spec", "mountPath": "/etc/modelport", "readOnly": True} in container(deployment)[
        "volumeMounts"
    ]


def test_replica_container_command_probes_and_shutdown() -> None:
    deployment = find(
        render_api(SPECS["gpu-api"], revision=REVISION, options=OPTIONS), "Deployment", "api-gpu-api"
    )
    replica = container(deployment)
    assert replica["image"] == IMAGE
    assert replica["command"] == [
        "python", "-m", "modelport", "replica", "--project-dir", "/app", "--spec", "/etc/modelport/spec.json",
        "--host", "0.0.0.0", "--port", "8080", "--replica-id", "$(POD_NAME)", "--grace", "25",
    ]  # fmt: skip
    assert replica["env"][0] == {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
    }
    assert replica["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    assert replica["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert replica["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert "sleep" in " ".join(replica["lifecycle"]["preStop"]["exec"]["command"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25 + 5


def test_predictor_env_is_passed_literally() -> None:
    replica = container(
        find(render_api(SPECS["gpu-api"], revision=REVISION, options=OPTIONS), "Deployment", "api-gpu-api")
    )
    env = {item["name"]: item.get("value") for item in replica["env"]}
    assert env["MODEL"] == "big"
    assert env["THREADS"] == "4"
    assert env["PRICE"] == "$$(HOME) costs $$5"  # Kubernetes turns $$ back into $ and expands nothing


def test_resources_requests_and_limits() -> None:
    def resources(name: str) -> dict[str, Any]:
        objects = render_api(SPECS[name], revision=REVISION, options=OPTIONS)
        found: dict[str, Any] = container(find(objects, "Deployment", f"api-{name}"))["resources"]
        return found

    assert resources("gpu-api") == {
        "requests": {"cpu": "1500m", "memory": "4Gi"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "2"},
    }
    assert resources("inf-api") == {
        "requests": {"cpu": "3", "memory": "512Mi"},
        "limits": {"memory": "512Mi", "aws.amazon.com/neuron": "1"},
    }
    assert resources("zero") == {"requests": {"cpu": "1m"}}  # rounded up to the API's precision
    iris = load_project(EXAMPLES / "iris-classifier")
    deployment = find(render_project(iris, OPTIONS), "Deployment", "api-iris-classifier")
    assert container(deployment)["resources"] == {"requests": {"cpu": "200m"}}


def test_accelerator_scheduling_only_when_asked() -> None:
    def pod(name: str, options: RenderOptions = OPTIONS) -> dict[str, Any]:
        objects = render_api(SPECS[name], revision=REVISION, options=options)
        found: dict[str, Any] = find(objects, "Deployment", f"api-{name}")["spec"]["template"]["spec"]
        return found

    gpu = pod("gpu-api")
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu": "true"}
    inf = pod("inf-api")
    assert inf["tolerations"] == [
        {"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert inf["nodeSelector"] == {"aws.amazon.com/neuron": "true"}
    plain = pod("zero")
    assert "tolerations" not in plain and "nodeSelector" not in plain
    assert "nvidia.com/gpu" not in json.dumps(plain)
    custom = pod("gpu-api", RenderOptions(image=IMAGE, gpu_node_selector={"nvidia.com/gpu.present": "true"}))
    assert custom["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nodeSelector" not in pod("gpu-api", RenderOptions(image=IMAGE, gpu_node_selector={}))


@pytest.mark.parametrize(
    ("name", "surge", "unavailable", "budget", "replicas"),
    [
        ("gpu-api", 1, 0, 1, 1),  # surge only: the PDB still lets a drain take one replica
        ("inf-api", "50%", 2, 2, 3),
        ("async-api", "25%", "25%", "25%", 1),
        ("zero", "25%", "25%", "25%", 0),
    ],
)
def test_rolling_update_and_disruption_budget(
    name: str, surge: int | str, unavailable: int | str, budget: int | str, replicas: int
) -> None:
    objects = render_api(SPECS[name], revision=REVISION, options=OPTIONS)
    deployment = find(objects, "Deployment", f"api-{name}")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
    }
    assert deployment["spec"]["replicas"] == replicas
    assert find(objects, "PodDisruptionBudget", f"api-{name}")["spec"]["maxUnavailable"] == budget


def test_async_api_is_served_like_a_realtime_one() -> None:
    objects = render_api(SPECS["async-api"], revision=REVISION, options=OPTIONS)
    assert [obj["kind"] for obj in objects] == ["ConfigMap", "Service", "PodDisruptionBudget", "Deployment"]
    assert objects[-1]["metadata"]["labels"]["modelport.dev/kind"] == "AsyncAPI"
    # Its replicas consume the queue from the controller's Service.
    command = container(objects[-1])["command"]
    assert command[-2:] == ["--control-url", "http://modelport-controller.modelport.svc:8889"]


@pytest.mark.parametrize("name", ["batch-api", "task-api"])
def test_batch_and_task_apis_render_only_their_spec(name: str) -> None:
    objects = render_api(SPECS[name], revision=REVISION, options=OPTIONS)
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in objects] == [
        ("ConfigMap", f"api-{name}-spec-{REVISION}")
    ]


# --- jobs ---------------------------------------------------------------------------------------------


def test_job_is_a_pool_of_workers() -> None:
    job = render_job(
        SPECS["batch-api"],
        job_id=JOB_ID,
        workers=8,
        revision=REVISION,
        options=OPTIONS,
        timeout_seconds=3600.2,
    )
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"]["name"] == f"batch-api-{JOB_ID}"
    spec = job["spec"]
    assert spec["parallelism"] == 8
    assert "completions" not in spec
    assert spec["activeDeadlineSeconds"] == 3601
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["backoffLimit"] >= 8
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    worker = container(job)
    assert worker["command"] == [
        "python", "-m", "modelport", "worker", "--project-dir", "/app", "--spec", "/etc/modelport/spec.json",
        "--job-id", JOB_ID, "--worker-id", "$(POD_NAME)",
        "--control-url", "http://modelport-controller.modelport.svc:8889",
    ]  # fmt: skip
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["volumes"][0]["configMap"]["name"] == f"api-batch-api-spec-{REVISION}"
    labels = spec["template"]["metadata"]["labels"]
    assert labels["modelport.dev/job-id"] == JOB_ID
    assert labels["app.kubernetes.io/component"] == "worker"  # never selected by an API's Service
    no_timeout = render_job(SPECS["task-api"], job_id="t1", workers=1, revision=REVISION, options=OPTIONS)
    assert "activeDeadlineSeconds" not in no_timeout["spec"]
    assert no_timeout["spec"]["backoffLimit"] == 0  # a task runs once: its Job never starts a second pod


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"job_id": "Bad_Id"}, "job_id 'Bad_Id'"),
        ({"job_id": "x" * 60}, "at most 53 characters for API 'batch-api'"),
        ({"workers": 0}, "workers: expected a whole number >= 1"),
        ({"timeout_seconds": 0.0}, "timeout: expected a number of seconds > 0"),
        ({"spec": "gpu-api"}, "only BatchAPI and TaskAPI APIs run jobs"),
    ],
)
def test_bad_job_values_are_refused(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "spec": "batch-api", "job_id": JOB_ID, "workers": 2, "timeout_seconds": None, **changes,
    }  # fmt: skip
    with pytest.raises(UserInputError, match=message):
        render_job(
            SPECS[arguments["spec"]],
            job_id=arguments["job_id"],
            workers=arguments["workers"],
            revision=REVISION,
            options=OPTIONS,
            timeout_seconds=arguments["timeout_seconds"],
        )


# --- what Kubernetes would refuse is refused first ----------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"namespace": "ML_Prod"}, "namespace: invalid name 'ML_Prod'"),
        ({"namespace": "n" * 64}, "namespace: must be at most 63 characters"),
        ({"image": "Registry.example.com/Team/Iris:1.0"}, "image: invalid image reference"),
        ({"image": ""}, "image: invalid image reference"),
        ({"image": "iris:1.0 --privileged"}, "image: invalid image reference"),
        ({"controller_image": "a//b"}, "controller_image: invalid image reference"),
        ({"storage_size": "lots"}, "storage_size: expected a storage size like 1Gi"),
        ({"storage_size": "0"}, "storage_size: must be more than 0 bytes"),
        ({"storage_class": "Fast SSD"}, "storage_class: invalid name"),
        ({"gateway_service_type": "Ingress"}, "gateway_service_type: expected one of LoadBalancer"),
        ({"gpu_node_selector": {"bad key!": "x"}}, "gpu_node_selector: invalid label key"),
        ({"inf_node_selector": {"k": "-bad"}}, "inf_node_selector: invalid label value"),
        ({"job_ttl_seconds": -1}, "job_ttl_seconds: must be >= 0"),
    ],
)
def test_invalid_options_are_refused_with_the_field(changes: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"image": IMAGE, **changes}
    with pytest.raises(UserInputError) as caught:
        RenderOptions(**arguments)
    assert field in str(caught.value)


def test_every_problem_of_the_options_is_reported_at_once() -> None:
    with pytest.raises(UserInputError) as caught:
        RenderOptions(namespace="Bad", image="UPPER", storage_size="x")
    assert [line.split(":")[0] for line in str(caught.value).splitlines()] == [
        "namespace",
        "image",
        "storage_size",
    ]


@pytest.mark.parametrize(
    "image",
    [
        "iris",
        "iris:1.0",
        "library/iris",
        "localhost:5000/iris:dev",
        "registry.example.com:443/team/sub/iris_model-x:v1.2.3",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/iris@sha256:" + "0" * 64,
        "[::1]:5000/iris:1",
    ],
)
def test_valid_image_references_are_accepted(image: str) -> None:
    assert RenderOptions(image=image).image == image


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ("{cpu: -1}", "[0].compute.cpu: must be > 0"),
        ("{gpu: -2}", "[0].compute.gpu: must be >= 0"),
        ("{mem: lots}", "[0].compute.mem: expected a memory amount"),
    ],
)
def test_a_bad_spec_is_refused_before_any_manifest(tmp_path: Path, compute: str, message: str) -> None:
    write_files(tmp_path, {"modelport.yaml": IRIS_SPEC + f"  compute: {compute}\n", "predictor.py": ""})
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render_project(load_project(tmp_path), OPTIONS)


def test_a_bad_api_name_is_refused(tmp_path: Path) -> None:
    write_files(
        tmp_path, {"modelport.yaml": IRIS_SPEC.replace("name: iris", "name: Iris_API"), "predictor.py": ""}
    )
    with pytest.raises(SpecError, match=r"\[0\]\.name: invalid name 'Iris_API'"):
        load_project(tmp_path)


def test_spec_values_kubernetes_would_refuse() -> None:
    iris = parse_apis(IRIS_SPEC, file="modelport.yaml")[0]
    clash = iris.model_copy(
        update={"predictor": iris.predictor.model_copy(update={"env": {"POD_NAME": "x"}})}
    )
    with pytest.raises(UserInputError, match=r"predictor\.env\.POD_NAME: modelport sets POD_NAME"):
        render_api(clash, revision=REVISION, options=OPTIONS)
    huge = iris.model_copy(
        update={"predictor": iris.predictor.model_copy(update={"config": {"w": "x" * 2**20}})}
    )
    with pytest.raises(UserInputError, match="over Kubernetes' ConfigMap limit"):
        render_api(huge, revision=REVISION, options=OPTIONS)
    with pytest.raises(UserInputError, match="revision 'NOT-HEX'"):
        render_api(iris, revision="NOT-HEX", options=OPTIONS)


# --- YAML and files -----------------------------------------------------------------------------------


def test_yaml_round_trips_in_a_stable_order() -> None:
    objects = render_project(load_project(EXAMPLES / "sleep"), OPTIONS)
    text = to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert text.startswith("---\napiVersion: v1\nkind: Namespace\n")
    assert text.count("\n---\n") == len(objects) - 1
    assert text == to_yaml(render_project(load_project(EXAMPLES / "sleep"), OPTIONS))


def test_write_manifests_one_file_per_object_and_stale_files_go(tmp_path: Path) -> None:
    objects = render_project(load_project(EXAMPLES / "iris-classifier"), OPTIONS)
    out = tmp_path / "k8s"
    paths = write_manifests(objects, out)
    assert [path.name for path in paths][:2] == [
        "01-namespace-modelport.yaml",
        "02-serviceaccount-modelport-controller.yaml",
    ]
    assert paths[-1].name == "13-deployment-api-iris-classifier.yaml"
    assert sorted(out.iterdir()) == paths  # file order is apply order
    for path, obj in zip(paths, objects, strict=True):
        text = path.read_text()
        assert text.startswith(GENERATED_HEADER)
        assert list(yaml.safe_load_all(text)) == [obj]
    (out / "kustomization.yaml").write_text("resources: []\n")
    (out / "99-configmap-mine.yaml").write_text("apiVersion: v1\n")  # the user's, not ours
    cluster_only = write_manifests(render_cluster(OPTIONS), out)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [path.name for path in cluster_only] + ["kustomization.yaml", "99-configmap-mine.yaml"]
    )


# --- the command --------------------------------------------------------------------------------------


def test_render_command_prints_the_objects() -> None:
    project = EXAMPLES / "iris-classifier"
    result = CliRunner().invoke(render, ["kubernetes", str(project), "--image", IMAGE, "--namespace", "ml"])
    assert result.exit_code == 0, result.output
    expected = render_project(load_project(project), RenderOptions(image=IMAGE, namespace="ml"))
    assert list(yaml.safe_load_all(result.stdout)) == expected


def test_render_command_json_and_options() -> None:
    result = CliRunner().invoke(
        render,
        [
            "kubernetes", str(EXAMPLES / "sleep"), "--image", IMAGE, "-o", "json",
            "--gateway-service-type", "ClusterIP", "--storage-class", "gp3", "--controller-image", "mp:2",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["kind"] == "List"
    assert find(listed["items"], "Service", "modelport-gateway")["spec"]["type"] == "ClusterIP"
    claim = find(listed["items"], "PersistentVolumeClaim", "modelport-controller-state")
    assert claim["spec"]["storageClassName"] == "gp3"
    assert container(find(listed["items"], "Deployment", "modelport-controller"))["image"] == "mp:2"


def test_render_command_choices_match_the_options() -> None:
    assert isinstance(render, click.Group)
    option = next(
        param for param in render.commands["kubernetes"].params if param.name == "gateway_service_type"
    )
    assert isinstance(option.type, click.Choice)
    assert tuple(option.type.choices) == GATEWAY_SERVICE_TYPES


def test_render_command_writes_files(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(
        render, ["kubernetes", str(EXAMPLES / "sleep"), "--image", IMAGE, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    printed = result.stdout.splitlines()
    assert printed == [str(path) for path in sorted(out.iterdir())]
    assert len(printed) == len(render_project(load_project(EXAMPLES / "sleep"), OPTIONS))


def test_render_command_bad_spec_exits_2_with_the_message(tmp_path: Path) -> None:
    write_files(tmp_path, {"modelport.yaml": IRIS_SPEC + "  compute: {cpu: -1}\n", "predictor.py": ""})
    result = CliRunner().invoke(render, ["kubernetes", str(tmp_path), "--image", IMAGE])
    assert result.exit_code == 2
    assert "modelport.yaml: [0].compute.cpu: must be > 0" in result.stderr
    assert result.stdout == ""


def test_render_command_bad_option_exits_2_with_the_field() -> None:
    result = CliRunner().invoke(render, ["kubernetes", str(EXAMPLES / "sleep"), "--image", "Not An Image"])
    assert result.exit_code == 2
    assert "image: invalid image reference 'Not An Image'" in result.stderr
    missing = CliRunner().invoke(render, ["kubernetes", str(EXAMPLES / "sleep")])
    assert missing.exit_code == 2
    assert "--image" in missing.stderr
