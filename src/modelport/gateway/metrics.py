"""Per-API request counters and their Prometheus text exposition (`GET /metrics` on the gateway).

`ApiCounters` is updated by gateway.app after each response is handed to the transport; `render_metrics`
turns snapshots into the text format, version 0.0.4.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelport.types import ApiTraffic

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class ApiCounters:
    """What the clients of one API received, by status class, and how long they waited."""

    __slots__ = ("latency_seconds_sum", "status_2xx", "status_4xx", "status_5xx")

    def __init__(self) -> None:
        self.status_2xx = 0
        self.status_4xx = 0
        self.status_5xx = 0
        self.latency_seconds_sum = 0.0

    def record(self, status: int, seconds: float) -> None:
        # ApiTraffic has three classes only (as Cortex showed them); the rare 1xx/3xx final answers are
        # successes from the client's point of view.
        if status >= 500:
            self.status_5xx += 1
        elif status >= 400:
            self.status_4xx += 1
        else:
            self.status_2xx += 1
        self.latency_seconds_sum += seconds


@dataclass(frozen=True, slots=True)
class MetricsSample:
    """One API as /metrics shows it."""

    traffic: ApiTraffic
    ready_replicas: int


def render_metrics(samples: Iterable[MetricsSample]) -> bytes:
    """The Prometheus text exposition of every API, grouped by metric family as the format requires."""
    rows = sorted(samples, key=lambda sample: sample.traffic.api_name)
    lines = [
        "# HELP modelport_requests_total Prediction requests answered, by API and status class.",
        "# TYPE modelport_requests_total counter",
    ]
    for sample in rows:
        api, traffic = _label(sample.traffic.api_name), sample.traffic
        lines.append(f'modelport_requests_total{{api="{api}",code="2XX"}} {traffic.status_2xx}')
        lines.append(f'modelport_requests_total{{api="{api}",code="4XX"}} {traffic.status_4xx}')
        lines.append(f'modelport_requests_total{{api="{api}",code="5XX"}} {traffic.status_5xx}')
    lines += [
        "# HELP modelport_request_duration_seconds Time from request receipt to response sent, by API.",
        "# TYPE modelport_request_duration_seconds summary",
    ]
    for sample in rows:
        api, traffic = _label(sample.traffic.api_name), sample.traffic
        lines.append(f'modelport_request_duration_seconds_sum{{api="{api}"}} {traffic.latency_seconds_sum!r}')
        lines.append(f'modelport_request_duration_seconds_count{{api="{api}"}} {traffic.requests}')
    lines += [
        "# HELP modelport_in_flight_requests Requests forwarded to a replica and not answered yet.",
        "# TYPE modelport_in_flight_requests gauge",
    ]
    for sample in rows:
        in_flight = sum(sample.traffic.in_flight.values())
        lines.append(f'modelport_in_flight_requests{{api="{_label(sample.traffic.api_name)}"}} {in_flight}')
    lines += [
        "# HELP modelport_held_requests Requests waiting in the gateway for a replica (scale from zero).",
        "# TYPE modelport_held_requests gauge",
    ]
    for sample in rows:
        lines.append(
            f'modelport_held_requests{{api="{_label(sample.traffic.api_name)}"}} {sample.traffic.held}'
        )
    lines += [
        "# HELP modelport_ready_replicas Replicas the gateway routes requests to.",
        "# TYPE modelport_ready_replicas gauge",
    ]
    for sample in rows:
        lines.append(
            f'modelport_ready_replicas{{api="{_label(sample.traffic.api_name)}"}} {sample.ready_replicas}'
        )
    return ("\n".join(lines) + "\n").encode()


def _label(value: str) -> str:
    # The exposition format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
