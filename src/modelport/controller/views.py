"""Read models of the control plane: an API as `modelport get` shows it and as the gateway routes it.

Pure projections of desired and observed state, built by controller.loop (api()/apis() and the route
table it publishes); the control API in modelport.cluster serialises the views.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from modelport.controller.plan import LIVE_PHASES, Target
from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.controller.scaling import AutoscalingEvent
from modelport.controller.status import ReplicaCounts, StatusReport
from modelport.spec.model import ApiSpec
from modelport.types import (
    Address,
    ApiKind,
    ApiName,
    ApiRoute,
    ApiStatus,
    ApiTraffic,
    ReplicaId,
    ReplicaPhase,
    ReplicaTarget,
    Revision,
)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    replica_id: ReplicaId
    phase: ReplicaPhase  # DRAINING as soon as the controller asked it to stop
    revision: Revision
    generation: int
    up_to_date: bool  # runs the API's current revision and generation
    in_flight: int  # requests queued at or running on it, per the gateway
    restarts: int  # consecutive failures of its target (0 for replicas of an older target)
    started_at: float  # wall clock
    ready_at: float | None
    pid: int | None
    log_path: Path | None
    address: Address | None = None


@dataclass(frozen=True, slots=True)
class ApiView:
    name: ApiName
    spec: ApiSpec
    revision: Revision
    generation: int
    status: ApiStatus
    reason: str | None  # why it is not live
    requested: int
    up_to_date: int  # ready replicas of the current revision and generation
    stale: int  # ready replicas of an older one, still serving during a rolling update
    last_updated: float  # wall clock of the last deploy or refresh
    traffic: ApiTraffic
    replicas: tuple[ReplicaView, ...]  # ordered by start time
    events: tuple[AutoscalingEvent, ...]  # recent changes of `requested`, oldest first


def build_api_view(
    desired: DesiredApi,
    replicas: Sequence[ObservedReplica],
    *,
    counts: ReplicaCounts,
    report: StatusReport,
    stopping: AbstractSet[ReplicaId],
    restarts: int,
    traffic: ApiTraffic,
    events: tuple[AutoscalingEvent, ...],
) -> ApiView:
    """One API as `modelport get` shows it; `replicas` are the API's, in any order."""
    target = Target.of(desired)
    return ApiView(
        name=desired.name,
        spec=desired.spec,
        revision=desired.revision,
        generation=desired.generation,
        status=report.status,
        reason=report.reason,
        requested=counts.requested,
        up_to_date=counts.up_to_date,
        stale=counts.stale,
        last_updated=desired.deployed_at,
        traffic=traffic,
        replicas=tuple(
            ReplicaView(
                replica_id=r.replica_id,
                # SIGTERM is sent right after the controller decides, whatever the backend saw last.
                phase=ReplicaPhase.DRAINING
                if r.replica_id in stopping and r.phase in LIVE_PHASES
                else r.phase,
                revision=r.revision,
                generation=r.generation,
                up_to_date=target.matches(r),
                in_flight=traffic.in_flight.get(r.replica_id, 0),
                restarts=restarts if target.matches(r) else 0,
                started_at=r.started_at,
                ready_at=r.ready_at,
                pid=r.pid,
                log_path=r.log_path,
                address=r.address,
            )
            for r in sorted(replicas, key=lambda r: (r.started_at, r.replica_id))
        ),
        events=events,
    )


def build_route(
    desired: DesiredApi,
    replicas: Sequence[ObservedReplica],
    *,
    report: StatusReport,
    stopping: AbstractSet[ReplicaId],
) -> ApiRoute:
    """The gateway's view of one API: its READY replicas that are not being stopped, ordered by id so that
    an unchanged table compares equal and is not published again."""
    serving = [
        ReplicaTarget(replica_id=r.replica_id, address=r.address, revision=r.revision)
        for r in replicas
        if r.phase is ReplicaPhase.READY and r.replica_id not in stopping and r.address is not None
    ]
    return route_of(desired, serving, status=report.status, reason=report.reason)


def route_of(
    desired: DesiredApi, serving: Sequence[ReplicaTarget], *, status: ApiStatus, reason: str | None
) -> ApiRoute:
    """The route of an API to the replicas in `serving` (ordered here by id, so that an unchanged table
    compares equal); the in-cluster controller builds it from ready endpoints."""
    serving = sorted(serving, key=lambda t: (t.replica_id, t.address.host, t.address.port))
    scaling = desired.spec.autoscaling
    # Only an API that may scale to zero has its requests held while it has no ready replica; any other
    # API without one answers 503 at once, with its status as the reason.
    hold = scaling.min_replicas == 0 and desired.spec.kind is ApiKind.REALTIME
    return ApiRoute(
        api_name=desired.name,
        endpoint=desired.spec.networking.endpoint,
        replicas=tuple(serving),
        max_replica_concurrency=scaling.max_replica_concurrency,
        status=status,
        unavailable_reason=reason,
        retry_on_failure=desired.spec.predictor.idempotent,
        hold_when_empty=hold,
        hold_queue_limit=scaling.activation_queue_limit if hold else 0,
        hold_timeout_seconds=scaling.activation_timeout if hold else 0.0,
        kind=desired.spec.kind,
    )
