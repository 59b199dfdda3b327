"""LocalBackend against real processes: a stand-in replica (stdlib HTTP server) on free loopback ports."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from modelport.backends.compute import MachineCapacity
from modelport.backends.local import (
    KEPT_LOGS_PER_API,
    LocalBackend,
    ReplicaCommand,
    ReplicaListen,
    default_replica_command,
    kill_stale_replica,
)
from modelport.clock import Clock, FakeClock
from modelport.controller.ports import ObservedReplica, ReplicaLaunch
from modelport.errors import ConflictError, UnavailableError
from modelport.spec.model import ApiSpec
from modelport.types import ApiName, ReplicaId, ReplicaPhase, Revision
from tests.support import wait_until

pytestmark = pytest.mark.integration

# The stand-in replica: what the real one promises (port bound at once, /healthz, /readyz, drain on SIGTERM,
# exit codes), driven by flags so each test picks a behaviour.
STAND_IN = """
import argparse, json, os, signal, subprocess, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--replica-id", required=True)
parser.add_argument("--ready-after", type=float, default=0.0)
parser.add_argument("--exit-code", type=int)
parser.add_argument("--ignore-sigterm", action="store_true")
parser.add_argument("--healthy-for", type=int, help="answer this many /healthz, then hang")
parser.add_argument("--record-env")
parser.add_argument("--worker-pid-file", help="fork a worker into this process group, write its pid here")
args = parser.parse_args()

print(f"stand-in {args.replica_id} up", flush=True)
if args.record_env:
    keys = ("CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "MODEL_NAME")
    env = {key: os.environ.get(key) for key in keys}
    with open(args.record_env + ".tmp", "w") as f:
        json.dump({"env": env, "cwd": os.getcwd()}, f)
    os.replace(args.record_env + ".tmp", args.record_env)
if args.worker_pid_file:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(args.worker_pid_file + ".tmp", "w") as f:
        f.write(str(worker.pid))
    os.replace(args.worker_pid_file + ".tmp", args.worker_pid_file)
if args.exit_code is not None:
    print("predictor failed to load", file=sys.stderr, flush=True)
    sys.exit(args.exit_code)

started = time.monotonic()
draining = threading.Event()
health_answers = 0

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        global health_answers
        if self.path == "/readyz":
            ready = time.monotonic() - started >= args.ready_after and not draining.is_set()
            status = 200 if ready else 503
        elif self.path == "/healthz":
            health_answers += 1
            if args.healthy_for is not None and health_answers > args.healthy_for:
                time.sleep(120)  # wedged: accepts the connection, never answers
            status = 200
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True

def on_sigterm(signum, frame):
    print("SIGTERM received", flush=True)
    if not args.ignore_sigterm:
        draining.set()
        threading.Thread(target=server.shutdown).start()

signal.signal(signal.SIGTERM, on_sigterm)
server.serve_forever(poll_interval=0.02)
print("drained", flush=True)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return path


def command(stand_in: Path, *flags: str) -> ReplicaCommand:
    def build(launch: ReplicaLaunch, listen: ReplicaListen) -> list[str]:
        port = str(listen.port)
        return [sys.executable, str(stand_in), "--port", port, "--replica-id", launch.replica_id, *flags]

    return build


def make_launch(
    tmp_path: Path, replica_id: str, *, gpu: int = 0, env: dict[str, str] | None = None
) -> ReplicaLaunch:
    spec = ApiSpec.model_validate(
        {
            "name": "iris",
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py", "env": env or {}},
            "compute": {"cpu": "500m", "gpu": gpu},
        }
    )
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return ReplicaLaunch(
        replica_id=ReplicaId(replica_id),
        api_name=ApiName("iris"),
        revision=Revision("rev-1"),
        generation=0,
        project_dir=project,
        spec_path=project / "spec.json",
        spec=spec,
    )


BackendFactory = Callable[..., LocalBackend]
TWO_CORES = MachineCapacity(cpu=2.0, mem=8 << 30)  # like the local machine; no GPU


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[BackendFactory]:
    backends: list[LocalBackend] = []

    def make(
        replica_command: ReplicaCommand,
        *,
        capacity: MachineCapacity = TWO_CORES,
        clock: Clock | None = None,
        probe_timeout: float = 1.0,
        health_interval: float = 2.0,
        health_failure_threshold: int = 3,
        sockets_dir: Path | None = None,
    ) -> LocalBackend:
        backend = LocalBackend(
            logs_dir=tmp_path / "logs",
            sockets_dir=sockets_dir,
            replica_command=replica_command,
            capacity=capacity,
            clock=clock,
            probe_timeout=probe_timeout,
            health_interval=health_interval,
            health_failure_threshold=health_failure_threshold,
        )
        backends.append(backend)
        return backend

    yield make
    for backend in backends:  # every replica a test started is stopped, whatever the test did
        asyncio.run(backend.shutdown(grace_seconds=0))


def by_id(backend: LocalBackend, replica_id: str) -> ObservedReplica:
    (replica,) = [r for r in backend.observe() if r.replica_id == replica_id]
    return replica


async def poll_until(
    backend: LocalBackend, done: Callable[[Sequence[ObservedReplica]], bool], *, within: float = 10.0
) -> Sequence[ObservedReplica]:
    deadline = time.monotonic() + within
    while True:
        await backend.poll()
        observed = backend.observe()
        if done(observed):
            return observed
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {within}s: {observed}")
        await asyncio.sleep(0.02)


def phase_of(replica_id: str, phase: ReplicaPhase) -> Callable[[Sequence[ObservedReplica]], bool]:
    return lambda observed: any(r.replica_id == replica_id and r.phase is phase for r in observed)


async def log_mentions(path: Path, text: str, *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while text not in await asyncio.to_thread(path.read_text):
        assert time.monotonic() < deadline, f"{path} never mentioned {text!r}"
        await asyncio.sleep(0.01)


def wait_for_file(path: Path) -> str:
    wait_until(path.exists, timeout=10, message=f"{path} to appear")
    return path.read_text()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_launch_starts_then_becomes_ready_and_logs_to_its_file(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(command(stand_in, "--ready-after", "0.4"))
    before = time.time()
    backend.launch(make_launch(tmp_path, "iris-a1"))

    starting = by_id(backend, "iris-a1")
    assert starting.phase is ReplicaPhase.STARTING
    assert starting.address is not None and starting.address.host == "127.0.0.1"
    assert starting.pid is not None and psutil.pid_exists(starting.pid)
    assert before <= starting.started_at <= time.time()
    assert starting.log_path == tmp_path / "logs" / "iris" / "iris-a1.log"

    async def scenario() -> None:
        await poll_until(backend, lambda _: True)
        assert by_id(backend, "iris-a1").phase is ReplicaPhase.STARTING  # answers 503 for 0.4 s
        await poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY))

    asyncio.run(scenario())
    ready = by_id(backend, "iris-a1")
    assert ready.ready_at is not None and ready.ready_at - ready.started_at >= 0.4
    lines = starting.log_path.read_text().splitlines()
    assert lines[0] == (
        f"=== replica iris-a1 of api iris (revision rev-1) starting: pid {starting.pid}, "
        f"port {starting.address.port} ==="
    )
    assert "stand-in iris-a1 up" in lines


def test_a_replica_that_fails_to_load_shows_as_exited_with_its_code(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(
        command(stand_in, "--exit-code", "3"), capacity=MachineCapacity(cpu=0.5, mem=1 << 30)
    )
    launch = make_launch(tmp_path, "iris-a1")
    backend.launch(launch)
    assert not backend.check_compute(launch.spec).fits  # its 0.5 cores are held while it lives

    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED)))

    exited = by_id(backend, "iris-a1")
    assert exited.exit_code == 3
    assert backend.check_compute(launch.spec).fits  # released once reaped
    log = (tmp_path / "logs" / "iris" / "iris-a1.log").read_text()
    assert "predictor failed to load" in log
    assert log.splitlines()[-1] == "=== replica iris-a1 exited with code 3 ==="
    backend.forget(ReplicaId("iris-a1"))
    assert backend.observe() == ()


def test_terminate_drains_with_sigterm_and_the_replica_exits_zero(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(command(stand_in))
    backend.launch(make_launch(tmp_path, "iris-a1"))
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY)))

    backend.terminate(ReplicaId("iris-a1"), grace_seconds=10)
    assert by_id(backend, "iris-a1").phase is ReplicaPhase.DRAINING
    backend.terminate(ReplicaId("iris-a1"), grace_seconds=10)  # idempotent
    with pytest.raises(ConflictError, match="only an exited replica"):
        backend.forget(ReplicaId("iris-a1"))

    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED)))
    assert by_id(backend, "iris-a1").exit_code == 0
    log = (tmp_path / "logs" / "iris" / "iris-a1.log").read_text()
    assert "SIGTERM received" in log and "drained" in log
    backend.terminate(ReplicaId("iris-a1"), grace_seconds=10)  # exited: no-op
    backend.terminate(ReplicaId("unknown"), grace_seconds=10)
    assert by_id(backend, "iris-a1").exit_code == 0


def test_a_replica_that_ignores_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(command(stand_in, "--ignore-sigterm"))
    backend.launch(make_launch(tmp_path, "iris-a1"))
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY)))

    terminated_at = time.monotonic()
    backend.terminate(ReplicaId("iris-a1"), grace_seconds=0.5)
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED)))

    assert time.monotonic() - terminated_at >= 0.5
    assert by_id(backend, "iris-a1").exit_code == -signal.SIGKILL
    log = (tmp_path / "logs" / "iris" / "iris-a1.log").read_text()
    assert "SIGTERM received" in log
    assert "killed (SIGKILL): did not exit within its grace period" in log
    assert log.splitlines()[-1] == "=== replica iris-a1 exited with code -9 (killed by SIGKILL) ==="


def test_the_sigkill_deadline_follows_the_injected_clock(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    clock = FakeClock()
    backend = make_backend(command(stand_in, "--ignore-sigterm"), clock=clock)
    backend.launch(make_launch(tmp_path, "iris-a1"))
    assert by_id(backend, "iris-a1").started_at == clock.wall()
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY)))
    assert by_id(backend, "iris-a1").ready_at == clock.wall()

    backend.terminate(ReplicaId("iris-a1"), grace_seconds=30)
    log_path = tmp_path / "logs" / "iris" / "iris-a1.log"

    async def scenario() -> None:
        # However long it really takes, no SIGKILL before the clock says 30 s have passed.
        await poll_until(backend, lambda _: "SIGTERM received" in log_path.read_text())
        clock.advance(29.9)
        await backend.poll()
        assert by_id(backend, "iris-a1").phase is ReplicaPhase.DRAINING
        clock.advance(0.1)
        await poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED))

    asyncio.run(scenario())
    assert by_id(backend, "iris-a1").exit_code == -signal.SIGKILL


def test_a_replica_that_stops_answering_healthz_is_killed(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(
        command(stand_in, "--healthy-for", "2"),
        probe_timeout=0.2,
        health_interval=0.05,
        health_failure_threshold=3,
    )
    backend.launch(make_launch(tmp_path, "iris-a1"))
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED)))

    replica = by_id(backend, "iris-a1")
    assert replica.ready_at is not None  # it was ready and healthy first
    assert replica.exit_code == -signal.SIGKILL
    log = (tmp_path / "logs" / "iris" / "iris-a1.log").read_text()
    assert "killed (SIGKILL): /healthz failed 3 times in a row" in log


def test_a_worker_left_by_an_exited_replica_is_killed_with_its_group(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    worker_pid_file = tmp_path / "worker.pid"
    backend = make_backend(command(stand_in, "--worker-pid-file", str(worker_pid_file), "--exit-code", "1"))
    backend.launch(make_launch(tmp_path, "iris-a1"))
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.EXITED)))

    worker_pid = int(wait_for_file(worker_pid_file))
    wait_until(lambda: gone(worker_pid), timeout=5, message="the replica's worker to go with it")


def test_shutdown_stops_every_replica_and_leaves_no_process_behind(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    polite = make_backend(command(stand_in))
    stubborn = make_backend(command(stand_in, "--ignore-sigterm"))
    worker_pid_file = tmp_path / "worker.pid"
    with_worker = make_backend(command(stand_in, "--worker-pid-file", str(worker_pid_file)))
    for n, backend in enumerate((polite, stubborn, with_worker)):
        backend.launch(make_launch(tmp_path, f"iris-{n}"))
        backend.launch(make_launch(tmp_path, f"iris-{n}b"))

    async def scenario() -> None:
        for backend in (polite, stubborn, with_worker):
            await poll_until(backend, lambda observed: all(r.phase is ReplicaPhase.READY for r in observed))
        started = time.monotonic()
        await asyncio.gather(*(b.shutdown(grace_seconds=0.5) for b in (polite, stubborn, with_worker)))
        assert time.monotonic() - started < 5

    worker_pid = int(wait_for_file(worker_pid_file))
    asyncio.run(scenario())

    assert psutil.Process().children(recursive=True) == []
    assert gone(worker_pid)
    assert {r.exit_code for r in polite.observe()} == {0}
    assert {r.exit_code for r in stubborn.observe()} == {-signal.SIGKILL}
    assert all(r.phase is ReplicaPhase.EXITED for b in (polite, stubborn, with_worker) for r in b.observe())


def test_a_cancelled_shutdown_still_kills_every_replica(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(command(stand_in, "--ignore-sigterm"))
    backend.launch(make_launch(tmp_path, "iris-a1"))
    log_path = tmp_path / "logs" / "iris" / "iris-a1.log"
    pid = by_id(backend, "iris-a1").pid
    assert pid is not None

    async def scenario() -> None:
        await poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY))
        shutdown = asyncio.create_task(backend.shutdown(grace_seconds=60))
        await log_mentions(log_path, "SIGTERM received")
        shutdown.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shutdown

    asyncio.run(scenario())
    assert "killed (SIGKILL): shutdown was cancelled" in log_path.read_text()
    wait_until(lambda: gone(pid), timeout=5, message="the replica to die after a cancelled shutdown")


def test_gpu_replicas_see_only_their_own_devices(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # whatever the daemon inherited must not leak through

    def recording(launch: ReplicaLaunch, listen: ReplicaListen) -> list[str]:
        return command(stand_in, "--record-env", str(tmp_path / f"{launch.replica_id}.json"))(launch, listen)

    backend = make_backend(recording, capacity=MachineCapacity(cpu=8.0, mem=8 << 30, gpu=2))
    backend.launch(make_launch(tmp_path, "gpu-a", gpu=1, env={"MODEL_NAME": "bert"}))
    backend.launch(make_launch(tmp_path, "gpu-b", gpu=1))
    backend.launch(make_launch(tmp_path, "cpu-c", gpu=0))
    assert (
        backend.check_compute(make_launch(tmp_path, "x", gpu=1).spec).missing
        == "gpu: requested 1, 0 of 2 free"
    )
    with pytest.raises(UnavailableError):
        backend.launch(make_launch(tmp_path, "gpu-d", gpu=1))
    assert "gpu-d" not in {r.replica_id for r in backend.observe()}

    def recorded(replica_id: str) -> dict[str, object]:
        result: dict[str, object] = json.loads(wait_for_file(tmp_path / f"{replica_id}.json"))
        return result

    assert recorded("gpu-a") == {
        "env": {"CUDA_VISIBLE_DEVICES": "0", "PYTHONUNBUFFERED": "1", "MODEL_NAME": "bert"},
        "cwd": str(tmp_path / "project"),
    }
    assert recorded("gpu-b")["env"] == {
        "CUDA_VISIBLE_DEVICES": "1",
        "PYTHONUNBUFFERED": "1",
        "MODEL_NAME": None,
    }
    assert recorded("cpu-c")["env"] == {
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
        "MODEL_NAME": None,
    }

    backend.terminate(ReplicaId("gpu-a"), grace_seconds=5)
    asyncio.run(poll_until(backend, phase_of("gpu-a", ReplicaPhase.EXITED)))
    backend.launch(make_launch(tmp_path, "gpu-e", gpu=1))
    assert recorded("gpu-e")["env"] == {
        "CUDA_VISIBLE_DEVICES": "0",
        "PYTHONUNBUFFERED": "1",
        "MODEL_NAME": None,
    }


def test_without_gpus_the_inherited_cuda_setting_is_left_alone(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    env_file = tmp_path / "env.json"
    backend = make_backend(command(stand_in, "--record-env", str(env_file)))
    backend.launch(make_launch(tmp_path, "iris-a1"))
    assert '"CUDA_VISIBLE_DEVICES": "7"' in wait_for_file(env_file)


def test_a_command_that_cannot_be_spawned_shows_as_exited(
    tmp_path: Path, make_backend: BackendFactory
) -> None:
    backend = make_backend(lambda launch, port: [str(tmp_path / "no-such-program")])
    launch = make_launch(tmp_path, "iris-a1")
    backend.launch(launch)

    replica = by_id(backend, "iris-a1")
    assert (replica.phase, replica.exit_code, replica.pid) == (ReplicaPhase.EXITED, 127, None)
    assert "could not start" in (tmp_path / "logs" / "iris" / "iris-a1.log").read_text()
    assert backend.check_compute(launch.spec).fits
    with pytest.raises(ConflictError, match="already exists"):
        backend.launch(launch)


def test_kill_stale_replica_kills_only_the_process_naming_the_replica(tmp_path: Path, stand_in: Path) -> None:
    # Stand-ins for replicas a dead daemon left behind: in their own session, as LocalBackend starts them.
    def start(replica_id: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(stand_in), "--port", "0", "--replica-id", replica_id]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)

    stale, unrelated = start("iris-stale"), start("bert-other")
    try:
        assert not kill_stale_replica(unrelated.pid, "iris-stale")  # a reused pid: not ours to kill
        assert not kill_stale_replica(2**22 + 12345, "iris-stale")  # no such process
        assert not kill_stale_replica(os.getpid(), "iris-stale")
        assert unrelated.poll() is None

        assert kill_stale_replica(stale.pid, "iris-stale")
        assert gone(stale.pid)  # it waits until the process is gone
        assert unrelated.poll() is None
    finally:
        for process in (stale, unrelated):
            if process.poll() is None:
                process.kill()
            process.wait()


def test_old_logs_of_exited_replicas_are_pruned_but_never_a_running_ones(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory
) -> None:
    folder = tmp_path / "logs" / "iris"
    folder.mkdir(parents=True)
    for age in range(KEPT_LOGS_PER_API + 5):  # a crash loop's leftovers, the oldest first
        old = folder / f"iris-old{age:02d}.log"
        old.write_text("crashed\n")
        os.utime(old, (1_000_000 + age, 1_000_000 + age))
    backend = make_backend(command(stand_in))
    backend.launch(make_launch(tmp_path, "iris-live"))
    backend.launch(make_launch(tmp_path, "iris-next"))

    kept = sorted(p.name for p in folder.glob("*.log"))
    assert "iris-live.log" in kept and "iris-next.log" in kept
    # When iris-next started, iris-live ran: it is not counted; the newest exited logs stay.
    exited = [name for name in kept if name.startswith("iris-old")]
    assert len(exited) == KEPT_LOGS_PER_API
    assert exited[0] == f"iris-old{5:02d}.log"


# Unix sockets: each replica is told to serve one too; its address names it once it does


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mp-run-") as folder:
        yield Path(folder)


def test_a_replica_that_does_not_serve_its_unix_socket_is_reached_over_tcp(
    tmp_path: Path, stand_in: Path, make_backend: BackendFactory, short_dir: Path
) -> None:
    given: list[ReplicaListen] = []

    def recording(launch: ReplicaLaunch, listen: ReplicaListen) -> list[str]:
        given.append(listen)
        return command(stand_in)(launch, listen)  # the stand-in ignores it

    backend = make_backend(recording, sockets_dir=short_dir / "run")
    backend.launch(make_launch(tmp_path, "iris-a1"))
    asyncio.run(poll_until(backend, phase_of("iris-a1", ReplicaPhase.READY)))

    (listen,) = given
    assert listen.unix_socket is not None and listen.unix_socket.parent == short_dir / "run"
    address = by_id(backend, "iris-a1").address
    assert address is not None and address.port == listen.port and address.path is None


SQUARE = """
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return {"square": payload["x"] ** 2}
"""


def real_launch(tmp_path: Path, replica_id: str) -> ReplicaLaunch:
    """A launch of the real replica (`python -m modelport replica`): a project and its resolved spec file."""
    project = tmp_path / "real"
    project.mkdir(exist_ok=True)
    (project / "predictor.py").write_text(SQUARE)
    spec = ApiSpec.model_validate(
        {"name": "square", "kind": "RealtimeAPI", "predictor": {"type": "python", "path": "predictor.py"}}
    )
    (project / "spec.json").write_text(spec.model_dump_json())
    return ReplicaLaunch(
        replica_id=ReplicaId(replica_id),
        api_name=ApiName("square"),
        revision=Revision("rev-1"),
        generation=0,
        project_dir=project,
        spec_path=project / "spec.json",
        spec=spec,
    )


def post_over_unix(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(payload) + payload)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        return response.read()


def test_a_real_replica_is_published_with_its_unix_socket_which_goes_when_it_exits(
    tmp_path: Path, make_backend: BackendFactory
) -> None:
    # tmp_path is usually too long for a socket path under it: the backend then makes a short private folder.
    backend = make_backend(default_replica_command)
    backend.launch(real_launch(tmp_path, "square-a1"))
    backend.launch(real_launch(tmp_path, "square-a2"))

    async def scenario() -> None:
        await poll_until(backend, lambda seen: all(r.phase is ReplicaPhase.READY for r in seen), within=30)

    asyncio.run(scenario())
    paths = {}
    for replica_id in ("square-a1", "square-a2"):
        address = by_id(backend, replica_id).address
        assert address is not None and address.path is not None
        assert stat.S_ISSOCK(os.lstat(address.path).st_mode) and len(os.fsencode(address.path)) <= 103
        assert post_over_unix(address.path, b'{"x": 4}') == b'{"square":16}'
        paths[replica_id] = Path(address.path)
    assert paths["square-a1"] != paths["square-a2"]

    # Drained: the replica removes its socket file itself. SIGKILLed: the backend removes it once reaped.
    backend.terminate(ReplicaId("square-a1"), grace_seconds=10)
    pid = by_id(backend, "square-a2").pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    asyncio.run(
        poll_until(backend, lambda seen: all(r.phase is ReplicaPhase.EXITED for r in seen), within=30)
    )
    assert by_id(backend, "square-a1").exit_code == 0 and by_id(backend, "square-a2").exit_code == -9
    assert not paths["square-a1"].exists() and not paths["square-a2"].exists()

    asyncio.run(backend.shutdown(grace_seconds=0))
    folder = paths["square-a1"].parent
    assert not folder.exists() or folder == (tmp_path / "run")  # a private temporary folder is removed
