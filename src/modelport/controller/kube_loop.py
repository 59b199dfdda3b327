"""The in-cluster control loop: while this pod leads, observe the namespace's APIs -> publish routes to the
in-process gateway from ready endpoints -> autoscale on the gateway's traffic -> scale Deployments through
the scale subresource -> run batch jobs and tasks as Kubernetes Jobs.

Run by modelport.cluster.kube_daemon (`modelport cluster run --backend kubernetes`), which wires it to the
namespace (controller/kube_ports.py `ServingCluster`), the Lease (controller/leader.py), the gateway and
the job scheduler; tests drive `tick()` on a FakeClock.

What it leaves to Kubernetes: creating and replacing pods, rolling updates (the Deployment's strategy),
restarts (the kubelet), readiness (probes, EndpointSlices), a job's pods (the Job controller). The desired
state is the namespace itself (the spec ConfigMaps `modelport deploy` applies), so a controller that takes
over needs nothing from the one before it: it adopts every API at the replica count its Deployment has.

Every call to the API server runs in a worker thread, so the gateway on the same event loop never waits for
one; the loop's own state is touched only on the event loop. Each phase is guarded and timed; the loop never
dies of one error, and a failed observation changes nothing (no routes are withdrawn, no job is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from modelport.clock import Clock
from modelport.controller.jobs import JobScheduler
from modelport.controller.jobstore import JobRecord
from modelport.controller.kube_ports import DeployedApi, JobWorkers, ServingCluster
from modelport.controller.leader import LeaderElector
from modelport.controller.phases import guarded_phase
from modelport.controller.ports import DesiredApi, ObservedReplica, RouteSink, TrafficSource
from modelport.controller.scaling import Autoscalers
from modelport.controller.views import route_of
from modelport.errors import NotFoundError
from modelport.types import (
    ApiKind,
    ApiName,
    ApiRoute,
    ApiStatus,
    ApiTraffic,
    JobId,
    JobStatus,
    ReplicaId,
    ReplicaPhase,
    ReplicaTarget,
    Revision,
    WorkloadRole,
)

REPLICA_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})  # a Deployment the autoscaler scales
JOB_KINDS = frozenset({ApiKind.BATCH, ApiKind.TASK})
# Jobs whose workers this controller stops by deleting the Kubernetes Job; the workers of a job that ended
# by itself are told to stop by the worker protocol and exit 0, keeping their pods' logs for `logs`.
STOPPED_JOB_STATUSES = frozenset({JobStatus.STOPPED, JobStatus.TIMED_OUT, JobStatus.WORKER_ERROR})
SLOW_PHASE_SECONDS = 5.0  # a phase slower than this is logged (each one waits for the API server)


@dataclass(frozen=True, slots=True)
class _Observation:
    """One pass's reading of the namespace (made in a worker thread, read on the event loop)."""

    apis: tuple[DeployedApi, ...]
    endpoints: Mapping[ApiName, tuple[ReplicaTarget, ...]]  # only the APIs whose endpoints could be read
    workers: JobWorkers | None  # None: not asked (no scheduler) or could not be read


@dataclass(frozen=True, slots=True)
class _Scale:
    api: ApiName
    current: int
    wanted: int


@dataclass(frozen=True, slots=True)
class _JobStart:
    desired: DesiredApi
    job: JobRecord
    workers: int


@dataclass(frozen=True, slots=True)
class _JobActions:
    starts: tuple[_JobStart, ...] = ()
    stops: tuple[JobId, ...] = ()


@dataclass(frozen=True, slots=True)
class _JobOutcome:
    stopped: frozenset[JobId] = frozenset()


@dataclass(slots=True)
class _JobBook:
    """What the leader remembers of jobs between passes (nothing of it is needed by a successor)."""

    adopted: bool = False  # the first listing of this term has been accounted
    accounted: set[ReplicaId] = field(default_factory=set)  # exited worker pods already counted
    stopped: set[JobId] = field(default_factory=set)  # Jobs deleted to stop their workers


class KubeController:
    def __init__(
        self,
        *,
        cluster: ServingCluster,
        leader: LeaderElector,
        routes: RouteSink,
        traffic: TrafficSource,
        clock: Clock,
        tick_seconds: float = 1.0,
        autoscale_interval_seconds: float = 10.0,
        jobs: JobScheduler | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._cluster = cluster
        self._leader = leader
        self._routes = routes
        self._traffic = traffic
        self._clock = clock
        self._tick_seconds = tick_seconds
        self._jobs = jobs
        self._log = logger or logging.getLogger("modelport.controller.kube")
        self._acting = False
        self._autoscalers = Autoscalers(interval=autoscale_interval_seconds, log=self._log)
        self._followed: dict[ApiName, Revision] = {}
        self._observed: _Observation | None = None
        self._published: Mapping[ApiName, ApiRoute] | None = None
        self._book = _JobBook()
        self._unreadable: frozenset[ApiName] = frozenset()

    # ---- read models (the control API and the job routes; event loop only) ----

    @property
    def is_leader(self) -> bool:
        return self._acting

    @property
    def identity(self) -> str:
        return self._leader.identity

    @property
    def leader_identity(self) -> str | None:
        """Who holds the Lease, as last read (None: nobody, or it could not be read yet)."""
        return self._leader.holder

    def deployed_apis(self) -> list[DeployedApi]:
        """The APIs as the last pass saw them (empty while standing by)."""
        return [] if self._observed is None else list(self._observed.apis)

    def desired_api(self, name: ApiName) -> DesiredApi:
        """The API as deployed in the namespace; NotFoundError when it is not (or its spec is unreadable)."""
        for api in self.deployed_apis():
            if api.name == name and api.desired is not None:
                return api.desired
        raise NotFoundError(f"api {name} is not deployed in this namespace (see `modelport get --env ENV`)")

    def workers(self) -> list[ObservedReplica]:
        """The pods of every job's workers, as the last pass saw them."""
        workers = None if self._observed is None else self._observed.workers
        return [] if workers is None else list(workers.pods)

    def requested(self, name: ApiName) -> int | None:
        """The replica count the autoscaler asks of an API; None for one it does not scale."""
        return self._autoscalers.requested(name) if name in self._autoscalers.names() else None

    # ---- the loop ----

    async def run(self, stop: asyncio.Event) -> None:
        self._log.info(
            "controller %s running (a pass every %.2f s, leading only with the Lease)",
            self._leader.identity,
            self._tick_seconds,
        )
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # tick() guards each phase; this is the last line of defence
                self._log.exception("controller pass failed; the loop goes on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._tick_seconds)
        self._log.info("controller stopped")

    async def shutdown(self) -> None:
        """Give the Lease up, so that another controller takes over without waiting for it to expire."""
        self._acting = False
        await asyncio.to_thread(self._leader.release)

    async def tick(self) -> None:
        """One pass: lease -> observe -> account -> publish -> autoscale -> scale -> jobs, each phase guarded.
        A controller that does not hold the Lease only tries to take it."""
        leading = False
        with self._phase("lease"):
            leading = await asyncio.to_thread(self._leader.tick)
        if not leading:
            if self._acting:
                self._stand_by()
            return
        if not self._acting:
            self._take_over()
        observation: _Observation | None = None
        with self._phase("observe"):
            observation = await asyncio.to_thread(self._observe)
        if observation is None:
            return  # without observations every decision would be a guess
        self._observed = observation
        with self._phase("follow"):
            self._follow(observation.apis)
        with self._phase("publish"):
            self._publish(observation)
        scales: list[_Scale] = []
        with self._phase("autoscale"):
            scales = self._autoscale(observation.apis)
        if scales and self._leader.still_leading():
            with self._phase("scale"):
                await asyncio.to_thread(self._apply_scales, scales)
        if self._jobs is not None and observation.workers is not None and self._leader.still_leading():
            actions = _JobActions()
            with self._phase("jobs"):
                actions = self._plan_jobs(self._jobs, observation, observation.workers)
            if (actions.starts or actions.stops) and self._leader.still_leading():
                with self._phase("apply jobs"):
                    outcome = await asyncio.to_thread(self._apply_jobs, actions)
                    self._book.stopped |= outcome.stopped

    # ---- leadership ----

    def _take_over(self) -> None:
        self._acting = True
        self._log.info("controller %s leads: adopting the APIs as they run", self._leader.identity)

    def _stand_by(self) -> None:
        """Leadership lost: stop deciding. The gateway keeps its last routes (this pod is no longer ready,
        so it gets no new requests); a later term adopts every API afresh."""
        self._acting = False
        for name in list(self._followed):
            self._autoscalers.remove(name)
        self._followed.clear()
        self._observed = None
        self._book = _JobBook()
        self._log.warning("controller %s stands by: another controller leads", self._leader.identity)

    # ---- phases ----

    def _observe(self) -> _Observation:
        """Runs in a worker thread: reads only, touches none of the loop's state."""
        apis = tuple(self._cluster.deployed_apis())
        endpoints: dict[ApiName, tuple[ReplicaTarget, ...]] = {}
        for api in apis:
            if api.kind not in REPLICA_KINDS or api.desired is None:
                continue
            try:
                endpoints[api.name] = tuple(self._cluster.ready_endpoints(api.name))
            except Exception:
                self._log.exception("reading the ready endpoints of api %s failed; its routes stay", api.name)
        workers: JobWorkers | None = None
        if self._jobs is not None:
            try:
                workers = self._cluster.job_workers()
            except Exception:
                self._log.exception("listing the job workers failed; jobs are left as they are this pass")
        return _Observation(apis=apis, endpoints=endpoints, workers=workers)

    def _follow(self, apis: Sequence[DeployedApi]) -> None:
        """Start scaling new APIs at their current count, carry updated ones over, forget deleted ones."""
        now = self._clock.monotonic()
        present: set[ApiName] = set()
        unreadable: set[ApiName] = set()
        for api in apis:
            desired = api.desired
            if desired is None:
                unreadable.add(api.name)
                continue
            present.add(api.name)
            known = self._followed.get(api.name)
            if known == desired.revision:
                continue
            if self._jobs is not None:
                self._jobs.configure_async(desired)
            if api.kind not in REPLICA_KINDS:
                self._followed[api.name] = desired.revision
                continue
            if api.requested is None:
                continue  # its Deployment is on its way: adopt it at the count it is created with
            scaling = desired.spec.autoscaling
            if known is None:
                count = self._autoscalers.adopt(api.name, scaling, now=now, replicas=api.requested)
                self._log.info(
                    "api %s (revision %s): %d replicas requested", api.name, desired.revision[:6], count
                )
            else:
                self._autoscalers.deploy(api.name, scaling, now=now)
                self._log.info("api %s is now at revision %s", api.name, desired.revision[:6])
            self._followed[api.name] = desired.revision
        for name in [name for name in self._followed if name not in present]:
            del self._followed[name]
            self._autoscalers.remove(name)
            if self._jobs is not None:
                self._jobs.forget_async(name)
            self._log.info("api %s is gone from the namespace", name)
        if unreadable - self._unreadable:
            self._log.warning(
                "the spec of api(s) %s cannot be read by this modelport version: they are not routed or "
                "scaled; deploy them again with this version",
                ", ".join(sorted(unreadable - self._unreadable)),
            )
        self._unreadable = frozenset(unreadable)

    def _publish(self, observation: _Observation) -> None:
        previous = self._published or {}
        routes: dict[ApiName, ApiRoute] = {}
        for api in sorted(observation.apis, key=lambda a: a.name):
            if api.desired is None or api.kind is ApiKind.TRAFFIC_SPLITTER:
                continue
            if api.kind in REPLICA_KINDS:
                known = observation.endpoints.get(api.name)
                if known is not None:
                    serving: Sequence[ReplicaTarget] = known
                else:  # could not be read this pass: keep what the gateway has
                    old = previous.get(api.name)
                    serving = () if old is None else old.replicas
            else:
                serving = ()  # batch and task endpoints take submissions
            routes[api.name] = route_of(api.desired, serving, status=api.status, reason=api.reason)
        if routes != self._published:
            self._routes.publish(routes)
            self._published = routes  # never mutated afterwards: the gateway may keep the mapping

    def _autoscale(self, apis: Sequence[DeployedApi]) -> list[_Scale]:
        """Run the autoscalers that are due; the Deployments whose count must change."""
        by_name = {api.name: api for api in apis}
        self._autoscalers.tick(
            _WithQueueDemand(self._traffic, self._jobs),
            now=self._clock.monotonic(),
            wall=self._clock.wall(),
            hold_reason=lambda name: _hold_reason(by_name.get(name)),
        )
        scales = []
        for name in sorted(self._autoscalers.names()):
            api = by_name.get(name)
            if api is None or api.kind not in REPLICA_KINDS or api.requested is None:
                continue
            wanted = self._autoscalers.requested(name)
            if wanted != api.requested:
                scales.append(_Scale(api=name, current=api.requested, wanted=wanted))
        return scales

    def _apply_scales(self, scales: Sequence[_Scale]) -> None:
        """Runs in a worker thread. One API's failure does not keep the others from scaling."""
        for scale in scales:
            try:
                self._cluster.scale(scale.api, scale.wanted)
            except Exception:
                self._log.exception(
                    "scaling api %s to %d replicas failed; retrying next pass", scale.api, scale.wanted
                )
                continue
            self._log.info("api %s: scaled %d -> %d replicas", scale.api, scale.current, scale.wanted)

    def _plan_jobs(self, jobs: JobScheduler, observation: _Observation, workers: JobWorkers) -> _JobActions:
        book = self._book
        unreadable = [a.name for a in observation.apis if a.desired is None and a.kind in JOB_KINDS]
        if unreadable:
            # The scheduler would take an API it cannot see for a deleted one and stop its jobs.
            self._log.warning("jobs wait: the spec of %s cannot be read", ", ".join(unreadable))
            return _JobActions()
        exited = {pod.replica_id: pod for pod in workers.pods if pod.phase is ReplicaPhase.EXITED}
        earlier = not book.adopted  # exits from before this leader's term: its scheduler never saw them
        book.adopted = True
        for rid, pod in exited.items():
            if rid in book.accounted:
                continue
            book.accounted.add(rid)
            # A batch worker's failure from before this term is not counted towards worker_error (the
            # pods of a long job's past would end it); its leases go back either way. A task's pod that
            # exited is the task's end whenever it happened.
            asked = pod.job_id in book.stopped or (earlier and pod.role is WorkloadRole.BATCH_WORKER)
            try:
                jobs.worker_exited(pod, asked=asked)
            except Exception:
                self._log.exception("accounting for worker %s failed", rid)
        book.accounted &= set(exited)  # pods gone from the namespace are never listed again
        desired = {api.name: api.desired for api in observation.apis if api.desired is not None}
        stopping = frozenset(pod.replica_id for pod in workers.pods if pod.job_id in book.stopped)
        plan = jobs.reconcile(workers=list(workers.pods), stopping=stopping, desired=desired)
        starts = []
        for launch in plan.launches:
            job_id = launch.job.job_id
            found = desired.get(launch.job.api_name)
            # An active Job replaces its failed pods itself (backoffLimit): only a missing or finished one
            # is (re)made. (A Job made last pass is in this pass's listing: a list reads the latest state.)
            if found is None or job_id in workers.jobs:
                continue
            starts.append(_JobStart(desired=found, job=launch.job, workers=launch.count))
        stops: list[JobId] = []
        for stop in plan.stops:
            ended = stop.replica.job_id
            if ended is None or ended in book.stopped or ended in stops:
                continue
            try:
                status = jobs.job(ended).status
            except NotFoundError:
                continue
            if status in STOPPED_JOB_STATUSES:
                stops.append(ended)
        return _JobActions(starts=tuple(starts), stops=tuple(stops))

    def _apply_jobs(self, actions: _JobActions) -> _JobOutcome:
        """Runs in a worker thread: create and delete Kubernetes Jobs; the Jobs it deleted."""
        stopped = set()
        for start in actions.starts:
            job = start.job
            try:
                self._cluster.start_job(start.desired, job, workers=start.workers)
            except Exception:
                self._log.exception("starting the workers of job %s failed; retrying next pass", job.job_id)
                continue
            self._log.info(
                "job %s of api %s: a Kubernetes Job of %d worker(s)", job.job_id, job.api_name, start.workers
            )
        for job_id in actions.stops:
            try:
                self._cluster.stop_job(job_id)
            except Exception:
                self._log.exception("stopping the workers of job %s failed; retrying next pass", job_id)
                continue
            stopped.add(job_id)
            self._log.info("job %s: its Kubernetes Job is deleted (its workers stop)", job_id)
        return _JobOutcome(stopped=frozenset(stopped))

    def _phase(self, phase: str) -> contextlib.AbstractContextManager[None]:
        return guarded_phase(phase, clock=self._clock, log=self._log, slow_seconds=SLOW_PHASE_SECONDS)


def _hold_reason(api: DeployedApi | None) -> str | None:
    """Why the autoscaler keeps an API's count: more replicas of a broken API are only more broken pods."""
    if api is None:
        return None
    if api.status is ApiStatus.COMPUTE_UNAVAILABLE:
        return f"compute unavailable ({api.reason})"
    if api.status is ApiStatus.ERROR:
        return f"its replicas fail ({api.reason})"
    return None


class _WithQueueDemand:
    """The autoscaler's traffic: the gateway's counters, plus each AsyncAPI's queued and in-progress
    requests counted as held (they wait for a replica the way held requests do)."""

    def __init__(self, traffic: TrafficSource, jobs: JobScheduler | None) -> None:
        self._traffic = traffic
        self._jobs = jobs

    def traffic(self) -> Mapping[ApiName, ApiTraffic]:
        counters = self._traffic.traffic()
        demand = {} if self._jobs is None else self._jobs.async_demand()
        if not demand:
            return counters
        merged = dict(counters)
        for name, queued in demand.items():
            base = merged.get(name) or ApiTraffic(api_name=name)
            merged[name] = replace(base, held=base.held + queued)
        return merged
