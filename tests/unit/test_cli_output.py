"""Unit tests of cli.output: the age/latency formats and the rich tables `modelport get`/`describe` print.

Tables are rendered into a recording Console and asserted on their text, as a user would read them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from modelport.cli import output

NOW = 1_780_000_000.0


def render(table: Table, *, styles: bool = False) -> str:
    console = Console(record=True, width=200, force_terminal=styles, color_system="standard")
    console.print(table)
    return console.export_text(styles=styles)


def rows(text: str) -> list[list[str]]:
    """Each non-blank line split into its cells (cells hold no double spaces)."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in text.splitlines() if line]


def api_json(**overrides: Any) -> dict[str, Any]:
    """The shape of cluster.serialize.api_summary."""
    api: dict[str, Any] = {
        "name": "iris",
        "kind": "RealtimeAPI",
        "status": "live",
        "reason": None,
        "revision": "aaaaaa111111",
        "requested": 2,
        "up_to_date": 2,
        "stale": 0,
        "last_updated": NOW - 125,
        "endpoint": "http://localhost:8888/iris",
        "metrics": {
            "requests": 10,
            "2XX": 7,
            "4XX": 3,
            "5XX": 0,
            "avg_latency_seconds": 0.0123,
            "in_flight": 0,
        },
    }
    api.update(overrides)
    return api


def replica_json(**overrides: Any) -> dict[str, Any]:
    """The shape of cluster.serialize.replica_json."""
    replica: dict[str, Any] = {
        "replica_id": "iris-aaaaaa-0a1b2c",
        "phase": "ready",
        "revision": "aaaaaa111111",
        "generation": 0,
        "up_to_date": True,
        "in_flight": 3,
        "restarts": 0,
        "started_at": NOW - 7200,
        "ready_at": NOW - 7190,
        "pid": 4242,
        "log_path": "/home/logs/iris/iris-aaaaaa-0a1b2c.log",
    }
    replica.update(overrides)
    return replica


# --- age ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (-5.0, "0s"),  # clock skew between the daemon and the CLI never shows a negative age
        (0.0, "0s"),
        (59.9, "59s"),
        (60.0, "1m"),
        (3599.0, "59m"),
        (3600.0, "1h"),
        (86399.0, "23h"),
        (86400.0, "1d"),
        (10_000_000.0, "115d"),
    ],
)
def test_age_uses_the_largest_whole_unit(seconds: float | None, shown: str) -> None:
    assert output.age(seconds) == shown


# --- latency --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.0, "0µs"),
        (0.0005, "500µs"),
        (0.001, "1.0ms"),  # below 10 ms a decimal is kept
        (0.0099, "9.9ms"),
        (0.01, "10ms"),
        (0.0123, "12ms"),
        (0.5, "500ms"),
        (1.0, "1.0s"),
        (2.345, "2.3s"),
    ],
)
def test_latency_picks_a_unit_and_precision(seconds: float | None, shown: str) -> None:
    assert output.latency(seconds) == shown


@pytest.mark.parametrize(("seconds", "shown"), [(0.9996, "1.0s"), (0.0009996, "1.0ms")])
def test_latency_rounding_up_to_the_next_unit_uses_that_unit(seconds: float, shown: str) -> None:
    assert output.latency(seconds) == shown


# --- apis_table -----------------------------------------------------------------------------------


def test_apis_table_renders_one_row_per_api_with_cortex_columns() -> None:
    text = render(
        output.apis_table(
            [
                api_json(),
                api_json(
                    name="sleep",
                    status="updating",
                    requested=3,
                    up_to_date=1,
                    last_updated=NOW - 30,
                    metrics={
                        "requests": 0,
                        "2XX": 0,
                        "4XX": 0,
                        "5XX": 0,
                        "avg_latency_seconds": None,
                        "in_flight": 0,
                    },
                ),
            ],
            now=NOW,
        )
    )
    header, iris, sleep = rows(text)
    assert header == [
        "api",
        "status",
        "up-to-date",
        "requested",
        "last update",
        "avg request",
        "2XX",
        "4XX",
        "5XX",
    ]
    assert iris == ["iris", "live", "2", "2", "2m", "12ms", "7", "3", "-"]
    # No traffic yet: zero counts and a missing latency read as "-".
    assert sleep == ["sleep", "updating", "1", "3", "30s", "-", "-", "-", "-"]


def test_apis_table_without_a_last_update_shows_a_dash() -> None:
    text = render(output.apis_table([api_json(last_updated=None)], now=NOW))
    assert rows(text)[1][4] == "-"


def test_apis_table_colours_the_status() -> None:
    text = render(
        output.apis_table([api_json(), api_json(name="broken", status="error")], now=NOW), styles=True
    )
    assert "\x1b[32mlive" in text  # green
    assert "\x1b[31merror" in text  # red


def test_apis_table_of_no_apis_has_only_the_header() -> None:
    assert len(rows(render(output.apis_table([], now=NOW)))) == 1


# --- replicas_table -------------------------------------------------------------------------------


def test_replicas_table_renders_state_revision_and_age() -> None:
    text = render(
        output.replicas_table(
            [
                replica_json(),
                replica_json(
                    replica_id="iris-bbbbbb-3d4e5f",
                    phase="starting",
                    revision="bbbbbb222222",
                    up_to_date=False,
                    in_flight=0,
                    restarts=2,
                    started_at=NOW - 8,
                ),
            ],
            now=NOW,
        )
    )
    header, first, second = rows(text)
    assert header == ["replica", "state", "revision", "up-to-date", "in-flight", "restarts", "age"]
    assert first == ["iris-aaaaaa-0a1b2c", "ready", "aaaaaa111111", "yes", "3", "0", "2h"]
    assert second == ["iris-bbbbbb-3d4e5f", "starting", "bbbbbb222222", "no", "0", "2", "8s"]


# --- show_api / print_json ------------------------------------------------------------------------


def test_show_api_prints_the_row_reason_counts_endpoint_curl_and_spec(
    capsys: pytest.CaptureFixture[str],
) -> None:
    detail = api_json(
        status="error",
        reason="predictor __init__ failed: see `modelport logs iris`",
        up_to_date=0,
        stale=1,
        example_curl="curl http://localhost:8888/iris -X POST",
        spec={"name": "iris", "predictor": {"path": "predictor.py"}},
    )
    output.show_api(detail, now=NOW)
    out = capsys.readouterr().out
    assert "predictor __init__ failed: see `modelport logs iris`" in out
    assert "replicas: 0 up to date, 1 stale, 2 requested" in out
    assert "endpoint: http://localhost:8888/iris" in out
    assert "example curl: curl http://localhost:8888/iris -X POST" in out
    assert "name: iris\npredictor:\n  path: predictor.py" in out


def test_print_json_writes_indented_json_in_field_order(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_json({"name": "iris", "2XX": 1})
    out = capsys.readouterr().out
    assert out == '{\n  "name": "iris",\n  "2XX": 1\n}\n'
    assert json.loads(out) == {"name": "iris", "2XX": 1}


def test_error_goes_to_stderr_with_a_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    output.error("api iris is not deployed")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: api iris is not deployed\n"


def job_json(**overrides: Any) -> dict[str, Any]:
    """The shape of cluster.jobs_api.job_summary (plus the detail fields of job_json)."""
    job: dict[str, Any] = {
        "job_id": "6b08be2e",
        "api_name": "batch-sum",
        "kind": "BatchAPI",
        "status": "running",
        "reason": None,
        "waiting": None,
        "workers": 2,
        "total_batch_count": 10,
        "batches_in_queue": 5,
        "batch_metrics": {"succeeded": 3, "failed": 1, "in_progress": 1, "avg_time_per_batch": 0.0042},
        "worker_counts": {
            "pending": 0,
            "initializing": 0,
            "running": 2,
            "succeeded": 0,
            "failed": 0,
            "stalled": 0,
        },
        "created_time": NOW - 65,
        "start_time": NOW - 60,
        "end_time": None,
        "failed_batches": [{"batch_id": "7", "attempts": 3, "error": "Traceback...\nValueError: bad item"}],
        "on_job_complete": {"state": "queued", "error": None},
        "endpoint": "http://localhost:8888/batch-sum/6b08be2e",
    }
    job.update(overrides)
    return job


def test_job_progress_counts_settled_batches_and_failures() -> None:
    assert output.job_progress(job_json(), width=10) == "[####------] 4/10 batches (1 failed)"
    done = job_json(batch_metrics={"succeeded": 10, "failed": 0, "in_progress": 0, "avg_time_per_batch": 0.1})
    assert output.job_progress(done, width=4) == "[####] 10/10 batches"


def test_jobs_table_shows_the_progress_bar_verbatim_and_the_running_workers() -> None:
    text = render(output.jobs_table([job_json()], now=NOW))
    [header, row] = rows(text)
    assert header == ["job id", "status", "progress", "workers", "avg batch", "started", "duration"]
    assert row == [
        "6b08be2e",
        "running",
        "[####------] 4/10 batches (1 failed)",
        "2/2",
        "4.2ms",
        "1m ago",
        "1m",
    ]


def test_show_job_prints_the_bar_counts_and_the_failed_batches_last_error_line() -> None:
    console = Console(record=True, width=200)
    original = output.stdout
    output.stdout = console
    try:
        output.show_job(job_json(), now=NOW)
    finally:
        output.stdout = original
    text = console.export_text()
    assert "job 6b08be2e of batch-sum (BatchAPI): running" in text
    assert "[####################" not in text and "[########------------] 4/10 batches (1 failed)" in text
    assert ["7", "3", "ValueError: bad item"] in rows(text)
    assert "endpoint: http://localhost:8888/batch-sum/6b08be2e" in text
