"""How the CLI shows things: rich tables for people, JSON for machines (`-o json`), errors on stderr.

Pure formatting: every function takes the control API's JSON shapes (cluster/serialize.py) and a clock
reading, so the tables are testable without a cluster.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Tables are never cut: piped output gets a wide virtual terminal instead of rich's default 80 columns.
# A terminal narrower than the widest table wraps lines rather than cutting numbers.
stdout = Console(
    highlight=False,
    soft_wrap=True,
    width=max(shutil.get_terminal_size().columns, 120) if sys.stdout.isatty() else 250,
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    return table


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    stderr.print(Text("error: ", style="bold red") + Text(message))


def warning(message: str) -> None:
    stderr.print(Text("warning: ", style="bold yellow") + Text(message))


def age(seconds: float | None) -> str:
    """Cortex style: 8s, 3m, 9h, 2d."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    # The unit is chosen after rounding, so 0.9996 s reads "1.0s", not "1000ms".
    if round(seconds * 1_000_000) < 1000:
        return f"{seconds * 1_000_000:.0f}µs"
    if round(seconds * 1000, 1) < 10:
        return f"{seconds * 1000:.1f}ms"
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.1f}s"


_STATUS_STYLE = {
    "live": "green",
    "updating": "yellow",
    "error": "red",
    "compute unavailable": "red",
    "scaled to zero": "blue",
}


def _status(status: str) -> Text:
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _count(value: int) -> str:
    return str(value) if value else "-"


def apis_table(apis: Sequence[dict[str, Any]], *, now: float) -> Table:
    table = _table(
        "api", "status", "up-to-date", "requested", "last update", "avg request", "2XX", "4XX", "5XX"
    )
    for api in apis:
        metrics = api["metrics"]
        table.add_row(
            api["name"],
            _status(api["status"]),
            str(api["up_to_date"]),
            str(api["requested"]),
            age(now - api["last_updated"]) if api.get("last_updated") else "-",
            latency(metrics["avg_latency_seconds"]),
            _count(metrics["2XX"]),
            _count(metrics["4XX"]),
            _count(metrics["5XX"]),
        )
    return table


def replicas_table(replicas: Sequence[dict[str, Any]], *, now: float) -> Table:
    table = _table("replica", "state", "revision", "up-to-date", "in-flight", "restarts", "age")
    for replica in replicas:
        table.add_row(
            replica["replica_id"],
            replica["phase"],
            replica["revision"],
            "yes" if replica["up_to_date"] else "no",
            str(replica["in_flight"]),
            str(replica["restarts"]),
            age(now - replica["started_at"]),
        )
    return table


def events_table(events: Sequence[dict[str, Any]], *, now: float) -> Table:
    """Autoscaling decisions, newest last, in the words the daemon logs them."""
    table = _table("age", "event")
    for event in events:
        table.add_row(
            age(now - event["at"]),
            f"autoscaling event: {event['from_replicas']} -> {event['to_replicas']} "
            f"(in-flight {event['avg_in_flight']:.1f}, target {event['target']:g})",
        )
    return table


def show_api(api: dict[str, Any], *, now: float) -> None:
    stdout.print(apis_table([api], now=now))
    if api.get("reason"):
        stdout.print(Text(f"\n{api['reason']}", style="red" if api["status"] == "error" else "yellow"))
    stdout.print(
        f"\nreplicas: {api['up_to_date']} up to date, {api['stale']} stale, {api['requested']} requested"
    )
    stdout.print(f"endpoint: {api['endpoint']}")
    stdout.print(f"example curl: {api['example_curl']}")
    stdout.print("\nconfiguration\n", style="bold")
    stdout.print(yaml.safe_dump(api["spec"], sort_keys=False).rstrip())


_JOB_STYLE = {
    "running": "yellow",
    "enqueuing": "yellow",
    "succeeded": "green",
    "completed_with_failures": "red",
    "failed": "red",
    "worker_error": "red",
    "timed_out": "red",
    "stopped": "blue",
}


def _job_status(status: str) -> Text:
    return Text(status, style=_JOB_STYLE.get(status, ""))


def job_progress(job: dict[str, Any], *, width: int = 20) -> str:
    """`[#######-------] 35/100 batches (2 failed)`: settled batches of the total."""
    metrics, total = job["batch_metrics"], max(job["total_batch_count"], 1)
    settled = metrics["succeeded"] + metrics["failed"]
    filled = round(width * settled / total)
    failed = f" ({metrics['failed']} failed)" if metrics["failed"] else ""
    return f"[{'#' * filled}{'-' * (width - filled)}] {settled}/{job['total_batch_count']} batches{failed}"


def jobs_table(jobs: Sequence[dict[str, Any]], *, now: float) -> Table:
    table = _table("job id", "status", "progress", "workers", "avg batch", "started", "duration")
    for job in jobs:
        start, end = job.get("start_time"), job.get("end_time")
        workers = job["worker_counts"]
        table.add_row(
            job["job_id"],
            _job_status(job["status"]),
            Text(job_progress(job, width=10)),
            f"{workers['running']}/{job['workers']}",
            latency(job["batch_metrics"]["avg_time_per_batch"]),
            age(now - start) + " ago" if start else "-",
            age((end or now) - (start or job["created_time"])),
        )
    return table


def show_job(job: dict[str, Any], *, now: float) -> None:
    """`modelport get API JOB_ID`: status, progress, batch and worker counts, failures."""
    stdout.print(
        Text(f"job {job['job_id']} of {job['api_name']} ({job['kind']}): ") + _job_status(job["status"])
    )
    if job.get("reason"):
        stdout.print(Text(job["reason"], style="red" if job["status"] != "stopped" else "blue"))
    if job.get("waiting"):
        stdout.print(Text(f"waiting: {job['waiting']}", style="yellow"))
    stdout.print(Text(job_progress(job)))  # Text: the bar's brackets are not rich markup
    metrics, workers = job["batch_metrics"], job["worker_counts"]
    table = _table("batches", "succeeded", "failed", "in progress", "in queue", "avg time per batch")
    table.add_row(
        str(job["total_batch_count"]),
        str(metrics["succeeded"]),
        str(metrics["failed"]),
        str(metrics["in_progress"]),
        str(job["batches_in_queue"]),
        latency(metrics["avg_time_per_batch"]),
    )
    stdout.print(table)
    workers_table = _table("workers", "pending", "initializing", "running", "succeeded", "failed")
    workers_table.add_row(
        str(job["workers"]),
        str(workers["pending"]),
        str(workers["initializing"]),
        str(workers["running"]),
        str(workers["succeeded"]),
        str(workers["failed"]),
    )
    stdout.print(workers_table)
    start, end = job.get("start_time"), job.get("end_time")
    stdout.print(
        f"submitted {age(now - job['created_time'])} ago"
        + (f", started {age(now - start)} ago" if start else ", not started")
        + (f", ran {age(end - (start or job['created_time']))}" if end else "")
    )
    failed = job.get("failed_batches") or []
    if failed:
        stdout.print("\nfailed batches", style="bold")
        failures = _table("batch id", "attempts", "error")
        for batch in failed[:20]:
            first = (batch.get("error") or "").strip().splitlines()
            failures.add_row(batch["batch_id"], str(batch["attempts"]), first[-1] if first else "-")
        stdout.print(failures)
        if len(failed) > 20:
            stdout.print(f"... and {len(failed) - 20} more (see -o json)")
    completion = job.get("on_job_complete")
    if completion and completion.get("error"):
        stdout.print(Text(f"\non_job_complete failed: {completion['error']}", style="red"))
    stdout.print(f"\nendpoint: {job['endpoint']}")


def batching_table(batching: dict[str, Any]) -> Table:
    """Server-side batch sizes: how many batches had at most each size, and the average."""
    avg = batching.get("avg_size")
    table = _table("batch size", "batches")
    previous = 0
    for bucket in batching["sizes"]:
        if bucket["batches"]:
            low, high = previous + 1, bucket["le"]
            table.add_row(str(high) if low == high else f"{low}-{high}", str(bucket["batches"]))
        previous = bucket["le"]
    table.add_row(
        "total",
        f"{batching['batches']} batches, {batching['requests']} requests"
        + (f", {avg:.1f} per batch on average" if avg is not None else ""),
    )
    return table
