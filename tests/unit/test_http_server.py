"""Unit tests of modelport.http.server's three ways to answer (at once, a Future, a coroutine), on real
sockets (TCP on a free port and a Unix socket), with a raw client so the server's own framing is checked."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from modelport.http.server import HttpServer, Request, Response, json_response


class Pending:
    """The futures the handler answered /later requests with, by request body."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Response]] = {}
        self._added = asyncio.Event()

    def add(self, key: str) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.futures[key] = future
        self._added.set()
        return future

    async def get(self, key: str) -> asyncio.Future[Response]:
        while key not in self.futures:
            self._added.clear()
            await self._added.wait()
        return self.futures[key]


Scenario = Callable[[HttpServer, Pending], Coroutine[Any, Any, None]]


def serve(scenario: Scenario) -> None:
    """An HttpServer whose handler answers /now at once, /later with a Future the scenario resolves (one per
    request body), /coroutine through a coroutine, and raises for /broken."""

    async def main() -> None:
        pending = Pending()

        def handler(request: Request) -> Response | Awaitable[Response]:
            if request.path == "/now":
                return json_response(200, {"answer": "now"})
            if request.path == "/later":
                return pending.add(request.body.decode())
            if request.path == "/broken":
                raise RuntimeError("handler bug")
            return coroutine()

        async def coroutine() -> Response:
            await asyncio.sleep(0)
            return json_response(200, {"answer": "coroutine"})

        await scenario(HttpServer(handler), pending)

    asyncio.run(main())


def post(path: str, body: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """The status line and the body of the next response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length"))
    return lines[0] + b" " + await reader.readexactly(length)


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *requests: bytes
) -> list[bytes]:
    writer.write(b"".join(requests))
    return [await read_response(reader) for _ in requests]


def test_answers_at_once_through_a_future_or_a_coroutine_in_request_order() -> None:
    async def scenario(server: HttpServer, pending: Pending) -> None:
        address = await server.start(host="127.0.0.1", port=0)
        reader, writer = await asyncio.open_connection(address.host, address.port)
        # Pipelined: the answer that is ready at once waits for the earlier one, still pending.
        writer.write(post("/later", b"a") + post("/now") + post("/coroutine"))
        later = await pending.get("a")
        assert server.in_flight == 1
        later.set_result(json_response(200, {"answer": "later"}))
        answers = [await read_response(reader) for _ in range(3)]
        assert answers == [
            b'HTTP/1.1 200 OK {"answer":"later"}',
            b'HTTP/1.1 200 OK {"answer":"now"}',
            b'HTTP/1.1 200 OK {"answer":"coroutine"}',
        ]
        assert server.in_flight == 0
        writer.close()
        await server.drain(1.0)

    serve(scenario)


def test_a_handler_that_raises_at_once_is_a_500_and_the_connection_goes_on() -> None:
    errors: list[BaseException] = []

    async def scenario(server: HttpServer, pending: Pending) -> None:
        server.on_handler_error = errors.append
        address = await server.start(host="127.0.0.1", port=0)
        reader, writer = await asyncio.open_connection(address.host, address.port)
        answers = await exchange(reader, writer, post("/broken"), post("/now"))
        assert answers == [
            b'HTTP/1.1 500 Internal Server Error {"error":"internal server error"}',
            b'HTTP/1.1 200 OK {"answer":"now"}',
        ]
        writer.close()
        await server.drain(1.0)

    serve(scenario)
    assert [str(error) for error in errors] == ["handler bug"]


def test_drain_answers_a_future_still_pending_after_the_grace_with_503() -> None:
    async def scenario(server: HttpServer, pending: Pending) -> None:
        address = await server.start(host="127.0.0.1", port=0)
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(post("/later", b"stuck"))
        stuck = await pending.get("stuck")
        assert await server.drain(0.05) is False
        assert stuck.cancelled()
        refused = await read_response(reader)
        assert refused == b'HTTP/1.1 503 Service Unavailable {"error":"server shutting down"}'
        writer.close()

    serve(scenario)


def test_serves_the_same_handler_on_a_unix_socket_until_drained() -> None:
    async def scenario(server: HttpServer, pending: Pending) -> None:
        with tempfile.TemporaryDirectory(prefix="mp-http-") as folder:
            path = Path(folder) / "s.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            sock.setblocking(False)
            await server.start(host="127.0.0.1", port=0)
            await server.start_unix(sock=sock)
            reader, writer = await asyncio.open_unix_connection(str(path))
            assert await exchange(reader, writer, post("/now")) == [b'HTTP/1.1 200 OK {"answer":"now"}']
            writer.close()
            await server.drain(1.0)
            refused = False
            try:
                await asyncio.open_unix_connection(str(path))
            except OSError:
                refused = True
            assert refused, "the Unix socket still accepts connections after drain"

    serve(scenario)
