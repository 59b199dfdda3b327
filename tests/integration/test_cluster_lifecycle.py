"""The local cluster lifecycle: started by deploy, side by side with another, stopped without orphans."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Cluster, copy_example
from tests.support import free_port

pytestmark = pytest.mark.integration


def _new_cluster(tmp_path: Path, name: str) -> Cluster:
    home = tmp_path / name
    return Cluster(home=home, gateway_port=free_port(), control_port=free_port())


def test_deploy_starts_the_cluster_and_down_leaves_no_process(tmp_path: Path) -> None:
    first = _new_cluster(tmp_path, "first")
    second = _new_cluster(tmp_path, "second")
    project = copy_example("sleep", tmp_path)
    daemons: list[psutil.Process] = []
    try:
        for cluster in (first, second):
            assert cluster.cli("cluster", "info").returncode == 1  # nothing runs yet
            deployed = cluster.cli("deploy", str(project), "--wait")
            assert deployed.returncode == 0, deployed.stderr
            assert "starting the local cluster" in deployed.stderr
            daemons.append(psutil.Process(cluster.daemon_pid()))

        # Two clusters, two homes, two gateways: each answers for itself.
        for cluster in (first, second):
            assert cluster.predict("sleep", {}, query="sleep=0.01").body == b"ok"
            assert cluster.api("sleep")["metrics"]["2XX"] == 1

        tree = [p for daemon in daemons for p in [daemon, *daemon.children(recursive=True)]]
        assert len(tree) >= 4  # two daemons and at least one replica each
        for cluster in (first, second):
            stopped = cluster.cli("cluster", "down")
            assert stopped.returncode == 0, stopped.stderr
        _gone, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == []
        assert first.cli("cluster", "info").returncode == 1
    finally:
        for daemon in daemons:
            if daemon.is_running():
                for child in daemon.children(recursive=True):
                    child.kill()
                daemon.kill()


def test_a_crashed_daemon_leaves_nothing_behind_and_its_apis_come_back(tmp_path: Path) -> None:
    cluster = _new_cluster(tmp_path, "crash")
    project = copy_example("sleep", tmp_path)
    daemon: psutil.Process | None = None
    try:
        assert cluster.cli("deploy", str(project), "--wait").returncode == 0
        daemon = psutil.Process(cluster.daemon_pid())
        replicas = daemon.children(recursive=True)
        assert replicas
        daemon.kill()  # SIGKILL: no chance to stop its replicas
        daemon.wait(10)
        assert all(r.is_running() for r in replicas)  # orphaned, still holding their ports

        stopped = cluster.cli("cluster", "down")
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped 1 replica(s) a crashed cluster left behind" in stopped.stderr
        _, alive = psutil.wait_procs(replicas, timeout=10)
        assert alive == []

        # The specs survived in SQLite: the next start serves the same API again.
        assert cluster.cli("cluster", "up").returncode == 0
        daemon = psutil.Process(cluster.daemon_pid())
        api = cluster.wait_status("sleep", "live")
        assert api["requested"] == 1
        assert cluster.predict("sleep", {}).body == b"ok"
        assert cluster.cli("cluster", "down").returncode == 0
        daemon.wait(60)
    finally:
        if daemon is not None and daemon.is_running():
            for child in daemon.children(recursive=True):
                child.kill()
            daemon.kill()


def test_the_cli_refuses_a_cluster_of_another_home(tmp_path: Path) -> None:
    owner = _new_cluster(tmp_path, "owner")
    stranger = Cluster(home=tmp_path / "stranger", gateway_port=free_port(), control_port=owner.control_port)
    try:
        assert owner.cli("cluster", "up").returncode == 0
        for args in (("cluster", "down"), ("get",), ("cluster", "up")):
            refused = stranger.cli(*args)
            assert refused.returncode == 1, args
            assert f"belongs to {owner.home}" in refused.stderr
        assert owner.cli("cluster", "info").returncode == 0  # untouched
    finally:
        owner.cli("cluster", "down")


def test_api_names_are_one_path_segment(tmp_path: Path) -> None:
    cluster = _new_cluster(tmp_path, "names")
    project = copy_example("sleep", tmp_path)
    try:
        assert cluster.cli("deploy", str(project), "--wait").returncode == 0
        for name in ("sleep#oops", "sleep?x=1", "sleep/refresh", "Bad Name", "é"):
            missing = cluster.cli("delete", name)
            assert missing.returncode == 1, name
            assert "Traceback" not in missing.stderr
            assert "not deployed" in missing.stderr
        assert cluster.api("sleep")["status"] == "live"
    finally:
        cluster.cli("cluster", "down")
