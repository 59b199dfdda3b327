"""The threads that run user code (import, __init__, predict, post_predict) for one replica process.

Used by `runtime.server` (loading, draining) and `runtime.app` (requests). The event loop never runs user
code; it only submits here. Work beyond `threads` waits in the executor's queue, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("modelport.runtime")


class PredictorPool:
    """A ThreadPoolExecutor that counts the work submitted to it, so that draining can wait for it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predictor")
        self._busy = 0  # submitted and not finished; touched only on the event loop
        self._idle: asyncio.Event | None = None

    @property
    def busy(self) -> int:
        return self._busy

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a predictor thread; its result or exception comes back here."""
        return await self._submit(fn)

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
        """Forget queued work; threads finish what they run (they cannot be interrupted)."""
        self._executor.shutdown(wait=self._busy == 0, cancel_futures=True)

    def _submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        # Counted on the executor's own future: it completes when the thread is really done (or when queued
        # work is cancelled), even if whoever awaits the asyncio wrapper has been cancelled.
        work = self._executor.submit(fn)
        self._busy += 1
        work.add_done_callback(lambda _: _call_soon(loop, self._finished))
        return asyncio.wrap_future(work, loop=loop)

    def _finished(self) -> None:
        self._busy -= 1
        if self._busy == 0 and self._idle is not None:
            self._idle.set()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: a thread outlived the drain
        loop.call_soon_threadsafe(callback)


def _log_failure(future: asyncio.Future[None], what: str) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("%s failed: %r", what, exc)
