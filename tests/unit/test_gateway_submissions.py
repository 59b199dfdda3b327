"""The gateway's submission endpoints (gateway.app.Gateway with a SubmissionHandler) on a real loopback
socket: what reaches the handler for batch, task and async APIs, preflights, realtime paths, counters.
"""

from __future__ import annotations

import asyncio
import http.client
import io
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from modelport.gateway.app import Gateway, SubmissionHandler
from modelport.http.server import Request, Response, json_response
from modelport.types import Address, ApiKind, ApiName, ApiRoute, ApiStatus
from tests.support import HttpReply, free_port

BATCH, TASK, ASYNC, REALTIME = ApiName("sum"), ApiName("train"), ApiName("echo"), ApiName("iris")


@dataclass(frozen=True, slots=True)
class Call:
    api_name: ApiName
    kind: ApiKind
    method: str
    item: str | None
    body: bytes
    query: bytes


class RecordingHandler:
    """Answers every submission with what it received (or `status`), and records the call."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status = 200

    async def handle_submission(self, route: ApiRoute, request: Request, item: str | None) -> Response:
        call = Call(route.api_name, route.kind, request.method, item, request.body, request.query_string)
        self.calls.append(call)
        return json_response(self.status, {"api": route.api_name, "method": request.method, "item": item})


def route(name: ApiName, kind: ApiKind) -> ApiRoute:
    return ApiRoute(
        api_name=name,
        endpoint=f"/{name}",
        replicas=(),
        max_replica_concurrency=4,
        status=ApiStatus.LIVE if kind is not ApiKind.REALTIME else ApiStatus.UPDATING,
        kind=kind,
    )


ROUTES = {
    BATCH: route(BATCH, ApiKind.BATCH),
    TASK: route(TASK, ApiKind.TASK),
    ASYNC: route(ASYNC, ApiKind.ASYNC),
    REALTIME: route(REALTIME, ApiKind.REALTIME),
}


class _BytesSocket:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
        return self._file


async def call(
    address: Address,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> HttpReply:
    """One request on its own connection, its reply parsed by http.client (not by the gateway's code)."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "host: gateway", "connection: close"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"content-length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = await reader.read()
    finally:
        writer.close()
    parsed = http.client.HTTPResponse(_BytesSocket(raw), method=method)  # type: ignore[arg-type]
    parsed.begin()
    reply_headers = {name.lower(): value for name, value in parsed.getheaders()}
    return HttpReply(status=parsed.status, headers=reply_headers, body=parsed.read())


Scenario = Callable[[Gateway, Address], Coroutine[Any, Any, None]]


def serve(scenario: Scenario, handler: SubmissionHandler | None) -> None:
    """Run `scenario` against a started gateway on a free loopback port, with the routes published."""

    async def main() -> None:
        gateway = Gateway()
        gateway.publish(ROUTES)
        if handler is not None:
            gateway.serve_submissions(handler)
        address = await gateway.start(host="127.0.0.1", port=free_port())
        try:
            async with asyncio.timeout(5):
                await scenario(gateway, address)
        finally:
            await gateway.drain(1.0)
            gateway.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Poll for up to 2 s (counters are recorded once the response is handed to the transport)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not met within 2 s")


def test_submissions_reports_and_stops_reach_the_handler_with_the_item() -> None:
    handler = RecordingHandler()

    async def scenario(gateway: Gateway, address: Address) -> None:
        submitted = await call(address, "POST", "/sum?dryRun=true", body=b'{"workers": 1}')
        assert (submitted.status, submitted.json()) == (200, {"api": "sum", "method": "POST", "item": None})
        assert submitted.headers["content-type"] == "application/json"
        report = await call(address, "GET", "/sum/6a18a500f3")
        assert report.json() == {"api": "sum", "method": "GET", "item": "6a18a500f3"}
        await call(address, "DELETE", "/train/6a18a500f3")
        await call(address, "GET", "/train/")
        await call(address, "POST", "/echo", body=b"payload", headers=[("content-type", "text/plain")])
        await call(address, "GET", "/echo/18f-abc")

    serve(scenario, handler)
    assert handler.calls == [
        Call(BATCH, ApiKind.BATCH, "POST", None, b'{"workers": 1}', b"dryRun=true"),
        Call(BATCH, ApiKind.BATCH, "GET", "6a18a500f3", b"", b""),
        Call(TASK, ApiKind.TASK, "DELETE", "6a18a500f3", b"", b""),
        Call(TASK, ApiKind.TASK, "GET", None, b"", b""),
        Call(ASYNC, ApiKind.ASYNC, "POST", None, b"payload", b""),
        Call(ASYNC, ApiKind.ASYNC, "GET", "18f-abc", b"", b""),
    ]


def test_a_preflight_on_a_submission_endpoint_is_answered_by_the_gateway() -> None:
    handler = RecordingHandler()

    async def scenario(gateway: Gateway, address: Address) -> None:
        asked = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "content-type"),
        ]
        for path in ("/sum", "/sum/6a18a500f3"):
            reply = await call(address, "OPTIONS", path, headers=asked)
            assert reply.status == 204
            assert reply.headers["allow"] == "GET, HEAD, POST, DELETE, OPTIONS"
            assert reply.headers["access-control-allow-origin"] == "*"
            assert reply.headers["access-control-allow-headers"] == "content-type"
            # A browser sends DELETE <endpoint>/<id> only when the preflight allows it.
            allowed = {m.strip() for m in reply.headers["access-control-allow-methods"].split(",")}
            assert {"GET", "POST", "DELETE"} <= allowed
        answered = await call(address, "GET", "/sum/6a18a500f3", headers=[("origin", "https://app.example")])
        assert answered.headers["access-control-allow-origin"] == "*"
        plain = await call(address, "GET", "/sum/6a18a500f3")
        assert "access-control-allow-origin" not in plain.headers

    serve(scenario, handler)
    assert [c.method for c in handler.calls] == ["GET", "GET"]  # the preflights never reached it


def test_realtime_paths_and_deeper_paths_are_not_submissions() -> None:
    handler = RecordingHandler()

    async def scenario(gateway: Gateway, address: Address) -> None:
        below_realtime = await call(address, "GET", "/iris/x")
        assert below_realtime.status == 404
        assert below_realtime.json()["error"] == "no API is deployed at /iris/x"
        assert below_realtime.json()["apis"] == ["/echo", "/iris", "/sum", "/train"]
        assert (await call(address, "DELETE", "/iris/x")).status == 404
        assert (await call(address, "POST", "/sum/6a18/batches")).status == 404
        realtime = await call(address, "POST", "/iris", body=b"{}")
        assert realtime.status == 503  # no ready replica: the realtime path, not the handler
        assert realtime.json()["error"] == "api iris is not ready (status updating)"

    serve(scenario, handler)
    assert handler.calls == []


def test_submission_responses_are_counted_per_api() -> None:
    handler = RecordingHandler()

    async def scenario(gateway: Gateway, address: Address) -> None:
        await call(address, "POST", "/sum", body=b"{}")
        await call(address, "GET", "/sum/1")
        handler.status = 404
        await call(address, "GET", "/sum/unknown")
        handler.status = 503
        await call(address, "POST", "/echo", body=b"{}")
        await call(address, "OPTIONS", "/sum")  # a preflight is not a submission
        await until(lambda: gateway.traffic()[BATCH].requests == 3 and gateway.traffic()[ASYNC].requests == 1)
        traffic = gateway.traffic()
        counted = {
            name: (t.status_2xx, t.status_4xx, t.status_5xx) for name, t in traffic.items() if t.requests
        }
        assert counted == {BATCH: (2, 1, 0), ASYNC: (0, 0, 1)}
        assert traffic[BATCH].latency_seconds_sum >= 0.0
        metrics = await call(address, "GET", "/metrics")
        assert metrics.status == 200 and b'api="sum"' in metrics.body

    serve(scenario, handler)


def test_without_a_handler_submissions_get_a_503_that_names_the_api() -> None:
    async def scenario(gateway: Gateway, address: Address) -> None:
        reply = await call(address, "POST", "/sum", body=b"{}")
        assert (reply.status, reply.json()["error"]) == (503, "api sum takes no submissions on this gateway")
        await until(lambda: gateway.traffic()[BATCH].status_5xx == 1)

    serve(scenario, None)


def test_the_endpoint_summary_is_the_handlers_for_submission_kinds() -> None:
    handler = RecordingHandler()

    async def scenario(gateway: Gateway, address: Address) -> None:
        reply = await call(address, "HEAD", "/sum")
        assert reply.status == 200 and reply.body == b""  # HEAD: the handler's answer, without the body

    serve(scenario, handler)
    assert [(c.method, c.item) for c in handler.calls] == [("HEAD", None)]
