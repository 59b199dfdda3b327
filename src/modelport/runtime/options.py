"""How the runtime's processes are invoked: their options, the flags that carry them and their exit codes.

`server.main` parses a replica's argv with `parse_args`, `worker.main` a job worker's with
`parse_worker_args` (the CLI's hidden `modelport replica` and `modelport worker` commands); the backends
read the exit codes to tell a broken predictor from a crash.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_CRASHED = 1  # a process of the replica died unexpectedly (or its parent did)
EXIT_USAGE = 2  # bad flags or an unreadable spec file (argparse uses 2 as well)
EXIT_PREDICTOR_FAILED = 3  # the user's predictor could not be imported or constructed: traceback on stderr
EXIT_CANNOT_LISTEN = (
    4  # host:port (or the --uds path) could not be bound (e.g. taken since the backend picked it)
)
# sockaddr_un's sun_path: 108 bytes on Linux, 104 on macOS, the terminating NUL included.
MAX_UNIX_SOCKET_PATH_BYTES = 103


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    project_dir: Path
    spec_path: Path  # JSON of a resolved ApiSpec
    host: str
    port: int
    replica_id: str
    grace_seconds: float  # how long in-flight requests may take to finish after SIGTERM
    # The control API to consume an AsyncAPI's queue from (docs/jobs.md); None: serve HTTP only.
    control_url: str | None = None
    # Also serve on this Unix domain socket (the local gateway's cheaper path); removed on exit.
    unix_socket: Path | None = None


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """A batch job's worker or a task run (`modelport worker`)."""

    project_dir: Path
    spec_path: Path  # JSON of a resolved ApiSpec (a BatchAPI or a TaskAPI)
    job_id: str
    worker_id: str
    control_url: str
    retry_budget_seconds: float  # the control API may be away this long
    grace_seconds: float = 30.0  # how long the running batch may take to finish after SIGTERM


def parse_args(argv: list[str]) -> ReplicaOptions:
    """Parse `--project-dir D --spec F --host H --port P --replica-id ID --grace S [--control-url URL]
    [--uds PATH]`; exits 2 if bad."""
    parser = argparse.ArgumentParser(prog="modelport replica", description="Serve one replica of an API.")
    parser.add_argument("--project-dir", required=True, type=Path, help="the project root")
    parser.add_argument("--spec", required=True, type=Path, help="the resolved ApiSpec as JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=_port)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--grace", type=_seconds, default=30.0, help="drain timeout after SIGTERM (s)")
    parser.add_argument(
        "--control-url",
        type=_control_url,
        default=None,
        help="consume the AsyncAPI queue from this control API",
    )
    parser.add_argument(
        "--uds",
        type=_unix_socket_path,
        default=None,
        help="also serve on a Unix domain socket at this path (created, and removed on exit)",
    )
    args = parser.parse_args(argv)
    return ReplicaOptions(
        project_dir=args.project_dir.absolute(),
        spec_path=args.spec.absolute(),
        host=args.host,
        port=args.port,
        replica_id=args.replica_id,
        grace_seconds=args.grace,
        control_url=args.control_url,
        unix_socket=None if args.uds is None else args.uds.absolute(),
    )


def parse_worker_args(argv: list[str]) -> WorkerOptions:
    """Parse `--project-dir D --spec F --job-id ID --worker-id WID --control-url URL [--grace S]
    [--retry-budget S]`; exits 2 if bad."""
    from modelport.runtime.queue_client import DEFAULT_RETRY_BUDGET_SECONDS

    parser = argparse.ArgumentParser(
        prog="modelport worker", description="Run the batches of one job, or one task, of an API."
    )
    parser.add_argument("--project-dir", required=True, type=Path, help="the project root")
    parser.add_argument("--spec", required=True, type=Path, help="the resolved ApiSpec as JSON")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--control-url", required=True, type=_control_url, help="e.g. http://127.0.0.1:8889")
    parser.add_argument(
        "--grace", type=_seconds, default=30.0, help="how long the running batch may finish after SIGTERM (s)"
    )
    parser.add_argument(
        "--retry-budget",
        type=_seconds,
        default=DEFAULT_RETRY_BUDGET_SECONDS,
        help="how long the control API may be unreachable before the worker exits 1 (s)",
    )
    args = parser.parse_args(argv)
    return WorkerOptions(
        project_dir=args.project_dir.absolute(),
        spec_path=args.spec.absolute(),
        job_id=args.job_id,
        worker_id=args.worker_id,
        control_url=args.control_url,
        grace_seconds=args.grace,
        retry_budget_seconds=args.retry_budget,
    )


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {port}")
    return port


def _seconds(raw: str) -> float:
    seconds = float(raw)
    if not seconds >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {raw}")
    return seconds


def _unix_socket_path(raw: str) -> Path:
    path = Path(raw).absolute()
    size = len(os.fsencode(path))
    if size > MAX_UNIX_SOCKET_PATH_BYTES:
        raise argparse.ArgumentTypeError(
            f"the Unix socket path {path} is {size} bytes long; the limit is {MAX_UNIX_SOCKET_PATH_BYTES}: "
            "choose a shorter path"
        )
    return path


def _control_url(raw: str) -> str:
    # Imported here: the queue client (http.client, email) is not needed to start a realtime replica.
    from modelport.runtime.queue_client import parse_control_url

    try:
        return parse_control_url(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
