"""The control loop: desired APIs vs observed replicas -> rollout plans -> backend actions -> route table.

The only thing in modelport that loops. modelport.cluster wires it to a backend, the gateway and the
store, forwards deploy/delete/refresh from the control API and runs `run()`; tests drive `tick()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, ParamSpec

from modelport.clock import Clock
from modelport.controller.backoff import (
    BackoffPolicy,
    RestartBackoff,
    may_start,
    record_failure,
    record_ready,
)
from modelport.controller.plan import LIVE_PHASES, Target, plan_rollout
from modelport.controller.ports import (
    Backend,
    ComputeVerdict,
    DesiredApi,
    ObservedReplica,
    ReplicaLaunch,
    RouteSink,
    StateStore,
    TrafficSource,
)
from modelport.controller.scaling import Autoscalers
from modelport.controller.status import ReplicaCounts, StatusReport, count_replicas, derive_status
from modelport.controller.views import ApiView, build_api_view, build_route
from modelport.errors import NotFoundError
from modelport.types import ApiName, ApiRoute, ApiStatus, ApiTraffic, ReplicaId, ReplicaPhase

DeployOutcome = Literal["created", "updated", "unchanged"]
P = ParamSpec("P")

SLOW_PHASE_SECONDS = 1.0  # a phase slower than this is logged: the loop should turn many times a second


@dataclass(frozen=True, slots=True)
class _Stop:
    replica: ObservedReplica
    reason: str


class Controller:
    def __init__(
        self,
        *,
        backend: Backend,
        routes: RouteSink,
        traffic: TrafficSource,
        store: StateStore,
        clock: Clock,
        tick_seconds: float = 0.1,
        drain_grace_seconds: float = 30.0,
        autoscale_interval_seconds: float = 10.0,
        backoff: BackoffPolicy | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._backend = backend
        self._routes = routes
        self._traffic = traffic
        self._store = store
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._drain_grace = drain_grace_seconds
        self._policy = backoff or BackoffPolicy()
        self._log = logger or logging.getLogger("modelport.controller")
        self._desired: dict[ApiName, DesiredApi] = {}
        # Replicas the controller asked to stop: their exit is not a crash, and they leave the route table
        # before they are sent SIGTERM.
        self._stopping: set[ReplicaId] = set()
        self._seen_ready: set[ReplicaId] = set()  # to notice a replica *becoming* ready
        self._backoff: dict[ApiName, RestartBackoff] = {}  # of each API's current target only
        self._compute: dict[ApiName, ComputeVerdict] = {}  # set while a wanted start does not fit
        self._log_paths: dict[ApiName, dict[ReplicaId, Path]] = {}  # exited replicas' logs stay readable
        self._published: Mapping[ApiName, ApiRoute] = {}
        self._reported: dict[ApiName, StatusReport] = {}
        # Each API's requested replicas, decided by the autoscaler every `autoscale_interval_seconds`
        # (Cortex's operator: every 10 s) from in-flight sampled once a second.
        self._autoscalers = Autoscalers(interval=autoscale_interval_seconds, log=self._log)

    # ---- commands (from the control API; each returns once the desired state is durable) ----

    def deploy(self, desired: DesiredApi) -> DeployOutcome:
        name = desired.name
        known = self._desired.get(name)
        if known is not None and known.revision == desired.revision:
            self._log.info("api %s is up to date (revision %s)", name, _short(desired.revision))
            return "unchanged"
        self._store.save_api(desired)  # first: if it fails, nothing changed
        self._desired[name] = desired
        self._new_target(name)
        verb, change = ("creating", "") if known is None else ("updating", f"{_short(known.revision)} -> ")
        replicas = self._autoscalers.deploy(name, desired.spec.autoscaling, now=self._clock.monotonic())
        self._log.info(
            "%s api %s (revision %s%s): %d replicas", verb, name, change, _short(desired.revision), replicas
        )
        return "created" if known is None else "updated"

    def delete(self, name: ApiName) -> bool:
        if name not in self._desired:
            return False
        self._store.delete_api(name)
        del self._desired[name]
        for state in (self._backoff, self._compute, self._log_paths, self._reported):
            state.pop(name, None)
        self._autoscalers.remove(name)
        self._log.info("deleting api %s", name)
        # The API is gone from the desired state; should this clean-up fail, the next tick redoes it.
        try:
            observed = self._backend.observe()
            stops = [
                _Stop(r, "api deleted")
                for r in observed
                if r.api_name == name and r.phase in LIVE_PHASES and r.replica_id not in self._stopping
            ]
            self._apply_stops(stops, observed)
            self._publish(observed)  # the route goes now, even when the API had no replica to stop
        except Exception:
            self._log.exception("stopping the replicas of deleted api %s failed; retrying next tick", name)
        return True

    def refresh(self, name: ApiName) -> DesiredApi:
        known = self._require(name)
        refreshed = replace(known, generation=known.generation + 1, deployed_at=self._clock.wall())
        self._store.save_api(refreshed)
        self._desired[name] = refreshed
        self._new_target(name)
        self._log.info(
            "refreshing api %s: replacing every replica (generation %d)", name, refreshed.generation
        )
        return refreshed

    def restore(self) -> None:
        """Load the desired state at daemon start. Replicas of a previous daemon must have been adopted by
        the backend (they then appear in observe()) or reaped by the caller before this runs."""
        for api in self._store.load_apis():
            self._desired[api.name] = api
            # The autoscaler's window and count are not persisted: a restarted daemon starts every API
            # at init_replicas again (adopted replicas above that count are stopped), as Cortex did.
            self._autoscalers.deploy(api.name, api.spec.autoscaling, now=self._clock.monotonic())
            self._log.info("restored api %s (revision %s)", api.name, _short(api.revision))
        running = {r.replica_id for r in self._backend.observe()}
        for record in self._store.load_replicas():
            if record.replica_id not in running:
                self._log.info(
                    "forgetting replica %s of api %s: not running any more",
                    record.replica_id,
                    record.api_name,
                )
                self._store.forget_replica(record.replica_id)

    # ---- read models ----

    def api(self, name: ApiName) -> ApiView:
        desired = self._require(name)
        return self._view(desired, self._backend.observe(), self._traffic.traffic())

    def apis(self) -> list[ApiView]:
        observed, traffic = self._backend.observe(), self._traffic.traffic()
        return [self._view(self._desired[name], observed, traffic) for name in sorted(self._desired)]

    def log_paths(self, name: ApiName) -> list[Path]:
        self._require(name)
        self._remember_logs(self._backend.observe())
        return list(self._log_paths.get(name, {}).values())

    # ---- the loop ----

    async def run(self, stop: asyncio.Event) -> None:
        self._log.info("controller running (a pass every %.2f s)", self._tick_seconds)
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # tick() guards each phase; this is the last line of defence
                self._log.exception("controller pass failed; the loop goes on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._tick_seconds)
        self._log.info("controller stopped")

    async def shutdown(self) -> None:
        self._log.info("stopping every replica (drain grace %.0f s)", self._drain_grace)
        await self._backend.shutdown(grace_seconds=self._drain_grace)

    async def tick(self) -> None:
        """One reconcile pass: observe -> account -> autoscale -> plan -> apply -> publish, each phase
        guarded."""
        observed: Sequence[ObservedReplica] | None = None
        with self._phase("poll"):
            await self._backend.poll()
        with self._phase("observe"):
            observed = self._backend.observe()
        if observed is None:
            return  # without observations every decision would be a guess
        with self._phase("account"):
            self._account(observed)
        seen = observed  # narrowed to a Sequence for the closure below
        with self._phase("autoscale"):
            self._autoscalers.tick(
                self._traffic,
                now=self._clock.monotonic(),
                wall=self._clock.wall(),
                hold_reason=lambda name: self._hold_reason(name, seen),
            )
        stops: list[_Stop] = []
        launches: dict[ApiName, int] = {}
        with self._phase("plan"):
            stops, launches = self._plan(observed)
        with self._phase("apply"):
            self._apply_stops(stops, observed)
            for name, count in launches.items():
                self._guarded(f"starting replicas of api {name}", self._start, self._desired[name], count)
        with self._phase("publish"):
            self._publish(self._backend.observe())

    # ---- phases ----

    def _account(self, observed: Sequence[ObservedReplica]) -> None:
        """Crashes feed the backoff, first readiness resets it, exited replicas are forgotten."""
        self._remember_logs(observed)
        for replica in observed:
            if replica.phase is ReplicaPhase.READY and replica.replica_id not in self._seen_ready:
                self._seen_ready.add(replica.replica_id)
                self._became_ready(replica)
            elif replica.phase is ReplicaPhase.EXITED:
                self._guarded(f"accounting for replica {replica.replica_id}", self._exited, replica)

    def _became_ready(self, replica: ObservedReplica) -> None:
        self._log.info("replica %s of api %s is ready", replica.replica_id, replica.api_name)
        desired = self._desired.get(replica.api_name)
        if desired is not None and Target.of(desired).matches(replica) and replica.api_name in self._backoff:
            self._backoff[replica.api_name] = record_ready(self._backoff[replica.api_name])

    def _exited(self, replica: ObservedReplica) -> None:
        rid, name = replica.replica_id, replica.api_name
        # Forget in the backend first: should that fail, the exit is seen (and counted) again next tick.
        self._backend.forget(rid)
        asked = rid in self._stopping
        was_ready = replica.ready_at is not None or rid in self._seen_ready
        self._stopping.discard(rid)
        self._seen_ready.discard(rid)
        if asked:
            self._log.info("replica %s of api %s stopped (exit code %s)", rid, name, replica.exit_code)
        else:
            self._log.warning("replica %s of api %s exited with code %s", rid, name, replica.exit_code)
            desired = self._desired.get(name)
            # Only the current target restarts; replicas of an older one are being replaced anyway.
            if desired is not None and Target.of(desired).matches(replica):
                state = record_failure(
                    self._backoff.get(name, RestartBackoff()),
                    now=self._clock.monotonic(),
                    exit_code=replica.exit_code,
                    was_ready=was_ready,
                )
                self._backoff[name] = state
                self._log.info(
                    "api %s: %d consecutive failures, next replica in %.0f s",
                    name,
                    state.failures,
                    self._policy.delay(state.failures),
                )
        self._store.forget_replica(rid)

    def _plan(self, observed: Sequence[ObservedReplica]) -> tuple[list[_Stop], dict[ApiName, int]]:
        stops: list[_Stop] = []
        launches: dict[ApiName, int] = {}
        live = [r for r in observed if r.phase in LIVE_PHASES and r.replica_id not in self._stopping]
        for name, desired in self._desired.items():
            try:
                own = [r for r in live if r.api_name == name]
                replicas = self._autoscalers.requested(name)
                strategy = desired.spec.update_strategy
                plan = plan_rollout(
                    own,
                    desired=replicas,
                    target=Target.of(desired),
                    max_surge=strategy.surge_for(replicas),
                    max_unavailable=strategy.unavailable_for(replicas),
                )
            except Exception:
                self._log.exception("planning api %s failed; it is left as it is this pass", name)
                continue
            by_id = {r.replica_id: r for r in own}
            stops.extend(
                _Stop(by_id[rid], _stop_reason(by_id[rid], desired, requested=replicas)) for rid in plan.stop
            )
            if plan.start:
                launches[name] = plan.start
        # Replicas of APIs nobody wants (deleted, or left by a previous daemon).
        stops.extend(_Stop(r, "api deleted") for r in live if r.api_name not in self._desired)
        return stops, launches

    def _apply_stops(self, stops: Sequence[_Stop], observed: Sequence[ObservedReplica]) -> None:
        if not stops:
            return
        for stop in stops:
            self._stopping.add(stop.replica.replica_id)
        # The gateway learns before SIGTERM, so no request is sent to a replica that refuses connections.
        self._guarded("publishing routes", self._publish, observed)
        for stop in stops:
            rid = stop.replica.replica_id
            self._log.info("stopping replica %s of api %s (%s)", rid, stop.replica.api_name, stop.reason)
            try:
                self._backend.terminate(rid, grace_seconds=self._drain_grace)
            except Exception:
                self._stopping.discard(rid)  # not stopping after all: the next plan decides again
                self._log.exception("stopping replica %s failed", rid)

    def _start(self, desired: DesiredApi, count: int) -> None:
        name = desired.name
        backoff = self._backoff.get(name)
        if backoff is not None and not may_start(backoff, self._policy, now=self._clock.monotonic()):
            return  # crashed recently: wait out the delay
        launched: list[ReplicaId] = []
        try:
            for _ in range(count):
                verdict = self._backend.check_compute(desired.spec)
                if not verdict.fits:
                    if self._compute.get(name) != verdict:
                        self._log.warning("cannot start a replica of api %s: %s", name, verdict.missing)
                    self._compute[name] = verdict
                    return
                self._compute.pop(name, None)
                launched.append(self._launch(desired))
        finally:
            self._record(launched)

    def _launch(self, desired: DesiredApi) -> ReplicaId:
        rid = ReplicaId(f"{desired.name}-{desired.revision[:6]}-{secrets.token_hex(3)}")
        self._log.info(
            "starting replica %s of api %s (revision %s)", rid, desired.name, _short(desired.revision)
        )
        self._backend.launch(
            ReplicaLaunch(
                replica_id=rid,
                api_name=desired.name,
                revision=desired.revision,
                generation=desired.generation,
                project_dir=desired.project_dir,
                spec_path=desired.spec_path,
                spec=desired.spec,
            )
        )
        return rid

    def _record(self, launched: Sequence[ReplicaId]) -> None:
        if not launched:
            return
        wanted = set(launched)
        observed = [r for r in self._backend.observe() if r.replica_id in wanted]
        self._remember_logs(observed)
        for replica in observed:
            self._store.record_replica(replica)

    def _publish(self, observed: Sequence[ObservedReplica]) -> None:
        routes: dict[ApiName, ApiRoute] = {}
        for name, desired in sorted(self._desired.items()):
            own = [r for r in observed if r.api_name == name]
            _, report = self._assess(desired, own)
            self._report(name, report)
            routes[name] = build_route(desired, own, report=report, stopping=self._stopping)
        if routes != self._published:
            self._routes.publish(routes)
            self._published = routes  # never mutated afterwards: the gateway may keep the mapping

    # ---- helpers ----

    def _assess(
        self, desired: DesiredApi, own: Sequence[ObservedReplica]
    ) -> tuple[ReplicaCounts, StatusReport]:
        name = desired.name
        counts = count_replicas(
            (r for r in own if r.replica_id not in self._stopping),
            target=Target.of(desired),
            requested=self._autoscalers.requested(name),
        )
        report = derive_status(
            counts,
            api_name=name,
            min_replicas=desired.spec.autoscaling.min_replicas,
            backoff=self._backoff.get(name, RestartBackoff()),
            policy=self._policy,
            compute=self._compute.get(name),
        )
        return counts, report

    def _hold_reason(self, name: ApiName, observed: Sequence[ObservedReplica]) -> str | None:
        """Why the autoscaler must keep an API's count as it is, None when nothing holds it.

        Replicas that crash on start or do not fit would only multiply: the count stays, and the restart
        backoff and the compute check (in _start) decide when the replicas it asks for may start."""
        desired = self._desired.get(name)
        if desired is None:
            return None
        counts, report = self._assess(desired, [r for r in observed if r.api_name == name])
        if report.status is ApiStatus.COMPUTE_UNAVAILABLE:
            return f"compute unavailable ({report.reason})"
        backoff = self._backoff.get(name)
        if report.status is ApiStatus.ERROR or (
            backoff is not None and backoff.never_ready_failures > 0 and counts.up_to_date == 0
        ):
            return "its replicas fail to start"
        return None

    def _report(self, name: ApiName, report: StatusReport) -> None:
        if self._reported.get(name) == report:
            return
        self._reported[name] = report
        if report.status is ApiStatus.LIVE:
            self._log.info("api %s is live", name)
        elif report.status is ApiStatus.UPDATING:
            self._log.info("api %s is updating", name)
        elif report.status is ApiStatus.SCALED_TO_ZERO:
            self._log.info("api %s is scaled to zero", name)
        else:
            self._log.warning("api %s: %s: %s", name, report.status, report.reason)

    def _view(
        self, desired: DesiredApi, observed: Sequence[ObservedReplica], traffic: Mapping[ApiName, ApiTraffic]
    ) -> ApiView:
        name = desired.name
        own = [r for r in observed if r.api_name == name]
        counts, report = self._assess(desired, own)
        return build_api_view(
            desired,
            own,
            counts=counts,
            report=report,
            stopping=self._stopping,
            restarts=self._backoff.get(name, RestartBackoff()).failures,
            traffic=traffic.get(name) or ApiTraffic(api_name=name),
            events=self._autoscalers.events(name),
        )

    def _remember_logs(self, observed: Sequence[ObservedReplica]) -> None:
        for replica in observed:
            if replica.log_path is not None and replica.api_name in self._desired:
                self._log_paths.setdefault(replica.api_name, {})[replica.replica_id] = replica.log_path

    def _new_target(self, name: ApiName) -> None:
        # A new revision or generation starts with a clean slate: the fix may be in it.
        self._backoff.pop(name, None)
        self._compute.pop(name, None)

    def _require(self, name: ApiName) -> DesiredApi:
        desired = self._desired.get(name)
        if desired is None:
            raise NotFoundError(f"api {name} is not deployed (see `modelport get`)")
        return desired

    @contextlib.contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        started = self._clock.monotonic()
        try:
            yield
        except Exception:
            self._log.exception("controller phase %s failed; the loop goes on", phase)
        finally:
            elapsed = self._clock.monotonic() - started
            if elapsed > SLOW_PHASE_SECONDS:
                self._log.warning("controller phase %s took %.1f s", phase, elapsed)

    def _guarded(self, what: str, action: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        try:
            action(*args, **kwargs)
        except Exception:
            self._log.exception("%s failed; the loop goes on", what)


def _stop_reason(replica: ObservedReplica, desired: DesiredApi, *, requested: int) -> str:
    if replica.revision != desired.revision:
        return "old revision"
    if replica.generation != desired.generation:
        return "refresh"
    return f"scaling down to {requested}"


def _short(revision: str) -> str:
    return revision[:6]
