"""Keep-alive connections from the gateway to replicas, and the raw HTTP/1.1 exchange over them.

Used by gateway.app.Gateway for every forwarded request. Request bytes go out as built; response bytes come
back verbatim: httptools only finds where the response ends and reads its status (hop-probe.md: a
general-purpose client here costs 2-10x the CPU of the whole hop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import cast

import httptools  # type: ignore[import-untyped,unused-ignore]

from modelport.types import Address

DEFAULT_MAX_IDLE_PER_REPLICA = 64


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    raw: bytes  # the complete response as the replica wrote it: status line, headers, framed body
    keep_alive: bool  # False when the replica said `connection: close` or framed the body by closing


class UpstreamError(Exception):
    """A replica exchange that failed; the flags say what a retry could still do safely."""

    def __init__(
        self,
        reason: str,
        *,
        connect_failed: bool = False,
        response_started: bool = False,
        request_sent: bool = True,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connect_failed = connect_failed  # the replica was never reached
        self.response_started = response_started  # some response bytes arrived: never retry
        self.request_sent = request_sent  # False: the replica cannot have seen the request


class _UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a replica, carrying one request at a time (no pipelining)."""

    __slots__ = (
        "_chunks",
        "_framed",
        "_headers_done",
        "_keep_alive",
        "_loop",
        "_on_lost",
        "_parser",
        "_status",
        "_transport",
        "_waiter",
        "address",
        "closed",
    )

    def __init__(self, address: Address, on_lost: Callable[[_UpstreamConnection], None]) -> None:
        self.address = address
        self.closed = False
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._chunks: list[bytes] = []
        self._status = 0
        self._keep_alive = True
        self._framed = False
        self._headers_done = False

    def send(self, parts: Sequence[bytes]) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves with its complete response or an UpstreamError."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise UpstreamError("the pooled connection was already closed", request_sent=False)
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        self._waiter = waiter
        self._chunks = []
        self._framed = False
        self._headers_done = False
        transport.writelines(parts)  # one writev with uvloop: the body is never copied
        return waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once: a half-read response can never be reused."""
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same interface.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if self._headers_done and not self._framed:
                # No content-length and not chunked: the body ends where the connection ends.
                raw = b"".join(self._chunks)
                waiter.set_result(UpstreamResponse(status=self._status, raw=raw, keep_alive=False))
            else:
                reason = "connection closed" if exc is None else f"connection lost ({exc})"
                if self._chunks:
                    reason += " in the middle of the response"
                waiter.set_exception(UpstreamError(reason, response_started=bool(self._chunks)))
        self._on_lost(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for: the stream is out of step, so the connection is useless.
            self.abort()
            return
        self._chunks.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(UpstreamError(f"malformed response ({exc})", response_started=True))
            self.abort()

    # httptools callbacks; no on_body: the body is forwarded from the raw chunks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        raw = b"".join(self._chunks)
        self._chunks = []
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(status=self._status, raw=raw, keep_alive=self._keep_alive))


class UpstreamPool:
    """Idle keep-alive connections per replica address, reused last-in first-out (the warmest first)."""

    def __init__(
        self, *, connect_timeout: float, max_idle_per_replica: int = DEFAULT_MAX_IDLE_PER_REPLICA
    ) -> None:
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_replica
        self._idle: dict[Address, deque[_UpstreamConnection]] = {}
        self._wanted: frozenset[Address] = frozenset()

    def retain(self, addresses: Collection[Address]) -> None:
        """Keep connections to these replicas only: idle ones to others close now, busy ones once idle."""
        self._wanted = frozenset(addresses)
        for address in [a for a in self._idle if a not in self._wanted]:
            for conn in self._idle.pop(address):
                conn.close()

    def close(self) -> None:
        """Close every idle connection; connections still busy close when their response arrives."""
        self.retain(())

    async def request(
        self, address: Address, parts: Sequence[bytes], *, replayable: bool
    ) -> UpstreamResponse:
        """Send one request to `address` and return its complete response.

        A pooled connection that fails before any response byte is most likely one the replica closed
        while it sat idle: the request is sent once more on a fresh connection, if it is `replayable` or
        was never written. Raises UpstreamError.
        """
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, parts)
            except UpstreamError as exc:
                if exc.response_started or not (replayable or not exc.request_sent):
                    raise
                break
        conn = await self._connect(address)
        return await self._exchange(conn, parts)

    async def _exchange(self, conn: _UpstreamConnection, parts: Sequence[bytes]) -> UpstreamResponse:
        waiter = conn.send(parts)
        try:
            response = await waiter
        except BaseException:
            conn.abort()  # failed or cancelled mid-exchange: the stream is out of step
            raise
        if not response.keep_alive or conn.closed or conn.address not in self._wanted:
            conn.close()
            return response
        idle = self._idle.get(conn.address)
        if idle is None:
            idle = self._idle[conn.address] = deque()
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()
        return response

    async def _connect(self, address: Address) -> _UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _UpstreamConnection(address, self._discard), address.host, address.port
                )
        except TimeoutError:
            raise UpstreamError(
                f"connecting timed out after {self._connect_timeout:g}s",
                connect_failed=True,
                request_sent=False,
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise UpstreamError(
                f"cannot connect to {address} ({reason})", connect_failed=True, request_sent=False
            ) from None
        return conn

    def _discard(self, conn: _UpstreamConnection) -> None:
        """A connection closed; if it sat idle (the replica closed it), it leaves the pool now."""
        idle = self._idle.get(conn.address)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.address]
