"""Requests held while an API has no free replica slot (scale from zero): a FIFO waiting list, with deadlines.

Owned by gateway.routing.ApiState, which grants each new or freed replica slot to the oldest waiter; the
gateway's handler awaits `WaitingList.wait()` and turns how the wait ended into an HTTP answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class HoldEnd(StrEnum):
    """Why a held request stopped waiting without being granted a replica."""

    FULL = "full"  # the list already held its limit of requests: this one was never held
    TIMED_OUT = "timed out"  # its deadline passed
    NOT_HOLDING = "not holding"  # the route was republished without a replica and without holding
    REMOVED = "removed"  # the API left the route table (deleted)
    SHUTDOWN = "shutdown"  # the gateway is draining


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The one thing the waiting list needs of the event loop besides futures; asyncio's loops have it."""

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Cancellable: ...


class _Waiter(Generic[T]):
    __slots__ = ("future", "timer")

    def __init__(self, future: asyncio.Future[T | HoldEnd]) -> None:
        self.future = future
        self.timer: Cancellable | None = None


class WaitingList(Generic[T]):
    """Waiters in arrival order. Each ends exactly once: granted a value (oldest first), past its deadline,
    or ended together with the others. No polling: the granter, the deadline timer or the end wakes it."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[_Waiter[T]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(
        self, timers: Timers, *, limit: int, max_seconds: float, on_abandoned: Callable[[T], None]
    ) -> T | HoldEnd:
        """Wait at the back of the list for at most `max_seconds`; FULL at once if `limit` already wait.

        `on_abandoned` receives a value that was granted to this waiter but never used because the waiting
        task was cancelled before it woke up (what the value stands for, a replica slot, must go back).
        """
        if len(self._waiters) >= limit:
            return HoldEnd.FULL
        waiter: _Waiter[T] = _Waiter(asyncio.get_running_loop().create_future())
        waiter.timer = timers.call_later(max_seconds, functools.partial(self._expire, waiter))
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled():
                outcome = future.result()
                if not isinstance(outcome, HoldEnd):
                    on_abandoned(outcome)
            else:
                self._remove(waiter)
            raise

    def grant(self, value: T) -> bool:
        """Wake the oldest waiter with `value`; False (and `value` unused) when nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            # A future already done was cancelled with its task, which has not run its cleanup yet.
            if not waiter.future.done():
                _settle(waiter, value)
                return True
        return False

    def end_all(self, end: HoldEnd) -> None:
        """Wake every waiter with `end`, in arrival order."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            _settle(waiter, end)

    def _expire(self, waiter: _Waiter[T]) -> None:
        self._remove(waiter)
        _settle(waiter, HoldEnd.TIMED_OUT)

    def _remove(self, waiter: _Waiter[T]) -> None:
        # Waiters share one timeout per API, so the one leaving is almost always at the front: cheap.
        with contextlib.suppress(ValueError):  # already granted or ended
            self._waiters.remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()


def _settle(waiter: _Waiter[T], outcome: T | HoldEnd) -> None:
    if waiter.timer is not None:
        waiter.timer.cancel()
    if not waiter.future.done():
        waiter.future.set_result(outcome)
