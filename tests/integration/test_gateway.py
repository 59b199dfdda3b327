"""The gateway on real loopback sockets: fake replicas (HttpServer) on free ports, and a raw-socket client
whose responses are parsed by http.client, independently of the gateway's parser. Its helpers serve
test_gateway_retries (failures, retries, pooled connections) and test_gateway_hold (scale from zero) too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import io
import json
import logging
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import uvloop

from modelport.gateway.app import Gateway
from modelport.http.server import HttpServer, Request, Response, json_response
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ReplicaId, ReplicaTarget, Revision
from tests.support import free_port

pytestmark = pytest.mark.integration

# helpers ---------------------------------------------------------------------------------------------


Scenario = Callable[[], Coroutine[Any, Any, None]]
Run = Callable[[Scenario], None]


LOOPS = ("asyncio", "uvloop")  # each event loop the gateway may be served by (the cluster daemon uses uvloop)


def run_on(loop: str, scenario: Scenario) -> None:
    """Run `scenario` on a new event loop of kind `loop`, bounded in time."""
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop

    async def bounded() -> None:
        async with asyncio.timeout(20):
            await scenario()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bounded())


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a scenario on each event loop (test modules that import these helpers declare their own)."""
    return functools.partial(run_on, request.param)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` for up to 5 s (readiness polling, not a sleep used as synchronisation)."""
    for _ in range(2500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition not met within 5 s")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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
    chunked: bool = False,
    keep_alive: bool = False,
) -> Reply:
    """One request on its own connection; the raw reply is everything until EOF, so with `keep_alive`
    this returns only if the server closes the connection itself."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        lines = [f"{method} {path} HTTP/1.1", "host: gateway"]
        if not keep_alive:
            lines.append("connection: close")
        lines += [f"{name}: {value}" for name, value in headers]
        if chunked:
            lines.append("transfer-encoding: chunked")
            half = len(body) // 2
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c)
            payload += b"0\r\n\r\n"
        else:
            lines.append(f"content-length: {len(body)}")
            payload = body
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        raw = await reader.read()
    finally:
        writer.close()
    if not raw:
        return Reply(status=0, headers={}, body=b"", raw=b"")
    parsed = http.client.HTTPResponse(_BytesSocket(raw), method=method)  # type: ignore[arg-type]
    parsed.begin()
    reply_headers = {name.lower(): value for name, value in parsed.getheaders()}
    return Reply(status=parsed.status, headers=reply_headers, body=parsed.read(), raw=raw)


Respond = Callable[[Request], Awaitable[Response]]


class FakeReplica:
    """A replica stand-in: a real HttpServer on a free port that records what it receives."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.requests: list[Request] = []
        self.gate = asyncio.Event()  # requests whose body is b"hold" wait for it
        self._respond = respond
        self._server = HttpServer(self._handle)
        self.address = Address("127.0.0.1", 0)

    async def _handle(self, request: Request) -> Response:
        self.requests.append(request)
        if request.body == b"hold":
            await self.gate.wait()
        if self._respond is not None:
            return await self._respond(request)
        return json_response(200, {"echo": request.body.decode()})

    async def start(self) -> FakeReplica:
        self.address = await self._server.start(host="127.0.0.1", port=0)
        return self

    async def start_unix(self, path: Path) -> FakeReplica:
        """Serve on a Unix socket only; the address's TCP port is one nobody listens on."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.setblocking(False)
        await self._server.start_unix(sock=sock)
        self.address = Address("127.0.0.1", free_port(), path=str(path))
        return self

    async def stop(self) -> None:
        self.gate.set()
        await self._server.drain(2.0)


class Upstream(Protocol):
    """What `serving` stops after the gateway: a FakeReplica, or a RawUpstream (test_gateway_retries)."""

    async def stop(self) -> None: ...


def target(replica_id: str, address: Address) -> ReplicaTarget:
    return ReplicaTarget(replica_id=ReplicaId(replica_id), address=address, revision=Revision("r1"))


def route(
    name: str, *targets: ReplicaTarget, max_replica_concurrency: int = 1024, retry_on_failure: bool = True
) -> dict[ApiName, ApiRoute]:
    api = ApiRoute(
        api_name=ApiName(name),
        endpoint=f"/{name}",
        replicas=targets,
        max_replica_concurrency=max_replica_concurrency,
        status=ApiStatus.LIVE,
        retry_on_failure=retry_on_failure,
    )
    return {api.api_name: api}


@contextlib.asynccontextmanager
async def serving(
    routes: dict[ApiName, ApiRoute], *upstreams: Upstream
) -> AsyncIterator[tuple[Gateway, Address]]:
    gateway = Gateway(upstream_connect_timeout=1.0)
    gateway.publish(routes)
    address = await gateway.start(host="127.0.0.1", port=0)
    try:
        yield gateway, address
    finally:
        for upstream in upstreams:
            if isinstance(upstream, FakeReplica):
                upstream.gate.set()
        await gateway.drain(2.0)
        gateway.close()
        for upstream in upstreams:
            await upstream.stop()


# forwarding ------------------------------------------------------------------------------------------


def test_forwards_body_query_and_end_to_end_headers_and_adds_a_request_id(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(route("iris", target("r1", replica.address)), replica) as (_, gateway):
            reply = await call(
                gateway,
                "POST",
                "/iris?explain=1&top=3",
                body=b'{"sepal": [5.1, 3.5]}',
                chunked=True,
                headers=[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-custom", "Kept As Is"),
                    ("proxy-authorization", "secret"),
                    ("te", "trailers"),
                    ("keep-alive", "timeout=5"),
                ],
            )
            assert reply.status == 200
            assert reply.json() == {"echo": '{"sepal": [5.1, 3.5]}'}
            seen = replica.requests[0]
            assert (seen.method, seen.path, seen.query_string) == ("POST", "/predict", b"explain=1&top=3")
            assert seen.body == b'{"sepal": [5.1, 3.5]}'
            assert seen.header(b"content-type") == b"application/json"
            assert seen.header(b"x-custom") == b"Kept As Is"
            # The client's Host goes through; where the request came from is added.
            assert seen.header(b"host") == b"gateway"
            assert seen.header(b"x-forwarded-for") == b"203.0.113.9, 127.0.0.1"
            assert seen.header(b"x-forwarded-host") == b"gateway"
            assert seen.header(b"x-forwarded-proto") == b"http"
            assert seen.client is not None and seen.client[0] == "127.0.0.1"  # the gateway, to the replica
            assert seen.header(b"content-length") == b"21"
            names = [name for name, _ in seen.headers]
            for dropped in (
                b"proxy-authorization",
                b"te",
                b"keep-alive",
                b"transfer-encoding",
                b"connection",
            ):
                assert dropped not in names
            assert re.fullmatch(rb"[0-9a-f]{32}", seen.header(b"x-request-id") or b"")

            await call(gateway, "POST", "/iris/", body=b"x", headers=[("x-request-id", "client-42")])
            assert [v for k, v in replica.requests[1].headers if k == b"x-request-id"] == [b"client-42"]
            assert replica.requests[1].query_string == b""

    run(scenario)


def test_passes_the_replica_response_through_verbatim_including_chunked_bodies(run: Run) -> None:
    plain = b'HTTP/1.1 418 I\'m a teapot\r\nX-Odd-Case: A  b\r\ncontent-length: 9\r\n\r\n{"t": 1}\n'
    chunked = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n5\r\n: [1]\r\n1\r\n}\r\n0\r\n\r\n'
    )

    async def respond(request: Request) -> Response:
        raw = chunked if request.body == b"chunked" else plain
        return Response(status=200, raw=raw)

    async def scenario() -> None:
        replica = await FakeReplica(respond).start()
        async with serving(route("tea", target("r1", replica.address)), replica) as (gw, gateway):
            first = await call(gateway, "POST", "/tea", body=b"plain")
            assert first.raw == plain
            assert (first.status, first.headers["x-odd-case"], first.body) == (418, "A  b", b'{"t": 1}\n')
            second = await call(gateway, "POST", "/tea", body=b"chunked")
            assert second.raw == chunked
            assert second.json() == {"a": [1]}
            # The pooled connection was reused for the second request and is intact for a third.
            third = await call(gateway, "POST", "/tea", body=b"chunked")
            assert third.raw == chunked
            assert gw.traffic()[ApiName("tea")].status_4xx == 1

    run(scenario)


# balancing and admission -----------------------------------------------------------------------------


def test_concurrent_requests_spread_by_least_outstanding_and_avoid_a_busy_replica(run: Run) -> None:
    async def scenario() -> None:
        a, b = await FakeReplica().start(), await FakeReplica().start()
        routes = route("m", target("a", a.address), target("b", b.address))
        async with serving(routes, a, b) as (gw, gateway):
            held = [asyncio.create_task(call(gateway, "POST", "/m", body=b"hold")) for _ in range(4)]
            await until(lambda: len(a.requests) + len(b.requests) == 4)
            assert (len(a.requests), len(b.requests)) == (2, 2)
            assert gw.traffic()[ApiName("m")].in_flight == {"a": 2, "b": 2}
            a.gate.set()
            b.gate.set()
            assert [reply.status for reply in await asyncio.gather(*held)] == [200] * 4

            # One slow request keeps `a` busy: every quick request meanwhile goes to `b`.
            a.gate.clear()
            a.requests.clear()
            b.requests.clear()
            slow = asyncio.create_task(call(gateway, "POST", "/m", body=b"hold"))
            await until(lambda: len(a.requests) + len(b.requests) == 1)
            busy, idle = (a, b) if a.requests else (b, a)
            for _ in range(5):
                assert (await call(gateway, "POST", "/m", body=b"quick")).status == 200
            assert (len(busy.requests), len(idle.requests)) == (1, 5)
            busy.gate.set()
            assert (await slow).status == 200
            assert gw.traffic()[ApiName("m")].in_flight == {"a": 0, "b": 0}

    run(scenario)


def test_sequential_requests_alternate_between_idle_replicas(run: Run) -> None:
    async def scenario() -> None:
        a, b = await FakeReplica().start(), await FakeReplica().start()
        routes = route("m", target("a", a.address), target("b", b.address))
        async with serving(routes, a, b) as (_, gateway):
            for _ in range(6):
                assert (await call(gateway, "POST", "/m", body=b"x")).status == 200
            assert (len(a.requests), len(b.requests)) == (3, 3)

    run(scenario)


def test_answers_503_with_retry_after_when_every_replica_is_at_capacity(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        routes = route("cap", target("r1", replica.address), max_replica_concurrency=1)
        async with serving(routes, replica) as (gw, gateway):
            first = asyncio.create_task(call(gateway, "POST", "/cap", body=b"hold"))
            await until(lambda: len(replica.requests) == 1)
            refused = await call(gateway, "POST", "/cap", body=b"x")
            assert refused.status == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json() == {
                "error": "api cap is at capacity: every replica holds max_replica_concurrency (1) "
                "requests; retry later"
            }
            replica.gate.set()
            assert (await first).status == 200
            assert len(replica.requests) == 1
            traffic = gw.traffic()[ApiName("cap")]
            assert (traffic.status_2xx, traffic.status_5xx) == (1, 1)

    run(scenario)


def test_unknown_paths_and_wrong_methods_get_json_errors(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(route("iris", target("r1", replica.address)), replica) as (_, gateway):
            missing = await call(gateway, "POST", "/nope", body=b"{}")
            assert missing.status == 404
            assert missing.json() == {"error": "no API is deployed at /nope", "apis": ["/iris"]}
            wrong = await call(gateway, "DELETE", "/iris")
            assert (wrong.status, wrong.headers["allow"]) == (405, "GET, HEAD, POST, OPTIONS")
            assert "DELETE" in wrong.json()["error"]
            own = await call(gateway, "POST", "/metrics")
            assert (own.status, own.headers["allow"]) == (405, "GET, HEAD")
            summary = await call(gateway, "GET", "/iris")
            assert summary.json()["ready_replicas"] == 1
            assert (await call(gateway, "GET", "/healthz")).json() == {"status": "ok"}
            for path in ("/iris", "/healthz", "/metrics"):
                get, head = await call(gateway, "GET", path), await call(gateway, "HEAD", path)
                assert (head.status, head.body) == (200, b"")
                assert head.raw.endswith(b"\r\n\r\n")
                assert head.headers["content-length"] == str(len(get.body))
                assert head.headers["content-type"] == get.headers["content-type"]
            assert replica.requests == []

    run(scenario)


def test_cors_preflight_and_every_answer_to_a_request_with_origin(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        async with serving(route("iris", target("r1", replica.address)), replica) as (_, gateway):
            asked = [
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type, x-api-key"),
            ]
            preflight = await call(gateway, "OPTIONS", "/iris", headers=asked)
            assert preflight.status == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            assert preflight.headers["access-control-allow-methods"] == "POST, GET, OPTIONS"
            assert preflight.headers["access-control-allow-headers"] == "content-type, x-api-key"
            assert preflight.headers["access-control-max-age"] == "600"
            assert replica.requests == []

            origin = [("origin", "https://app.example")]
            # The replica's bytes pass through with the one header line added after the status line.
            predicted = await call(gateway, "POST", "/iris", body=b"x", headers=origin)
            assert predicted.raw.startswith(b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: *\r\n")
            assert predicted.json() == {"echo": "x"}
            assert replica.requests[0].header(b"origin") == b"https://app.example"
            plain = await call(gateway, "POST", "/iris", body=b"x")
            assert "access-control-allow-origin" not in plain.headers
            assert plain.raw == predicted.raw.replace(b"access-control-allow-origin: *\r\n", b"")
            for method, path in (("GET", "/iris"), ("POST", "/nope"), ("GET", "/metrics")):
                reply = await call(gateway, method, path, headers=origin)
                assert reply.headers["access-control-allow-origin"] == "*"

    run(scenario)


# connections, counters, drain ------------------------------------------------------------------------


def test_counters_and_metrics_reflect_what_clients_received(run: Run) -> None:
    async def respond(request: Request) -> Response:
        status = int(request.body or b"200")
        return json_response(status, {"status": status})

    async def scenario() -> None:
        replica = await FakeReplica(respond).start()
        async with serving(route("iris", target("r1", replica.address)), replica) as (gw, gateway):
            for status in (b"200", b"201", b"400", b"500"):
                await call(gateway, "POST", "/iris", body=status)
            traffic = gw.traffic()[ApiName("iris")]
            assert (traffic.status_2xx, traffic.status_4xx, traffic.status_5xx) == (2, 1, 1)
            assert 0 < traffic.latency_seconds_sum < 5
            assert traffic.in_flight == {"r1": 0}

            metrics = await call(gateway, "GET", "/metrics")
            assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = metrics.body.decode()
            assert 'modelport_requests_total{api="iris",code="2XX"} 2\n' in text
            assert 'modelport_requests_total{api="iris",code="4XX"} 1\n' in text
            assert 'modelport_requests_total{api="iris",code="5XX"} 1\n' in text
            assert 'modelport_request_duration_seconds_count{api="iris"} 4\n' in text
            assert 'modelport_in_flight_requests{api="iris"} 0\n' in text
            assert 'modelport_ready_replicas{api="iris"} 1\n' in text

    run(scenario)


def test_a_replica_removed_from_the_route_finishes_its_requests_and_gets_no_new_ones(run: Run) -> None:
    async def scenario() -> None:
        old, new = await FakeReplica().start(), await FakeReplica().start()
        async with serving(route("m", target("old", old.address)), old, new) as (gw, gateway):
            held = asyncio.create_task(call(gateway, "POST", "/m", body=b"hold"))
            await until(lambda: len(old.requests) == 1)
            gw.publish(route("m", target("new", new.address)))
            assert gw.traffic()[ApiName("m")].in_flight == {"old": 1, "new": 0}
            assert (await call(gateway, "POST", "/m", body=b"x")).status == 200
            assert (len(old.requests), len(new.requests)) == (1, 1)
            old.gate.set()
            assert (await held).status == 200
            assert gw.traffic()[ApiName("m")].in_flight == {"new": 0}

    run(scenario)


def test_drain_waits_for_the_request_in_flight(run: Run) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start()
        gateway = Gateway()
        gateway.publish(route("m", target("r1", replica.address)))
        address = await gateway.start(host="127.0.0.1", port=0)
        try:
            held = asyncio.create_task(call(address, "POST", "/m", body=b"hold"))
            await until(lambda: len(replica.requests) == 1)
            drain = asyncio.create_task(gateway.drain(5.0))
            await asyncio.sleep(0.05)  # an assertion window, not synchronisation: drain must still wait
            assert not drain.done()
            with pytest.raises(OSError):
                await call(address, "GET", "/healthz")  # no longer accepting
            replica.gate.set()
            assert (await held).status == 200
            assert await drain is True
        finally:
            gateway.close()
            await replica.stop()

    run(scenario)


# local replicas over Unix sockets ---------------------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mp-gw-") as folder:  # short: socket paths fit in 108 bytes
        yield Path(folder)


def test_a_replica_with_a_unix_socket_is_reached_over_it(run: Run, socket_dir: Path) -> None:
    async def scenario() -> None:
        replica = await FakeReplica().start_unix(socket_dir / "r1.sock")
        async with serving(route("iris", target("r1", replica.address)), replica) as (gw, gateway):
            for n in range(3):  # one pooled connection carries them all
                body = f'{{"n": {n}}}'
                reply = await call(gateway, "POST", "/iris?n=1", body=body.encode())
                assert (reply.status, reply.json()) == (200, {"echo": body})
            seen = replica.requests[0]
            assert (seen.path, seen.query_string) == ("/predict", b"n=1")
            assert seen.client is None  # a Unix socket peer has no address
            assert seen.header(b"x-forwarded-for") == b"127.0.0.1"  # the client, as the gateway saw it
            assert gw.traffic()[ApiName("iris")].status_2xx == 3

    run(scenario)


def test_a_unix_socket_nobody_serves_is_a_connect_failure_retried_on_another_replica(
    run: Run, socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelport.gateway.app")

    async def scenario() -> None:
        live = await FakeReplica().start()
        gone = Address("127.0.0.1", free_port(), path=str(socket_dir / "gone.sock"))
        routes = route("m", target("gone", gone), target("live", live.address))
        async with serving(routes, live) as (_, gateway):
            replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(4)]
            assert [reply.status for reply in replies] == [200] * 4
            assert len(live.requests) == 4

    run(scenario)
    assert f"could not be reached at {socket_dir / 'gone.sock'}" in caplog.text
