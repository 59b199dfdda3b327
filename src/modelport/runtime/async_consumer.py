"""An AsyncAPI replica's consumer of its API's queue: lease a request, predict, ack the serialized result.

Started by `runtime.server` in each process of an AsyncAPI replica once its predictor is constructed (when
the replica was given `--control-url`), stopped when the replica drains. `threads_per_process` loops each
hold at most one lease. A request becomes the predictor call that POST /predict would make of it: the payload
from its body and Content-Type (`runtime.payload`), query params from `X-Modelport-Query`, and as headers
Content-Type, X-Modelport-Request-Id and the request's headers that the control API replays (see
`runtime.queue_client`). The call runs on the replica's `PredictorPool`; its return value is serialized as
for a response (`runtime.serialize`). With server-side batching on, each async request is a batch of one.
A Starlette Response with a status >= 400 is a failure, as is an exception or an unserializable value;
post_predict runs after the ack.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import starlette.responses
from starlette.datastructures import Headers

from modelport.runtime.app import parse_query_string
from modelport.runtime.heartbeat import Heartbeat
from modelport.runtime.payload import PayloadError, close_payload, parse_payload
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import PredictCall, Predictor, user_traceback
from modelport.runtime.queue_client import (
    AsyncLease,
    ControlApiError,
    ControlUnreachableError,
    LeaseOutcome,
    QueueClient,
    failure_error,
)
from modelport.runtime.replica_spec import ReplicaSpec
from modelport.runtime.serialize import OCTET_STREAM, UnserializableError, to_response
from modelport.types import ApiKind

log = logging.getLogger("modelport.runtime")

T = TypeVar("T")

# A lease waits on the control API up to LONG_POLL_SECONDS for a submission (it answers at once when one
# arrives), so an idle consumer asks about once per long poll; a short pause between polls keeps a control
# API that answers at once from being asked in a busy loop. A drain waits at most one long poll.
LONG_POLL_SECONDS = 2.0
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = FIRST_POLL_SECONDS
ERROR_PAUSE_SECONDS = 5.0  # after the control API refused a lease or stayed unreachable past the budget


def start_async_consumer(
    spec: ReplicaSpec, *, control_url: str | None, worker_id: str, pool: PredictorPool, predictor: Predictor
) -> AsyncConsumer | None:
    """The running consumer of an AsyncAPI's queue; None for other kinds, or without a control URL."""
    if spec.kind is not ApiKind.ASYNC:
        return None
    if control_url is None:
        log.warning(
            "no --control-url: this %s replica serves HTTP only, its queue is not consumed", spec.kind
        )
        return None
    consumer = AsyncConsumer(
        client=QueueClient(control_url),
        api_name=spec.name,
        worker_id=worker_id,
        predictor=predictor,
        pool=pool,
        concurrency=spec.predictor.threads_per_process,
        batched=spec.predictor.server_side_batching is not None,
    )
    consumer.start()
    log.info(
        "consuming %s's async queue from %s (%d at a time)",
        spec.name,
        control_url,
        spec.predictor.threads_per_process,
    )
    return consumer


@dataclass(frozen=True, slots=True)
class _Prediction:
    """A serialized result to ack, and what runs once it is acked (post_predict), on a predictor thread."""

    body: bytes
    content_type: str
    after_ack: Callable[[], None]
    payload: object  # closed by after_ack, or at once when the result is not acked


@dataclass(frozen=True, slots=True)
class _Failure:
    error: str  # the fail's error: what the user reads in the request's status
    logged: str  # what the replica's log shows (the whole user traceback)


class AsyncConsumer:
    """`concurrency` lease loops on the running event loop; the blocking client runs on threads of its own."""

    def __init__(
        self,
        *,
        client: QueueClient,
        api_name: str,
        worker_id: str,
        predictor: Predictor,
        pool: PredictorPool,
        concurrency: int,
        batched: bool = False,
    ) -> None:
        self._client = client
        self._api_name = api_name
        self._worker_id = worker_id
        self._predictor = predictor
        self._pool = pool
        self._concurrency = concurrency
        self._batched = batched
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # Not the loop's default executor: the event loop's shutdown waits for that one, and a call retrying
        # an unreachable control API must not hold the replica's exit.
        self._calls = concurrent.futures.ThreadPoolExecutor(concurrency + 1, thread_name_prefix="async-queue")

    def start(self) -> None:
        """Start the lease loops (call on the event loop)."""
        self._loops = [
            asyncio.create_task(self._consume(), name=f"async-consumer-{index}")
            for index in range(self._concurrency)
        ]

    def stop(self) -> None:
        """Lease no more; requests in progress finish (see `wait`)."""
        self._stopping.set()

    async def wait(self, seconds: float) -> bool:
        """Wait for the requests in progress to be settled; False if some were still running after `seconds`
        (they are abandoned: their leases expire and the requests are leased again elsewhere)."""
        if self._loops:
            _, running = await asyncio.wait(self._loops, timeout=max(0.0, seconds))
            for loop in running:
                loop.cancel()
        else:
            running = set()
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        return not running

    async def _consume(self) -> None:
        poll = FIRST_POLL_SECONDS
        while not self._stopping.is_set():
            try:
                lease = await self._call(
                    self._client.lease_async,
                    self._api_name,
                    worker_id=self._worker_id,
                    wait_seconds=LONG_POLL_SECONDS,
                )
            except (ControlApiError, ControlUnreachableError) as exc:
                log.error("cannot lease from the async queue of %s: %s", self._api_name, exc)
                await self._pause(ERROR_PAUSE_SECONDS)
                continue
            if lease is None:
                await self._pause(poll)
                poll = min(poll * 2, MAX_POLL_SECONDS)
                continue
            poll = FIRST_POLL_SECONDS
            try:
                await self._process(lease)
            except (ControlApiError, ControlUnreachableError) as exc:
                log.error("async request %s: cannot settle it: %s", lease.request_id, exc)
            except Exception:  # a loop must not die: its lease expires and the request is taken again
                log.exception("async request %s: unexpected error", lease.request_id)

    async def _process(self, lease: AsyncLease) -> None:
        what = f"async request {lease.request_id}"
        extend = partial(self._client.extend_async, self._api_name, lease.token)
        started = asyncio.get_running_loop().time()
        with Heartbeat.for_visibility(extend, visibility_seconds=lease.visibility_seconds, what=what) as beat:
            outcome = await self._predict(lease)
        seconds = asyncio.get_running_loop().time() - started
        if beat.lost:
            log.warning("%s finished in %.3f s, but its lease was lost meanwhile", what, seconds)
            if isinstance(outcome, _Prediction):
                close_payload(outcome.payload)
            return
        if isinstance(outcome, _Failure):
            settled = await self._call(
                self._client.fail_async, self._api_name, lease.token, error=outcome.error
            )
            log.error("%s failed after %.3f s (%s):\n%s", what, seconds, settled, outcome.logged)
            return
        acked = await self._call(
            self._client.ack_async,
            self._api_name,
            lease.token,
            body=outcome.body,
            content_type=outcome.content_type,
        )
        if acked is LeaseOutcome.LOST:
            log.warning("%s finished in %.3f s, but its lease was lost before the ack", what, seconds)
            close_payload(outcome.payload)
            return
        log.info("%s completed in %.3f s", what, seconds)
        self._pool.spawn(outcome.after_ack, what=f"{what}: post_predict")

    async def _predict(self, lease: AsyncLease) -> _Prediction | _Failure:
        predictor = self._predictor
        headers = list(lease.headers)
        payload: object = None
        if predictor.wants("payload"):
            try:
                payload = await parse_payload(lease.body, headers)
            except PayloadError as exc:
                return _Failure(error=str(exc), logged=str(exc))
        call = PredictCall(
            payload=payload,
            query_params=parse_query_string(lease.query_string) if predictor.wants("query_params") else None,
            headers=Headers(raw=headers) if predictor.wants("headers") else None,
        )
        return await self._pool.run(partial(self._invoke, call))

    def _invoke(self, call: PredictCall) -> _Prediction | _Failure:
        """On a predictor thread: predict, then serialize (which may run user code too)."""
        try:
            result = self._predict_one(call)
            response = to_response(result)
        except UnserializableError as exc:
            close_payload(call.payload)
            return _Failure(error=str(exc), logged=str(exc))
        except BaseException as exc:  # a SystemExit from user code must not reach the event loop
            close_payload(call.payload)
            return _Failure(error=failure_error(exc), logged=user_traceback(exc))
        if response.status >= 400:
            close_payload(call.payload)
            error = (
                f"predict returned a response with status {response.status}: "
                f"{response.body[:500].decode('utf-8', errors='replace')}"
            )
            return _Failure(error=error, logged=error)
        content_type = response.content_type
        if content_type is None:  # a Starlette Response: its own header
            content_type = next(
                (value for name, value in response.headers if name == b"content-type"), OCTET_STREAM
            )
        return _Prediction(
            body=response.body,
            content_type=content_type.decode("latin-1"),
            after_ack=partial(self._after_ack, result, call),
            payload=call.payload,
        )

    def _predict_one(self, call: PredictCall) -> object:
        if not self._batched:
            return self._predictor.predict(call)
        results = self._predictor.predict_batch([call])
        if not isinstance(results, list) or len(results) != 1:
            raise TypeError(
                "with server_side_batching, predict must return a list with one result per request; "
                f"it returned {type(results).__name__} for a batch of 1"
            )
        return results[0]

    def _after_ack(self, result: object, call: PredictCall) -> None:
        try:
            if self._batched:
                self._predictor.post_predict_batch([result], [call])
            else:
                self._predictor.post_predict(result, call)
        except BaseException as exc:
            log.error("post_predict failed:\n%s", user_traceback(exc))
        if isinstance(result, starlette.responses.Response) and result.background is not None:
            try:
                asyncio.run(result.background())
            except BaseException as exc:
                log.error("the response's background task failed:\n%s", user_traceback(exc))
        close_payload(call.payload)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._calls, partial(fn, *args, **kwargs))
