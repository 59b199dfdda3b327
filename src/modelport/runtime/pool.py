"""The threads that run user code (import, __init__, predict, post_predict) for one replica process.

Used by `runtime.server` (loading, draining) and `runtime.app` (requests). The event loop never runs user
code; it only submits here. Work beyond `threads` waits in the pool's queue, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("modelport.runtime")


class PredictorPool:
    """`threads` dedicated threads fed by one queue, counting the work submitted so draining can wait.

    Leaner than ThreadPoolExecutor + wrap_future on the request path (measured by bench/speed.py's profile:
    the executor's hop was a third of an M1 replica's samples): one queue put to hand work over, one
    `call_soon_threadsafe` to bring the outcome back.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._busy = 0  # submitted and not finished; touched only on the event loop
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"predictor_{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def busy(self) -> int:
        return self._busy

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a predictor thread; its result or exception comes back here."""
        return await self._submit(fn)

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """`run` without the coroutine (the request path): a future of `fn`'s result or exception."""
        return self._submit(fn)

    def spawn(self, fn: Callable[[], None], *, what: str) -> None:
        """Run `fn` on a predictor thread without waiting for it; an exception is logged (`what` names it)."""
        future = self._submit(fn)
        future.add_done_callback(lambda done: _log_failure(done, what))

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until nothing submitted is queued or running; False if that took longer than `seconds`."""
        if self._busy == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def shutdown(self) -> None:
        """Forget queued work (its futures are cancelled); threads finish what they run (they cannot be
        interrupted) and then stop."""
        self._closed = True
        while True:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                work.loop.call_soon(self._settle, work.future, None, _CANCELLED)
        for _ in self._threads:
            self._queue.put(None)

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.cancel()
            return future
        self._busy += 1
        self._queue.put(_Work(fn, future, loop))
        return future

    def _serve(self) -> None:
        while (work := self._queue.get()) is not None:
            if work.future.cancelled():  # its caller gave up before a thread was free: skip the work
                _call_soon(work.loop, partial(self._settle, work.future, None, _CANCELLED))
                continue
            try:
                result, error = work.fn(), None
            except BaseException as exc:  # handed to the awaiting coroutine, like an executor does
                result, error = None, exc
            _call_soon(work.loop, partial(self._settle, work.future, result, error))

    def _settle(self, future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
        # Counted when the thread is really done (or queued work is dropped), even if whoever awaited the
        # future has been cancelled meanwhile.
        self._busy -= 1
        if self._busy == 0 and self._idle is not None:
            self._idle.set()
        if future.done():
            return
        if error is _CANCELLED:
            future.cancel()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class _Cancelled(Exception):
    """Marks queued work dropped by shutdown or skipped because its caller was cancelled."""


_CANCELLED = _Cancelled()


@dataclass(frozen=True, slots=True)
class _Work:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: a thread outlived the drain
        loop.call_soon_threadsafe(callback)


def _log_failure(future: asyncio.Future[None], what: str) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("%s failed: %r", what, exc)
