"""modelport.Client against a real HttpServer on a free loopback port that answers canned control API replies.

Asserts the client's side of the contract: the request it sends, and how each error status becomes a
modelport error (the inverse of cluster.control_api's mapping).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from modelport.client import Client
from modelport.errors import (
    ClusterNotRunningError,
    ConflictError,
    ModelportError,
    NotFoundError,
    UnavailableError,
    UserInputError,
)
from modelport.http.server import HttpServer, Request, Response, json_response
from modelport.settings import Settings
from modelport.spec.load import SpecError, SpecProblem


@dataclass
class FakeControlApi:
    """Answers every request with `reply` and records what it was asked."""

    reply: Response = field(default_factory=lambda: json_response(200, {}))
    requests: list[Request] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        self.requests.append(request)
        return self.reply

    def answer(self, status: int, body: object) -> None:
        self.reply = json_response(status, body)


@dataclass
class Served:
    api: FakeControlApi
    client: Client
    port: int


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The fake control API on its own event loop in a thread, since the client blocks."""
    fake = FakeControlApi()
    server = HttpServer(fake.handle)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-control-api", daemon=True)
    thread.start()
    try:
        address = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=5)
        client = Client(Settings(home=tmp_path, control_port=address.port), timeout=5.0)
        yield Served(api=fake, client=client, port=address.port)
    finally:
        asyncio.run_coroutine_threadsafe(server.drain(1.0), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


# ---- requests ----------------------------------------------------------------------------------------


def test_deploy_sends_the_absolute_path_and_returns_the_results(served: Served, tmp_path: Path) -> None:
    results = [{"api": "iris", "kind": "RealtimeAPI", "action": "created"}]
    served.api.answer(200, {"results": results})
    assert served.client.deploy(tmp_path / "project") == results
    (request,) = served.api.requests
    assert (request.method, request.path) == ("POST", "/v1/deploy")
    assert orjson.loads(request.body) == {"path": str(tmp_path / "project")}


def test_a_relative_deploy_path_is_made_absolute(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    served.api.answer(200, {"results": []})
    monkeypatch.chdir(served.client.settings.home)
    served.client.deploy("examples/iris")
    body = orjson.loads(served.api.requests[0].body)
    assert body == {"path": str(served.client.settings.home / "examples" / "iris")}


def test_read_logs_sends_the_cursor_and_returns_lines_and_the_new_cursor(served: Served) -> None:
    served.api.answer(200, {"lines": [{"replica": "r1", "line": "hello"}], "cursor": {"/l/r1.log": 6}})
    lines, cursor = served.client.read_logs("iris", {"/l/r1.log": 0})
    assert lines == [{"replica": "r1", "line": "hello"}]
    assert cursor == {"/l/r1.log": 6}
    (request,) = served.api.requests
    assert (request.method, request.path) == ("POST", "/v1/apis/iris/logs")
    assert orjson.loads(request.body) == {"cursor": {"/l/r1.log": 0}}


@pytest.mark.parametrize(
    ("call", "method", "path"),
    [
        ("list_apis", "GET", "/v1/apis"),
        ("get_api", "GET", "/v1/apis/iris"),
        ("delete", "DELETE", "/v1/apis/iris"),
        ("refresh", "POST", "/v1/apis/iris/refresh"),
        ("shutdown", "POST", "/v1/cluster/shutdown"),
        ("health", "GET", "/v1/health"),
    ],
)
def test_each_call_uses_its_route(served: Served, call: str, method: str, path: str) -> None:
    served.api.answer(200, {"apis": []})
    args = ("iris",) if call in ("get_api", "delete", "refresh") else ()
    getattr(served.client, call)(*args)
    (request,) = served.api.requests
    assert (request.method, request.path) == (method, path)


def test_is_running_is_true_when_health_answers(served: Served) -> None:
    served.api.answer(200, {"status": "ok"})
    assert served.client.is_running()


# ---- error mapping -----------------------------------------------------------------------------------


def test_400_with_problems_is_a_spec_error_with_those_problems(served: Served) -> None:
    served.api.answer(
        400,
        {
            "error": "modelport.yaml: [0].autoscaling.max_replicas: must be >= min_replicas (2), got 1",
            "problems": [
                {
                    "file": "modelport.yaml",
                    "path": "[0].autoscaling.max_replicas",
                    "message": "must be >= min_replicas (2), got 1",
                },
                {"file": "modelport.yaml", "path": "[1].name", "message": "must be a DNS-1035 label"},
            ],
        },
    )
    with pytest.raises(SpecError) as caught:
        served.client.deploy("/project")
    assert isinstance(caught.value, UserInputError)
    assert tuple(caught.value.problems) == (
        SpecProblem("modelport.yaml", "[0].autoscaling.max_replicas", "must be >= min_replicas (2), got 1"),
        SpecProblem("modelport.yaml", "[1].name", "must be a DNS-1035 label"),
    )
    assert str(caught.value).splitlines() == [
        "modelport.yaml: [0].autoscaling.max_replicas: must be >= min_replicas (2), got 1",
        "modelport.yaml: [1].name: must be a DNS-1035 label",
    ]


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, UserInputError),
        (404, NotFoundError),
        (409, ConflictError),
        (503, UnavailableError),
    ],
)
def test_error_statuses_become_modelport_errors_with_the_message(
    served: Served, status: int, error_type: type[ModelportError]
) -> None:
    served.api.answer(status, {"error": "api iris: something specific"})
    with pytest.raises(error_type) as caught:
        served.client.get_api("iris")
    assert type(caught.value) is error_type  # not SpecError, not ClusterNotRunningError
    assert str(caught.value) == "api iris: something specific"


def test_503_is_retryable(served: Served) -> None:
    served.api.answer(503, {"error": "no replica is ready"})
    with pytest.raises(UnavailableError) as caught:
        served.client.refresh("iris")
    assert caught.value.retryable


def test_500_is_a_plain_modelport_error_naming_the_status(served: Served) -> None:
    served.api.answer(500, {"error": "internal error in the modelport daemon: see its log"})
    with pytest.raises(ModelportError) as caught:
        served.client.list_apis()
    assert type(caught.value) is ModelportError
    assert str(caught.value) == (
        "the modelport cluster answered 500: internal error in the modelport daemon: see its log"
    )
    assert not caught.value.retryable


def test_a_non_json_error_body_is_shown_as_text(served: Served) -> None:
    served.api.reply = Response(status=502, body=b"Bad Gateway", content_type=b"text/plain")
    with pytest.raises(ModelportError) as caught:
        served.client.list_apis()
    assert str(caught.value) == "the modelport cluster answered 502: Bad Gateway"


def test_a_json_error_body_that_is_not_an_object_is_still_a_modelport_error(served: Served) -> None:
    served.api.answer(502, "upstream unavailable")
    with pytest.raises(ModelportError) as caught:
        served.client.list_apis()
    assert "upstream unavailable" in str(caught.value)


# ---- no cluster --------------------------------------------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and no other test can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_connection_refused_is_cluster_not_running(tmp_path: Path, refusing_port: int) -> None:
    client = Client(Settings(home=tmp_path, control_port=refusing_port), timeout=5.0)
    with pytest.raises(ClusterNotRunningError) as caught:
        client.list_apis()
    message = str(caught.value)
    assert f"http://127.0.0.1:{refusing_port}" in message
    assert "`modelport cluster up`" in message
    assert isinstance(caught.value, UnavailableError)  # retryable: the cluster may be starting
    assert not client.is_running()
