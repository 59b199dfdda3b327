"""Whether the replica may receive traffic: every process has its predictor, and none is draining.

Created by `runtime.server` before it forks (the counters live in shared memory, so every process of the
replica answers `/readyz` alike); read by `runtime.app`, updated by `runtime.server`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized


@dataclass(frozen=True, slots=True)
class ReadinessSnapshot:
    ready_processes: int
    processes: int
    draining: bool

    @property
    def ready(self) -> bool:
        return not self.draining and self.ready_processes >= self.processes

    @property
    def phase(self) -> str:
        if self.draining:
            return "draining"
        return "ready" if self.ready else "loading"


class Readiness:
    """Shared memory: how many processes have constructed their predictor, and a draining flag."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._ready: Synchronized[int] = multiprocessing.Value(ctypes.c_int, 0)
        self._draining: Synchronized[int] = multiprocessing.Value(ctypes.c_int, 0)

    def mark_ready(self) -> None:
        """Called once per process, when its predictor is constructed."""
        with self._ready.get_lock():
            self._ready.value += 1

    def start_draining(self) -> None:
        self._draining.value = 1

    def snapshot(self) -> ReadinessSnapshot:
        return ReadinessSnapshot(
            ready_processes=self._ready.value, processes=self.processes, draining=bool(self._draining.value)
        )
