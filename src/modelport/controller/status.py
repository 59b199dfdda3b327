"""API status derivation (live / updating / error / compute unavailable / scaled to zero), pure and from
observed state only.

Follows Cortex 0.20's order of checks. Called by controller.loop for the route table and the CLI's views.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelport.controller.backoff import BackoffPolicy, RestartBackoff, is_crash_looping
from modelport.controller.plan import LIVE_PHASES, Target
from modelport.controller.ports import ComputeVerdict, ObservedReplica
from modelport.types import ApiName, ApiStatus, ReplicaPhase

SCALED_TO_ZERO_REASON = "the first request starts a replica"


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    """Cortex's `get` columns: requested, up-to-date (ready, current target) and stale (ready, older)."""

    requested: int
    up_to_date: int
    stale: int
    current_live: int  # replicas of the current target starting or ready


@dataclass(frozen=True, slots=True)
class StatusReport:
    status: ApiStatus
    reason: str | None = None  # why it is not live, in words a user can act on


def count_replicas(replicas: Iterable[ObservedReplica], *, target: Target, requested: int) -> ReplicaCounts:
    """Count the API's replicas; pass only the ones still serving or starting (not being stopped)."""
    up_to_date = stale = current_live = 0
    for replica in replicas:
        current = target.matches(replica)
        if current and replica.phase in LIVE_PHASES:
            current_live += 1
        if replica.phase is ReplicaPhase.READY:
            if current:
                up_to_date += 1
            else:
                stale += 1
    return ReplicaCounts(requested=requested, up_to_date=up_to_date, stale=stale, current_live=current_live)


def derive_status(
    counts: ReplicaCounts,
    *,
    api_name: ApiName,
    min_replicas: int,
    backoff: RestartBackoff,
    policy: BackoffPolicy,
    compute: ComputeVerdict | None,
) -> StatusReport:
    """The API's status; `compute` is the last verdict of a wanted start that did not fit, else None."""
    if counts.requested > 0 and counts.up_to_date >= counts.requested:
        return StatusReport(ApiStatus.LIVE)
    if counts.requested == 0 and counts.current_live == 0 and counts.stale == 0:
        # Whatever crashed or did not fit before is moot until a request wakes the API.
        return StatusReport(ApiStatus.SCALED_TO_ZERO, SCALED_TO_ZERO_REASON)
    if counts.up_to_date == 0 and is_crash_looping(backoff, policy):
        reason = crash_loop_reason(api_name, backoff)
        if counts.stale:
            reason += f"; the previous revision still serves ({counts.stale} ready replicas)"
        return StatusReport(ApiStatus.ERROR, reason)
    if compute is not None and not compute.fits and counts.current_live == 0:
        return StatusReport(ApiStatus.COMPUTE_UNAVAILABLE, compute.missing or "not enough compute")
    # Serving with at least min_replicas (and at least one: with min_replicas 0 a replica must answer)
    # while the autoscaler's extra replicas start is live, as in Cortex.
    if counts.up_to_date >= max(min_replicas, 1):
        return StatusReport(ApiStatus.LIVE)
    return StatusReport(ApiStatus.UPDATING, _progress(counts, api_name))


def _progress(counts: ReplicaCounts, api_name: ApiName) -> str:
    starting = counts.current_live - counts.up_to_date
    progress = f"{counts.up_to_date} of {counts.requested} replicas ready, {starting} starting"
    if counts.stale:
        progress += f"; the previous revision serves meanwhile ({counts.stale} ready replicas)"
    return f"{progress}: `modelport logs {api_name}` shows their progress"


def crash_loop_reason(api_name: ApiName, backoff: RestartBackoff) -> str:
    code = "unknown" if backoff.last_exit_code is None else str(backoff.last_exit_code)
    return (
        f"the predictor failed to start (exit code {code}) {backoff.never_ready_failures} times: "
        f"see `modelport logs {api_name}`"
    )
