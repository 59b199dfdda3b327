"""Server-side batching: forming batches of waiting requests and running predict once per batch (Cortex 0.25).

Built by `runtime.app` (one dispatcher per process) when the spec sets `predictor.server_side_batching`.
Knows nothing of HTTP: a request is a `PredictCall` and an id; `respond` and `fail` (given by the app) turn
each result into what its submitter gets. Time and timers are injected, so tests move them by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from modelport.clock import Clock
from modelport.runtime.metrics import BatchSizeHistogram
from modelport.runtime.payload import close_payload
from modelport.runtime.predictor import PredictCall, Predictor, user_traceback

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("modelport.runtime")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Calls a function later: the event loop's `call_later` in production, a fake clock's in tests."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer: ...


class LoopTimers:
    """`Timers` on the running event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(delay, callback)


class Pool(Protocol):
    """Where user code runs (`PredictorPool`): predict on `run`, post_predict on `spawn`."""

    def run(self, fn: Callable[[], T]) -> Awaitable[T]: ...

    def spawn(self, fn: Callable[[], None], *, what: str) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchRequest:
    call: PredictCall
    request_id: str  # named in every log line about the request or its batch


@dataclass(frozen=True, slots=True)
class Delivery(Generic[R]):
    """What a submitter gets back: its value, and (when post_predict must run) the call that says it was sent.

    post_predict runs once per batch, after every request of the batch has called `delivered`.
    """

    value: R
    delivered: Callable[[], None] | None = None


@dataclass(slots=True)
class _Waiting(Generic[R]):
    request: BatchRequest
    arrived: float  # clock.monotonic() at submission: batch_interval counts from the oldest one waiting
    future: asyncio.Future[Delivery[R]]


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[R]):
    values: list[R]
    results: list[object] | None  # what predict returned; None when the batch failed


class BatchDispatcher(Generic[R]):
    """Adaptive batching for one process.

    A request that finds no batch running goes at once, as a batch of one: no latency is added at low load.
    While batches run, requests wait here (holding no thread); when a batch finishes, the next one takes up
    to `max_batch_size` of them, oldest first. With `max_running` > 1 (the predictor's threads), a further
    batch starts beside the running ones only once it is full or its oldest request has waited
    `batch_interval`. A batch whose predict raises, or returns anything but a list of one result per
    request, fails each of its requests (`fail`); the next batch runs as usual.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int,
        batch_interval: float,
        max_running: int,
        pool: Pool,
        clock: Clock,
        timers: Timers,
        respond: Callable[[object, BatchRequest], R],
        fail: Callable[[BatchRequest], R],
        histogram: BatchSizeHistogram | None = None,
    ) -> None:
        self._predictor = predictor
        self._max_batch_size = max_batch_size
        self._interval = batch_interval
        self._max_running = max_running
        self._pool = pool
        self._clock = clock
        self._timers = timers
        self._respond = respond  # on a predictor thread, once per result; should not raise
        self._fail = fail
        self._histogram = histogram
        self._waiting: deque[_Waiting[R]] = deque()
        self._running = 0
        self._timer: Timer | None = None
        self._timer_deadline = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    async def submit(self, request: BatchRequest) -> Delivery[R]:
        """Wait for the batch that takes `request`, and return its share of the outcome."""
        entry = _Waiting(request, self._clock.monotonic(), asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        self._schedule()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # Cancelled while waiting (the server gave up on it): it must not be predicted, nor hold a slot.
            with contextlib.suppress(ValueError):
                self._waiting.remove(entry)
                self._schedule()
            raise

    def _schedule(self, *, expired: bool = False) -> None:
        """Start what may start now, then keep a timer on the oldest waiting request if it may need one."""
        while self._waiting and self._running < self._max_running:
            if not (self._running == 0 or expired or len(self._waiting) >= self._max_batch_size):
                break
            self._launch()
            expired = False  # the next oldest has a deadline of its own
        self._arm_timer()

    def _arm_timer(self) -> None:
        # Only useful while a batch runs and another may start beside it: with nothing running a request
        # goes at once, and with every slot busy the next batch starts when one finishes.
        if not self._waiting or not 0 < self._running < self._max_running:
            self._cancel_timer()
            return
        deadline = self._waiting[0].arrived + self._interval
        if self._timer is not None and self._timer_deadline == deadline:
            return
        self._cancel_timer()
        self._timer_deadline = deadline
        self._timer = self._timers.call_later(max(0.0, deadline - self._clock.monotonic()), self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        # The timer is the authority on expiry (a loop's timers may fire a hair before the clock agrees).
        self._timer = None
        self._schedule(expired=True)

    def _launch(self) -> None:
        batch: list[_Waiting[R]] = []
        while self._waiting and len(batch) < self._max_batch_size:
            entry = self._waiting.popleft()
            if not entry.future.done():  # cancelled, and its submitter has not run yet to remove it
                batch.append(entry)
        if not batch:
            return
        self._running += 1
        if self._histogram is not None:
            self._histogram.observe(len(batch))
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Waiting[R]]) -> None:
        requests = [entry.request for entry in batch]
        try:
            outcome = await self._pool.run(partial(self._predict, requests))
        except asyncio.CancelledError:
            for entry in batch:
                entry.future.cancel()
            raise
        except Exception as exc:  # the pool itself failed (shut down): not the predictor's doing
            log.error("%s: could not run: %r", _describe(requests), exc)
            outcome = _Outcome([self._fail(request) for request in requests], None)
        finally:
            self._running -= 1
        self._deliver(batch, outcome)
        self._schedule()

    def _predict(self, requests: list[BatchRequest]) -> _Outcome[R]:
        """On a predictor thread: predict once for the batch, then each result becomes its request's value."""
        calls = [request.call for request in requests]
        try:
            results = self._predictor.predict_batch(calls)
        except BaseException as exc:  # a SystemExit from user code must not reach the event loop
            log.error("%s: predict failed:\n%s", _describe(requests), user_traceback(exc))
            return self._failed(requests)
        if not isinstance(results, list) or len(results) != len(requests):
            log.error("%s: %s", _describe(requests), result_problem(results, len(requests)))
            return self._failed(requests)
        values = [
            self._respond_safely(result, request) for result, request in zip(results, requests, strict=True)
        ]
        if self._predictor.post_predict_parameters is None:
            _close_payloads(calls)
        return _Outcome(values, results)

    def _respond_safely(self, result: object, request: BatchRequest) -> R:
        try:
            return self._respond(result, request)
        except BaseException as exc:
            log.error("request %s: handling its result failed:\n%s", request.request_id, user_traceback(exc))
            return self._fail(request)

    def _failed(self, requests: list[BatchRequest]) -> _Outcome[R]:
        _close_payloads([request.call for request in requests])
        return _Outcome([self._fail(request) for request in requests], None)

    def _deliver(self, batch: list[_Waiting[R]], outcome: _Outcome[R]) -> None:
        delivered = None
        if outcome.results is not None and self._predictor.post_predict_parameters is not None:
            after = partial(self._post_predict, outcome.results, [entry.request for entry in batch])
            delivered = _Countdown(len(batch), lambda: self._pool.spawn(after, what="post_predict"))
        for entry, value in zip(batch, outcome.values, strict=True):
            if entry.future.done():  # its submitter was cancelled meanwhile: nobody will send it
                if delivered is not None:
                    delivered()
            else:
                entry.future.set_result(Delivery(value, delivered))

    def _post_predict(self, results: list[object], requests: list[BatchRequest]) -> None:
        calls = [request.call for request in requests]
        try:
            self._predictor.post_predict_batch(results, calls)
        except BaseException as exc:
            log.error("%s: post_predict failed:\n%s", _describe(requests), user_traceback(exc))
        _close_payloads(calls)


def result_problem(results: object, size: int) -> str | None:
    """Why `results` cannot be split over a batch of `size` requests, or None when it can."""
    if not isinstance(results, list):
        return (
            f"predict returned a value of type {type(results).__name__}, not a list, for a batch of {size} "
            "requests: return a list with one result per request, in order (e.g. predictions.tolist())"
        )
    if len(results) != size:
        return (
            f"predict returned {len(results)} results for a batch of {size} requests: "
            "return one result per request, in order"
        )
    return None


class _Countdown:
    """Calls `then` when it has been called `count` times (once per request of a batch)."""

    def __init__(self, count: int, then: Callable[[], None]) -> None:
        self._left = count
        self._then = then

    def __call__(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._then()


def _describe(requests: Sequence[BatchRequest]) -> str:
    ids = ", ".join(request.request_id for request in requests)
    return f"batch of {len(requests)} request{'s' if len(requests) != 1 else ''} ({ids})"


def _close_payloads(calls: Sequence[PredictCall]) -> None:
    for call in calls:
        close_payload(call.payload)
