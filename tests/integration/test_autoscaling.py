"""Autoscaling on a real cluster: up under load and back down, to zero and back, compute admission.

The autoscaler decides every second here (MODELPORT_AUTOSCALE_INTERVAL=1; Cortex's 10 s is the default) so
that the scenarios take seconds; the windows are the spec's minimum, 10 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import wait_until

pytestmark = pytest.mark.integration

CLUSTER_ENV = {"MODELPORT_AUTOSCALE_INTERVAL": "1"}


def _project(tmp_path: Path, name: str, spec: str) -> Path:
    project = copy_example("sleep", tmp_path / name)
    (project / "modelport.yaml").write_text(spec)
    return project


@contextmanager
def _concurrent_load(cluster: Cluster, path: str, *, clients: int) -> Iterator[list[int]]:
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(cluster.request("POST", path, b"{}").status)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _ready(cluster: Cluster, name: str) -> int:
    return sum(1 for r in cluster.api(name)["replicas"] if r["phase"] == "ready")


def test_scales_up_under_load_and_back_down(cluster: Cluster, tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        "elastic",
        """\
- name: elastic
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
  compute: {cpu: 100m}
  autoscaling:
    min_replicas: 1
    max_replicas: 4
    target_replica_concurrency: 1
    window: 10s
    upscale_stabilization_period: 0s
    downscale_stabilization_period: 5s
""",
    )
    assert cluster.cli("deploy", str(project), "--wait").returncode == 0
    with _concurrent_load(cluster, "/elastic?sleep=0.2", clients=6) as statuses:
        wait_until(
            lambda: _ready(cluster, "elastic") >= 3,
            timeout=60,
            interval=0.5,
            message="the load to add replicas",
        )
    wait_until(
        lambda: cluster.api("elastic")["requested"] == 1 and _ready(cluster, "elastic") == 1,
        timeout=90,
        interval=0.5,
        message="replicas back at min_replicas",
    )
    assert statuses and set(statuses) == {200}

    events = cluster.api("elastic")["autoscaling_events"]
    assert events[0]["from_replicas"] == 1 and events[0]["to_replicas"] > 1
    assert events[-1]["to_replicas"] == 1
    described = cluster.cli("describe", "elastic")
    assert "autoscaling event: 1 -> " in described.stdout


def test_scales_to_zero_and_a_held_request_wakes_it(cluster: Cluster, tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        "napper",
        """\
- name: napper
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
  compute: {cpu: 100m}
  autoscaling: {min_replicas: 0, init_replicas: 1, window: 10s, downscale_stabilization_period: 2s}
""",
    )
    assert cluster.cli("deploy", str(project), "--wait").returncode == 0
    assert cluster.predict("napper", {}).status == 200
    api = cluster.wait_status("napper", "scaled to zero", timeout=60)
    assert api["requested"] == 0
    wait_until(
        lambda: cluster.api("napper")["replicas"] == [], timeout=60, message="the last replica to stop"
    )

    started = time.monotonic()
    answer = cluster.predict("napper", {}, query="sleep=0.01")  # held until a replica is ready
    woke_in = time.monotonic() - started
    assert answer.status == 200, answer.body
    assert answer.body == b"ok"
    assert woke_in < 30
    assert cluster.api("napper")["status"] == "live"


def test_an_api_larger_than_the_machine_is_compute_unavailable(cluster: Cluster, tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    project = _project(
        tmp_path,
        "giant",
        f"""\
- name: giant
  kind: RealtimeAPI
  predictor: {{type: python, path: predictor.py}}
  compute: {{cpu: {cpus * 4}}}
""",
    )
    result = cluster.cli("deploy", str(project), "--wait", "--timeout", "30")
    assert result.returncode == 1
    api = cluster.wait_status("giant", "compute unavailable")
    assert f"cpu: requested {cpus * 4}" in api["reason"]
    assert api["replicas"] == []
    answer = cluster.predict("giant", {})
    assert answer.status == 503
    assert "Retry-After" not in answer.headers
    assert cluster.cli("delete", "giant").returncode == 0


def test_a_replica_that_stops_answering_health_checks_is_replaced(cluster: Cluster, tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        "frozen",
        """\
- name: frozen
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py}
  compute: {cpu: 100m}
  autoscaling: {min_replicas: 2}
""",
    )
    assert cluster.cli("deploy", str(project), "--wait").returncode == 0
    victim = cluster.api("frozen")["replicas"][0]
    os.kill(victim["pid"], signal.SIGSTOP)  # alive, but answers nothing: only /healthz can tell
    try:
        wait_until(
            lambda: (
                victim["replica_id"] not in {r["replica_id"] for r in cluster.api("frozen")["replicas"]}
                and _ready(cluster, "frozen") == 2
            ),
            timeout=60,
            interval=0.5,
            message="the frozen replica to be killed and replaced",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGCONT)
    assert (
        not psutil.pid_exists(victim["pid"]) or psutil.Process(victim["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    assert cluster.predict("frozen", {}).status == 200
