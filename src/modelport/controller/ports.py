"""The controller's seams: what it needs from a backend, the gateway and the state store, as Protocols.

The controller imports only these; concrete classes (backends/local.py, gateway/app.py, store/sqlite.py)
satisfy them structurally and are wired together in modelport.cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelport.spec.model import ApiSpec
from modelport.types import (
    Address,
    ApiName,
    ApiRoute,
    ApiTraffic,
    JobId,
    ReplicaId,
    ReplicaPhase,
    Revision,
    WorkloadRole,
)


@dataclass(frozen=True, slots=True)
class DesiredApi:
    """One API as the user last deployed it: the spec, its revision and the immutable project snapshot."""

    spec: ApiSpec
    revision: Revision
    project_dir: Path  # snapshot of the project files for this revision; replicas run from here
    spec_path: Path  # the resolved spec as JSON (ApiSpec.model_dump_json), read by the replica
    deployed_at: float  # wall clock, seconds since the epoch
    # Bumped by `refresh`: a new generation replaces every replica even though the revision is unchanged.
    generation: int = 0

    @property
    def name(self) -> ApiName:
        return ApiName(self.spec.name)


@dataclass(frozen=True, slots=True)
class ReplicaLaunch:
    """Everything a backend needs to start one replica."""

    replica_id: ReplicaId
    api_name: ApiName
    revision: Revision
    generation: int
    project_dir: Path
    spec_path: Path
    spec: ApiSpec  # for compute requests, env, processes/threads
    role: WorkloadRole = WorkloadRole.REPLICA
    job_id: JobId | None = None  # the job a batch worker or task process works for


@dataclass(frozen=True, slots=True)
class ObservedReplica:
    """A replica as the backend sees it right now."""

    replica_id: ReplicaId
    api_name: ApiName
    revision: Revision
    generation: int
    phase: ReplicaPhase
    address: Address | None
    pid: int | None
    started_at: float  # wall clock
    ready_at: float | None = None  # wall clock when /readyz first answered 200
    exit_code: int | None = None  # set when phase is EXITED
    log_path: Path | None = None
    role: WorkloadRole = WorkloadRole.REPLICA
    job_id: JobId | None = None


@dataclass(frozen=True, slots=True)
class ComputeVerdict:
    """Whether one more replica of a given compute request fits on what the backend has left."""

    fits: bool
    missing: str = ""  # "cpu: requested 4, 1.5 free" when it does not fit


class Backend(Protocol):
    """Where replicas run. Methods return quickly; long work (starting, draining) happens in the background
    and shows up in `observe()`."""

    def launch(self, launch: ReplicaLaunch) -> None:
        """Start a replica process; it appears in observe() as STARTING at once."""

    def terminate(self, replica_id: ReplicaId, *, grace_seconds: float) -> None:
        """SIGTERM (draining), then SIGKILL after the grace period. Idempotent."""

    def forget(self, replica_id: ReplicaId) -> None:
        """Drop an EXITED replica from observe() once the controller has accounted for it."""

    def observe(self) -> Sequence[ObservedReplica]:
        """Every replica the backend knows of, including EXITED ones not yet forgotten."""

    def check_compute(self, spec: ApiSpec) -> ComputeVerdict:
        """Would one more replica with this spec's compute request fit now?"""

    async def poll(self) -> None:
        """Refresh observations: reap exited processes, probe /readyz and /healthz. Called every tick."""

    async def shutdown(self, *, grace_seconds: float) -> None:
        """Stop every replica this backend started and wait for them to exit."""


class RouteSink(Protocol):
    """The gateway, as the controller sees it: it receives the full route table on every change."""

    def publish(self, routes: Mapping[ApiName, ApiRoute]) -> None: ...


class TrafficSource(Protocol):
    """The gateway's counters, as the controller sees them."""

    def traffic(self) -> Mapping[ApiName, ApiTraffic]: ...


class StateStore(Protocol):
    """Durable desired state. The local cluster uses SQLite (store/sqlite.py)."""

    def save_api(self, api: DesiredApi) -> None: ...

    def delete_api(self, name: ApiName) -> None: ...

    def load_apis(self) -> Sequence[DesiredApi]: ...

    def record_replica(self, replica: ObservedReplica) -> None:
        """Remember a started replica (pid, address) so a restarted daemon can find or clean it up."""

    def forget_replica(self, replica_id: ReplicaId) -> None: ...

    def load_replicas(self) -> Sequence[ObservedReplica]: ...
