"""HTTP adapters of the job scheduler: submissions on the gateway, the worker protocol and job routes on
the control API (docs/jobs.md).

The daemon builds one `JobsApi` and hands it to the gateway (as its SubmissionHandler) and to the control
API (its `routes()`); both call the controller's `JobScheduler`. Thin: parse, call, serialise. The local
daemon's Controller and the in-cluster KubeController both serve as its `JobsHost`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from modelport.cluster.http_errors import error_to_response
from modelport.cluster.routes import Route
from modelport.controller.jobs import JobScheduler, JobView, LeaseKind, require_kind
from modelport.controller.jobstore import ItemState, ItemView, Lease
from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.errors import UserInputError
from modelport.http.server import Request, Response, error_response, json_response
from modelport.spec.job import parse_batch_job, parse_task_job, plan_batches
from modelport.types import ApiKind, ApiName, ApiRoute, AsyncStatus, JobId

MAX_LONG_POLL_SECONDS = 20.0

LEASE_TOKEN_HEADER = b"x-modelport-lease-token"
REQUEST_ID_HEADER = b"x-modelport-request-id"
QUERY_HEADER = b"x-modelport-query"
VISIBILITY_HEADER = b"x-modelport-visibility"
# Request headers an async predictor may read (`headers` argument); hop-by-hop and size headers are not kept.
_KEPT_HEADERS = frozenset({b"content-type", b"accept", b"user-agent", b"x-request-id", b"authorization"})
_ASYNC_STATUS = {
    ItemState.QUEUED: AsyncStatus.IN_QUEUE,
    ItemState.LEASED: AsyncStatus.IN_PROGRESS,
    ItemState.SUCCEEDED: AsyncStatus.COMPLETED,
    ItemState.DEAD: AsyncStatus.FAILED,
}


class JobsHost(Protocol):
    """What the job routes need of the controller: the APIs as deployed and the workers as observed."""

    def desired_api(self, name: ApiName) -> DesiredApi: ...

    def workers(self) -> list[ObservedReplica]: ...


class JobsApi:
    def __init__(self, *, controller: JobsHost, scheduler: JobScheduler, gateway_url: str) -> None:
        self._controller = controller
        self._jobs = scheduler
        self._gateway_url = gateway_url
        # Long-polling async consumers wait on their API's event; a submission sets it (and replaces it).
        self._submitted: dict[ApiName, asyncio.Event] = {}

    # ---- the gateway's SubmissionHandler ----

    async def handle_submission(self, route: ApiRoute, request: Request, item: str | None) -> Response:
        try:
            return await self._submission(route, request, item)
        except Exception as exc:
            return error_to_response(exc, request)

    async def _submission(self, route: ApiRoute, request: Request, item: str | None) -> Response:
        name, kind, method = route.api_name, route.kind, request.method
        if method == "HEAD":
            method = "GET"
        if kind is ApiKind.ASYNC:
            if method == "POST" and item is None:
                return self._submit_async(name, request)
            if method == "GET" and item is not None:
                return json_response(200, async_json(self._jobs.async_request(name, item)))
            if method == "GET":
                return json_response(200, self._async_summary(name))
            return _not_allowed(request, f"POST {route.endpoint} submits; GET {route.endpoint}/<id> reports")
        if method == "POST" and item is None:
            return await self._submit_job(name, kind, request)
        if method == "GET" and item is not None:
            return json_response(200, self.job_json(self._job_view(name, JobId(item))))
        if method == "GET":
            jobs = [job_summary(self._job_view(name, job.job_id)) for job in self._jobs.jobs(name)]
            return json_response(200, {"api_name": name, "kind": str(kind), "jobs": jobs})
        if method == "DELETE" and item is not None:
            self._jobs.job(JobId(item), name)
            self._jobs.stop(JobId(item))
            return json_response(200, {"message": f"stopped job {item}"})
        return _not_allowed(
            request,
            f"POST {route.endpoint} submits a job; GET or DELETE {route.endpoint}/<job id> "
            "reports or stops it",
        )

    async def _submit_job(self, name: ApiName, kind: ApiKind, request: Request) -> Response:
        desired = self._controller.desired_api(name)
        if kind is ApiKind.TASK:
            task = parse_task_job(request.body)
            return json_response(
                200, self.job_json(self._job_view(name, self._jobs.submit_task(desired, task).job_id))
            )
        batch = parse_batch_job(request.body)
        # Reading the files a job lists can take a while: off the event loop (the store stays on it).
        plan = await asyncio.to_thread(plan_batches, batch)
        if _flag(request, "dryRun"):
            items = sum(len(b) for b in plan.batches)
            return json_response(
                200,
                {
                    "dry_run": True,
                    "api_name": name,
                    "total_batch_count": len(plan.batches),
                    "items": items,
                    "sources": plan.sources,
                    "message": "nothing was enqueued (dryRun=true)",
                },
            )
        job = self._jobs.submit_batch(desired, batch, plan)
        return json_response(200, self.job_json(self._job_view(name, job.job_id)))

    def _submit_async(self, name: ApiName, request: Request) -> Response:
        headers = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in request.headers
            if key.lower() in _KEPT_HEADERS
        }
        content_type = (request.header(b"content-type") or b"application/octet-stream").decode("latin-1")
        submission = self._jobs.submit_async(
            name,
            body=request.body,
            content_type=content_type,
            query=request.query_string.decode("latin-1"),
            headers=headers,
        )
        self._submitted.pop(name, asyncio.Event()).set()  # wake the consumers waiting for work
        return json_response(200, {"id": submission.request_id})

    def _async_summary(self, name: ApiName) -> dict[str, Any]:
        return {
            "api_name": name,
            "kind": str(ApiKind.ASYNC),
            "in_queue": self._jobs.async_demand().get(name, 0),
        }

    # ---- control API routes ----

    def routes(self) -> list[Route]:
        job, api = r"/v1/jobs/(?P<job_id>[^/]+)", r"/v1/async/(?P<name>[^/]+)"
        apis = r"/v1/apis/(?P<name>[^/]+)/jobs"
        return [
            ("GET", re.compile(job + "/spec"), self._job_spec),
            ("POST", re.compile(job + "/lease"), self._lease),
            ("POST", re.compile(job + "/extend"), self._extend),
            ("POST", re.compile(job + "/ack"), self._ack),
            ("POST", re.compile(job + "/fail"), self._fail),
            ("POST", re.compile(api + "/lease"), self._async_lease),
            ("POST", re.compile(api + "/extend"), self._async_extend),
            ("POST", re.compile(api + "/ack"), self._async_ack),
            ("POST", re.compile(api + "/fail"), self._async_fail),
            ("GET", re.compile(apis), self._list_jobs),
            ("GET", re.compile(apis + r"/(?P<job_id>[^/]+)"), self._get_job),
            ("DELETE", re.compile(apis + r"/(?P<job_id>[^/]+)"), self._stop_job),
        ]

    async def _job_spec(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(200, self._jobs.job_spec(JobId(params["job_id"])))

    async def _lease(self, request: Request, params: dict[str, str]) -> Response:
        worker = _field(request, "worker_id")
        reply = self._jobs.lease(JobId(params["job_id"]), worker=worker)
        if reply.kind is LeaseKind.WAIT:
            return json_response(200, {"type": "wait", "retry_after": 0.25})
        if reply.kind is LeaseKind.STOP or reply.lease is None:
            return json_response(200, {"type": "stop", "reason": reply.reason})
        lease = reply.lease
        body: dict[str, Any] = {
            "type": str(reply.kind),
            "token": lease.token,
            "receive_count": lease.receive_count,
            "visibility_seconds": self._jobs.visibility_seconds,
        }
        if reply.kind is LeaseKind.BATCH:
            body["batch_id"] = lease.item_id
            body["items"] = orjson.Fragment(lease.payload)
        elif reply.kind is LeaseKind.TASK:
            body["config"] = orjson.Fragment(lease.payload)
        return json_response(200, body)

    async def _extend(self, request: Request, params: dict[str, str]) -> Response:
        return _settled(self._jobs.extend(JobId(params["job_id"]), _field(request, "token")))

    async def _ack(self, request: Request, params: dict[str, str]) -> Response:
        return _settled(self._jobs.ack(JobId(params["job_id"]), _field(request, "token")))

    async def _fail(self, request: Request, params: dict[str, str]) -> Response:
        body = _json(request)
        outcome = self._jobs.fail(JobId(params["job_id"]), _text(body, "token"), error=_text(body, "error"))
        return json_response(200, {"outcome": str(outcome)})

    async def _async_lease(self, request: Request, params: dict[str, str]) -> Response:
        """Answers at once with a lease; with none, waits up to `wait_seconds` (long poll, at most
        MAX_LONG_POLL_SECONDS) for a submission before answering 204."""
        name = ApiName(params["name"])
        body = _json(request)
        worker = _text(body, "worker_id")
        wait = body.get("wait_seconds", 0)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or wait < 0:
            raise UserInputError("'wait_seconds' must be a number >= 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(float(wait), MAX_LONG_POLL_SECONDS)
        while True:
            lease = self._jobs.async_lease(name, worker=worker)
            if lease is not None:
                return _async_lease_response(lease, visibility=self._jobs.visibility_seconds)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Response(status=204, body=b"", content_type=None)
            submitted = self._submitted.setdefault(name, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(submitted.wait(), remaining)

    async def _async_extend(self, request: Request, params: dict[str, str]) -> Response:
        return _settled(self._jobs.async_extend(ApiName(params["name"]), _field(request, "token")))

    async def _async_ack(self, request: Request, params: dict[str, str]) -> Response:
        token = (request.header(LEASE_TOKEN_HEADER) or b"").decode("latin-1")
        if not token:
            raise UserInputError(f"ack: the {LEASE_TOKEN_HEADER.decode()} header is required")
        result_type = (request.header(b"content-type") or b"application/octet-stream").decode("latin-1")
        acked = self._jobs.async_ack(
            ApiName(params["name"]), token, result=request.body, result_type=result_type
        )
        return _settled(acked)

    async def _async_fail(self, request: Request, params: dict[str, str]) -> Response:
        body = _json(request)
        outcome = self._jobs.async_fail(
            ApiName(params["name"]), _text(body, "token"), error=_text(body, "error")
        )
        return json_response(200, {"outcome": str(outcome)})

    async def _list_jobs(self, request: Request, params: dict[str, str]) -> Response:
        name = ApiName(params["name"])
        desired = self._controller.desired_api(name)
        require_kind(desired, ApiKind.BATCH, ApiKind.TASK)
        jobs = [job_summary(self._job_view(name, job.job_id)) for job in self._jobs.jobs(name)]
        return json_response(200, {"api_name": name, "kind": str(desired.spec.kind), "jobs": jobs})

    async def _get_job(self, request: Request, params: dict[str, str]) -> Response:
        view = self._job_view(ApiName(params["name"]), JobId(params["job_id"]))
        return json_response(200, self.job_json(view))

    async def _stop_job(self, request: Request, params: dict[str, str]) -> Response:
        name, job_id = ApiName(params["name"]), JobId(params["job_id"])
        self._jobs.job(job_id, name)
        self._jobs.stop(job_id)
        return json_response(200, {"message": f"stopped job {job_id}"})

    # ---- shapes ----

    def _job_view(self, name: ApiName, job_id: JobId) -> JobView:
        return self._jobs.view(self._jobs.job(job_id, name), self._controller.workers())

    def job_json(self, view: JobView) -> dict[str, Any]:
        shown = job_summary(view)
        job = view.job
        shown.update(
            {
                "config": dict(job.config),
                "timeout": job.timeout_seconds,
                "max_receive_count": job.max_receive_count,
                "submission": dict(job.submission),
                "failed_batches": [
                    {"batch_id": item.item_id, "attempts": item.receive_count, "error": item.error}
                    for item in view.failed_batches
                ],
                "on_job_complete": None
                if view.completion is None
                else {"state": str(view.completion.state), "error": view.completion.error},
                "endpoint": f"{self._gateway_url}/{job.api_name}/{job.job_id}",
            }
        )
        return shown


def job_summary(view: JobView) -> dict[str, Any]:
    """A job's status in Cortex's job_status shape (the fields `modelport get API` tabulates)."""
    job, depth, workers = view.job, view.batches, view.workers
    return {
        "job_id": job.job_id,
        "api_name": job.api_name,
        "kind": str(job.kind),
        "status": str(job.status),
        "reason": job.reason,
        "waiting": view.waiting,
        "workers": job.workers,
        "total_batch_count": job.total_batches,
        "batches_in_queue": depth.queued,
        "batch_metrics": {
            "succeeded": depth.succeeded,
            "failed": depth.dead,
            "in_progress": depth.in_progress,
            "avg_time_per_batch": depth.avg_seconds,
        },
        "worker_counts": {
            "pending": workers.pending,
            "initializing": workers.initializing,
            "running": workers.running,
            "succeeded": workers.succeeded,
            "failed": workers.failed,
            "stalled": 0,
        },
        "created_time": job.created_at,
        "start_time": job.started_at,
        "end_time": job.ended_at,
    }


def async_json(item: ItemView) -> dict[str, Any]:
    """`GET <endpoint>/<id>` of an AsyncAPI: Cortex's {id, status, result, timestamp}."""
    shown: dict[str, Any] = {
        "id": item.item_id,
        "status": str(_ASYNC_STATUS[item.state]),
        "timestamp": item.updated_at,
    }
    if item.state is ItemState.SUCCEEDED and item.result is not None:
        result_type = (item.result_type or "").split(";")[0].strip()
        if result_type == "application/json":
            shown["result"] = orjson.Fragment(item.result)
        elif result_type.startswith("text/"):
            shown["result"] = item.result.decode("utf-8", errors="replace")
        else:
            shown["result"] = base64.b64encode(item.result).decode("ascii")
            shown["result_encoding"] = "base64"
    if item.state is ItemState.DEAD:
        shown["error"] = item.error
    return shown


def _async_lease_response(lease: Lease, *, visibility: float) -> Response:
    query = lease.metadata.get("query") if isinstance(lease.metadata.get("query"), str) else ""
    headers = [
        (REQUEST_ID_HEADER, lease.item_id.encode("latin-1")),
        (LEASE_TOKEN_HEADER, lease.token.encode("latin-1")),
        (QUERY_HEADER, str(query).encode("latin-1")),
        (VISIBILITY_HEADER, f"{visibility:g}".encode()),
    ]
    kept = lease.metadata.get("headers")
    if isinstance(kept, dict):
        headers.extend(
            (f"x-modelport-header-{key}".encode("latin-1"), str(value).encode("latin-1"))
            for key, value in kept.items()
            if key.lower() != "content-type"
        )
    return Response(
        status=200,
        body=lease.payload,
        content_type=lease.content_type.encode("latin-1"),
        headers=tuple(headers),
    )


def _settled(ok: bool) -> Response:
    if ok:
        return json_response(200, {"ok": True})
    return error_response(409, "the lease was lost (it expired and may belong to another worker now)")


def _json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise UserInputError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UserInputError("the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UserInputError(f"'{key}' is required (a non-empty string)")
    return value


def _field(request: Request, key: str) -> str:
    return _text(_json(request), key)


def _flag(request: Request, name: str) -> bool:
    values = parse_qs(request.query_string.decode("latin-1")).get(name, [])
    return any(value.lower() in ("true", "1", "yes") for value in values)


def _not_allowed(request: Request, hint: str) -> Response:
    return error_response(405, f"method {request.method} is not allowed on {request.path}: {hint}")
