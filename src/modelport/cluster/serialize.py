"""The control API's JSON shapes for APIs and replicas (what `modelport get -o json` prints).

One place, so the CLI's tables, the Python client and `-o json` agree on field names.
"""

from __future__ import annotations

from typing import Any

from modelport.controller.views import ApiView, ReplicaView


def api_summary(view: ApiView, *, gateway_url: str) -> dict[str, Any]:
    traffic = view.traffic
    avg = traffic.avg_latency_seconds if traffic is not None else None
    return {
        "name": view.name,
        "kind": str(view.spec.kind),
        "status": str(view.status),
        "reason": view.reason,
        "revision": view.revision,
        "requested": view.requested,
        "up_to_date": view.up_to_date,
        "stale": view.stale,
        "last_updated": view.last_updated,
        "endpoint": gateway_url + view.spec.networking.endpoint,
        "metrics": {
            "requests": traffic.requests if traffic else 0,
            "2XX": traffic.status_2xx if traffic else 0,
            "4XX": traffic.status_4xx if traffic else 0,
            "5XX": traffic.status_5xx if traffic else 0,
            "avg_latency_seconds": avg,
            "in_flight": sum(traffic.in_flight.values()) if traffic else 0,
            "held": traffic.held if traffic else 0,
        },
    }


def replica_json(replica: ReplicaView) -> dict[str, Any]:
    return {
        "replica_id": replica.replica_id,
        "phase": str(replica.phase),
        "revision": replica.revision,
        "generation": replica.generation,
        "up_to_date": replica.up_to_date,
        "in_flight": replica.in_flight,
        "restarts": replica.restarts,
        "started_at": replica.started_at,
        "ready_at": replica.ready_at,
        "pid": replica.pid,
        "log_path": str(replica.log_path) if replica.log_path else None,
    }


def api_detail(view: ApiView, *, gateway_url: str) -> dict[str, Any]:
    detail = api_summary(view, gateway_url=gateway_url)
    detail["replicas"] = [replica_json(r) for r in view.replicas]
    detail["autoscaling_events"] = [
        {
            "at": event.at,
            "from_replicas": event.from_replicas,
            "to_replicas": event.to_replicas,
            "avg_in_flight": event.avg_in_flight,
            "target": event.target,
        }
        for event in view.events
    ]
    detail["spec"] = view.spec.to_display_dict()
    endpoint = detail["endpoint"]
    detail["example_curl"] = f'curl {endpoint} -X POST -H "Content-Type: application/json" -d @sample.json'
    return detail
