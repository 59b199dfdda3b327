"""The gateway: the data plane's front door, serving every API's endpoint on one port of the local cluster.

Created and driven by modelport.cluster.daemon: the controller publishes routes into it and reads its traffic
counters; HTTP clients send predictions through it to replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from modelport.clock import Clock, SystemClock
from modelport.gateway.cors import allow_any_origin, preflight
from modelport.gateway.forwarding import ForwardedRequest, forward_request
from modelport.gateway.metrics import CONTENT_TYPE, MetricsSample, render_metrics
from modelport.gateway.retry import NO_OTHER_REPLICA, FailedAttempt, Next, after_failure, failure_message
from modelport.gateway.routing import ApiState, RouteTable
from modelport.gateway.upstream import FailureStage, UpstreamError, UpstreamPool
from modelport.http.server import HttpServer, Request, Response, error_response, json_response
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ApiTraffic

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()
_RETRY_AFTER = ((b"retry-after", b"1"),)
# An API in these states gets no replica by waiting a second: its 503 body says what to fix instead.
_WAITING_WONT_HELP = frozenset((ApiStatus.ERROR, ApiStatus.COMPUTE_UNAVAILABLE))
_OWN_METHODS = b"GET, HEAD"
_ENDPOINT_METHODS = b"GET, HEAD, POST, OPTIONS"


class Gateway:
    """Routes `POST <endpoint>` to the least busy replica of the API; see docs/architecture.md."""

    def __init__(self, *, clock: Clock = _SYSTEM_CLOCK, upstream_connect_timeout: float = 2.0) -> None:
        self._clock = clock
        self._table = RouteTable()
        self._pool = UpstreamPool(connect_timeout=upstream_connect_timeout)
        self._server = HttpServer(self.handle, on_handler_error=_log_handler_error)
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

    def traffic(self) -> dict[ApiName, ApiTraffic]:
        return {name: state.traffic() for name, state in self._table.items()}

    # Lifecycle
    async def start(self, *, host: str, port: int) -> Address:
        return await self._server.start(host=host, port=port)

    def stop_accepting(self) -> None:
        self._server.stop_accepting()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 (the contract shared with HttpServer)
        """Stop accepting, let in-flight requests finish (up to `timeout` s); True if all did."""
        return await self._server.drain(timeout)

    def close(self) -> None:
        """Close the pooled upstream connections (after drain)."""
        self._pool.close()

    # The data plane
    async def handle(self, request: Request) -> Response:
        """The HttpServer handler: the whole route table. HEAD answers as GET (the server drops the body)."""
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
            response = error_response(404, f"no API is deployed at {path}", apis=self._table.endpoints())
        elif method == "POST":
            return await self._forward(state, request, start)
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

    async def _forward(self, state: ApiState, request: Request, start: float) -> Response:
        route = state.route
        if not route.replicas:
            body = {
                "error": f"api {route.api_name} is not ready (status {route.status})",
                "reason": route.unavailable_reason,
            }
            headers = () if route.status in _WAITING_WONT_HELP else _RETRY_AFTER
            return self._counted(
                state, start, _cross_origin(request, json_response(503, body, headers=headers))
            )
        target = state.pick()
        if target is None:
            message = (
                f"api {route.api_name} is at capacity: every replica holds max_replica_concurrency "
                f"({route.max_replica_concurrency}) requests; retry later"
            )
            response = json_response(503, {"error": message}, headers=_RETRY_AFTER)
            return self._counted(state, start, _cross_origin(request, response))

        forwarded = forward_request(request)
        parts = (forwarded.head, request.body)
        # The failure path only: the request's writes to replicas (the retry policy's budget) and what failed.
        sends = 0
        attempts: tuple[FailedAttempt, ...] = ()
        fresh = False
        while True:
            replica = target.replica_id
            state.acquire(replica)
            try:
                upstream = await self._pool.request(target.address, parts, fresh=fresh)
            except UpstreamError as exc:
                failure = exc
            else:
                response = Response(
                    status=upstream.status, raw=upstream.raw, close_connection=not upstream.keep_alive
                )
                if forwarded.has_origin:
                    allow_any_origin(response)
                return self._counted(state, start, response)
            finally:
                state.release(replica)

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
                    target = retry
            if why_not:
                return self._failed(state, forwarded, start=start, attempts=attempts, why_not=why_not)
            log.info(
                "api %s: replica %s %s; sending the request again", route.api_name, replica, failure.reason
            )

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


def _cross_origin(request: Request, response: Response) -> Response:
    """Mark a response the gateway built when the request carried Origin (forwarding knows it already)."""
    return allow_any_origin(response) if request.header(b"origin") is not None else response


def _log_handler_error(exc: BaseException) -> None:
    log.error("gateway request handler failed", exc_info=exc)
