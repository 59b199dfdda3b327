"""What Kubernetes objects say about modelport's APIs: pods as replicas, a Deployment and its pods as an API
status, EndpointSlices as ready addresses, timestamped pod logs as lines. Pure functions over the API
server's JSON (camelCase dicts, as `kubectl get -o json` prints them).

Called by backends.kubernetes.KubernetesBackend; nothing here talks to Kubernetes or imports its client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelport.controller.ports import ObservedReplica
from modelport.types import Address, ApiName, ApiStatus, ReplicaId, ReplicaPhase, ReplicaTarget, Revision

Object = dict[str, Any]

# Container waiting reasons that do not go away by waiting: the API is in error until someone acts.
ERROR_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_PULL_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"})


@dataclass(frozen=True, kw_only=True)
class KubeLayout:
    """How modelport names and labels an API's objects in a namespace.

    The values are modelport.manifests.layout's (the renderer's contract); the CLI passes them in, because
    backends and manifests sit side by side in the import layers and may not import each other.
    """

    api_label: str  # label key whose value is the API's name, on every object of an API
    component_label: str
    kind_label: str  # label key whose value is the API's kind ("RealtimeAPI")
    api_component: str  # the component label value of replicas and of the API's Service, PDB, ConfigMaps
    revision_annotation: str  # on the Deployment, its pod template and the spec ConfigMap
    spec_key: str  # the key of the spec JSON in the spec ConfigMap's data
    replica_port: int
    object_name: Callable[[str], str]  # the API's Deployment, Service and PodDisruptionBudget
    gateway_service: str  # the prediction gateway's Service
    worker_component: str = "worker"  # the component label value of a job's worker pods (and its Job)
    job_id_label: str = "modelport.dev/job-id"  # label key whose value is the job's id, on a Job and its pods
    image_annotation: str = "modelport.dev/image"  # on the spec ConfigMap: the project image of the revision

    def replica_selector(self, api: str) -> str:
        """The API's replicas: what its Deployment, headless Service and PodDisruptionBudget select."""
        return f"{self.api_label}={api},{self.component_label}={self.api_component}"

    def api_selector(self, api: str) -> str:
        """Every object of the API, its job workers included."""
        return f"{self.api_label}={api}"

    def all_apis_selector(self) -> str:
        """The objects of every API (spec ConfigMaps, Services, Deployments, replicas)."""
        return f"{self.api_label},{self.component_label}={self.api_component}"

    def workers_selector(self) -> str:
        """Every job's worker pods, of every API."""
        return f"{self.api_label},{self.component_label}={self.worker_component}"

    def jobs_selector(self) -> str:
        """Every job's Kubernetes Job."""
        return f"{self.api_label},{self.job_id_label}"

    def job_selector(self, job_id: str) -> str:
        """One job's Kubernetes Job and pods."""
        return f"{self.job_id_label}={job_id}"


@dataclass(frozen=True, kw_only=True)
class PodState:
    """One pod of an API as `describe` shows it and the controller observes it."""

    name: str
    api: ApiName
    revision: Revision
    phase: ReplicaPhase
    ip: str | None
    started_at: float  # wall clock: the pod's start, or its creation while not yet scheduled
    ready_at: float | None
    restarts: int  # container restarts, as the kubelet counts them
    exit_code: int | None  # of the container's last termination
    waiting_reason: str | None  # "CrashLoopBackOff", "ContainerCreating", ...
    waiting_message: str | None
    unschedulable: str | None  # the scheduler's message while no node fits the pod

    @property
    def problem(self) -> str | None:
        """Why this pod cannot serve without someone acting (a crash loop, an image that cannot be
        pulled, a pod no node fits), in words; None when it is fine or merely on its way."""
        if self.waiting_reason in _PULL_REASONS:
            detail = f": {self.waiting_message}" if self.waiting_message else ""
            return (
                f"replica {self.name} cannot pull its image ({self.waiting_reason}){detail}: check the image "
                "reference and that the cluster's nodes may pull from its registry (imagePullSecrets)"
            )
        if self.waiting_reason in ERROR_WAITING_REASONS:
            exit_code = "" if self.exit_code is None else f", last exit code {self.exit_code}"
            detail = f": {self.waiting_message}" if self.waiting_message else ""
            return (
                f"replica {self.name} keeps failing ({self.waiting_reason}, restarted {self.restarts} "
                f"times{exit_code}){detail}"
            )
        if self.unschedulable is not None:
            return f"replica {self.name} does not fit on any node: {self.unschedulable}"
        return None

    def replica(self, *, port: int) -> ObservedReplica:
        return ObservedReplica(
            replica_id=ReplicaId(self.name),
            api_name=self.api,
            revision=self.revision,
            generation=0,
            phase=self.phase,
            address=None if self.ip is None else Address(host=self.ip, port=port),
            pid=None,
            started_at=self.started_at,
            ready_at=self.ready_at,
            exit_code=self.exit_code if self.phase is ReplicaPhase.EXITED else None,
        )


@dataclass(frozen=True, slots=True)
class StatusVerdict:
    status: ApiStatus
    reason: str | None = None


def parse_timestamp(text: str | None) -> float | None:
    """An RFC 3339 time as the API server writes it ("2026-01-02T03:04:05Z"), in seconds since the epoch."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_pod(pod: Mapping[str, Any], *, layout: KubeLayout) -> PodState:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    scheduled = conditions.get("PodScheduled", {})
    containers = status.get("containerStatuses") or []
    waiting = next(
        ((c.get("state") or {}).get("waiting") for c in containers if (c.get("state") or {}).get("waiting")),
        None,
    )
    pod_phase = status.get("phase")
    if meta.get("deletionTimestamp"):
        phase = ReplicaPhase.DRAINING
    elif pod_phase in ("Succeeded", "Failed"):
        phase = ReplicaPhase.EXITED
    elif ready.get("status") == "True":
        phase = ReplicaPhase.READY
    else:
        phase = ReplicaPhase.STARTING
    created = parse_timestamp(meta.get("creationTimestamp")) or 0.0
    return PodState(
        name=str(meta.get("name", "")),
        api=ApiName(str(labels.get(layout.api_label, ""))),
        revision=Revision(str(annotations.get(layout.revision_annotation, ""))),
        phase=phase,
        ip=status.get("podIP") or None,
        started_at=parse_timestamp(status.get("startTime")) or created,
        ready_at=parse_timestamp(ready.get("lastTransitionTime")) if phase is ReplicaPhase.READY else None,
        restarts=sum(int(c.get("restartCount") or 0) for c in containers),
        exit_code=_exit_code(containers),
        waiting_reason=None if waiting is None else waiting.get("reason"),
        waiting_message=None if waiting is None else waiting.get("message"),
        unschedulable=(
            scheduled.get("message") or "no node fits it"
            if pod_phase == "Pending"
            and scheduled.get("status") == "False"
            and scheduled.get("reason") == "Unschedulable"
            else None
        ),
    )


def _exit_code(containers: Sequence[Mapping[str, Any]]) -> int | None:
    """The exit code of the current termination, else of the last one (what a crash loop left)."""
    for key in ("state", "lastState"):
        for container in containers:
            terminated = (container.get(key) or {}).get("terminated")
            if terminated and terminated.get("exitCode") is not None:
                return int(terminated["exitCode"])
    return None


def deployment_status(
    deployment: Mapping[str, Any], pods: Sequence[PodState], *, revision: Revision
) -> StatusVerdict:
    """An API's status from its Deployment and its pods; `revision` is the one the Deployment runs now.

    error: a pod of the API crash-loops or cannot pull its image, or the Deployment reports a failure
    (ReplicaFailure, a rollout past its progress deadline); compute unavailable: a pod fits on no node;
    updating: Kubernetes is still rolling out or a replica is not ready yet; scaled to zero: 0 requested.
    """
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    requested = int(spec.get("replicas", 1))
    live_pods = [p for p in pods if p.phase is not ReplicaPhase.DRAINING]
    # A failing pod of the current revision says more than one of an older revision on its way out.
    for pod in sorted(live_pods, key=lambda p: p.revision != revision):
        if pod.problem is not None and pod.unschedulable is None:
            return StatusVerdict(ApiStatus.ERROR, pod.problem)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failure = conditions.get("ReplicaFailure", {})
    if failure.get("status") == "True":
        return StatusVerdict(ApiStatus.ERROR, f"Kubernetes cannot create replicas: {failure.get('message')}")
    progressing = conditions.get("Progressing", {})
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return StatusVerdict(ApiStatus.ERROR, f"the rollout stalled: {progressing.get('message')}")
    unschedulable = next((p for p in live_pods if p.unschedulable is not None), None)
    if unschedulable is not None:
        return StatusVerdict(ApiStatus.COMPUTE_UNAVAILABLE, unschedulable.problem)
    up_to_date = sum(1 for p in live_pods if p.revision == revision and p.phase is ReplicaPhase.READY)
    rolled_out = (
        int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
        and int(status.get("updatedReplicas", 0)) >= requested
        and int(status.get("replicas", 0)) <= int(status.get("updatedReplicas", 0))
    )
    if requested == 0:
        return StatusVerdict(ApiStatus.SCALED_TO_ZERO) if rolled_out else StatusVerdict(ApiStatus.UPDATING)
    if not rolled_out or up_to_date < requested:
        return StatusVerdict(ApiStatus.UPDATING)
    return StatusVerdict(ApiStatus.LIVE)


def ready_targets(
    slices: Sequence[Mapping[str, Any]], *, revisions: Mapping[str, Revision], default_port: int
) -> list[ReplicaTarget]:
    """The ready endpoints of a Service's EndpointSlices, each address once, ordered by replica id.

    An endpoint counts when its `ready` condition is true or unset (Kubernetes: "consumers should interpret
    this unknown state as ready") and it is not terminating; FQDN slices carry no address and are skipped.
    `revisions` maps pod names to their revision (pods unknown to it get "").
    """
    targets: dict[Address, ReplicaTarget] = {}
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = endpoint_slice.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == "http" and p.get("port")), None)
        if port is None:
            port = next((p.get("port") for p in ports if p.get("port")), default_port)
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            target_ref = endpoint.get("targetRef") or {}
            pod = str(target_ref.get("name") or "")
            for ip in endpoint.get("addresses") or []:
                address = Address(host=str(ip), port=int(port))
                targets.setdefault(
                    address,
                    ReplicaTarget(
                        replica_id=ReplicaId(pod or str(address)),
                        address=address,
                        revision=revisions.get(pod, Revision("")),
                    ),
                )
    return sorted(targets.values(), key=lambda t: (t.replica_id, t.address.host, t.address.port))


# Logs ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    replica: str  # the pod's name
    line: str
    at_ns: int  # the kubelet's timestamp, nanoseconds since the epoch


@dataclass(frozen=True, slots=True)
class LogPosition:
    """How far one pod's log has been read: its last line's timestamp, how many lines carried exactly that
    timestamp, and when (monotonic) the read happened."""

    last_ns: int
    seen_at_last: int
    read_at: float


@dataclass(frozen=True, slots=True)
class LogCursor:
    """Where `read_logs` stopped, per pod; pass it back to get only newer lines."""

    pods: Mapping[str, LogPosition] = field(default_factory=dict)


def parse_log_timestamp(text: str) -> int | None:
    """The kubelet's RFC 3339 time with up to 9 fraction digits, in nanoseconds since the epoch."""
    if not text.endswith("Z") or len(text) < 20:
        return None
    whole, _, fraction = text[:-1].partition(".")
    if fraction and not fraction.isdigit():
        return None
    try:
        seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)


def new_log_lines(
    pod: str, text: str, *, position: LogPosition | None, read_at: float
) -> tuple[list[LogLine], LogPosition | None]:
    """The lines of a `timestamps=true` log read that come after `position`, and the position after them.

    Reads overlap (a `sinceSeconds` window is coarse), so lines at or before the last one seen are dropped;
    of several lines with exactly the last timestamp, the ones already seen are skipped by count. A line
    without a timestamp (none is expected) keeps the previous line's.
    """
    lines: list[LogLine] = []
    last_ns = -1 if position is None else position.last_ns
    skip_at_last = 0 if position is None else position.seen_at_last
    seen_at_last = skip_at_last
    previous = last_ns
    for raw in text.splitlines():
        stamp, _, rest = raw.partition(" ")
        at = parse_log_timestamp(stamp)
        if at is None:
            at, rest = max(previous, 0), raw
        previous = at
        if at < last_ns:
            continue
        if at == last_ns:
            if skip_at_last > 0:
                skip_at_last -= 1
                continue
            seen_at_last += 1
        else:
            last_ns, seen_at_last, skip_at_last = at, 1, 0
        lines.append(LogLine(replica=pod, line=rest, at_ns=at))
    if last_ns < 0:
        return lines, position
    return lines, LogPosition(last_ns=last_ns, seen_at_last=seen_at_last, read_at=read_at)


def since_seconds(position: LogPosition, *, now: float, overlap: float) -> int:
    """A `sinceSeconds` that covers every line written since the last read: the time since that read (on
    this machine's monotonic clock, so no clock skew with the node matters) plus an overlap."""
    return max(1, math.ceil(now - position.read_at + overlap))
