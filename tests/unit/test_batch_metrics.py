"""Batch sizes for `describe`: each replica's /metrics exposition parsed and added up over real sockets."""

from __future__ import annotations

import asyncio

from modelport.cluster.batch_metrics import parse_batch_sizes, read_batch_sizes
from modelport.http.server import HttpServer, Request, Response
from modelport.runtime.metrics import PROMETHEUS_CONTENT_TYPE, BatchSizeHistogram, render_prometheus
from modelport.types import Address
from tests.support import free_port


def exposition(*sizes: int) -> bytes:
    histogram = BatchSizeHistogram()
    for size in sizes:
        histogram.observe(size)
    return render_prometheus(histogram.snapshot())


def test_one_replicas_exposition_parses_to_cumulative_buckets_and_totals() -> None:
    parsed = parse_batch_sizes(exposition(1, 3, 3, 8))
    assert parsed is not None
    buckets, requests, batches = parsed
    assert (requests, batches) == (15, 4)
    assert (buckets[1], buckets[2], buckets[4], buckets[8], buckets[1024]) == (1, 1, 3, 4, 4)


def test_an_exposition_without_batch_metrics_is_none() -> None:
    assert parse_batch_sizes(render_prometheus(None)) is None
    assert parse_batch_sizes(b"some_other_metric 3\n") is None


def test_replicas_are_added_up_and_a_silent_one_is_left_out() -> None:
    bodies = [exposition(2, 2, 5), exposition(1, 16)]

    async def scenario() -> dict[str, object] | None:
        servers, addresses = [], []
        for body in bodies:

            async def handle(request: Request, body: bytes = body) -> Response:
                return Response(status=200, body=body, content_type=PROMETHEUS_CONTENT_TYPE)

            server = HttpServer(handle)
            addresses.append(await server.start(host="127.0.0.1", port=0))
            servers.append(server)
        nobody = Address("127.0.0.1", free_port())
        try:
            return await read_batch_sizes([*addresses, nobody])
        finally:
            for server in servers:
                server.stop_accepting()
                await server.drain(1.0)

    reading = asyncio.run(scenario())

    assert reading is not None
    assert (reading["replicas"], reading["batches"], reading["requests"]) == (2, 5, 26)
    assert reading["avg_size"] == 26 / 5
    per_bucket = {bucket["le"]: bucket["batches"] for bucket in reading["sizes"]}  # type: ignore[attr-defined]
    assert (per_bucket[1], per_bucket[2], per_bucket[8], per_bucket[16], per_bucket[32]) == (1, 2, 1, 1, 0)


def test_no_answering_replica_is_none() -> None:
    assert asyncio.run(read_batch_sizes([Address("127.0.0.1", free_port())])) is None
