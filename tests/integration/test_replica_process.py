"""Integration tests of runtime.server: real replica processes on free loopback ports, tiny predictor files.

Every process is started by `start_replica` and killed by pid (with its children) when the test ends.
Synchronisation is by polling an HTTP endpoint or a file the predictor writes, never by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelport.spec.model import ApiSpec
from tests.support import HttpReply, free_port, wait_until

pytestmark = pytest.mark.integration

BOOT = "import sys; from modelport.runtime.server import main; sys.exit(main(sys.argv[1:]))"


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int
    project: Path

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> HttpReply:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return HttpReply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )
        finally:
            connection.close()

    def raw_request(
        self, target: bytes, *, headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> HttpReply:
        """A POST written byte for byte: repeated headers, names in any case (`request` takes a dict)."""
        lines = [b"POST " + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"content-length: %d" % len(body))
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return HttpReply(
                response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            )

    def predict(
        self, payload: Any, path: str = "/predict", headers: dict[str, str] | None = None
    ) -> HttpReply:
        headers = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", path, json.dumps(payload).encode(), headers)

    def answers(self, path: str) -> HttpReply | None:
        try:
            return self.request("GET", path)
        except OSError:
            return None

    def wait_ready(self) -> None:
        wait_until(lambda: (reply := self.answers("/readyz")) and reply.status == 200, message="/readyz 200")

    def stderr(self) -> str:
        return (self.project / "stderr.log").read_text()

    def stdout(self) -> str:
        return (self.project / "stdout.log").read_text()

    def exit_code(self, timeout: float = 15) -> int:
        return self.process.wait(timeout=timeout)


StartReplica = Callable[..., Replica]


def _write_project(root: Path, source: str, predictor: dict[str, Any]) -> Path:
    root.mkdir(parents=True)
    (root / "predictor.py").write_text(textwrap.dedent(source))
    spec = ApiSpec.model_validate(
        {
            "name": "demo",
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py", **predictor},
        }
    )
    (root / "spec.json").write_text(spec.model_dump_json())
    return root


def _launch(project: Path, *, grace: float, flags: Sequence[str] = ()) -> Replica:
    port = free_port()
    argv = ["--project-dir", str(project), "--spec", str(project / "spec.json"), "--port", str(port)]
    argv += ["--replica-id", "r1", "--grace", str(grace), *flags]
    with open(project / "stdout.log", "wb") as out, open(project / "stderr.log", "wb") as err:
        # Its own process group, as the local backend starts replicas (it signals the whole group).
        process = subprocess.Popen(
            [sys.executable, "-c", BOOT, *argv], stdout=out, stderr=err, start_new_session=True
        )
    return Replica(process=process, port=port, project=project)


def _stop(replica: Replica) -> None:
    try:
        family = [psutil.Process(replica.process.pid), *psutil.Process(replica.process.pid).children(True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    replica.process.wait(timeout=10)
    psutil.wait_procs(family, timeout=10)


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[StartReplica]:
    started: list[Replica] = []

    def start(source: str, *, grace: float = 10.0, flags: Sequence[str] = (), **predictor: Any) -> Replica:
        project = _write_project(tmp_path / f"project{len(started)}", source, predictor)
        replica = _launch(project, grace=grace, flags=flags)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            _stop(replica)


ECHO = """
import threading

class PythonPredictor:
    def __init__(self, config):
        self.config = config
        self.init_thread = threading.get_ident()
        print("constructed with", config)

    def predict(self, payload, query_params, headers):
        if payload == {"fail": True}:
            return explode(payload)
        if payload == {"unserializable": True}:
            return {"model": self}
        if isinstance(payload, bytes):
            payload = {"bytes": payload.hex()}
        return {
            "payload": payload,
            "query_params": dict(query_params),  # a dict-style read, as Cortex predictors do
            "tags": query_params.getlist("tag"),
            "user": headers.get("X-User"),  # names are case-insensitive
            "has_user": "x-user" in headers,
            "langs": headers.getlist("Accept-Language"),
            "config": self.config,
            "same_thread_as_init": threading.get_ident() == self.init_thread,
        }

def explode(payload):
    raise ValueError("cannot predict " + repr(payload))
"""


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    project = _write_project(
        tmp_path_factory.mktemp("echo") / "project", ECHO, {"config": {"threshold": 0.5}}
    )
    replica = _launch(project, grace=5.0)
    try:
        replica.wait_ready()
        yield replica
    finally:
        _stop(replica)


# one replica, shared by the tests of plain request handling


def test_predict_json_round_trip_with_query_params_and_headers(echo: Replica) -> None:
    reply = echo.predict(
        {"sepal": [5.1, 3.5]}, path="/predict?version=2&tag=a%20b", headers={"X-User": "ann"}
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "payload": {"sepal": [5.1, 3.5]},
        "query_params": {"version": "2", "tag": "a b"},
        "tags": ["a b"],
        "user": "ann",
        "has_user": True,
        "langs": [],
        "config": {"threshold": 0.5},
        "same_thread_as_init": True,  # threads_per_process 1: thread-affine libraries work
    }
    assert len(reply.headers["x-request-id"]) == 32
    assert (
        echo.predict([1], path="/", headers={"X-Request-ID": "given-id"}).headers["x-request-id"]
        == "given-id"
    )


def test_repeated_query_keys_and_headers_and_utf8_query_values(echo: Replica) -> None:
    # Percent-encoded: the HTTP parser answers 400 to raw non-ASCII bytes in the request target, so only
    # the unit tests can give the runtime those.
    target = b"/predict?tag=a&tag=b&city=K%C3%B6ln&name=%C3%A9t%C3%A9&emoji=%F0%9F%98%80"
    reply = echo.raw_request(
        target,
        headers=[
            (b"Content-Type", b"application/json"),
            (b"x-USER", b"bob"),
            (b"Accept-Language", b"fr"),
            (b"accept-language", b"en"),
        ],
        body=b"[1]",
    )
    assert reply.status == 200
    echoed = reply.json()
    assert echoed["query_params"] == {"tag": "b", "city": "Köln", "name": "été", "emoji": "\N{GRINNING FACE}"}
    assert echoed["tags"] == ["a", "b"]
    assert (echoed["user"], echoed["has_user"]) == ("bob", True)
    assert echoed["langs"] == ["fr", "en"]


def test_a_body_that_is_not_json_reaches_predict_as_bytes(echo: Replica) -> None:
    reply = echo.request("POST", "/predict", b"\x00\x01", {"Content-Type": "application/octet-stream"})
    assert reply.json()["payload"] == {"bytes": "0001"}
    assert echo.request("POST", "/predict", b"{}").json()["payload"] == {"bytes": "7b7d"}  # no content-type


def test_an_unserializable_return_value_is_500_and_logged_with_its_type(echo: Replica) -> None:
    reply = echo.predict({"unserializable": True})
    assert reply.status == 500
    line = f"request {reply.json()['request_id']}: predict returned a value of type dict"
    log = wait_until(lambda: line in echo.stderr() and echo.stderr(), message="the log line")
    assert "Type is not JSON serializable: PythonPredictor" in log


def test_invalid_json_is_400(echo: Replica) -> None:
    reply = echo.request("POST", "/predict", b'{"a": ', {"Content-Type": "application/json"})
    assert reply.status == 400
    assert reply.json()["error"].startswith("invalid JSON body: ")


def test_predictor_exception_is_500_with_request_id_and_traceback_on_stderr(echo: Replica) -> None:
    reply = echo.predict({"fail": True}, headers={"X-Request-ID": "failing-42"})
    assert reply.status == 500
    assert reply.json() == {"error": "internal server error", "request_id": "failing-42"}
    assert reply.headers["x-request-id"] == "failing-42"
    log = wait_until(lambda: "ValueError" in echo.stderr() and echo.stderr(), message="the traceback")
    assert "[replica r1] request failing-42: predict failed:" in log
    assert "in explode" in log and "ValueError: cannot predict {'fail': True}" in log


def test_summary_health_and_unknown_routes(echo: Replica) -> None:
    summary = echo.request("GET", "/predict")
    assert summary.status == 200 and summary.json()["api"] == "demo" and summary.json()["ready"] is True
    assert echo.request("GET", "/healthz").json() == {"status": "ok"}
    assert echo.request("GET", "/nowhere").status == 404
    assert echo.request("PUT", "/predict").status == 405


def test_logs_and_prints_are_flushed_line_by_line(echo: Replica) -> None:
    assert "constructed with {'threshold': 0.5}" in echo.stdout()
    assert "INFO [replica r1] predictor ready in " in echo.stderr()


# start-up and failures


def test_init_failure_exits_3_with_the_traceback(start_replica: StartReplica) -> None:
    replica = start_replica(
        """
        class PythonPredictor:
            def __init__(self, config):
                raise ValueError("model.pkl is corrupt")

            def predict(self, payload):
                pass
        """
    )
    assert replica.exit_code() == 3
    log = replica.stderr()
    assert "PythonPredictor.__init__ in predictor.py raised:" in log
    assert "in __init__" in log and "ValueError: model.pkl is corrupt" in log


def test_a_failing_child_process_makes_the_replica_exit_3(start_replica: StartReplica) -> None:
    replica = start_replica(
        """
        import os

        class PythonPredictor:
            def __init__(self, config):
                raise RuntimeError(f"no GPU for process {os.getpid()}")

            def predict(self):
                pass
        """,
        processes_per_replica=2,
    )
    assert replica.exit_code() == 3
    assert "RuntimeError: no GPU for process" in replica.stderr()


def test_an_unreadable_spec_exits_2(tmp_path: Path) -> None:
    project = _write_project(tmp_path / "project", ECHO, {})
    (project / "spec.json").write_text('{"name": "demo"}')
    replica = _launch(project, grace=1.0)
    try:
        assert replica.exit_code() == 2
        assert "cannot read the API spec" in replica.stderr()
    finally:
        _stop(replica)


def test_missing_predictor_file_exits_3(start_replica: StartReplica, tmp_path: Path) -> None:
    replica = start_replica("", path="missing.py")
    assert replica.exit_code() == 3
    assert "predictor file not found" in replica.stderr() and "missing.py" in replica.stderr()


def test_readyz_is_503_while_init_runs_then_200(start_replica: StartReplica, tmp_path: Path) -> None:
    go = tmp_path / "go"
    replica = start_replica(
        f"""
        import os, time

        class PythonPredictor:
            def __init__(self, config):
                while not os.path.exists({str(go)!r}):
                    time.sleep(0.01)

            def predict(self):
                return "ready now"
        """
    )
    health = wait_until(lambda: replica.answers("/healthz"), message="/healthz while loading")
    assert health.status == 200
    loading = replica.request("GET", "/readyz")
    assert (loading.status, loading.json()["status"]) == (503, "loading")
    early = replica.request("POST", "/predict")
    assert early.status == 503 and early.headers["retry-after"] == "1"
    go.touch()
    replica.wait_ready()
    assert replica.request("POST", "/predict").body == b"ready now"


def test_sigterm_during_a_slow_init_exits_0_promptly(start_replica: StartReplica, tmp_path: Path) -> None:
    started = tmp_path / "init-started"
    replica = start_replica(
        f"""
        import time

        class PythonPredictor:
            def __init__(self, config):
                open({str(started)!r}, "w").close()
                time.sleep(120)

            def predict(self):
                pass
        """
    )
    wait_until(started.exists, message="__init__ to start")
    replica.process.send_signal(signal.SIGTERM)
    assert replica.exit_code(timeout=10) == 0


def test_two_threads_run_two_requests_at_once(start_replica: StartReplica) -> None:
    # Both requests must be inside predict at the same time to pass the barrier; one thread could not.
    replica = start_replica(
        """
        import threading, time

        class PythonPredictor:
            def __init__(self, config):
                self.barrier = threading.Barrier(2, timeout=10)

            def predict(self):
                start = time.time()
                self.barrier.wait()
                return {"start": start, "end": time.time(), "thread": threading.current_thread().name}
        """,
        threads_per_process=2,
    )
    replica.wait_ready()
    results: list[HttpReply] = []
    clients = [
        threading.Thread(target=lambda: results.append(replica.request("POST", "/predict"))) for _ in "ab"
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=30)
    assert [r.status for r in results] == [200, 200]
    first, second = (r.json() for r in results)
    assert max(first["start"], second["start"]) <= min(first["end"], second["end"])  # the intervals overlap
    assert first["thread"] != second["thread"]


def test_post_predict_runs_after_the_response(start_replica: StartReplica, tmp_path: Path) -> None:
    allowed, done = tmp_path / "allowed", tmp_path / "post-predict-done"
    replica = start_replica(
        f"""
        import os, time

        class PythonPredictor:
            def predict(self, payload):
                return {{"label": payload["x"] * 2}}

            def post_predict(self, response, payload):
                # Blocks until the test has read the response: a post_predict that ran first would hang it.
                while not os.path.exists({str(allowed)!r}):
                    time.sleep(0.01)
                with open({str(done)!r}, "w") as f:
                    f.write(repr((response, payload)))
        """
    )
    replica.wait_ready()
    reply = replica.predict({"x": 21})
    assert reply.json() == {"label": 42}
    assert not done.exists()
    allowed.touch()
    wait_until(done.exists, message="post_predict to write its file")
    assert done.read_text() == "({'label': 42}, {'x': 21})"


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(
    start_replica: StartReplica, tmp_path: Path
) -> None:
    started = tmp_path / "predict-started"
    replica = start_replica(
        f"""
        import time

        class PythonPredictor:
            def predict(self):
                open({str(started)!r}, "w").close()
                time.sleep(1.0)
                return "finished"
        """,
        grace=20.0,
    )
    replica.wait_ready()
    replies: list[HttpReply] = []
    client = threading.Thread(target=lambda: replies.append(replica.request("POST", "/predict")))
    client.start()
    wait_until(started.exists, message="predict to start")
    replica.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: replica.answers("/healthz") is None, message="the listener to close"
    )  # no new connections
    client.join(timeout=30)
    assert [(r.status, r.body) for r in replies] == [(200, b"finished")]
    assert replica.exit_code() == 0
    assert "stopping (received SIGTERM)" in replica.stderr()


# several processes per replica

FAMILY = """
import os, time

class PythonPredictor:
    def __init__(self, config):
        folder = config["folder"]
        open(os.path.join(folder, f"loading-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(folder, f"release-{os.getpid()}")):
            time.sleep(0.01)

    def predict(self):
        return {"pid": os.getpid()}
"""


def _loading_pids(folder: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("loading-")) for p in folder.glob("loading-*"))


def test_two_processes_readyz_waits_for_both_then_sigterm_stops_both(
    start_replica: StartReplica, tmp_path: Path
) -> None:
    replica = start_replica(FAMILY, processes_per_replica=2, config={"folder": str(tmp_path)})
    pids = wait_until(lambda: len(p := _loading_pids(tmp_path)) == 2 and p, message="two processes loading")
    assert replica.process.pid in pids
    (tmp_path / f"release-{pids[0]}").touch()
    wait_until(lambda: replica.request("GET", "/readyz").json()["ready_processes"] == 1, message="one ready")
    assert replica.request("GET", "/readyz").status == 503
    (tmp_path / f"release-{pids[1]}").touch()
    replica.wait_ready()
    assert replica.request("GET", "/readyz").json() == {
        "status": "ready",
        "ready_processes": 2,
        "processes": 2,
    }
    served = {replica.request("POST", "/predict").json()["pid"] for _ in range(20)}
    assert served <= set(pids)

    replica.process.send_signal(signal.SIGTERM)
    assert replica.exit_code() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


def _ready_family(start_replica: StartReplica, folder: Path) -> tuple[Replica, int]:
    replica = start_replica(FAMILY, processes_per_replica=2, config={"folder": str(folder)})
    pids = wait_until(lambda: len(p := _loading_pids(folder)) == 2 and p, message="two processes loading")
    for pid in pids:
        (folder / f"release-{pid}").touch()
    replica.wait_ready()
    [child] = [pid for pid in pids if pid != replica.process.pid]
    return replica, child


def test_a_dead_child_stops_the_whole_replica(start_replica: StartReplica, tmp_path: Path) -> None:
    replica, child = _ready_family(start_replica, tmp_path)
    os.kill(child, signal.SIGKILL)
    assert replica.exit_code() == 1
    assert "process 2 of 2 exited with code -9; stopping the replica" in replica.stderr()


def test_sigterm_to_the_process_group_exits_0(start_replica: StartReplica, tmp_path: Path) -> None:
    replica, child = _ready_family(start_replica, tmp_path)
    os.killpg(replica.process.pid, signal.SIGTERM)
    assert replica.exit_code() == 0
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_children_do_not_outlive_the_parent(start_replica: StartReplica, tmp_path: Path) -> None:
    replica, child = _ready_family(start_replica, tmp_path)
    replica.process.kill()
    replica.process.wait(timeout=10)

    def child_gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(child_gone, message="the child to exit after its parent died")


# server-side batching

BATCHING = """
import itertools, os, pathlib, time

class PythonPredictor:
    def __init__(self, config):
        self.gate = pathlib.Path(config["gate"])
        self.batches = itertools.count(1)

    def predict(self, payload, query_params):
        batch = next(self.batches)
        while batch == 1 and not self.gate.exists():  # the first batch holds the predictor: others pile up
            time.sleep(0.002)
        return [
            {"id": item["id"], "echo": query.get("echo"), "batch": [os.getpid(), batch], "size": len(payload)}
            for item, query in zip(payload, query_params)
        ]
"""


def _server_connections(replica: Replica) -> int:
    """Connections to the replica's port that one of its processes has accepted."""
    root = psutil.Process(replica.process.pid)
    return sum(
        1
        for member in (root, *root.children())
        for connection in member.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == replica.port
    )


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(
    start_replica: StartReplica, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    replica = start_replica(
        BATCHING,
        processes_per_replica=2,
        server_side_batching={"max_batch_size": 8, "batch_interval": "50ms"},
        config={"gate": str(gate)},
    )
    replica.wait_ready()
    count = 20
    replies: dict[int, HttpReply] = {}

    def call(n: int) -> None:
        replies[n] = replica.predict({"id": n}, path=f"/predict?echo=e{n}")

    clients = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    for client in clients:
        client.start()
    wait_until(lambda: _server_connections(replica) >= count, message="every request accepted")
    gate.touch()
    for client in clients:
        client.join(timeout=30)

    assert sorted(replies) == list(range(count))
    assert all(reply.status == 200 for reply in replies.values())
    answers = {n: reply.json() for n, reply in replies.items()}
    assert all(answers[n]["id"] == n and answers[n]["echo"] == f"e{n}" for n in range(count))
    sizes: dict[tuple[int, int], int] = {}
    for answer in answers.values():
        sizes.setdefault(tuple(answer["batch"]), answer["size"])
    members = {batch: sum(1 for a in answers.values() if tuple(a["batch"]) == batch) for batch in sizes}
    assert members == sizes  # every request of a batch saw the same size, and sizes add up to `count`
    assert max(sizes.values()) > 1 and max(sizes.values()) <= 8

    metrics = replica.request("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    samples = dict(line.rsplit(" ", 1) for line in metrics.body.decode().splitlines() if line[0] != "#")
    # Both processes count into one histogram: whichever answers /metrics shows every batch.
    assert samples["modelport_batch_size_count"] == str(len(sizes))
    assert samples["modelport_batch_size_sum"] == str(count)
    for bound in (1, 2, 4, 8, 16):
        expected = sum(1 for size in sizes.values() if size <= bound)
        assert samples[f'modelport_batch_size_bucket{{le="{bound}"}}'] == str(expected), bound
    assert samples['modelport_batch_size_bucket{le="+Inf"}'] == str(len(sizes))

    replica.process.send_signal(signal.SIGTERM)  # a batching replica drains and stops like any other
    assert replica.exit_code() == 0


# the Unix socket the local gateway forwards over (--uds)

SQUARE = """
import threading

class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"square": payload["x"] ** 2}
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix domain socket (what the gateway's upstream pool does with a replica's path)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(self._path))
        self.sock = sock


def over_unix(path: Path, method: str, target: str, body: bytes | None = None) -> HttpReply:
    connection = UnixHTTPConnection(path)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return HttpReply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path must fit in 108 bytes, and pytest's tmp_path can be long.
    with tempfile.TemporaryDirectory(prefix="mp-uds-") as folder:
        yield Path(folder)


def test_serves_the_same_requests_over_a_unix_socket_and_removes_it_on_exit(
    start_replica: StartReplica, socket_dir: Path
) -> None:
    path = socket_dir / "r1.sock"
    replica = start_replica(SQUARE, flags=["--uds", str(path)])
    replica.wait_ready()
    assert stat.S_ISSOCK(path.lstat().st_mode)
    over_socket = over_unix(path, "POST", "/predict", json.dumps({"x": 7}).encode())
    assert (over_socket.status, over_socket.json()) == (200, {"square": 49})
    assert over_socket.json() == replica.predict({"x": 7}).json()  # TCP serves the same
    assert over_unix(path, "GET", "/readyz").status == 200
    assert str(path) in replica.stderr()  # the start-up line names it

    os.kill(replica.process.pid, signal.SIGTERM)
    assert replica.exit_code() == 0
    assert not path.exists()


def test_a_socket_file_left_by_a_killed_replica_is_replaced(
    start_replica: StartReplica, socket_dir: Path
) -> None:
    path = socket_dir / "r1.sock"
    first = start_replica(SQUARE, flags=["--uds", str(path)])
    first.wait_ready()
    first.process.kill()  # SIGKILL: no chance to remove its socket file
    first.process.wait(timeout=10)
    assert path.exists()

    second = start_replica(SQUARE, flags=["--uds", str(path)])
    second.wait_ready()
    assert over_unix(path, "POST", "/predict", b'{"x": 3}').json() == {"square": 9}


def test_a_file_that_is_not_a_socket_is_left_alone_and_the_replica_exits_4(
    start_replica: StartReplica, socket_dir: Path
) -> None:
    path = socket_dir / "notes.txt"
    path.write_text("mine")
    replica = start_replica(SQUARE, flags=["--uds", str(path)])
    assert replica.exit_code() == 4
    assert f"cannot listen on the Unix socket {path}" in replica.stderr()
    assert path.read_text() == "mine"


def test_a_unix_socket_path_too_long_for_the_kernel_exits_2(start_replica: StartReplica) -> None:
    path = "/tmp/" + "d" * 120 + "/r1.sock"
    replica = start_replica(SQUARE, flags=["--uds", path])
    assert replica.exit_code() == 2
    assert "choose a shorter path" in replica.stderr()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="the batch scheduling class is Linux's")
def test_replica_processes_run_in_the_batch_scheduling_class(start_replica: StartReplica) -> None:
    replica = start_replica(SQUARE, processes_per_replica=2)
    replica.wait_ready()
    family = [replica.process.pid, *(c.pid for c in psutil.Process(replica.process.pid).children())]
    assert len(family) == 2
    assert {os.sched_getscheduler(pid) for pid in family} == {os.SCHED_BATCH}
