"""Integration tests of the processes that run user code for jobs: `modelport worker` (BatchAPI, TaskAPI) and
an AsyncAPI replica's queue consumer, each a real subprocess talking to a real protocol server.

Every process is started here and killed by pid when its test ends. Synchronisation is by polling the
protocol server's records or files the user code writes, never by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelport.runtime.options import EXIT_CRASHED, EXIT_OK, EXIT_PREDICTOR_FAILED
from modelport.spec.model import ApiSpec
from tests.support import free_port, wait_until
from tests.unit.job_protocol_server import ProtocolServer, State

pytestmark = pytest.mark.integration

BATCH_PREDICTOR = """
import json, os, pathlib, time

class PythonPredictor:
    def __init__(self, config, job_spec):
        self.out = pathlib.Path(config["out"])
        seen = {"config": config, "job_spec": job_spec}
        (self.out / f"init-{os.getpid()}.json").write_text(json.dumps(seen))

    def predict(self, payload, batch_id):
        if "boom" in payload:
            raise ValueError("cannot score " + repr(payload))
        if "wait" in payload:
            (self.out / f"started-{batch_id}").touch()
            while not (self.out / "release").exists():
                time.sleep(0.01)
        with open(self.out / "batches.txt", "a") as log:
            log.write(f"{batch_id} {payload}\\n")

    def on_job_complete(self):
        with open(self.out / "complete.txt", "a") as log:
            log.write("done\\n")
"""

TASK = """
import json, pathlib

class Task:
    def __call__(self, config):
        if "fail" in config:
            raise KeyError("missing " + config["fail"])
        pathlib.Path(config["out"]).write_text(json.dumps(config))
"""

ASYNC_PREDICTOR = """
import json, pathlib

class PythonPredictor:
    def __init__(self, config):
        self.prefix = config["prefix"]
        self.out = pathlib.Path(config["out"])

    def predict(self, payload, query_params, headers):
        if isinstance(payload, bytes):
            return payload[::-1]
        if payload["kind"] == "text":
            return self.prefix + payload["name"]
        if payload["kind"] == "raise":
            raise ValueError("bad input " + payload["name"])
        seen = {"request_id": headers.get("X-Modelport-Request-Id"), "user": headers.get("X-User")}
        return {"echo": payload, "query": dict(query_params), **seen}

    def post_predict(self, response, payload):
        if isinstance(payload, dict) and payload["kind"] == "json":
            (self.out / "post_predict.json").write_text(json.dumps(response))
"""


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    project: Path

    def stderr(self) -> str:
        return (self.project / "stderr.log").read_text()

    def wait(self, timeout: float = 20) -> int:
        return self.process.wait(timeout=timeout)


Start = Callable[..., Process]


def _project(root: Path, *, kind: str, source: str, config: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "predictor.py").write_text(textwrap.dedent(source))
    predictor: dict[str, Any] = {"type": "python", "path": "predictor.py", "config": config or {}}
    if kind == "AsyncAPI":
        predictor["threads_per_process"] = 2
    spec = ApiSpec.model_validate({"name": "demo", "kind": kind, "predictor": predictor})
    (root / "spec.json").write_text(spec.model_dump_json())
    return root


def _spawn(project: Path, argv: list[str]) -> Process:
    with open(project / "stdout.log", "wb") as out, open(project / "stderr.log", "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelport", *argv], stdout=out, stderr=err, start_new_session=True
        )
    return Process(process=process, project=project)


def _kill(started: Process) -> None:
    try:
        family = [psutil.Process(started.process.pid), *psutil.Process(started.process.pid).children(True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    started.process.wait(timeout=10)
    psutil.wait_procs(family, timeout=10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """start(server, kind=..., source=..., job_id=... | replica=True, ...) -> a running process."""
    started: list[Process] = []

    def launch(
        server: ProtocolServer,
        *,
        kind: str,
        source: str,
        job_id: str = "job1",
        worker_id: str = "w1",
        grace: float = 10.0,
        replica: bool = False,
        config: dict[str, Any] | None = None,
    ) -> Process:
        project = _project(tmp_path / f"project{len(started)}", kind=kind, source=source, config=config)
        common = ["--project-dir", str(project), "--spec", str(project / "spec.json"), "--grace", str(grace)]
        common += ["--control-url", server.url]
        if replica:
            argv = ["replica", *common, "--port", str(free_port()), "--replica-id", worker_id]
        else:
            argv = ["worker", *common, "--job-id", job_id, "--worker-id", worker_id]
        process = _spawn(project, argv)
        started.append(process)
        return process

    try:
        yield launch
    finally:
        for process in started:
            _kill(process)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _acked(server: ProtocolServer, queue: str) -> list[str]:
    return sorted(call.item_id or "" for call in server.calls_of("ack", queue) if call.answer == "ok")


# ---- BatchAPI ----


def test_two_workers_process_every_batch_once_then_on_job_complete_once(start: Start, out: Path) -> None:
    batches = [[index, index + 1] for index in range(0, 12, 2)]
    with ProtocolServer().running() as server:
        server.add_batch_job("job1", batches, config={"out": str(out), "threshold": 0.5})
        workers = [
            start(server, kind="BatchAPI", source=BATCH_PREDICTOR, worker_id=worker)
            for worker in ("w1", "w2")
        ]
        assert [worker.wait() for worker in workers] == [EXIT_OK, EXIT_OK]

    assert _acked(server, "job1") == sorted([*map(str, range(6)), "complete"])
    assert server.calls_of("fail") == []
    processed = sorted((out / "batches.txt").read_text().splitlines())
    assert processed == sorted(f"{index} {batch}" for index, batch in enumerate(batches))
    assert (out / "complete.txt").read_text() == "done\n"
    logged = [line for worker in workers for line in worker.stderr().splitlines()]
    assert len([line for line in logged if re.search(r"batch \d: 2 item\(s\) in \d+\.\d+ s", line)]) == 6
    assert all("[worker w" in line for line in logged if "batch" in line)
    assert {call.body["worker_id"] for call in server.calls_of("lease")} == {"w1", "w2"}


def test_job_spec_and_config_reach_init(start: Start, out: Path) -> None:
    with ProtocolServer().running() as server:
        server.add_batch_job("job7", [[1]], config={"out": str(out), "threshold": 0.5})
        assert start(server, kind="BatchAPI", source=BATCH_PREDICTOR, job_id="job7").wait() == EXIT_OK
    (init,) = out.glob("init-*.json")
    seen = json.loads(init.read_text())
    assert seen["config"] == {"out": str(out), "threshold": 0.5}
    assert seen["job_spec"]["job_id"] == "job7"
    assert seen["job_spec"]["total_batch_count"] == 1
    assert seen["job_spec"]["config"] == seen["config"]


def test_a_failing_batch_is_failed_with_its_error_and_the_worker_goes_on(start: Start, out: Path) -> None:
    with ProtocolServer(max_receive_count=2).running() as server:
        server.add_batch_job("job1", [[1], ["boom"], [2]], config={"out": str(out)})
        worker = start(server, kind="BatchAPI", source=BATCH_PREDICTOR)
        assert worker.wait() == EXIT_OK

    fails = server.calls_of("fail")
    assert [(call.item_id, call.answer) for call in fails] == [("1", "requeued"), ("1", "dead")]
    error = str(fails[0].body["error"])
    assert error.splitlines()[0] == "ValueError: cannot score ['boom']"
    assert 'predictor.py", line' in error and "in predict" in error  # the user's traceback tail
    assert server.item("job1", "1").state is State.DEAD
    assert _acked(server, "job1") == ["0", "2", "complete"]
    assert "ValueError: cannot score ['boom']" in worker.stderr()


def test_a_predictor_whose_init_raises_exits_3_with_the_traceback(start: Start, out: Path) -> None:
    source = """
    class PythonPredictor:
        def __init__(self, config):
            load_model(config)

        def predict(self, payload):
            pass

    def load_model(config):
        raise RuntimeError("no model file in " + repr(config))
    """
    with ProtocolServer().running() as server:
        server.add_batch_job("job1", [[1]], config={"where": "here"})
        worker = start(server, kind="BatchAPI", source=source)
        assert worker.wait() == EXIT_PREDICTOR_FAILED
    stderr = worker.stderr()
    assert "PythonPredictor.__init__ in predictor.py raised" in stderr
    assert "in load_model" in stderr
    assert "RuntimeError: no model file in {'where': 'here'}" in stderr
    assert server.calls_of("lease") == []


def test_sigterm_mid_batch_finishes_it_then_exits_without_leasing_more(start: Start, out: Path) -> None:
    with ProtocolServer().running() as server:
        server.add_batch_job("job1", [["wait"], [1], [2]], config={"out": str(out)})
        worker = start(server, kind="BatchAPI", source=BATCH_PREDICTOR)
        wait_until(lambda: (out / "started-0").exists(), message="batch 0 to start")
        worker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "received SIGTERM" in worker.stderr(), message="the worker to note SIGTERM")
        (out / "release").touch()
        assert worker.wait() == EXIT_OK

    assert len(server.calls_of("lease")) == 1
    assert _acked(server, "job1") == ["0"]
    assert [item.state for item in server.items("job1")] == [State.SUCCEEDED, State.QUEUED, State.QUEUED]


def test_sigterm_abandons_a_batch_that_outlives_the_grace_period(start: Start, out: Path) -> None:
    with ProtocolServer().running() as server:
        server.add_batch_job("job1", [["wait"], [1]], config={"out": str(out)})
        worker = start(server, kind="BatchAPI", source=BATCH_PREDICTOR, grace=0.2)
        wait_until(lambda: (out / "started-0").exists(), message="batch 0 to start")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait() == EXIT_OK  # its batch never finishes

    (fail,) = server.calls_of("fail")
    assert (fail.item_id, fail.answer) == ("0", "requeued")
    assert "abandoned" in str(fail.body["error"]) and "received SIGTERM" in str(fail.body["error"])
    assert len(server.calls_of("lease")) == 1


def test_a_batch_longer_than_the_visibility_timeout_is_kept_by_heartbeats(start: Start, out: Path) -> None:
    with ProtocolServer(visibility_seconds=0.6).running() as server:
        server.add_batch_job("job1", [["wait"]], config={"out": str(out)})
        worker = start(server, kind="BatchAPI", source=BATCH_PREDICTOR)
        wait_until(
            lambda: len([c for c in server.calls_of("extend") if c.answer == "ok"]) >= 4,
            message="four extends (more than one visibility timeout)",
        )
        (out / "release").touch()
        assert worker.wait() == EXIT_OK

    batch = server.item("job1", "0")
    assert (batch.state, batch.receive_count) == (State.SUCCEEDED, 1)
    assert batch.seconds is not None and batch.seconds > 0.6
    assert [c.answer for c in server.calls_of("extend")].count("lost") == 0


# ---- TaskAPI ----


def test_a_task_runs_with_its_config_and_the_worker_exits_0(start: Start, out: Path) -> None:
    with ProtocolServer().running() as server:
        server.add_task("task1", config={"out": str(out / "result.json"), "n": 3})
        worker = start(server, kind="TaskAPI", source=TASK, job_id="task1")
        assert worker.wait() == EXIT_OK
    assert json.loads((out / "result.json").read_text()) == {"out": str(out / "result.json"), "n": 3}
    assert [call.answer for call in server.calls_of("lease")] == ["task", "stop"]
    assert _acked(server, "task1") == ["task"]
    assert "the task succeeded in" in worker.stderr()


def test_a_failing_task_is_failed_with_its_traceback_and_the_worker_exits_0(start: Start) -> None:
    with ProtocolServer(max_receive_count=1).running() as server:
        server.add_task("task1", config={"fail": "x"})
        worker = start(server, kind="TaskAPI", source=TASK, job_id="task1")
        assert worker.wait() == EXIT_OK
    (fail,) = server.calls_of("fail")
    assert fail.answer == "dead"
    assert str(fail.body["error"]).startswith("KeyError: 'missing x'")
    assert "in __call__" in str(fail.body["error"])
    assert server.item("task1", "task").state is State.DEAD


# ---- AsyncAPI ----


def test_an_async_replica_consumes_its_queue(start: Start, out: Path) -> None:
    with ProtocolServer(max_receive_count=1).running() as server:

        def add(request_id: str, body: bytes, content_type: str, **more: Any) -> None:
            server.add_async_request("demo", request_id, body=body, content_type=content_type, **more)

        json_body = json.dumps({"kind": "json", "n": 1}).encode()
        add("json", json_body, "application/json", query="x=1&tag=%C3%A9", headers={"X-User": "ada"})
        add("text", json.dumps({"kind": "text", "name": "ada"}).encode(), "application/json")
        add("bytes", b"abc", "application/octet-stream")
        add("raise", json.dumps({"kind": "raise", "name": "bob"}).encode(), "application/json")
        add("invalid", b"{not json", "application/json")
        replica = start(
            server,
            kind="AsyncAPI",
            source=ASYNC_PREDICTOR,
            replica=True,
            worker_id="r1",
            config={"prefix": "hi ", "out": str(out)},
        )
        wait_until(lambda: server.settled("async/demo"), message="every async request to be settled")

        json_item = server.item("async/demo", "json")
        assert json_item.result_type == "application/json"
        assert json.loads(json_item.result or b"") == {
            "echo": {"kind": "json", "n": 1},
            "query": {"x": "1", "tag": "é"},
            "request_id": "json",
            "user": "ada",
        }
        posted = out / "post_predict.json"
        written = wait_until(lambda: posted.exists() and posted.read_text(), message="post_predict's file")
        assert json.loads(written) == json.loads(json_item.result or b"")
        text_item = server.item("async/demo", "text")
        assert (text_item.result, text_item.result_type) == (b"hi ada", "text/plain; charset=utf-8")
        bytes_item = server.item("async/demo", "bytes")
        assert (bytes_item.result, bytes_item.result_type) == (b"cba", "application/octet-stream")
        raised = server.item("async/demo", "raise")
        assert raised.state is State.DEAD
        assert raised.errors[0].startswith("ValueError: bad input bob")
        assert server.item("async/demo", "invalid").errors[0].startswith("invalid JSON body")
        assert {call.body["worker_id"] for call in server.calls_of("lease")} == {"r1"}

        replica.process.send_signal(signal.SIGTERM)
        assert replica.wait() == EXIT_OK
    assert "async request raise failed" in replica.stderr()


def test_a_draining_async_replica_finishes_its_request_and_leases_no_more(start: Start, out: Path) -> None:
    source = """
    import pathlib, time

    class PythonPredictor:
        def __init__(self, config):
            self.out = pathlib.Path(config["out"])

        def predict(self, payload):
            (self.out / f"started-{payload['n']}").touch()
            while not (self.out / "release").exists():
                time.sleep(0.01)
            return {"n": payload["n"]}
    """
    with ProtocolServer().running() as server:
        for n in range(3):
            body = json.dumps({"n": n}).encode()
            server.add_async_request("demo", str(n), body=body, content_type="application/json")
        replica = start(server, kind="AsyncAPI", source=source, replica=True, config={"out": str(out)})
        wait_until(
            lambda: len(list(out.glob("started-*"))) == 2, message="two requests (two threads) to start"
        )
        replica.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "draining" in replica.stderr(), message="the replica to drain")
        leases = len(server.calls_of("lease"))
        (out / "release").touch()
        assert replica.wait() == EXIT_OK
        assert len(server.calls_of("lease")) == leases
    assert _acked(server, "async/demo") == ["0", "1"]
    assert server.item("async/demo", "2").state is State.QUEUED


def test_a_worker_that_cannot_reach_the_control_api_exits_1(tmp_path: Path) -> None:
    project = _project(tmp_path / "project", kind="BatchAPI", source=BATCH_PREDICTOR)
    argv = ["worker", "--project-dir", str(project), "--spec", str(project / "spec.json"), "--job-id", "job1"]
    argv += ["--worker-id", "w1", "--control-url", f"http://127.0.0.1:{free_port()}", "--retry-budget", "0.3"]
    worker = _spawn(project, argv)
    try:
        assert worker.wait() == EXIT_CRASHED
    finally:
        _kill(worker)
    assert "cannot reach the control API" in worker.stderr()
    assert "gave up after 0.3 s" in worker.stderr()
