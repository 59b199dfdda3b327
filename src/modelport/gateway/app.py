"""The gateway: the data plane's front door, serving every API's endpoint on one port of the local cluster.

Created and driven by modelport.cluster.daemon: the controller publishes routes into it and reads its traffic
counters; HTTP clients send predictions through it to replicas.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from modelport.clock import Clock, SystemClock
from modelport.gateway.metrics import CONTENT_TYPE, MetricsSample, render_metrics
from modelport.gateway.routing import ApiState, RouteTable
from modelport.gateway.upstream import UpstreamError, UpstreamPool
from modelport.http.server import HttpServer, Request, Response, error_response, json_response
from modelport.types import Address, ApiName, ApiRoute, ApiTraffic

log = logging.getLogger(__name__)

_SYSTEM_CLOCK = SystemClock()
_RETRY_AFTER = ((b"retry-after", b"1"),)
# Meaningful for one connection only (RFC 9110 7.6.1; `proxy-*` is checked by prefix)...
_HOP_BY_HOP = (b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"expect")
# ...plus the two the gateway sets itself.
_NOT_FORWARDED = frozenset((*_HOP_BY_HOP, b"host", b"content-length"))
_GET_ONLY = ((b"allow", b"GET"),)
_ENDPOINT_METHODS = ((b"allow", b"GET, POST"),)


class Gateway:
    """Routes `POST <endpoint>` to the least busy replica of the API; see docs/architecture.md."""

    def __init__(self, *, clock: Clock = _SYSTEM_CLOCK, upstream_connect_timeout: float = 2.0) -> None:
        self._clock = clock
        self._table = RouteTable()
        self._pool = UpstreamPool(connect_timeout=upstream_connect_timeout)
        self._server = HttpServer(self.handle, on_handler_error=_log_handler_error)
        # The gateway's own paths, GET only; checked before API endpoints, so no API can shadow them.
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
        """The HttpServer handler: the whole route table."""
        start = self._clock.monotonic()
        path = request.path
        own = self._own_routes.get(path)
        if own is not None:
            if request.method == "GET":
                return own()
            return json_response(405, {"error": f"{path} only answers GET"}, headers=_GET_ONLY)
        state = self._table.lookup(path)
        if state is None:
            return error_response(404, f"no API is deployed at {path}", apis=self._table.endpoints())
        if request.method == "POST":
            return await self._forward(state, request, start)
        if request.method == "GET":
            return self._summary(state)
        message = (
            f"method {request.method} is not allowed on {path}: POST a payload to predict, "
            "or GET for a summary of the API"
        )
        return json_response(405, {"error": message}, headers=_ENDPOINT_METHODS)

    async def _forward(self, state: ApiState, request: Request, start: float) -> Response:
        route = state.route
        if not route.replicas:
            body = {
                "error": f"api {route.api_name} is not ready (status {route.status})",
                "reason": route.unavailable_reason,
            }
            return self._counted(state, start, json_response(503, body, headers=_RETRY_AFTER))
        target = state.pick()
        if target is None:
            message = (
                f"api {route.api_name} is at capacity: every replica holds max_replica_concurrency "
                f"({route.max_replica_concurrency}) requests; retry later"
            )
            return self._counted(state, start, json_response(503, {"error": message}, headers=_RETRY_AFTER))

        request_id = request.header(b"x-request-id")
        if request_id is None:
            request_id = uuid.uuid4().hex.encode()
            headers = _forwarded_headers(request, extra=b"x-request-id: " + request_id + b"\r\n")
        else:
            headers = _forwarded_headers(request, extra=b"")
        request_line = b"POST /predict?" + request.query_string if request.query_string else b"POST /predict"
        request_line += b" HTTP/1.1\r\nhost: "
        retried = False
        while True:
            replica = target.replica_id
            address = target.address
            head = b"%s%s:%d\r\n%s" % (request_line, address.host.encode(), address.port, headers)
            state.acquire(replica)
            try:
                upstream = await self._pool.request(
                    address, (head, request.body), replayable=route.retry_on_failure
                )
            except UpstreamError as exc:
                failure = exc
            else:
                response = Response(
                    status=upstream.status, raw=upstream.raw, close_connection=not upstream.keep_alive
                )
                return self._counted(state, start, response)
            finally:
                state.release(replica)

            if failure.connect_failed:
                state.mark_down(replica)
            if failure.response_started:
                # The client has seen nothing yet (responses are buffered), but the replica may have acted
                # on the request: answer 502 and close, never retry.
                message = f"replica {replica} of api {route.api_name} failed while answering: {failure}"
                response = error_response(502, message, request_id=request_id.decode("latin-1"))
                response.close_connection = True
                return self._counted(state, start, response)
            retry = None
            # A request that never reached the replica is safe to send elsewhere even when the API's
            # requests are not idempotent (as nginx's proxy_next_upstream does).
            if not retried and (route.retry_on_failure or not failure.request_sent):
                retried = True
                retry = state.pick(exclude=(replica,))
            if retry is None:
                message = f"replica {replica} of api {route.api_name} failed before answering: {failure}"
                response = error_response(502, message, request_id=request_id.decode("latin-1"))
                return self._counted(state, start, response)
            log.info("api %s: replica %s failed before answering (%s)", route.api_name, replica, failure)
            target = retry

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


def _forwarded_headers(request: Request, *, extra: bytes) -> bytes:
    """The client's end-to-end headers as wire bytes, then `extra`, content-length and the blank line."""
    connection = request.header(b"connection")
    # Headers the client named in `Connection` are hop-by-hop too.
    listed = frozenset(token.strip().lower() for token in connection.split(b",")) if connection else ()
    parts = [
        name + b": " + value + b"\r\n"
        for name, value in request.headers
        if name not in _NOT_FORWARDED and name not in listed and not name.startswith(b"proxy-")
    ]
    parts.append(extra)
    parts.append(b"content-length: %d\r\n\r\n" % len(request.body))
    return b"".join(parts)


def _log_handler_error(exc: BaseException) -> None:
    log.error("gateway request handler failed", exc_info=exc)
