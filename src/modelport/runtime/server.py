"""One replica's process lifecycle: listen, prepare, fork, load, serve, drain, exit (with a meaningful code).

Called by the CLI's hidden `modelport replica` command (`run_replica`, or `main` with its flags), which the
backends start once per replica. Phases, in order: listen on the port (and on `--uds`, the Unix socket the
local gateway uses) first, so `/healthz` answers while a slow model loads -> prepare the interpreter (env,
sys.path, cwd) -> fork the other processes -> per process: construct the predictor on a predictor thread ->
serve (an AsyncAPI replica given `--control-url` also consumes its queue: `runtime.async_consumer`) -> on
SIGTERM/SIGINT drain -> exit (removing the socket file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from modelport.http.scheduling import use_batch_scheduling
from modelport.http.server import HttpServer
from modelport.runtime.app import ReplicaApp
from modelport.runtime.family import Children, Lifeline, exit_now, fork_children
from modelport.runtime.interpreter import configure_logging, prepare_interpreter, threads_would_block_exit
from modelport.runtime.metrics import BatchSizeHistogram
from modelport.runtime.options import (
    EXIT_CANNOT_LISTEN,
    EXIT_CRASHED,
    EXIT_OK,
    EXIT_PREDICTOR_FAILED,
    EXIT_USAGE,
    ReplicaOptions,
    parse_args,
)
from modelport.runtime.pool import PredictorPool
from modelport.runtime.predictor import Predictor, PredictorLoadError, load_predictor
from modelport.runtime.readiness import Readiness
from modelport.runtime.replica_spec import ReplicaSpec, SpecFileError, read_replica_spec
from modelport.types import ApiKind

if TYPE_CHECKING:
    from modelport.runtime.async_consumer import AsyncConsumer

log = logging.getLogger("modelport.runtime")

LISTEN_BACKLOG = 2048
CHILD_EXIT_MARGIN_SECONDS = 2.0  # children drain for the same grace; this is how long past it we wait


def main(argv: list[str]) -> int:
    """`modelport replica` flags -> `run_replica`."""
    return run_replica(parse_args(argv))


def run_replica(options: ReplicaOptions) -> int:
    """Serve the replica until SIGTERM/SIGINT; returns the exit code (see `runtime.options`).

    When a predictor thread is still busy at the end (a predict that outlived the grace period, an __init__
    interrupted by SIGTERM, a non-daemon thread the user started), the process exits here instead of
    returning: such a thread cannot be interrupted, and the interpreter would wait for it forever.
    """
    configure_logging(f"replica {options.replica_id}")
    use_batch_scheduling()  # before any thread or child process exists: they inherit it
    context = _startup(options)
    if isinstance(context, int):
        return context
    try:
        code = _run(context)
    finally:
        _remove_unix_socket(context.options.unix_socket)
    if threads_would_block_exit():
        log.warning("predictor threads are still running; exiting without waiting for them")
        exit_now(code)
    return code


def _run(context: _Context) -> int:
    processes = context.spec.predictor.processes_per_replica
    children = None
    if processes > 1:
        try:
            children = fork_children(
                processes - 1, run_child=lambda index, lifeline: _run_child(context, index, lifeline)
            )
        except OSError as exc:
            log.error("cannot start the replica's processes: %s", exc)
            return EXIT_CRASHED
    return uvloop.run(_serve(context, index=0, children=children, lifeline=None))


def _startup(options: ReplicaOptions) -> _Context | int:
    """Read the spec, listen, then prepare the interpreter for user code; an exit code if one step fails."""
    try:
        spec = read_replica_spec(options.spec_path)
    except (OSError, SpecFileError) as exc:
        log.error("cannot read the API spec %s: %s", options.spec_path, exc)
        return EXIT_USAGE
    try:
        sock = _listen(options.host, options.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", options.host, options.port, exc)
        return EXIT_CANNOT_LISTEN
    unix_sock = None
    if options.unix_socket is not None:
        try:
            unix_sock = _listen_unix(options.unix_socket)
        except OSError as exc:
            sock.close()
            log.error("cannot listen on the Unix socket %s: %s", options.unix_socket, exc)
            return EXIT_CANNOT_LISTEN
    predictor = spec.predictor
    batching = predictor.server_side_batching
    log.info(
        "listening on %s:%d%s for API %s (%d process(es) x %d thread(s)%s), pid %d",
        options.host,
        sock.getsockname()[1],
        "" if options.unix_socket is None else f" and {options.unix_socket}",
        spec.name,
        predictor.processes_per_replica,
        predictor.threads_per_process,
        ""
        if batching is None
        else f", batches of up to {batching.max_batch_size}, interval {batching.batch_interval:g} s",
        os.getpid(),
    )
    project_dir = options.project_dir.absolute()
    try:
        prepare_interpreter(project_dir, predictor)
    except OSError as exc:
        log.error("cannot enter the project directory %s: %s", project_dir, exc)
        _remove_unix_socket(options.unix_socket)
        return EXIT_PREDICTOR_FAILED
    readiness = Readiness(predictor.processes_per_replica)
    batch_sizes = BatchSizeHistogram() if predictor.server_side_batching is not None else None
    return _Context(
        options=options,
        spec=spec,
        project_dir=project_dir,
        sock=sock,
        unix_sock=unix_sock,
        readiness=readiness,
        batch_sizes=batch_sizes,
    )


@dataclass(frozen=True, slots=True)
class _Context:
    """What every process of the replica starts from (the children inherit it through fork)."""

    options: ReplicaOptions
    spec: ReplicaSpec
    project_dir: Path
    sock: socket.socket
    unix_sock: socket.socket | None  # bound to options.unix_socket
    readiness: Readiness
    batch_sizes: BatchSizeHistogram | None  # shared by the processes, like readiness


class _Shutdown:
    """The first reason to stop wins: a signal (exit 0), a failed load (3), a dead child or parent (1)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.code = EXIT_OK
        self.reason = ""

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, code: int, reason: str) -> None:
        if not self._event.is_set():
            self.code, self.reason = code, reason
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()


def _run_child(context: _Context, index: int, lifeline: Lifeline) -> int:
    return uvloop.run(_serve(context, index=index, children=None, lifeline=lifeline))


async def _serve(
    context: _Context, *, index: int, children: Children | None, lifeline: Lifeline | None
) -> int:
    """One process, phase by phase: start serving, load the predictor, serve, drain; returns the exit code."""
    loop = asyncio.get_running_loop()
    predictor_spec = context.spec.predictor
    shutdown = _Shutdown()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, shutdown.request, EXIT_OK, f"received {signal.Signals(signum).name}")
    if children is not None:
        children.watch(
            partial(_on_child_exit, shutdown=shutdown, processes=predictor_spec.processes_per_replica)
        )
    if lifeline is not None:
        lifeline.watch(lambda: shutdown.request(EXIT_CRASHED, "the replica's parent process died"))

    pool = PredictorPool(predictor_spec.threads_per_process)
    app = ReplicaApp(
        api_name=context.spec.name,
        pool=pool,
        readiness=context.readiness,
        batching=predictor_spec.server_side_batching,
        batch_sizes=context.batch_sizes,
    )
    server = HttpServer(app.dispatch, on_handler_error=_log_handler_error)
    await server.start(sock=context.sock)
    if context.unix_sock is not None:
        await server.start_unix(sock=context.unix_sock)

    load = partial(
        load_predictor,
        project_dir=context.project_dir,
        path=predictor_spec.path,
        config=predictor_spec.config,
    )
    loading = asyncio.ensure_future(pool.run(load))
    started = time.monotonic()
    predictor = await _loaded(loading, shutdown)
    consumer: AsyncConsumer | None = None
    if predictor is not None:
        app.serve(predictor)
        context.readiness.mark_ready()
        consumer = _start_async_consumer(
            context.spec,
            control_url=context.options.control_url,
            worker_id=context.options.replica_id,
            pool=pool,
            predictor=predictor,
        )
        processes = predictor_spec.processes_per_replica
        which = f" (process {index + 1} of {processes})" if processes > 1 else ""
        log.info("predictor ready in %.2f s%s", time.monotonic() - started, which)
    await shutdown.wait()

    # Drain: readiness first (the gateway stops sending), then the server, then work after responses.
    grace = context.options.grace_seconds
    log.info("stopping (%s): draining for up to %.1f s", shutdown.reason, grace)
    context.readiness.start_draining()
    if consumer is not None:
        consumer.stop()
    deadline = loop.time() + grace
    if children is not None:
        children.terminate()
    if not await server.drain(grace):
        log.warning("requests still in flight after %.1f s; closing their connections", grace)
    if consumer is not None and not await consumer.wait(deadline - loop.time()):
        log.warning("async requests still running after %.1f s; they will be leased again elsewhere", grace)
    # While the predictor is still loading there is nothing to wait for: its __init__ cannot be stopped.
    if predictor is not None and not await pool.wait_idle(max(0.0, deadline - loop.time())):
        log.warning("predictor threads still busy after %.1f s", grace)
    if children is not None and not await children.wait(deadline + CHILD_EXIT_MARGIN_SECONDS - loop.time()):
        log.warning("killing the replica's processes that did not stop in time")
        children.kill()
    pool.shutdown()
    return shutdown.code


async def _loaded(loading: asyncio.Future[Predictor], shutdown: _Shutdown) -> Predictor | None:
    """The constructed predictor, or None when it failed (shutdown requested, code 3) or a stop came first."""
    stopping = asyncio.ensure_future(shutdown.wait())
    await asyncio.wait((loading, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        return None
    stopping.cancel()
    try:
        return loading.result()
    except PredictorLoadError as exc:
        log.error("%s", exc)
    except Exception:
        log.exception("loading the predictor failed")
    shutdown.request(EXIT_PREDICTOR_FAILED, "the predictor failed to load")
    return None


def _on_child_exit(index: int, code: int, *, shutdown: _Shutdown, processes: int) -> None:
    if shutdown.requested:
        return
    which = f"process {index + 1} of {processes}"
    if code in (EXIT_OK, -signal.SIGTERM, -signal.SIGINT):
        # Stopped on request (the backend signals the whole process group, which may reach a child before
        # this process has handled its own signal): the replica stops as a whole, as asked.
        log.info("%s stopped on request; stopping the replica", which)
        shutdown.request(EXIT_OK, f"{which} stopped")
        return
    what = "failed to load the predictor" if code == EXIT_PREDICTOR_FAILED else f"exited with code {code}"
    log.error("%s %s; stopping the replica", which, what)
    shutdown.request(code if code > 0 else EXIT_CRASHED, f"{which} stopped")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


def _start_async_consumer(
    spec: ReplicaSpec, *, control_url: str | None, worker_id: str, pool: PredictorPool, predictor: Predictor
) -> AsyncConsumer | None:
    """An AsyncAPI's queue consumer; imported only for that kind (its imports slow every replica's start)."""
    if spec.kind is not ApiKind.ASYNC:
        return None
    from modelport.runtime.async_consumer import start_async_consumer

    return start_async_consumer(
        spec, control_url=control_url, worker_id=worker_id, pool=pool, predictor=predictor
    )


def _listen_unix(path: Path) -> socket.socket:
    # A socket file left by a replica that was killed (SIGKILL leaves it) would make bind fail; any other
    # kind of file there is not ours to remove, and bind reports it.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _remove_unix_socket(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _log_handler_error(exc: BaseException) -> None:
    log.error("unhandled error while serving a request", exc_info=exc)
