"""Server-side batch sizes of an API, read from its replicas' `GET /metrics` when `describe` asks.

Called by the control API for `get API` of an API with server_side_batching; nothing on the request path.
Each replica counts its own batches (runtime/metrics.py); this adds them up.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

from modelport.backends.probe import fetch
from modelport.types import Address

_BUCKET = re.compile(rb'^modelport_batch_size_bucket\{le="(\d+)"\} (\d+)$')
_TOTAL = re.compile(rb"^modelport_batch_size_(sum|count) (\d+)$")
WAIT_SECONDS = 0.5  # a replica that does not answer in this long is left out of the reading


def parse_batch_sizes(text: bytes) -> tuple[dict[int, int], int, int] | None:
    """(cumulative count per bucket bound, requests, batches) from one replica's exposition; None when it
    has no batch metrics (batching off, or not a modelport replica)."""
    buckets: dict[int, int] = {}
    totals: dict[bytes, int] = {}
    for line in text.splitlines():
        if match := _BUCKET.match(line):
            buckets[int(match[1])] = int(match[2])
        elif match := _TOTAL.match(line):
            totals[match[1]] = int(match[2])
    if b"count" not in totals:
        return None
    return buckets, totals.get(b"sum", 0), totals[b"count"]


async def read_batch_sizes(addresses: Iterable[Address]) -> dict[str, Any] | None:
    """The API's batch sizes over its ready replicas: {batches, requests, avg_size, sizes: [{le, batches}]}
    with per-bucket (not cumulative) counts; None when no replica answered."""
    replies = await asyncio.gather(*(fetch(a, "/metrics", wait_seconds=WAIT_SECONDS) for a in addresses))
    cumulative: dict[int, int] = {}
    requests = batches = replicas = 0
    for reply in replies:
        if reply is None or reply[0] != 200 or (parsed := parse_batch_sizes(reply[1])) is None:
            continue
        buckets, summed, counted = parsed
        replicas += 1
        requests += summed
        batches += counted
        for bound, count in buckets.items():
            cumulative[bound] = cumulative.get(bound, 0) + count
    if not replicas:
        return None
    sizes, below = [], 0
    for bound in sorted(cumulative):
        sizes.append({"le": bound, "batches": cumulative[bound] - below})
        below = cumulative[bound]
    return {
        "replicas": replicas,
        "batches": batches,
        "requests": requests,
        "avg_size": requests / batches if batches else None,
        "sizes": sizes,
    }
