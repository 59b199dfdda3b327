"""The gateway: the data plane's front door, serving every API's endpoint on one port of the local cluster.

Created and driven by modelport.cluster.daemon: the controller publishes routes into it and reads its traffic
counters; HTTP clients send predictions through it to replicas.

The hot path (a POST to a realtime API with a replica free and a warm connection to it) runs without a
coroutine: `dispatch` picks the replica, hands the request bytes to the upstream pool and returns a Future
that the pool's response callback fills. Anything slower (connecting, retrying, holding, submissions) is a
coroutine, which the HTTP server runs as a Task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Protocol

from modelport.clock import Clock, SystemClock
from modelport.gateway.cors import allow_any_origin, preflight
from modelport.gateway.forwarding import ForwardedRequest, forward_request
from modelport.gateway.holding import HoldEnd
from modelport.gateway.metrics import CONTENT_TYPE, MetricsSample, render_metrics
from modelport.gateway.retry import NO_OTHER_REPLICA, FailedAttempt, Next, after_failure, failure_message
from modelport.gateway.routing import WAITING_WONT_HELP, ApiState, RouteTable
from modelport.gateway.upstream import FailureStage, Outcome, UpstreamError, UpstreamPool, UpstreamResponse
from modelport.http.server import HttpServer, Request, Response, error_response, json_response
from modelport.types import Address, ApiKind, ApiName, ApiRoute, ApiTraffic, ReplicaTarget

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()
_RETRY_AFTER = ((b"retry-after", b"1"),)
_OWN_METHODS = b"GET, HEAD"
_ENDPOINT_METHODS = b"GET, HEAD, POST, OPTIONS"
_SUBMISSION_METHODS = b"GET, HEAD, POST, DELETE, OPTIONS"
# A browser sends DELETE <endpoint>/<id> (stop a job) only when the preflight lists it.
_SUBMISSION_CORS_METHODS = b"POST, GET, DELETE, OPTIONS"


class SubmissionHandler(Protocol):
    """Where the endpoints of batch, task and async APIs lead: `POST <endpoint>` submits, `GET
    <endpoint>/<id>` reports, `DELETE <endpoint>/<id>` stops (modelport.cluster implements it)."""

    async def handle_submission(self, route: ApiRoute, request: Request, item: str | None) -> Response: ...


class Gateway:
    """Routes `POST <endpoint>` to the least busy replica of the API; see docs/architecture.md.

    Scale from zero: a request for an API whose route has no replica and `hold_when_empty` waits in line
    until publish() brings a replica (within the route's queue limit and timeout). Held requests go to the
    replicas oldest first; those the replicas have no room for (max_replica_concurrency) keep their place
    until a slot frees up or their timeout passes, rather than get a capacity 503: they already waited for
    the replica. A request arriving while the route has replicas is never held (at capacity: 503 at once).
    """

    def __init__(
        self,
        *,
        clock: Clock = _SYSTEM_CLOCK,
        upstream_connect_timeout: float = 2.0,
    ) -> None:
        self._clock = clock
        self._submissions: SubmissionHandler | None = None
        self._draining = False
        self._table = RouteTable()
        self._pool = UpstreamPool(connect_timeout=upstream_connect_timeout)
        self._server = HttpServer(self.dispatch, on_handler_error=_log_handler_error)
        # The gateway's own paths, GET and HEAD only; checked before API endpoints, so no API can shadow them.
        self._own_routes: dict[str, Callable[[], Response]] = {
            "/healthz": lambda: json_response(200, {"status": "ok"}),
            "/metrics": self._metrics,
        }

    # The controller's side (RouteSink, TrafficSource)
    def publish(self, routes: Mapping[ApiName, ApiRoute]) -> None:
        """Replace the route table; replicas no longer listed get no new requests, in-flight ones finish."""
        self._table.publish(routes)
        self._pool.retain(self._table.addresses())

    def serve_submissions(self, handler: SubmissionHandler) -> None:
        """Where the endpoints of batch, task and async APIs lead (set once, before start)."""
        self._submissions = handler

    def traffic(self) -> dict[ApiName, ApiTraffic]:
        return {name: state.traffic() for name, state in self._table.items()}

    # Lifecycle
    async def start(self, *, host: str, port: int) -> Address:
        return await self._server.start(host=host, port=port)

    def stop_accepting(self) -> None:
        self._server.stop_accepting()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (the contract shared with HttpServer)
        """Stop accepting, answer held requests 503 at once (no replica will come for them now), let in-flight
        requests finish (up to `timeout` s); True if all did."""
        self._draining = True
        for _, state in self._table.items():
            state.end_held(HoldEnd.SHUTDOWN)
        return await self._server.drain(timeout)

    def close(self) -> None:
        """Close the pooled upstream connections (after drain)."""
        self._pool.close()

    # The data plane
    async def handle(self, request: Request) -> Response:
        """`dispatch`, awaited."""
        answer = self.dispatch(request)
        return answer if isinstance(answer, Response) else await answer

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        """The HttpServer handler: the whole route table. HEAD answers as GET (the server drops the body).

        Answers at once where it can; a forwarded request's answer is a Future (or a coroutine off the hot
        path)."""
        start = self._clock.monotonic()
        path, method = request.path, request.method
        own = self._own_routes.get(path)
        if own is not None:
            if method == "GET" or method == "HEAD":
                response = own()
            else:
                message = f"{path} only answers GET and HEAD"
                response = json_response(405, {"error": message}, headers=((b"allow", _OWN_METHODS),))
        elif (state := self._table.lookup(path)) is None:
            parent, _, item = path.rstrip("/").rpartition("/")
            state = self._table.lookup(parent) if parent and item else None
            if state is not None and state.route.kind is not ApiKind.REALTIME:
                return self._submission(state, request, item, start)
            response = error_response(404, f"no API is deployed at {path}", apis=self._table.endpoints())
        elif state.route.kind is not ApiKind.REALTIME:
            return self._submission(state, request, None, start)
        elif method == "POST":
            return self._forward(state, request, start)
        elif method == "GET" or method == "HEAD":
            response = self._summary(state)
        elif method == "OPTIONS":
            return preflight(request, allow=_ENDPOINT_METHODS)
        else:
            message = (
                f"method {method} is not allowed on {path}: POST a payload to predict, "
                "or GET for a summary of the API"
            )
            response = json_response(405, {"error": message}, headers=((b"allow", _ENDPOINT_METHODS),))
        return _cross_origin(request, response)

    async def _submission(
        self, state: ApiState, request: Request, item: str | None, start: float
    ) -> Response:
        if request.method == "OPTIONS":
            return preflight(request, allow=_SUBMISSION_METHODS, methods=_SUBMISSION_CORS_METHODS)
        if self._submissions is None:
            response = error_response(503, f"api {state.route.api_name} takes no submissions on this gateway")
        else:
            response = await self._submissions.handle_submission(state.route, request, item)
        return self._counted(state, start, _cross_origin(request, response))

    def _forward(self, state: ApiState, request: Request, start: float) -> Response | Awaitable[Response]:
        route = state.route
        if route.replicas:
            target = state.pick()
            if target is None:
                message = (
                    f"api {route.api_name} is at capacity: every replica holds max_replica_concurrency "
                    f"({route.max_replica_concurrency}) requests; retry later"
                )
                response = json_response(503, {"error": message}, headers=_RETRY_AFTER)
                return self._counted(state, start, _cross_origin(request, response))
            state.acquire(target.replica_id)
            return self._send(state, request, target, start=start)
        if not state.holds():
            return self._counted(state, start, _cross_origin(request, _not_ready(route)))
        return self._forward_held(state, request, start)

    async def _forward_held(self, state: ApiState, request: Request, start: float) -> Response:
        route = state.route
        outcome = HoldEnd.SHUTDOWN if self._draining else await state.hold(asyncio.get_running_loop())
        if not isinstance(outcome, ReplicaTarget):
            response = _cross_origin(request, _unheld(route, outcome, latest=state.route))
            return self._counted(state, start, response)
        return await self._send(state, request, outcome, start=start)  # its slot is ours already

    def _send(
        self, state: ApiState, request: Request, target: ReplicaTarget, *, start: float
    ) -> Awaitable[Response]:
        """Send to `target`, whose slot this request holds; the slot is released once answered.

        On a warm idle connection the answer is a Future that `_answered` fills from the pool's callback; else
        (and after a failure) `_send_slowly` connects and applies the retry policy."""
        forwarded = forward_request(request)
        parts = (forwarded.head, request.body)
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        on_done = partial(self._answered, answer, state, forwarded, parts, target, start)
        if self._pool.send_now(target.address, parts, on_done):
            return answer
        return self._send_slowly(state, forwarded, parts, target, start=start)

    def _answered(
        self,
        answer: asyncio.Future[Response],
        state: ApiState,
        forwarded: ForwardedRequest,
        parts: tuple[bytes, bytes],
        target: ReplicaTarget,
        start: float,
        outcome: Outcome,
    ) -> None:
        """The pool's callback for a request sent by `_send`: answer, or go on with the retry policy."""
        if isinstance(outcome, UpstreamResponse):
            state.release(target.replica_id)
            if not answer.done():  # done: cancelled by drain, nobody waits for the answer any more
                answer.set_result(self._upstream_response(state, forwarded, outcome, start=start))
            return
        if answer.done():
            state.release(target.replica_id)
            return
        retry = asyncio.ensure_future(
            self._send_slowly(state, forwarded, parts, target, start=start, failed=outcome)
        )
        retry.add_done_callback(partial(_settle_from, answer))
        answer.add_done_callback(partial(_cancel_with, retry))

    async def _send_slowly(
        self,
        state: ApiState,
        forwarded: ForwardedRequest,
        parts: tuple[bytes, bytes],
        target: ReplicaTarget,
        *,
        start: float,
        failed: UpstreamError | None = None,
    ) -> Response:
        """Send to `target` (a connection may have to be opened), or go on from the first attempt's failure.
        A retry on another replica takes the new slot before it gives the old one back: a held request woken
        by the freed slot cannot push a replica past max_replica_concurrency."""
        route = state.route
        # The failure path only: the request's writes to replicas (the retry policy's budget) and what failed.
        sends = 0
        attempts: tuple[FailedAttempt, ...] = ()
        fresh = False
        try:
            while True:
                replica = target.replica_id
                if failed is not None:
                    failure, failed = failed, None
                else:
                    try:
                        upstream = await self._pool.request(target.address, parts, fresh=fresh)
                    except UpstreamError as exc:
                        failure = exc
                    else:
                        return self._upstream_response(state, forwarded, upstream, start=start)

                attempts += (FailedAttempt(replica=replica, failure=failure),)
                if failure.stage is FailureStage.CONNECT:
                    state.mark_down(replica)
                else:
                    sends += 1
                decision = after_failure(failure.stage, sends=sends, retry_on_failure=route.retry_on_failure)
                why_not = decision.why_not
                fresh = decision.next is Next.SAME_REPLICA
                if decision.next is Next.OTHER_REPLICA:
                    retry = state.pick(exclude=[attempt.replica for attempt in attempts])
                    if retry is None:
                        why_not = NO_OTHER_REPLICA
                    else:
                        state.acquire(retry.replica_id)
                        state.release(replica)
                        target = retry
                if why_not:
                    return self._failed(state, forwarded, start=start, attempts=attempts, why_not=why_not)
                log.info(
                    "api %s: replica %s %s; sending the request again",
                    route.api_name,
                    replica,
                    failure.reason,
                )
        finally:
            state.release(target.replica_id)

    def _upstream_response(
        self, state: ApiState, forwarded: ForwardedRequest, upstream: UpstreamResponse, *, start: float
    ) -> Response:
        """The replica's response, passed through byte for byte."""
        close = not upstream.keep_alive
        response = Response(status=upstream.status, raw=upstream.raw, close_connection=close)
        if forwarded.has_origin:
            allow_any_origin(response)
        return self._counted(state, start, response)

    def _failed(
        self,
        state: ApiState,
        forwarded: ForwardedRequest,
        *,
        start: float,
        attempts: tuple[FailedAttempt, ...],
        why_not: str,
    ) -> Response:
        message = failure_message(state.route.api_name, attempts, why_not=why_not)
        log.warning("%s", message)
        request_id = forwarded.request_id.decode("latin-1")
        response = error_response(502, message, request_id=request_id, retried=len(attempts) > 1)
        # Broken mid-response: the replica may have acted on the request. The client saw none of it (responses
        # are buffered), but its connection is closed after the 502, as a proxy that streamed would have to.
        response.close_connection = attempts[-1].failure.stage is FailureStage.RESPONSE
        if forwarded.has_origin:
            allow_any_origin(response)
        return self._counted(state, start, response)

    def _counted(self, state: ApiState, start: float, response: Response) -> Response:
        """Count the response once it has been handed to the transport (that is when latency ends)."""
        counters, clock, status = state.counters, self._clock, response.status

        def record() -> None:
            counters.record(status, clock.monotonic() - start)

        response.after_send = record
        return response

    def _summary(self, state: ApiState) -> Response:
        route = state.route
        summary = {
            "api": route.api_name,
            "status": route.status.value,
            "ready_replicas": len(route.replicas),
            "held": state.held,
            "endpoint": route.endpoint,
            "message": "send a POST request with your payload to predict",
        }
        return json_response(200, summary)

    def _metrics(self) -> Response:
        samples = [
            MetricsSample(traffic=state.traffic(), ready_replicas=len(state.route.replicas))
            for _, state in self._table.items()
        ]
        return Response(status=200, body=render_metrics(samples), content_type=CONTENT_TYPE)


def _unheld(route: ApiRoute, end: HoldEnd, *, latest: ApiRoute) -> Response:
    """The answer to a request that stopped waiting without a replica slot: `route` is the one it arrived on,
    `latest` the API's route now."""
    api = route.api_name
    if end is HoldEnd.FULL:
        message = (
            f"api {api} has no ready replica yet and already holds {route.hold_queue_limit} requests "
            "waiting for one (autoscaling.activation_queue_limit); retry later"
        )
        return json_response(503, {"error": message}, headers=_RETRY_AFTER)
    if end is HoldEnd.TIMED_OUT:
        within = f"within {route.hold_timeout_seconds:g} s (autoscaling.activation_timeout)"
        if latest.replicas:  # the replica came, but was kept busy by the requests ahead of this one
            message = (
                f"api {api} had no replica with room {within}: every replica holds max_replica_concurrency "
                f"({latest.max_replica_concurrency}) requests; retry later"
            )
        else:
            message = f"api {api} had no ready replica {within}"
        return json_response(503, {"error": message}, headers=_RETRY_AFTER)
    if end is HoldEnd.REMOVED:
        return error_response(404, f"api {api} was deleted while this request waited for a replica")
    if end is HoldEnd.SHUTDOWN:
        message = f"the gateway is shutting down; api {api} had no ready replica for this request yet"
        response = error_response(503, message)
        response.close_connection = True
        return response
    return _not_ready(latest)  # NOT_HOLDING: the latest route says why no replica will come by waiting


def _not_ready(route: ApiRoute) -> Response:
    body = {
        "error": f"api {route.api_name} is not ready (status {route.status})",
        "reason": route.unavailable_reason,
    }
    # Retry-After only where waiting a second may bring a replica: otherwise the reason says what to fix.
    headers = () if route.status in WAITING_WONT_HELP else _RETRY_AFTER
    return json_response(503, body, headers=headers)


def _cross_origin(request: Request, response: Response) -> Response:
    """Mark a response the gateway built when the request carried Origin (forwarding knows it already)."""
    return allow_any_origin(response) if request.header(b"origin") is not None else response


def _settle_from(answer: asyncio.Future[Response], retry: asyncio.Future[Response]) -> None:
    """Carry the retry's outcome over to the answer the HTTP server waits for."""
    if answer.done():
        return
    if retry.cancelled():
        answer.cancel()
    elif (exc := retry.exception()) is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(retry.result())


def _cancel_with(retry: asyncio.Future[Response], answer: asyncio.Future[Response]) -> None:
    if answer.cancelled():  # drained: the retry has nobody to answer
        retry.cancel()


def _log_handler_error(exc: BaseException) -> None:
    log.error("gateway request handler failed", exc_info=exc)
