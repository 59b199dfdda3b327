"""The local cluster daemon: one process holding the controller, the gateway and the control API.

Lifecycle phases: `startup` (lock the home, clean replicas a dead daemon left, restore specs, bind ports),
`main loop` (the controller's reconcile loop), `shutdown` (stop accepting, drain the gateway and every
replica, release the lock). `spawn`/`stop` are used by the CLI to run it in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import uvloop

from modelport.backends.local import REPLICA_DRAIN_SECONDS as REPLICA_GRACE_SECONDS
from modelport.backends.local import LocalBackend, kill_stale_replicas
from modelport.clock import SystemClock
from modelport.cluster import snapshot
from modelport.cluster.control_api import ControlApi
from modelport.cluster.jobs_api import JobsApi
from modelport.controller.jobs import JobScheduler
from modelport.controller.loop import Controller
from modelport.errors import ModelportError, UnavailableError
from modelport.gateway.app import Gateway
from modelport.http.scheduling import use_batch_scheduling
from modelport.http.server import HttpServer
from modelport.settings import Settings
from modelport.store.jobs import SqliteJobStore
from modelport.store.sqlite import SqliteStateStore

log = logging.getLogger("modelport.daemon")

# A replica drains for its own grace period; the SIGKILL comes a little after, never during the drain.
REPLICA_KILL_AFTER_SECONDS = REPLICA_GRACE_SECONDS + 5.0
GATEWAY_DRAIN_SECONDS = 30.0


class DaemonAlreadyRunning(ModelportError):
    pass


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    pid: int
    gateway_port: int
    control_port: int


def read_daemon_info(settings: Settings) -> DaemonInfo | None:
    try:
        raw = json.loads(settings.daemon_pid_path.read_text())
        return DaemonInfo(
            pid=int(raw["pid"]), gateway_port=int(raw["gateway_port"]), control_port=int(raw["control_port"])
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _lock_home(settings: Settings) -> IO[str]:
    """An exclusive lock on the home folder for the daemon's lifetime: one daemon per home."""
    settings.home.mkdir(parents=True, exist_ok=True)
    handle = (settings.home / "daemon.lock").open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        info = read_daemon_info(settings)
        pid = f" (pid {info.pid})" if info else ""
        raise DaemonAlreadyRunning(
            f"a modelport cluster is already running for {settings.home}{pid}"
        ) from None
    return handle


def _reap_leftovers(store: SqliteStateStore) -> list[str]:
    """Kill the replicas a daemon that died left running (recorded in the store) and forget them."""
    leftovers = store.load_replicas()
    killed = kill_stale_replicas((r.pid, r.replica_id) for r in leftovers if r.pid is not None)
    for replica in leftovers:
        store.forget_replica(replica.replica_id)
    if killed:
        log.info("stopped %d replica(s) left by a previous daemon: %s", len(killed), ", ".join(killed))
    return killed


def reap_after_crash(settings: Settings) -> list[str]:
    """For `cluster down` when no daemon answers: stop what a crashed daemon left behind.

    Takes the home's lock, so it never races a daemon that is starting; raises DaemonAlreadyRunning if one
    holds it.
    """
    if not settings.database_path.exists():
        return []
    lock = _lock_home(settings)
    try:
        store = SqliteStateStore(settings.database_path)
        try:
            return _reap_leftovers(store)
        finally:
            store.close()
            settings.daemon_pid_path.unlink(missing_ok=True)
    finally:
        lock.close()


async def run_daemon(settings: Settings) -> int:
    """Run the local cluster in the foreground until SIGTERM/SIGINT or a shutdown request."""
    lock = _lock_home(settings)
    clock = SystemClock()
    store = SqliteStateStore(settings.database_path)
    job_store = SqliteJobStore(settings.database_path)
    stop = asyncio.Event()
    try:
        _reap_leftovers(store)

        backend = LocalBackend(
            logs_dir=settings.logs_dir,
            sockets_dir=settings.home / "run",
            clock=clock,
            control_url=settings.control_url,
        )
        gateway = Gateway(clock=clock)
        scheduler = JobScheduler(
            store=job_store, clock=clock, visibility_seconds=settings.job_visibility_seconds
        )
        controller = Controller(
            backend=backend,
            routes=gateway,
            traffic=gateway,
            store=store,
            clock=clock,
            drain_grace_seconds=REPLICA_KILL_AFTER_SECONDS,
            autoscale_interval_seconds=settings.autoscale_interval_seconds,
            jobs=scheduler,
        )
        jobs_api = JobsApi(controller=controller, scheduler=scheduler, gateway_url=settings.gateway_url)
        gateway.serve_submissions(jobs_api)
        removed = snapshot.prune(
            keep=store.load_apis(), snapshots_dir=settings.snapshots_dir, specs_dir=settings.specs_dir
        )
        if removed:
            log.info("removed %d snapshot(s) and spec file(s) no deployed API uses", len(removed))
        controller.restore()

        # The gateway's thread (this one) joins the kernel's batch scheduling class, as replicas do: a gateway
        # and its local replicas share cores (modelport.http.scheduling says why and what it costs).
        use_batch_scheduling()
        gateway_address = await gateway.start(host=settings.gateway_host, port=settings.gateway_port)
        control = ControlApi(
            controller=controller,
            settings=settings,
            gateway_url=settings.gateway_url,
            request_shutdown=stop.set,
            clock_wall=clock.wall,
            jobs=jobs_api,
        )
        control_server = HttpServer(control.handle)
        await control_server.start(host="127.0.0.1", port=settings.control_port)

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        settings.daemon_pid_path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "gateway_port": gateway_address.port,
                    "control_port": settings.control_port,
                }
            )
        )
        log.info(
            "modelport cluster ready: gateway %s, control API %s, home %s",
            settings.gateway_url,
            settings.control_url,
            settings.home,
        )

        reconcile = asyncio.create_task(controller.run(stop), name="controller")
        await stop.wait()

        log.info("modelport cluster stopping")
        control_server.stop_accepting()
        gateway.stop_accepting()
        await asyncio.gather(gateway.drain(GATEWAY_DRAIN_SECONDS), controller.shutdown())
        await reconcile
        await control_server.drain(2.0)
        gateway.close()
        log.info("modelport cluster stopped")
        return 0
    finally:
        job_store.close()
        store.close()
        with contextlib.suppress(FileNotFoundError):
            settings.daemon_pid_path.unlink()
        lock.close()


def daemon_main(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return uvloop.run(run_daemon(settings))
    except DaemonAlreadyRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Typically a port already in use: name it and the flag that changes it.
        print(
            f"error: the modelport cluster could not start: {exc}. Is another program using port "
            f"{settings.gateway_port} or {settings.control_port}? Choose others with "
            "--gateway-port/--control-port or MODELPORT_GATEWAY_PORT/MODELPORT_CONTROL_PORT.",
            file=sys.stderr,
        )
        return 1


def spawn_daemon(settings: Settings, *, is_ready: Callable[[], bool], timeout: float = 60.0) -> int:
    """Start the daemon in the background (own session, output to daemon.log) and wait until it answers.

    Returns its pid. Raises UnavailableError with the end of its log when it exits or does not answer.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "MODELPORT_HOME": str(settings.home),
            "MODELPORT_GATEWAY_PORT": str(settings.gateway_port),
            "MODELPORT_CONTROL_PORT": str(settings.control_port),
            "MODELPORT_GATEWAY_HOST": settings.gateway_host,
            "MODELPORT_AUTOSCALE_INTERVAL": f"{settings.autoscale_interval_seconds:g}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_file = settings.daemon_log_path.open("ab")
    with log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelport", "cluster", "run"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=settings.home,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise UnavailableError(
                f"the modelport cluster exited at start (code {code}):\n"
                + _log_tail(settings.daemon_log_path)
            )
        if is_ready():
            return process.pid
        time.sleep(0.05)
    raise UnavailableError(
        f"the modelport cluster did not answer within {timeout:.0f} s; its log:\n"
        + _log_tail(settings.daemon_log_path)
    )


def wait_for_exit(pid: int, *, timeout: float) -> bool:
    """Wait for a process (not necessarily our child) to disappear; True when it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def force_stop(pid: int) -> None:
    """Last resort for a daemon that ignores shutdown: SIGKILL its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
