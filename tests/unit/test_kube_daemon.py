"""The in-cluster controller process (cluster.kube_daemon.serve) on real sockets (free loopback ports), with
the in-memory API server injected through its one seam (the KubeApi): it takes the Lease, serves the gateway
and the control API, stands by while another controller leads, and stops on a real SIGTERM, releasing the
Lease.
Also `modelport cluster run --backend kubernetes` as a real subprocess outside a pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelport.backends.kube_lease import lease_record, lease_spec
from modelport.backends.kubernetes import Kind, KubernetesBackend
from modelport.cluster.kube_cluster import kube_layout
from modelport.cluster.kube_daemon import KubeDaemonConfig, serve
from modelport.controller.kube_ports import LeaseRecord
from modelport.controller.leader import LeaseTimings
from modelport.errors import UserInputError
from modelport.manifests import RenderOptions, render_api, render_cluster
from modelport.spec.load import parse_apis
from modelport.types import Revision
from tests.support import IRIS_SPEC, free_port, wait_until
from tests.unit.fake_kube import FakeKubeApi

NS = "mp"
OPTIONS = RenderOptions(namespace=NS, image="registry.example.com/team/iris:0123456789ab")
LEASE = "modelport-controller"
QUICK = LeaseTimings(lease_seconds=3.0, renew_deadline_seconds=2.0, retry_seconds=0.2)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def namespace_with_iris() -> FakeKubeApi:
    """The rendered cluster objects and a realtime API with one ready replica."""
    fake = FakeKubeApi(namespaces=(NS,))
    backend = KubernetesBackend(fake, namespace=NS, context=None, layout=kube_layout(), clock=fake.clock)
    backend.apply_objects(render_cluster(OPTIONS))
    spec = parse_apis(IRIS_SPEC, file="modelport.yaml")[0]
    revision = Revision("aaaaaaaaaaaa")
    backend.apply_api(spec, render_api(spec, revision=revision, options=OPTIONS), revision=revision)
    backend.scale("iris", 1)
    fake.settle()
    (pod,) = fake.pod_names(NS, owner="api-iris")
    fake.start(pod, namespace=NS)
    fake.settle()
    return fake


def config(tmp_path: Path, identity: str = "controller-0") -> KubeDaemonConfig:
    return KubeDaemonConfig(
        namespace=NS,
        identity=identity,
        state_dir=tmp_path / "state",
        host="127.0.0.1",
        gateway_port=free_port(),
        control_port=free_port(),
        tick_seconds=0.05,
        lease=QUICK,
        gateway_drain_seconds=2.0,
    )


def run_until_sigterm(
    settings: KubeDaemonConfig, fake: FakeKubeApi, checks: Callable[[str, str], None]
) -> int:
    """Serve in this (the main) thread; `checks(gateway_url, control_url)` runs in another thread once the
    control API answers, then this process gets a real SIGTERM. Returns serve()'s exit code."""
    gateway = f"http://127.0.0.1:{settings.gateway_port}"
    control = f"http://127.0.0.1:{settings.control_port}"
    failures: list[BaseException] = []

    def probe() -> None:
        try:
            wait_until(lambda: _answers(f"{control}/v1/health"), message="the control API")
            checks(gateway, control)
        except BaseException as exc:
            failures.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    code = asyncio.run(serve(settings, api=fake))
    thread.join(timeout=10)
    if failures:
        raise failures[0]
    return code


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_the_controller_leads_serves_the_gateway_and_releases_the_lease_on_sigterm(tmp_path: Path) -> None:
    fake = namespace_with_iris()
    settings = config(tmp_path)
    seen: dict[str, Any] = {}

    def checks(gateway: str, control: str) -> None:
        ready = wait_until(lambda: get(f"{control}/v1/ready")[0] == 200, message="the controller to lead")
        assert ready
        seen["health"] = get(f"{control}/v1/health")[1]
        # The route comes from the ready endpoint: the gateway's summary of the API counts it.
        summary = wait_until(
            lambda: (reply := get(f"{gateway}/iris"))[0] == 200 and reply[1]["ready_replicas"] == 1 and reply,
            message="the route to iris",
        )
        seen["summary"] = summary[1]
        seen["apis"] = get(f"{control}/v1/apis")[1]
        seen["unknown job"] = get(f"{control}/v1/jobs/nope/spec")
        seen["gateway health"] = get(f"{gateway}/healthz")

    assert run_until_sigterm(settings, fake, checks) == 0
    health = seen["health"]
    assert (health["backend"], health["namespace"], health["leader"]) == ("kubernetes", NS, True)
    assert health["leader_identity"] == "controller-0"
    assert health["control_url"] == "http://modelport-controller.mp.svc:8889"
    assert seen["summary"]["status"] == "live"
    (api,) = seen["apis"]["apis"]
    assert (api["name"], api["requested"], api["autoscaler_requested"]) == ("iris", 1, 1)
    status, body = seen["unknown job"]
    assert status == 404 and "job nope" in body["error"]  # the worker protocol is served
    assert seen["gateway health"] == (200, {"status": "ok"})
    # SIGTERM released the Lease: the next controller need not wait for it to expire.
    assert lease_record(fake.stored(Kind.LEASE, LEASE, namespace=NS)).holder is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{settings.control_port}/v1/health", timeout=1)


def test_a_standby_controller_is_alive_but_not_ready(tmp_path: Path) -> None:
    fake = namespace_with_iris()
    lease = fake.stored(Kind.LEASE, LEASE, namespace=NS)
    held = LeaseRecord(
        holder="controller-1",
        duration_seconds=3600,  # renewed, as far as this controller can tell, for the whole test
        acquired_at=None,
        renewed_at=None,
        transitions=1,
        version=lease["metadata"]["resourceVersion"],
    )
    fake.replace({**lease, "spec": lease_spec(held)})
    settings = config(tmp_path)
    seen: dict[str, Any] = {}

    def checks(gateway: str, control: str) -> None:
        wait_until(
            lambda: get(f"{control}/v1/health")[1]["leader_identity"] == "controller-1",
            message="the Lease to be read",
        )
        seen["ready"] = get(f"{control}/v1/ready")
        seen["health"] = get(f"{control}/v1/health")
        seen["job route"] = get(f"{control}/v1/jobs/nope/spec")
        seen["gateway"] = get(f"{gateway}/iris")

    assert run_until_sigterm(settings, fake, checks) == 0
    status, body = seen["ready"]
    assert status == 503 and "stands by (controller-1 leads)" in body["error"]
    assert seen["health"][0] == 200 and seen["health"][1]["leader"] is False
    assert seen["job route"][0] == 503
    assert seen["gateway"][0] == 404  # a standby publishes no routes
    assert lease_record(fake.stored(Kind.LEASE, LEASE, namespace=NS)).holder == "controller-1"


def test_the_config_refuses_a_bad_namespace_and_an_empty_identity(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--namespace: invalid name 'ML_Prod'"):
        KubeDaemonConfig(namespace="ML_Prod", identity="c", state_dir=tmp_path)
    with pytest.raises(UserInputError, match="--identity"):
        KubeDaemonConfig(namespace=NS, identity="", state_dir=tmp_path)


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["MODELPORT_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "modelport", "cluster", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cluster_run_kubernetes_outside_a_pod_says_so(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--backend", "kubernetes", "--namespace", NS, "--identity", "c-0")
    assert result.returncode == 2, result.stderr
    assert "cannot use the in-cluster configuration" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "kubernetes"], "--namespace: required with --backend kubernetes"),
        (["--namespace", NS], "--namespace and --identity go with --backend kubernetes only"),
        (["--backend", "kubernetes", "--namespace", "Bad_Ns"], "--namespace: invalid name 'Bad_Ns'"),
    ],
)
def test_cluster_run_flags_are_checked(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
