"""The gateway's route table and publish() semantics, through Gateway.handle (the HttpServer handler) and
Gateway.traffic(), with no sockets: requests that never reach a replica are answered in-process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from modelport.clock import FakeClock
from modelport.gateway.app import Gateway
from modelport.gateway.routing import RouteTable
from modelport.http.server import Request, Response
from modelport.types import Address, ApiName, ApiRoute, ApiStatus, ReplicaId, ReplicaTarget, Revision


def api(name: str, *replicas: str, status: ApiStatus = ApiStatus.LIVE, reason: str | None = None) -> ApiRoute:
    targets = tuple(
        ReplicaTarget(ReplicaId(r), Address("127.0.0.1", 40000 + i), Revision("rev1"))
        for i, r in enumerate(replicas)
    )
    return ApiRoute(
        api_name=ApiName(name),
        endpoint=f"/{name}",
        replicas=targets,
        max_replica_concurrency=4,
        status=status,
        unavailable_reason=reason,
    )


def table(*routes: ApiRoute) -> dict[ApiName, ApiRoute]:
    return {route.api_name: route for route in routes}


def handle(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Response:
    request = Request(method=method, path=path, query_string=b"", headers=headers or [], body=body)
    return asyncio.run(gateway.handle(request))


def sent(response: Response) -> Response:
    """What HttpServer does once the response is on the transport."""
    if response.after_send is not None:
        response.after_send()
    return response


def body(response: Response) -> Any:
    return json.loads(response.body)


def test_get_on_an_endpoint_summarises_the_api_with_or_without_a_trailing_slash() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1", "r2"), api("text")))
    for path in ("/iris", "/iris/"):
        response = handle(gateway, "GET", path)
        assert response.status == 200
        assert body(response) == {
            "api": "iris",
            "status": "live",
            "ready_replicas": 2,
            "held": 0,
            "endpoint": "/iris",
            "message": "send a POST request with your payload to predict",
        }


def test_unknown_paths_list_the_deployed_endpoints_and_wrong_methods_get_405() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1"), api("bert", "r2")))
    missing = handle(gateway, "POST", "/x")
    assert (missing.status, body(missing)) == (
        404,
        {"error": "no API is deployed at /x", "apis": ["/bert", "/iris"]},
    )
    wrong = handle(gateway, "PUT", "/iris")
    assert wrong.status == 405
    assert (b"allow", b"GET, HEAD, POST, OPTIONS") in wrong.headers
    assert body(wrong)["error"].startswith("method PUT is not allowed on /iris")
    for own in ("/healthz", "/metrics"):
        refused = handle(gateway, "POST", own)
        assert (refused.status, list(refused.headers)) == (405, [(b"allow", b"GET, HEAD")])
    assert (handle(gateway, "GET", "/healthz").status, body(handle(gateway, "GET", "/healthz"))) == (
        200,
        {"status": "ok"},
    )


def test_head_answers_like_get_on_endpoints_and_the_gateways_own_paths() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1")))
    for path in ("/iris", "/iris/", "/metrics", "/healthz"):
        get, head = handle(gateway, "GET", path), handle(gateway, "HEAD", path)
        # The same response: HttpServer leaves the body out for HEAD, keeping its content-length.
        assert (head.status, head.content_type, head.headers) == (200, get.content_type, get.headers)
        assert head.body == get.body
    assert handle(gateway, "HEAD", "/nope").status == 404


def test_options_on_an_endpoint_is_a_cors_preflight() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1")))
    asked = [(b"origin", b"https://app.example"), (b"access-control-request-headers", b"content-type")]
    response = handle(gateway, "OPTIONS", "/iris", headers=asked)
    assert response.status == 204
    assert dict(response.headers) == {
        b"access-control-allow-origin": b"*",
        b"access-control-allow-methods": b"POST, GET, OPTIONS",
        b"access-control-allow-headers": b"content-type",
        b"access-control-max-age": b"600",
        b"allow": b"GET, HEAD, POST, OPTIONS",
    }
    assert gateway.traffic()[ApiName("iris")].requests == 0  # not a prediction


def test_every_answer_to_a_request_with_origin_allows_any_origin_and_only_those() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1"), api("down", status=ApiStatus.UPDATING)))
    origin = [(b"origin", b"https://app.example")]
    allow = (b"access-control-allow-origin", b"*")
    for method, path in (("GET", "/iris"), ("GET", "/metrics"), ("POST", "/nope"), ("PUT", "/iris")):
        assert allow in handle(gateway, method, path, headers=origin).headers
        assert allow not in handle(gateway, method, path).headers
    unavailable = handle(gateway, "POST", "/down", headers=origin)
    assert unavailable.status == 503
    assert list(unavailable.headers) == [(b"retry-after", b"1"), allow]


def test_retry_after_only_while_waiting_can_bring_a_replica() -> None:
    gateway = Gateway(clock=FakeClock())
    statuses = {
        "updating": ApiStatus.UPDATING,
        "broken": ApiStatus.ERROR,
        "big": ApiStatus.COMPUTE_UNAVAILABLE,
    }
    gateway.publish(table(*(api(name, status=status) for name, status in statuses.items())))
    waits = {name: dict(handle(gateway, "POST", f"/{name}").headers).get(b"retry-after") for name in statuses}
    assert waits == {"updating": b"1", "broken": None, "big": None}
    assert body(handle(gateway, "POST", "/big")) == {
        "error": "api big is not ready (status compute unavailable)",
        "reason": None,
    }


def test_an_api_without_replicas_answers_503_not_ready_with_the_reason() -> None:
    clock = FakeClock()
    gateway = Gateway(clock=clock)
    gateway.publish(table(api("iris", status=ApiStatus.ERROR, reason="predictor __init__ failed")))
    response = handle(gateway, "POST", "/iris", b"{}")
    assert response.status == 503
    assert not any(name == b"retry-after" for name, _ in response.headers)  # waiting will not fix it
    assert body(response) == {
        "error": "api iris is not ready (status error)",
        "reason": "predictor __init__ failed",
    }
    clock.advance(0.25)  # between the handler's return and the transport write
    sent(response)
    traffic = gateway.traffic()[ApiName("iris")]
    assert (traffic.status_5xx, traffic.requests, traffic.latency_seconds_sum) == (1, 1, 0.25)


def test_republishing_keeps_counters_dropping_an_api_discards_them() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris"), api("bert", "b1")))
    sent(handle(gateway, "POST", "/iris"))
    assert set(gateway.traffic()) == {"iris", "bert"}
    assert gateway.traffic()[ApiName("bert")].in_flight == {"b1": 0}

    gateway.publish(table(api("iris", "r1", "r2"), api("bert", "b2")))
    traffic = gateway.traffic()
    assert traffic[ApiName("iris")].status_5xx == 1  # same API, new replicas: counters carry over
    assert traffic[ApiName("iris")].in_flight == {"r1": 0, "r2": 0}
    assert traffic[ApiName("bert")].in_flight == {"b2": 0}  # an idle replica that left is forgotten

    gateway.publish(table(api("bert", "b2")))
    assert set(gateway.traffic()) == {"bert"}
    assert handle(gateway, "GET", "/iris").status == 404

    gateway.publish(table(api("iris"), api("bert", "b2")))
    assert gateway.traffic()[ApiName("iris")].requests == 0  # back as a new API: fresh counters


def test_metrics_list_every_routed_api() -> None:
    gateway = Gateway(clock=FakeClock())
    gateway.publish(table(api("iris", "r1", "r2"), api("bert")))
    sent(handle(gateway, "POST", "/bert"))
    response = handle(gateway, "GET", "/metrics")
    assert response.content_type is not None and response.content_type.startswith(
        b"text/plain; version=0.0.4"
    )
    text = response.body.decode()
    assert 'modelport_requests_total{api="bert",code="5XX"} 1\n' in text
    assert 'modelport_ready_replicas{api="iris"} 2\n' in text
    assert 'modelport_ready_replicas{api="bert"} 0\n' in text


def test_route_table_tracks_outstanding_requests_of_replicas_that_left() -> None:
    routes = RouteTable()
    routes.publish(table(api("iris", "r1", "r2")))
    state = routes.lookup("/iris")
    assert state is not None
    first = state.pick()
    assert first is not None
    state.acquire(first.replica_id)
    assert state.traffic().in_flight == {first.replica_id: 1, ({"r1", "r2"} - {first.replica_id}).pop(): 0}

    # The busy replica leaves the route: no new requests for it, its count stays until it finishes.
    remaining = "r2" if first.replica_id == "r1" else "r1"
    routes.publish(table(api("iris", remaining)))
    assert routes.lookup("/iris/") is state
    picks = {target.replica_id for target in (state.pick(), state.pick(), state.pick()) if target}
    assert picks == {remaining}
    assert state.traffic().in_flight == {first.replica_id: 1, remaining: 0}
    state.release(first.replica_id)
    assert state.traffic().in_flight == {remaining: 0}


def test_a_replica_marked_down_returns_to_rotation_when_published_again() -> None:
    routes = RouteTable()
    routes.publish(table(api("iris", "r1", "r2")))
    state = routes.lookup("/iris")
    assert state is not None
    state.mark_down(ReplicaId("r1"))
    assert {t.replica_id for t in (state.pick(), state.pick(), state.pick()) if t} == {"r2"}
    routes.publish(table(api("iris", "r1", "r2")))
    assert {t.replica_id for t in (state.pick(), state.pick()) if t} == {"r1", "r2"}
    assert routes.addresses() == {Address("127.0.0.1", 40000), Address("127.0.0.1", 40001)}
