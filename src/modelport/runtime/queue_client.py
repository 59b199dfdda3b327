"""The worker protocol's client (docs/jobs.md): lease, extend, ack and fail queue items at the control API.

Used by `runtime.worker` (batch jobs and tasks) and `runtime.async_consumer` (AsyncAPI replicas). Blocking and
thread-safe: each call borrows a keep-alive connection from a small pool. Connection errors and 5xx answers
are retried with backoff for up to `retry_budget` seconds, then `ControlUnreachableError`; a 409 (the lease
was lost) is an ordinary result, `LeaseOutcome.LOST`; any other 4xx is a `ControlApiError`.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import traceback
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from modelport.errors import ModelportError, UnavailableError
from modelport.runtime.predictor import user_traceback

log = logging.getLogger("modelport.runtime")

DEFAULT_RETRY_BUDGET_SECONDS = 60.0
DEFAULT_TIMEOUT_SECONDS = (
    30.0  # one request's socket timeout (a timeout is retried like a dropped connection)
)
_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 2.0
_MAX_IDLE_CONNECTIONS = 8
ERROR_TAIL_LINES = 12  # of the user's traceback, in a fail's error
MAX_ERROR_CHARS = 8000

LEASE_TOKEN_HEADER = "X-Modelport-Lease-Token"
REQUEST_ID_HEADER = "X-Modelport-Request-Id"
QUERY_HEADER = "X-Modelport-Query"
VISIBILITY_HEADER = "X-Modelport-Visibility"
# The original request's other headers come back as `X-Modelport-Header-<name>` (what the control API's
# cluster/jobs_api.py sends; docs/jobs.md leaves it open), unprefixed for the predictor.
REPLAYED_HEADER_PREFIX = b"x-modelport-header-"
_REQUEST_HEADERS = frozenset({b"content-type", REQUEST_ID_HEADER.lower().encode()})


class ControlApiError(ModelportError):
    """The control API refused a request (a 4xx other than 409) or answered something unreadable."""


class ControlUnreachableError(UnavailableError):
    """The control API did not answer (or answered 5xx) for longer than the client's retry budget."""


class LeaseOutcome(StrEnum):
    """What `extend` or `ack` found."""

    OK = "ok"
    LOST = "lost"  # 409: the lease expired and may be someone else's now; give the item up


class FailOutcome(StrEnum):
    """What `fail` did with the item (the control API's `outcome`)."""

    REQUEUED = "requeued"
    DEAD = "dead"
    STALE = "stale"  # the lease was lost: nothing changed


class JobLeaseType(StrEnum):
    """The `type` of a job lease answer."""

    BATCH = "batch"
    TASK = "task"
    ON_JOB_COMPLETE = "on_job_complete"
    WAIT = "wait"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class BatchLease:
    """One batch of a job: run `predict(payload=items, batch_id=batch_id)`, then ack or fail with `token`."""

    batch_id: str
    token: str
    items: list[Any]
    receive_count: int
    visibility_seconds: float


@dataclass(frozen=True, slots=True)
class TaskLease:
    """A task's single item: run `Task()(config)`, then ack or fail with `token`."""

    token: str
    config: dict[str, Any]
    receive_count: int
    visibility_seconds: float


@dataclass(frozen=True, slots=True)
class CompletionLease:
    """Every batch is settled: run `on_job_complete()` (if defined), then ack or fail with `token`."""

    token: str
    visibility_seconds: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing leasable now (other workers hold leases): ask again after `retry_after` seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Stop:
    """The job has ended: the worker exits."""

    reason: str


JobLease = BatchLease | TaskLease | CompletionLease | Wait | Stop


@dataclass(frozen=True, slots=True)
class AsyncLease:
    """One queued async request: its original body, Content-Type and query string, and the lease's token."""

    request_id: str
    token: str
    body: bytes
    content_type: str
    query_string: bytes  # as the client sent it (percent-escapes kept)
    # The predictor's `headers`: Content-Type, X-Modelport-Request-Id and the replayed request headers.
    headers: tuple[tuple[bytes, bytes], ...]
    visibility_seconds: float


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    def json(self, what: str) -> dict[str, Any]:
        try:
            content = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            content = None
        if not isinstance(content, dict):
            raise ControlApiError(f"the control API answered {what} with a body that is not a JSON object")
        return content

    def error(self) -> str:
        try:
            content = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            content = None
        if isinstance(content, dict) and isinstance(content.get("error"), str):
            return str(content["error"])
        return self.body[:200].decode("utf-8", errors="replace") or "(no body)"


def parse_control_url(raw: str) -> str:
    """`raw` less a trailing slash if it is an http(s) URL with a host; else ValueError naming the fix."""
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected the control API's URL, like http://127.0.0.1:8889, got {raw!r}")
    try:
        parts.port  # noqa: B018 (a property that validates the port)
    except ValueError:
        raise ValueError(f"the port of the control API's URL {raw!r} is not a number in 0-65535") from None
    return raw.rstrip("/")


class QueueClient:
    """Blocking client of the worker protocol; safe to share between threads."""

    def __init__(
        self,
        control_url: str,
        *,
        retry_budget: float = DEFAULT_RETRY_BUDGET_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.control_url = parse_control_url(control_url)
        parts = urllib.parse.urlsplit(self.control_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._retry_budget = retry_budget
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # ---- batch jobs and tasks ----

    def job_spec(self, job_id: str) -> dict[str, Any]:
        """The job_spec handed to the predictor's __init__. ControlApiError when the job is unknown (404)."""
        reply = self._call("GET", f"/v1/jobs/{_segment(job_id)}/spec", what=f"the spec of job {job_id}")
        return reply.json(f"the spec of job {job_id}")

    def lease_job(self, job_id: str, *, worker_id: str) -> JobLease:
        reply = self._call(
            "POST",
            f"/v1/jobs/{_segment(job_id)}/lease",
            json={"worker_id": worker_id},
            what=f"a lease of job {job_id}",
        )
        return _job_lease(reply.json(f"a lease of job {job_id}"))

    def extend_job(self, job_id: str, token: str) -> LeaseOutcome:
        return self._settle(f"/v1/jobs/{_segment(job_id)}/extend", {"token": token}, what="an extend")

    def ack_job(self, job_id: str, token: str, *, seconds: float) -> LeaseOutcome:
        body = {"token": token, "seconds": seconds}
        return self._settle(f"/v1/jobs/{_segment(job_id)}/ack", body, what="an ack")

    def fail_job(self, job_id: str, token: str, *, error: str) -> FailOutcome:
        return self._fail(f"/v1/jobs/{_segment(job_id)}/fail", token, error)

    # ---- AsyncAPI ----

    def lease_async(self, api_name: str, *, worker_id: str, wait_seconds: float = 0.0) -> AsyncLease | None:
        """The oldest queued request of the API, or None when its queue stayed empty (204) for
        `wait_seconds` (a long poll: the control API answers as soon as a request is submitted)."""
        what = f"a lease of API {api_name}'s async queue"
        reply = self._call(
            "POST",
            f"/v1/async/{_segment(api_name)}/lease",
            json={"worker_id": worker_id, "wait_seconds": wait_seconds},
            what=what,
        )
        if reply.status == 204:
            return None
        token = reply.header(LEASE_TOKEN_HEADER)
        if not token:
            raise ControlApiError(f"the control API answered {what} without a {LEASE_TOKEN_HEADER} header")
        visibility = _number(reply.header(VISIBILITY_HEADER) or "", what=VISIBILITY_HEADER)
        return AsyncLease(
            request_id=reply.header(REQUEST_ID_HEADER) or "",
            token=token,
            body=reply.body,
            content_type=reply.header("Content-Type") or "",
            query_string=(reply.header(QUERY_HEADER) or "").encode("latin-1"),
            headers=_request_headers(reply.headers),
            visibility_seconds=visibility,
        )

    def extend_async(self, api_name: str, token: str) -> LeaseOutcome:
        return self._settle(f"/v1/async/{_segment(api_name)}/extend", {"token": token}, what="an extend")

    def ack_async(self, api_name: str, token: str, *, body: bytes, content_type: str) -> LeaseOutcome:
        reply = self._call(
            "POST",
            f"/v1/async/{_segment(api_name)}/ack",
            body=body,
            headers={"Content-Type": content_type, LEASE_TOKEN_HEADER: token},
            what="an ack",
        )
        return LeaseOutcome.LOST if reply.status == 409 else LeaseOutcome.OK

    def fail_async(self, api_name: str, token: str, *, error: str) -> FailOutcome:
        return self._fail(f"/v1/async/{_segment(api_name)}/fail", token, error)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # ---- transport ----

    def _settle(self, path: str, body: Mapping[str, Any], *, what: str) -> LeaseOutcome:
        reply = self._call("POST", path, json=body, what=what)
        return LeaseOutcome.LOST if reply.status == 409 else LeaseOutcome.OK

    def _fail(self, path: str, token: str, error: str) -> FailOutcome:
        reply = self._call("POST", path, json={"token": token, "error": error}, what="a fail")
        if reply.status == 409:
            return FailOutcome.STALE
        outcome = reply.json("a fail").get("outcome")
        try:
            return FailOutcome(str(outcome))
        except ValueError:
            raise ControlApiError(
                f"the control API answered a fail with an unknown outcome {outcome!r}"
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Mapping[str, Any] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One request, retried through connection errors and 5xx for up to the retry budget.

        Returns 2xx and 409 answers; raises ControlApiError for any other 4xx.
        """
        sent_headers = dict(headers or {})
        if json is not None:
            body = orjson.dumps(json)
            sent_headers["Content-Type"] = "application/json"
        target = self._prefix + path
        first_failure: float | None = None
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            connection, reused = self._borrow()
            try:
                connection.request(
                    method, target, body=body if method != "GET" else None, headers=sent_headers
                )
                response = connection.getresponse()
                reply = _Reply(response.status, tuple(response.getheaders()), response.read())
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused:
                    continue  # a kept-alive connection the server had closed: try again on a new one
                problem = f"cannot reach the control API at {self.control_url}: {exc or type(exc).__name__}"
            else:
                if response.will_close:
                    connection.close()
                else:
                    self._give_back(connection)
                if reply.status < 500:
                    if first_failure is not None:
                        log.info("the control API answers again (%s)", what)
                    if reply.status < 300 or reply.status == 409:
                        return reply
                    raise ControlApiError(
                        f"the control API refused {what} ({method} {target}): {reply.status} {reply.error()}"
                    )
                problem = f"the control API answered {what} with {reply.status}: {reply.error()}"
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
                log.warning("%s; retrying for up to %g s", problem, self._retry_budget)
            remaining = first_failure + self._retry_budget - now
            if remaining <= 0:
                raise ControlUnreachableError(
                    f"{problem} (gave up after {self._retry_budget:g} s of retries)"
                )
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF_SECONDS)

    def _borrow(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self._timeout), False

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _request_headers(lease_headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """An async lease's headers as the original request's: raw, names lowercased (as in HttpServer)."""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in lease_headers:
        raw_name = name.lower().encode("latin-1")
        if raw_name in _REQUEST_HEADERS:
            headers.append((raw_name, value.encode("latin-1")))
        elif raw_name.startswith(REPLAYED_HEADER_PREFIX) and len(raw_name) > len(REPLAYED_HEADER_PREFIX):
            headers.append((raw_name[len(REPLAYED_HEADER_PREFIX) :], value.encode("latin-1")))
    return tuple(headers)


def _job_lease(content: Mapping[str, Any]) -> JobLease:
    kind = content.get("type")
    try:
        match JobLeaseType(str(kind)):
            case JobLeaseType.BATCH:
                items = content["items"]
                if not isinstance(items, list):
                    raise TypeError("items is not a list")
                return BatchLease(
                    batch_id=str(content["batch_id"]),
                    token=str(content["token"]),
                    items=items,
                    receive_count=int(content.get("receive_count", 1)),
                    visibility_seconds=float(content["visibility_seconds"]),
                )
            case JobLeaseType.TASK:
                config = content.get("config") or {}
                if not isinstance(config, dict):
                    raise TypeError("config is not an object")
                return TaskLease(
                    token=str(content["token"]),
                    config=config,
                    receive_count=int(content.get("receive_count", 1)),
                    visibility_seconds=float(content["visibility_seconds"]),
                )
            case JobLeaseType.ON_JOB_COMPLETE:
                return CompletionLease(
                    token=str(content["token"]), visibility_seconds=float(content["visibility_seconds"])
                )
            case JobLeaseType.WAIT:
                return Wait(retry_after=max(0.0, float(content["retry_after"])))
            case JobLeaseType.STOP:
                return Stop(reason=str(content.get("reason") or "the job has ended"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ControlApiError(
            f"the control API answered a lease with an unreadable {kind!r} lease: {exc}"
        ) from None


def _number(raw: str, *, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ControlApiError(f"the control API's {what} header is not a number: {raw!r}") from None


def failure_error(exc: BaseException, *, tail_lines: int = ERROR_TAIL_LINES) -> str:
    """A fail's `error`: the exception's one-line summary, then the last lines of the user's traceback."""
    summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
    lines = user_traceback(exc).splitlines()
    tail = "\n".join(lines[-tail_lines:])
    error = f"{summary}\n{tail}" if tail else summary
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 3] + "..."
