"""Unit tests of server-side batching through runtime.app: lists in, one response per request out, errors,
post_predict, `GET /metrics`, and Predictor's batch calls. Real PredictorPool threads; no sockets.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from starlette.datastructures import Headers, QueryParams

from modelport.http.server import Request, Response
from modelport.runtime.app import ReplicaApp
from modelport.runtime.metrics import BatchSizeHistogram, render_prometheus
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import PredictCall, Predictor
from modelport.runtime.readiness import Readiness
from modelport.spec.model import ServerSideBatchingSpec

JSON = [(b"content-type", b"application/json")]


def post(request_id: str, payload: object, *, query: bytes = b"") -> Request:
    headers = [*JSON, (b"x-request-id", request_id.encode())]
    return Request("POST", "/predict", query_string=query, headers=headers, body=orjson.dumps(payload))


def body(response: Response) -> Any:
    return orjson.loads(response.body)


def sent(response: Response) -> None:
    """What HttpServer does once it has written the response."""
    assert response.after_send is not None
    response.after_send()


class Gated:
    """Its first batch blocks inside predict until the test opens the gate: requests pile up behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.batches: list[dict[str, Any]] = []
        self.posted: list[dict[str, Any]] = []
        self.behaviour: Callable[[list[Any]], Any] = lambda payload: [{"echo": p} for p in payload]

    def predict(self, payload: Any, query_params: Any, headers: Any) -> Any:
        self.batches.append({"payload": payload, "query_params": query_params, "headers": headers})
        self.entered.release()
        if len(self.batches) == 1:
            assert self.gate.wait(5)
        return self.behaviour(payload)

    def post_predict(self, response: Any, payload: Any) -> None:
        self.posted.append({"response": response, "payload": payload})


Scenario = Callable[[ReplicaApp, PredictorPool, Gated], Awaitable[None]]


def run(
    scenario: Scenario,
    *,
    histogram: BatchSizeHistogram | None = None,
    post_predict: bool = False,
    max_batch_size: int = 8,
    threads: int = 1,
) -> Gated:
    model = Gated()

    async def main() -> None:
        pool = PredictorPool(threads)
        app = ReplicaApp(
            api_name="iris",
            pool=pool,
            readiness=Readiness(1),
            batching=ServerSideBatchingSpec(max_batch_size=max_batch_size, batch_interval=0.05),
            batch_sizes=histogram,
        )
        app.serve(
            Predictor(
                instance=model,
                predict_parameters=frozenset({"payload", "query_params", "headers"}),
                post_predict_parameters=frozenset({"response", "payload"}) if post_predict else None,
            )
        )
        try:
            await scenario(app, pool, model)
        finally:
            model.gate.set()
            pool.shutdown()

    asyncio.run(main())
    return model


async def pile_up(app: ReplicaApp, model: Gated, first: Request, *rest: Request) -> list[Response]:
    """`first` runs alone and blocks; `rest` arrive meanwhile; then the gate opens. Responses in order."""
    tasks = [asyncio.ensure_future(app.handle(first))]
    await asyncio.to_thread(model.entered.acquire)
    for request in rest:
        tasks.append(asyncio.ensure_future(app.handle(request)))
    for _ in range(10):  # each reaches the dispatcher in a step or two: no I/O on the way
        await asyncio.sleep(0)
    model.gate.set()
    return list(await asyncio.gather(*tasks))


def test_requests_that_arrive_while_a_batch_runs_share_one_predict_and_get_their_own_answers() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        requests = [post(f"r{n}", {"n": n}, query=b"v=%d" % n) for n in range(5)]
        responses = await pile_up(app, model, *requests)
        assert [r.status for r in responses] == [200] * 5
        assert [body(r) for r in responses] == [{"echo": {"n": n}} for n in range(5)]
        assert [dict(r.headers)[b"x-request-id"] for r in responses] == [b"r0", b"r1", b"r2", b"r3", b"r4"]

    histogram = BatchSizeHistogram()
    model = run(scenario, histogram=histogram)
    assert [batch["payload"] for batch in model.batches] == [[{"n": 0}], [{"n": n} for n in range(1, 5)]]
    second = model.batches[1]
    assert all(isinstance(q, QueryParams) for q in second["query_params"])
    assert [q["v"] for q in second["query_params"]] == ["1", "2", "3", "4"]
    assert all(isinstance(h, Headers) for h in second["headers"])
    assert [h["X-Request-Id"] for h in second["headers"]] == ["r1", "r2", "r3", "r4"]
    sizes = histogram.snapshot()
    assert (sizes.batches, sizes.total_requests) == (2, 5)


def test_with_two_threads_a_batch_that_waited_the_interval_runs_beside_a_stuck_one() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        stuck = asyncio.ensure_future(app.handle(post("a", 1)))
        await asyncio.to_thread(model.entered.acquire)
        others = [asyncio.ensure_future(app.handle(post(r, n))) for r, n in (("b", 2), ("c", 3))]
        # The event loop's own timer fires after batch_interval (50 ms); the gate is still shut.
        done = await asyncio.wait_for(asyncio.gather(*others), timeout=5)
        assert [body(r) for r in done] == [{"echo": 2}, {"echo": 3}]
        assert not stuck.done()
        model.gate.set()
        assert body(await stuck) == {"echo": 1}

    model = run(scenario, threads=2)
    assert [batch["payload"] for batch in model.batches] == [[1], [2, 3]]


def test_a_wrong_length_result_is_500_for_each_request_of_its_batch_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        model.behaviour = lambda payload: [1] if len(payload) > 1 else [payload[0]]
        responses = await pile_up(app, model, post("a", 1), post("b", 2), post("c", 3))
        assert [r.status for r in responses] == [200, 500, 500]
        assert [body(r) for r in responses[1:]] == [
            {"error": "internal server error", "request_id": "b"},
            {"error": "internal server error", "request_id": "c"},
        ]
        after = await app.handle(post("d", 4))  # the next batch is fine
        assert (after.status, body(after)) == (200, 4)

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario)
    assert [record.getMessage() for record in caplog.records] == [
        "batch of 2 requests (b, c): predict returned 1 results for a batch of 2 requests: "
        "return one result per request, in order"
    ]


def test_an_exception_in_predict_is_500_for_its_batch_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail_on_b(payload: list[Any]) -> Any:
        if "b" in payload:
            raise KeyError("sepal_length")
        return payload

    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        model.behaviour = fail_on_b
        responses = await pile_up(app, model, post("a", "a"), post("b", "b"), post("c", "c"))
        assert [r.status for r in responses] == [200, 500, 500]
        assert body(responses[2])["request_id"] == "c"
        assert (await app.handle(post("d", "d"))).status == 200

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario)
    [record] = caplog.records
    assert record.getMessage().startswith("batch of 2 requests (b, c): predict failed:\nTraceback")
    assert "KeyError: 'sepal_length'" in record.getMessage()


def test_an_unserializable_element_fails_only_its_request(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        model.behaviour = lambda payload: [object() if p == "b" else p for p in payload]
        responses = await pile_up(app, model, post("a", "a"), post("b", "b"), post("c", "c"))
        assert [r.status for r in responses] == [200, 500, 200]
        assert responses[2].body == b"c"  # a str result is text, as without batching

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario)
    assert "request b: predict returned a value of type object that cannot be serialized" in caplog.text


def test_post_predict_gets_the_batch_as_lists_once_every_response_is_sent() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        responses = await pile_up(app, model, post("a", 1), post("b", 2), post("c", 3))
        sent(responses[0])
        sent(responses[1])
        assert await pool.wait_idle(5)
        assert model.posted == [{"response": [{"echo": 1}], "payload": [1]}]  # c is not sent yet
        sent(responses[2])
        assert await pool.wait_idle(5)

    model = run(scenario, post_predict=True)
    assert model.posted[1] == {"response": [{"echo": 2}, {"echo": 3}], "payload": [2, 3]}


def test_metrics_show_the_batch_size_histogram() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, model: Gated) -> None:
        await pile_up(app, model, *[post(f"r{n}", n) for n in range(4)])
        response = await app.handle(Request("GET", "/metrics", query_string=b"", headers=[], body=b""))
        assert response.status == 200
        assert response.content_type == b"text/plain; version=0.0.4; charset=utf-8"
        lines = response.body.decode().splitlines()
        assert lines[:2] == [
            "# HELP modelport_batch_size Requests per predict call (server-side batching), all processes "
            "of the replica.",
            "# TYPE modelport_batch_size histogram",
        ]
        assert lines[2:] == [
            'modelport_batch_size_bucket{le="1"} 1',
            'modelport_batch_size_bucket{le="2"} 1',
            'modelport_batch_size_bucket{le="4"} 2',
            *[f'modelport_batch_size_bucket{{le="{b}"}} 2' for b in (8, 16, 32, 64, 128, 256, 512, 1024)],
            'modelport_batch_size_bucket{le="+Inf"} 2',
            "modelport_batch_size_sum 4",
            "modelport_batch_size_count 2",
        ]

    run(scenario, histogram=BatchSizeHistogram())


def test_metrics_without_batching_have_no_samples() -> None:
    async def main() -> Response:
        app = ReplicaApp(api_name="iris", pool=PredictorPool(1), readiness=Readiness(1))
        return await app.handle(Request("GET", "/metrics", query_string=b"", headers=[], body=b""))

    response = asyncio.run(main())
    assert response.status == 200
    assert all(line.startswith("#") for line in response.body.decode().splitlines())
    assert render_prometheus(None) == response.body


def test_the_histogram_is_shared_with_forked_processes() -> None:
    histogram = BatchSizeHistogram()
    child = multiprocessing.get_context("fork").Process(target=histogram.observe, args=(1024,))
    child.start()
    child.join(10)
    histogram.observe(3)
    sizes = histogram.snapshot()
    assert (sizes.batches, sizes.total_requests) == (2, 1027)
    assert dict(sizes.buckets)[4] == 1 and dict(sizes.buckets)[512] == 1 and dict(sizes.buckets)[1024] == 2


# Predictor's batch calls


class Declares:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def predict(self, payload: Any, batch_id: Any) -> Any:
        self.calls.append({"payload": payload, "batch_id": batch_id})
        return payload

    def post_predict(self, response: Any, headers: Any) -> None:
        self.calls.append({"response": response, "headers": headers})


def test_only_declared_arguments_are_passed_as_lists() -> None:
    instance = Declares()
    predictor = Predictor(
        instance=instance,
        predict_parameters=frozenset({"payload", "batch_id"}),
        post_predict_parameters=frozenset({"response", "headers"}),
    )
    calls = [PredictCall(payload=1, headers={"h": "1"}), PredictCall(payload=2, headers={"h": "2"})]
    assert predictor.predict_batch(calls) == [1, 2]
    predictor.post_predict_batch([10, 20], calls)
    assert instance.calls == [
        {"payload": [1, 2], "batch_id": None},
        {"response": [10, 20], "headers": [{"h": "1"}, {"h": "2"}]},
    ]
