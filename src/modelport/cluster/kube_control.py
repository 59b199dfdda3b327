"""The in-cluster control API: health and readiness for the controller pod's probes, the APIs as this
controller sees them, and the worker protocol of batch jobs, tasks and async APIs (docs/jobs.md).

Served by cluster/kube_daemon.py on the control port of every interface (job and async worker pods reach
it through the controller's Service). Deploying, deleting and logs go straight to the Kubernetes API from
the CLI, so this API has no such routes. Thin adapter: errors map to statuses in cluster/http_errors.py.
"""

from __future__ import annotations

import re
from typing import Any

from modelport.cluster.jobs_api import JobsApi
from modelport.cluster.routes import Route, RouteHandler, dispatch
from modelport.controller.kube_loop import KubeController
from modelport.controller.ports import TrafficSource
from modelport.http.server import Request, Response, error_response, json_response
from modelport.version import __version__

_RETRY_AFTER = ((b"retry-after", b"2"),)


class KubeControlApi:
    def __init__(
        self,
        *,
        controller: KubeController,
        traffic: TrafficSource,
        namespace: str,
        gateway_url: str,
        control_url: str,
        jobs: JobsApi | None = None,
    ) -> None:
        self._controller = controller
        self._traffic = traffic
        self._namespace = namespace
        self._gateway_url = gateway_url
        self._control_url = control_url
        self._routes: list[Route] = [
            ("GET", re.compile(r"/v1/health"), self._health),
            ("GET", re.compile(r"/v1/ready"), self._ready),
            ("GET", re.compile(r"/v1/apis"), self._apis),
        ]
        if jobs is not None:
            # The job queue is the leader's: a standby answers 503 (its Service sends it nothing anyway).
            self._routes.extend((m, p, self._leader_only(h)) for m, p, h in jobs.routes())

    async def handle(self, request: Request) -> Response:
        return await dispatch(self._routes, request)

    async def _health(self, request: Request, params: dict[str, str]) -> Response:
        """Liveness: the process answers, leading or standing by."""
        return json_response(200, self._state())

    async def _ready(self, request: Request, params: dict[str, str]) -> Response:
        """Readiness: only the leader serves predictions and workers."""
        if self._controller.is_leader:
            return json_response(200, self._state())
        return json_response(503, {**self._state(), "error": self._standby_reason()}, headers=_RETRY_AFTER)

    async def _apis(self, request: Request, params: dict[str, str]) -> Response:
        traffic = self._traffic.traffic()
        shown = []
        for api in self._controller.deployed_apis():
            counters = traffic.get(api.name)
            shown.append(
                {
                    "name": api.name,
                    "kind": api.kind.value,
                    "status": api.status.value,
                    "reason": api.reason,
                    "revision": None if api.desired is None else api.desired.revision,
                    "requested": api.requested,
                    "autoscaler_requested": self._controller.requested(api.name),
                    "metrics": None
                    if counters is None
                    else {
                        "2XX": counters.status_2xx,
                        "4XX": counters.status_4xx,
                        "5XX": counters.status_5xx,
                        "avg_latency_seconds": counters.avg_latency_seconds,
                        "in_flight": sum(counters.in_flight.values()),
                        "held": counters.held,
                    },
                }
            )
        return json_response(200, {"leader": self._controller.is_leader, "apis": shown})

    def _leader_only(self, handler: RouteHandler) -> RouteHandler:
        async def guarded(request: Request, params: dict[str, str]) -> Response:
            if not self._controller.is_leader:
                return error_response(503, self._standby_reason())
            return await handler(request, params)

        return guarded

    def _state(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "backend": "kubernetes",
            "namespace": self._namespace,
            "identity": self._controller.identity,
            "leader": self._controller.is_leader,
            "leader_identity": self._controller.leader_identity,
            "gateway_url": self._gateway_url,
            "control_url": self._control_url,
        }

    def _standby_reason(self) -> str:
        holder = self._controller.leader_identity
        leads = f"{holder} leads" if holder and holder != self._controller.identity else "no leader yet"
        return f"controller {self._controller.identity} stands by ({leads}); retry on the controller Service"
