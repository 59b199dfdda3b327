"""Unit tests of runtime.app (routes, predict, errors, post_predict), runtime.pool and runtime.readiness.

In-process: requests are `Request` objects handed to `ReplicaApp.handle`; no sockets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, QueryParams
from starlette.responses import PlainTextResponse

from modelport.http.server import Request, Response
from modelport.runtime.app import ReplicaApp
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import PredictCall, Predictor
from modelport.runtime.readiness import Readiness


def request(
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> Request:
    return Request(method=method, path=path, query_string=query, headers=headers or [], body=body)


def body(response: Response) -> Any:
    return orjson.loads(response.body)


def header(response: Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


def predictor(instance: object, *predict: str, post_predict: tuple[str, ...] | None = None) -> Predictor:
    return Predictor(
        instance=instance,
        predict_parameters=frozenset(predict),
        post_predict_parameters=None if post_predict is None else frozenset(post_predict),
    )


Scenario = Callable[[ReplicaApp, PredictorPool, Readiness], Awaitable[None]]


def run(scenario: Scenario, *, serve: Predictor | None = None, threads: int = 1) -> None:
    async def main() -> None:
        pool = PredictorPool(threads)
        readiness = Readiness(1)
        app = ReplicaApp(api_name="iris", pool=pool, readiness=readiness)
        if serve is not None:
            app.serve(serve)
            readiness.mark_ready()
        try:
            await scenario(app, pool, readiness)
        finally:
            pool.shutdown()

    asyncio.run(main())


class Echo:
    """Returns what it was given, the query and the headers read the way many Cortex predictors read them."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def predict(self, payload: Any = None, query_params: Any = None, headers: Any = None) -> Any:
        self.threads.append(threading.current_thread().name)
        if isinstance(payload, bytes):
            payload = {"bytes": payload.decode()}
        return {
            "payload": payload,
            "query_params": None if query_params is None else dict(query_params),
            "headers": None if headers is None else dict(headers),
        }


class Capture:
    """Keeps the query_params and headers objects it is given, for the test to inspect."""

    def __init__(self) -> None:
        self.query_params: list[Any] = []
        self.headers: list[Any] = []

    def predict(self, query_params: Any, headers: Any) -> Any:
        self.query_params.append(query_params)
        self.headers.append(headers)
        return "ok"


# routes, health and readiness


def test_health_readiness_and_draining() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        assert (await app.handle(request("GET", "/healthz"))).status == 200
        loading = await app.handle(request("GET", "/readyz"))
        assert loading.status == 503
        assert body(loading) == {"status": "loading", "ready_processes": 0, "processes": 1}
        summary = body(await app.handle(request("GET", "/predict")))
        assert summary["api"] == "iris" and summary["ready"] is False and "message" in summary

        readiness.mark_ready()
        ready = await app.handle(request("GET", "/readyz"))
        assert (ready.status, body(ready)["status"]) == (200, "ready")
        assert body(await app.handle(request("GET", "/")))["ready"] is True

        readiness.start_draining()
        draining = await app.handle(request("GET", "/readyz"))
        assert (draining.status, body(draining)["status"]) == (503, "draining")
        assert (await app.handle(request("GET", "/healthz"))).status == 200

    run(scenario)


def test_readiness_counts_every_process() -> None:
    readiness = Readiness(2)
    readiness.mark_ready()
    assert not readiness.snapshot().ready and readiness.snapshot().phase == "loading"
    readiness.mark_ready()
    assert readiness.snapshot().ready and readiness.snapshot().ready_processes == 2


def test_unknown_path_is_404_and_wrong_method_405() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        missing = await app.handle(request("GET", "/v1/predict"))
        assert missing.status == 404 and body(missing)["error"] == "not found: GET /v1/predict"
        wrong = await app.handle(request("DELETE", "/predict"))
        assert wrong.status == 405 and "DELETE" in body(wrong)["error"]
        assert header(wrong, b"allow") == b"POST, GET"
        assert (await app.handle(request("POST", "/readyz"))).status == 405
        head = await app.handle(request("HEAD", "/predict"))
        assert (head.status, head.body) == (405, b"")

    run(scenario)


# predict


def test_predict_before_the_predictor_is_loaded_is_503_retry() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict", headers=[(b"x-request-id", b"r1")]))
        assert response.status == 503
        assert header(response, b"retry-after") == b"1"
        assert body(response)["request_id"] == "r1"

    run(scenario)


def test_predict_passes_payload_query_params_and_headers_on_a_predictor_thread() -> None:
    echo = Echo()

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(
            request(
                "POST",
                "/predict",
                body=b'{"x": [1, 2]}',
                query=b"a=1&b=two%20words",
                headers=[
                    (b"content-type", b"application/json"),
                    (b"x-request-id", b"req-7"),
                    (b"x-tag", b"a"),
                    (b"x-tag", b"b"),
                ],
            )
        )
        assert response.status == 200
        assert header(response, b"x-request-id") == b"req-7"
        assert body(response) == {
            "payload": {"x": [1, 2]},
            "query_params": {"a": "1", "b": "two words"},
            # dict() of Starlette's Headers keeps a repeated header's first value, as it did in Cortex.
            "headers": {"content-type": "application/json", "x-request-id": "req-7", "x-tag": "a"},
        }
        raw = await app.handle(request("POST", "/", body=b"raw"))
        assert body(raw)["payload"] == {"bytes": "raw"}

    run(scenario, serve=predictor(echo, "payload", "query_params", "headers"))
    assert all(name.startswith("predictor") for name in echo.threads) and len(echo.threads) == 2


def test_headers_are_starlette_headers_read_case_insensitively() -> None:
    capture = Capture()
    raw = [
        (b"content-type", b"application/json"),
        (b"x-foo", b"bar"),
        (b"x-tag", b"a"),
        (b"x-tag", b"b"),
    ]

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        assert (await app.handle(request("POST", "/predict", headers=raw))).status == 200

    run(scenario, serve=predictor(capture, "query_params", "headers"))
    [headers] = capture.headers
    assert isinstance(headers, Headers)
    assert headers.get("X-Foo") == "bar" and headers["X-FOO"] == "bar"
    assert headers["Content-Type"] == "application/json"
    assert "X-Tag" in headers and "x-tag" in headers and "x-missing" not in headers
    assert headers.getlist("X-Tag") == ["a", "b"] and headers["x-tag"] == "a"
    assert headers.get("X-Missing") is None and headers.getlist("x-missing") == []
    with pytest.raises(KeyError):
        headers["X-Missing"]
    assert headers.raw == raw  # the request's own names and values, in arrival order


def test_query_params_are_a_multi_dict_decoded_as_utf8() -> None:
    capture = Capture()
    query = (
        b"tag=a&tag=b&escaped=%C3%A9t%C3%A9&raw=K\xc3\xb6ln&plus=a+b&blank="
        b"&bad=%FF&bad_raw=\xff&emoji=%F0%9F%98%80"
    )

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        assert (await app.handle(request("POST", "/predict", query=query))).status == 200

    run(scenario, serve=predictor(capture, "query_params", "headers"))
    [query_params] = capture.query_params
    assert isinstance(query_params, QueryParams)
    assert query_params.getlist("tag") == ["a", "b"]
    assert query_params["tag"] == "b"  # Starlette's single-value lookup keeps the last one
    assert query_params["escaped"] == "été"  # percent-encoded UTF-8
    assert query_params["raw"] == "Köln"  # unescaped UTF-8 bytes, as some clients send them
    assert query_params["emoji"] == "\N{GRINNING FACE}"
    assert (query_params["plus"], query_params["blank"]) == ("a b", "")
    assert query_params["bad"] == query_params["bad_raw"] == "\ufffd"  # not UTF-8: replaced, not an error
    assert "tag" in query_params and "missing" not in query_params
    assert query_params.get("missing") is None and query_params.getlist("missing") == []
    assert list(query_params.keys()) == ["tag", "escaped", "raw", "plus", "blank", "bad", "bad_raw", "emoji"]


def test_predictors_that_treat_query_params_and_headers_as_dicts_keep_working() -> None:
    class DictStyle:
        def predict(self, query_params: Any, headers: Any) -> Any:
            return {
                "as_dict": dict(query_params),
                "sleep": float(query_params.get("sleep", 0)),  # examples/sleep reads it this way
                "default": query_params.get("missing", "none"),
                "items": sorted(query_params.items()),
                "keys": sorted(query_params),
                "length": len(query_params),
                "has_user": "x-user" in headers,
                "user": headers.get("x-user"),
                "agent": headers["user-agent"],
                "header_names": sorted(headers.keys()),
                "headers": dict(headers),
            }

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(
            request(
                "POST",
                "/predict",
                query=b"sleep=0.5&model=v2",
                headers=[(b"x-user", b"ann"), (b"user-agent", b"curl/8")],
            )
        )
        assert response.status == 200
        assert body(response) == {
            "as_dict": {"sleep": "0.5", "model": "v2"},
            "sleep": 0.5,
            "default": "none",
            "items": [["model", "v2"], ["sleep", "0.5"]],
            "keys": ["model", "sleep"],
            "length": 2,
            "has_user": True,
            "user": "ann",
            "agent": "curl/8",
            "header_names": ["user-agent", "x-user"],
            "headers": {"x-user": "ann", "user-agent": "curl/8"},
        }

    run(scenario, serve=predictor(DictStyle(), "query_params", "headers"))


def test_query_params_and_headers_are_built_only_when_declared() -> None:
    calls: list[PredictCall] = []

    class Recording(Predictor):
        def predict(self, call: PredictCall) -> object:
            calls.append(call)
            return super().predict(call)

    class PayloadOnly:
        def predict(self, payload: Any) -> Any:
            return "ok"

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict", query=b"a=1", headers=[(b"x-a", b"1")]))
        assert response.status == 200

    run(
        scenario,
        serve=Recording(
            instance=PayloadOnly(), predict_parameters=frozenset({"payload"}), post_predict_parameters=None
        ),
    )
    [call] = calls
    assert (call.query_params, call.headers) == (None, None)


def test_post_predict_gets_query_params_and_headers_that_only_it_declares() -> None:
    seen: list[tuple[Any, Any]] = []

    class PostOnly:
        def predict(self) -> Any:
            return "ok"

        def post_predict(self, query_params: Any, headers: Any) -> None:
            seen.append((query_params, headers))

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(
            request("POST", "/predict", query=b"v=1&v=2", headers=[(b"x-trace", b"t1")])
        )
        assert response.after_send is not None
        response.after_send()
        assert await pool.wait_idle(5)

    run(scenario, serve=predictor(PostOnly(), post_predict=("query_params", "headers")))
    [(query_params, headers)] = seen
    assert isinstance(query_params, QueryParams) and query_params.getlist("v") == ["1", "2"]
    assert isinstance(headers, Headers) and headers["X-Trace"] == "t1"


def test_a_new_request_id_is_made_when_none_is_given() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        first = header(await app.handle(request("POST", "/predict")), b"x-request-id")
        second = header(await app.handle(request("POST", "/predict")), b"x-request-id")
        assert first is not None and second is not None and first != second
        assert len(first) == 32 and int(first, 16) >= 0

    run(scenario, serve=predictor(Echo()))


def test_the_body_is_not_parsed_unless_payload_is_declared() -> None:
    class NoPayload:
        def predict(self, query_params: Any) -> Any:
            return "fine"

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(
            request("POST", "/predict", body=b"{not json", headers=[(b"content-type", b"application/json")])
        )
        assert (response.status, response.body) == (200, b"fine")

    run(scenario, serve=predictor(NoPayload(), "query_params"))


def test_invalid_json_is_400_with_the_reason() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(
            request("POST", "/predict", body=b"{not json", headers=[(b"content-type", b"application/json")])
        )
        assert response.status == 400
        assert body(response)["error"].startswith("invalid JSON body: ")
        assert header(response, b"x-request-id") is not None

    run(scenario, serve=predictor(Echo(), "payload"))


def test_a_predictor_exception_is_500_and_the_traceback_is_logged_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing:
        def predict(self, payload: Any) -> Any:
            raise KeyError("sepal_length")

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict", headers=[(b"x-request-id", b"abc123")]))
        assert response.status == 500
        assert body(response) == {"error": "internal server error", "request_id": "abc123"}
        assert header(response, b"x-request-id") == b"abc123"

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario, serve=predictor(Failing(), "payload"))
    [record] = caplog.records
    message = record.getMessage()
    assert message.startswith("request abc123: predict failed:\nTraceback")
    assert "in predict" in message and "KeyError: 'sepal_length'" in message


def test_an_unserializable_return_is_500_and_the_log_names_the_type(caplog: pytest.LogCaptureFixture) -> None:
    class Returner:
        def predict(self) -> Any:
            return object()

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict", headers=[(b"x-request-id", b"r9")]))
        assert (response.status, body(response)["request_id"]) == (500, "r9")

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario, serve=predictor(Returner()))
    assert "request r9: predict returned a value of type object that cannot be serialized" in caplog.text


def test_post_predict_runs_on_the_pool_only_after_the_response_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class WithPost:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, Any, str]] = []

        def predict(self, payload: Any) -> Any:
            return {"doubled": payload * 2}

        def post_predict(self, response: Any, payload: Any) -> None:
            self.calls.append((response, payload, threading.current_thread().name))
            if payload == 0:
                raise RuntimeError("metrics store down")

    instance = WithPost()

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        headers = [(b"content-type", b"application/json")]
        response = await app.handle(request("POST", "/predict", body=b"21", headers=headers))
        assert body(response) == {"doubled": 42}
        await pool.wait_idle(5)
        assert instance.calls == []  # not before the server has written the response
        assert response.after_send is not None
        response.after_send()  # what HttpServer does once the response is handed to the transport
        assert await pool.wait_idle(5)
        assert instance.calls[0][:2] == ({"doubled": 42}, 21)
        assert instance.calls[0][2].startswith("predictor")

        failing = await app.handle(request("POST", "/predict", body=b"0", headers=headers))
        assert failing.status == 200 and failing.after_send is not None
        failing.after_send()
        assert await pool.wait_idle(5)

    with caplog.at_level(logging.ERROR, logger="modelport.runtime"):
        run(scenario, serve=predictor(instance, "payload", post_predict=("response", "payload")))
    assert "post_predict failed" in caplog.text and "RuntimeError: metrics store down" in caplog.text


def test_no_after_send_work_without_post_predict() -> None:
    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict"))
        assert response.after_send is None

    run(scenario, serve=predictor(Echo()))


def test_a_starlette_background_task_runs_after_the_response() -> None:
    ran: list[str] = []

    class WithBackground:
        def predict(self) -> Any:
            return PlainTextResponse("done", background=BackgroundTask(ran.append, "background"))

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        response = await app.handle(request("POST", "/predict"))
        assert response.body == b"done" and ran == []
        assert response.after_send is not None
        response.after_send()
        assert await pool.wait_idle(5)
        assert ran == ["background"]

    run(scenario, serve=predictor(WithBackground()))


def test_requests_beyond_the_threads_wait_in_the_pool_queue() -> None:
    release = threading.Event()
    running = threading.Semaphore(0)

    class Blocking:
        def predict(self) -> Any:
            running.release()
            release.wait(5)
            return "ok"

    async def scenario(app: ReplicaApp, pool: PredictorPool, readiness: Readiness) -> None:
        tasks = [asyncio.ensure_future(app.handle(request("POST", "/predict"))) for _ in range(3)]
        await asyncio.to_thread(running.acquire)
        await asyncio.to_thread(running.acquire)
        assert pool.busy == 3  # two running (threads=2), one queued
        assert not running.acquire(timeout=0.05)  # the third has not started
        release.set()
        responses = await asyncio.gather(*tasks)
        assert [r.status for r in responses] == [200, 200, 200]
        assert await pool.wait_idle(5) and pool.busy == 0

    run(scenario, serve=predictor(Blocking()), threads=2)
