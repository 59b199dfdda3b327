"""The gateway's failure path on real loopback sockets: replicas that refuse, hang up or misbehave (bare
asyncio servers), what is retried where, the 502 that says why not, and the pooled keep-alive connections.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
from dataclasses import dataclass, field
from typing import cast

import httptools  # type: ignore[import-untyped,unused-ignore]
import pytest

from modelport.types import Address, ApiName
from tests.integration.test_gateway import (
    LOOPS,
    FakeReplica,
    Run,
    call,
    route,
    run_on,
    serving,
    target,
    until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    return functools.partial(run_on, request.param)


# helpers ----------------------------------------------------------------------------------------------


@dataclass
class RawUpstream:
    """A bare asyncio server for what HttpServer would never do: count connections, misbehave."""

    # "keep-alive": answer every request; "close": hang up on the first byte; "partial": hang up in the
    # middle of the response; "once": answer a connection's first request, hang up on its second (what a
    # server closing an idle keep-alive connection looks like to a client whose request crossed it);
    # "swallow": read (and count) each request, hang up without answering; "poison": answer, but swallow
    # the body b"poison" (a predictor that dies of one payload); "answer-close": answer keep-alive, then
    # hang up at once (an idle connection closed by the server); "reset-first": the first connection resets
    # on its first bytes, unread (the request cannot have been processed), later ones answer.
    behaviour: str
    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    address: Address = field(default_factory=lambda: Address("127.0.0.1", 0))
    _server: asyncio.Server | None = None

    async def start(self) -> RawUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _RawProtocol(self), host="127.0.0.1", port=0)
        self.address = Address("127.0.0.1", self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


class _RawProtocol(asyncio.Protocol):
    def __init__(self, upstream: RawUpstream) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.answered = 0
        self.first = False
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport
        self.upstream.connections += 1
        self.upstream.open_connections += 1
        self.first = self.upstream.connections == 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        behaviour = self.upstream.behaviour
        if behaviour == "reset-first" and self.first:
            self.transport.abort()  # unread bytes in the socket: the kernel answers with a reset
            return
        if behaviour == "close" or (behaviour == "once" and self.answered):
            self.transport.close()
            return
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.upstream.requests += 1
        self.answered += 1
        behaviour = self.upstream.behaviour
        if behaviour == "swallow" or (behaviour == "poison" and self.body == b"poison"):
            self.transport.close()
        elif behaviour == "partial":
            self.transport.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"half":')
            self.transport.close()
        else:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            if behaviour == "answer-close":
                self.transport.close()


def refused_address() -> tuple[socket.socket, Address]:
    """A port that refuses connections: bound (so nobody else takes it) but never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, Address("127.0.0.1", sock.getsockname()[1])


# failures and retries --------------------------------------------------------------------------------


def test_retries_on_another_replica_when_the_first_refuses_connections(run: Run) -> None:
    async def scenario() -> None:
        live = await FakeReplica().start()
        dead_socket, dead = refused_address()
        try:
            routes = route("m", target("dead", dead), target("live", live.address))
            async with serving(routes, live) as (gw, gateway):
                # Ties rotate, so the dead replica is tried first for one of the first two requests.
                replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(4)]
                assert [reply.status for reply in replies] == [200] * 4
                assert len(live.requests) == 4
                assert gw.traffic()[ApiName("m")].in_flight == {"dead": 0, "live": 0}

                # A request that never reached a replica is retried even when retrying is off.
                gw.publish(
                    route("m", target("dead", dead), target("live", live.address), retry_on_failure=False)
                )
                replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(2)]
                assert [reply.status for reply in replies] == [200] * 2
                assert len(live.requests) == 6
        finally:
            dead_socket.close()

    run(scenario)


def test_retries_when_a_replica_closes_the_connection_without_answering(run: Run) -> None:
    async def scenario() -> None:
        live = await FakeReplica().start()
        closer = await RawUpstream("close").start()
        routes = route("m", target("closer", closer.address), target("live", live.address))
        async with serving(routes, live, closer) as (gw, gateway):
            replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(4)]
            assert [reply.status for reply in replies] == [200] * 4
            assert len(live.requests) == 4
            assert closer.connections >= 1  # it was tried, and it hung up
            assert gw.traffic()[ApiName("m")].status_2xx == 4

    run(scenario)


def test_a_request_replicas_receive_but_never_answer_reaches_them_at_most_twice(run: Run) -> None:
    async def scenario() -> None:
        a, b = await RawUpstream("swallow").start(), await RawUpstream("swallow").start()
        async with serving(route("m", target("a", a.address), target("b", b.address)), a, b) as (gw, gateway):
            reply = await call(gateway, "POST", "/m", body=b"x", headers=[("x-request-id", "req-7")])
            assert reply.status == 502
            assert (a.requests, b.requests) == (1, 1)  # the first pick is `a`; the one retry goes elsewhere
            assert reply.json() == {
                "error": "replica a of api m closed the connection before answering; retried on replica b, "
                "which closed the connection before answering; not retried again: a request is sent to "
                "replicas at most 2 times",
                "request_id": "req-7",
                "retried": True,
            }

            gw.publish(route("m", target("a", a.address), target("b", b.address), retry_on_failure=False))
            reply = await call(gateway, "POST", "/m", body=b"x")
            assert reply.status == 502
            assert a.requests + b.requests == 3  # exactly once
            assert re.fullmatch(
                r"replica [ab] of api m closed the connection before answering; not retried: the replica may "
                r"have processed it and retry_on_failure is off for this api",
                reply.json()["error"],
            )
            assert reply.json()["retried"] is False
            assert gw.traffic()[ApiName("m")].status_5xx == 2

    run(scenario)


def test_a_payload_that_kills_replicas_is_not_replayed_on_their_pooled_connections(run: Run) -> None:
    async def scenario() -> None:
        upstreams = [await RawUpstream("poison").start() for _ in range(3)]
        routes = route("m", *(target(f"r{i}", up.address) for i, up in enumerate(upstreams)))
        async with serving(routes, *upstreams) as (_, gateway):
            for _ in range(6):  # every replica now has an idle keep-alive connection in the pool
                assert (await call(gateway, "POST", "/m", body=b"x")).status == 200
            assert [up.connections for up in upstreams] == [1, 1, 1]
            reply = await call(gateway, "POST", "/m", body=b"poison")
            assert reply.status == 502
            assert sum(up.requests for up in upstreams) == 6 + 2
            assert [up.connections for up in upstreams] == [1, 1, 1]  # never re-sent on a new connection

    run(scenario)


def test_the_502_reports_the_original_failure_not_the_retrys(run: Run) -> None:
    async def scenario() -> None:
        closer = await RawUpstream("swallow").start()
        dead_socket, dead = refused_address()
        try:
            routes = route("m", target("closer", closer.address), target("dead", dead))
            async with serving(routes, closer) as (_, gateway):
                reply = await call(gateway, "POST", "/m", body=b"x", headers=[("origin", "https://app")])
                assert reply.status == 502
                assert reply.json()["error"] == (
                    "replica closer of api m closed the connection before answering; retried on replica "
                    f"dead, which could not be reached at {dead} (connection refused); not retried again: no "
                    "other replica is available"
                )
                assert reply.headers["access-control-allow-origin"] == "*"
        finally:
            dead_socket.close()

    run(scenario)


def test_a_failure_in_the_middle_of_a_response_is_not_retried_and_closes_the_client_connection(
    run: Run,
) -> None:
    async def scenario() -> None:
        live = await FakeReplica().start()
        partial = await RawUpstream("partial").start()
        routes = route("m", target("partial", partial.address), target("live", live.address))
        async with serving(routes, live, partial) as (gw, gateway):
            # Rotation sends one of the two to the partial replica.
            replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(2)]
            assert sorted(reply.status for reply in replies) == [200, 502]
            assert partial.requests == 1
            assert len(live.requests) == 1  # the failed request was not retried
            traffic = gw.traffic()[ApiName("m")]
            assert (traffic.status_2xx, traffic.status_5xx) == (1, 1)

            gw.publish(route("m", target("partial", partial.address)))
            # A keep-alive client gets the 502 and then EOF: the gateway closed the connection.
            reply = await call(gateway, "POST", "/m", body=b"x", keep_alive=True)
            assert reply.status == 502
            assert reply.json()["error"] == (
                "replica partial of api m closed the connection in the middle of the response; not retried: "
                "the replica may have acted on the request"
            )

    run(scenario)


# pooled connections ----------------------------------------------------------------------------------


def test_reuses_keep_alive_connections_and_closes_them_when_the_replica_leaves(run: Run) -> None:
    async def scenario() -> None:
        upstream = await RawUpstream("keep-alive").start()
        async with serving(route("m", target("r1", upstream.address)), upstream) as (gw, gateway):
            for _ in range(10):
                assert (await call(gateway, "POST", "/m", body=b"x")).status == 200
            assert (upstream.requests, upstream.connections) == (10, 1)
            concurrent = [call(gateway, "POST", "/m", body=b"x") for _ in range(5)]
            assert all(reply.status == 200 for reply in await asyncio.gather(*concurrent))
            assert upstream.connections <= 5

            gw.publish({})
            await until(lambda: upstream.open_connections == 0)

    run(scenario)


def test_a_pooled_connection_the_replica_closed_is_skipped_at_no_cost(run: Run) -> None:
    async def scenario() -> None:
        upstream = await RawUpstream("answer-close").start()
        routes = route("m", target("r1", upstream.address), retry_on_failure=False)
        async with serving(routes, upstream) as (_, gateway):
            replies = [await call(gateway, "POST", "/m", body=b"x") for _ in range(3)]
            assert [reply.status for reply in replies] == [200] * 3
            assert (upstream.requests, upstream.connections) == (3, 3)

    run(scenario)


def test_a_request_written_and_unanswered_never_goes_to_the_same_replica_again(run: Run) -> None:
    async def scenario() -> None:
        upstream = await RawUpstream("once").start()
        async with serving(route("m", target("r1", upstream.address)), upstream) as (_, gateway):
            assert (await call(gateway, "POST", "/m", body=b"x")).status == 200
            # The pooled connection carries the next request; the replica hangs up on it.
            reply = await call(gateway, "POST", "/m", body=b"x")
            assert reply.status == 502
            assert reply.json()["error"] == (
                "replica r1 of api m closed the connection before answering; not retried: no other replica "
                "is available"
            )
            assert upstream.connections == 1

    run(scenario)


def test_a_request_whose_write_failed_is_sent_again_on_a_new_connection_to_the_same_replica(run: Run) -> None:
    async def scenario() -> None:
        upstream = await RawUpstream("reset-first").start()
        routes = route("m", target("r1", upstream.address), retry_on_failure=False)
        async with serving(routes, upstream) as (_, gateway):
            # Far more than the socket buffers hold: the reset arrives while the gateway is still writing.
            reply = await call(gateway, "POST", "/m", body=b"x" * (16 * 1024 * 1024))
            assert (reply.status, reply.body) == (200, b"ok")
            assert (upstream.connections, upstream.requests) == (2, 1)

    run(scenario)
