"""Request counters and the Prometheus text exposition (gateway.metrics)."""

from __future__ import annotations

from modelport.gateway.metrics import ApiCounters, MetricsSample, render_metrics
from modelport.types import ApiName, ApiTraffic, ReplicaId


def test_counters_group_statuses_into_the_three_classes_and_sum_latency() -> None:
    counters = ApiCounters()
    for status, seconds in ((200, 0.5), (204, 0.25), (302, 0.0), (404, 0.125), (429, 0.0), (503, 1.0)):
        counters.record(status, seconds)
    assert (counters.status_2xx, counters.status_4xx, counters.status_5xx) == (3, 2, 1)
    assert counters.latency_seconds_sum == 1.875


def test_renders_every_family_once_with_apis_sorted_and_labels_escaped() -> None:
    iris = ApiTraffic(
        api_name=ApiName("iris"),
        status_2xx=7,
        status_4xx=2,
        status_5xx=1,
        latency_seconds_sum=1.5,
        in_flight={ReplicaId("r1"): 2, ReplicaId("r2"): 1},
    )
    odd = ApiTraffic(api_name=ApiName('a"b\\c'), held=3)
    text = render_metrics(
        [MetricsSample(traffic=iris, ready_replicas=2), MetricsSample(traffic=odd, ready_replicas=0)]
    ).decode()
    assert text == (
        "# HELP modelport_requests_total Prediction requests answered, by API and status class.\n"
        "# TYPE modelport_requests_total counter\n"
        'modelport_requests_total{api="a\\"b\\\\c",code="2XX"} 0\n'
        'modelport_requests_total{api="a\\"b\\\\c",code="4XX"} 0\n'
        'modelport_requests_total{api="a\\"b\\\\c",code="5XX"} 0\n'
        'modelport_requests_total{api="iris",code="2XX"} 7\n'
        'modelport_requests_total{api="iris",code="4XX"} 2\n'
        'modelport_requests_total{api="iris",code="5XX"} 1\n'
        "# HELP modelport_request_duration_seconds Time from request receipt to response sent, by API.\n"
        "# TYPE modelport_request_duration_seconds summary\n"
        'modelport_request_duration_seconds_sum{api="a\\"b\\\\c"} 0.0\n'
        'modelport_request_duration_seconds_count{api="a\\"b\\\\c"} 0\n'
        'modelport_request_duration_seconds_sum{api="iris"} 1.5\n'
        'modelport_request_duration_seconds_count{api="iris"} 10\n'
        "# HELP modelport_in_flight_requests Requests forwarded to a replica and not answered yet.\n"
        "# TYPE modelport_in_flight_requests gauge\n"
        'modelport_in_flight_requests{api="a\\"b\\\\c"} 0\n'
        'modelport_in_flight_requests{api="iris"} 3\n'
        "# HELP modelport_held_requests Requests waiting in the gateway for a replica (scale from zero).\n"
        "# TYPE modelport_held_requests gauge\n"
        'modelport_held_requests{api="a\\"b\\\\c"} 3\n'
        'modelport_held_requests{api="iris"} 0\n'
        "# HELP modelport_ready_replicas Replicas the gateway routes requests to.\n"
        "# TYPE modelport_ready_replicas gauge\n"
        'modelport_ready_replicas{api="a\\"b\\\\c"} 0\n'
        'modelport_ready_replicas{api="iris"} 2\n'
    )


def test_no_apis_still_declares_the_families() -> None:
    text = render_metrics([]).decode()
    assert text.count("# TYPE ") == 5
    assert "{" not in text
