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
