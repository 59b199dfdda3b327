"""Keeping one lease alive while user code runs: `extend` every visibility/3 seconds on a thread of its own.

Used by `runtime.worker` (a batch, a task, on_job_complete) and `runtime.async_consumer` (an async request),
around each call of user code; the user code itself cannot be interrupted, so a lost lease is only noted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from modelport.runtime.queue_client import ControlApiError, ControlUnreachableError, LeaseOutcome

log = logging.getLogger("modelport.runtime")

EXTENDS_PER_VISIBILITY = 3  # extend three times per visibility timeout: two may fail before the lease expires


class Heartbeat:
    """A daemon thread calling `extend()` every `interval` seconds until stopped or the lease is lost."""

    def __init__(self, extend: Callable[[], LeaseOutcome], *, interval: float, what: str) -> None:
        self._extend = extend
        self._interval = max(interval, 0.01)
        self._what = what
        self._stopped = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {what}", daemon=True)

    @classmethod
    def for_visibility(
        cls, extend: Callable[[], LeaseOutcome], *, visibility_seconds: float, what: str
    ) -> Heartbeat:
        return cls(extend, interval=visibility_seconds / EXTENDS_PER_VISIBILITY, what=what)

    @property
    def lost(self) -> bool:
        """Whether the control API said (409) that the lease is no longer ours."""
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop extending (does not wait: an extend in flight finishes on its own)."""
        self._stopped.set()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                outcome = self._extend()
            except (ControlApiError, ControlUnreachableError) as exc:
                log.warning("cannot extend the lease of %s: %s", self._what, exc)
                continue
            if outcome is LeaseOutcome.LOST:
                if not self._stopped.is_set():
                    log.warning("the lease of %s was lost (it expired and was leased again)", self._what)
                self._lost.set()
                return
