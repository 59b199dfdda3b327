"""One job worker's process: a BatchAPI job's batches, or a TaskAPI's task, leased from the control API.

Called by the CLI's hidden `modelport worker` command (`main`, or `run_worker` with `WorkerOptions`), which
the backends start once per worker of a job. Phases: prepare the interpreter -> (batch: GET the job spec) ->
construct the user's class on the user-code thread -> lease, run, ack or fail, until the control API says
`stop` (docs/jobs.md). Exit codes (`runtime.options`): 0 the job ended or SIGTERM, 3 the user's class failed
to load, 1 the control API was unreachable past the retry budget (or refused the worker), 2 bad flags/spec.

User code runs on one daemon thread, so SIGTERM never interrupts it: the main thread notes the signal, lets
the running item finish for up to `--grace` seconds (then gives it back with `fail` and exits), and leases
nothing more.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import Any

from pydantic import ValidationError

from modelport.runtime.family import exit_now
from modelport.runtime.heartbeat import Heartbeat
from modelport.runtime.interpreter import configure_logging, prepare_interpreter, threads_would_block_exit
from modelport.runtime.job_classes import BatchPredictor, TaskRunner, load_batch_predictor, load_task
from modelport.runtime.options import (
    EXIT_CRASHED,
    EXIT_OK,
    EXIT_PREDICTOR_FAILED,
    EXIT_USAGE,
    WorkerOptions,
    parse_worker_args,
)
from modelport.runtime.predictor import PredictorLoadError, user_traceback
from modelport.runtime.queue_client import (
    BatchLease,
    CompletionLease,
    ControlApiError,
    ControlUnreachableError,
    FailOutcome,
    LeaseOutcome,
    QueueClient,
    Stop,
    TaskLease,
    Wait,
    failure_error,
)
from modelport.spec.model import ApiSpec
from modelport.types import ApiKind

log = logging.getLogger("modelport.runtime")

MIN_WAIT_SECONDS = 0.05  # a `wait` lease's retry_after below this is raised to it (no busy loop)

WorkLease = BatchLease | TaskLease | CompletionLease
UserCode = BatchPredictor | TaskRunner


def main(argv: list[str]) -> int:
    """`modelport worker` flags -> `run_worker`."""
    return run_worker(parse_worker_args(argv))


def run_worker(options: WorkerOptions) -> int:
    """Work on the job until it ends or SIGTERM/SIGINT; returns the exit code (see the module docstring).

    Exits here instead of returning when a thread would keep the interpreter alive (a batch abandoned after
    the grace period, a non-daemon thread the user started).
    """
    configure_logging(f"worker {options.worker_id}")
    code = _run(options)
    if threads_would_block_exit():
        log.warning("threads of the user's code are still running; exiting without waiting for them")
        exit_now(code)
    return code


def _run(options: WorkerOptions) -> int:
    try:
        spec = ApiSpec.model_validate_json(options.spec_path.read_bytes())
    except (OSError, ValidationError) as exc:
        log.error("cannot read the API spec %s: %s", options.spec_path, exc)
        return EXIT_USAGE
    if spec.kind not in (ApiKind.BATCH, ApiKind.TASK):
        log.error(
            "API %s is a %s: `modelport worker` runs the jobs of a %s or a %s",
            spec.name,
            spec.kind,
            ApiKind.BATCH,
            ApiKind.TASK,
        )
        return EXIT_USAGE
    try:
        prepare_interpreter(options.project_dir, spec.predictor)
    except OSError as exc:
        log.error("cannot enter the project directory %s: %s", options.project_dir, exc)
        return EXIT_PREDICTOR_FAILED
    stopping = _Stopping(options.grace_seconds)
    stopping.install()
    client = QueueClient(options.control_url, retry_budget=options.retry_budget_seconds)
    worker = _Worker(options=options, spec=spec, client=client, stopping=stopping, user=_UserThread())
    try:
        return worker.run()
    except (ControlUnreachableError, ControlApiError) as exc:
        log.error("%s; exiting", exc)
        return EXIT_CRASHED
    finally:
        client.close()


class _Worker:
    """The lease loop of one job, around the user's constructed class."""

    def __init__(
        self,
        *,
        options: WorkerOptions,
        spec: ApiSpec,
        client: QueueClient,
        stopping: _Stopping,
        user: _UserThread,
    ) -> None:
        self._options = options
        self._spec = spec
        self._job_id = options.job_id
        self._client = client
        self._stopping = stopping
        self._user = user

    def run(self) -> int:
        log.info(
            "worker %s of %s %s, job %s (control API %s)",
            self._options.worker_id,
            self._spec.kind,
            self._spec.name,
            self._job_id,
            self._client.control_url,
        )
        loaded = self._load()
        if isinstance(loaded, int):
            return loaded
        while not self._stopping.requested:
            lease = self._client.lease_job(self._job_id, worker_id=self._options.worker_id)
            if isinstance(lease, Stop):
                log.info("the job has ended (%s); exiting", lease.reason)
                return EXIT_OK
            if isinstance(lease, Wait):
                self._stopping.wait(max(lease.retry_after, MIN_WAIT_SECONDS))
                continue
            if not self._work(loaded, lease):
                return EXIT_OK
        log.info("stopping (%s): leasing no more", self._stopping.reason)
        return EXIT_OK

    def _load(self) -> UserCode | int:
        """The constructed user class, or the exit code: 3 when it failed to load, 0 when stopped first."""
        predictor = self._spec.predictor
        project_dir = self._options.project_dir
        load: Callable[[], UserCode]
        if self._spec.kind is ApiKind.BATCH:
            job_spec = self._client.job_spec(self._job_id)
            load = partial(
                load_batch_predictor, project_dir=project_dir, path=predictor.path, job_spec=job_spec
            )
        else:
            load = partial(load_task, project_dir=project_dir, path=predictor.path)
        started = time.monotonic()
        future = self._user.submit(load)
        if not self._stopping.wait_for(future):
            log.warning("stopping (%s) while the user's class was still loading", self._stopping.reason)
            return EXIT_OK
        exc = future.exception()
        if isinstance(exc, PredictorLoadError):
            log.error("%s", exc)
            return EXIT_PREDICTOR_FAILED
        if exc is not None:
            log.error("loading %s failed:\n%s", predictor.path, user_traceback(exc))
            return EXIT_PREDICTOR_FAILED
        log.info("%s loaded in %.2f s", predictor.path, time.monotonic() - started)
        if self._stopping.requested:
            log.info("stopping (%s) before leasing anything", self._stopping.reason)
            return EXIT_OK
        result: UserCode = future.result()
        return result

    def _work(self, code: UserCode, lease: WorkLease) -> bool:
        """Run one leased item and settle it; False when it was abandoned (stopping past the grace)."""
        item = _item_for(code, lease)
        if isinstance(item, str):  # a lease this kind of worker cannot run: give it back with the reason
            outcome = self._client.fail_job(self._job_id, lease.token, error=item)
            log.error("%s (%s)", item, outcome)
            return True
        extend = partial(self._client.extend_job, self._job_id, lease.token)
        started = time.monotonic()
        with Heartbeat.for_visibility(
            extend, visibility_seconds=lease.visibility_seconds, what=item.what
        ) as beat:
            future = self._user.submit(item.run)
            finished = self._stopping.wait_for(future)
        seconds = time.monotonic() - started
        if not finished:
            error = (
                f"abandoned after {seconds:.1f} s: the worker was stopped ({self._stopping.reason}) and "
                f"{item.what} did not finish within its {self._options.grace_seconds:g} s grace period"
            )
            outcome = self._client.fail_job(self._job_id, lease.token, error=error)
            log.warning("%s (%s)", error, outcome)
            return False
        if beat.lost:
            log.warning(
                "%s finished in %.3f s, but its lease was lost meanwhile: leaving it to its new worker",
                item.what,
                seconds,
            )
            return True
        exc = future.exception()
        if exc is not None:
            self._report_failure(lease, item, exc, seconds=seconds)
        elif self._client.ack_job(self._job_id, lease.token, seconds=seconds) is LeaseOutcome.LOST:
            log.warning("%s finished in %.3f s, but its lease was lost before the ack", item.what, seconds)
        else:
            log.info("%s in %.3f s", item.done, seconds)
        return True

    def _report_failure(self, lease: WorkLease, item: _Item, exc: BaseException, *, seconds: float) -> None:
        outcome = self._client.fail_job(self._job_id, lease.token, error=failure_error(exc))
        what = {
            FailOutcome.REQUEUED: "it will be retried",
            FailOutcome.DEAD: "no attempts left",
            FailOutcome.STALE: "its lease had been lost",
        }[outcome]
        log.error("%s failed after %.3f s (%s):\n%s", item.what, seconds, what, user_traceback(exc))


@dataclass(frozen=True, slots=True)
class _Item:
    """A leased item as user code to run, and how to name it in the logs."""

    run: Callable[[], None]
    what: str  # "batch 3 (10 items)"
    done: str  # "batch 3: 10 item(s)"


def _item_for(code: UserCode, lease: WorkLease) -> _Item | str:
    """The user code to run for `lease`, or why this worker cannot run it."""
    if isinstance(code, BatchPredictor):
        if isinstance(lease, BatchLease):
            count = len(lease.items)
            return _Item(
                run=partial(code.predict, lease.items, batch_id=lease.batch_id),
                what=f"batch {lease.batch_id} ({count} item(s), attempt {lease.receive_count})",
                done=f"batch {lease.batch_id}: {count} item(s)",
            )
        if isinstance(lease, CompletionLease):
            ran = "on_job_complete ran" if code.has_on_job_complete else "no on_job_complete to run"
            return _Item(run=code.on_job_complete, what="on_job_complete", done=ran)
        return f"a {ApiKind.BATCH} worker was leased a task item; it runs batches only"
    if isinstance(lease, TaskLease):
        return _Item(
            run=partial(code.run, lease.config),
            what=f"the task (attempt {lease.receive_count})",
            done="the task succeeded",
        )
    return f"a {ApiKind.TASK} worker was leased a {type(lease).__name__}; it runs its task only"


class _UserThread:
    """One daemon thread that runs every piece of user code in order (its __init__, then each item)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="user-code", daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future

    def _serve(self) -> None:
        while True:
            fn, future = self._queue.get()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(fn())
            except BaseException as exc:  # a SystemExit from user code is the item's failure
                future.set_exception(exc)


class _Stopping:
    """SIGTERM/SIGINT: stop leasing; the running item may finish within the grace period (a second signal
    ends the grace at once). Handlers run on the main thread, which only ever waits here or on the network."""

    def __init__(self, grace_seconds: float) -> None:
        self._grace = grace_seconds
        self._requested = threading.Event()
        self._wake = threading.Event()  # set by a signal or by the awaited item finishing
        self._abandon_at: float | None = None
        self.reason = ""

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if a stop is requested."""
        self._requested.wait(seconds)

    def wait_for(self, future: concurrent.futures.Future[Any]) -> bool:
        """Wait for `future`; False if a stop was requested and the grace period ran out first."""
        future.add_done_callback(lambda _: self._wake.set())
        while not future.done():
            timeout = None if self._abandon_at is None else self._abandon_at - time.monotonic()
            if timeout is not None and timeout <= 0:
                return False
            self._wake.wait(timeout)
            self._wake.clear()
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._requested.is_set():
            log.warning("received %s again: abandoning the running item", name)
            self._abandon_at = now
        else:
            self.reason = f"received {name}"
            log.info("received %s: finishing the running item (up to %g s), then exiting", name, self._grace)
            self._abandon_at = now + self._grace
            self._requested.set()
        self._wake.set()
