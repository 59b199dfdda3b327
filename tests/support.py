"""Helpers shared by the unit and integration tests: free loopback ports, readiness polling, HTTP replies
and project files on disk. Imported by test modules only; nothing here knows modelport's internals.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One API as a user writes it; test modules append more keys or APIs to this text.
IRIS_SPEC = """\
- name: iris
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    config: {threshold: 0.5}
"""


def free_port() -> int:
    """A loopback port nobody listens on right now (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, message: str, timeout: float = 15, interval: float = 0.02
) -> Any:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def write_files(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write each relative path's text (or bytes) under `root`, creating folders; returns `root`."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
