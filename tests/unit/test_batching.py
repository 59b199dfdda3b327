"""Unit tests of runtime.batching: when batches form and leave, what each request gets back, failures.

The dispatcher runs on a real event loop with a FakeClock and fake timers (time moves only by `advance`) and a
`ManualPool` whose batches finish only when the test says so, so every timing below is exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from modelport.clock import FakeClock
from modelport.runtime.batching import BatchDispatcher, BatchRequest, Delivery, result_problem
from modelport.runtime.metrics import BatchSizeHistogram
from modelport.runtime.predictor import PredictCall, Predictor

T = TypeVar("T")
INTERVAL = 0.1


@dataclass
class FakeTimer:
    due: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """`Timers` on a FakeClock: `advance` moves the clock and fires what falls due, in order."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.clock.monotonic() + delay, callback)
        self._timers.append(timer)
        return timer

    @property
    def armed(self) -> list[float]:
        return sorted(t.due for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        target = self.clock.monotonic() + seconds
        # Sums of decimal steps are not exact in binary: anything due within a nanosecond of target fires.
        fired = 0
        while due := [t for t in self._timers if not t.cancelled and t.due <= target + 1e-9]:
            fired += 1
            assert fired < 1000, "timers keep re-arming for the same moment: a busy loop"
            timer = min(due, key=lambda t: t.due)
            self._timers.remove(timer)
            self.clock.advance(max(0.0, timer.due - self.clock.monotonic()))
            timer.callback()
        self.clock.advance(max(0.0, target - self.clock.monotonic()))


class ManualPool:
    """A predictor pool whose work runs (on the loop's thread) only when `finish` is called, oldest first."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self.spawned: list[str] = []

    async def run(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.queue.append((fn, future))
        return await future

    def spawn(self, fn: Callable[[], None], *, what: str) -> None:
        self.spawned.append(what)
        fn()

    async def finish(self) -> None:
        fn, future = self.queue.popleft()
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        await settle()


class Model:
    """Multiplies each payload by 10 and records each batch; `behaviour` makes it misbehave."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.posted: list[tuple[Any, Any]] = []
        self.behaviour: Callable[[list[Any]], Any] = lambda payload: [item * 10 for item in payload]

    def predict(self, payload: list[Any]) -> Any:
        self.batches.append(list(payload))
        return self.behaviour(payload)

    def post_predict(self, response: Any, payload: Any) -> None:
        self.posted.append((response, payload))


async def settle() -> None:
    """Let every ready task run until nothing is left to do (no I/O, no real timers here)."""
    for _ in range(10):
        await asyncio.sleep(0)


@dataclass
class Rig:
    dispatcher: BatchDispatcher[str]
    pool: ManualPool
    timers: FakeTimers
    model: Model
    histogram: BatchSizeHistogram
    tasks: dict[str, asyncio.Task[Delivery[str]]] = field(default_factory=dict)

    async def send(self, *requests: tuple[str, int]) -> None:
        """Submit (request id, payload) pairs in this order and let them reach the dispatcher."""
        for request_id, payload in requests:
            request = BatchRequest(call=PredictCall(payload=payload), request_id=request_id)
            self.tasks[request_id] = asyncio.ensure_future(self.dispatcher.submit(request))
            await settle()

    def answer(self, request_id: str) -> str | None:
        """The value its submitter got, or None while it still waits."""
        task = self.tasks[request_id]
        return task.result().value if task.done() else None

    def sent(self, request_id: str) -> None:
        """What the HTTP server does once it has written the response: report the delivery."""
        delivered = self.tasks[request_id].result().delivered
        assert delivered is not None
        delivered()

    async def advance(self, seconds: float) -> None:
        self.timers.advance(seconds)
        await settle()


def run(
    scenario: Callable[[Rig], Awaitable[None]],
    *,
    max_batch_size: int = 4,
    max_running: int = 1,
    post_predict: bool = False,
    respond: Callable[[object, BatchRequest], str] = lambda result, request: f"{request.request_id}={result}",
) -> Rig:
    model = Model()
    predictor = Predictor(
        instance=model,
        predict_parameters=frozenset({"payload"}),
        post_predict_parameters=frozenset({"response", "payload"}) if post_predict else None,
    )
    clock = FakeClock()
    holder: list[Rig] = []

    async def main() -> None:
        pool, timers, histogram = ManualPool(), FakeTimers(clock), BatchSizeHistogram()
        dispatcher = BatchDispatcher(
            predictor,
            max_batch_size=max_batch_size,
            batch_interval=INTERVAL,
            max_running=max_running,
            pool=pool,
            clock=clock,
            timers=timers,
            respond=respond,
            fail=lambda request: f"{request.request_id}: failed",
            histogram=histogram,
        )
        rig = Rig(dispatcher, pool, timers, model, histogram)
        holder.append(rig)
        await scenario(rig)
        for task in rig.tasks.values():
            task.cancel()
        await settle()

    asyncio.run(main())
    return holder[0]


# when batches leave


def test_an_idle_predictor_takes_a_request_at_once_as_a_batch_of_one() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1))
        assert rig.dispatcher.running == 1 and rig.dispatcher.waiting == 0
        assert len(rig.pool.queue) == 1 and rig.timers.armed == []  # no waiting on a clock
        await rig.pool.finish()
        assert rig.answer("a") == "a=10"
        await rig.send(("b", 2))  # idle again: at once again
        await rig.pool.finish()
        assert rig.answer("b") == "b=20"

    rig = run(scenario)
    assert rig.model.batches == [[1], [2]]


def test_requests_accumulate_while_a_batch_runs_and_leave_together_in_arrival_order() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3), ("d", 4))
        assert rig.dispatcher.running == 1 and rig.dispatcher.waiting == 3
        assert len(rig.pool.queue) == 1  # b, c and d hold no predictor thread
        await rig.pool.finish()  # a's batch ends: the next leaves at once with everything waiting
        assert rig.dispatcher.running == 1 and rig.dispatcher.waiting == 0
        assert [rig.answer(r) for r in "bcd"] == [None, None, None]
        await rig.pool.finish()

    rig = run(scenario)
    assert rig.model.batches == [[1], [2, 3, 4]]
    assert [rig.answer(r) for r in "abcd"] == ["a=10", "b=20", "c=30", "d=40"]


def test_each_request_gets_the_result_at_its_own_index() -> None:
    async def scenario(rig: Rig) -> None:
        rig.model.behaviour = lambda payload: [f"#{index} for {item}" for index, item in enumerate(payload)]
        await rig.send(("first", 0), ("x", 7), ("y", 8), ("z", 9))
        await rig.pool.finish()
        await rig.pool.finish()

    rig = run(scenario)
    assert [rig.answer(r) for r in ("x", "y", "z")] == ["x=#0 for 7", "y=#1 for 8", "z=#2 for 9"]


def test_a_batch_never_exceeds_max_batch_size_and_the_oldest_go_first() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(*[(f"r{n}", n) for n in range(8)])
        assert rig.dispatcher.waiting == 7
        for _ in range(4):
            await rig.pool.finish()
        assert not rig.pool.queue

    rig = run(scenario, max_batch_size=3)
    assert rig.model.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert [rig.answer(f"r{n}") for n in range(8)] == [f"r{n}={n * 10}" for n in range(8)]
    sizes = rig.histogram.snapshot()
    assert (sizes.batches, sizes.total_requests) == (4, 8)
    assert dict(sizes.buckets)[1] == 2 and dict(sizes.buckets)[2] == 2 and dict(sizes.buckets)[4] == 4


def test_with_one_thread_the_interval_never_starts_a_second_batch() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2))
        assert rig.timers.armed == []  # nothing could start before a's batch ends anyway
        await rig.advance(10 * INTERVAL)
        assert rig.dispatcher.waiting == 1 and len(rig.pool.queue) == 1
        await rig.pool.finish()
        assert len(rig.pool.queue) == 1  # b's batch, at once
        await rig.pool.finish()

    rig = run(scenario)
    assert rig.model.batches == [[1], [2]]


def test_mixed_arrivals_with_two_threads_the_interval_bounds_the_wait() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1))  # t=0: idle, leaves at once
        await rig.advance(0.03)
        await rig.send(("b", 2))  # t=0.03: a runs, b waits; its batch may start beside a's at 0.13
        assert rig.timers.armed == [pytest.approx(1000.13)]
        await rig.advance(0.02)
        await rig.send(("c", 3))  # t=0.05: joins b (the deadline stays b's)
        assert rig.timers.armed == [pytest.approx(1000.13)]
        await rig.advance(0.079)
        assert len(rig.pool.queue) == 1 and rig.dispatcher.waiting == 2  # t=0.129: not yet
        await rig.advance(0.001)
        assert len(rig.pool.queue) == 2 and rig.dispatcher.waiting == 0  # t=0.13: [b, c] beside [a]
        await rig.send(("d", 4))  # both threads busy: d waits, no timer can help it
        assert rig.timers.armed == []
        await rig.pool.finish()  # a ends; [b, c] still runs, so d's own deadline (0.23) now counts
        assert rig.dispatcher.waiting == 1 and rig.timers.armed == [pytest.approx(1000.23)]
        await rig.pool.finish()  # [b, c] ends: nothing runs, d leaves at once, before its deadline
        assert rig.dispatcher.waiting == 0 and rig.timers.armed == []
        await rig.pool.finish()

    rig = run(scenario, max_running=2)
    assert rig.model.batches == [[1], [2, 3], [4]]
    assert [rig.answer(r) for r in "abcd"] == ["a=10", "b=20", "c=30", "d=40"]


def test_with_a_spare_thread_a_full_batch_leaves_without_waiting_for_the_interval() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2))
        assert len(rig.pool.queue) == 1
        await rig.send(("c", 3))  # [b, c] is full: a spare thread takes it now
        assert len(rig.pool.queue) == 2 and rig.timers.armed == []
        await rig.send(("d", 4), ("e", 5))  # full again, but no thread is free: it waits
        assert len(rig.pool.queue) == 2 and rig.dispatcher.waiting == 2
        for _ in range(3):
            await rig.pool.finish()

    rig = run(scenario, max_batch_size=2, max_running=2)
    assert rig.model.batches == [[1], [2, 3], [4, 5]]


# failures stay in their batch


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (
            [1],
            "batch of 2 requests (b, c): predict returned 1 results for a batch of 2 requests: return one "
            "result per request, in order",
        ),
        (
            [1, 2, 3],
            "batch of 2 requests (b, c): predict returned 3 results for a batch of 2 requests: return one "
            "result per request, in order",
        ),
        (
            {"b": 1, "c": 2},
            "batch of 2 requests (b, c): predict returned a value of type dict, not a list, for a batch of "
            "2 requests: return a list with one result per request, in order (e.g. predictions.tolist())",
        ),
        (
            (20, 30),
            "batch of 2 requests (b, c): predict returned a value of type tuple, not a list, for a batch of "
            "2 requests: return a list with one result per request, in order (e.g. predictions.tolist())",
        ),
    ],
    ids=["too-few", "too-many", "dict", "tuple"],
)
def test_a_result_that_is_not_one_per_request_fails_the_whole_batch_only(
    returned: object, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3))
        await rig.pool.finish()
        rig.model.behaviour = lambda payload: returned
        await rig.send(("d", 4))
        await rig.pool.finish()  # [b, c] fails
        rig.model.behaviour = lambda payload: [item * 10 for item in payload]
        await rig.pool.finish()  # [d] works: the process is not poisoned

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        rig = run(scenario)
    assert [rig.answer(r) for r in "abcd"] == ["a=10", "b: failed", "c: failed", "d=40"]
    assert [record.getMessage() for record in caplog.records] == [message]


def test_an_exception_fails_every_request_of_its_batch_logged_once_and_the_next_batch_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(payload: list[Any]) -> Any:
        if 13 in payload:
            raise ValueError("unlucky batch")
        return [item * 10 for item in payload]

    async def scenario(rig: Rig) -> None:
        rig.model.behaviour = explode
        await rig.send(("a", 1), ("b", 2), ("c", 13), ("d", 4))
        await rig.pool.finish()
        await rig.send(("e", 5))
        await rig.pool.finish()  # [b, c, d] raises
        await rig.pool.finish()  # [e]

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        rig = run(scenario)
    assert [rig.answer(r) for r in "abcde"] == ["a=10", "b: failed", "c: failed", "d: failed", "e=50"]
    [record] = caplog.records
    text = record.getMessage()
    assert text.startswith("batch of 3 requests (b, c, d): predict failed:\nTraceback")
    assert "in explode" in text and "ValueError: unlucky batch" in text


def test_a_result_that_cannot_be_answered_fails_only_its_own_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def respond(result: object, request: BatchRequest) -> str:
        if result == 20:  # as the app's serialization raising for a value it cannot encode
            raise TypeError("not JSON")
        return f"{request.request_id}={result}"

    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3))
        await rig.pool.finish()
        await rig.pool.finish()

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        rig = run(scenario, respond=respond)
    assert [rig.answer(r) for r in "abc"] == ["a=10", "b: failed", "c=30"]
    assert caplog.records[0].getMessage().startswith("request b: handling its result failed:")


def test_result_problem_accepts_exactly_one_result_per_request() -> None:
    assert result_problem([1, 2], 2) is None
    assert result_problem([], 1) is not None and result_problem(None, 1) is not None


# cancellation


def test_a_cancelled_waiting_request_is_never_predicted() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3))
        rig.tasks["b"].cancel()
        await settle()
        assert rig.dispatcher.waiting == 1
        await rig.pool.finish()
        await rig.pool.finish()
        assert rig.tasks["b"].cancelled()

    rig = run(scenario)
    assert rig.model.batches == [[1], [3]]
    assert rig.answer("c") == "c=30"


def test_cancelling_waiting_requests_moves_the_deadline_to_the_oldest_left_or_disarms_it() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2))
        await rig.advance(0.02)
        await rig.send(("c", 3))
        assert rig.timers.armed == [pytest.approx(1000.1)]  # b's
        rig.tasks["b"].cancel()
        await settle()
        assert rig.timers.armed == [pytest.approx(1000.12)]  # c's, now the oldest
        await rig.advance(0.09)
        assert rig.dispatcher.waiting == 1  # t=0.11: b's deadline has passed, c's has not
        rig.tasks["c"].cancel()
        await settle()
        assert rig.timers.armed == [] and rig.dispatcher.waiting == 0
        await rig.pool.finish()
        assert not rig.pool.queue

    rig = run(scenario, max_running=2)
    assert rig.model.batches == [[1]]


def test_a_request_cancelled_while_its_batch_runs_leaves_the_others_their_results() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3))
        await rig.pool.finish()
        rig.tasks["b"].cancel()  # its batch [b, c] runs: it cannot be taken back
        await settle()
        await rig.pool.finish()
        rig.sent("a")
        rig.sent("c")

    rig = run(scenario, post_predict=True)
    assert rig.model.batches == [[1], [2, 3]]
    assert rig.answer("c") == "c=30"
    # post_predict of [b, c] ran once c was sent: b, cancelled, will never be.
    assert rig.model.posted == [([10], [1]), ([20, 30], [2, 3])]


# post_predict


def test_post_predict_runs_once_per_batch_with_lists_after_every_response_is_sent() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1), ("b", 2), ("c", 3))
        await rig.pool.finish()
        await rig.pool.finish()
        assert rig.model.posted == [] and rig.pool.spawned == []  # nothing is sent yet
        rig.sent("a")
        assert rig.model.posted == [([10], [1])]
        rig.sent("b")
        assert len(rig.model.posted) == 1  # c's response is not sent yet
        rig.sent("c")
        assert rig.pool.spawned == ["post_predict", "post_predict"]

    rig = run(scenario, post_predict=True)
    assert rig.model.posted == [([10], [1]), ([20, 30], [2, 3])]


def test_no_post_predict_no_delivery_callback() -> None:
    async def scenario(rig: Rig) -> None:
        await rig.send(("a", 1))
        await rig.pool.finish()
        assert rig.tasks["a"].result().delivered is None

    rig = run(scenario)
    assert rig.pool.spawned == []


def test_a_failed_batch_gets_no_post_predict() -> None:
    async def scenario(rig: Rig) -> None:
        rig.model.behaviour = lambda payload: "not a list"
        await rig.send(("a", 1))
        await rig.pool.finish()
        assert rig.tasks["a"].result() == Delivery("a: failed", None)

    rig = run(scenario, post_predict=True)
    assert rig.model.posted == [] and rig.pool.spawned == []
