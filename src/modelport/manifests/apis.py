"""The objects of one API: its spec ConfigMap and, for realtime and async APIs, replicas behind a headless
Service with a PodDisruptionBudget; for batch and task APIs, one Job per submitted job.

Called by manifests.kubernetes.render_project for a whole project, and per API or job by the Kubernetes
backend.
"""

from __future__ import annotations

import math

from modelport.errors import UserInputError
from modelport.manifests.layout import (
    ALIVE_PATH,
    API_LABEL,
    COMPONENT_LABEL,
    GRACE_MARGIN_SECONDS,
    IMAGE_ANNOTATION,
    INSTANCE_LABEL,
    JOB_ID_LABEL,
    KIND_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    PART_OF_LABEL,
    PRESTOP_SLEEP_SECONDS,
    PROJECT_DIR,
    READY_PATH,
    REPLICA_GRACE_SECONDS,
    REPLICA_PORT,
    REVISION_ANNOTATION,
    SPEC_DIR,
    SPEC_KEY,
    SPEC_PATH,
    VERSION_LABEL,
    Component,
    api_object_name,
    job_name,
    spec_config_map_name,
)
from modelport.manifests.options import DNS_1123_LABEL, MAX_LABEL_LENGTH, RenderOptions
from modelport.manifests.pods import (
    Object,
    container_security_context,
    field_env,
    http_probe,
    metadata,
    pod_security_context,
    resources,
    scheduling,
    sleep_hook,
    spread_over_nodes,
    user_env,
)
from modelport.spec.model import ApiSpec
from modelport.types import ApiKind

SERVED_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})  # long-running replicas behind the gateway
JOB_KINDS = frozenset({ApiKind.BATCH, ApiKind.TASK})  # pods only while a job runs
MAX_CONFIG_MAP_BYTES = 1024 * 1024  # the API server refuses larger ConfigMap data
MIN_JOB_BACKOFF_LIMIT = 6  # Kubernetes' default; a job also tolerates two crashes per worker
JOB_GRACE_SECONDS = 30
REVISION_HISTORY_LIMIT = 3


def render_api(spec: ApiSpec, *, revision: str, options: RenderOptions) -> list[Object]:
    """Every object an API needs between jobs, in apply order (spec first: the pods mount it).

    RealtimeAPI, AsyncAPI: ConfigMap, headless Service, PodDisruptionBudget, Deployment. BatchAPI, TaskAPI:
    the ConfigMap only (`render_job` makes each job's pods). TrafficSplitter: nothing (the gateway routes it).

    The Deployment's replicas is the starting count (init_replicas): the controller scales through
    deployments/scale afterwards, so applying it again resets the count until the autoscaler's next decision.
    The ConfigMap is named after the revision and immutable: whoever applies a new revision deletes the API's
    older spec ConfigMaps (label modelport.dev/api) once the rollout is done.
    """
    _check_revision(revision)
    if spec.kind == ApiKind.TRAFFIC_SPLITTER:
        return []
    objects = [_spec_config_map(spec, revision=revision, options=options)]
    if spec.kind in SERVED_KINDS:
        objects += [
            _headless_service(spec, revision=revision, options=options),
            _disruption_budget(spec, revision=revision, options=options),
            _deployment(spec, revision=revision, options=options),
        ]
    return objects


def render_job(
    spec: ApiSpec,
    *,
    job_id: str,
    workers: int,
    revision: str,
    options: RenderOptions,
    timeout_seconds: float | None = None,
) -> Object:
    """A batch/v1 Job of `workers` pods pulling work from the controller (a work queue: no completions).

    The Job succeeds once a worker exits 0 with the others done; `timeout_seconds` bounds its whole run.
    A batch job's failed workers are replaced (the controller ends the job sooner when they keep failing); a
    task runs once, so its Job never starts a second pod.
    """
    _check_revision(revision)
    if spec.kind not in JOB_KINDS:
        raise UserInputError(
            f"API {spec.name!r} is a {spec.kind}: only {' and '.join(sorted(JOB_KINDS))} APIs run jobs"
        )
    name = job_name(spec.name, job_id)
    if not DNS_1123_LABEL.fullmatch(job_id) or len(name) > MAX_LABEL_LENGTH:
        raise UserInputError(
            f"job_id {job_id!r}: expected lowercase letters, digits and '-', starting and ending with a "
            f"letter or digit, and at most {MAX_LABEL_LENGTH - len(spec.name) - 1} characters for API "
            f"{spec.name!r} (the Job is named '<api>-<job_id>', at most {MAX_LABEL_LENGTH})"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserInputError(f"workers: expected a whole number >= 1, got {workers!r}")
    labels = {**_labels(spec, revision=revision, component=Component.WORKER), JOB_ID_LABEL: job_id}
    container: Object = {
        "name": "worker",
        "image": options.image,
        "command": [
            "python",
            "-m",
            "modelport",
            "worker",
            "--project-dir",
            PROJECT_DIR,
            "--spec",
            SPEC_PATH,
            "--job-id",
            job_id,
            "--worker-id",
            "$(POD_NAME)",
            "--control-url",
            options.control_url,
        ],
        "env": _env(spec),
        "resources": resources(spec.compute),
        "securityContext": container_security_context(read_only_root=False),
        "volumeMounts": [_spec_mount()],
    }
    job_spec: Object = {
        "parallelism": workers,
        "backoffLimit": 0 if spec.kind == ApiKind.TASK else max(MIN_JOB_BACKOFF_LIMIT, 2 * workers),
        "ttlSecondsAfterFinished": options.job_ttl_seconds,
    }
    if timeout_seconds is not None:
        if not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
            raise UserInputError(f"timeout: expected a number of seconds > 0, got {timeout_seconds!r}")
        job_spec["activeDeadlineSeconds"] = math.ceil(timeout_seconds)
    job_spec["template"] = {
        "metadata": {"labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
        "spec": {
            **_pod_basics(spec, options=options),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": JOB_GRACE_SECONDS,
            "containers": [container],
            "volumes": [_spec_volume(spec, revision=revision)],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            name, namespace=options.namespace, labels=labels, annotations={REVISION_ANNOTATION: revision}
        ),
        "spec": job_spec,
    }


def selector(spec: ApiSpec) -> dict[str, str]:
    """What the Deployment, the headless Service and the PDB select: the API's replicas, never its workers."""
    return {API_LABEL: spec.name, COMPONENT_LABEL: Component.API.value}


def _labels(spec: ApiSpec, *, revision: str, component: Component) -> dict[str, str]:
    return {
        NAME_LABEL: spec.name,
        INSTANCE_LABEL: spec.name,
        COMPONENT_LABEL: component.value,
        PART_OF_LABEL: "modelport",
        MANAGED_BY_LABEL: "modelport",
        VERSION_LABEL: revision[:12],
        API_LABEL: spec.name,
        KIND_LABEL: spec.kind.value,
    }


def _meta(name: str, spec: ApiSpec, *, revision: str, options: RenderOptions) -> Object:
    return metadata(
        name,
        namespace=options.namespace,
        labels=_labels(spec, revision=revision, component=Component.API),
        annotations={REVISION_ANNOTATION: revision},
    )


def _check_revision(revision: str) -> None:
    if not isinstance(revision, str) or not DNS_1123_LABEL.fullmatch(revision[:12]):
        raise UserInputError(
            f"revision {revision!r}: expected lowercase letters and digits, as Project.revision() gives"
        )


def _spec_config_map(spec: ApiSpec, *, revision: str, options: RenderOptions) -> Object:
    spec_json = spec.model_dump_json()
    size = len(spec_json.encode())
    if size > MAX_CONFIG_MAP_BYTES:
        raise UserInputError(
            f"API {spec.name!r}: the resolved spec is {size} bytes, over Kubernetes' ConfigMap limit of "
            f"{MAX_CONFIG_MAP_BYTES}: keep predictor.config small and put large data in project files"
        )
    meta = _meta(spec_config_map_name(spec.name, revision), spec, revision=revision, options=options)
    # The in-cluster controller starts a job's workers from the image its API's revision was deployed with.
    meta["annotations"][IMAGE_ANNOTATION] = options.image
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {SPEC_KEY: spec_json},
    }


def _headless_service(spec: ApiSpec, *, revision: str, options: RenderOptions) -> Object:
    """clusterIP None: DNS and EndpointSlices list each ready replica, which the gateway balances itself."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(api_object_name(spec.name), spec, revision=revision, options=options),
        "spec": {
            "clusterIP": "None",
            "selector": selector(spec),
            "ports": [{"name": "http", "port": REPLICA_PORT, "targetPort": "http", "protocol": "TCP"}],
            "publishNotReadyAddresses": False,
        },
    }


def _disruption_budget(spec: ApiSpec, *, revision: str, options: RenderOptions) -> Object:
    # A node drain may take as many replicas as a rolling update does; at least one, or drains would hang.
    unavailable = spec.update_strategy.max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(api_object_name(spec.name), spec, revision=revision, options=options),
        "spec": {
            "maxUnavailable": 1 if int(unavailable.rstrip("%")) == 0 else _int_or_percent(unavailable),
            "selector": {"matchLabels": selector(spec)},
        },
    }


def _deployment(spec: ApiSpec, *, revision: str, options: RenderOptions) -> Object:
    labels = _labels(spec, revision=revision, component=Component.API)
    container: Object = {
        "name": "replica",
        "image": options.image,
        "command": [
            "python",
            "-m",
            "modelport",
            "replica",
            "--project-dir",
            PROJECT_DIR,
            "--spec",
            SPEC_PATH,
            "--host",
            "0.0.0.0",
            "--port",
            str(REPLICA_PORT),
            "--replica-id",
            "$(POD_NAME)",
            "--grace",
            str(REPLICA_GRACE_SECONDS),
            # An AsyncAPI's replicas consume its queue from the controller (docs/jobs.md).
            *(["--control-url", options.control_url] if spec.kind == ApiKind.ASYNC else []),
        ],
        "ports": [{"name": "http", "containerPort": REPLICA_PORT, "protocol": "TCP"}],
        "env": _env(spec),
        "resources": resources(spec.compute),
        # /healthz answers while the predictor loads, so a slow model load is not a failed liveness check.
        "readinessProbe": http_probe(READY_PATH, "http", period=2, failures=2, timeout=2),
        "livenessProbe": http_probe(ALIVE_PATH, "http", period=10, failures=3, timeout=5),
        "lifecycle": sleep_hook(PRESTOP_SLEEP_SECONDS),
        # The user's predictor may write caches anywhere, so the root filesystem stays writable.
        "securityContext": container_security_context(read_only_root=False),
        "volumeMounts": [_spec_mount()],
    }
    strategy = spec.update_strategy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(api_object_name(spec.name), spec, revision=revision, options=options),
        "spec": {
            "replicas": spec.autoscaling.init_replicas,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "selector": {"matchLabels": selector(spec)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": _int_or_percent(strategy.max_surge),
                    "maxUnavailable": _int_or_percent(strategy.max_unavailable),
                },
            },
            "template": {
                "metadata": {"labels": labels, "annotations": {REVISION_ANNOTATION: revision}},
                "spec": {
                    **_pod_basics(spec, options=options),
                    # preStop sleep, then SIGTERM and the replica's drain, then a margin before SIGKILL.
                    "terminationGracePeriodSeconds": (
                        PRESTOP_SLEEP_SECONDS + REPLICA_GRACE_SECONDS + GRACE_MARGIN_SECONDS
                    ),
                    "topologySpreadConstraints": spread_over_nodes(selector(spec)),
                    "containers": [container],
                    "volumes": [_spec_volume(spec, revision=revision)],
                },
            },
        },
    }


def _pod_basics(spec: ApiSpec, *, options: RenderOptions) -> Object:
    return {
        "automountServiceAccountToken": False,  # the user's code gets no Kubernetes credentials
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables that could shadow predictor.env
        "securityContext": pod_security_context(),
        **scheduling(spec.compute, options),
    }


def _env(spec: ApiSpec) -> list[Object]:
    return [
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        *user_env(spec.predictor.env, api=spec.name),
    ]


def _spec_volume(spec: ApiSpec, *, revision: str) -> Object:
    return {
        "name": "spec",
        "configMap": {"name": spec_config_map_name(spec.name, revision), "defaultMode": 0o444},
    }


def _spec_mount() -> Object:
    return {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}


def _int_or_percent(size: str) -> int | str:
    """The spec's "25%" stays a string; "1" becomes the integer 1, as Kubernetes' IntOrString expects."""
    return size if size.endswith("%") else int(size)
