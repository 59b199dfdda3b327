"""The control API (cluster.control_api) in-process: a real Controller over typed fakes, requests as values.

Deploys read real projects written to tmp_path and snapshot them under a temp MODELPORT_HOME; replica logs
are real files the fake backend reports, so the logs cursor is tested against real appends.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelport.cluster.control_api import ControlApi
from modelport.errors import ConflictError, ModelportError, UnavailableError
from modelport.http.server import Request
from modelport.settings import Settings
from modelport.spec.load import load_project
from modelport.spec.model import ApiSpec
from modelport.types import ApiName, ApiTraffic
from modelport.version import __version__
from tests.support import IRIS_SPEC
from tests.unit.fakes import Fakes

GATEWAY_URL = "http://localhost:18888"
IRIS = ApiName("iris")

SPEC = IRIS_SPEC + "  autoscaling:\n    init_replicas: 1\n"
PREDICTOR = "class Predictor:\n    def predict(self, payload):\n        return payload\n"


# ---- harness -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any


class Harness(Fakes):
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(home=tmp_path / "home", gateway_port=18888, control_port=18889)
        super().__init__(logs_dir=self.settings.logs_dir)
        self.shutdowns = 0
        self.controller = self.controller_with()
        self.api = ControlApi(
            controller=self.controller,
            settings=self.settings,
            gateway_url=GATEWAY_URL,
            request_shutdown=self._on_shutdown,
            clock_wall=self.clock.wall,
        )

    def _on_shutdown(self) -> None:
        self.shutdowns += 1

    def call(self, method: str, path: str, body: object = None, *, raw: bytes | None = None) -> Reply:
        data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
        request = Request(method=method, path=path, query_string=b"", headers=[], body=data)
        response = asyncio.run(self.api.handle(request))
        assert response.content_type == b"application/json"
        return Reply(response.status, orjson.loads(response.body))

    def deploy(self, project: Path) -> Reply:
        return self.call("POST", "/v1/deploy", {"path": str(project)})

    def tick(self) -> None:
        asyncio.run(self.controller.tick())

    def deploy_live(self, project: Path) -> None:
        assert self.deploy(project).status == 200
        self.tick()
        self.backend.ready()
        self.tick()


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "modelport.yaml").write_text(SPEC)
    (root / "predictor.py").write_text(PREDICTOR)
    return root


# ---- health and routing ------------------------------------------------------------------------------


def test_health_reports_the_daemon(harness: Harness, project: Path) -> None:
    reply = harness.call("GET", "/v1/health")
    assert reply.status == 200
    assert reply.body == {
        "status": "ok",
        "version": __version__,
        "pid": os.getpid(),
        "home": str(harness.settings.home),
        "gateway_url": GATEWAY_URL,
        "control_url": "http://127.0.0.1:18889",
        "apis": 0,
    }
    harness.deploy(project)
    assert harness.call("GET", "/v1/health").body["apis"] == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/health"),
        ("GET", "/v1/deploy"),
        ("PUT", "/v1/apis"),
        ("POST", "/v1/apis/iris"),
        ("GET", "/v1/apis/iris/refresh"),
        ("GET", "/v1/apis/iris/logs"),
        ("GET", "/v1/cluster/shutdown"),
    ],
)
def test_a_known_route_with_the_wrong_method_is_405(harness: Harness, method: str, path: str) -> None:
    reply = harness.call(method, path)
    assert reply.status == 405
    assert reply.body == {"error": f"method {method} is not allowed on {path}"}


@pytest.mark.parametrize("path", ["/", "/v2/health", "/v1/apis/", "/v1/apis/iris/scale", "/v1/health/x"])
def test_an_unknown_route_is_404(harness: Harness, path: str) -> None:
    reply = harness.call("GET", path)
    assert reply.status == 404
    assert reply.body == {"error": f"no control API route {path}"}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", "the request body is not valid JSON"),
        (b'["/a/project"]', "the request body must be a JSON object"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(harness: Harness, raw: bytes, error: str) -> None:
    reply = harness.call("POST", "/v1/deploy", raw=raw)
    assert reply.status == 400
    assert reply.body["error"].startswith(error)


def test_shutdown_calls_the_callback_and_answers_202(harness: Harness) -> None:
    reply = harness.call("POST", "/v1/cluster/shutdown")
    assert reply == Reply(202, {"message": "the cluster is stopping"})
    assert harness.shutdowns == 1


# ---- deploy ------------------------------------------------------------------------------------------


def test_deploy_creates_then_is_unchanged_then_updates(harness: Harness, project: Path) -> None:
    assert harness.deploy(project) == Reply(
        200, {"results": [{"api": "iris", "kind": "RealtimeAPI", "action": "created"}], "warnings": []}
    )
    assert harness.deploy(project).body["results"][0]["action"] == "unchanged"
    (project / "modelport.yaml").write_text(SPEC.replace("threshold: 0.5", "threshold: 0.9"))
    assert harness.deploy(project).body["results"][0]["action"] == "updated"
    assert harness.store.apis[IRIS].spec.predictor.config == {"threshold": 0.9}


def test_concurrent_deploys_of_one_project_are_serialised(harness: Harness, project: Path) -> None:
    body = orjson.dumps({"path": str(project)})

    async def both() -> list[str]:
        request = Request(method="POST", path="/v1/deploy", query_string=b"", headers=[], body=body)
        responses = await asyncio.gather(harness.api.handle(request), harness.api.handle(request))
        return [orjson.loads(r.body)["results"][0]["action"] for r in responses]

    assert sorted(asyncio.run(both())) == ["created", "unchanged"]


def test_deploy_calls_the_controller_on_the_event_loop_thread(harness: Harness, project: Path) -> None:
    # Project reading runs in a worker thread; the controller is not thread-safe and must stay on the loop.
    harness.deploy(project)
    assert harness.store.save_threads == [threading.get_ident()]


def test_deploy_snapshots_the_project_and_writes_the_spec_json(harness: Harness, project: Path) -> None:
    harness.deploy(project)
    loaded = load_project(project)
    revision = loaded.revision("iris")
    desired = harness.store.apis[IRIS]
    settings = harness.settings
    assert desired.revision == revision
    assert desired.deployed_at == harness.clock.wall()
    assert desired.project_dir == settings.snapshots_dir / loaded.files_digest[:16]
    assert (desired.project_dir / "predictor.py").read_text() == PREDICTOR
    assert desired.spec_path == settings.specs_dir / "iris" / f"{revision}.json"
    assert ApiSpec.model_validate_json(desired.spec_path.read_text()) == loaded.api("iris")

    # Replicas are launched from the snapshot, not from the user's folder.
    harness.tick()
    (launch,) = harness.backend.launches
    assert (launch.project_dir, launch.spec_path, launch.revision) == (
        desired.project_dir,
        desired.spec_path,
        revision,
    )


def test_a_spec_error_is_400_with_every_problem(harness: Harness, project: Path) -> None:
    (project / "modelport.yaml").write_text(
        SPEC.replace("init_replicas: 1", "min_replicas: 2\n    max_replicas: 1")
        + "- name: Bad_Name\n  kind: RealtimeAPI\n  predictor: {type: python, path: missing.py}\n"
    )
    reply = harness.deploy(project)
    assert reply.status == 400
    problems = reply.body["problems"]
    assert problems[0] == {
        "file": "modelport.yaml",
        "path": "[0].autoscaling.max_replicas",
        "message": "must be >= min_replicas (2), got 1",
    }
    assert [p["path"] for p in problems[1:]] == ["[1].name"]
    # `error` is the one-line-per-problem text the CLI prints.
    assert reply.body["error"].splitlines()[0] == (
        "modelport.yaml: [0].autoscaling.max_replicas: must be >= min_replicas (2), got 1"
    )
    assert harness.store.apis == {}
    assert not harness.settings.snapshots_dir.exists()


def test_deploy_of_a_missing_path_is_400(harness: Harness, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    reply = harness.deploy(missing)
    assert reply.status == 400
    assert reply.body["problems"] == [
        {"file": str(missing), "path": "", "message": "no such file or directory"}
    ]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"path": "project"}, "deploy: 'path' must be absolute, got 'project'"),
        ({}, "deploy: the body needs 'path': the project directory or spec file"),
        ({"path": ""}, "deploy: the body needs 'path': the project directory or spec file"),
        ({"path": 7}, "deploy: the body needs 'path': the project directory or spec file"),
    ],
)
def test_deploy_needs_an_absolute_path(harness: Harness, body: dict[str, object], error: str) -> None:
    assert harness.call("POST", "/v1/deploy", body) == Reply(400, {"error": error})


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (ConflictError("an update is in progress"), 409),
        (UnavailableError("the store is busy"), 503),
        (ModelportError("the store is corrupt"), 500),
    ],
)
def test_modelport_errors_map_to_statuses(
    harness: Harness, project: Path, failure: ModelportError, status: int
) -> None:
    harness.store.save_error = failure
    assert harness.deploy(project) == Reply(status, {"error": str(failure)})


def test_an_unexpected_error_is_a_500_without_internals(harness: Harness, project: Path) -> None:
    harness.deploy(project)
    harness.backend.observe_error = RuntimeError("secret internals")
    reply = harness.call("GET", "/v1/apis")
    assert reply == Reply(500, {"error": "internal error in the modelport daemon: see its log"})


# ---- get / delete / refresh --------------------------------------------------------------------------


def test_list_apis_gives_each_api_summary(harness: Harness, project: Path) -> None:
    assert harness.call("GET", "/v1/apis") == Reply(200, {"apis": []})
    harness.deploy_live(project)
    harness.traffic.counters[IRIS] = ApiTraffic(
        api_name=IRIS, status_2xx=3, status_4xx=1, latency_seconds_sum=0.2
    )
    (summary,) = harness.call("GET", "/v1/apis").body["apis"]
    assert summary == {
        "name": "iris",
        "kind": "RealtimeAPI",
        "status": "live",
        "reason": None,
        "revision": load_project(project).revision("iris"),
        "requested": 1,
        "up_to_date": 1,
        "stale": 0,
        "last_updated": harness.clock.wall(),
        "endpoint": f"{GATEWAY_URL}/iris",
        "metrics": {
            "requests": 4,
            "2XX": 3,
            "4XX": 1,
            "5XX": 0,
            "avg_latency_seconds": pytest.approx(0.05),
            "in_flight": 0,
            "held": 0,
        },
    }


def test_get_api_adds_replicas_spec_and_example_curl(harness: Harness, project: Path) -> None:
    harness.deploy_live(project)
    (replica,) = harness.backend.observe()
    harness.traffic.counters[IRIS] = ApiTraffic(api_name=IRIS, in_flight={replica.replica_id: 2})
    reply = harness.call("GET", "/v1/apis/iris")
    assert reply.status == 200
    detail = reply.body
    assert detail["name"] == "iris"
    assert detail["status"] == "live"
    assert detail["metrics"]["in_flight"] == 2
    assert detail["replicas"] == [
        {
            "replica_id": replica.replica_id,
            "phase": "ready",
            "revision": replica.revision,
            "generation": 0,
            "up_to_date": True,
            "in_flight": 2,
            "restarts": 0,
            "started_at": replica.started_at,
            "ready_at": replica.ready_at,
            "pid": replica.pid,
            "log_path": str(replica.log_path),
        }
    ]
    # The spec in the units a user writes.
    assert detail["spec"]["name"] == "iris"
    assert detail["spec"]["predictor"]["config"] == {"threshold": 0.5}
    assert detail["spec"]["autoscaling"]["window"] == "1m"
    assert detail["example_curl"] == (
        f'curl {GATEWAY_URL}/iris -X POST -H "Content-Type: application/json" -d @sample.json'
    )


def test_get_of_an_unknown_api_is_404(harness: Harness) -> None:
    reply = harness.call("GET", "/v1/apis/nope")
    assert reply.status == 404
    assert "api nope is not deployed" in reply.body["error"]


def test_delete_removes_the_api_and_stops_its_replicas(harness: Harness, project: Path) -> None:
    harness.deploy_live(project)
    (replica,) = harness.backend.observe()
    assert harness.call("DELETE", "/v1/apis/iris") == Reply(200, {"message": "deleted iris"})
    assert harness.backend.terminated == [replica.replica_id]
    assert harness.store.apis == {}
    assert harness.routes.tables[-1] == {}
    assert harness.call("GET", "/v1/apis/iris").status == 404


def test_delete_of_an_unknown_api_is_404(harness: Harness) -> None:
    assert harness.call("DELETE", "/v1/apis/nope") == Reply(404, {"error": "api nope is not deployed"})


def test_refresh_bumps_the_generation(harness: Harness, project: Path) -> None:
    harness.deploy_live(project)
    assert harness.call("POST", "/v1/apis/iris/refresh") == Reply(
        200, {"message": "updating iris", "generation": 1}
    )
    assert harness.call("POST", "/v1/apis/iris/refresh").body["generation"] == 2
    assert harness.store.apis[IRIS].generation == 2
    assert harness.call("POST", "/v1/apis/nope/refresh").status == 404


# ---- logs --------------------------------------------------------------------------------------------


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as handle:
        handle.write(data)


def read_logs(harness: Harness, cursor: object = None) -> tuple[list[str], dict[str, int]]:
    body = {} if cursor is None else {"cursor": cursor}
    reply = harness.call("POST", "/v1/apis/iris/logs", body)
    assert reply.status == 200, reply.body
    return [line["line"] for line in reply.body["lines"]], reply.body["cursor"]


@pytest.fixture
def log_file(harness: Harness, project: Path) -> Path:
    harness.deploy_live(project)
    (replica,) = harness.backend.observe()
    assert replica.log_path is not None
    return replica.log_path


def test_logs_follow_complete_lines_with_a_cursor(harness: Harness, log_file: Path) -> None:
    append(log_file, b"loading model\nready\n")
    reply = harness.call("POST", "/v1/apis/iris/logs")
    assert reply.body["lines"] == [
        {"replica": log_file.stem, "line": "loading model"},
        {"replica": log_file.stem, "line": "ready"},
    ]
    cursor = reply.body["cursor"]
    assert cursor == {str(log_file): log_file.stat().st_size}

    assert read_logs(harness, cursor) == ([], cursor)  # nothing new

    append(log_file, b"request 1\nrequest 2 hal")
    lines, cursor = read_logs(harness, cursor)
    assert lines == ["request 1"]  # the partial line is held back ...
    lines, cursor = read_logs(harness, cursor)
    assert lines == []

    append(log_file, b"f done\n")
    lines, cursor = read_logs(harness, cursor)
    assert lines == ["request 2 half done"]  # ... and comes whole once its newline is written
    assert cursor == {str(log_file): log_file.stat().st_size}


def test_logs_without_a_cursor_start_with_the_recent_part(harness: Harness, log_file: Path) -> None:
    # 100 KiB of old lines: a new follower starts in the last 64 KiB.
    old = b"".join(b"old line %05d %s\n" % (i, b"x" * 80) for i in range(1100))
    append(log_file, old + b"latest\n")
    lines, cursor = read_logs(harness)
    assert lines[-1] == "latest"
    assert 0 < sum(len(line) + 1 for line in lines) <= 64 * 1024
    assert "old line 00000" not in "\n".join(lines)
    assert cursor == {str(log_file): log_file.stat().st_size}


def test_logs_without_a_cursor_start_on_a_line_boundary(harness: Harness, log_file: Path) -> None:
    append(log_file, b"".join(b"old line %05d %s\n" % (i, b"x" * 80) for i in range(1100)))
    lines, _ = read_logs(harness)
    assert all(line.startswith("old line ") for line in lines)


def test_logs_restart_near_the_end_when_the_cursor_is_past_the_file(harness: Harness, log_file: Path) -> None:
    append(log_file, b"after a restart\n")
    lines, cursor = read_logs(harness, {str(log_file): 10_000})
    assert lines == ["after a restart"]
    assert cursor == {str(log_file): log_file.stat().st_size}


def test_logs_of_a_replica_without_a_file_yet_are_empty(harness: Harness, log_file: Path) -> None:
    assert not log_file.exists()
    assert read_logs(harness) == ([], {})


def test_logs_need_a_cursor_object_and_a_deployed_api(harness: Harness, log_file: Path) -> None:
    reply = harness.call("POST", "/v1/apis/iris/logs", {"cursor": [1, 2]})
    assert reply == Reply(400, {"error": "logs: 'cursor' must be an object of {path: offset}"})
    assert harness.call("POST", "/v1/apis/nope/logs").status == 404


def test_logs_get_past_a_line_longer_than_the_read_window(harness: Harness, log_file: Path) -> None:
    append(log_file, b"x" * (600 * 1024) + b"\nafter the long line\n")
    cursor: dict[str, int] = {str(log_file): 0}
    seen: list[str] = []
    for _ in range(5):
        lines, cursor = read_logs(harness, cursor)
        seen += lines
    assert "after the long line" in seen
