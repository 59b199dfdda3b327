"""The in-cluster controller's seams: what it needs from the Kubernetes namespace it runs in and from the
Lease it elects a leader with, as Protocols and the frozen messages that cross them.

controller/kube_loop.py and controller/leader.py import only these; cluster/kube_cluster.py adapts the
Kubernetes backend to `ServingCluster` and backends/kube_lease.py implements `LeaseStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from modelport.controller.jobstore import JobRecord
from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.types import ApiKind, ApiName, ApiStatus, JobId, ReplicaTarget


@dataclass(frozen=True, kw_only=True)
class DeployedApi:
    """One API deployed in the namespace, as its spec ConfigMap, Deployment and pods say right now."""

    name: ApiName
    kind: ApiKind
    # The spec and revision Kubernetes runs; None when the spec ConfigMap cannot be read as this modelport's
    # spec (written by another version): the API is then neither routed nor scaled.
    desired: DesiredApi | None
    status: ApiStatus
    reason: str | None  # why it is not live
    # spec.replicas of its Deployment (the scale subresource's); None for a realtime or async API whose
    # Deployment does not exist (yet: `deploy` applies the spec first), 0 for batch and task APIs.
    requested: int | None


@dataclass(frozen=True, slots=True)
class JobWorkers:
    """The pods of every job's workers, and the jobs whose Kubernetes Job is active (it runs or replaces
    their pods; a finished one starts no more, though the job may still have batches left)."""

    pods: tuple[ObservedReplica, ...]  # role BATCH_WORKER or TASK, job_id set
    jobs: frozenset[JobId]


class ServingCluster(Protocol):
    """The namespace, as the controller sees it. Every method may raise (the API server is remote); the loop
    guards each call. Rolling updates and pod restarts stay Kubernetes' own: nothing here replaces pods."""

    def deployed_apis(self) -> Sequence[DeployedApi]:
        """Every API deployed in the namespace, by name."""

    def ready_endpoints(self, api: ApiName) -> Sequence[ReplicaTarget]:
        """The ready replicas of an API, from its Service's EndpointSlices (pod IP and port)."""

    def scale(self, api: ApiName, replicas: int) -> None:
        """Set the API's replica count through its Deployment's scale subresource."""

    def job_workers(self) -> JobWorkers:
        """The worker pods of every batch job and task, and which jobs have an active Kubernetes Job."""

    def start_job(self, desired: DesiredApi, job: JobRecord, *, workers: int) -> None:
        """Create the Kubernetes Job that runs `workers` pods of `job` (parallelism = workers), replacing a
        finished one of the same job."""

    def stop_job(self, job_id: JobId) -> bool:
        """Delete the job's Kubernetes Job (Kubernetes stops its pods); False when there was none."""


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """What the Lease says: who leads, for how long, since when. Times are wall clock, as written there."""

    holder: str | None  # None: nobody (never held, or released)
    duration_seconds: float
    acquired_at: float | None
    renewed_at: float | None
    transitions: int  # how many times the holder changed
    version: str  # the object's resourceVersion: a write succeeds only over this exact version


class LeaseStore(Protocol):
    """The one Lease the controllers of a namespace compete for."""

    def read(self) -> LeaseRecord:
        """The Lease as stored; NotFoundError when it does not exist (the rendered manifests create it)."""

    def write(self, record: LeaseRecord) -> LeaseRecord:
        """Replace the Lease with `record` if it is still at `record.version`, returning it as stored (with
        its new version); ConflictError when someone else wrote it first."""
