"""The replica's HTTP routes: predict, the summary, health and readiness, over `modelport.http.server`.

Built by `runtime.server` (one per process) and handed to `HttpServer` as its handler. A thin adapter: the
predictor runs on the `PredictorPool` (through `runtime.batching` when server-side batching is on), payloads
come from `runtime.payload`, responses from `serialize`. A JSON (or raw) predict is answered with the pool's
Future, without a coroutine; forms and server-side batching go through coroutines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol

from modelport.clock import SystemClock
from modelport.http.server import Request, Response, json_response
from modelport.runtime.batching import BatchDispatcher, BatchRequest, LoopTimers
from modelport.runtime.metrics import PROMETHEUS_CONTENT_TYPE, BatchSizeHistogram, render_prometheus
from modelport.runtime.payload import (
    PayloadError,
    close_payload,
    content_type,
    is_form,
    parse_body,
    parse_payload,
)
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import PredictCall, Predictor, user_traceback
from modelport.runtime.readiness import Readiness
from modelport.runtime.serialize import (
    UnserializableError,
    starlette_response,
    to_response,
)

if TYPE_CHECKING:
    from starlette.background import BackgroundTask
    from starlette.datastructures import Headers, QueryParams

log = logging.getLogger("modelport.runtime")

REQUEST_ID_HEADER = b"x-request-id"
_MAX_REQUEST_ID = 200  # a longer incoming id is replaced: it is echoed and logged

Endpoint = Callable[[Request], Response | Awaitable[Response]]


class BatchSettings(Protocol):
    """predictor.server_side_batching (the spec model's or the replica's view of it)."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def batch_interval(self) -> float: ...


class ReplicaApp:
    """Routes requests; serves predictions once `serve` has been given the constructed predictor."""

    def __init__(
        self,
        *,
        api_name: str,
        pool: PredictorPool,
        readiness: Readiness,
        batching: BatchSettings | None = None,
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
        """`dispatch`, awaited."""
        answer = self.dispatch(request)
        return answer if isinstance(answer, Response) else await answer

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        """The HttpServer handler: a Response at once, or an awaitable of one (a predict)."""
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
        return endpoint(request)

    def _healthz(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def _readyz(self, request: Request) -> Response:
        state = self._readiness.snapshot()
        content = {
            "status": state.phase,
            "ready_processes": state.ready_processes,
            "processes": state.processes,
        }
        return json_response(200 if state.ready else 503, content)

    def _summary(self, request: Request) -> Response:
        ready = self._readiness.snapshot().ready
        message = (
            f"API {self._api_name} is ready: send a POST request to get a prediction"
            if ready
            else f"API {self._api_name} is not ready: its predictor is loading (or the replica is stopping)"
        )
        return json_response(200, {"message": message, "api": self._api_name, "ready": ready})

    def _metrics(self, request: Request) -> Response:
        sizes = self._batch_sizes.snapshot() if self._batch_sizes is not None else None
        return Response(status=200, body=render_prometheus(sizes), content_type=PROMETHEUS_CONTENT_TYPE)

    def _predict(self, request: Request) -> Response | Awaitable[Response]:
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
            kind = content_type(request.headers)
            if is_form(kind):
                return self._predict_form(request, predictor, request_id=request_id, id_header=id_header)
            try:
                payload = parse_body(request.body, kind)
            except PayloadError as exc:
                return json_response(400, {"error": str(exc), "request_id": request_id}, headers=id_header)
        return self._predict_with(request, predictor, payload, request_id=request_id, id_header=id_header)

    async def _predict_form(
        self,
        request: Request,
        predictor: Predictor,
        *,
        request_id: str,
        id_header: Sequence[tuple[bytes, bytes]],
    ) -> Response:
        try:
            payload = await parse_payload(request.body, request.headers)
        except PayloadError as exc:
            return json_response(400, {"error": str(exc), "request_id": request_id}, headers=id_header)
        answer = self._predict_with(request, predictor, payload, request_id=request_id, id_header=id_header)
        return answer if isinstance(answer, Response) else await answer

    def _predict_with(
        self,
        request: Request,
        predictor: Predictor,
        payload: object,
        *,
        request_id: str,
        id_header: Sequence[tuple[bytes, bytes]],
    ) -> Response | Awaitable[Response]:
        # What Cortex passed (Starlette's request.query_params and request.headers), built only when declared.
        # Headers wraps the request's list without a copy: HttpServer makes a new one for each request.
        call = PredictCall(
            payload=payload,
            query_params=parse_query_string(request.query_string)
            if predictor.wants("query_params")
            else None,
            headers=_headers(request.headers) if predictor.wants("headers") else None,
        )
        if self._batcher is not None:
            return self._predict_in_batch(self._batcher, call, request_id=request_id)
        return self._pool.submit(
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
        except BaseException as exc:  # a SystemExit from user code must not reach the event loop
            return _failed(exc, call, request_id=request_id, id_header=id_header)
        return self._finish(predictor, call, result, response, request_id=request_id)

    def _finish(
        self, predictor: Predictor, call: PredictCall, result: object, response: Response, *, request_id: str
    ) -> Response:
        """The response with its after-send work: post_predict and the background task, if any."""
        passed = starlette_response(result)
        background = passed.background if passed is not None else None
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
        passed = starlette_response(result)
        if passed is not None and passed.background is not None:
            run = partial(_run_background, passed.background, request_id=request_id)
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
        passed = starlette_response(result)
        if passed is not None and passed.background is not None:
            _run_background(passed.background, request_id=request_id)
        close_payload(call.payload)


def _failed(
    exc: BaseException, call: PredictCall, *, request_id: str, id_header: Sequence[tuple[bytes, bytes]]
) -> Response:
    """The 500 for a predict (or its serialization) that raised, logged with the user's traceback."""
    if isinstance(exc, UnserializableError):
        log.error("request %s: %s", request_id, exc)
    else:
        log.error("request %s: predict failed:\n%s", request_id, user_traceback(exc))
    close_payload(call.payload)
    return _internal_error(request_id, id_header)


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


def _headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    from starlette.datastructures import Headers  # only for predictors that declare headers

    return Headers(raw=raw)


def parse_query_string(query_string: bytes) -> QueryParams:
    """The query as a multi-dict, percent-escapes and raw bytes alike read as UTF-8.

    Starlette's `QueryParams(bytes)` reads raw bytes as latin-1, which garbles a value a client sent
    unescaped; undecodable bytes become U+FFFD, as `parse_qsl` does for bad percent-escapes.
    """
    from starlette.datastructures import QueryParams  # only for predictors that declare query_params

    return QueryParams(query_string.decode("utf-8", errors="replace"))


def _internal_error(request_id: str, id_header: Sequence[tuple[bytes, bytes]]) -> Response:
    return json_response(500, {"error": "internal server error", "request_id": request_id}, headers=id_header)


def _without_body_for_head(request: Request, response: Response) -> Response:
    # HttpServer writes every body as is; a body after a HEAD response would be read as the next response.
    return dataclasses.replace(response, body=b"") if request.method == "HEAD" else response
