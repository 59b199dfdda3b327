"""Shared vocabulary: ids, phases and the messages that cross layer boundaries.

A leaf module: it imports nothing of modelport's. The controller publishes `ApiRoute`s to the gateway and
reads `ApiTraffic` back through these types, so neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

ApiName = NewType("ApiName", str)
ReplicaId = NewType("ReplicaId", str)
Revision = NewType("Revision", str)
JobId = NewType("JobId", str)  # a batch job or a task run


class ApiKind(StrEnum):
    REALTIME = "RealtimeAPI"
    BATCH = "BatchAPI"
    ASYNC = "AsyncAPI"
    TASK = "TaskAPI"
    TRAFFIC_SPLITTER = "TrafficSplitter"


class WorkloadRole(StrEnum):
    """What a process started for an API does; the backend picks its command by role."""

    REPLICA = "replica"  # an HTTP server (RealtimeAPI; AsyncAPI replicas also consume the async queue)
    BATCH_WORKER = "batch-worker"  # leases the batches of one job until the job ends
    TASK = "task"  # runs one task (TaskAPI) to completion


class JobStatus(StrEnum):
    """A batch job's or a task's status (Cortex's job statuses), derived from the queue and the workers."""

    ENQUEUING = "enqueuing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_FAILURES = "completed_with_failures"  # some batches ended as dead letters
    FAILED = "failed"  # a task that raised
    WORKER_ERROR = "worker_error"  # workers kept crashing (e.g. the predictor's __init__ raises)
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"  # deleted by the user

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.ENQUEUING, JobStatus.RUNNING)


class AsyncStatus(StrEnum):
    """One async request's status (Cortex's AsyncAPI)."""

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class ApiStatus(StrEnum):
    """What `modelport get` shows; always derived from observed replicas, never assumed."""

    LIVE = "live"
    UPDATING = "updating"
    ERROR = "error"
    COMPUTE_UNAVAILABLE = "compute unavailable"
    SCALED_TO_ZERO = "scaled to zero"  # min_replicas 0, no traffic: the first request wakes it


class ReplicaPhase(StrEnum):
    """Lifecycle of one replica process as the backend observes it."""

    STARTING = "starting"  # process alive, /readyz not yet 200
    READY = "ready"  # /readyz answered 200: may receive traffic
    DRAINING = "draining"  # SIGTERM sent: finishing in-flight requests, receives no new ones
    EXITED = "exited"  # process gone; exit_code says how


@dataclass(frozen=True, slots=True)
class Address:
    """Where a replica listens: a TCP host and port, and for a local replica also a Unix socket `path`.

    The gateway sends requests over `path` when it is set (cheaper than loopback TCP); probes and tools use
    host:port, which is also what str() shows and what an HTTP Host header carries.
    """

    host: str
    port: int
    path: str | None = None  # a Unix domain socket on this machine that serves the same requests

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """One ready replica the gateway may send requests to."""

    replica_id: ReplicaId
    address: Address
    revision: Revision


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """Everything the gateway needs to serve one API; published by the controller on every change."""

    api_name: ApiName
    endpoint: str  # "/iris-classifier"
    replicas: tuple[ReplicaTarget, ...]
    max_replica_concurrency: int
    status: ApiStatus
    # Shown in the 503 body when no replica is ready ("predictor __init__ failed: see `modelport logs x`").
    unavailable_reason: str | None = None
    # Realtime predictors are idempotent by default: a request whose replica died before answering may be
    # sent to another replica once.
    retry_on_failure: bool = True
    # Scale to zero: while the API has no ready replica, hold up to `hold_queue_limit` requests, each for up
    # to `hold_timeout_seconds`, until a replica is published (the controller starts one on demand).
    hold_when_empty: bool = False
    hold_queue_limit: int = 0
    hold_timeout_seconds: float = 0.0
    # RealtimeAPI routes go to replicas; the other kinds' endpoints take job or async submissions, which
    # the gateway hands to its submission handler (`<endpoint>` and `<endpoint>/<id>`).
    kind: ApiKind = ApiKind.REALTIME


@dataclass(frozen=True, slots=True)
class ApiTraffic:
    """Counters the gateway keeps per API since the API's current revision was first routed."""

    api_name: ApiName
    status_2xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    latency_seconds_sum: float = 0.0  # over every answered request
    in_flight: Mapping[ReplicaId, int] = field(default_factory=dict)  # queued at or running on each replica
    held: int = 0  # requests the gateway holds while the API has no ready replica (scale from zero)

    @property
    def demand(self) -> int:
        """In-flight requests as the autoscaler counts them: running, queued at replicas, or held."""
        return sum(self.in_flight.values()) + self.held

    @property
    def requests(self) -> int:
        return self.status_2xx + self.status_4xx + self.status_5xx

    @property
    def avg_latency_seconds(self) -> float | None:
        return self.latency_seconds_sum / self.requests if self.requests else None
