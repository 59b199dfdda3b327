"""SIGKILL of the local daemon in the middle of a batch job and with async requests queued: after a restart
the job resumes and completes with every item once, and every accepted async request is answered."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration


def _submit(cluster: Cluster, api: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = cluster.request(
        "POST", f"/{api}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert reply.status == 200, reply.body
    result: dict[str, Any] = reply.json()
    return result


def _get(cluster: Cluster, path: str) -> dict[str, Any]:
    reply = cluster.request("GET", path)
    assert reply.status == 200, reply.body
    result: dict[str, Any] = reply.json()
    return result


def test_a_killed_daemon_resumes_jobs_and_answers_accepted_async_requests(tmp_path: Path) -> None:
    cluster = Cluster(
        home=tmp_path / "home",
        gateway_port=free_port(),
        control_port=free_port(),
        extra_env={"MODELPORT_JOB_VISIBILITY": "2", "MODELPORT_AUTOSCALE_INTERVAL": "1"},
    )
    batch = copy_example("batch-sum", tmp_path)
    slow_async = copy_example("async-iris", tmp_path)
    spec = slow_async / "modelport.yaml"
    spec.write_text(spec.read_text().replace("seconds_per_prediction: 0", "seconds_per_prediction: 0.3"))
    results = tmp_path / "results"
    daemon: psutil.Process | None = None
    try:
        assert cluster.cli("deploy", str(batch)).returncode == 0
        assert cluster.cli("deploy", str(slow_async)).returncode == 0
        daemon = psutil.Process(cluster.daemon_pid())
        items = [[index, 1] for index in range(30)]
        job = _submit(
            cluster,
            "batch-sum",
            {
                "workers": 2,
                "item_list": {"items": items, "batch_size": 2},
                "config": {"results_dir": str(results), "seconds_per_batch": 0.3},
            },
        )
        sample = json.loads((slow_async / "sample.json").read_text())
        accepted = [_submit(cluster, "async-iris", sample)["id"] for _ in range(6)]
        wait_until(
            lambda: _get(cluster, f"/batch-sum/{job['job_id']}")["batch_metrics"]["succeeded"] >= 2,
            message="the job to make progress",
            timeout=60,
        )

        children = daemon.children(recursive=True)
        daemon.kill()  # SIGKILL: workers and replicas are orphaned mid-batch
        daemon.wait(10)
        started = cluster.cli("cluster", "up")
        assert started.returncode == 0, started.stderr
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []  # the restart reaped what the dead daemon left
        daemon = psutil.Process(cluster.daemon_pid())

        def ended() -> dict[str, Any] | None:
            status = _get(cluster, f"/batch-sum/{job['job_id']}")
            return status if status["status"] != "running" else None

        done = wait_until(ended, message="the job to end after the restart", timeout=120, interval=0.2)
        assert done["status"] == "succeeded", done
        lines = (results / job["job_id"] / "results.jsonl").read_text().splitlines()
        seen = [(json.loads(line)["batch_id"], json.loads(line)["index"]) for line in lines]
        assert len(seen) == 30 and len(set(seen)) == 30

        for request_id in accepted:
            answer = wait_until(
                functools.partial(_answered, cluster, request_id),
                message=f"async request {request_id} after the restart",
                timeout=120,
            )
            assert answer["result"] == {"label": "setosa"}
        assert cluster.cli("cluster", "down").returncode == 0
        daemon.wait(60)
    finally:
        if daemon is not None and daemon.is_running():
            for child in daemon.children(recursive=True):
                child.kill()
            daemon.kill()
        _kill_leftovers(cluster)


def _answered(cluster: Cluster, request_id: str) -> dict[str, Any] | None:
    status = _get(cluster, f"/async-iris/{request_id}")
    assert status["status"] != "failed", status
    return status if status["status"] == "completed" else None


def _kill_leftovers(cluster: Cluster) -> None:
    """Only this test's processes: those whose command line names this cluster's home or its snapshots."""
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if str(cluster.home) in command and process.pid != os.getpid():
            process.kill()
