"""GPU vs CPU latency of examples/gpu (a PyTorch MLP) on the local cluster.

Starts a fresh local cluster (its own home and free ports), deploys both APIs of examples/gpu, and times
`--requests` predictions of 1 and of 32 rows on each. Needs torch in the environment modelport runs in.
On a machine without a GPU, `mlp-gpu` must be `compute unavailable` (checked), and only the CPU is timed.

    python bench/gpu.py
    python bench/gpu.py --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoscaling import REPO, Cluster, wait_for

from modelport.backends.compute import detect_capacity


def latencies(port: int, api: str, *, rows: int, requests: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"random_rows": rows, "seed": 1}).encode()
    timings, device = [], None
    for index in range(requests + 5):
        started = time.perf_counter()
        connection.request("POST", f"/{api}", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit(f"{api} answered {response.status}: {answer[:300]!r}")
        if index >= 5:  # the first requests warm up the model (CUDA kernels, allocator)
            timings.append(time.perf_counter() - started)
        device = json.loads(answer)["device"]
    timings.sort()
    return {
        "api": api,
        "device": device,
        "rows": rows,
        "p50_ms": statistics.median(timings) * 1000,
        "p99_ms": timings[max(0, round(0.99 * len(timings)) - 1)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    gpus = detect_capacity().gpu
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-gpu-"))
    cluster = Cluster(home=work / "home")
    print(f"{gpus} GPU(s) detected; cluster home {cluster.home}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        cluster.cli("deploy", str(REPO / "examples" / "gpu"))
        apis = ["mlp-cpu"] + (["mlp-gpu"] if gpus else [])
        for api in apis:
            if wait_for(lambda a=api: cluster.api(a)["status"] == "live", timeout=300) is None:
                raise SystemExit(f"{api} did not become live: {cluster.api(api).get('reason')}")
        if not gpus:
            status = cluster.api("mlp-gpu")
            if status["status"] != "compute unavailable":
                raise SystemExit(
                    f"mlp-gpu should be compute unavailable without a GPU, is {status['status']}"
                )
            print(f"mlp-gpu: compute unavailable ({status['reason']})", file=sys.stderr)
        for api in apis:
            for size in (1, 32):
                rows.append(latencies(cluster.gateway_port, api, rows=size, requests=args.requests))
    finally:
        cluster.cli("cluster", "down", check=False)
    if args.json:
        print(json.dumps({"gpus": gpus, "results": rows}, indent=2))
        return
    print("| api | device | rows per request | p50 | p99 |\n|---|---|---|---|---|")
    for row in rows:
        timing = f"{row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms"
        print(f"| {row['api']} | {row['device']} | {row['rows']} | {timing} |")


if __name__ == "__main__":
    main()
