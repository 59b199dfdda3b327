"""Jobs benchmark: batch throughput with 1 and 2 workers, and async round-trip latency.

Starts a fresh local cluster (its own home and free ports), deploys examples/batch-sum and
examples/async-iris, and prints one table.

    python bench/jobs.py                  # about a minute
    python bench/jobs.py --items 20000    # a quicker run
    python bench/jobs.py --json

- batch: one job of `--items` small items (lists of two numbers) in batches of `--batch-size`; the time from
  the POST to `succeeded` (enqueue, every batch leased, summed, written and acknowledged, on_job_complete
  merged the results), as items/s and batches/s, with 1 and then 2 workers.
- async: `--requests` requests one after the other, each POSTed then polled (every 2 ms) until completed:
  the round trip p50/p99; then as many submitted at once, and the time until the last one is answered.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autoscaling import REPO, Cluster

ENDED = {"succeeded", "completed_with_failures", "failed", "worker_error", "timed_out", "stopped"}


class Gateway:
    """One keep-alive connection to the cluster's gateway."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        self._connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = self._connection.getresponse()
        raw = response.read()
        if response.status != 200:
            raise SystemExit(f"{method} {path} answered {response.status}: {raw[:500]!r}")
        result: dict[str, Any] = json.loads(raw)
        return result


def batch_throughput(
    gateway: Gateway, *, items: int, batch_size: int, workers: int, out: Path
) -> dict[str, Any]:
    body = {
        "workers": workers,
        "item_list": {"items": [[index, 1] for index in range(items)], "batch_size": batch_size},
        "config": {"results_dir": str(out)},
    }
    started = time.perf_counter()
    job = gateway.call("POST", "/batch-sum", body)
    enqueued = time.perf_counter() - started
    while True:
        status = gateway.call("GET", f"/batch-sum/{job['job_id']}")
        if status["status"] in ENDED:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if status["status"] != "succeeded":
        raise SystemExit(f"job {job['job_id']} ended {status['status']}: {status.get('reason')}")
    summary = json.loads((out / job["job_id"] / "summary.json").read_text())
    if summary["items"] != items:
        raise SystemExit(f"job {job['job_id']} wrote {summary['items']} results for {items} items")
    return {
        "workers": workers,
        "items": items,
        "batches": status["total_batch_count"],
        "enqueue_seconds": enqueued,
        "seconds": elapsed,
        "items_per_second": items / elapsed,
        "batches_per_second": status["total_batch_count"] / elapsed,
        "avg_batch_seconds": status["batch_metrics"]["avg_time_per_batch"],
    }


def async_latency(gateway: Gateway, sample: dict[str, Any], *, requests: int) -> dict[str, Any]:
    def wait(request_id: str) -> None:
        while True:
            if gateway.call("GET", f"/async-iris/{request_id}")["status"] == "completed":
                return
            time.sleep(0.002)

    round_trips = []
    for _ in range(requests):
        started = time.perf_counter()
        wait(gateway.call("POST", "/async-iris", sample)["id"])
        round_trips.append(time.perf_counter() - started)
    started = time.perf_counter()
    ids = [gateway.call("POST", "/async-iris", sample)["id"] for _ in range(requests)]
    submitted = time.perf_counter() - started
    for request_id in ids:
        wait(request_id)
    burst = time.perf_counter() - started
    round_trips.sort()
    return {
        "requests": requests,
        "p50_seconds": statistics.median(round_trips),
        "p99_seconds": round_trips[max(0, round(0.99 * len(round_trips)) - 1)],
        "burst_submit_seconds": submitted,
        "burst_seconds": burst,
        "burst_requests_per_second": requests / burst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-jobs-"))
    cluster = Cluster(home=work / "home")
    print(f"cluster home {cluster.home}, gateway :{cluster.gateway_port}", file=sys.stderr)
    try:
        async_project = work / "async-iris"
        shutil.copytree(REPO / "examples" / "async-iris", async_project)
        spec = async_project / "modelport.yaml"
        spec.write_text(spec.read_text().replace("min_replicas: 0", "min_replicas: 1"))
        cluster.cli("deploy", str(REPO / "examples" / "batch-sum"))
        cluster.cli("deploy", str(async_project), "--wait")
        gateway = Gateway(cluster.gateway_port)
        batches = []
        for workers in (1, 2):
            print(f"batch: {args.items} items, {workers} worker(s) ...", file=sys.stderr)
            batches.append(
                batch_throughput(
                    gateway,
                    items=args.items,
                    batch_size=args.batch_size,
                    workers=workers,
                    out=work / "results",
                )
            )
        print(f"async: {args.requests} requests ...", file=sys.stderr)
        sample = json.loads((REPO / "examples" / "async-iris" / "sample.json").read_text())
        latency = async_latency(gateway, sample, requests=args.requests)
    finally:
        cluster.cli("cluster", "down", check=False)
    if args.json:
        print(json.dumps({"batch": batches, "async": latency}, indent=2))
        return
    rows = [
        (
            f"batch, {b['items']:,} items in {b['batches']:,} batches, {b['workers']} worker(s)",
            f"{b['items_per_second']:,.0f} items/s ({b['batches_per_second']:,.0f} batches/s, "
            f"{b['seconds']:.2f} s, of which enqueue {b['enqueue_seconds']:.2f} s)",
        )
        for b in batches
    ]
    rows += [
        (
            f"async round trip, {latency['requests']} sequential (POST, then GET until completed)",
            f"p50 {latency['p50_seconds'] * 1000:.1f} ms, p99 {latency['p99_seconds'] * 1000:.1f} ms",
        ),
        (
            f"async burst: {latency['requests']} submitted at once, until the last is answered",
            f"{latency['burst_seconds']:.2f} s ({latency['burst_requests_per_second']:,.0f} requests/s)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure'.ljust(width)} | result |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
