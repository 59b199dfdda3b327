"""The control API: JSON over HTTP on loopback, the only way the CLI and `modelport.Client` reach the daemon.

Thin adapter: it parses requests, calls the controller and maps modelport errors to HTTP statuses (the only
place that mapping lives). Routes are declared in one table at the bottom of `ControlApi.__init__`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from modelport.cluster import serialize
from modelport.cluster.batch_metrics import read_batch_sizes
from modelport.cluster.jobs_api import JobsApi
from modelport.cluster.requirements import requirements_warning
from modelport.cluster.routes import Route, dispatch
from modelport.cluster.snapshot import prepare
from modelport.controller.loop import Controller
from modelport.controller.ports import DesiredApi
from modelport.errors import NotFoundError, UserInputError
from modelport.http.server import Request, Response, json_response
from modelport.settings import Settings
from modelport.spec.load import load_project
from modelport.types import ApiName, JobId, ReplicaPhase
from modelport.version import __version__

log = logging.getLogger("modelport.control")

_FIRST_READ_BYTES = 64 * 1024  # how much of each existing log file a new `logs` call starts with
_MAX_READ_BYTES = 512 * 1024  # per file and call, so one chatty replica cannot make a call huge


class ControlApi:
    def __init__(
        self,
        *,
        controller: Controller,
        settings: Settings,
        gateway_url: str,
        request_shutdown: Callable[[], None],
        clock_wall: Callable[[], float],
        jobs: JobsApi | None = None,
    ) -> None:
        self._controller = controller
        self._settings = settings
        self._gateway_url = gateway_url
        self._request_shutdown = request_shutdown
        self._wall = clock_wall
        self._deploy_lock = asyncio.Lock()
        self._routes: list[Route] = [
            ("GET", re.compile(r"/v1/health"), self._health),
            ("POST", re.compile(r"/v1/deploy"), self._deploy),
            ("GET", re.compile(r"/v1/apis"), self._list_apis),
            ("GET", re.compile(r"/v1/apis/(?P<name>[^/]+)"), self._get_api),
            ("DELETE", re.compile(r"/v1/apis/(?P<name>[^/]+)"), self._delete_api),
            ("POST", re.compile(r"/v1/apis/(?P<name>[^/]+)/refresh"), self._refresh_api),
            ("POST", re.compile(r"/v1/apis/(?P<name>[^/]+)/logs"), self._read_logs),
            ("POST", re.compile(r"/v1/apis/(?P<name>[^/]+)/jobs/(?P<job_id>[^/]+)/logs"), self._read_logs),
            ("POST", re.compile(r"/v1/cluster/shutdown"), self._shutdown),
        ]
        if jobs is not None:
            self._routes.extend(jobs.routes())

    async def handle(self, request: Request) -> Response:
        return await dispatch(self._routes, request)

    async def _health(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(
            200,
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "home": str(self._settings.home),
                "gateway_url": self._gateway_url,
                "control_url": self._settings.control_url,
                "apis": len(self._controller.apis()),
            },
        )

    async def _deploy(self, request: Request, params: dict[str, str]) -> Response:
        body = _json_body(request)
        raw_path = body.get("path")
        if not isinstance(raw_path, str) or not raw_path:
            raise UserInputError("deploy: the body needs 'path': the project directory or spec file")
        path = Path(raw_path)
        if not path.is_absolute():
            raise UserInputError(f"deploy: 'path' must be absolute, got {raw_path!r}")
        async with self._deploy_lock:
            # Reading and copying a project touches the disk: off the event loop. The controller itself
            # is only ever called from the loop's thread.
            prepared, warning = await asyncio.to_thread(self._prepare, path)
            results = []
            for desired in prepared:
                action = self._controller.deploy(desired)
                results.append({"api": desired.name, "kind": str(desired.spec.kind), "action": action})
        return json_response(200, {"results": results, "warnings": [warning] if warning else []})

    def _prepare(self, path: Path) -> tuple[list[DesiredApi], str | None]:
        project = load_project(path)
        prepared = []
        for spec in project.apis:
            snapshot = prepare(
                project, spec, snapshots_dir=self._settings.snapshots_dir, specs_dir=self._settings.specs_dir
            )
            prepared.append(
                DesiredApi(
                    spec=spec,
                    revision=project.revision(spec.name),
                    project_dir=snapshot.project_dir,
                    spec_path=snapshot.spec_path,
                    deployed_at=self._wall(),
                )
            )
        return prepared, requirements_warning(project.root)

    async def _list_apis(self, request: Request, params: dict[str, str]) -> Response:
        return json_response(
            200,
            {
                "apis": [
                    serialize.api_summary(view, gateway_url=self._gateway_url)
                    for view in self._controller.apis()
                ]
            },
        )

    async def _get_api(self, request: Request, params: dict[str, str]) -> Response:
        view = self._controller.api(ApiName(params["name"]))
        detail = serialize.api_detail(view, gateway_url=self._gateway_url)
        if view.spec.predictor.server_side_batching is not None:
            ready = [r.address for r in view.replicas if r.phase is ReplicaPhase.READY and r.address]
            detail["batching"] = await read_batch_sizes(ready)
        return json_response(200, detail)

    async def _delete_api(self, request: Request, params: dict[str, str]) -> Response:
        name = ApiName(params["name"])
        if not self._controller.delete(name):
            raise NotFoundError(f"api {name} is not deployed")
        return json_response(200, {"message": f"deleted {name}"})

    async def _refresh_api(self, request: Request, params: dict[str, str]) -> Response:
        desired = self._controller.refresh(ApiName(params["name"]))
        return json_response(200, {"message": f"updating {desired.name}", "generation": desired.generation})

    async def _read_logs(self, request: Request, params: dict[str, str]) -> Response:
        name = ApiName(params["name"])
        job_id = params.get("job_id")
        paths = self._controller.log_paths(name, JobId(job_id) if job_id else None)
        cursor = _json_body(request).get("cursor") or {}
        if not isinstance(cursor, dict):
            raise UserInputError("logs: 'cursor' must be an object of {path: offset}")
        lines, new_cursor = await asyncio.to_thread(_read_new_lines, paths, cursor)
        return json_response(200, {"lines": lines, "cursor": new_cursor})

    async def _shutdown(self, request: Request, params: dict[str, str]) -> Response:
        self._request_shutdown()
        return json_response(202, {"message": "the cluster is stopping"})


def _json_body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        raise UserInputError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise UserInputError("the request body must be a JSON object")
    return body


def _read_new_lines(paths: list[Path], cursor: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Complete lines appended to each log file since `cursor`; a file new to the cursor starts at the first
    line boundary within its last 64 KiB. A line longer than one read window is returned in pieces rather
    than blocking the stream."""
    lines: list[dict[str, str]] = []
    new_cursor: dict[str, int] = {}
    for path in paths:
        key = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        offset = cursor.get(key)
        fresh = not isinstance(offset, int) or offset < 0 or offset > size
        if fresh:
            offset = max(0, size - _FIRST_READ_BYTES)
        assert isinstance(offset, int)
        with path.open("rb") as handle:
            if fresh and offset > 0:
                handle.seek(offset - 1)
                if handle.read(1) != b"\n":
                    handle.readline()  # skip the tail of a line that started before the window
                    offset = handle.tell()
            handle.seek(offset)
            chunk = handle.read(min(size - offset, _MAX_READ_BYTES))
        end = chunk.rfind(b"\n")
        if end >= 0:
            complete = chunk[: end + 1]
        elif len(chunk) == _MAX_READ_BYTES:
            complete = chunk  # one enormous line: hand it out in pieces
        else:
            complete = b""
        replica = path.stem
        for raw in complete.splitlines():
            lines.append({"replica": replica, "line": raw.decode("utf-8", errors="replace")})
        new_cursor[key] = offset + len(complete)
    return lines, new_cursor
