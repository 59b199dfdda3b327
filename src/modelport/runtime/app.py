"""The replica's HTTP routes: predict, the summary, health and readiness, over `modelport.http.server`.

Built by `runtime.server` (one per process) and handed to `HttpServer` as its handler. A thin adapter: the
predictor runs on the `PredictorPool` (through `runtime.batching` when server-side batching is on), payloads
come from `runtime.payload`, responses from `serialize`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import starlette.responses
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, QueryParams

from modelport.clock import SystemClock
from modelport.http.server import Request, Response, json_response
from modelport.runtime.batching import BatchDispatcher, BatchRequest, LoopTimers
from modelport.runtime.metrics import PROMETHEUS_CONTENT_TYPE, BatchSizeHistogram, render_prometheus
from modelport.runtime.payload import PayloadError, close_payload, parse_payload
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import PredictCall, Predictor, user_traceback
from modelport.runtime.readiness import Readiness
from modelport.runtime.serialize import UnserializableError, to_response
from modelport.spec.model import ServerSideBatchingSpec

log = logging.getLogger("modelport.runtime")

REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID = 200  # a longer incoming id is replaced: it is echoed and logged

Endpoint = Callable[[Request], Awaitable[Response]]


class ReplicaApp:
    """Routes requests; serves predictions once `serve` has been given the constructed predictor."""

    def __init__(
        self,
        *,
        api_name: str,
        pool: PredictorPool,
        readiness: Readiness,
        batching: ServerSideBatchingSpec | None = None,
        batch_sizes: BatchSizeHistogram | None = None,
    ) -> None:
        self._api_name = api_name
        self._pool = pool
        self._readiness = readiness
        self._batching = batching
        self._batch_sizes = batch_sizes
        self._predictor: Predictor | None = None
        self._batcher: BatchDispatcher[Response] | None = None
        # The whole route table. POST / is what a Cortex 0.20 local deployment answered.
        self._routes: dict[str, dict[str, Endpoint]] = {
            "/predict": {"POST": self._predict, "GET": self._summary},
            "/": {"POST": self._predict, "GET": self._summary},
            "/healthz": {"GET": self._healthz},
            "/readyz": {"GET": self._readyz},
            "/metrics": {"GET": self._metrics},
        }

    def serve(self, predictor: Predictor) -> None:
        """Start answering predictions (call on the event loop, once the predictor is constructed)."""
        if self._batching is not None:
            self._batcher = BatchDispatcher(
                predictor,
                max_batch_size=self._batching.max_batch_size,
                batch_interval=self._batching.batch_interval,
                max_running=self._pool.threads,
                pool=self._pool,
                clock=SystemClock(),
                timers=LoopTimers(asyncio.get_running_loop()),
                respond=self._respond,
                fail=lambda request: _internal_error(request.request_id, _id_header(request.request_id)),
                histogram=self._batch_sizes,
            )
        self._predictor = predictor

    async def handle(self, request: Request) -> Response:
        methods = self._routes.get(request.path)
        if methods is None:
            return _without_body_for_head(
                request, json_response(404, {"error": f"not found: {request.method} {request.path}"})
            )
        endpoint = methods.get(request.method)
        if endpoint is None:
            allowed = ", ".join(methods)
            response = json_response(
                405,
                {"error": f"method {request.method} not allowed on {request.path}; allowed: {allowed}"},
                headers=[(b"allow", allowed.encode())],
            )
            return _without_body_for_head(request, response)
        return await endpoint(request)

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        state = self._readiness.snapshot()
        content = {
            "status": state.phase,
            "ready_processes": state.ready_processes,
            "processes": state.processes,
        }
        return json_response(200 if state.ready else 503, content)

    async def _summary(self, request: Request) -> Response:
        ready = self._readiness.snapshot().ready
        message = (
            f"API {self._api_name} is ready: send a POST request to get a prediction"
            if ready
            else f"API {self._api_name} is not ready: its predictor is loading (or the replica is stopping)"
        )
        return json_response(200, {"message": message, "api": self._api_name, "ready": ready})

    async def _metrics(self, request: Request) -> Response:
        sizes = self._batch_sizes.snapshot() if self._batch_sizes is not None else None
        return Response(status=200, body=render_prometheus(sizes), content_type=PROMETHEUS_CONTENT_TYPE)

    async def _predict(self, request: Request) -> Response:
        request_id = _request_id(request)
        id_header = ((REQUEST_ID_HEADER, request_id.encode("latin-1")),)
        predictor = self._predictor
        if predictor is None:
            return json_response(
                503,
                {"error": "the predictor is still loading; retry shortly", "request_id": request_id},
                headers=(*id_header, (b"retry-after", b"1")),
            )
        payload: object = None
        if predictor.wants("payload"):
            try:
                payload = await parse_payload(request.body, request.headers)
            except PayloadError as exc:
                return json_response(400, {"error": str(exc), "request_id": request_id}, headers=id_header)
        # What Cortex passed (Starlette's request.query_params and request.headers), built only when declared.
        # Headers wraps the request's list without a copy: HttpServer makes a new one for each request.
        call = PredictCall(
            payload=payload,
            query_params=parse_query_string(request.query_string)
            if predictor.wants("query_params")
            else None,
            headers=Headers(raw=request.headers) if predictor.wants("headers") else None,
        )
        if self._batcher is not None:
            return await self._predict_in_batch(self._batcher, call, request_id=request_id)
        return await self._pool.run(
            partial(self._invoke, predictor, call, request_id=request_id, id_header=id_header)
        )

    def _invoke(
        self,
        predictor: Predictor,
        call: PredictCall,
        *,
        request_id: str,
        id_header: Sequence[tuple[bytes, bytes]],
    ) -> Response:
        """On a predictor thread: predict, then serialize (which may run user code too)."""
        try:
            result = predictor.predict(call)
            response = to_response(result, headers=id_header)
        except UnserializableError as exc:
            log.error("request %s: %s", request_id, exc)
            close_payload(call.payload)
            return _internal_error(request_id, id_header)
        except BaseException as exc:  # a SystemExit from user code must not reach the event loop
            log.error("request %s: predict failed:\n%s", request_id, user_traceback(exc))
            close_payload(call.payload)
            return _internal_error(request_id, id_header)
        background = result.background if isinstance(result, starlette.responses.Response) else None
        if predictor.post_predict_parameters is None and background is None:
            close_payload(call.payload)
            return response
        # post_predict and a Starlette background task run on a predictor thread once the response has
        # been written, never before it (Cortex's contract).
        finish = partial(self._after_response, predictor, result, call=call, request_id=request_id)
        return dataclasses.replace(
            response, after_send=lambda: self._pool.spawn(finish, what="after-response")
        )

    async def _predict_in_batch(
        self, batcher: BatchDispatcher[Response], call: PredictCall, *, request_id: str
    ) -> Response:
        delivery = await batcher.submit(BatchRequest(call=call, request_id=request_id))
        response = delivery.value
        if delivery.delivered is None:
            return response
        return dataclasses.replace(response, after_send=_then(response.after_send, delivery.delivered))

    def _respond(self, result: object, request: BatchRequest) -> Response:
        """On a predictor thread: one result of a batch as its request's response.

        The batch's post_predict is the dispatcher's to run; a Starlette background task runs once this
        response is sent.
        """
        request_id = request.request_id
        try:
            response = to_response(result, headers=_id_header(request_id))
        except UnserializableError as exc:
            log.error("request %s: %s", request_id, exc)
            return _internal_error(request_id, _id_header(request_id))
        if isinstance(result, starlette.responses.Response) and result.background is not None:
            run = partial(_run_background, result.background, request_id=request_id)
            response = dataclasses.replace(
                response, after_send=lambda: self._pool.spawn(run, what="background task")
            )
        return response

    def _after_response(
        self, predictor: Predictor, result: object, *, call: PredictCall, request_id: str
    ) -> None:
        try:
            predictor.post_predict(result, call)
        except BaseException as exc:
            log.error("request %s: post_predict failed:\n%s", request_id, user_traceback(exc))
        if isinstance(result, starlette.responses.Response) and result.background is not None:
            _run_background(result.background, request_id=request_id)
        close_payload(call.payload)


def _run_background(background: BackgroundTask, *, request_id: str) -> None:
    try:
        asyncio.run(background())
    except BaseException as exc:
        log.error("request %s: the response's background task failed:\n%s", request_id, user_traceback(exc))


def _then(first: Callable[[], None] | None, second: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return second

    def both() -> None:
        try:
            first()
        finally:
            second()

    return both


def _id_header(request_id: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((REQUEST_ID_HEADER, request_id.encode("latin-1")),)


def _request_id(request: Request) -> str:
    raw = request.header(REQUEST_ID_HEADER)
    if raw and len(raw) <= _MAX_REQUEST_ID:
        return raw.decode("latin-1")
    return uuid.uuid4().hex


def parse_query_string(query_string: bytes) -> QueryParams:
    """The query as a multi-dict, percent-escapes and raw bytes alike read as UTF-8.

    Starlette's `QueryParams(bytes)` reads raw bytes as latin-1, which garbles a value a client sent
    unescaped; undecodable bytes become U+FFFD, as `parse_qsl` does for bad percent-escapes.
    """
    return QueryParams(query_string.decode("utf-8", errors="replace"))


def _internal_error(request_id: str, id_header: Sequence[tuple[bytes, bytes]]) -> Response:
    return json_response(500, {"error": "internal server error", "request_id": request_id}, headers=id_header)


def _without_body_for_head(request: Request, response: Response) -> Response:
    # HttpServer writes every body as is; a body after a HEAD response would be read as the next response.
    return dataclasses.replace(response, body=b"") if request.method == "HEAD" else response
