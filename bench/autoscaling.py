"""Autoscaling benchmark: reaction to a load step, scale from zero, and the way back down.

Starts a fresh local cluster (its own home and free ports), deploys the examples with short autoscaling
settings, drives load from threads on loopback (bounded in count and time) and prints one table.

    python bench/autoscaling.py            # about two minutes
    python bench/autoscaling.py --json     # the same figures as JSON

Scenarios (issue "Scaling and resilience"):
- reaction: `sleep` with window 10s, upscale_stabilization_period 0s, target 1; a step from 1 to 8
  concurrent requests of 0.2 s; seconds from the step to the first added replica serving (goal < 15 s).
- scale from zero: `iris-classifier` with min_replicas 0; first response latency from 0 replicas, next to
  the predictor's own load time from its replica log (goal: < 1.5 s plus that load time).
- downscale: after the load stops (the 1-client baseline goes on), seconds until replicas are back at
  min_replicas (downscale_stabilization_period 20s, max_downscale_factor 0 so that the way down is one
  step), and the number of failed requests over the whole run (goal 0).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    home: Path
    gateway_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "modelport",
            "--home",
            str(self.home),
            "--gateway-port",
            str(self.gateway_port),
            "--control-port",
            str(self.control_port),
            *args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise SystemExit(f"`modelport {' '.join(args)}` failed:\n{result.stderr}")
        return result

    def api(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("get", name, "-o", "json").stdout)
        return result

    def ready_replicas(self, name: str) -> int:
        return sum(1 for r in self.api(name)["replicas"] if r["phase"] == "ready")

    def post(self, path: str, body: bytes = b"{}", timeout: float = 120) -> tuple[int, float]:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway_port, timeout=timeout)
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            status = connection.getresponse().status
        except OSError:
            status = 0
        finally:
            connection.close()
        return status, time.perf_counter() - started


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until predicate() held, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    return None


class Load:
    """`clients` threads in a closed loop against one path, until stopped or `max_seconds` pass."""

    def __init__(self, cluster: Cluster, path: str, *, clients: int, max_seconds: float) -> None:
        self.cluster, self.path, self.max_seconds = cluster, path, max_seconds
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            status, _ = self.cluster.post(self.path)
            self.statuses.append(status)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def failures(self) -> int:
        return sum(1 for status in self.statuses if status != 200)


def write_project(source: Path, destination: Path, spec: str) -> Path:
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    (destination / "modelport.yaml").write_text(spec)
    return destination


SLEEP_SPEC = """\
- name: sleep
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py, threads_per_process: 1}
  compute: {cpu: 100m}
  autoscaling:
    min_replicas: 1
    max_replicas: 8
    target_replica_concurrency: 1
    window: 10s
    upscale_stabilization_period: 0s
    downscale_stabilization_period: 20s
    max_downscale_factor: 0  # allow the whole way down in one step once the period has passed
"""

IRIS_SPEC = """\
- name: iris-classifier
  kind: RealtimeAPI
  predictor: {type: python, path: predictor.py, config: {model: model.pkl}}
  autoscaling: {min_replicas: 0, window: 10s, downscale_stabilization_period: 10s}
"""


def reaction_and_downscale(cluster: Cluster, work: Path) -> dict[str, Any]:
    project = write_project(REPO / "examples" / "sleep", work / "sleep", SLEEP_SPEC)
    cluster.cli("deploy", str(project), "--wait")
    with Load(cluster, "/sleep", clients=1, max_seconds=600) as baseline:
        time.sleep(3)
        with Load(cluster, "/sleep?sleep=0.2", clients=8, max_seconds=120) as step:
            reaction = wait_for(lambda: cluster.ready_replicas("sleep") >= 2, timeout=60)
            peak_wait = wait_for(lambda: cluster.ready_replicas("sleep") >= 8, timeout=40)
            peak = cluster.ready_replicas("sleep")
        back_to_min = wait_for(
            lambda: cluster.ready_replicas("sleep") == 1 and cluster.api("sleep")["requested"] == 1,
            timeout=120,
            interval=0.5,
        )
    events = cluster.api("sleep").get("autoscaling_events", [])
    return {
        "reaction_seconds": reaction,
        "seconds_to_peak": None if peak_wait is None or reaction is None else peak_wait + reaction,
        "peak_replicas": peak,
        "downscale_seconds": back_to_min,
        "requests": len(baseline.statuses) + len(step.statuses),
        "failed_requests": baseline.failures + step.failures,
        "events": len(events),
    }


def scale_from_zero(cluster: Cluster, work: Path) -> dict[str, Any]:
    project = write_project(REPO / "examples" / "iris-classifier", work / "iris", IRIS_SPEC)
    subprocess.run([sys.executable, "trainer.py"], cwd=project, check=True, capture_output=True)
    cluster.cli("deploy", str(project))
    if wait_for(lambda: cluster.api("iris-classifier")["status"] == "scaled to zero", timeout=60) is None:
        raise SystemExit("iris-classifier never reached `scaled to zero`")
    sample = (project / "sample.json").read_bytes()
    status, first = cluster.post("/iris-classifier", sample)
    logs = cluster.cli("logs", "iris-classifier", "--no-follow").stdout
    loads = [float(m) for m in re.findall(r"predictor ready in ([0-9.]+) s", logs)]
    warm = sorted(cluster.post("/iris-classifier", sample)[1] for _ in range(20))
    return {
        "first_status": status,
        "first_response_seconds": first,
        "model_load_seconds": loads[0] if loads else None,
        "warm_p50_seconds": warm[len(warm) // 2],
    }


def fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-"))
    cluster = Cluster(home=work / "home")
    print(f"cluster home {cluster.home}, gateway :{cluster.gateway_port}", file=sys.stderr)
    try:
        print("reaction and downscale (sleep) ...", file=sys.stderr)
        scaling = reaction_and_downscale(cluster, work)
        print("scale from zero (iris-classifier) ...", file=sys.stderr)
        zero = scale_from_zero(cluster, work)
    finally:
        cluster.cli("cluster", "down", check=False)
    if args.json:
        print(json.dumps({"scaling": scaling, "scale_from_zero": zero}, indent=2))
        return
    overhead = (
        None
        if zero["model_load_seconds"] is None
        else zero["first_response_seconds"] - zero["model_load_seconds"]
    )
    rows = [
        ("reaction: load step 1 -> 8 to the 2nd replica serving", fmt(scaling["reaction_seconds"]), "< 15 s"),
        (
            "load step to peak replicas",
            f"{fmt(scaling['seconds_to_peak'])} ({scaling['peak_replicas']} replicas)",
            "",
        ),
        (
            "downscale: load stop to back at min_replicas",
            fmt(scaling["downscale_seconds"]),
            "window 10s + stabilization 20s",
        ),
        (
            "failed requests during scale up and down",
            f"{scaling['failed_requests']} of {scaling['requests']}",
            "0",
        ),
        ("scale from zero: first response (iris)", fmt(zero["first_response_seconds"]), "< 1.5 s + load"),
        ("  of which the predictor's own load time", fmt(zero["model_load_seconds"]), ""),
        ("  platform share (first response - load)", fmt(overhead), "< 1.5 s"),
        ("warm request p50 after the wake-up", fmt(zero["warm_p50_seconds"] * 1000, "ms"), ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | result | goal |\n|{'-' * (width + 2)}|---|---|")
    for name, value, goal in rows:
        print(f"| {name.ljust(width)} | {value} | {goal} |")


if __name__ == "__main__":
    main()
