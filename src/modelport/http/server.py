"""A lean HTTP/1.1 server: asyncio protocol + httptools parsing, on TCP and Unix domain sockets.

Shared by the replica runtime, the gateway and the control API. It owns sockets, parsing, keep-alive,
pipelining order, `Expect: 100-continue`, body limits and graceful drain; it knows nothing about routes
(the handler decides) or about modelport's domain. Chosen over Starlette/uvicorn by measurement: see
shared/reference/hop-probe.md (about 3x less CPU per request on this machine kind).

A handler answers with a Response at once, with a Future that will hold one, or with a coroutine (run as a
Task). Only a coroutine costs a Task: the hot paths (a gateway forward, a replica predict) answer with a
Future or at once, and the response is written from the future's done callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl

import httptools  # type: ignore[import-untyped,unused-ignore]
import orjson

from modelport.types import Address

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
_MAX_PIPELINED = 32

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str  # percent-decoding is left to the handler; the raw path is what routing needs
    query_string: bytes
    headers: list[tuple[bytes, bytes]]  # names lowercased, in arrival order
    body: bytes
    http_version: str = "1.1"
    client: tuple[str, int] | None = None  # the peer's (ip, port); None for non-IP sockets

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: bytes | None = b"application/json"
    headers: Sequence[tuple[bytes, bytes]] = ()
    # Bytes of a complete HTTP response written verbatim (the gateway passes replica responses through).
    raw: bytes | None = None
    # Called after the response has been handed to the transport (e.g. the predictor's post_predict).
    after_send: Callable[[], None] | None = None
    close_connection: bool = False


def json_response(status: int, content: object, *, headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    return Response(status=status, body=orjson.dumps(content), headers=headers)


def error_response(status: int, message: str, **extra: object) -> Response:
    return json_response(status, {"error": message, **extra})


# A Response now, or an awaitable of one: an asyncio.Future is used as is, anything else becomes a Task.
Handler = Callable[[Request], Response | Awaitable[Response]]


_BODILESS_STATUSES = frozenset({204, 304})


def encode_response(response: Response, *, keep_alive: bool, head: bool = False) -> bytes:
    """Serialize a response; a HEAD request or a 204/304 gets the headers only."""
    if response.raw is not None:
        return response.raw
    body = response.body
    parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"Unknown"))]
    if response.status != 204:  # RFC 9110 8.6: a 204 carries no content-length
        parts.append(b"content-length: %d\r\n" % len(body))
    if response.content_type is not None:
        parts.append(b"content-type: " + response.content_type + b"\r\n")
    for key, value in response.headers:
        parts.append(key + b": " + value + b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head and response.status not in _BODILESS_STATUSES:
        parts.append(body)
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection; requests are answered strictly in arrival order (HTTP/1.1 pipelining)."""

    __slots__ = (
        "_body",
        "_body_size",
        "_client",
        "_closing",
        "_current",
        "_current_is_head",
        "_headers",
        "_headers_done",
        "_parser",
        "_pending",
        "_server",
        "_too_large",
        "_transport",
        "_url",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._headers_done = False
        self._too_large = False
        self._pending: deque[tuple[Request, bool]] = deque()
        self._current_is_head = False
        self._current: asyncio.Future[Response] | None = None  # the request being answered, when not at once
        self._closing = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same interface.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Read once per connection: every request on it shares the tuple. IPv6 peers carry flow and scope too.
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (str(peer[0]), int(peer[1]))
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        self._transport = None
        self._pending.clear()
        # A request already running is left to finish (its handler may have side effects the user wants);
        # its response is discarded. Its in-flight count is released when it completes.

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._headers_done = False
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # trailer fields of a chunked body are not request headers
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        expects_continue = False
        for key, value in self._headers:
            if key == b"content-length":
                with contextlib.suppress(ValueError):
                    if int(value) > self._server.max_body_bytes:
                        self._too_large = True
            elif key == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        # Only the request being answered next may be told to continue: an interim response for a
        # pipelined request would overtake the answer to the one before it.
        if expects_continue and not self._too_large and self._current is None and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > self._server.max_body_bytes:
            self._too_large = True
            self._body = []

    def on_message_complete(self) -> None:
        if self._too_large:
            limit = self._server.max_body_bytes
            self._reject(413, f"request body larger than the limit of {limit} bytes")
            return
        parsed = httptools.parse_url(self._url)
        request = Request(
            method=self._parser.get_method().decode("latin-1"),
            path=parsed.path.decode("latin-1"),
            query_string=parsed.query or b"",
            headers=self._headers,
            body=b"".join(self._body),
            http_version=self._parser.get_http_version(),
            client=self._client,
        )
        keep_alive = self._parser.should_keep_alive()
        if self._current is None:
            self._dispatch(request, keep_alive)
        else:
            self._pending.append((request, keep_alive))
            if len(self._pending) >= _MAX_PIPELINED and self._transport is not None:
                self._transport.pause_reading()

    # request handling
    def _dispatch(self, request: Request, keep_alive: bool) -> None:
        server = self._server
        server.in_flight += 1
        self._current_is_head = request.method == "HEAD"
        try:
            answer = server.handler(request)
        except Exception as exc:
            server.on_handler_error(exc)
            self._respond(error_response(500, "internal server error"), keep_alive)
            return
        if isinstance(answer, Response):
            self._respond(answer, keep_alive)
            return
        pending = answer if isinstance(answer, asyncio.Future) else asyncio.ensure_future(answer)
        server._tasks.add(pending)
        self._current = pending
        pending.add_done_callback(partial(self._on_handled, keep_alive=keep_alive))

    def _on_handled(self, pending: asyncio.Future[Response], *, keep_alive: bool) -> None:
        self._server._tasks.discard(pending)
        self._current = None
        if pending.cancelled():
            response = error_response(503, "server shutting down")
            keep_alive = False
        elif (exc := pending.exception()) is not None:
            self._server.on_handler_error(exc)
            response = error_response(500, "internal server error")
        else:
            response = pending.result()
        self._respond(response, keep_alive)

    def _respond(self, response: Response, keep_alive: bool) -> None:
        server = self._server
        server.in_flight -= 1
        transport = self._transport
        if transport is not None and not transport.is_closing():
            keep_alive = keep_alive and not response.close_connection and not self._closing
            transport.write(encode_response(response, keep_alive=keep_alive, head=self._current_is_head))
            if not keep_alive:
                transport.close()
                self._transport = None
        if response.after_send is not None:
            try:
                response.after_send()
            except Exception as exc:  # an after-send hook must never break the connection
                server.on_handler_error(exc)
        if server.in_flight == 0 and server._idle_waiter is not None and not server._idle_waiter.done():
            server._idle_waiter.set_result(None)
        if self._pending and self._transport is not None:
            request, next_keep_alive = self._pending.popleft()
            self._transport.resume_reading()
            self._dispatch(request, next_keep_alive)

    def _reject(self, status: int, message: str) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._current is None:
            transport.write(encode_response(error_response(status, message), keep_alive=False))
            transport.close()
            self._transport = None
        else:
            # Answer in order: the request being handled first, then close.
            self._closing = True
            self._pending.clear()

    def close_if_idle(self) -> None:
        """Used by drain: idle keep-alive connections close now, busy ones after their response."""
        self._closing = True
        if self._current is None and self._transport is not None:
            self._transport.close()
            self._transport = None


@dataclass
class HttpServer:
    """Serves `handler` on one or more listening sockets (TCP, Unix); `drain` is the graceful half of
    shutdown."""

    handler: Handler
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    on_handler_error: Callable[[BaseException], None] = lambda exc: None
    in_flight: int = 0
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)
    _connections: set[_Connection] = field(default_factory=set)
    _idle_waiter: asyncio.Future[None] | None = None
    _tasks: set[asyncio.Future[Response]] = field(default_factory=set)  # answers still pending

    async def start(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sock: socket.socket | None = None,
        backlog: int = 2048,
    ) -> Address:
        """Listen on host:port (port 0 = a free one), or on an already bound TCP socket. Returns the address.

        May be called again (and with `start_unix`) to serve the same handler on more sockets.
        """
        loop = asyncio.get_running_loop()
        if sock is not None:
            server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)
        else:
            server = await loop.create_server(
                lambda: _Connection(self), host=host, port=port, backlog=backlog, reuse_address=True
            )
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return Address(host=str(bound[0]), port=int(bound[1]))

    async def start_unix(self, *, sock: socket.socket, backlog: int = 2048) -> None:
        """Also listen on an already bound Unix domain socket (the caller owns, and removes, its file)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Connection(self), sock=sock, backlog=backlog)
        self._servers.append(server)

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (a grace period, not a cancel scope)
        """Stop accepting, let in-flight requests finish (up to `timeout` s), then cancel what is left and
        close every connection. Returns True when everything in flight finished in time.
        """
        self.stop_accepting()
        for conn in list(self._connections):
            conn.close_if_idle()
        finished = True
        if self.in_flight > 0:
            self._idle_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle_waiter), timeout)
            except TimeoutError:
                finished = False
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.sleep(0)  # let the cancelled handlers run their cleanup
        for conn in list(self._connections):
            if conn._transport is not None:
                conn._transport.close()
        return finished


async def serve_until(server: HttpServer, stop: asyncio.Event, *, grace_seconds: float) -> bool:
    """Wait for `stop`, then drain. The lifecycle helper used by processes that own one server."""
    await stop.wait()
    return await server.drain(grace_seconds)
