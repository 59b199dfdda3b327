"""Rollout planning: which replicas of one API to start and which to stop, as a pure function.

Kubernetes RollingUpdate semantics (max_surge / max_unavailable, readiness-gated). Called by
controller.loop once per API per tick with the API's live replicas; the loop carries the plan out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.types import ReplicaId, ReplicaPhase, Revision

LIVE_PHASES = frozenset({ReplicaPhase.STARTING, ReplicaPhase.READY})


@dataclass(frozen=True, slots=True)
class Target:
    """What every replica of an API should run: a revision, restarted once per generation (refresh)."""

    revision: Revision
    generation: int

    @classmethod
    def of(cls, desired: DesiredApi) -> Target:
        return cls(revision=desired.revision, generation=desired.generation)

    def matches(self, replica: ObservedReplica) -> bool:
        return replica.revision == self.revision and replica.generation == self.generation


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    start: int  # new replicas of the target to launch
    stop: tuple[ReplicaId, ...]  # replicas to terminate, in the order to terminate them

    @property
    def is_empty(self) -> bool:
        return self.start == 0 and not self.stop


def plan_rollout(
    replicas: Sequence[ObservedReplica],
    *,
    desired: int,
    target: Target,
    max_surge: int,
    max_unavailable: int,
) -> RolloutPlan:
    """Plan one step towards `desired` replicas of `target`.

    `replicas` are the API's live replicas (STARTING or READY, not already being stopped); others are
    ignored. Invariants: never more than desired + max_surge live replicas after the plan is carried out,
    and a READY replica is stopped only while at least desired - max_unavailable READY replicas remain.
    """
    if desired < 0 or max_surge < 0 or max_unavailable < 0:
        raise ValueError(
            f"desired ({desired}), max_surge ({max_surge}) and max_unavailable ({max_unavailable}) "
            "must be >= 0"
        )
    live = [r for r in replicas if r.phase in LIVE_PHASES]
    if desired == 0:
        return RolloutPlan(start=0, stop=tuple(r.replica_id for r in _oldest_first(live)))
    if max_surge == 0 and max_unavailable == 0:
        # Kubernetes rejects this pair; with neither room to add nor to remove, a rollout could never move.
        max_unavailable = 1

    current = [r for r in live if target.matches(r)]
    old = [r for r in live if not target.matches(r)]
    stop: list[ObservedReplica] = []

    # Scale down: surplus replicas of the target go first, the ones not serving yet before ready ones.
    surplus = len(current) - desired
    if surplus > 0:
        # Reversed: not-ready before ready, then newest first (ties broken by id, for determinism).
        by_preference = sorted(
            current, key=lambda r: (not _is_ready(r), r.started_at, r.replica_id), reverse=True
        )
        stop.extend(by_preference[:surplus])
    stopped = {r.replica_id for r in stop}
    kept_current = [r for r in current if r.replica_id not in stopped]

    # Old replicas: the unready ones serve nobody and can always go; ready ones only while enough remain.
    ready = sum(1 for r in kept_current if _is_ready(r)) + sum(1 for r in old if _is_ready(r))
    min_ready = desired - max_unavailable
    for replica in sorted(old, key=lambda r: (_is_ready(r), r.started_at, r.replica_id)):
        if not _is_ready(replica):
            stop.append(replica)
        elif ready - 1 >= min_ready:
            stop.append(replica)
            ready -= 1

    # Scale up within the surge budget; replicas stopped above no longer count as live.
    remaining_live = len(live) - len(stop)
    budget = desired + max_surge - remaining_live
    start = max(0, min(desired - len(kept_current), budget))
    return RolloutPlan(start=start, stop=tuple(r.replica_id for r in stop))


def _is_ready(replica: ObservedReplica) -> bool:
    return replica.phase is ReplicaPhase.READY


def _oldest_first(replicas: Iterable[ObservedReplica]) -> list[ObservedReplica]:
    return sorted(replicas, key=lambda r: (r.started_at, r.replica_id))
