"""The replica's own metrics: the histogram of server-side batch sizes, shared by its processes, as text.

Created by `runtime.server` before it forks (so every process counts into the same shared memory), fed by
`runtime.batching` once per batch, rendered by `runtime.app` for `GET /metrics`.
"""

from __future__ import annotations

import bisect
import ctypes
import multiprocessing
from dataclasses import dataclass

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_METRIC = "modelport_batch_size"
# Slots of the shared array: one per bucket (not cumulative), one for sizes above the last, then sum, count.
_OVERFLOW = len(BATCH_SIZE_BUCKETS)
_SUM = _OVERFLOW + 1
_COUNT = _OVERFLOW + 2


@dataclass(frozen=True, slots=True)
class BatchSizes:
    """A reading of the histogram: `buckets` are (upper bound, batches of at most that size), cumulative."""

    buckets: tuple[tuple[int, int], ...]
    total_requests: int  # the sum of all batch sizes
    batches: int


class BatchSizeHistogram:
    """How many batches of each size ran, in every process of the replica together."""

    def __init__(self) -> None:
        # Shared memory with its own process-shared lock: one acquisition per batch, never per request.
        self._slots = multiprocessing.Array(ctypes.c_int64, _COUNT + 1)

    def observe(self, size: int) -> None:
        index = bisect.bisect_left(BATCH_SIZE_BUCKETS, size)  # the first bucket whose bound is >= size
        with self._slots.get_lock():
            self._slots[index] += 1
            self._slots[_SUM] += size
            self._slots[_COUNT] += 1

    def snapshot(self) -> BatchSizes:
        with self._slots.get_lock():
            slots = self._slots[:]
        cumulative, running = [], 0
        for bound, count in zip(BATCH_SIZE_BUCKETS, slots, strict=False):
            running += count
            cumulative.append((bound, running))
        return BatchSizes(buckets=tuple(cumulative), total_requests=slots[_SUM], batches=slots[_COUNT])


def render_prometheus(sizes: BatchSizes | None) -> bytes:
    """The exposition text; None (batching is off) gives a comment only, a valid empty exposition."""
    if sizes is None:
        return b"# server-side batching is off for this API: no batch metrics\n"
    lines = [
        f"# HELP {_METRIC} Requests per predict call (server-side batching), all processes of the replica.",
        f"# TYPE {_METRIC} histogram",
    ]
    lines += [f'{_METRIC}_bucket{{le="{bound}"}} {count}' for bound, count in sizes.buckets]
    lines.append(f'{_METRIC}_bucket{{le="+Inf"}} {sizes.batches}')
    lines.append(f"{_METRIC}_sum {sizes.total_requests}")
    lines.append(f"{_METRIC}_count {sizes.batches}")
    return ("\n".join(lines) + "\n").encode()
