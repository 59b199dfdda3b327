"""End to end on a real local cluster: CLI -> daemon -> replica processes -> gateway, real signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import wait_until

pytestmark = pytest.mark.integration

IRIS_SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.4, "petal_width": 0.3}


def _replica_pids(cluster: Cluster, api: str) -> dict[str, int]:
    return {r["replica_id"]: r["pid"] for r in cluster.api(api)["replicas"] if r["phase"] == "ready"}


def test_deploy_iris_two_replicas_and_predict(cluster: Cluster, iris_project: Path) -> None:
    deployed = cluster.cli("deploy", str(iris_project), "--wait")
    assert deployed.returncode == 0, deployed.stderr
    assert "creating iris-classifier (RealtimeAPI)" in deployed.stderr

    api = cluster.api("iris-classifier")
    assert api["status"] == "live"
    assert api["up_to_date"] == 2
    assert len([r for r in api["replicas"] if r["phase"] == "ready"]) == 2

    for _ in range(10):
        result = cluster.predict("iris-classifier", IRIS_SAMPLE)
        assert result.status == 200, result.body
        assert result.body.decode() == "setosa"

    predicted = cluster.cli("predict", "iris-classifier", str(iris_project / "sample.json"))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.strip() == "setosa"

    listed = cluster.cli_json("get")
    iris = next(a for a in listed if a["name"] == "iris-classifier")
    assert iris["status"] == "live"
    assert iris["metrics"]["2XX"] >= 11
    assert iris["metrics"]["avg_latency_seconds"] > 0

    again = cluster.cli("deploy", str(iris_project))
    assert again.returncode == 0
    assert "iris-classifier (RealtimeAPI) is up to date" in again.stderr


def test_bad_requests_get_clear_errors(cluster: Cluster, iris_project: Path) -> None:
    cluster.cli("deploy", str(iris_project), "--wait")
    invalid = cluster.request("POST", "/iris-classifier", b"{not json", {"Content-Type": "application/json"})
    assert invalid.status == 400
    assert "invalid JSON" in invalid.json()["error"]

    crashed = cluster.predict(
        "iris-classifier",
        {"sepal_length": "not a number", "sepal_width": 1, "petal_length": 1, "petal_width": 1},
    )
    assert crashed.status == 500
    request_id = crashed.json()["request_id"]
    assert request_id
    logs = cluster.cli("logs", "iris-classifier", "--no-follow")
    assert request_id in logs.stdout
    assert "ValueError" in logs.stdout

    unknown = cluster.request("POST", "/no-such-api", b"{}")
    assert unknown.status == 404
    assert "no API is deployed at /no-such-api" in unknown.json()["error"]


def test_invalid_spec_exits_2_and_deploys_nothing(cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "bad"
    project.mkdir()
    (project / "predictor.py").write_text("class PythonPredictor:\n    pass\n")
    (project / "modelport.yaml").write_text(
        "- name: Bad_Name\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
        "    threads_per_proces: 2\n  autoscaling:\n    min_replicas: 3\n    max_replicas: 1\n"
    )
    result = cluster.cli("deploy", str(project))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "modelport.yaml: [0].name" in result.stderr
    assert "threads_per_process" in result.stderr  # the did-you-mean suggestion
    assert "[0].autoscaling.max_replicas" in result.stderr
    assert "bad_name" not in [a["name"].lower() for a in cluster.cli_json("get")]
    assert cluster.cli("cluster", "info").returncode == 0  # the cluster keeps running


def test_broken_predictor_is_error_with_traceback_and_503(cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "predictor.py").write_text(
        "class PythonPredictor:\n"
        "    def __init__(self, config):\n"
        "        raise RuntimeError('weights file is corrupt')\n"
        "    def predict(self, payload):\n"
        "        return 1\n"
    )
    (project / "modelport.yaml").write_text(
        "- name: broken\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
    )
    sleep_project = copy_example("sleep", tmp_path)
    assert cluster.cli("deploy", str(sleep_project), "--wait").returncode == 0
    result = cluster.cli("deploy", str(project), "--wait", "--timeout", "60")
    assert result.returncode == 1
    api = cluster.wait_status("broken", "error")
    assert "modelport logs broken" in api["reason"]

    logs = cluster.cli("logs", "broken", "--no-follow")
    assert "RuntimeError: weights file is corrupt" in logs.stdout
    assert "Traceback" in logs.stdout

    answer = cluster.predict("broken", {})
    assert answer.status == 503
    assert "broken" in answer.json()["error"]
    assert cluster.predict("sleep", {}).body == b"ok"  # other APIs unaffected
    assert cluster.cli("delete", "broken").returncode == 0


def test_sigkill_of_a_replica_is_healed_without_failed_requests(cluster: Cluster, iris_project: Path) -> None:
    cluster.cli("deploy", str(iris_project), "--wait")
    before = _replica_pids(cluster, "iris-classifier")
    victim_id, victim_pid = next(iter(before.items()))
    failures: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            status = cluster.predict("iris-classifier", IRIS_SAMPLE).status
            if status != 200:
                failures.append(status)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        os.kill(victim_pid, signal.SIGKILL)
        wait_until(
            lambda: (
                victim_id not in _replica_pids(cluster, "iris-classifier")
                and len(_replica_pids(cluster, "iris-classifier")) == 2
            ),
            timeout=60,
            message="the killed replica to be replaced",
            interval=0.2,
        )
    finally:
        stop.set()
        sender.join()
    assert failures == []
    assert not psutil.pid_exists(victim_pid) or psutil.Process(victim_pid).status() == psutil.STATUS_ZOMBIE


def test_redeploy_under_load_has_zero_failures(cluster: Cluster, iris_project: Path) -> None:
    cluster.cli("deploy", str(iris_project), "--wait")
    old_revision = cluster.api("iris-classifier")["revision"]
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(cluster.predict("iris-classifier", IRIS_SAMPLE).status)
            time.sleep(0.005)

    senders = [threading.Thread(target=traffic) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        spec = iris_project / "modelport.yaml"
        spec.write_text(spec.read_text().replace("model: model.pkl", "model: model.pkl\n      version: 2"))
        assert cluster.cli("deploy", str(iris_project)).returncode == 0

        def rolled() -> bool:
            api = cluster.api("iris-classifier")
            replicas = api["replicas"]
            return (
                api["status"] == "live"
                and len(replicas) == 2
                and all(r["revision"] == api["revision"] and r["phase"] == "ready" for r in replicas)
            )

        wait_until(rolled, timeout=90, message="every replica on the new revision", interval=0.2)
        time.sleep(0.5)  # keep traffic flowing over the finished update
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert cluster.api("iris-classifier")["revision"] != old_revision
    assert len(statuses) > 50
    assert [s for s in statuses if s != 200] == []


def test_refresh_replaces_every_replica(cluster: Cluster, iris_project: Path) -> None:
    cluster.cli("deploy", str(iris_project), "--wait")
    before = set(_replica_pids(cluster, "iris-classifier"))
    assert cluster.cli("refresh", "iris-classifier").returncode == 0
    wait_until(
        lambda: len(after := set(_replica_pids(cluster, "iris-classifier"))) == 2 and not after & before,
        timeout=90,
        message="a fresh set of replicas",
        interval=0.2,
    )


def test_delete_stops_every_process(cluster: Cluster, tmp_path: Path) -> None:
    project = copy_example("sleep", tmp_path)
    (project / "modelport.yaml").write_text(
        (project / "modelport.yaml").read_text().replace("name: sleep", "name: sleep-doomed")
    )
    assert cluster.cli("deploy", str(project), "--wait").returncode == 0
    pids = [r["pid"] for r in cluster.api("sleep-doomed")["replicas"]]
    assert pids
    assert cluster.cli("delete", "sleep-doomed").returncode == 0
    _gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=30)
    assert not alive
    assert cluster.request("POST", "/sleep-doomed", b"{}").status == 404
    missing = cluster.cli("get", "sleep-doomed")
    assert missing.returncode == 1
    assert "sleep-doomed" in missing.stderr


def test_describe_shows_the_server_side_batch_sizes(cluster: Cluster, tmp_path: Path) -> None:
    project = tmp_path / "batched"
    project.mkdir()
    (project / "modelport.yaml").write_text(
        "- name: batched\n  kind: RealtimeAPI\n  predictor:\n    type: python\n    path: predictor.py\n"
        "    server_side_batching: {max_batch_size: 8, batch_interval: 20ms}\n"
    )
    (project / "predictor.py").write_text(
        "import time\n\n"
        "class PythonPredictor:\n"
        "    def __init__(self, config):\n        pass\n\n"
        "    def predict(self, payload):\n"
        "        time.sleep(0.05)\n"
        "        return [len(payload)] * len(payload)\n"
    )
    assert cluster.cli("deploy", str(project), "--wait").returncode == 0
    threads = [threading.Thread(target=cluster.predict, args=("batched", {})) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    described = cluster.cli_json("describe", "batched")

    batching = described["batching"]
    assert batching["requests"] == 12 and batching["replicas"] == 1
    assert batching["batches"] < 12  # requests that waited for the busy predictor went together
    assert sum(bucket["batches"] for bucket in batching["sizes"]) == batching["batches"]
    shown = cluster.cli("describe", "batched")
    assert "server-side batching" in shown.stdout and "per batch on average" in shown.stdout
    assert cluster.cli("delete", "batched").returncode == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="the batch scheduling class is Linux's")
def test_the_daemon_runs_its_gateway_in_the_batch_scheduling_class(cluster: Cluster) -> None:
    # The gateway shares cores with its replicas (modelport.http.scheduling).
    assert os.sched_getscheduler(cluster.daemon_pid()) == os.SCHED_BATCH
