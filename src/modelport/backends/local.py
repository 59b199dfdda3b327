"""The local backend: every replica is a subprocess on a free loopback port, with its own log file.

The local cluster daemon (modelport.cluster) builds one `LocalBackend`; the controller drives it through the
`Backend` port (controller/ports.py), calling `poll()` every tick and `shutdown()` when the daemon stops.
Each replica also serves on a Unix domain socket (`--uds`; in the cluster home's `run` folder, or in a private
temporary folder when that path is too long for a socket), published in its Address once it is ready: the
gateway forwards over it (cheaper than loopback TCP); probes use TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from modelport.backends.compute import ComputeLedger, ComputeRequest, MachineCapacity, detect_capacity
from modelport.backends.probe import probe_status
from modelport.clock import Clock, SystemClock
from modelport.controller.ports import ComputeVerdict, ObservedReplica, ReplicaLaunch
from modelport.errors import ConflictError
from modelport.spec.model import ApiSpec
from modelport.types import Address, ApiKind, ReplicaId, ReplicaPhase, WorkloadRole

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaListen:
    """Where a replica process is told to listen: a TCP port, and a Unix socket path when there is one."""

    port: int
    unix_socket: Path | None = None


ReplicaCommand = Callable[[ReplicaLaunch, ReplicaListen], list[str]]
WorkerCommand = Callable[[ReplicaLaunch, str], list[str]]  # (launch, control API URL)

# The replica's own drain budget (`--grace`): in-flight requests get this long after SIGTERM. The controller's
# terminate grace should exceed it, so that a draining replica exits 0 before the SIGKILL deadline.
REPLICA_DRAIN_SECONDS = 25.0
KEPT_LOGS_PER_API = 20  # logs of exited replicas kept per API, newest first
# Exit code recorded when the process could not even be spawned (the shell's "command not found").
SPAWN_FAILED_EXIT_CODE = 127
# How often shutdown() looks for exited replicas, and how long it waits for SIGKILLed ones to be reaped.
_SHUTDOWN_STEP_SECONDS = 0.02
_REAP_AFTER_KILL_SECONDS = 10.0
# sockaddr_un's sun_path: 108 bytes on Linux, 104 on macOS, the terminating NUL included.
_MAX_UNIX_SOCKET_PATH_BYTES = 103


def default_replica_command(launch: ReplicaLaunch, listen: ReplicaListen) -> list[str]:
    """`python -m modelport replica ...`: the hidden command that runs modelport.runtime for one replica."""
    command = [
        sys.executable, "-m", "modelport", "replica",
        "--project-dir", str(launch.project_dir),
        "--spec", str(launch.spec_path),
        "--host", "127.0.0.1",
        "--port", str(listen.port),
        "--replica-id", launch.replica_id,
        "--grace", f"{REPLICA_DRAIN_SECONDS:g}",
    ]  # fmt: skip
    if listen.unix_socket is not None:
        command += ["--uds", str(listen.unix_socket)]
    return command


def default_worker_command(launch: ReplicaLaunch, control_url: str) -> list[str]:
    """`python -m modelport worker ...`: one batch worker or task process of a job (runtime/worker.py)."""
    if launch.job_id is None:
        raise ValueError(f"worker {launch.replica_id} has no job")
    return [
        sys.executable, "-m", "modelport", "worker",
        "--project-dir", str(launch.project_dir),
        "--spec", str(launch.spec_path),
        "--job-id", launch.job_id,
        "--worker-id", launch.replica_id,
        "--control-url", control_url,
    ]  # fmt: skip


@dataclass(slots=True)
class _Replica:
    """What the backend tracks about one replica; mutable, private, turned into ObservedReplica on demand."""

    launch: ReplicaLaunch
    process: subprocess.Popen[bytes] | None  # None when the spawn itself failed
    address: Address | None
    log_path: Path
    started_at: float  # wall clock
    unix_socket: Path | None = None  # where it was told to serve too; published once ready, removed on exit
    phase: ReplicaPhase = ReplicaPhase.STARTING
    ready_at: float | None = None  # wall clock
    exit_code: int | None = None
    kill_at: float | None = None  # monotonic: SIGKILL the group if it is still alive then
    health_failures: int = 0
    next_health_check: float = 0.0  # monotonic

    @property
    def replica_id(self) -> ReplicaId:
        return self.launch.replica_id

    def observed(self) -> ObservedReplica:
        return ObservedReplica(
            replica_id=self.launch.replica_id,
            api_name=self.launch.api_name,
            revision=self.launch.revision,
            generation=self.launch.generation,
            phase=self.phase,
            address=self.address,
            pid=self.process.pid if self.process is not None else None,
            started_at=self.started_at,
            ready_at=self.ready_at,
            exit_code=self.exit_code,
            log_path=self.log_path,
            role=self.launch.role,
            job_id=self.launch.job_id,
        )


class LocalBackend:
    """Replicas as subprocesses of the daemon, each in its own process group (signalled as a whole)."""

    def __init__(
        self,
        *,
        logs_dir: Path,
        clock: Clock | None = None,
        host: str = "127.0.0.1",
        replica_command: ReplicaCommand = default_replica_command,
        worker_command: WorkerCommand = default_worker_command,
        control_url: str | None = None,
        probe_timeout: float = 1.0,
        health_interval: float = 2.0,
        health_failure_threshold: int = 3,
        capacity: MachineCapacity | None = None,
        sockets_dir: Path | None = None,
    ) -> None:
        """`sockets_dir`: where replicas' Unix sockets go (default: `run` next to `logs_dir`, i.e. in the
        cluster's home); when its paths would be too long for a Unix socket (108 bytes), a private folder in
        the system's temporary folder is used instead, and removed by `shutdown`."""
        self._logs_dir = logs_dir
        self._sockets_dir = sockets_dir if sockets_dir is not None else logs_dir.parent / "run"
        self._spare_sockets_dir: Path | None = None  # made when the sockets folder's paths are too long
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._host = host
        self._replica_command = replica_command
        self._worker_command = worker_command
        # Where workers and AsyncAPI replicas reach the control API's queue routes (docs/jobs.md).
        self._control_url = control_url
        self._probe_timeout = probe_timeout
        self._health_interval = health_interval
        self._health_failure_threshold = health_failure_threshold
        self._ledger = ComputeLedger(capacity if capacity is not None else detect_capacity())
        self._replicas: dict[ReplicaId, _Replica] = {}

    # -- the Backend port ---------------------------------------------------------------------------------

    def launch(self, launch: ReplicaLaunch) -> None:
        if launch.replica_id in self._replicas:
            raise ConflictError(f"replica {launch.replica_id} already exists")
        gpus = self._ledger.reserve(launch.replica_id, ComputeRequest.of(launch.spec))
        try:
            self._replicas[launch.replica_id] = self._spawn(launch, gpus)
        except BaseException:
            self._ledger.release(launch.replica_id)
            raise
        if self._replicas[launch.replica_id].phase is ReplicaPhase.EXITED:
            self._ledger.release(launch.replica_id)

    def terminate(self, replica_id: ReplicaId, *, grace_seconds: float) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None or replica.phase is ReplicaPhase.EXITED:
            return
        deadline = self._clock.monotonic() + max(grace_seconds, 0.0)
        if replica.phase is ReplicaPhase.DRAINING:
            # Already draining: a second call may only bring the SIGKILL closer, never push it away.
            replica.kill_at = deadline if replica.kill_at is None else min(replica.kill_at, deadline)
            return
        replica.phase = ReplicaPhase.DRAINING
        replica.kill_at = deadline
        _append_line(
            replica.log_path, f"=== replica {replica_id} draining: SIGTERM, grace {grace_seconds:g}s ==="
        )
        _signal_group(replica, signal.SIGTERM)

    def forget(self, replica_id: ReplicaId) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        if replica.phase is not ReplicaPhase.EXITED:
            # Forgetting a live process would orphan it: that is a controller bug, and it should be loud.
            raise ConflictError(
                f"replica {replica_id} is {replica.phase}; only an exited replica is forgotten"
            )
        del self._replicas[replica_id]

    def observe(self) -> Sequence[ObservedReplica]:
        return tuple(replica.observed() for replica in self._replicas.values())

    def check_compute(self, spec: ApiSpec) -> ComputeVerdict:
        return self._ledger.check(ComputeRequest.of(spec))

    async def poll(self) -> None:
        self._enforce_kill_deadlines()
        self._reap()
        await self._probe()

    async def shutdown(self, *, grace_seconds: float) -> None:
        for replica in self._live():
            self.terminate(replica.replica_id, grace_seconds=grace_seconds)
        try:
            await self._wait_for_exits(grace_seconds)
        except asyncio.CancelledError:
            # Cancelled mid-drain (a second Ctrl-C): never leave replicas running behind the daemon.
            for replica in self._live():
                self._kill(replica, reason="shutdown was cancelled")
            raise
        if self._spare_sockets_dir is not None and not self._live():
            shutil.rmtree(self._spare_sockets_dir, ignore_errors=True)
            self._spare_sockets_dir = None

    async def _wait_for_exits(self, grace_seconds: float) -> None:
        # Real time, not the injected clock: this waits for real processes, with real sleeps.
        loop = asyncio.get_running_loop()
        kill_at = loop.time() + grace_seconds
        give_up_at = kill_at + _REAP_AFTER_KILL_SECONDS
        killed = False
        while True:
            self._reap()
            live = self._live()
            if not live:
                return
            now = loop.time()
            if not killed and now >= kill_at:
                for replica in live:
                    self._kill(replica, reason=f"still running {grace_seconds:g}s after SIGTERM at shutdown")
                killed = True
            if now >= give_up_at:
                # Only a process stuck in the kernel survives SIGKILL this long; nothing more can be done.
                logger.error("replicas did not exit after SIGKILL: %s", [r.replica_id for r in live])
                return
            await asyncio.sleep(_SHUTDOWN_STEP_SECONDS)

    # -- launching ----------------------------------------------------------------------------------------

    def _prune_logs(self, folder: Path) -> None:
        """Keep the newest KEPT_LOGS_PER_API logs of exited replicas in an API's folder (a crash loop makes
        one per attempt); the logs of replicas this backend still runs are never removed."""
        running = {r.log_path for r in self._replicas.values()}
        finished: list[tuple[float, Path]] = []
        for path in folder.glob("*.log"):
            if path not in running:
                with contextlib.suppress(FileNotFoundError):
                    finished.append((path.stat().st_mtime, path))
        finished.sort(reverse=True)
        for _, old in finished[KEPT_LOGS_PER_API:]:
            old.unlink(missing_ok=True)

    def _command(self, launch: ReplicaLaunch) -> tuple[list[str], ReplicaListen | None, Path]:
        """The process's command line, where it listens (None for workers, which serve no HTTP) and its log
        file."""
        folder = self._logs_dir / launch.api_name
        if launch.role is not WorkloadRole.REPLICA:
            if self._control_url is None or launch.job_id is None:
                raise ConflictError(f"cannot start worker {launch.replica_id}: no control API URL or job")
            folder = folder / "jobs" / launch.job_id
            return self._worker_command(launch, self._control_url), None, folder / f"{launch.replica_id}.log"
        listen = ReplicaListen(port=_free_port(self._host), unix_socket=self._unix_socket(launch.replica_id))
        command = self._replica_command(launch, listen)
        if launch.spec.kind is ApiKind.ASYNC and self._control_url is not None:
            command = [*command, "--control-url", self._control_url]
        return command, listen, folder / f"{launch.replica_id}.log"

    def _unix_socket(self, replica_id: ReplicaId) -> Path | None:
        """Where the replica also serves: a short name (a hash of the id, which can be long) in the sockets
        folder, or in a private folder under the system's temporary folder when that path would be too long
        for a Unix socket. None (TCP only) when neither folder can be made."""
        name = f"{hashlib.blake2b(replica_id.encode(), digest_size=8).hexdigest()}.sock"
        for folder in (self._sockets_dir.absolute(), self._spare_sockets_dir):
            if folder is None:
                try:
                    folder = self._spare_sockets_dir = Path(tempfile.mkdtemp(prefix="modelport-"))
                except OSError as exc:
                    logger.info(
                        "replica %s serves TCP only: no folder for its Unix socket: %s", replica_id, exc
                    )
                    return None
            path = folder / name
            if len(os.fsencode(path)) > _MAX_UNIX_SOCKET_PATH_BYTES:
                continue
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                logger.info("cannot create %s for Unix sockets: %s", folder, exc)
                continue
            return path
        logger.info(
            "replica %s serves TCP only: no folder with a path short enough for a Unix socket", replica_id
        )
        return None

    def _spawn(self, launch: ReplicaLaunch, gpus: tuple[int, ...]) -> _Replica:
        command, listen, log_path = self._command(launch)
        port = None if listen is None else listen.port
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._prune_logs(log_path.parent)
        started_at = self._clock.wall()
        with log_path.open("ab") as log:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=launch.project_dir,
                    env=self._environment(launch, gpus),
                    # Its own process group: Ctrl-C in the daemon's terminal does not reach replicas, and
                    # terminate() can signal the replica together with the worker processes it forks.
                    start_new_session=True,
                )
            except OSError as exc:
                failure = (
                    f"=== replica {launch.replica_id} of api {launch.api_name} could not start: {exc} ===\n"
                )
                log.write(failure.encode())
                return _Replica(
                    launch=launch,
                    process=None,
                    address=None,
                    log_path=log_path,
                    started_at=started_at,
                    phase=ReplicaPhase.EXITED,
                    exit_code=SPAWN_FAILED_EXIT_CODE,
                )
            # Written right after exec; an interpreter needs tens of milliseconds before its first output, so
            # in practice the header comes first (the pid is not known any earlier).
            where = f"port {port}" if port is not None else f"job {launch.job_id}"
            header = (
                f"=== {_noun(launch)} {launch.replica_id} of api {launch.api_name} "
                f"(revision {launch.revision}) "
                f"starting: pid {process.pid}, {where} ===\n"
            )
            log.write(header.encode())
        if port is None:
            # A worker serves no HTTP: it is running as soon as it is spawned; its exit says how it went.
            return _Replica(
                launch=launch,
                process=process,
                address=None,
                log_path=log_path,
                started_at=started_at,
                phase=ReplicaPhase.READY,
                ready_at=started_at,
            )
        return _Replica(
            launch=launch,
            process=process,
            address=Address(self._host, port),
            log_path=log_path,
            started_at=started_at,
            unix_socket=None if listen is None else listen.unix_socket,
        )

    def _environment(self, launch: ReplicaLaunch, gpus: tuple[int, ...]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(launch.spec.predictor.env)
        env["PYTHONUNBUFFERED"] = "1"  # logs appear as they are written, not when a buffer fills
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in gpus)
        elif self._ledger.capacity.gpu > 0:
            # A replica that requested no GPU must not grab one that another replica was given.
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    # -- polling ------------------------------------------------------------------------------------------

    def _live(self) -> list[_Replica]:
        return [r for r in self._replicas.values() if r.phase is not ReplicaPhase.EXITED]

    def _enforce_kill_deadlines(self) -> None:
        now = self._clock.monotonic()
        for replica in self._live():
            if replica.kill_at is not None and now >= replica.kill_at:
                self._kill(replica, reason="did not exit within its grace period after SIGTERM")

    def _reap(self) -> None:
        for replica in self._live():
            process = replica.process
            if process is None:
                continue
            # Look before reaping: while the exited leader is a zombie its pid (the group id) cannot be reused
            # by an unrelated process, so what is left of its group (forked workers) can be killed safely.
            if not _exited_unreaped(process.pid):
                continue
            _signal_group(replica, signal.SIGKILL)
            exit_code = process.poll()
            if exit_code is None:
                continue
            replica.phase = ReplicaPhase.EXITED
            replica.exit_code = exit_code
            replica.kill_at = None
            self._ledger.release(replica.replica_id)
            if replica.unix_socket is not None:  # the replica removes it on a clean exit, not when killed
                with contextlib.suppress(OSError):
                    replica.unix_socket.unlink(missing_ok=True)
            _append_line(
                replica.log_path,
                f"=== replica {replica.replica_id} exited with code {_describe(exit_code)} ===",
            )

    async def _probe(self) -> None:
        now = self._clock.monotonic()
        checks: list[tuple[_Replica, Address, str]] = []
        for replica in self._live():
            if replica.address is None:
                continue
            if replica.phase is ReplicaPhase.STARTING:
                checks.append((replica, replica.address, "/readyz"))
            elif replica.phase is ReplicaPhase.READY and now >= replica.next_health_check:
                replica.next_health_check = now + self._health_interval
                checks.append((replica, replica.address, "/healthz"))
        if not checks:
            return
        statuses = await asyncio.gather(
            *(probe_status(address, path, wait_seconds=self._probe_timeout) for _, address, path in checks)
        )
        # terminate() may have run while the probes were in flight: act only on replicas still in the phase
        # that was probed.
        for (replica, _, path), status in zip(checks, statuses, strict=True):
            if path == "/readyz":
                if replica.phase is ReplicaPhase.STARTING and status == 200:
                    replica.phase = ReplicaPhase.READY
                    replica.address = _with_unix_socket(replica.address, replica.unix_socket)
                    replica.ready_at = self._clock.wall()
                    replica.next_health_check = self._clock.monotonic() + self._health_interval
            elif replica.phase is ReplicaPhase.READY:
                self._record_health(replica, healthy=status == 200)

    def _record_health(self, replica: _Replica, *, healthy: bool) -> None:
        if healthy:
            replica.health_failures = 0
            return
        replica.health_failures += 1
        if replica.health_failures >= self._health_failure_threshold:
            self._kill(replica, reason=f"/healthz failed {replica.health_failures} times in a row")
            # Out of the route table at once; it shows as EXITED once reaped on a later poll.
            replica.phase = ReplicaPhase.DRAINING

    def _kill(self, replica: _Replica, *, reason: str) -> None:
        logger.warning("killing replica %s: %s", replica.replica_id, reason)
        _append_line(replica.log_path, f"=== replica {replica.replica_id} killed (SIGKILL): {reason} ===")
        replica.kill_at = None
        _signal_group(replica, signal.SIGKILL)


def _noun(launch: ReplicaLaunch) -> str:
    return "replica" if launch.role is WorkloadRole.REPLICA else str(launch.role)


def kill_stale_replicas(replicas: Iterable[tuple[int, str]]) -> list[str]:
    """SIGKILL replicas left behind by a daemon that died, given (pid, replica id) pairs from the state store.

    Returns the ids of those found and killed. A pid may since have been reused: only a process whose
    command line names its replica id is killed. Kills all first, then waits (up to 2 s in all) until they
    are gone, so their ports are free again; a zombie that nobody reaps counts as gone.
    """
    killed: list[tuple[psutil.Process, str]] = []
    for pid, replica_id in replicas:
        if pid <= 1 or pid == os.getpid():
            continue
        try:
            process = psutil.Process(pid)
            if replica_id not in process.cmdline():
                continue
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)  # it leads its own group (start_new_session): workers too
            else:
                process.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        killed.append((process, replica_id))
    deadline = time.monotonic() + 2.0
    pending = [process for process, _ in killed]
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _still_running(p)]
        if pending:
            time.sleep(0.02)
    return [replica_id for _, replica_id in killed]


def kill_stale_replica(pid: int, replica_id: str) -> bool:
    """`kill_stale_replicas` for one replica; True when it was found and killed."""
    return bool(kill_stale_replicas([(pid, replica_id)]))


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_group(replica: _Replica, signum: signal.Signals) -> None:
    if replica.process is None:
        return
    # Safe from pid reuse: we reap the leader only in _reap, so until then its pid is ours (alive or zombie).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(replica.process.pid, signum)


def _exited_unreaped(pid: int) -> bool:
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True  # reaped elsewhere already; Popen.poll reports what it can
    # macOS has no os.waitid; psutil reads the zombie state without reaping.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _with_unix_socket(address: Address | None, path: Path | None) -> Address | None:
    """The ready replica's address, with its Unix socket when it serves one (it bound the socket before it
    could answer /readyz; a replica command that ignored --uds never created it and is reached over TCP)."""
    if address is None or path is None:
        return address
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return address
    except OSError:
        return address
    return Address(address.host, address.port, path=str(path))


def _free_port(host: str) -> int:
    # The port is free when we close the socket; if something takes it before the replica binds, the replica
    # exits (address in use) and the controller replaces it.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _describe(exit_code: int) -> str:
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"{exit_code} (killed by {signal.Signals(-exit_code).name})"
    return str(exit_code)


def _append_line(path: Path, line: str) -> None:
    # Lifecycle lines for `modelport logs`; a log that cannot be written must never break the control loop.
    with contextlib.suppress(OSError), path.open("a", encoding="utf-8") as log:
        log.write(line + "\n")
