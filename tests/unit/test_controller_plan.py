"""Rollout planning (controller.plan): table-driven steps plus whole rollouts simulated to convergence."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from modelport.controller.plan import LIVE_PHASES, RolloutPlan, Target, plan_rollout
from modelport.controller.ports import ObservedReplica
from modelport.types import ReplicaId, ReplicaPhase, Revision
from tests.unit.fakes import observed_replica as rep

NEW = Target(revision=Revision("new"), generation=0)
S, R = ReplicaPhase.STARTING, ReplicaPhase.READY


def old(rid: str, phase: ReplicaPhase = R, *, at: float = 0.0) -> ObservedReplica:
    return rep(rid, phase, rev="old", at=at)


@dataclass(frozen=True)
class Case:
    name: str
    replicas: tuple[ObservedReplica, ...]
    desired: int
    surge: int
    unavailable: int
    start: int
    stop: tuple[str, ...]


CASES = [
    Case("fresh deploy", (), desired=2, surge=1, unavailable=0, start=2, stop=()),
    Case("fresh deploy, surge does not add extras", (), desired=4, surge=1, unavailable=1, start=4, stop=()),
    Case("steady state", (rep("a"), rep("b")), desired=2, surge=1, unavailable=0, start=0, stop=()),
    Case("steady state while starting", (rep("a"), rep("b", S)), 2, 1, 0, start=0, stop=()),
    # Rolling update 2 -> 2 with 25%/25% (surge 1, unavailable 0): one new, wait, one old out, ...
    Case("update: surge one new", (old("a"), old("b", at=1)), 2, 1, 0, start=1, stop=()),
    Case("update: wait for readiness", (old("a"), old("b", at=1), rep("c", S)), 2, 1, 0, start=0, stop=()),
    Case(
        "update: new ready, oldest out", (old("a"), old("b", at=1), rep("c")), 2, 1, 0, start=1, stop=("a",)
    ),
    Case("update: wait again", (old("b", at=1), rep("c"), rep("d", S)), 2, 1, 0, start=0, stop=()),
    Case("update: last old out", (old("b", at=1), rep("c"), rep("d")), 2, 1, 0, start=0, stop=("b",)),
    # max_surge 0: an old replica makes room first.
    Case("no surge: old out first", (old("a"), old("b", at=1)), 2, 0, 1, start=1, stop=("a",)),
    Case("no surge: wait", (old("b", at=1), rep("c", S)), 2, 0, 1, start=0, stop=()),
    Case("no surge: next", (old("b", at=1), rep("c")), 2, 0, 1, start=1, stop=("b",)),
    Case("surge 0 and unavailable 0 act as unavailable 1", (old("a"), old("b", at=1)), 2, 0, 0, 1, ("a",)),
    Case("single replica, no surge", (old("a"),), 1, 0, 1, start=1, stop=("a",)),
    Case("single replica, surge 1", (old("a"),), 1, 1, 0, start=1, stop=()),
    # Large N with 25%/25%: surge 3, unavailable 2.
    Case(
        "large N",
        tuple(old(f"o{i:02}", at=i) for i in range(10)),
        desired=10,
        surge=3,
        unavailable=2,
        start=5,
        stop=("o00", "o01"),
    ),
    Case("scale up", (rep("a"), rep("b")), desired=4, surge=1, unavailable=0, start=2, stop=()),
    Case(
        "scale up within surge budget",
        (old("a"), old("b")),
        desired=4,
        surge=1,
        unavailable=0,
        start=3,
        stop=(),
    ),
    Case(
        "scale down: newest first",
        (rep("a", at=1), rep("b", at=2), rep("c", at=3), rep("d", at=4)),
        desired=2,
        surge=1,
        unavailable=0,
        start=0,
        stop=("d", "c"),
    ),
    Case(
        "scale down: not-ready before ready",
        (rep("a", S, at=1), rep("b", at=2), rep("c", at=3)),
        desired=2,
        surge=1,
        unavailable=0,
        start=0,
        stop=("a",),
    ),
    Case(
        "scale down to zero stops everything",
        (rep("a", at=1), old("b", S, at=0)),
        desired=0,
        surge=1,
        unavailable=0,
        start=0,
        stop=("b", "a"),
    ),
    Case(
        "refresh: a generation bump is a rolling update",
        (rep("a", gen=0), rep("b", gen=0, at=1)),
        desired=2,
        surge=1,
        unavailable=0,
        start=1,
        stop=(),
    ),
    Case(
        "old replicas that are not ready can always go",
        (old("a"), old("b", at=1), old("c", S, at=2)),
        desired=2,
        surge=1,
        unavailable=0,
        start=1,
        stop=("c",),
    ),
    Case(
        "new replica crashed mid-rollout: start another, keep the old one",
        (old("b", at=1), rep("c")),
        desired=2,
        surge=1,
        unavailable=0,
        start=1,
        stop=(),
    ),
    Case(
        "old replica crashed mid-rollout: its absence counts against availability",
        (old("b", at=1), rep("c", S)),
        desired=2,
        surge=1,
        unavailable=0,
        start=1,
        stop=(),
    ),
    Case(
        "surplus current and old replicas both go",
        (rep("a", at=1), rep("b", at=2), rep("c", at=3), old("o")),
        desired=2,
        surge=1,
        unavailable=0,
        start=0,
        stop=("c", "o"),
    ),
    Case(
        "draining and exited replicas are ignored",
        (rep("a"), rep("b"), rep("x", ReplicaPhase.DRAINING), rep("y", ReplicaPhase.EXITED)),
        desired=2,
        surge=1,
        unavailable=0,
        start=0,
        stop=(),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_step(case: Case) -> None:
    # The refresh case targets generation 1 of the same revision.
    target = Target(Revision("new"), 1) if case.name.startswith("refresh") else NEW
    plan = plan_rollout(
        case.replicas,
        desired=case.desired,
        target=target,
        max_surge=case.surge,
        max_unavailable=case.unavailable,
    )
    assert plan == RolloutPlan(start=case.start, stop=tuple(ReplicaId(s) for s in case.stop))


def test_negative_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        plan_rollout((), desired=-1, target=NEW, max_surge=0, max_unavailable=1)


def simulate(
    replicas: list[ObservedReplica],
    *,
    desired: int,
    surge: int,
    unavailable: int,
    crash: frozenset[int] = frozenset(),
) -> tuple[list[ObservedReplica], int]:
    """Carry plans out until nothing changes; new replicas turn READY one step after they start.

    `crash`: step numbers at which the newest STARTING replica of the target dies instead of turning ready.
    Asserts the rollout invariants at every step; returns the final replicas and the number of steps.
    """
    effective_unavailable = 1 if surge == 0 and unavailable == 0 else unavailable
    counter = 0
    for step in range(200):
        plan = plan_rollout(
            replicas, desired=desired, target=NEW, max_surge=surge, max_unavailable=unavailable
        )
        ready_before = sum(r.phase is R for r in replicas)
        live_before = len(replicas)
        stopped = set(plan.stop)
        replicas = [r for r in replicas if r.replica_id not in stopped]
        ready_after_stops = sum(r.phase is R for r in replicas)
        # Stopping never takes availability below the floor it started at or above.
        assert ready_after_stops >= min(ready_before, desired - effective_unavailable), step
        for _ in range(plan.start):
            counter += 1
            replicas.append(rep(f"n{counter:03}", S, at=100 + counter))
        assert len([r for r in replicas if r.phase in LIVE_PHASES]) <= max(desired + surge, live_before), step
        if plan.is_empty and all(r.phase is R for r in replicas):
            return replicas, step
        starting = [r for r in replicas if r.phase is S]
        if step in crash and starting:
            replicas.remove(starting[-1])
        replicas = [replace(r, phase=R) if r.phase is S else r for r in replicas]
    raise AssertionError("the rollout did not converge")


@pytest.mark.parametrize(
    ("desired", "surge", "unavailable"),
    [(1, 1, 0), (2, 1, 0), (2, 0, 1), (3, 0, 0), (4, 1, 1), (10, 3, 2), (10, 0, 2), (7, 7, 0), (5, 2, 5)],
)
def test_rolling_update_converges_without_breaking_invariants(
    desired: int, surge: int, unavailable: int
) -> None:
    start = [old(f"o{i:02}", at=i) for i in range(desired)]
    final, _ = simulate(start, desired=desired, surge=surge, unavailable=unavailable)
    assert len(final) == desired
    assert all(NEW.matches(r) and r.phase is R for r in final)


def test_rollout_survives_crashes_mid_way() -> None:
    start = [old(f"o{i}", at=i) for i in range(4)]
    final, _ = simulate(start, desired=4, surge=1, unavailable=0, crash=frozenset({0, 2, 3}))
    assert sorted(r.revision for r in final) == ["new"] * 4


@pytest.mark.parametrize(("before", "after"), [(2, 5), (5, 2), (3, 0), (0, 3)])
def test_scaling_converges(before: int, after: int) -> None:
    start = [rep(f"c{i}", at=i) for i in range(before)]
    final, _ = simulate(start, desired=after, surge=1, unavailable=0)
    assert len(final) == after
