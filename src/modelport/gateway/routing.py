"""The gateway's route table: which API answers at which path, with each API's balancing state, counters and
held requests. Owned by gateway.app.Gateway, which replaces the table's contents on every publish().
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from modelport.gateway.balancing import pick_replica
from modelport.gateway.holding import HoldEnd, Timers, WaitingList
from modelport.gateway.metrics import ApiCounters
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ApiTraffic, ReplicaId, ReplicaTarget

# An API in these states gets no replica by waiting: the controller has given up until the user acts (a
# crash-looping predictor) or until the machine frees capacity. Its requests are answered with the reason.
WAITING_WONT_HELP = frozenset((ApiStatus.ERROR, ApiStatus.COMPUTE_UNAVAILABLE))


class ApiState:
    """One routed API: its latest route, the requests outstanding at each replica, its counters, and the
    requests held until a replica slot frees up (scale from zero).

    Survives republishing of the same API (counters, in-flight counts and held requests carry over); dropped
    with the API.
    """

    __slots__ = ("_down", "_held", "_outstanding", "_replica_ids", "_routed", "_turn", "counters", "route")

    def __init__(self, route: ApiRoute) -> None:
        self.counters = ApiCounters()
        self._held: WaitingList[ReplicaTarget] = WaitingList()
        self._outstanding: dict[ReplicaId, int] = {}
        self._turn = 0
        self.route = route
        self._replica_ids: tuple[ReplicaId, ...] = ()
        self._routed: frozenset[ReplicaId] = frozenset()
        self._down: set[ReplicaId] = set()
        self.update(route)

    def update(self, route: ApiRoute) -> None:
        self.route = route
        self._replica_ids = tuple(target.replica_id for target in route.replicas)
        self._routed = frozenset(self._replica_ids)
        # Listed again by the controller, which observed it healthy: back in rotation.
        self._down.clear()
        # A replica that left the route keeps its count while its requests finish, and no new ones come.
        self._outstanding = {
            replica: count
            for replica, count in self._outstanding.items()
            if count > 0 or replica in self._routed
        }
        for replica in self._replica_ids:
            self._outstanding.setdefault(replica, 0)
        if self._held:
            if route.replicas:
                self._grant_free_slots()
            elif not self.holds():
                self._held.end_all(HoldEnd.NOT_HOLDING)

    def pick(self, *, exclude: Collection[ReplicaId] = ()) -> ReplicaTarget | None:
        """The replica for the next request (least outstanding), or None when none has room."""
        index = pick_replica(
            self._replica_ids,
            self._outstanding,
            limit=self.route.max_replica_concurrency,
            turn=self._turn,
            exclude=exclude,
            avoid=self._down,
        )
        if index is None:
            return None
        self._turn += 1
        return self.route.replicas[index]

    def acquire(self, replica: ReplicaId) -> None:
        self._outstanding[replica] = self._outstanding.get(replica, 0) + 1

    def release(self, replica: ReplicaId) -> None:
        left = self._outstanding.get(replica, 0) - 1
        if left > 0 or replica in self._routed:
            self._outstanding[replica] = max(left, 0)
        else:
            self._outstanding.pop(replica, None)
        if self._held:
            self._grant_free_slots()

    def holds(self) -> bool:
        """Whether a request that finds no replica now waits for one (instead of a 503 at once)."""
        route = self.route
        return route.hold_when_empty and not route.replicas and route.status not in WAITING_WONT_HELP

    async def hold(self, timers: Timers) -> ReplicaTarget | HoldEnd:
        """Wait in line for a replica slot, within the route's queue limit and timeout.

        A returned target's slot is already acquired for the caller, who releases it when answered: a slot
        freed or published goes to the oldest held request at once, so no later arrival can take it first.
        """
        route = self.route
        return await self._held.wait(
            timers,
            limit=route.hold_queue_limit,
            max_seconds=route.hold_timeout_seconds,
            on_abandoned=self._abandoned,
        )

    def end_held(self, end: HoldEnd) -> None:
        self._held.end_all(end)

    def _grant_free_slots(self) -> None:
        while self._held:
            target = self.pick()
            if target is None or not self._held.grant(target):
                return
            self.acquire(target.replica_id)

    def _abandoned(self, target: ReplicaTarget) -> None:
        self.release(target.replica_id)

    def mark_down(self, replica: ReplicaId) -> None:
        """Its connect failed: out of rotation until the controller lists it again."""
        self._down.add(replica)

    @property
    def held(self) -> int:
        return len(self._held)

    def in_flight(self) -> int:
        return sum(self._outstanding.values())

    def traffic(self) -> ApiTraffic:
        counters = self.counters
        return ApiTraffic(
            api_name=self.route.api_name,
            status_2xx=counters.status_2xx,
            status_4xx=counters.status_4xx,
            status_5xx=counters.status_5xx,
            latency_seconds_sum=counters.latency_seconds_sum,
            in_flight=dict(self._outstanding),
            held=self.held,
        )


class RouteTable:
    """APIs by name and by endpoint path; an endpoint matches with or without a trailing slash."""

    __slots__ = ("_by_endpoint", "_by_name")

    def __init__(self) -> None:
        self._by_name: dict[ApiName, ApiState] = {}
        self._by_endpoint: dict[str, ApiState] = {}

    def publish(self, routes: Mapping[ApiName, ApiRoute]) -> None:
        """Replace the whole table. APIs missing from `routes` are dropped with their counters; the requests
        they held are woken with REMOVED."""
        by_name: dict[ApiName, ApiState] = {}
        by_endpoint: dict[str, ApiState] = {}
        for name, route in routes.items():
            state = self._by_name.get(name)
            if state is None:
                state = ApiState(route)
            else:
                state.update(route)
            by_name[name] = state
            by_endpoint[normalize_path(route.endpoint)] = state
        for name, state in self._by_name.items():
            if name not in by_name:
                state.end_held(HoldEnd.REMOVED)
        self._by_name = by_name
        self._by_endpoint = by_endpoint

    def lookup(self, path: str) -> ApiState | None:
        state = self._by_endpoint.get(path)
        if state is None and len(path) > 1 and path.endswith("/"):
            state = self._by_endpoint.get(normalize_path(path))
        return state

    def items(self) -> Iterator[tuple[ApiName, ApiState]]:
        return iter(self._by_name.items())

    def endpoints(self) -> list[str]:
        return sorted(state.route.endpoint for state in self._by_name.values())

    def addresses(self) -> set[Address]:
        return {target.address for state in self._by_name.values() for target in state.route.replicas}


def normalize_path(path: str) -> str:
    return path.rstrip("/") or "/"
