"""Cortex's replica recommendation as a pure function over explicit state and an injected `now`.

Called by controller.scaling once per autoscale interval (and at once to wake an API from zero) with the
window's average in-flight; returns the replicas to request, the next state and every intermediate value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelport.spec.model import AutoscalingSpec

# `ceil` of a float quotient must not round an exact integer up because of representation error
# (1.1 / 0.1 == 11.000000000000002); a millionth of a replica is far below anything a window can measure.
_CEIL_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class Recommendation:
    at: float  # monotonic seconds
    replicas: int


@dataclass(frozen=True, slots=True)
class AutoscalerState:
    """What the algorithm remembers between runs: when it started and its recent recommendations."""

    started_at: float  # monotonic; the "first stabilization period" rules count from here
    history: tuple[Recommendation, ...] = ()  # oldest first, none older than the longer period


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One run of the algorithm, every intermediate value kept (cortex.md 4.2, step by step)."""

    current: int
    avg_in_flight: float
    demand: int  # in-flight + held right now: with 0 replicas, any demand wakes the API
    target: float  # target_replica_concurrency
    raw: float  # avg_in_flight / target
    ceiled: int  # ceil(raw)
    within_tolerance: bool  # raw close enough to `current` to keep it
    step_floor: int  # the lowest count one step may go to (always allows -1)
    step_ceiling: int  # the highest count one step may go to (always allows +1)
    recommended: int  # after tolerance, step limits and [min, max]: what the history stores
    downscale_floor: int | None  # the floor downscale stabilization imposed, None when it did not apply
    upscale_ceiling: int | None  # the ceiling upscale stabilization imposed, None when it did not apply
    woke_from_zero: bool  # 0 replicas and demand: one replica at once, no upscale stabilization
    requested: int

    @property
    def changed(self) -> bool:
        return self.requested != self.current

    def describe(self) -> str:
        """Every value on one line, for the debug log of each run."""
        return (
            f"current {self.current}, avg in-flight {self.avg_in_flight:.3f}, demand {self.demand}, "
            f"target {self.target:g}, raw {self.raw:.3f}, ceil {self.ceiled}, "
            f"within tolerance {self.within_tolerance}, "
            f"step limits [{self.step_floor}, {self.step_ceiling}], "
            f"recommended {self.recommended}, downscale floor {self.downscale_floor}, "
            f"upscale ceiling {self.upscale_ceiling}, woke from zero {self.woke_from_zero}, "
            f"requested {self.requested}"
        )


def recommend(
    *,
    current: int,
    avg_in_flight: float,
    demand: int,
    spec: AutoscalingSpec,
    state: AutoscalerState,
    now: float,
) -> tuple[int, AutoscalerState, ScalingDecision]:
    """Replicas to request now, given `current` requested replicas and the window's average in-flight.

    Steps as Cortex: raw = avg / target; ceil; tolerance band keeps `current`; step limits; clamp to
    [min_replicas, max_replicas]; record; stabilization over the history (Cortex 0.42's form: each rule
    only in its direction, its historical bound limited by `current`).
    """
    target = spec.target_replica_concurrency
    raw = avg_in_flight / target
    ceiled = _ceil(raw)
    within_tolerance = (current * (1 - spec.downscale_tolerance) < raw < current) or (
        current < raw < current * (1 + spec.upscale_tolerance)
    )
    rec = current if within_tolerance else ceiled

    step_floor = min(current - 1, _ceil(current * spec.max_downscale_factor))
    step_ceiling = max(current + 1, _ceil(current * spec.max_upscale_factor))
    rec = max(step_floor, min(rec, step_ceiling))
    # min_replicas >= 1 keeps Cortex 0.20's "rec >= 1"; min_replicas 0 lets an idle API go to zero.
    rec = max(spec.min_replicas, min(rec, spec.max_replicas))

    # Scale from zero: requests are held in the gateway until a replica is ready, so waiting out the upscale
    # stabilization (or a window that barely saw them) would only make them time out.
    woke = current == 0 and demand > 0
    if woke:
        rec = max(rec, 1)

    horizon = max(spec.downscale_stabilization_period, spec.upscale_stabilization_period)
    history = (*(r for r in state.history if r.at >= now - horizon), Recommendation(now, rec))
    running_for = now - state.started_at

    request = rec
    downscale_floor: int | None = None
    upscale_ceiling: int | None = None
    if rec < current:
        period = spec.downscale_stabilization_period
        if running_for < period:
            downscale_floor = current  # no history yet to justify a downscale
        else:
            highest = max(r.replicas for r in history if r.at >= now - period)
            downscale_floor = min(highest, current)
        request = max(request, downscale_floor)
    elif rec > current and not woke:
        period = spec.upscale_stabilization_period
        if running_for < period:
            upscale_ceiling = current
        else:
            lowest = min(r.replicas for r in history if r.at >= now - period)
            upscale_ceiling = max(lowest, current)
        request = min(request, upscale_ceiling)

    decision = ScalingDecision(
        current=current,
        avg_in_flight=avg_in_flight,
        demand=demand,
        target=target,
        raw=raw,
        ceiled=ceiled,
        within_tolerance=within_tolerance,
        step_floor=step_floor,
        step_ceiling=step_ceiling,
        recommended=rec,
        downscale_floor=downscale_floor,
        upscale_ceiling=upscale_ceiling,
        woke_from_zero=woke,
        requested=request,
    )
    return request, AutoscalerState(started_at=state.started_at, history=history), decision


def _ceil(value: float) -> int:
    return math.ceil(value - _CEIL_SLACK)
