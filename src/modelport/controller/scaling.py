"""One API's autoscaling bookkeeping: the in-flight window, the autoscaler's state, the requested count and
the recent scaling events. Owned by controller.loop, which samples and runs it from its ticks.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from modelport.controller.autoscaler import AutoscalerState, ScalingDecision, recommend
from modelport.controller.ports import TrafficSource
from modelport.spec.model import AutoscalingSpec
from modelport.types import ApiName

SAMPLE_SECONDS = 1.0  # Cortex's request monitor samples in-flight once a second
MAX_EVENTS = 20  # recent events kept per API for `describe`


@dataclass(frozen=True, slots=True)
class AutoscalingEvent:
    """A decision that changed an API's requested replicas."""

    at: float  # wall clock, seconds since the epoch
    from_replicas: int
    to_replicas: int
    avg_in_flight: float
    target: float

    def describe(self) -> str:
        return (
            f"autoscaling event: {self.from_replicas} -> {self.to_replicas} "
            f"(in-flight {self.avg_in_flight:.1f}, target {self.target:g})"
        )


def starting_replicas(spec: AutoscalingSpec, *, previous: int | None = None) -> int:
    """Replicas requested when an API is deployed: init_replicas, or on an update the count the autoscaler
    had reached (a redeploy under load must not shrink the API; Cortex keeps the Deployment's replicas the
    same way), within the new [min, max] either way."""
    start = previous if previous else spec.init_replicas
    return max(spec.min_replicas, min(start, spec.max_replicas))


class ApiScaler:
    """Window of 1-second in-flight samples plus the autoscaler's state for one API.

    Nothing here is persisted: a restarted daemon starts every API again at init_replicas with an empty
    window, as Cortex's operator did when it restarted.
    """

    __slots__ = ("_events", "_interval", "_next_run", "_requested", "_samples", "_spec", "_state", "held_by")

    def __init__(self, spec: AutoscalingSpec, *, now: float, interval: float, requested: int) -> None:
        self._interval = interval
        self._spec = spec
        self._requested = requested
        self._samples: deque[int] = deque(maxlen=_window_samples(spec))
        self._state = AutoscalerState(started_at=now)
        self._next_run = now + interval
        self._events: deque[AutoscalingEvent] = deque(maxlen=MAX_EVENTS)
        self.held_by: str | None = None  # why the loop keeps the count as it is, None while it does not

    @property
    def requested(self) -> int:
        return self._requested

    @property
    def events(self) -> tuple[AutoscalingEvent, ...]:
        return tuple(self._events)

    @property
    def average(self) -> float | None:
        """Average in-flight over the window's samples so far; None before the first sample."""
        if not self._samples:
            return None
        return sum(self._samples) / len(self._samples)

    def respec(self, spec: AutoscalingSpec) -> None:
        """A new revision of the API: keep the window's newest samples, the history and the count."""
        self._spec = spec
        self._samples = deque(self._samples, maxlen=_window_samples(spec))
        self._requested = starting_replicas(spec, previous=self._requested)

    def sample(self, demand: int) -> None:
        self._samples.append(demand)

    def due(self, now: float) -> bool:
        return now >= self._next_run

    def postpone(self, now: float) -> None:
        """Skip this run (the loop holds the count of a broken API); try again an interval later."""
        self._next_run = now + self._interval

    def run(self, *, now: float, wall: float, demand: int) -> tuple[ScalingDecision, AutoscalingEvent | None]:
        """Run the autoscaler now; returns its decision and, when the count changed, the event recorded."""
        self._next_run = now + self._interval
        average = self.average
        requested, self._state, decision = recommend(
            current=self._requested,
            avg_in_flight=0.0 if average is None else average,
            demand=demand,
            spec=self._spec,
            state=self._state,
            now=now,
        )
        if not decision.changed:
            return decision, None
        event = AutoscalingEvent(
            at=wall,
            from_replicas=decision.current,
            to_replicas=requested,
            avg_in_flight=decision.avg_in_flight,
            target=decision.target,
        )
        self._requested = requested
        self._events.append(event)
        return decision, event


class Autoscalers:
    """Every API's ApiScaler: in-flight sampled once a second, the autoscaler run every `interval` seconds,
    and at once for an API at zero replicas whose requests the gateway holds.

    `tick()` runs on every controller pass, so it does O(APIs) work and reads the gateway's counters only
    when a sample or a run is due, or an API at zero replicas may need waking.
    """

    def __init__(self, *, interval: float, log: logging.Logger) -> None:
        if interval <= 0:
            raise ValueError(f"the autoscale interval must be > 0 s, got {interval}")
        self._interval = interval
        self._log = log
        self._scalers: dict[ApiName, ApiScaler] = {}
        self._next_sample = -math.inf

    def deploy(self, name: ApiName, spec: AutoscalingSpec, *, now: float) -> int:
        """Start scaling a new API at init_replicas, or carry an updated one over; returns its count."""
        scaler = self._scalers.get(name)
        if scaler is None:
            scaler = ApiScaler(spec, now=now, interval=self._interval, requested=starting_replicas(spec))
            self._scalers[name] = scaler
        else:
            scaler.respec(spec)
        return scaler.requested

    def adopt(self, name: ApiName, spec: AutoscalingSpec, *, now: float, replicas: int) -> int:
        """Start scaling an API that already runs `replicas` (found in a cluster, e.g. by a controller that
        just took over): the count is kept, within [min, max], rather than reset to init_replicas.
        Returns its count."""
        requested = max(spec.min_replicas, min(replicas, spec.max_replicas))
        self._scalers[name] = ApiScaler(spec, now=now, interval=self._interval, requested=requested)
        return requested

    def remove(self, name: ApiName) -> None:
        self._scalers.pop(name, None)

    def names(self) -> frozenset[ApiName]:
        return frozenset(self._scalers)

    def requested(self, name: ApiName) -> int:
        return self._scalers[name].requested

    def events(self, name: ApiName) -> tuple[AutoscalingEvent, ...]:
        scaler = self._scalers.get(name)
        return () if scaler is None else scaler.events

    def tick(
        self,
        traffic: TrafficSource,
        *,
        now: float,
        wall: float,
        hold_reason: Callable[[ApiName], str | None],
    ) -> None:
        """Sample and run what is due. `hold_reason(name)` says why an API's count must stay as it is
        (its replicas crash or do not fit): more of them would only be more broken replicas, so the
        autoscaler neither adds nor removes any; the backoff and the compute check gate the launches."""
        sample = now >= self._next_sample
        if not (sample or any(s.requested == 0 or s.due(now) for s in self._scalers.values())):
            return
        counters = traffic.traffic()
        if sample:
            # On schedule without drift; after a stall (a slow pass) one sample, not a burst of them.
            following = self._next_sample + SAMPLE_SECONDS
            self._next_sample = following if following > now else now + SAMPLE_SECONDS
            for name, scaler in self._scalers.items():
                counter = counters.get(name)
                scaler.sample(0 if counter is None else counter.demand)
        for name, scaler in self._scalers.items():
            counter = counters.get(name)
            wake = scaler.requested == 0 and counter is not None and counter.held > 0
            if not (wake or scaler.due(now)):
                continue
            try:
                self._run(
                    name,
                    scaler,
                    now=now,
                    wall=wall,
                    demand=0 if counter is None else counter.demand,
                    hold_reason=None if wake else hold_reason(name),
                )
            except Exception:
                scaler.postpone(now)
                self._log.exception("autoscaling api %s failed; it keeps %d replicas", name, scaler.requested)

    def _run(
        self,
        name: ApiName,
        scaler: ApiScaler,
        *,
        now: float,
        wall: float,
        demand: int,
        hold_reason: str | None,
    ) -> None:
        if hold_reason != scaler.held_by:
            scaler.held_by = hold_reason
            if hold_reason is None:
                self._log.info("api %s: autoscaling resumes", name)
            else:
                self._log.info(
                    "api %s: autoscaling keeps %d replicas: %s", name, scaler.requested, hold_reason
                )
        if hold_reason is not None:
            scaler.postpone(now)
            return
        decision, event = scaler.run(now=now, wall=wall, demand=demand)
        self._log.debug("api %s: autoscaler: %s", name, decision.describe())
        if event is not None:
            # The API's name first: the daemon's log interleaves every API's events.
            self._log.info("api %s: %s", name, event.describe())
            if decision.woke_from_zero:
                self._log.info("api %s: %d held requests wake it from zero", name, demand)


def _window_samples(spec: AutoscalingSpec) -> int:
    return max(1, round(spec.window / SAMPLE_SECONDS))
