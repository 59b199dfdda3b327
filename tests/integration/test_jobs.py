"""Batch jobs, tasks and async requests on a real local cluster: real worker processes, real SIGKILLs, the
durable queue in the cluster's SQLite file; nothing accepted may be lost."""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import wait_until

pytestmark = pytest.mark.integration

# Leases live 2 s between heartbeats: a killed worker's batch is retried quickly.
CLUSTER_ENV = {"MODELPORT_JOB_VISIBILITY": "2", "MODELPORT_AUTOSCALE_INTERVAL": "1"}
ENDED = {"succeeded", "completed_with_failures", "failed", "worker_error", "timed_out", "stopped"}


@pytest.fixture(scope="module")
def batch_sum(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    project = copy_example("batch-sum", tmp_path_factory.mktemp("projects"))
    deployed = cluster.cli("deploy", str(project))
    assert deployed.returncode == 0, deployed.stderr
    yield "batch-sum"


def submit(cluster: Cluster, api: str, body: dict[str, Any], query: str = "") -> dict[str, Any]:
    reply = cluster.request(
        "POST",
        f"/{api}{'?' + query if query else ''}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    assert reply.status == 200, reply.body
    result: dict[str, Any] = reply.json()
    return result


def job_status(cluster: Cluster, api: str, job_id: str) -> dict[str, Any]:
    reply = cluster.request("GET", f"/{api}/{job_id}")
    assert reply.status == 200, reply.body
    result: dict[str, Any] = reply.json()
    return result


def wait_for_end(cluster: Cluster, api: str, job_id: str, timeout: float = 90) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = job_status(cluster, api, job_id)
        return job if job["status"] in ENDED else None

    result: dict[str, Any] = wait_until(ended, message=f"job {job_id} to end", timeout=timeout, interval=0.1)
    return result


def workers_of(cluster: Cluster, job_id: str) -> list[psutil.Process]:
    daemon = psutil.Process(cluster.daemon_pid())
    found = []
    for process in daemon.children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "worker" in command and job_id in command:
            found.append(process)
    return found


def results_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def numbers(count: int) -> list[list[int]]:
    return [[index, index, 1] for index in range(count)]


def test_batch_job_processes_every_item_once_and_runs_on_job_complete(
    cluster: Cluster, batch_sum: str, tmp_path: Path
) -> None:
    items = numbers(100)
    job = submit(
        cluster,
        batch_sum,
        {
            "workers": 2,
            "item_list": {"items": items, "batch_size": 7},
            "config": {"results_dir": str(tmp_path)},
        },
    )
    assert job["status"] == "running" and job["total_batch_count"] == 15

    done = wait_for_end(cluster, batch_sum, job["job_id"])

    assert done["status"] == "succeeded", done
    assert done["batch_metrics"]["succeeded"] == 15 and done["batch_metrics"]["failed"] == 0
    assert done["batch_metrics"]["avg_time_per_batch"] is not None
    results = results_of(tmp_path / job["job_id"])
    assert sorted(r["sum"] for r in results) == sorted(sum(item) for item in items)
    assert len({(r["batch_id"], r["index"]) for r in results}) == 100
    summary = json.loads((tmp_path / job["job_id"] / "summary.json").read_text())
    assert summary == {"items": 100, "sum_of_sums": float(sum(map(sum, items))), "batches_written": 15}
    # The CLI shows the same job; its workers' logs are readable; the workers have exited.
    shown = cluster.cli_json("get", batch_sum, job["job_id"])
    assert shown["status"] == "succeeded" and shown["job_id"] == job["job_id"]
    listed = cluster.cli_json("get", batch_sum)
    assert job["job_id"] in [j["job_id"] for j in listed["jobs"]]
    logs = cluster.cli("logs", batch_sum, job["job_id"], "--no-follow")
    assert logs.returncode == 0 and "batch" in logs.stdout, logs.stderr
    wait_until(lambda: not workers_of(cluster, job["job_id"]), message="the workers to exit")


def test_a_sigkilled_worker_batch_is_retried_and_every_item_appears_once(
    cluster: Cluster, batch_sum: str, tmp_path: Path
) -> None:
    items = numbers(24)
    job = submit(
        cluster,
        batch_sum,
        {
            "workers": 2,
            "item_list": {"items": items, "batch_size": 3},
            "config": {"results_dir": str(tmp_path), "seconds_per_batch": 0.5},
        },
    )
    job_id = job["job_id"]
    wait_until(
        lambda: job_status(cluster, batch_sum, job_id)["batch_metrics"]["in_progress"] > 0,
        message="a worker to hold a lease",
    )
    victim = wait_until(lambda: workers_of(cluster, job_id), message="the workers' processes")[0]
    os.killpg(victim.pid, signal.SIGKILL)

    done = wait_for_end(cluster, batch_sum, job_id)

    assert done["status"] == "succeeded", done
    assert done["worker_counts"]["failed"] >= 1
    results = results_of(tmp_path / job_id)
    assert len(results) == 24
    assert len({(r["batch_id"], r["index"]) for r in results}) == 24


def test_a_batch_that_always_raises_becomes_a_dead_letter(
    cluster: Cluster, batch_sum: str, tmp_path: Path
) -> None:
    items: list[Any] = [[1, 2], [3], "not numbers", [4], [5, 6], [7]]
    job = submit(
        cluster,
        batch_sum,
        {
            "workers": 1,
            "item_list": {"items": items, "batch_size": 2},
            "config": {"results_dir": str(tmp_path)},
            "max_receive_count": 2,
        },
    )

    done = wait_for_end(cluster, batch_sum, job["job_id"])

    assert done["status"] == "completed_with_failures", done
    assert done["batch_metrics"] == {**done["batch_metrics"], "succeeded": 2, "failed": 1}
    [failed] = done["failed_batches"]
    assert failed["batch_id"] == "1" and failed["attempts"] == 2
    assert "is not a list of numbers" in failed["error"]
    assert "1 of 3 batches failed: 1" in done["reason"]
    # on_job_complete still ran, over the batches that succeeded.
    assert json.loads((tmp_path / job["job_id"] / "summary.json").read_text())["items"] == 4


def test_a_job_past_its_timeout_is_timed_out_and_its_workers_stop(
    cluster: Cluster, batch_sum: str, tmp_path: Path
) -> None:
    job = submit(
        cluster,
        batch_sum,
        {
            "workers": 2,
            "item_list": {"items": numbers(10), "batch_size": 1},
            "config": {"results_dir": str(tmp_path), "seconds_per_batch": 30},
            "timeout": 2,
        },
    )
    wait_until(lambda: workers_of(cluster, job["job_id"]), message="the workers to start")

    done = wait_for_end(cluster, batch_sum, job["job_id"])

    assert done["status"] == "timed_out" and "timed out after 2 s" in done["reason"]
    wait_until(
        lambda: not workers_of(cluster, job["job_id"]), message="the workers to be stopped", timeout=40
    )
    # Nothing vanished: every batch not done is recorded as failed, with the reason.
    assert done["batch_metrics"]["failed"] + done["batch_metrics"]["succeeded"] == 10


def test_delete_stops_a_running_job(cluster: Cluster, batch_sum: str, tmp_path: Path) -> None:
    job = submit(
        cluster,
        batch_sum,
        {
            "workers": 1,
            "item_list": {"items": numbers(5), "batch_size": 1},
            "config": {"results_dir": str(tmp_path), "seconds_per_batch": 30},
        },
    )
    wait_until(lambda: workers_of(cluster, job["job_id"]), message="the worker to start")

    stopped = cluster.cli("delete", batch_sum, job["job_id"])

    assert stopped.returncode == 0, stopped.stderr
    assert job_status(cluster, batch_sum, job["job_id"])["status"] == "stopped"
    wait_until(lambda: not workers_of(cluster, job["job_id"]), message="the worker to be stopped", timeout=40)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"workers": 1, "item_list": {"items": [], "batch_size": 1}}, "item_list.items"),
        ({"workers": 1, "item_list": {"items": [[1]], "batch_size": 0}}, "item_list.batch_size"),
        ({"workers": 1, "item_list": {"items": [[1]], "batch_size": 1}, "itme": 1}, "itme"),
        ({"item_list": {"items": [[1]], "batch_size": 1}}, "workers"),
        (
            {"workers": 1, "delimited_files": {"paths": ["/nonexistent/modelport/*.jsonl"], "batch_size": 1}},
            "/nonexistent/modelport/*.jsonl",
        ),
    ],
)
def test_bad_job_bodies_are_400_with_the_field_and_enqueue_nothing(
    cluster: Cluster, batch_sum: str, body: dict[str, Any], message: str
) -> None:
    before = len(cluster.cli_json("get", batch_sum)["jobs"])

    reply = cluster.request(
        "POST", f"/{batch_sum}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )

    assert reply.status == 400, reply.body
    assert message in reply.json()["error"]
    assert len(cluster.cli_json("get", batch_sum)["jobs"]) == before


def test_a_20_mib_job_body_is_refused(cluster: Cluster, batch_sum: str) -> None:
    items = [[1.0] * 64] * 60_000
    body = json.dumps({"workers": 1, "item_list": {"items": items, "batch_size": 100}}).encode()
    assert len(body) > 20 * 2**20 * 0.9

    reply = cluster.request("POST", f"/{batch_sum}", body, {"Content-Type": "application/json"})

    assert reply.status == 400 and "limited to 10 MiB" in reply.json()["error"]


def test_dry_run_lists_the_files_and_enqueues_nothing(
    cluster: Cluster, batch_sum: str, tmp_path: Path
) -> None:
    for name in ("a.jsonl", "b.jsonl", "skip.txt"):
        (tmp_path / name).write_text("[1, 2]\n[3]\n")
    body = {
        "workers": 1,
        "delimited_files": {"paths": [str(tmp_path)], "includes": ["*.jsonl"], "batch_size": 3},
    }
    before = len(cluster.cli_json("get", batch_sum)["jobs"])

    plan = submit(cluster, batch_sum, body, query="dryRun=true")

    assert plan["dry_run"] is True and plan["items"] == 4 and plan["total_batch_count"] == 2
    assert sorted(Path(source).name for source in plan["sources"]) == ["a.jsonl", "b.jsonl"]
    assert len(cluster.cli_json("get", batch_sum)["jobs"]) == before


def test_the_task_trainer_writes_the_model_and_a_failing_task_reports_its_error(
    cluster: Cluster, tmp_path: Path
) -> None:
    project = copy_example("task-trainer", tmp_path)
    assert cluster.cli("deploy", str(project)).returncode == 0
    model = tmp_path / "out" / "model.pkl"

    task = submit(cluster, "task-trainer", {"config": {"model_path": str(model)}})
    done = wait_for_end(cluster, "task-trainer", task["job_id"])

    assert done["status"] == "succeeded", done
    assert model.stat().st_size > 0

    failing = submit(cluster, "task-trainer", {"config": {}})
    failed = wait_for_end(cluster, "task-trainer", failing["job_id"])
    assert failed["status"] == "failed" and "model_path is required" in failed["reason"]
    assert cluster.cli("delete", "task-trainer").returncode == 0


def test_async_requests_are_queued_then_answered_from_zero_replicas(cluster: Cluster, tmp_path: Path) -> None:
    project = copy_example("async-iris", tmp_path)
    assert cluster.cli("deploy", str(project)).returncode == 0
    sample = json.loads((project / "sample.json").read_text())

    ids = [submit(cluster, "async-iris", sample)["id"] for _ in range(5)]
    bad = submit(cluster, "async-iris", {"sepal_length": 1})["id"]

    def answered(request_id: str) -> dict[str, Any] | None:
        reply = cluster.request("GET", f"/async-iris/{request_id}")
        assert reply.status == 200, reply.body
        body: dict[str, Any] = reply.json()
        return body if body["status"] in ("completed", "failed") else None

    for request_id in ids:
        result = wait_until(
            functools.partial(answered, request_id), message=f"request {request_id}", timeout=90
        )
        assert result["status"] == "completed" and result["result"] == {"label": "setosa"}
    failure = wait_until(lambda: answered(bad), message="the bad request to fail", timeout=60)
    assert failure["status"] == "failed" and "missing features" in failure["error"]
    assert cluster.request("GET", "/async-iris/no-such-id").status == 404
    assert cluster.cli("delete", "async-iris").returncode == 0
