"""The control loop: desired APIs vs observed replicas -> rollout plans -> backend actions -> route table.

The only thing in modelport that loops. modelport.cluster wires it to a backend, the gateway and the
store, forwards deploy/delete/refresh from the control API and runs `run()`; tests drive `tick()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
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
from modelport.controller.jobs import JobScheduler, WorkerLaunch
from modelport.controller.phases import guarded_phase
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
from modelport.types import (
    ApiKind,
    ApiName,
    ApiRoute,
    ApiStatus,
    ApiTraffic,
    JobId,
    ReplicaId,
    ReplicaPhase,
    WorkloadRole,
)

DeployOutcome = Literal["created", "updated", "unchanged"]
# Kinds served by long-running replicas that the rollout planner and the autoscaler manage; batch jobs and
# tasks run workers that the job scheduler starts per job instead.
REPLICA_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})
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
        jobs: JobScheduler | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._backend = backend
        self._routes = routes
        self._traffic = traffic
        self._jobs = jobs
        self._wake: asyncio.Event | None = None  # set by run(): a command wakes the loop for its next pass
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
        self._job_logs: dict[JobId, dict[ReplicaId, Path]] = {}  # each job's workers' logs
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
        replicas = self._follow(desired)
        self._log.info(
            "%s api %s (revision %s%s): %s",
            verb,
            name,
            change,
            _short(desired.revision),
            f"{replicas} replicas" if replicas is not None else "workers start per job",
        )
        # The gateway knows the API when deploy returns: a batch, task or async API takes submissions at
        # once, a realtime one answers 503 (not ready) rather than 404 until its replicas are.
        self._guarded("publishing routes", self._publish, self._backend.observe())
        self._nudge()
        return "created" if known is None else "updated"

    def delete(self, name: ApiName) -> bool:
        if name not in self._desired:
            return False
        self._store.delete_api(name)
        del self._desired[name]
        for state in (self._backoff, self._compute, self._log_paths, self._reported):
            state.pop(name, None)
        self._autoscalers.remove(name)
        if self._jobs is not None:
            self._jobs.forget_async(name)
            self._guarded(
                f"stopping the jobs of api {name}", self._jobs.stop_all, name, "the API was deleted"
            )
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
        self._nudge()
        return refreshed

    def restore(self) -> None:
        """Load the desired state at daemon start. Replicas of a previous daemon must have been adopted by
        the backend (they then appear in observe()) or reaped by the caller before this runs."""
        for api in self._store.load_apis():
            self._desired[api.name] = api
            # The autoscaler's window and count are not persisted: a restarted daemon starts every API
            # at init_replicas again (adopted replicas above that count are stopped), as Cortex did.
            self._follow(api)
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

    def desired_api(self, name: ApiName) -> DesiredApi:
        """The API as last deployed (its spec, revision and snapshot); NotFoundError if it is not."""
        return self._require(name)

    def log_paths(self, name: ApiName, job_id: JobId | None = None) -> list[Path]:
        """The logs of an API's replicas, or of one job's workers."""
        self._require(name)
        self._remember_logs(self._backend.observe())
        if job_id is not None:
            return list(self._job_logs.get(job_id, {}).values())
        return list(self._log_paths.get(name, {}).values())

    def workers(self) -> list[ObservedReplica]:
        """Every batch worker and task process the backend knows of."""
        return [r for r in self._backend.observe() if r.role is not WorkloadRole.REPLICA]

    # ---- the loop ----

    async def run(self, stop: asyncio.Event) -> None:
        self._log.info("controller running (a pass every %.2f s)", self._tick_seconds)
        self._wake = asyncio.Event()
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # tick() guards each phase; this is the last line of defence
                self._log.exception("controller pass failed; the loop goes on")
            # The next pass comes after tick_seconds, or at once when a command changed the desired state.
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=self._tick_seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
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
                _WithQueueDemand(self._traffic, self._jobs),
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
        if self._jobs is not None:
            with self._phase("jobs"):
                self._schedule_jobs(self._jobs, observed)
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
            elif replica.phase is ReplicaPhase.EXITED and replica.role is not WorkloadRole.REPLICA:
                self._guarded(f"accounting for worker {replica.replica_id}", self._worker_exited, replica)
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
        if self._jobs is not None and self._kind(name) is ApiKind.ASYNC:
            self._jobs.release_async_leases(replica)
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
        live = [
            r
            for r in observed
            if r.phase in LIVE_PHASES
            and r.replica_id not in self._stopping
            and r.role is WorkloadRole.REPLICA
        ]
        for name, desired in self._desired.items():
            if desired.spec.kind not in REPLICA_KINDS:
                continue
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
            own = [r for r in observed if r.api_name == name and r.role is WorkloadRole.REPLICA]
            _, report = self._assess(desired, own)
            self._report(name, report)
            routes[name] = build_route(desired, own, report=report, stopping=self._stopping)
        if routes != self._published:
            self._routes.publish(routes)
            self._published = routes  # never mutated afterwards: the gateway may keep the mapping

    def _worker_exited(self, worker: ObservedReplica) -> None:
        rid = worker.replica_id
        self._backend.forget(rid)
        asked = rid in self._stopping
        self._stopping.discard(rid)
        if worker.exit_code == 0 or asked:
            self._log.info("worker %s of job %s exited (code %s)", rid, worker.job_id, worker.exit_code)
        else:
            self._log.warning("worker %s of job %s exited with code %s", rid, worker.job_id, worker.exit_code)
        if self._jobs is not None:
            self._jobs.worker_exited(worker, asked=asked)
        self._store.forget_replica(rid)

    def _schedule_jobs(self, jobs: JobScheduler, observed: Sequence[ObservedReplica]) -> None:
        workers = [r for r in observed if r.role is not WorkloadRole.REPLICA]
        plan = jobs.reconcile(workers=workers, stopping=frozenset(self._stopping), desired=self._desired)
        self._apply_stops([_Stop(stop.replica, stop.reason) for stop in plan.stops], observed)
        for launch in plan.launches:
            self._guarded(f"starting workers of job {launch.job.job_id}", self._start_workers, jobs, launch)

    def _start_workers(self, jobs: JobScheduler, launch: WorkerLaunch) -> None:
        job = launch.job
        desired = self._desired.get(job.api_name)
        if desired is None:
            return
        launched: list[ReplicaId] = []
        try:
            for _ in range(launch.count):
                verdict = self._backend.check_compute(desired.spec)
                if not verdict.fits:
                    jobs.note_waiting(job.job_id, f"compute unavailable: {verdict.missing}")
                    return
                jobs.note_waiting(job.job_id, None)
                rid = ReplicaId(f"{job.api_name}-{job.job_id}-{secrets.token_hex(3)}")
                self._log.info("starting worker %s of job %s (api %s)", rid, job.job_id, job.api_name)
                self._backend.launch(
                    ReplicaLaunch(
                        replica_id=rid,
                        api_name=desired.name,
                        revision=desired.revision,
                        generation=desired.generation,
                        project_dir=desired.project_dir,
                        spec_path=desired.spec_path,
                        spec=desired.spec,
                        role=launch.role,
                        job_id=job.job_id,
                    )
                )
                launched.append(rid)
        finally:
            self._record(launched)

    def _follow(self, desired: DesiredApi) -> int | None:
        """Register a deployed or restored API with the autoscaler (replica kinds) and the async queue;
        returns its replica count, None for kinds without replicas."""
        if self._jobs is not None:
            self._jobs.configure_async(desired)
        if desired.spec.kind not in REPLICA_KINDS:
            self._autoscalers.remove(desired.name)
            return None
        return self._autoscalers.deploy(desired.name, desired.spec.autoscaling, now=self._clock.monotonic())

    def _kind(self, name: ApiName) -> ApiKind | None:
        desired = self._desired.get(name)
        return None if desired is None else desired.spec.kind

    # ---- helpers ----

    def _nudge(self) -> None:
        """Run the next pass now, not after the tick interval: a deploy starts its replicas at once."""
        if self._wake is not None:
            self._wake.set()

    def _assess(
        self, desired: DesiredApi, own: Sequence[ObservedReplica]
    ) -> tuple[ReplicaCounts, StatusReport]:
        name = desired.name
        if desired.spec.kind not in REPLICA_KINDS:
            # A batch or task API has no replicas: it takes submissions whenever it is deployed.
            return ReplicaCounts(requested=0, up_to_date=0, stale=0, current_live=0), StatusReport(
                ApiStatus.LIVE
            )
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
        own = [r for r in observed if r.api_name == name and r.role is WorkloadRole.REPLICA]
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
            if replica.log_path is None or replica.api_name not in self._desired:
                continue
            if replica.job_id is not None:
                self._job_logs.setdefault(replica.job_id, {})[replica.replica_id] = replica.log_path
            else:
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

    def _phase(self, phase: str) -> contextlib.AbstractContextManager[None]:
        return guarded_phase(phase, clock=self._clock, log=self._log, slow_seconds=SLOW_PHASE_SECONDS)

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


class _WithQueueDemand:
    """The autoscaler's traffic: the gateway's counters, plus each AsyncAPI's queued and in-progress
    requests counted as held (they wait for a replica the way held requests do)."""

    def __init__(self, traffic: TrafficSource, jobs: JobScheduler | None) -> None:
        self._traffic = traffic
        self._jobs = jobs

    def traffic(self) -> Mapping[ApiName, ApiTraffic]:
        counters = self._traffic.traffic()
        if self._jobs is None:
            return counters
        demand = self._jobs.async_demand()
        if not demand:
            return counters
        merged = dict(counters)
        for name, queued in demand.items():
            base = merged.get(name) or ApiTraffic(api_name=name)
            merged[name] = replace(base, held=base.held + queued)
        return merged
