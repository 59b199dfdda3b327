"""Scale from zero on real loopback sockets: requests for an API without a replica are held by the gateway
until the test publishes one (as the controller would), times them out, refuses the excess, and answers
them at once when the API is deleted or the gateway drains.
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from modelport.gateway.app import Gateway
from modelport.http.server import Request, Response, json_response
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ReplicaTarget
from tests.integration.test_gateway import (
    LOOPS,
    FakeReplica,
    Reply,
    Run,
    call,
    run_on,
    serving,
    target,
    until,
)

pytestmark = pytest.mark.integration

API = ApiName("m")


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    return functools.partial(run_on, request.param)


def held_route(
    *targets: ReplicaTarget,
    limit: int = 10,
    timeout: float = 10.0,
    max_replica_concurrency: int = 1024,
    status: ApiStatus | None = None,
    reason: str | None = None,
) -> dict[ApiName, ApiRoute]:
    """Api `m` as the controller publishes one with min_replicas 0."""
    api = ApiRoute(
        api_name=API,
        endpoint="/m",
        replicas=targets,
        max_replica_concurrency=max_replica_concurrency,
        status=status or (ApiStatus.LIVE if targets else ApiStatus.SCALED_TO_ZERO),
        unavailable_reason=reason,
        hold_when_empty=True,
        hold_queue_limit=limit,
        hold_timeout_seconds=timeout,
    )
    return {API: api}


def held(gateway: Gateway) -> int:
    return gateway.traffic()[API].held


async def hold_one(gateway: Gateway, address: Address, body: bytes) -> asyncio.Task[Reply]:
    """Send one request and return once the gateway holds it (so arrival order is the order of calls)."""
    before = held(gateway)
    task = asyncio.create_task(call(address, "POST", "/m", body=body))
    await until(lambda: held(gateway) == before + 1)
    return task


def test_a_held_request_is_answered_once_a_replica_is_published(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(held_route(), replica) as (gw, gateway):
            pending = await hold_one(gw, gateway, b"first")
            assert not pending.done()
            summary = (await call(gateway, "GET", "/m")).json()
            assert (summary["status"], summary["ready_replicas"], summary["held"]) == ("scaled to zero", 0, 1)
            metrics = (await call(gateway, "GET", "/metrics")).body.decode()
            assert 'modelport_held_requests{api="m"} 1\n' in metrics
            assert gw.traffic()[API].demand == 1
            await asyncio.sleep(0.05)  # an assertion window: the wait must show in the latency

            gw.publish(held_route(target("r1", replica.address)))
            reply = await pending
            assert (reply.status, reply.json()) == (200, {"echo": "first"})
            traffic = gw.traffic()[API]
            assert (traffic.held, traffic.status_2xx, traffic.in_flight) == (0, 1, {"r1": 0})
            assert traffic.latency_seconds_sum >= 0.05
            assert (await call(gateway, "GET", "/m")).json()["held"] == 0

    run(scenario)


def test_held_requests_are_released_in_arrival_order_within_max_replica_concurrency(run: Run) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def respond(request: Request) -> Response:
            await gate.wait()
            return json_response(200, {"echo": request.body.decode()})

        replica = await FakeReplica(respond).start()
        async with serving(held_route(max_replica_concurrency=1), replica) as (gw, gateway):
            names = [b"first", b"second", b"third"]
            pending = [await hold_one(gw, gateway, name) for name in names]

            gw.publish(held_route(target("r1", replica.address), max_replica_concurrency=1))
            await until(lambda: len(replica.requests) == 1)
            assert replica.requests[0].body == b"first"
            # The others keep their place in line for the busy replica; a newcomer gets the usual 503.
            assert (held(gw), gw.traffic()[API].in_flight) == (2, {"r1": 1})
            newcomer = await call(gateway, "POST", "/m", body=b"newcomer")
            assert (newcomer.status, newcomer.headers["retry-after"]) == (503, "1")
            assert "is at capacity" in newcomer.json()["error"]

            gate.set()
            replies = await asyncio.gather(*pending)
            assert [reply.json()["echo"] for reply in replies] == ["first", "second", "third"]
            assert [request.body for request in replica.requests] == names
            assert held(gw) == 0

    run(scenario)


def test_requests_beyond_the_queue_limit_get_503_with_retry_after(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(held_route(limit=2), replica) as (gw, gateway):
            pending = [await hold_one(gw, gateway, body) for body in (b"a", b"b")]
            refused = await call(gateway, "POST", "/m", body=b"c", headers=[("origin", "https://app")])
            assert (refused.status, refused.headers["retry-after"]) == (503, "1")
            assert refused.headers["access-control-allow-origin"] == "*"
            assert refused.json() == {
                "error": "api m has no ready replica yet and already holds 2 requests waiting for one "
                "(autoscaling.activation_queue_limit); retry later"
            }
            assert held(gw) == 2

            gw.publish(held_route(target("r1", replica.address), limit=2))
            assert [reply.status for reply in await asyncio.gather(*pending)] == [200, 200]
            traffic = gw.traffic()[API]
            assert (traffic.held, traffic.status_2xx, traffic.status_5xx) == (0, 2, 1)
            assert [request.body for request in replica.requests] == [b"a", b"b"]

    run(scenario)


def test_a_request_held_past_the_timeout_gets_503(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(held_route(timeout=0.3), replica) as (gw, gateway):
            started = time.monotonic()
            reply = await call(gateway, "POST", "/m", body=b"x")
            assert time.monotonic() - started >= 0.25  # held, not refused at once
            assert (reply.status, reply.headers["retry-after"]) == (503, "1")
            assert reply.json() == {
                "error": "api m had no ready replica within 0.3 s (autoscaling.activation_timeout)"
            }
            traffic = gw.traffic()[API]
            assert (traffic.held, traffic.status_5xx) == (0, 1)
            assert traffic.latency_seconds_sum >= 0.25
            assert replica.requests == []

    run(scenario)


def test_a_released_request_still_waiting_for_room_times_out_with_503(run: Run) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def respond(request: Request) -> Response:
            await gate.wait()
            return json_response(200, {"echo": request.body.decode()})

        replica = await FakeReplica(respond).start()
        routes = held_route(max_replica_concurrency=1, timeout=0.3)
        async with serving(routes, replica) as (gw, gateway):
            first, second = [await hold_one(gw, gateway, body) for body in (b"a", b"b")]
            gw.publish(held_route(target("r1", replica.address), max_replica_concurrency=1, timeout=0.3))
            reply = await second  # `first` keeps the only slot past the timeout
            assert (reply.status, reply.headers["retry-after"]) == (503, "1")
            assert reply.json() == {
                "error": "api m had no replica with room within 0.3 s (autoscaling.activation_timeout): "
                "every replica holds max_replica_concurrency (1) requests; retry later"
            }
            assert held(gw) == 0
            gate.set()
            assert (await first).status == 200
            assert [request.body for request in replica.requests] == [b"a"]

    run(scenario)


def test_held_requests_are_answered_at_once_when_the_api_is_deleted(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(held_route(), replica) as (gw, gateway):
            pending = [await hold_one(gw, gateway, body) for body in (b"a", b"b")]
            gw.publish({})
            async with asyncio.timeout(2):  # far below the hold timeout (10 s)
                replies = await asyncio.gather(*pending)
            for reply in replies:
                assert reply.status == 404
                assert reply.json() == {"error": "api m was deleted while this request waited for a replica"}
            assert API not in gw.traffic()

            gw.publish(held_route())  # deployed again: a fresh API, nothing held
            assert held(gw) == 0

    run(scenario)


def test_held_requests_get_the_reason_at_once_when_the_api_can_no_longer_start(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(held_route(), replica) as (gw, gateway):
            pending = await hold_one(gw, gateway, b"x")
            reason = "predictor __init__ failed: see `modelport logs m`"
            gw.publish(held_route(status=ApiStatus.ERROR, reason=reason))
            async with asyncio.timeout(2):
                reply = await pending
            assert reply.status == 503
            assert "retry-after" not in reply.headers  # waiting will not fix it
            assert reply.json() == {"error": "api m is not ready (status error)", "reason": reason}
            assert held(gw) == 0
            # Later requests are not held either while the API is in error.
            assert (await call(gateway, "POST", "/m", body=b"x")).status == 503

    run(scenario)


def test_drain_answers_held_requests_503_at_once(run: Run) -> None:
    async def scenario() -> None:
        gw = Gateway()
        gw.publish(held_route())
        gateway = await gw.start(host="127.0.0.1", port=0)
        try:
            pending = [await hold_one(gw, gateway, body) for body in (b"a", b"b")]
            async with asyncio.timeout(2):  # far below the hold timeout (10 s) and the drain grace (5 s)
                assert await gw.drain(5.0) is True
                replies = await asyncio.gather(*pending)
            for reply in replies:
                assert reply.status == 503
                assert reply.json() == {
                    "error": "the gateway is shutting down; api m had no ready replica for this request yet"
                }
                assert reply.headers["connection"] == "close"
            assert held(gw) == 0
        finally:
            gw.close()

    run(scenario)
