"""The least-outstanding pick (gateway.balancing.pick_replica): a pure function, tested by table."""

from __future__ import annotations

from collections import Counter

from modelport.gateway.balancing import pick_replica
from modelport.types import ReplicaId

A, B, C = ReplicaId("a"), ReplicaId("b"), ReplicaId("c")
REPLICAS = (A, B, C)


def test_picks_the_replica_with_the_fewest_outstanding_requests() -> None:
    outstanding = {A: 3, B: 1, C: 2}
    for turn in range(3):
        assert pick_replica(REPLICAS, outstanding, limit=10, turn=turn) == 1


def test_ties_go_to_the_first_replica_from_the_turn_so_equal_load_rotates() -> None:
    assert [pick_replica(REPLICAS, {}, limit=10, turn=turn) for turn in range(6)] == [0, 1, 2, 0, 1, 2]
    # Rotation is among the least loaded only: `a` is busier and never picked.
    outstanding = {A: 1, B: 0, C: 0}
    assert {pick_replica(REPLICAS, outstanding, limit=10, turn=turn) for turn in range(6)} == {1, 2}


def test_simulated_load_spreads_evenly() -> None:
    outstanding = dict.fromkeys(REPLICAS, 0)
    picks: Counter[ReplicaId] = Counter()
    for turn in range(30):  # 30 concurrent requests arriving one by one, none finishing
        index = pick_replica(REPLICAS, outstanding, limit=100, turn=turn)
        assert index is not None
        outstanding[REPLICAS[index]] += 1
        picks[REPLICAS[index]] += 1
    assert picks == {A: 10, B: 10, C: 10}


def test_a_replica_at_the_limit_is_skipped_and_none_is_returned_when_all_are_full() -> None:
    assert pick_replica(REPLICAS, {A: 2, B: 2, C: 1}, limit=2, turn=0) == 2
    assert pick_replica(REPLICAS, {A: 2, B: 2, C: 2}, limit=2, turn=0) is None
    assert pick_replica((A,), {A: 5}, limit=1, turn=7) is None


def test_no_replicas_means_no_pick() -> None:
    assert pick_replica((), {}, limit=10, turn=3) is None


def test_excluded_replicas_are_never_picked() -> None:
    assert pick_replica(REPLICAS, {A: 0, B: 5, C: 9}, limit=10, turn=0, exclude={A}) == 1
    assert pick_replica(REPLICAS, {}, limit=10, turn=0, exclude={A, B, C}) is None


def test_a_failed_replica_is_avoided_while_another_is_healthy() -> None:
    # `a` failed to connect: even idle it loses to a loaded healthy replica...
    assert pick_replica(REPLICAS, {A: 0, B: 4, C: 3}, limit=10, turn=0, avoid={A}) == 2
    # ...and healthy replicas at capacity mean 503, not a request to a replica that looks down.
    assert pick_replica(REPLICAS, {A: 0, B: 2, C: 2}, limit=2, turn=0, avoid={A}) is None


def test_when_every_candidate_failed_the_least_loaded_one_is_tried_anyway() -> None:
    assert pick_replica(REPLICAS, {A: 3, B: 1, C: 2}, limit=10, turn=0, avoid={A, B, C}) == 1
    # A retry away from `b` with the others all marked down still has somewhere to go.
    assert pick_replica(REPLICAS, {}, limit=10, turn=0, exclude={B}, avoid={A, C}) == 0
    assert pick_replica(REPLICAS, {A: 1, C: 1}, limit=1, turn=0, exclude={B}, avoid={A, C}) is None
