"""A real local cluster per test module: its own home, free ports, started and stopped through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import HttpReply, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class Cluster:
    home: Path
    gateway_port: int
    control_port: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MODELPORT_HOME=str(self.home),
            MODELPORT_GATEWAY_PORT=str(self.gateway_port),
            MODELPORT_CONTROL_PORT=str(self.control_port),
            **self.extra_env,
        )
        return env

    def cli(
        self, *args: str, input: bytes | None = None, timeout: float = 120, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modelport", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            input=input.decode() if input is not None else None,
        )

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> HttpReply:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gateway_port}{path}", data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return HttpReply(response.status, dict(response.headers.items()), response.read())
        except urllib.error.HTTPError as exc:
            return HttpReply(exc.code, dict(exc.headers.items()), exc.read())

    def predict(self, api: str, payload: Any, query: str = "") -> HttpReply:
        return self.request(
            "POST",
            f"/{api}{'?' + query if query else ''}",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"},
        )

    def api(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("get", name)
        return result

    def wait_status(self, name: str, status: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            api = self.api(name)
            return api if api["status"] == status else None

        result: dict[str, Any] = wait_until(
            check, timeout=timeout, message=f"{name} to be {status}", interval=0.2
        )
        return result

    def daemon_pid(self) -> int:
        return int(json.loads((self.home / "daemon.pid").read_text())["pid"])


def copy_example(name: str, destination: Path) -> Path:
    target = destination / name
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster per test module; a module's CLUSTER_ENV (a dict) adds settings, e.g. a short autoscale
    interval."""
    home = tmp_path_factory.mktemp("home")
    extra_env = dict(getattr(request.module, "CLUSTER_ENV", {}))
    instance = Cluster(home=home, gateway_port=free_port(), control_port=free_port(), extra_env=extra_env)
    started = instance.cli("cluster", "up")
    assert started.returncode == 0, started.stderr
    daemon = psutil.Process(instance.daemon_pid())
    try:
        yield instance
    finally:
        descendants = daemon.children(recursive=True)
        stopped = instance.cli("cluster", "down")
        assert stopped.returncode == 0, stopped.stderr
        _gone, alive = psutil.wait_procs([daemon, *descendants], timeout=30)
        for process in alive:
            process.kill()
        assert not alive, f"processes left after cluster down: {alive}"


@pytest.fixture(scope="module")
def iris_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_example("iris-classifier", tmp_path_factory.mktemp("projects"))
    subprocess.run([sys.executable, "trainer.py"], cwd=project, check=True, capture_output=True)
    return project
