"""Cortex's recommendation algorithm (controller.autoscaler), table-driven, each knob at its edge."""

from __future__ import annotations

from typing import Any

import pytest

from modelport.controller.autoscaler import AutoscalerState, Recommendation, ScalingDecision, recommend
from modelport.spec.model import AutoscalingSpec

NOW = 10_000.0
LONG_AGO = 0.0  # the autoscaler started long before NOW: past every "first period after start"


def spec(**fields: Any) -> AutoscalingSpec:
    """Stabilization off unless a case sets it, so one run shows tolerance, steps and clamps alone."""
    values: dict[str, Any] = {
        "min_replicas": 1,
        "max_replicas": 100,
        "downscale_stabilization_period": 0,
        "upscale_stabilization_period": 0,
    }
    values.update(fields)
    return AutoscalingSpec.model_validate(values)


def run(
    current: int,
    avg: float,
    scaling: AutoscalingSpec,
    *,
    state: AutoscalerState | None = None,
    demand: int | None = None,
    now: float = NOW,
) -> tuple[int, AutoscalerState, ScalingDecision]:
    return recommend(
        current=current,
        avg_in_flight=avg,
        demand=round(avg) if demand is None else demand,
        spec=scaling,
        state=state or AutoscalerState(started_at=LONG_AGO),
        now=now,
    )


SINGLE_RUNS = [
    # (case, current, avg in-flight, spec fields, requested)
    ("on target", 2, 2.0, {}, 2),
    ("raw is rounded up", 2, 2.5, {}, 3),
    ("target concurrency divides", 2, 5.8, {"target_replica_concurrency": 2.0}, 3),
    # 0.1 * 3 / 0.1 == 3.0000000000000004: representation error must not buy a fourth replica
    (
        "a float quotient is not rounded up past an integer",
        3,
        0.1 * 3,
        {"target_replica_concurrency": 0.1, "upscale_tolerance": 0.0},
        3,
    ),
    # tolerance bands are open intervals around `current` (binary-exact numbers: the edges are exact)
    ("inside the upscale tolerance", 4, 4.9, {"upscale_tolerance": 0.25}, 4),
    ("at the upscale tolerance's edge", 4, 5.0, {"upscale_tolerance": 0.25}, 5),
    ("no upscale tolerance", 10, 10.1, {"upscale_tolerance": 0.0}, 11),
    ("inside the downscale tolerance", 8, 6.5, {"downscale_tolerance": 0.25}, 8),
    ("at the downscale tolerance's edge", 8, 6.0, {"downscale_tolerance": 0.25}, 6),
    ("below the downscale tolerance", 8, 6.5, {"downscale_tolerance": 0.125}, 7),
    # step limits
    ("upscale factor limits a jump", 4, 100.0, {"max_upscale_factor": 1.5}, 6),
    ("upscale factor rounds up", 3, 100.0, {"max_upscale_factor": 1.5}, 5),
    ("upscale always allows +1", 1, 100.0, {"max_upscale_factor": 1.01}, 2),
    ("downscale factor limits a drop", 8, 0.0, {"max_downscale_factor": 0.5}, 4),
    ("downscale factor rounds up", 5, 0.0, {"max_downscale_factor": 0.5}, 3),
    ("downscale always allows -1", 2, 0.0, {"max_downscale_factor": 0.75}, 1),
    ("downscale factor 0 allows any drop", 10, 0.0, {"max_downscale_factor": 0.0}, 1),
    # clamps
    ("min_replicas clamps", 10, 0.0, {"max_downscale_factor": 0.0, "min_replicas": 3}, 3),
    ("max_replicas clamps", 4, 100.0, {"max_replicas": 5}, 5),
    ("min_replicas 1 keeps one replica", 1, 0.0, {}, 1),
    ("min_replicas 0 goes to zero", 1, 0.0, {"min_replicas": 0}, 0),
    ("min_replicas 0 keeps one for any traffic", 1, 0.01, {"min_replicas": 0}, 1),
    ("zero stays zero without demand", 0, 0.0, {"min_replicas": 0}, 0),
    ("from zero one step at a time", 0, 5.0, {"min_replicas": 0}, 1),
]


@pytest.mark.parametrize(
    ("case", "current", "avg", "fields", "expected"), SINGLE_RUNS, ids=[c[0] for c in SINGLE_RUNS]
)
def test_one_run(case: str, current: int, avg: float, fields: dict[str, Any], expected: int) -> None:
    requested, _, decision = run(current, avg, spec(**fields))
    assert requested == expected
    assert decision.requested == expected and decision.changed == (expected != current)


def test_the_decision_keeps_every_intermediate_value() -> None:
    state = AutoscalerState(started_at=LONG_AGO, history=(Recommendation(NOW - 10, 2),))
    requested, new_state, decision = run(
        2, 9.0, spec(upscale_stabilization_period=30, target_replica_concurrency=2.0), state=state, demand=8
    )
    assert decision == ScalingDecision(
        current=2,
        avg_in_flight=9.0,
        demand=8,
        target=2.0,
        raw=4.5,
        ceiled=5,
        within_tolerance=False,
        step_floor=1,
        step_ceiling=3,
        recommended=3,
        downscale_floor=None,
        upscale_ceiling=2,  # the lowest recommendation of the last 30 s
        woke_from_zero=False,
        requested=2,
    )
    assert requested == 2
    assert new_state.history == (Recommendation(NOW - 10, 2), Recommendation(NOW, 3))
    assert "raw 4.500" in decision.describe() and "requested 2" in decision.describe()


def test_history_keeps_only_the_longer_stabilization_period() -> None:
    old, recent = Recommendation(NOW - 61, 9), Recommendation(NOW - 60, 4)
    state = AutoscalerState(started_at=LONG_AGO, history=(old, recent))
    scaling = spec(downscale_stabilization_period=60, upscale_stabilization_period=20)
    _, new_state, _ = run(4, 4.0, scaling, state=state)
    assert new_state.history == (recent, Recommendation(NOW, 4))
    assert new_state.started_at == LONG_AGO


def sequence(
    scaling: AutoscalingSpec, loads: list[float], *, current: int, started_at: float = LONG_AGO
) -> list[int]:
    """Run every 10 s from NOW with the given averages; returns the requested count after each run."""
    state = AutoscalerState(started_at=started_at)
    counts: list[int] = []
    for i, avg in enumerate(loads):
        current, state, _ = run(current, avg, scaling, state=state, now=NOW + 10 * i)
        counts.append(current)
    return counts


def test_downscale_waits_out_the_highest_recommendation_of_its_period() -> None:
    scaling = spec(downscale_stabilization_period=30, max_downscale_factor=0.0)
    # 4 at t=0 holds the count until t=30 still sees it; at t=40 only 1s remain in the period.
    assert sequence(scaling, [4, 1, 1, 1, 1], current=4) == [4, 4, 4, 4, 1]
    # A lower peak inside the period is where the count stops on the way down.
    assert sequence(scaling, [4, 2, 1, 1, 1, 1], current=4) == [4, 4, 4, 4, 2, 1]


def test_downscale_is_never_delayed_above_the_current_count() -> None:
    state = AutoscalerState(started_at=LONG_AGO, history=(Recommendation(NOW - 10, 6),))
    requested, _, decision = run(4, 2.0, spec(downscale_stabilization_period=30), state=state)
    assert (requested, decision.downscale_floor) == (4, 4), "the floor is bounded by the current count"


def test_no_downscale_during_the_first_downscale_period_after_start() -> None:
    scaling = spec(downscale_stabilization_period=300)
    assert run(4, 0.0, scaling, state=AutoscalerState(started_at=NOW - 299))[0] == 4
    assert run(4, 0.0, scaling, state=AutoscalerState(started_at=NOW - 300))[0] == 3


def test_upscale_waits_out_the_lowest_recommendation_of_its_period() -> None:
    scaling = spec(upscale_stabilization_period=30)
    # Sustained load of 8 against 2 replicas: the rec of 2 at t=0 holds the count until t=40. The recs
    # stored meanwhile were step-limited to 3, so the next step waits for a period of larger ones.
    counts = sequence(scaling, [2, 8, 8, 8, 8, 8, 8, 8, 8], current=2)
    assert counts == [2, 2, 2, 2, 3, 3, 3, 3, 5]


def test_upscale_is_never_held_below_the_current_count() -> None:
    state = AutoscalerState(started_at=LONG_AGO, history=(Recommendation(NOW - 10, 1),))
    requested, _, decision = run(3, 10.0, spec(upscale_stabilization_period=30), state=state)
    assert (requested, decision.upscale_ceiling) == (3, 3), "the ceiling is bounded by the current count"


def test_no_upscale_during_the_first_upscale_period_after_start() -> None:
    scaling = spec(upscale_stabilization_period=60)
    assert run(2, 8.0, scaling, state=AutoscalerState(started_at=NOW - 59))[0] == 2
    assert run(2, 8.0, scaling, state=AutoscalerState(started_at=NOW - 60))[0] == 3


def test_each_stabilization_applies_only_in_its_direction() -> None:
    high = AutoscalerState(started_at=LONG_AGO, history=(Recommendation(NOW - 10, 6),))
    assert run(2, 3.0, spec(downscale_stabilization_period=300), state=high)[0] == 3
    low = AutoscalerState(started_at=LONG_AGO, history=(Recommendation(NOW - 10, 1),))
    assert run(4, 3.0, spec(upscale_stabilization_period=300), state=low)[0] == 3


def test_periods_of_zero_follow_the_load_at_once() -> None:
    assert sequence(spec(), [8, 8, 0, 0], current=2) == [3, 5, 4, 3]


def test_scale_from_zero_is_immediate_despite_upscale_stabilization() -> None:
    scaling = spec(min_replicas=0, upscale_stabilization_period=60)
    just_started = AutoscalerState(started_at=NOW)
    requested, state, decision = run(0, 0.0, scaling, state=just_started, demand=3)
    assert requested == 1 and decision.woke_from_zero and decision.upscale_ceiling is None
    assert state.history == (Recommendation(NOW, 1),)
    # Without demand now (only a window that saw some), zero waits for the upscale period like any count.
    assert run(0, 2.0, scaling, state=just_started, demand=0)[0] == 0


def test_a_woken_api_is_not_sent_back_to_zero_within_the_downscale_period() -> None:
    scaling = spec(min_replicas=0, downscale_stabilization_period=300)
    _, state, _ = run(0, 0.0, scaling, state=AutoscalerState(started_at=LONG_AGO), demand=1)
    assert run(1, 0.0, scaling, state=state, now=NOW + 10, demand=0)[0] == 1
    assert run(1, 0.0, scaling, state=state, now=NOW + 301, demand=0)[0] == 0
