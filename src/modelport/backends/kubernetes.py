"""The Kubernetes backend: applies an API's rendered objects, scales it through deployments/scale, deletes
it, and reads its pods, EndpointSlices and logs back as replicas, statuses, ready addresses and log lines.

Called by the CLI for Kubernetes environments (cli/kube.py) and meant for the in-cluster controller. It talks
to Kubernetes only through the `KubeApi` seam; `ClientKubeApi` implements it over the official `kubernetes`
client, and this is the only module that imports that client (lazily: `pip install 'modelport[kubernetes]'`).
Rolling updates and restarts are Kubernetes' own: this backend changes objects and never replaces pods.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from modelport.backends.kube_state import (
    KubeLayout,
    LogCursor,
    LogLine,
    LogPosition,
    Object,
    PodState,
    deployment_status,
    new_log_lines,
    parse_pod,
    parse_timestamp,
    ready_targets,
    since_seconds,
)
from modelport.clock import Clock, SystemClock
from modelport.controller.ports import ObservedReplica
from modelport.errors import (
    ConflictError,
    ModelportError,
    NotFoundError,
    UnavailableError,
    UserInputError,
)
from modelport.spec.model import ApiSpec
from modelport.types import (
    ApiKind,
    ApiName,
    ApiStatus,
    JobId,
    ReplicaPhase,
    ReplicaTarget,
    Revision,
    WorkloadRole,
)

__all__ = [
    "FIELD_MANAGER",
    "ApiState",
    "ApplyAction",
    "ApplyOutcome",
    "ClientKubeApi",
    "Kind",
    "KubeApi",
    "KubeApiError",
    "KubernetesBackend",
    "LogBatch",
]

FIELD_MANAGER = "modelport"  # server-side apply's owner of every field modelport sets
INSTALL_HINT = "pip install 'modelport[kubernetes]'"
REQUEST_TIMEOUT_SECONDS = 30.0
FIRST_LOG_TAIL_LINES = 1000  # what `logs` shows of each replica's past on its first read
LOG_OVERLAP_SECONDS = 2.0
NO_SUCH_KIND = "NoSuchKind"  # KubeApiError.reason when the server does not serve a kind at all
SERVED_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})  # the kinds with a Deployment of replicas


class Kind(StrEnum):
    """The Kubernetes kinds modelport touches, with where each lives in the API."""

    NAMESPACE = "Namespace"
    SERVICE_ACCOUNT = "ServiceAccount"
    ROLE = "Role"
    ROLE_BINDING = "RoleBinding"
    LEASE = "Lease"
    PERSISTENT_VOLUME_CLAIM = "PersistentVolumeClaim"
    CONFIG_MAP = "ConfigMap"
    SERVICE = "Service"
    POD_DISRUPTION_BUDGET = "PodDisruptionBudget"
    DEPLOYMENT = "Deployment"
    JOB = "Job"
    POD = "Pod"
    ENDPOINT_SLICE = "EndpointSlice"

    @property
    def api_version(self) -> str:
        return _API_VERSIONS[self]

    @property
    def namespaced(self) -> bool:
        return self is not Kind.NAMESPACE

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Kind:
        """The Kind of a manifest; UserInputError for one modelport does not apply."""
        api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
        for member in cls:
            if member.value == kind and member.api_version == api_version:
                return member
        raise UserInputError(f"modelport does not apply {api_version} {kind} objects")


_API_VERSIONS: Mapping[Kind, str] = {
    Kind.NAMESPACE: "v1",
    Kind.SERVICE_ACCOUNT: "v1",
    Kind.ROLE: "rbac.authorization.k8s.io/v1",
    Kind.ROLE_BINDING: "rbac.authorization.k8s.io/v1",
    Kind.LEASE: "coordination.k8s.io/v1",
    Kind.PERSISTENT_VOLUME_CLAIM: "v1",
    Kind.CONFIG_MAP: "v1",
    Kind.SERVICE: "v1",
    Kind.POD_DISRUPTION_BUDGET: "policy/v1",
    Kind.DEPLOYMENT: "apps/v1",
    Kind.JOB: "batch/v1",
    Kind.POD: "v1",
    Kind.ENDPOINT_SLICE: "discovery.k8s.io/v1",
}


class KubeApiError(Exception):
    """A Kubernetes API call failed: `status` is the HTTP status (None: the server was not reached),
    `reason` the Status reason ("NotFound", "Forbidden", ...), `message` the server's words."""

    def __init__(self, *, status: int | None, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeApi(Protocol):
    """The calls the backend makes to the API server, on plain JSON objects. Failures raise KubeApiError."""

    def apply(self, manifest: Object) -> Object:
        """Server-side apply (field manager `modelport`, conflicts forced); the object as stored."""

    def get(self, kind: Kind, *, name: str, namespace: str) -> Object | None:
        """The object, or None when it does not exist (the namespace is ignored for cluster-scoped kinds)."""

    def replace(self, manifest: Object) -> Object:
        """Replace the whole object (PUT) only if it is still at its metadata.resourceVersion (optimistic
        concurrency: KubeApiError 409 when someone changed it since); the object as stored."""

    def list_objects(self, kind: Kind, *, namespace: str, selector: str) -> list[Object]:
        """The objects of `kind` in `namespace` matching a label selector like `a=b,c`."""

    def delete(self, kind: Kind, *, name: str, namespace: str) -> bool:
        """Delete (dependents in the background); False when it did not exist."""

    def read_scale(self, deployment: str, *, namespace: str) -> int:
        """spec.replicas of the Deployment's scale subresource."""

    def patch_scale(self, deployment: str, *, namespace: str, replicas: int) -> None:
        """Set spec.replicas through the Deployment's scale subresource."""

    def pod_log(self, pod: str, *, namespace: str, since_seconds: int | None, tail_lines: int | None) -> str:
        """The pod's log with a timestamp before each line (`timestamps=true`)."""


class ApplyAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"  # same revision: applied again (repairing any drift), no rollout


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    api: ApiName
    kind: ApiKind
    action: ApplyAction
    revision: Revision
    replicas: int | None  # the count the Deployment was applied with (None: no Deployment)


@dataclass(frozen=True, kw_only=True)
class ApiState:
    """One API as `modelport get` shows it, from its spec ConfigMap, Deployment and pods."""

    name: ApiName
    kind: ApiKind
    spec: ApiSpec | None  # None when the spec ConfigMap cannot be read as this modelport's spec
    revision: Revision
    status: ApiStatus
    reason: str | None
    requested: int
    up_to_date: int  # ready replicas of the current revision
    stale: int  # ready replicas of an older revision, still serving during a rolling update
    last_updated: float | None  # when the current revision was first applied
    pods: tuple[PodState, ...]
    # Whether its Deployment exists (a realtime or async API's spec is applied just before it); `requested`
    # is the Deployment's spec.replicas only when it does.
    has_deployment: bool = False


@dataclass(frozen=True, slots=True)
class LogBatch:
    lines: tuple[LogLine, ...]  # in timestamp order across replicas
    cursor: LogCursor


class KubernetesBackend:
    """modelport's operations on one namespace, as seen through a KubeApi."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        context: str | None,
        layout: KubeLayout,
        clock: Clock | None = None,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._context = context
        self._layout = layout
        self._clock = clock or SystemClock()

    @property
    def where(self) -> str:
        context = "the in-cluster configuration" if self._context is None else f"context {self._context!r}"
        return f"namespace {self._namespace!r} of {context}"

    # Writing -------------------------------------------------------------------------------------------

    def apply_objects(self, objects: Sequence[Object]) -> list[str]:
        """Apply objects in order (the cluster's own: namespace, controller, gateway); returns warnings.

        A context that may not manage Namespaces still deploys into an existing namespace: the refusal is a
        warning, and a missing namespace fails on the next object with the fix.
        """
        warnings = []
        for manifest in objects:
            kind = Kind.of(manifest)
            if kind is Kind.NAMESPACE:
                try:
                    self._api.apply(manifest)
                except KubeApiError as exc:
                    if exc.status != 403:
                        raise self._explain(exc, doing=f"apply Namespace {_name(manifest)}") from None
                    warnings.append(
                        f"{self._context_words()} may not manage namespaces, so namespace "
                        f"{_name(manifest)!r} was left as it is (it must exist, with the label "
                        "pod-security.kubernetes.io/enforce=restricted if you want it enforced)"
                    )
                continue
            self._apply(manifest)
        return warnings

    def apply_api(self, spec: ApiSpec, objects: Sequence[Object], *, revision: Revision) -> ApplyOutcome:
        """Apply the objects `render_api` made for `spec` at `revision`, keeping the API's current scale.

        An existing Deployment keeps its replica count (clamped to the new min/max_replicas), so a redeploy
        does not undo the autoscaler; Kubernetes then rolls the pods over to the new template itself. Spec
        ConfigMaps of revisions that no pod runs any more are deleted, and a kind that lost its replicas (a
        RealtimeAPI redeployed as a BatchAPI) loses its Deployment, Service and PodDisruptionBudget.
        """
        api = ApiName(spec.name)
        previous = self._deployed_revision(api, spec.kind)
        current_scale = self._current_scale(api) if spec.kind in SERVED_KINDS else None
        replicas: int | None = None
        for manifest in objects:
            kind = Kind.of(manifest)
            if kind is Kind.DEPLOYMENT and _name(manifest) == self._layout.object_name(api):
                scaling = spec.autoscaling
                replicas = scaling.init_replicas
                if current_scale is not None:
                    replicas = min(max(current_scale, scaling.min_replicas), scaling.max_replicas)
                manifest = copy.deepcopy(manifest)
                manifest["spec"]["replicas"] = replicas
            self._apply(manifest)
        if spec.kind not in SERVED_KINDS:
            for kind in (Kind.DEPLOYMENT, Kind.POD_DISRUPTION_BUDGET, Kind.SERVICE):
                self._delete(kind, self._layout.object_name(api))
        self._prune_specs(api, keep=revision)
        if previous is None:
            action = ApplyAction.CREATED
        elif previous == revision:
            action = ApplyAction.UNCHANGED
        else:
            action = ApplyAction.UPDATED
        return ApplyOutcome(api=api, kind=spec.kind, action=action, revision=revision, replicas=replicas)

    def scale(self, api: str, replicas: int) -> None:
        """Set the API's replica count (what the autoscaler decided) through deployments/scale."""
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise UserInputError(f"replicas: expected a whole number >= 0, got {replicas!r}")
        name = self._layout.object_name(api)
        try:
            self._api.patch_scale(name, namespace=self._namespace, replicas=replicas)
        except KubeApiError as exc:
            if exc.status == 404:
                raise NotFoundError(
                    f"API {api!r} has no Deployment {name!r} in {self.where}: deploy it first (batch and "
                    "task APIs have no replicas to scale)"
                ) from None
            raise self._explain(exc, doing=f"scale Deployment {name}") from None

    def delete_api(self, api: str) -> list[str]:
        """Delete every object of the API (its Deployment, Service, PodDisruptionBudget, spec ConfigMaps and
        jobs; Kubernetes stops the pods). Returns "Kind/name" of each; NotFoundError when there was none."""
        deleted = []
        name = self._layout.object_name(api)
        for kind in (Kind.DEPLOYMENT, Kind.POD_DISRUPTION_BUDGET, Kind.SERVICE):
            if self._delete(kind, name):
                deleted.append(f"{kind}/{name}")
        for kind in (Kind.JOB, Kind.CONFIG_MAP):
            for obj in self._list(kind, self._layout.api_selector(api)):
                if self._delete(kind, _name(obj)):
                    deleted.append(f"{kind}/{_name(obj)}")
        if not deleted:
            raise NotFoundError(f"API {api!r} is not deployed in {self.where}")
        return deleted

    # Reading -------------------------------------------------------------------------------------------

    def pods(self, api: str) -> list[PodState]:
        """The API's replicas (not its job workers), oldest first."""
        pods = [
            parse_pod(pod, layout=self._layout)
            for pod in self._list(Kind.POD, self._layout.replica_selector(api))
        ]
        return sorted(pods, key=lambda p: (p.started_at, p.name))

    def observe(self, api: str) -> list[ObservedReplica]:
        """The API's replicas as the controller sees replicas of any backend; address = pod IP:8080."""
        return [pod.replica(port=self._layout.replica_port) for pod in self.pods(api)]

    def api_status(self, api: str) -> ApiState:
        """The API's status, counts and spec; NotFoundError when it is not deployed here."""
        specs = self._list(Kind.CONFIG_MAP, self._layout.api_selector(api))
        deployment = self._get(Kind.DEPLOYMENT, self._layout.object_name(api))
        if not specs and deployment is None:
            raise NotFoundError(f"API {api!r} is not deployed in {self.where}")
        return self._state(ApiName(api), specs, deployment)

    def list_apis(self) -> list[ApiState]:
        """Every API deployed in the namespace, by name."""
        by_api: dict[str, list[Object]] = {}
        for config_map in self._list(Kind.CONFIG_MAP, self._layout.all_apis_selector()):
            api = _labels(config_map).get(self._layout.api_label)
            if api and self._layout.spec_key in (config_map.get("data") or {}):
                by_api.setdefault(api, []).append(config_map)
        return [
            self._state(ApiName(api), specs, self._get(Kind.DEPLOYMENT, self._layout.object_name(api)))
            for api, specs in sorted(by_api.items())
        ]

    def ready_endpoints(self, api: str) -> list[ReplicaTarget]:
        """Addresses of the API's ready replicas from its Service's EndpointSlices (what a gateway routes
        to), with each replica's revision from its pod."""
        slices = self._list(
            Kind.ENDPOINT_SLICE, f"kubernetes.io/service-name={self._layout.object_name(api)}"
        )
        revisions = {pod.name: pod.revision for pod in self.pods(api)}
        return ready_targets(slices, revisions=revisions, default_port=self._layout.replica_port)

    def read_logs(self, api: str, *, cursor: LogCursor | None) -> LogBatch:
        """The API's replicas' log lines since `cursor` (None: the last 1000 of each), and the next cursor.

        A pod whose container has not started yet has no log and is read from its start next time.
        """
        now = self._clock.monotonic()
        known = {} if cursor is None else cursor.pods
        positions: dict[str, LogPosition] = {}
        lines: list[LogLine] = []
        for pod in self.pods(api):
            position = known.get(pod.name)
            since = (
                None if position is None else since_seconds(position, now=now, overlap=LOG_OVERLAP_SECONDS)
            )
            tail = FIRST_LOG_TAIL_LINES if cursor is None else None
            try:
                text = self._api.pod_log(
                    pod.name, namespace=self._namespace, since_seconds=since, tail_lines=tail
                )
            except KubeApiError as exc:
                if exc.status in (400, 404):  # not started yet, or gone since the listing
                    if position is not None:
                        positions[pod.name] = position
                    continue
                raise self._explain(exc, doing=f"read the log of pod {pod.name}") from None
            new, after = new_log_lines(pod.name, text, position=position, read_at=now)
            lines += new
            if after is not None:
                positions[pod.name] = after
        lines.sort(key=lambda line: line.at_ns)
        return LogBatch(lines=tuple(lines), cursor=LogCursor(pods=positions))

    def gateway_address(self) -> str | None:
        """`host[:port]` of the prediction gateway's load balancer, or None while it has none (or it is not
        a LoadBalancer Service)."""
        service = self._get(Kind.SERVICE, self._layout.gateway_service)
        if service is None:
            return None
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ports = (service.get("spec") or {}).get("ports") or []
        if not ingress:
            return None
        host = ingress[0].get("hostname") or ingress[0].get("ip")
        if not host:
            return None
        port = ports[0].get("port", 80) if ports else 80
        return str(host) if port == 80 else f"{host}:{port}"

    # The in-cluster controller ---------------------------------------------------------------------------

    def lease(self, name: str) -> Object | None:
        """The Lease `name` as stored (None when it does not exist)."""
        return self._get(Kind.LEASE, name)

    def replace_lease(self, lease: Object) -> Object:
        """Write a Lease read with `lease()` back, only over the resourceVersion it was read at
        (ConflictError when another controller wrote it since); the Lease as stored."""
        if Kind.of(lease) is not Kind.LEASE:
            raise UserInputError(f"replace_lease takes a Lease, got {lease.get('kind')}")
        try:
            return self._api.replace(lease)
        except KubeApiError as exc:
            raise self._explain(exc, doing=f"update Lease {_name(lease)}") from None

    def job_workers(self) -> list[ObservedReplica]:
        """The pods of every job's workers (role and job id from their labels), oldest first."""
        workers = []
        for obj in self._list(Kind.POD, self._layout.workers_selector()):
            labels = _labels(obj)
            job_id = labels.get(self._layout.job_id_label)
            if not job_id:
                continue
            pod = parse_pod(obj, layout=self._layout)
            task = labels.get(self._layout.kind_label) == ApiKind.TASK.value
            workers.append(
                replace(
                    pod.replica(port=self._layout.replica_port),
                    role=WorkloadRole.TASK if task else WorkloadRole.BATCH_WORKER,
                    job_id=JobId(job_id),
                )
            )
        return sorted(workers, key=lambda w: (w.started_at, w.replica_id))

    def active_job_ids(self) -> set[JobId]:
        """The ids of the jobs whose Kubernetes Job still runs pods or may start more: not Complete (a
        worker exited 0, so the Job starts no more pods), not Failed (past its backoffLimit or deadline)."""
        active = set()
        for job in self._list(Kind.JOB, self._layout.jobs_selector()):
            conditions = (job.get("status") or {}).get("conditions") or []
            finished = any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
            )
            if not finished:
                active.add(JobId(_labels(job)[self._layout.job_id_label]))
        return active

    def apply_job(self, manifest: Object) -> None:
        """Create (or update) one job's Kubernetes Job, as `render_job` made it."""
        if Kind.of(manifest) is not Kind.JOB:
            raise UserInputError(f"apply_job takes a Job, got {manifest.get('kind')}")
        self._apply(manifest)

    def delete_job(self, job_id: str) -> bool:
        """Delete the job's Kubernetes Job (its pods stop); False when it had none."""
        deleted = False
        for job in self._list(Kind.JOB, self._layout.job_selector(job_id)):
            deleted = self._delete(Kind.JOB, _name(job)) or deleted
        return deleted

    def spec_image(self, api: str, revision: str) -> str | None:
        """The project image that revision `revision` of the API was deployed with (its spec ConfigMap's
        annotation); None when no such ConfigMap carries one."""
        annotation = self._layout.revision_annotation
        for config_map in self._list(Kind.CONFIG_MAP, self._layout.api_selector(api)):
            annotations = _annotations(config_map)
            if annotations.get(annotation) == revision and annotations.get(self._layout.image_annotation):
                return annotations[self._layout.image_annotation]
        return None

    # Internals -----------------------------------------------------------------------------------------

    def _state(self, api: ApiName, specs: Sequence[Object], deployment: Object | None) -> ApiState:
        annotation = self._layout.revision_annotation
        newest = max(specs, key=_created, default=None)
        revision = Revision(
            _annotations(deployment).get(annotation, "")
            if deployment is not None
            else _annotations(newest).get(annotation, "")
        )
        current = next((s for s in specs if _annotations(s).get(annotation) == revision), newest)
        spec = _read_spec(current, key=self._layout.spec_key)
        kind_label = _labels(current).get(self._layout.kind_label)
        kind = spec.kind if spec is not None else _api_kind(kind_label, served=deployment is not None)
        pods = tuple(self.pods(api)) if deployment is not None else ()
        ready = [p for p in pods if p.phase is ReplicaPhase.READY]
        if deployment is None:
            status, reason, requested = ApiStatus.LIVE, None, 0
        else:
            verdict = deployment_status(deployment, pods, revision=revision)
            status, reason = verdict.status, verdict.reason
            requested = int((deployment.get("spec") or {}).get("replicas", 1))
        return ApiState(
            name=api,
            kind=kind,
            spec=spec,
            revision=revision,
            status=status,
            reason=reason,
            requested=requested,
            up_to_date=sum(1 for p in ready if p.revision == revision),
            stale=sum(1 for p in ready if p.revision != revision),
            last_updated=None if current is None else _created(current) or None,
            pods=pods,
            has_deployment=deployment is not None,
        )

    def _deployed_revision(self, api: ApiName, kind: ApiKind) -> Revision | None:
        annotation = self._layout.revision_annotation
        deployment = self._get(Kind.DEPLOYMENT, self._layout.object_name(api))
        if deployment is not None and kind in SERVED_KINDS:
            return Revision(_annotations(deployment).get(annotation, ""))
        specs = self._list(Kind.CONFIG_MAP, self._layout.api_selector(api))
        newest = max(specs, key=_created, default=None)
        return None if newest is None else Revision(_annotations(newest).get(annotation, ""))

    def _current_scale(self, api: ApiName) -> int | None:
        name = self._layout.object_name(api)
        try:
            return self._api.read_scale(name, namespace=self._namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise self._explain(exc, doing=f"read the scale of Deployment {name}") from None

    def _prune_specs(self, api: ApiName, *, keep: Revision) -> None:
        """Delete the API's spec ConfigMaps that neither `keep` nor any pod (replica or job worker) uses."""
        annotation = self._layout.revision_annotation
        in_use = {keep}
        for pod in self._list(Kind.POD, self._layout.api_selector(api)):
            in_use.add(Revision(_annotations(pod).get(annotation, "")))
        for config_map in self._list(Kind.CONFIG_MAP, self._layout.api_selector(api)):
            if _annotations(config_map).get(annotation) not in in_use:
                self._delete(Kind.CONFIG_MAP, _name(config_map))

    def _apply(self, manifest: Object) -> None:
        kind = Kind.of(manifest)
        namespace = (manifest.get("metadata") or {}).get("namespace")
        if kind.namespaced and namespace != self._namespace:
            raise UserInputError(
                f"{kind} {_name(manifest)!r} is for namespace {namespace!r}, but this environment deploys "
                f"to {self._namespace!r}: render it with --namespace {self._namespace}"
            )
        try:
            self._api.apply(manifest)
        except KubeApiError as exc:
            raise self._explain(exc, doing=f"apply {kind} {_name(manifest)}") from None

    def _get(self, kind: Kind, name: str) -> Object | None:
        try:
            return self._api.get(kind, name=name, namespace=self._namespace)
        except KubeApiError as exc:
            raise self._explain(exc, doing=f"read {kind} {name}") from None

    def _list(self, kind: Kind, selector: str) -> list[Object]:
        try:
            return self._api.list_objects(kind, namespace=self._namespace, selector=selector)
        except KubeApiError as exc:
            raise self._explain(exc, doing=f"list {kind} objects ({selector})") from None

    def _delete(self, kind: Kind, name: str) -> bool:
        try:
            return self._api.delete(kind, name=name, namespace=self._namespace)
        except KubeApiError as exc:
            raise self._explain(exc, doing=f"delete {kind} {name}") from None

    def _context_words(self) -> str:
        return "the in-cluster service account" if self._context is None else f"context {self._context!r}"

    def _explain(self, exc: KubeApiError, *, doing: str) -> ModelportError:
        """A Kubernetes failure as a modelport error naming the context, the namespace and the fix."""
        check = (
            f"`kubectl --context {self._context} -n {self._namespace} get pods`"
            if self._context is not None
            else f"`kubectl -n {self._namespace} get pods`"
        )
        status, message = exc.status, exc.message
        if status is None:
            return UnavailableError(
                f"cannot reach the Kubernetes API server of {self._context_words()} to {doing}: {message}: "
                f"check that the cluster is up and that {check} works, then retry"
            )
        if status == 401:
            return ModelportError(
                f"the Kubernetes API server refused the credentials of {self._context_words()} to {doing}: "
                f"{message}: renew them (e.g. your cloud's get-credentials command) and check with {check}"
            )
        if status == 403:
            return ModelportError(
                f"{self._context_words()} is not allowed to {doing} in namespace {self._namespace!r}: "
                f"{message}: ask a cluster admin for a Role that allows it (`modelport render kubernetes` "
                "shows every object deploy creates), or configure the environment with another context"
            )
        if status == 404 and f'namespaces "{self._namespace}" not found' in message:
            return NotFoundError(
                f"namespace {self._namespace!r} does not exist in {self._context_words()} (while trying to "
                f"{doing}): deploy creates it when the context may; otherwise ask an admin to create it"
            )
        if status == 404:
            return NotFoundError(f"cannot {doing} in {self.where}: {message}")
        if status == 409:
            return ConflictError(
                f"cannot {doing} in {self.where}: {message}: another client changed it at the same time; "
                "run the command again"
            )
        if status in (400, 422):
            return UserInputError(f"the Kubernetes API server rejected the request to {doing}: {message}")
        if status == 429 or status >= 500:
            return UnavailableError(
                f"the Kubernetes API server of {self._context_words()} answered {status} {exc.reason} to "
                f"{doing}: {message}: retry in a moment"
            )
        return ModelportError(f"cannot {doing} in {self.where}: {status} {exc.reason}: {message}")


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _labels(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def _annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def _created(obj: Mapping[str, Any]) -> float:
    return parse_timestamp((obj.get("metadata") or {}).get("creationTimestamp")) or 0.0


def _read_spec(config_map: Mapping[str, Any] | None, *, key: str) -> ApiSpec | None:
    text = ((config_map or {}).get("data") or {}).get(key)
    if not text:
        return None
    try:
        return ApiSpec.model_validate_json(text)
    except ValueError:  # written by another modelport version
        return None


def _api_kind(label: str | None, *, served: bool) -> ApiKind:
    try:
        return ApiKind(label or "")
    except ValueError:
        return ApiKind.REALTIME if served else ApiKind.BATCH


# The official client ---------------------------------------------------------------------------------------


class ClientKubeApi:
    """KubeApi over the official `kubernetes` client (its DynamicClient, which discovers each kind's REST
    path on first use). Build it with `connect`."""

    def __init__(self, api_client: Any, *, server: str) -> None:
        self._api_client = api_client
        self._server = server
        self._dynamic: Any = None

    @classmethod
    def connect(cls, *, context: str | None, kubeconfig: Path | None = None) -> ClientKubeApi:
        """A client for kubeconfig `context` (the file from `kubeconfig`, else $KUBECONFIG or ~/.kube/config);
        with no context, the in-cluster service account. UserInputError when the configuration is wrong."""
        client, config = _import_client()
        try:
            if context is None:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api_client = client.ApiClient(configuration)
            else:
                api_client = config.new_client_from_config(
                    config_file=None if kubeconfig is None else str(kubeconfig),
                    context=context,
                    persist_config=False,
                )
        except config.ConfigException as exc:
            if context is None:
                raise UserInputError(
                    f"cannot use the in-cluster configuration: {str(exc).rstrip('.')}: outside a pod, "
                    "name a kubeconfig context"
                ) from None
            raise UserInputError(
                f"cannot use context {context!r} of the kubeconfig "
                f"({kubeconfig or '$KUBECONFIG or ~/.kube/config'}): {str(exc).rstrip('.')}: list the "
                "contexts with `kubectl config get-contexts`, then configure the environment with one of "
                "them (`modelport env configure NAME --kubernetes --context CTX ...`)"
            ) from None
        except OSError as exc:
            raise UserInputError(
                f"cannot read the kubeconfig for context {context!r}: {exc.strerror or exc} "
                f"({exc.filename or kubeconfig or '$KUBECONFIG or ~/.kube/config'})"
            ) from None
        return cls(api_client, server=str(api_client.configuration.host))

    @property
    def server(self) -> str:
        return self._server

    def apply(self, manifest: Object) -> Object:
        kind = Kind.of(manifest)
        meta = manifest.get("metadata") or {}
        with self._translated():
            stored = self._resource(kind).server_side_apply(
                body=manifest,
                name=meta.get("name"),
                namespace=meta.get("namespace") if kind.namespaced else None,
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        return _plain(stored)

    def get(self, kind: Kind, *, name: str, namespace: str) -> Object | None:
        try:
            with self._translated():
                found = self._resource(kind).get(
                    name=name,
                    namespace=namespace if kind.namespaced else None,
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
        except KubeApiError as exc:
            if exc.status == 404 and exc.reason != NO_SUCH_KIND:
                return None
            raise
        return _plain(found)

    def replace(self, manifest: Object) -> Object:
        kind = Kind.of(manifest)
        meta = manifest.get("metadata") or {}
        with self._translated():
            stored = self._resource(kind).replace(
                body=manifest,
                name=meta.get("name"),
                namespace=meta.get("namespace") if kind.namespaced else None,
                field_manager=FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        return _plain(stored)

    def list_objects(self, kind: Kind, *, namespace: str, selector: str) -> list[Object]:
        with self._translated():
            found = self._resource(kind).get(
                namespace=namespace if kind.namespaced else None,
                label_selector=selector,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        items: list[Object] = _plain(found).get("items") or []
        return items

    def delete(self, kind: Kind, *, name: str, namespace: str) -> bool:
        try:
            with self._translated():
                self._resource(kind).delete(
                    name=name,
                    namespace=namespace if kind.namespaced else None,
                    propagation_policy="Background",
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
        except KubeApiError as exc:
            if exc.status == 404 and exc.reason != NO_SUCH_KIND:
                return False
            raise
        return True

    def read_scale(self, deployment: str, *, namespace: str) -> int:
        with self._translated():
            scale = self._scale().get(
                name=deployment, namespace=namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        return int((_plain(scale).get("spec") or {}).get("replicas") or 0)

    def patch_scale(self, deployment: str, *, namespace: str, replicas: int) -> None:
        with self._translated():
            self._scale().patch(
                body={"spec": {"replicas": replicas}},
                name=deployment,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=FIELD_MANAGER,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )

    def pod_log(self, pod: str, *, namespace: str, since_seconds: int | None, tail_lines: int | None) -> str:
        query: list[tuple[str, Any]] = [("timestamps", "true")]
        if since_seconds is not None:
            query.append(("sinceSeconds", since_seconds))
        if tail_lines is not None:
            query.append(("tailLines", tail_lines))
        with self._translated():
            # serialize=False: the raw text, never parsed as JSON (a log line may look like JSON).
            response = self._dynamic_client().request(
                "get",
                f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
                query_params=query,
                serialize=False,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        data = response.data
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def _dynamic_client(self) -> Any:
        if self._dynamic is None:
            from kubernetes.dynamic import DynamicClient

            with self._translated():
                self._dynamic = DynamicClient(self._api_client)
        return self._dynamic

    def _resource(self, kind: Kind) -> Any:
        client = self._dynamic_client()
        with self._translated():
            return client.resources.get(api_version=kind.api_version, kind=kind.value)

    def _scale(self) -> Any:
        with self._translated():
            return self._resource(Kind.DEPLOYMENT).subresources["scale"]

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """The client's exceptions as KubeApiError (status None: the server was not reached)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError
        from urllib3.exceptions import HTTPError

        try:
            yield
        except KubeApiError:
            raise
        except ResourceNotFoundError as exc:
            raise KubeApiError(
                status=404,
                reason=NO_SUCH_KIND,
                message=f"the API server at {self._server} does not serve this kind ({exc}): modelport "
                "needs Kubernetes 1.25 or newer",
            ) from None
        except (DynamicApiError, ApiException) as exc:
            status = getattr(exc, "status", None)
            body = getattr(exc, "body", None)
            reason, message = _status_message(body, fallback=str(getattr(exc, "reason", "") or exc))
            if not status:  # the client's "status 0": the request never got an answer (e.g. TLS failed)
                unreachable = f"{self._server}: {message}"
                raise KubeApiError(status=None, reason="Unreachable", message=unreachable) from None
            raise KubeApiError(
                status=int(status), reason=reason or str(exc.reason), message=message
            ) from None
        except (HTTPError, OSError) as exc:
            raise KubeApiError(
                status=None, reason="Unreachable", message=f"{self._server}: {_root_cause(exc)}"
            ) from None


def _import_client() -> tuple[Any, Any]:
    try:
        from kubernetes import client, config
    except ImportError:
        raise UserInputError(f"Kubernetes environments need the Kubernetes client: {INSTALL_HINT}") from None
    return client, config


def _plain(value: Any) -> Object:
    """A DynamicClient ResourceInstance (or a dict) as the API server's plain JSON."""
    to_dict = getattr(value, "to_dict", None)
    plain = to_dict() if callable(to_dict) else value
    return dict(plain) if isinstance(plain, Mapping) else {}


def _status_message(body: Any, *, fallback: str) -> tuple[str, str]:
    """The reason and message of a Kubernetes Status response body."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            status = json.loads(body)
        except ValueError:
            return "", body.strip() or fallback
        if isinstance(status, dict):
            return str(status.get("reason") or ""), str(status.get("message") or fallback)
    return "", fallback


def _root_cause(exc: BaseException) -> str:
    """urllib3 wraps the socket error in MaxRetryError(NewConnectionError(...)): the innermost words."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _root_cause(reason)
    return str(exc)
