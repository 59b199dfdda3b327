"""The gateway's route table: which API answers at which path, with each API's balancing state and counters.

Owned by gateway.app.Gateway, which replaces the table's contents on every publish() from the controller.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from modelport.gateway.balancing import pick_replica
from modelport.gateway.metrics import ApiCounters
from modelport.types import Address, ApiName, ApiRoute, ApiTraffic, ReplicaId, ReplicaTarget


class ApiState:
    """One routed API: its latest route, the requests outstanding at each replica, and its counters.

    Survives republishing of the same API (counters and in-flight counts carry over); dropped with the API.
    """

    __slots__ = ("_down", "_outstanding", "_replica_ids", "_routed", "_turn", "counters", "route")

    def __init__(self, route: ApiRoute) -> None:
        self.counters = ApiCounters()
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

    def mark_down(self, replica: ReplicaId) -> None:
        """Its connect failed: out of rotation until the controller lists it again."""
        self._down.add(replica)

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
        )


class RouteTable:
    """APIs by name and by endpoint path; an endpoint matches with or without a trailing slash."""

    __slots__ = ("_by_endpoint", "_by_name")

    def __init__(self) -> None:
        self._by_name: dict[ApiName, ApiState] = {}
        self._by_endpoint: dict[str, ApiState] = {}

    def publish(self, routes: Mapping[ApiName, ApiRoute]) -> None:
        """Replace the whole table. APIs missing from `routes` are dropped with their counters."""
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
