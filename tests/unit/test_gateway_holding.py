"""Held requests (scale from zero): the waiting list (gateway.holding) and how an API's state grants replica
slots to it (gateway.routing.ApiState), on deadline timers driven by hand (no real time passes).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from modelport.clock import FakeClock
from modelport.gateway.app import Gateway
from modelport.gateway.holding import HoldEnd, WaitingList
from modelport.gateway.routing import ApiState, RouteTable
from modelport.http.server import Request
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ReplicaId, ReplicaTarget, Revision


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """`call_later` on a FakeClock: callbacks run, in deadline order, when advance() passes their time."""

    def __init__(self) -> None:
        self.clock = FakeClock(start=0.0)
        self._heap: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], object], /) -> FakeTimer:
        timer = FakeTimer(self.clock.monotonic() + delay, callback)
        heapq.heappush(self._heap, (timer.when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        while self._heap and self._heap[0][0] <= self.clock.monotonic():
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.callback()

    @property
    def pending(self) -> int:
        return sum(not timer.cancelled for _, _, timer in self._heap)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(5):  # a waiter nobody wakes fails the test instead of hanging it
            await scenario()

    asyncio.run(bounded())


async def settle() -> None:
    """Let every runnable task take its steps (a few loop turns; nothing here waits on real time)."""
    for _ in range(5):
        await asyncio.sleep(0)


def targets(*names: str) -> tuple[ReplicaTarget, ...]:
    return tuple(
        ReplicaTarget(ReplicaId(name), Address("127.0.0.1", 40000 + i), Revision("rev1"))
        for i, name in enumerate(names)
    )


def api(
    *replicas: str,
    hold: bool = True,
    limit: int = 10,
    timeout: float = 60.0,
    concurrency: int = 4,
    status: ApiStatus | None = None,
    reason: str | None = None,
) -> ApiRoute:
    return ApiRoute(
        api_name=ApiName("iris"),
        endpoint="/iris",
        replicas=targets(*replicas),
        max_replica_concurrency=concurrency,
        status=status or (ApiStatus.LIVE if replicas else ApiStatus.SCALED_TO_ZERO),
        unavailable_reason=reason,
        hold_when_empty=hold,
        hold_queue_limit=limit,
        hold_timeout_seconds=timeout,
    )


def never_abandoned(value: str) -> None:
    raise AssertionError(f"{value} was abandoned")


# the waiting list ------------------------------------------------------------------------------------


def test_grants_go_to_the_oldest_waiter_and_cancel_its_deadline() -> None:
    async def scenario() -> None:
        timers, waiting = FakeTimers(), WaitingList[str]()
        tasks = []
        for _ in range(3):
            tasks.append(
                asyncio.create_task(
                    waiting.wait(timers, limit=10, max_seconds=5, on_abandoned=never_abandoned)
                )
            )
            await settle()
        assert (len(waiting), timers.pending) == (3, 3)
        assert waiting.grant("a") and waiting.grant("b")
        assert (len(waiting), timers.pending) == (1, 1)
        assert [await tasks[0], await tasks[1]] == ["a", "b"]
        assert waiting.grant("c")
        assert await tasks[2] == "c"
        assert not waiting.grant("unused")  # nobody waits: the caller keeps what it offered

    run(scenario)


def test_a_full_list_refuses_at_once_without_a_timer() -> None:
    async def scenario() -> None:
        timers, waiting = FakeTimers(), WaitingList[str]()
        first = asyncio.create_task(
            waiting.wait(timers, limit=1, max_seconds=5, on_abandoned=never_abandoned)
        )
        await settle()
        assert (
            await waiting.wait(timers, limit=1, max_seconds=5, on_abandoned=never_abandoned) is HoldEnd.FULL
        )
        assert (len(waiting), timers.pending) == (1, 1)
        waiting.end_all(HoldEnd.SHUTDOWN)
        assert await first is HoldEnd.SHUTDOWN

    run(scenario)


def test_each_waiter_times_out_on_its_own_deadline() -> None:
    async def scenario() -> None:
        timers, waiting = FakeTimers(), WaitingList[str]()
        early = asyncio.create_task(
            waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=never_abandoned)
        )
        await settle()
        timers.advance(0.5)
        late = asyncio.create_task(waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=never_abandoned))
        await settle()
        timers.advance(0.49)
        await settle()
        assert not early.done() and len(waiting) == 2
        timers.advance(0.01)
        assert await early is HoldEnd.TIMED_OUT
        assert len(waiting) == 1 and not late.done()
        assert waiting.grant("a")  # the one left is the one that gets it
        assert await late == "a"
        assert timers.pending == 0

    run(scenario)


def test_end_all_wakes_every_waiter_in_order() -> None:
    async def scenario() -> None:
        timers, waiting = FakeTimers(), WaitingList[str]()
        woken: list[int] = []

        async def wait(index: int) -> HoldEnd | str:
            outcome = await waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=never_abandoned)
            woken.append(index)
            return outcome

        tasks = [asyncio.create_task(wait(index)) for index in range(3)]
        await settle()
        waiting.end_all(HoldEnd.REMOVED)
        assert (len(waiting), timers.pending) == (0, 0)
        assert await asyncio.gather(*tasks) == [HoldEnd.REMOVED] * 3
        assert woken == [0, 1, 2]

    run(scenario)


def test_a_cancelled_waiter_leaves_the_list_and_gives_back_a_grant_it_never_used() -> None:
    async def scenario() -> None:
        timers, waiting = FakeTimers(), WaitingList[str]()
        abandoned: list[str] = []
        waiter = asyncio.create_task(
            waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=abandoned.append)
        )
        await settle()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert (len(waiting), timers.pending, abandoned) == (0, 0, [])

        # Granted, then cancelled before it woke up (a drain running out of grace): the grant goes back.
        waiter = asyncio.create_task(
            waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=abandoned.append)
        )
        await settle()
        assert waiting.grant("slot")
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()
        assert abandoned == ["slot"]

        # Cancelled, not yet cleaned up, when a grant comes: the grant goes to the next waiter instead.
        first = asyncio.create_task(
            waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=abandoned.append)
        )
        second = asyncio.create_task(
            waiting.wait(timers, limit=5, max_seconds=1, on_abandoned=abandoned.append)
        )
        await settle()
        first.cancel()  # its future is cancelled now; its task runs its cleanup on the next loop turn
        assert waiting.grant("slot 2")
        assert await second == "slot 2"
        await asyncio.gather(first, return_exceptions=True)
        assert abandoned == ["slot"]

    run(scenario)


# an API's held requests and its replica slots ----------------------------------------------------------


def test_an_api_holds_only_without_replicas_and_while_waiting_can_bring_one() -> None:
    assert ApiState(api()).holds()
    assert not ApiState(api("r1")).holds()
    assert not ApiState(api(hold=False)).holds()
    assert not ApiState(api(status=ApiStatus.ERROR)).holds()
    assert not ApiState(api(status=ApiStatus.COMPUTE_UNAVAILABLE)).holds()
    assert ApiState(api(status=ApiStatus.UPDATING)).holds()


def test_published_replicas_go_to_held_requests_oldest_first_within_max_replica_concurrency() -> None:
    async def scenario() -> None:
        timers = FakeTimers()
        state = ApiState(api(concurrency=1))
        held = []
        for _ in range(3):
            held.append(asyncio.create_task(state.hold(timers)))
            await settle()
        assert state.traffic().held == 3
        assert state.traffic().demand == 3

        state.update(api("r1", concurrency=1))
        # The oldest holds the slot already; the others wait for it to free up rather than get a 503.
        assert state.traffic().in_flight == {"r1": 1}
        assert state.traffic().held == 2
        assert state.pick() is None  # nothing left for a request arriving now
        granted = await held[0]
        assert isinstance(granted, ReplicaTarget) and granted.replica_id == "r1"
        assert not held[1].done()

        state.release(ReplicaId("r1"))
        assert await held[1] == granted
        assert (state.traffic().held, state.traffic().in_flight) == (1, {"r1": 1})

        state.update(api("r1", "r2", concurrency=1))  # scaled up: the new replica's slot goes at once
        second = await held[2]
        assert isinstance(second, ReplicaTarget) and second.replica_id == "r2"
        assert (state.traffic().held, state.traffic().in_flight) == (0, {"r1": 1, "r2": 1})
        assert timers.pending == 0

    run(scenario)


def test_held_requests_time_out_and_the_queue_limit_refuses_the_excess() -> None:
    async def scenario() -> None:
        timers = FakeTimers()
        state = ApiState(api(limit=2, timeout=30))
        held = [asyncio.create_task(state.hold(timers)) for _ in range(2)]
        await settle()
        assert await state.hold(timers) is HoldEnd.FULL
        timers.advance(30)
        assert await asyncio.gather(*held) == [HoldEnd.TIMED_OUT] * 2
        assert state.traffic().held == 0

    run(scenario)


def test_a_republished_route_that_stops_holding_wakes_held_requests_at_once() -> None:
    async def scenario() -> None:
        timers = FakeTimers()
        state = ApiState(api())
        held = asyncio.create_task(state.hold(timers))
        await settle()
        state.update(api(status=ApiStatus.UPDATING))  # still waiting for its replica
        await settle()
        assert not held.done()
        state.update(api(status=ApiStatus.ERROR, reason="predictor __init__ failed"))
        assert await held is HoldEnd.NOT_HOLDING
        assert (state.traffic().held, timers.pending) == (0, 0)

    run(scenario)


def test_an_api_dropped_from_the_table_wakes_its_held_requests() -> None:
    async def scenario() -> None:
        timers, table = FakeTimers(), RouteTable()
        table.publish({ApiName("iris"): api()})
        state = table.lookup("/iris")
        assert state is not None
        held = asyncio.create_task(state.hold(timers))
        await settle()
        table.publish({ApiName("iris"): api()})  # republished: still held
        await settle()
        assert not held.done()
        table.publish({})
        assert await held is HoldEnd.REMOVED
        assert timers.pending == 0

    run(scenario)


# the gateway's answers, without sockets -----------------------------------------------------------------


def post(gateway: Gateway, path: str) -> Awaitable[Any]:
    return gateway.handle(Request(method="POST", path=path, query_string=b"", headers=[], body=b"{}"))


def test_a_draining_gateway_answers_requests_it_would_have_held_at_once() -> None:
    async def scenario() -> None:
        gateway = Gateway(clock=FakeClock())
        gateway.publish({ApiName("iris"): api()})
        assert await gateway.drain(1.0)
        response = await post(gateway, "/iris")
        assert (response.status, response.close_connection) == (503, True)
        assert b"the gateway is shutting down" in response.body
        assert gateway.traffic()[ApiName("iris")].held == 0

    run(scenario)


def test_a_route_without_hold_when_empty_answers_503_at_once() -> None:
    async def scenario() -> None:
        gateway = Gateway(clock=FakeClock())
        gateway.publish({ApiName("iris"): api(hold=False, status=ApiStatus.UPDATING)})
        response = await post(gateway, "/iris")
        assert response.status == 503
        assert (b"retry-after", b"1") in response.headers
        assert b"api iris is not ready (status updating)" in response.body

    run(scenario)
