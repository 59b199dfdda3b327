"""How a replica process is invoked: its options, the flags that carry them and the exit codes it returns.

`server.main` parses argv with `parse_args`; the CLI's hidden `modelport replica` command may reuse it, and
the backends read the exit codes to tell a broken predictor from a crash.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_CRASHED = 1  # a process of the replica died unexpectedly (or its parent did)
EXIT_USAGE = 2  # bad flags or an unreadable spec file (argparse uses 2 as well)
EXIT_PREDICTOR_FAILED = 3  # the user's predictor could not be imported or constructed: traceback on stderr
EXIT_CANNOT_LISTEN = (
    4  # host:port could not be bound (e.g. taken since the backend picked it): retry elsewhere
)


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    project_dir: Path
    spec_path: Path  # JSON of a resolved ApiSpec
    host: str
    port: int
    replica_id: str
    grace_seconds: float  # how long in-flight requests may take to finish after SIGTERM


def parse_args(argv: list[str]) -> ReplicaOptions:
    """Parse `--project-dir D --spec F --host H --port P --replica-id ID --grace S`; exits 2 if bad."""
    parser = argparse.ArgumentParser(prog="modelport replica", description="Serve one replica of an API.")
    parser.add_argument("--project-dir", required=True, type=Path, help="the project root")
    parser.add_argument("--spec", required=True, type=Path, help="the resolved ApiSpec as JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", required=True, type=_port)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--grace", type=_seconds, default=30.0, help="drain timeout after SIGTERM (s)")
    args = parser.parse_args(argv)
    return ReplicaOptions(
        project_dir=args.project_dir.absolute(),
        spec_path=args.spec.absolute(),
        host=args.host,
        port=args.port,
        replica_id=args.replica_id,
        grace_seconds=args.grace,
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
