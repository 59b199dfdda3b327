"""Preparing this interpreter for user code (the spec's env, the import path, the working directory,
logging), and telling whether user threads would keep it from exiting.

Called first by every process that runs user code: `runtime.server` (a replica) and `runtime.worker` (a batch
worker or a task), so that the same project behaves the same in each.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


class InterpreterSettings(Protocol):
    """What of the spec's `predictor` shapes the interpreter (a PredictorSpec or the replica's view of it)."""

    @property
    def env(self) -> Mapping[str, str]: ...

    @property
    def python_path(self) -> str | None: ...


def prepare_interpreter(project_dir: Path, predictor: InterpreterSettings) -> None:
    """Before any user code: the spec's env, the import path, and the project as working directory."""
    os.environ.update(predictor.env)
    paths = [str(project_dir)]
    if predictor.python_path is not None:
        paths.insert(0, str(project_dir / predictor.python_path))
    sys.path[:0] = paths
    os.chdir(project_dir)


def configure_logging(label: str) -> None:
    """Every log line (ours and the user's `logging`) on stderr as `<time> <level> [<label>] <message>`."""
    # Logs (stderr) and the user's print()s (stdout) usually go to a file: flush each line as it is written.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    handler = logging.StreamHandler(sys.stderr)
    shown = label.replace("%", "%%")
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{shown}] %(message)s"))
    root = logging.getLogger()  # the user's own logging shows up in the same format
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def threads_would_block_exit() -> bool:
    """Whether a non-daemon thread (user code that cannot be interrupted) would keep the interpreter alive."""
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())
