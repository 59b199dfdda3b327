"""Typed in-memory stand-ins for the controller's ports (controller.ports) and the replicas they report.

Used by the controller tests (loop, plan, status) and the control API tests, which drive a real Controller
tick by tick on a FakeClock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypedDict, Unpack

from modelport.clock import FakeClock
from modelport.controller.loop import Controller
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
from modelport.spec.model import ApiSpec
from modelport.types import Address, ApiName, ApiRoute, ApiTraffic, ReplicaId, ReplicaPhase, Revision


def observed_replica(
    rid: str,
    phase: ReplicaPhase = ReplicaPhase.READY,
    *,
    rev: str = "new",
    gen: int = 0,
    at: float = 0.0,
) -> ObservedReplica:
    """A replica of api iris as a backend reports it, without a process or an address."""
    return ObservedReplica(
        replica_id=ReplicaId(rid),
        api_name=ApiName("iris"),
        revision=Revision(rev),
        generation=gen,
        phase=phase,
        address=None,
        pid=None,
        started_at=at,
    )


class FakeBackend:
    """Launch records a STARTING replica logging under logs_dir; the test turns replicas READY or EXITED."""

    def __init__(self, clock: FakeClock, routes: RecordingRoutes, *, logs_dir: Path = Path("/logs")) -> None:
        self.clock = clock
        self.routes = routes
        self.logs_dir = logs_dir
        self.replicas: dict[ReplicaId, ObservedReplica] = {}
        self.launches: list[ReplicaLaunch] = []
        self.terminated: list[ReplicaId] = []
        self.forgotten: list[ReplicaId] = []
        self.verdict = ComputeVerdict(fits=True)
        self.observe_error: Exception | None = None
        self.poll_error: Exception | None = None
        self.compute_error_for: set[str] = set()
        self.polls = 0
        self.after_poll: Callable[[int], None] | None = None
        self.shutdown_grace: float | None = None

    # Backend protocol
    def launch(self, launch: ReplicaLaunch) -> None:
        self.launches.append(launch)
        self.replicas[launch.replica_id] = ObservedReplica(
            replica_id=launch.replica_id,
            api_name=launch.api_name,
            revision=launch.revision,
            generation=launch.generation,
            phase=ReplicaPhase.STARTING,
            address=Address("127.0.0.1", 40_000 + len(self.launches)),
            pid=1000 + len(self.launches),
            started_at=self.clock.wall() + len(self.launches) * 1e-3,  # distinct, ordered start times
            log_path=self.logs_dir / launch.api_name / f"{launch.replica_id}.log",
            role=launch.role,
            job_id=launch.job_id,
        )

    def terminate(self, replica_id: ReplicaId, *, grace_seconds: float) -> None:
        # The controller must have taken the replica out of the gateway's table before SIGTERM.
        for route in self.routes.latest.values():
            assert replica_id not in {t.replica_id for t in route.replicas}, "terminated while routed"
        replica = self.replicas[replica_id]
        if replica.phase in (ReplicaPhase.STARTING, ReplicaPhase.READY):
            self.terminated.append(replica_id)
            self.replicas[replica_id] = replace(replica, phase=ReplicaPhase.DRAINING)

    def forget(self, replica_id: ReplicaId) -> None:
        self.forgotten.append(replica_id)
        del self.replicas[replica_id]

    def observe(self) -> Sequence[ObservedReplica]:
        if self.observe_error is not None:
            raise self.observe_error
        return list(self.replicas.values())

    def check_compute(self, spec: ApiSpec) -> ComputeVerdict:
        if spec.name in self.compute_error_for:
            raise RuntimeError("resource probe failed")
        return self.verdict

    async def poll(self) -> None:
        self.polls += 1
        if self.after_poll is not None:
            self.after_poll(self.polls)
        if self.poll_error is not None:
            raise self.poll_error

    async def shutdown(self, *, grace_seconds: float) -> None:
        self.shutdown_grace = grace_seconds
        for rid in list(self.replicas):
            self.exit(rid, code=0)

    # test controls
    def ready(self, *replica_ids: ReplicaId) -> None:
        """Turn the given replicas READY; with none given, every STARTING one."""
        for rid in replica_ids or [r.replica_id for r in self.in_phase(ReplicaPhase.STARTING)]:
            self.replicas[rid] = replace(
                self.replicas[rid], phase=ReplicaPhase.READY, ready_at=self.clock.wall()
            )

    def exit(self, replica_id: ReplicaId, *, code: int) -> None:
        self.replicas[replica_id] = replace(
            self.replicas[replica_id], phase=ReplicaPhase.EXITED, exit_code=code
        )

    def finish_draining(self) -> None:
        for replica in self.in_phase(ReplicaPhase.DRAINING):
            self.exit(replica.replica_id, code=0)

    def in_phase(self, phase: ReplicaPhase) -> list[ObservedReplica]:
        return [r for r in self.replicas.values() if r.phase is phase]

    def live(self) -> list[ObservedReplica]:
        return [r for r in self.replicas.values() if r.phase in (ReplicaPhase.STARTING, ReplicaPhase.READY)]


class RecordingRoutes:
    def __init__(self) -> None:
        self.tables: list[Mapping[ApiName, ApiRoute]] = []

    def publish(self, routes: Mapping[ApiName, ApiRoute]) -> None:
        self.tables.append(routes)

    @property
    def latest(self) -> Mapping[ApiName, ApiRoute]:
        return self.tables[-1] if self.tables else {}


class FakeTraffic:
    def __init__(self) -> None:
        self.counters: dict[ApiName, ApiTraffic] = {}
        self.reads = 0

    def traffic(self) -> Mapping[ApiName, ApiTraffic]:
        self.reads += 1
        return self.counters

    # test controls
    def load(self, api: str, *, in_flight: Mapping[str, int] | None = None, held: int = 0) -> None:
        """Set what the gateway has in flight per replica and holds for `api`; other counters stay."""
        name = ApiName(api)
        current = self.counters.get(name) or ApiTraffic(api_name=name)
        by_replica = {ReplicaId(rid): count for rid, count in (in_flight or {}).items()}
        self.counters[name] = replace(current, in_flight=by_replica, held=held)


class MemoryStore:
    def __init__(self) -> None:
        self.apis: dict[ApiName, DesiredApi] = {}
        self.replicas: dict[ReplicaId, ObservedReplica] = {}
        self.save_error: Exception | None = None
        self.save_threads: list[int] = []  # the thread of every save_api call, failed ones included

    @property
    def saves(self) -> int:
        return len(self.save_threads)

    def save_api(self, api: DesiredApi) -> None:
        self.save_threads.append(threading.get_ident())
        if self.save_error is not None:
            raise self.save_error
        self.apis[api.name] = api

    def delete_api(self, name: ApiName) -> None:
        del self.apis[name]

    def load_apis(self) -> Sequence[DesiredApi]:
        return list(self.apis.values())

    def record_replica(self, replica: ObservedReplica) -> None:
        self.replicas[replica.replica_id] = replica

    def forget_replica(self, replica_id: ReplicaId) -> None:
        self.replicas.pop(replica_id, None)

    def load_replicas(self) -> Sequence[ObservedReplica]:
        return list(self.replicas.values())


class ControllerOptions(TypedDict, total=False):
    tick_seconds: float
    drain_grace_seconds: float
    autoscale_interval_seconds: float


class Fakes:
    """One of each fake around one FakeClock; `controller()` wires a real Controller to them."""

    def __init__(self, *, store: MemoryStore | None = None, logs_dir: Path = Path("/logs")) -> None:
        self.clock = FakeClock()
        self.routes = RecordingRoutes()
        self.backend = FakeBackend(self.clock, self.routes, logs_dir=logs_dir)
        self.traffic = FakeTraffic()
        self.store = store or MemoryStore()

    def controller_with(self, **options: Unpack[ControllerOptions]) -> Controller:
        # Annotated as the protocols: mypy checks that the fakes satisfy them.
        backend: Backend = self.backend
        routes: RouteSink = self.routes
        traffic: TrafficSource = self.traffic
        store: StateStore = self.store
        return Controller(
            backend=backend, routes=routes, traffic=traffic, store=store, clock=self.clock, **options
        )
