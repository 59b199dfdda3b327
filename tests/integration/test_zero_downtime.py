"""Zero failed requests at ~100 requests/s while an API is redeployed, refreshed or loses a replica (SIGKILL).

A request whose replica dies mid-flight is retried on another replica (realtime predictors are idempotent
by default); `predictor.idempotent: false` turns that off, and then the client sees the failure.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import wait_until

pytestmark = pytest.mark.integration

SPEC = """\
- name: {name}
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    threads_per_process: 8
    idempotent: {idempotent}
    config: {{version: {version}}}
  compute: {{cpu: 100m}}
  autoscaling: {{min_replicas: 2, max_replicas: 2}}
"""


class SteadyLoad:
    """`rate` requests/s from `clients` threads (keep-alive connections), until stopped or `max_seconds`."""

    def __init__(
        self, cluster: Cluster, path: str, *, rate: float = 100, clients: int = 8, max_seconds: float = 90
    ) -> None:
        self.cluster, self.path = cluster, path
        self.interval = clients / rate
        self.max_seconds = max_seconds
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.cluster.gateway_port, timeout=30)
        deadline = time.monotonic() + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                connection.request(
                    "POST", self.path, body=b"{}", headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                body = response.read()
                self.statuses.append(response.status)
                if response.status != 200:
                    self.errors.append(f"{response.status}: {body[:300]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self.statuses.append(0)
                self.errors.append(f"client error: {exc!r}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.cluster.gateway_port, timeout=30)
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        connection.close()

    @contextmanager
    def running(self) -> Iterator[SteadyLoad]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()


def _deploy(cluster: Cluster, tmp_path: Path, *, name: str, version: int, idempotent: bool = True) -> Path:
    project = tmp_path / name
    if not project.exists():
        project = copy_example("sleep", tmp_path)
        project = project.rename(tmp_path / name)
    (project / "modelport.yaml").write_text(
        SPEC.format(name=name, version=version, idempotent=str(idempotent).lower())
    )
    deployed = cluster.cli("deploy", str(project), "--wait")
    assert deployed.returncode == 0, deployed.stderr
    return project


def _ready(cluster: Cluster, name: str) -> list[dict[str, object]]:
    return [r for r in cluster.api(name)["replicas"] if r["phase"] == "ready"]


def _all_new(cluster: Cluster, name: str, before: set[object]) -> bool:
    api = cluster.api(name)
    ready = [r for r in api["replicas"] if r["phase"] == "ready"]
    return (
        api["status"] == "live"
        and len(api["replicas"]) == 2
        and len(ready) == 2
        and not {r["replica_id"] for r in ready} & before
        and all(r["revision"] == api["revision"] for r in ready)
    )


def _redeploy_with_a_changed_config(cluster: Cluster, tmp_path: Path, name: str) -> None:
    (tmp_path / name / "modelport.yaml").write_text(SPEC.format(name=name, version=2, idempotent="true"))
    assert cluster.cli("deploy", str(tmp_path / name)).returncode == 0


def _refresh(cluster: Cluster, tmp_path: Path, name: str) -> None:
    assert cluster.cli("refresh", name).returncode == 0


@pytest.mark.parametrize(
    ("name", "replace_every_replica"),
    [("steady-redeploy", _redeploy_with_a_changed_config), ("steady-refresh", _refresh)],
    ids=["redeploy", "refresh"],
)
def test_every_replica_replaced_under_load(
    cluster: Cluster,
    tmp_path: Path,
    name: str,
    replace_every_replica: Callable[[Cluster, Path, str], None],
) -> None:
    _deploy(cluster, tmp_path, name=name, version=1)
    before = {r["replica_id"] for r in _ready(cluster, name)}
    load = SteadyLoad(cluster, f"/{name}?sleep=0.02")
    with load.running():
        time.sleep(1)
        replace_every_replica(cluster, tmp_path, name)
        wait_until(
            lambda: _all_new(cluster, name, before),
            timeout=60,
            interval=0.2,
            message="every replica replaced, on the current revision",
        )
        time.sleep(1)
    assert len(load.statuses) > 200
    assert load.errors == []


def test_sigkill_mid_flight_under_load_is_retried(cluster: Cluster, tmp_path: Path) -> None:
    _deploy(cluster, tmp_path, name="steady-kill", version=1)
    victim = _ready(cluster, "steady-kill")[0]
    load = SteadyLoad(cluster, "/steady-kill?sleep=0.1")  # ~10 requests in flight at any moment
    with load.running():
        time.sleep(1)
        os.kill(int(str(victim["pid"])), signal.SIGKILL)
        wait_until(
            lambda: (
                len(_ready(cluster, "steady-kill")) == 2
                and victim["replica_id"] not in {r["replica_id"] for r in _ready(cluster, "steady-kill")}
            ),
            timeout=60,
            interval=0.2,
            message="the killed replica to be replaced",
        )
        time.sleep(1)
    assert len(load.statuses) > 200
    assert load.errors == []


def test_a_non_idempotent_api_is_not_retried(cluster: Cluster, tmp_path: Path) -> None:
    _deploy(cluster, tmp_path, name="once-only", version=1, idempotent=False)
    victim = _ready(cluster, "once-only")[0]
    load = SteadyLoad(cluster, "/once-only?sleep=0.5", rate=40)  # ~20 in flight, ~10 on the victim
    with load.running():
        time.sleep(1.5)
        os.kill(int(str(victim["pid"])), signal.SIGKILL)
        time.sleep(1)
    failed = [e for e in load.errors if e.startswith("502")]
    assert failed, "requests in flight on the killed replica must fail rather than run twice"
    assert all("not retried" in e or "closed the connection" in e for e in failed)
