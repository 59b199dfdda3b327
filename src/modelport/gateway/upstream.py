"""Keep-alive connections from the gateway to replicas, and the raw HTTP/1.1 exchange over them.

Used by gateway.app.Gateway for every forwarded request. Request bytes go out as built; response bytes come
back verbatim: httptools only finds where the response ends and reads its status (hop-probe.md: a
general-purpose client here costs 2-10x the CPU of the whole hop). A replica whose Address has a Unix socket
`path` is reached over it (local replicas: cheaper than loopback TCP), any other over TCP.

Two ways in: `send_now` answers through a callback, called from the protocol's own callbacks, when a warm
connection is idle (the hot path: no coroutine, no future); `request` is the awaitable that also connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias, cast

import httptools  # type: ignore[import-untyped,unused-ignore]

from modelport.types import Address

DEFAULT_MAX_IDLE_PER_REPLICA = 64


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    raw: bytes  # the complete response as the replica wrote it: status line, headers, framed body
    keep_alive: bool  # False when the replica said `connection: close` or framed the body by closing


class FailureStage(StrEnum):
    """How far an exchange with a replica got before it failed: what a retry could still do safely."""

    CONNECT = "connect"  # the replica was never reached: nothing was sent
    SEND = "send"  # the connection failed before the whole request was written: it cannot have been processed
    AWAIT = "await"  # the request was written, no response byte came: the replica may have processed it
    RESPONSE = "response"  # failed in the middle of the response: the replica acted on the request


class UpstreamError(Exception):
    """A failed exchange with a replica; `reason` follows the replica's name ("closed the connection ...")."""

    def __init__(self, reason: str, *, stage: FailureStage) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


Outcome: TypeAlias = UpstreamResponse | UpstreamError
OnOutcome = Callable[[Outcome], None]


class _UpstreamConnection(asyncio.Protocol):
    """One connection to a replica (TCP or Unix), carrying one request at a time (no pipelining)."""

    __slots__ = (
        "_chunks",
        "_framed",
        "_headers_done",
        "_keep_alive",
        "_on_done",
        "_parser",
        "_pool",
        "_status",
        "_transport",
        "address",
        "closed",
        "sending",
    )

    def __init__(self, address: Address, pool: UpstreamPool) -> None:
        self.address = address
        self.closed = False
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._on_done: OnOutcome | None = None
        self._chunks: list[bytes] = []
        self._status = 0
        self._keep_alive = True
        self._framed = False
        self._headers_done = False
        self.sending = False  # request bytes wait in the transport's buffer, not yet handed to the kernel

    def is_open(self) -> bool:
        """False once the replica's EOF or reset was seen (or we closed it): it must not carry a request."""
        return self._transport is not None and not self._transport.is_closing()

    def send(self, parts: Sequence[bytes], on_done: OnOutcome) -> None:
        """Write one request; `on_done` gets its complete response or an UpstreamError, once, after the pool
        has kept or closed the connection. Raises UpstreamError if the connection is closed already."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise UpstreamError("closed the connection before the request was sent", stage=FailureStage.SEND)
        self._on_done = on_done
        self._chunks = []
        self._framed = False
        self._headers_done = False
        self.sending = False
        # One writev with uvloop: the body is never copied. What the kernel does not take at once stays in the
        # transport's buffer, and pause_writing() says so (the high-water mark is 0).
        transport.writelines(parts)
        if transport.is_closing():
            self.sending = True  # the write itself failed; connection_lost() follows with the error

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
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pause_writing()/resume_writing() then tell exactly when a request is still partly unwritten: a
        # connection lost meanwhile proves the replica never had the whole request.
        self._transport.set_write_buffer_limits(high=0)

    def pause_writing(self) -> None:
        self.sending = True

    def resume_writing(self) -> None:
        self.sending = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if self._on_done is not None:
            if self._headers_done and not self._framed:
                # No content-length and not chunked: the body ends where the connection ends.
                raw = b"".join(self._chunks)
                self._finish(UpstreamResponse(status=self._status, raw=raw, keep_alive=False))
            else:
                self._finish(self._lost(exc))
        self._pool._discard(self)

    def _finish(self, outcome: Outcome) -> None:
        on_done, self._on_done = self._on_done, None
        self._pool._settle(self, outcome)
        if on_done is not None:
            on_done(outcome)

    def _lost(self, exc: Exception | None) -> UpstreamError:
        if exc is None:
            what = "closed the connection"
        else:
            errno = getattr(exc, "errno", None)
            what = f"dropped the connection ({os.strerror(errno).lower() if errno else exc})"
        if self._chunks:
            return UpstreamError(f"{what} in the middle of the response", stage=FailureStage.RESPONSE)
        if self.sending:
            return UpstreamError(f"{what} before the whole request was sent", stage=FailureStage.SEND)
        return UpstreamError(f"{what} before answering", stage=FailureStage.AWAIT)

    def data_received(self, data: bytes) -> None:
        if self._on_done is None:
            # Bytes nobody asked for: the stream is out of step, so the connection is useless.
            self.abort()
            return
        self._chunks.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._on_done is not None:
                self._finish(UpstreamError(f"sent a malformed response ({exc})", stage=FailureStage.RESPONSE))
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
        chunks, self._chunks = self._chunks, []
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._on_done is not None:
            self._finish(UpstreamResponse(status=self._status, raw=raw, keep_alive=self._keep_alive))


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

    def send_now(self, address: Address, parts: Sequence[bytes], on_done: OnOutcome) -> bool:
        """Send one request on the warmest idle connection to `address` that is still open, if there is
        one, and return True: `on_done` gets the response or the UpstreamError later, once. False when no
        connection is idle (nothing was sent: use `request`)."""
        conn = self._take_idle(address)
        if conn is None:
            return False
        conn.send(parts, on_done)
        return True

    async def request(
        self, address: Address, parts: Sequence[bytes], *, fresh: bool = False
    ) -> UpstreamResponse:
        """Send one request to `address` once and return its complete response; raises UpstreamError.

        It goes on the warmest idle connection that is still open (one whose EOF or reset the loop has seen
        is skipped: it never carries the request), or on a new connection, always a new one when `fresh`.
        Whether to send it again is the caller's decision: this never re-sends.
        """
        conn = None if fresh else self._take_idle(address)
        if conn is None:
            conn = await self._connect(address)
        answered: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def on_done(outcome: Outcome) -> None:
            if not answered.done():  # cancelled meanwhile: nobody waits for it
                answered.set_result(outcome)

        conn.send(parts, on_done)
        try:
            outcome = await answered
        except BaseException:
            conn.abort()  # cancelled mid-exchange: the stream is out of step
            raise
        if isinstance(outcome, UpstreamError):
            raise outcome
        return outcome

    def _take_idle(self, address: Address) -> _UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.is_open():
                return conn
        return None

    def _settle(self, conn: _UpstreamConnection, outcome: Outcome) -> None:
        """After an exchange: a connection goes back to the idle list only when its stream is in step."""
        if isinstance(outcome, UpstreamError):
            conn.abort()  # failed mid-exchange: the stream is out of step
            return
        # A connection whose request is still being written (the replica answered early) is out of step too.
        if not outcome.keep_alive or conn.closed or conn.sending or conn.address not in self._wanted:
            conn.close()
            return
        idle = self._idle.get(conn.address)
        if idle is None:
            idle = self._idle[conn.address] = deque()
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, address: Address) -> _UpstreamConnection:
        loop = asyncio.get_running_loop()
        where = str(address) if address.path is None else address.path
        try:
            async with asyncio.timeout(self._connect_timeout):
                if address.path is not None:
                    _, conn = await loop.create_unix_connection(
                        lambda: _UpstreamConnection(address, self), address.path
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: _UpstreamConnection(address, self), address.host, address.port
                    )
        except TimeoutError:
            raise UpstreamError(
                f"did not accept a connection at {where} within {self._connect_timeout:g}s",
                stage=FailureStage.CONNECT,
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise UpstreamError(
                f"could not be reached at {where} ({reason})", stage=FailureStage.CONNECT
            ) from None
        return conn

    def _discard(self, conn: _UpstreamConnection) -> None:
        """A connection closed; if it sat idle (the replica closed it), it leaves the pool now."""
        idle = self._idle.get(conn.address)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.address]
