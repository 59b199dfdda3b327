"""The load-balancing policy: which replica of an API gets the next request (least outstanding requests).

A pure function over explicit state; called by gateway.routing.ApiState on every forwarded request.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from modelport.types import ReplicaId


def pick_replica(
    replicas: Sequence[ReplicaId],
    outstanding: Mapping[ReplicaId, int],
    *,
    limit: int,
    turn: int,
    exclude: Container[ReplicaId] = (),
    avoid: Container[ReplicaId] = (),
) -> int | None:
    """The index in `replicas` of the one with the fewest outstanding requests, or None if none has room.

    `limit`: a replica already holding this many outstanding requests gets no more.
    `turn`: where the scan starts; ties go to the first replica in scan order, so a caller that advances
    `turn` on every pick spreads equal load evenly.
    `exclude`: never picked (the replica a request is being retried away from).
    `avoid`: picked only when every other candidate is excluded too (replicas whose connect failed: if the
    whole API looks down, trying is better than refusing until the controller republishes).
    """
    count = len(replicas)
    best: int | None = None
    best_load = limit
    fallback: int | None = None
    fallback_load = limit
    healthy_seen = False
    for step in range(count):
        index = (turn + step) % count
        replica = replicas[index]
        if replica in exclude:
            continue
        load = outstanding.get(replica, 0)
        if replica in avoid:
            if load < fallback_load:
                fallback, fallback_load = index, load
            continue
        healthy_seen = True
        if load < best_load:
            best, best_load = index, load
            if load == 0:
                break  # nothing can beat an idle replica; later ties lose by rotation anyway
    return best if healthy_seen else fallback
