"""Unit tests of the API kinds in spec.model: what BatchAPI, TaskAPI and AsyncAPI accept, resolve, dump and
show, and the `async` settings with their day-long durations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelport.spec.errors import SpecError, problems_from_validation
from modelport.spec.load import load_project
from modelport.spec.model import ApiSpec, AsyncSpec, AutoscalingSpec, PredictorSpec
from modelport.spec.units import format_duration, parse_duration
from modelport.types import ApiKind
from tests.support import write_files

PREDICTOR = {"type": "python", "path": "predictor.py"}


def api(kind: str, **fields: Any) -> dict[str, Any]:
    return {"name": "job", "kind": kind, "predictor": dict(PREDICTOR), **fields}


def problems(entry: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        ApiSpec.model_validate(entry)
    return [str(problem) for problem in problems_from_validation(caught.value, file="m.yaml", prefix=(0,))]


# --- BatchAPI and TaskAPI -------------------------------------------------------------------------

BATCH_REASONS = {
    "autoscaling": "a job's workers are chosen when it is submitted",
    "update_strategy": "a job's workers run the API as it was when the job was submitted",
    "monitoring": "a batch's predictions are not returned through the API",
    "predictor.server_side_batching": "predict already receives a whole batch of the job's items",
    "predictor.processes_per_replica": "a worker runs one batch at a time",
    "predictor.threads_per_process": "a worker runs one batch at a time",
    "predictor.idempotent": "a batch whose worker fails is retried up to the job's max_receive_count",
}
TASK_REASONS = {
    "autoscaling": "each submitted task runs in one worker of its own",
    "update_strategy": "a task runs the API as it was when the task was submitted",
    "monitoring": "a task returns no predictions",
    "predictor.server_side_batching": "a task is called once, with its config",
    "predictor.processes_per_replica": "a task runs once, in one process",
    "predictor.threads_per_process": "a task runs once, in one process",
    "predictor.idempotent": "a task runs once per submission",
}
VALUES: dict[str, Any] = {
    "autoscaling": {"min_replicas": 0},
    "update_strategy": {"max_surge": 1},
    "monitoring": {"model_type": "regression"},
    "predictor.server_side_batching": {"max_batch_size": 8, "batch_interval": "10ms"},
    "predictor.processes_per_replica": 1,  # even a value equal to the default: it means nothing here
    "predictor.threads_per_process": 2,
    "predictor.idempotent": False,
}


def with_field(entry: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    section, _, field = path.partition(".")
    if field:
        entry[section] = {**entry[section], field: value}
    else:
        entry[section] = value
    return entry


@pytest.mark.parametrize(
    ("kind", "path", "reason"),
    [("BatchAPI", path, reason) for path, reason in BATCH_REASONS.items()]
    + [("TaskAPI", path, reason) for path, reason in TASK_REASONS.items()],
)
def test_job_kinds_refuse_the_fields_they_do_not_use(kind: str, path: str, reason: str) -> None:
    entry = with_field(api(kind), path, VALUES[path])
    assert problems(entry) == [f"m.yaml: [0].{path}: not used by kind {kind} ({reason}): remove it"]
    assert ApiSpec.model_validate(with_field(api("RealtimeAPI"), path, VALUES[path])).kind is ApiKind.REALTIME


def test_every_unused_field_is_reported_with_the_other_errors_at_once() -> None:
    entry = api(
        "BatchAPI",
        predictor={**PREDICTOR, "threads_per_process": "two", "env": {"1X": "a"}, "pth": "x"},
        autoscaling={"max_replicas": 0},
        monitoring={"model_type": "regression"},
        compute={"cpu": 0},
    )
    assert problems(entry) == [
        "m.yaml: [0].predictor.threads_per_process: not used by kind BatchAPI (a worker runs one batch at a "
        "time): remove it",
        "m.yaml: [0].predictor.env.1X: invalid environment variable name '1X': use letters, digits and '_', "
        "not starting with a digit",
        "m.yaml: [0].predictor.pth: unknown field 'pth': did you mean 'path'?",
        "m.yaml: [0].compute.cpu: must be > 0, got 0",
        "m.yaml: [0].autoscaling: not used by kind BatchAPI (a job's workers are chosen when it is "
        "submitted): remove it",
        "m.yaml: [0].monitoring: not used by kind BatchAPI (a batch's predictions are not returned through "
        "the API): remove it",
    ]


@pytest.mark.parametrize("kind", ["BatchAPI", "TaskAPI"])
def test_job_kinds_keep_compute_networking_config_and_env(kind: str) -> None:
    spec = ApiSpec.model_validate(
        api(
            kind,
            predictor={**PREDICTOR, "config": {"bucket": "b"}, "env": {"MODE": 1}, "python_path": "lib"},
            compute={"cpu": 2, "gpu": 1, "mem": "1Gi"},  # per worker
            networking={"endpoint": "/jobs/run", "api_gateway": "none"},
            autoscaling=None,  # null means unset, as for every field
        )
    )
    assert spec.kind == kind
    assert spec.compute.cpu == 2.0 and spec.compute.gpu == 1 and spec.compute.mem == 2**30
    assert spec.networking.endpoint == "/jobs/run"
    assert spec.predictor.config == {"bucket": "b"} and spec.predictor.env == {"MODE": "1"}
    # The unused sections keep their defaults on the object, so every ApiSpec has the same attributes.
    assert spec.autoscaling == AutoscalingSpec()
    assert spec.predictor.processes_per_replica == 1 and spec.monitoring is None
    assert spec.async_settings is None


def test_python_construction_follows_the_same_rules() -> None:
    with pytest.raises(ValidationError, match="not used by kind BatchAPI"):
        ApiSpec(
            name="b",
            kind=ApiKind.BATCH,
            predictor=PredictorSpec(type="python", path="p.py", processes_per_replica=2),
        )
    with pytest.raises(ValidationError, match=r"autoscaling\n.*not used by kind TaskAPI"):
        ApiSpec(
            name="t",
            kind=ApiKind.TASK,
            predictor=PredictorSpec(type="python", path="p.py"),
            autoscaling=AutoscalingSpec(),
        )
    spec = ApiSpec(
        name="a",
        kind=ApiKind.ASYNC,
        predictor=PredictorSpec(type="python", path="p.py", threads_per_process=3),
        async_settings=AsyncSpec(max_receive_count=5),
    )
    assert spec.async_settings == AsyncSpec(result_retention=7 * 86400.0, max_receive_count=5)
    assert spec.autoscaling.target_replica_concurrency == 3.0


# --- AsyncAPI -------------------------------------------------------------------------------------


def test_async_api_autoscales_like_a_realtime_api() -> None:
    spec = ApiSpec.model_validate(
        api(
            "AsyncAPI",
            predictor={
                **PREDICTOR,
                "processes_per_replica": 2,
                "threads_per_process": 4,
                "idempotent": False,
            },
            autoscaling={"min_replicas": 0, "max_replicas": 3},
            update_strategy={"max_surge": 0, "max_unavailable": 1},
        )
    )
    assert spec.autoscaling.min_replicas == 0 and spec.autoscaling.init_replicas == 0
    assert spec.autoscaling.target_replica_concurrency == 8.0  # processes x threads
    assert spec.update_strategy.unavailable_for(3) == 1
    assert spec.async_settings == AsyncSpec()
    assert (spec.async_settings.result_retention, spec.async_settings.max_receive_count) == (604800.0, 3)


def test_async_api_refuses_batching_and_monitoring() -> None:
    entry = api(
        "AsyncAPI",
        predictor={**PREDICTOR, "server_side_batching": {"max_batch_size": 4, "batch_interval": "5ms"}},
        monitoring={"model_type": "classification"},
    )
    assert problems(entry) == [
        "m.yaml: [0].predictor.server_side_batching: not used by kind AsyncAPI (queued requests are taken "
        "one at a time by each predictor thread): remove it",
        "m.yaml: [0].monitoring: not used by kind AsyncAPI (an AsyncAPI's results are stored, not returned "
        "to the client that sent the request): remove it",
    ]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, (604800.0, 3)),
        ({"result_retention": "1d12h"}, (129600.0, 3)),
        ({"result_retention": "30m", "max_receive_count": 1}, (1800.0, 1)),
        ({"result_retention": 3600}, (3600.0, 3)),
        ({"result_retention": "0s"}, "async.result_retention: must be > 0s (e.g. 7d or 12h), got 0s"),
        (
            {"result_retention": "a week"},
            "async.result_retention: expected a duration like 7d, 12h or 1d12h (or a number of seconds), got "
            "'a week'",
        ),
        ({"max_receive_count": 0}, "async.max_receive_count: must be >= 1, got 0"),
        (
            {"max_receive": 2},
            "async.max_receive: unknown field 'max_receive': did you mean 'max_receive_count'?",
        ),
        ("7d", "async: expected a mapping with the fields result_retention, max_receive_count, got '7d'"),
    ],
)
def test_async_settings(settings: object, expected: tuple[float, int] | str) -> None:
    entry = api("AsyncAPI", **{"async": settings})
    if isinstance(expected, str):
        assert problems(entry) == [f"m.yaml: [0].{expected}"]
    else:
        resolved = ApiSpec.model_validate(entry).async_settings
        assert resolved is not None
        assert (resolved.result_retention, resolved.max_receive_count) == expected


@pytest.mark.parametrize("kind", ["RealtimeAPI", "BatchAPI", "TaskAPI"])
def test_async_settings_belong_to_async_apis_only(kind: str) -> None:
    assert problems(api(kind, **{"async": {"max_receive_count": 2}})) == [
        f"m.yaml: [0].async: only used by kind AsyncAPI (how long results are kept, how often a request is "
        f"tried), not by kind {kind}: remove it"
    ]
    assert ApiSpec.model_validate(api(kind)).async_settings is None


def test_a_misspelt_async_key_is_suggested() -> None:
    assert problems(api("AsyncAPI", asynch={})) == [
        "m.yaml: [0].asynch: unknown field 'asynch': did you mean 'async'?"
    ]


# --- round trip and display -----------------------------------------------------------------------

EVERY_KIND = {
    "realtime": api("RealtimeAPI", autoscaling={"min_replicas": 0}),
    "batch": api("BatchAPI", predictor={**PREDICTOR, "config": {"k": [1, None]}}, compute={"mem": "512Mi"}),
    "task": api("TaskAPI", networking={"endpoint": "/t"}),
    "async": api(
        "AsyncAPI",
        predictor={**PREDICTOR, "threads_per_process": 2},
        **{"async": {"result_retention": "1d12h", "max_receive_count": 5}},
    ),
    "async-defaults": api("AsyncAPI"),
}


@pytest.mark.parametrize("entry", EVERY_KIND.values(), ids=EVERY_KIND.keys())
def test_every_kind_round_trips_through_json(entry: dict[str, Any]) -> None:
    spec = ApiSpec.model_validate(entry)
    text = spec.model_dump_json()
    again = ApiSpec.model_validate_json(text)  # how the replica and the workers read it
    assert again == spec
    assert again.model_dump_json() == text
    assert ApiSpec.model_validate(spec.model_dump()) == spec
    assert ApiSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_dumps_leave_out_what_the_kind_does_not_use() -> None:
    batch = ApiSpec.model_validate(EVERY_KIND["batch"]).model_dump(mode="json")
    assert set(batch) == {"name", "kind", "predictor", "compute", "networking"}
    assert set(batch["predictor"]) == {"type", "path", "config", "python_path", "env", "image"}
    asynchronous = ApiSpec.model_validate(EVERY_KIND["async"]).model_dump(mode="json")
    assert asynchronous["async"] == {"result_retention": 129600.0, "max_receive_count": 5}
    assert "monitoring" not in asynchronous and "server_side_batching" not in asynchronous["predictor"]
    # A RealtimeAPI dumps as before the new kinds, so its revision does not change on upgrade.
    realtime = ApiSpec.model_validate(EVERY_KIND["realtime"]).model_dump(mode="json")
    assert "async" not in realtime and "async_settings" not in realtime
    assert realtime["monitoring"] is None and realtime["predictor"]["server_side_batching"] is None


def test_display_dict_of_each_kind() -> None:
    task = ApiSpec.model_validate(EVERY_KIND["task"]).to_display_dict()
    assert task["kind"] == "TaskAPI"
    assert task["compute"] == {"cpu": "200m", "gpu": 0, "inf": 0, "mem": None}
    assert task["networking"]["endpoint"] == "/t"
    assert "autoscaling" not in task and "update_strategy" not in task
    shown = ApiSpec.model_validate(EVERY_KIND["async"]).to_display_dict()
    assert shown["async"] == {"result_retention": "1d12h", "max_receive_count": 5}
    assert shown["autoscaling"]["window"] == "1m" and shown["autoscaling"]["target_replica_concurrency"] == 2
    assert ApiSpec.model_validate(EVERY_KIND["async-defaults"]).to_display_dict()["async"] == {
        "result_retention": "7d",
        "max_receive_count": 3,
    }


def test_a_project_mixing_every_kind_loads(tmp_path: Path) -> None:
    text = """\
- {name: iris, kind: RealtimeAPI, predictor: {type: python, path: predictor.py}}
- name: score
  kind: BatchAPI
  predictor: {type: python, path: batch.py, config: {dest: /tmp/out}}
  compute: {cpu: 1}
- {name: train, kind: TaskAPI, predictor: {type: python, path: task.py}}
- name: caption
  kind: AsyncAPI
  predictor: {type: python, path: predictor.py}
  async: {result_retention: 2d}
- {name: gone, kind: TaskAPI, predictor: {type: python, path: missing_task.py}}
"""
    write_files(
        tmp_path,
        {"modelport.yaml": text, "predictor.py": "", "batch.py": "", "task.py": "class Task: ...\n"},
    )
    with pytest.raises(SpecError) as caught:
        load_project(tmp_path)
    assert str(caught.value) == (
        f"modelport.yaml: [4].predictor.path: file 'missing_task.py' not found in the project directory "
        f"{tmp_path.absolute()}"
    )
    write_files(tmp_path, {"modelport.yaml": text.rsplit("- {name: gone", 1)[0]})
    loaded = load_project(tmp_path)
    assert [spec.kind for spec in loaded.apis] == [
        ApiKind.REALTIME,
        ApiKind.BATCH,
        ApiKind.TASK,
        ApiKind.ASYNC,
    ]
    caption = loaded.api("caption").async_settings
    assert caption is not None and caption.result_retention == 2 * 86400.0
    assert len({loaded.revision(spec.name) for spec in loaded.apis}) == 4


# --- durations in days ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("7d", 604800.0, "7d"),
        ("1d12h", 129600.0, "1d12h"),
        ("2d30m", 174600.0, "2d30m"),
        ("36h", 129600.0, "1d12h"),
        ("12h", 43200.0, "12h"),
        (90, 90.0, "1m30s"),
    ],
)
def test_days_are_accepted_and_shown_where_asked(text: object, seconds: float, shown: str) -> None:
    assert parse_duration(text, days=True) == seconds
    assert format_duration(seconds, days=True) == shown
    assert parse_duration(shown, days=True) == seconds


@pytest.mark.parametrize("text", ["1.5d", "d", "1d-1h", "7 days", "1h2d"])
def test_malformed_day_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like 7d, 12h or 1d12h"):
        parse_duration(text, days=True)


def test_days_stay_out_of_the_ordinary_durations() -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like 30s, 5m"):
        parse_duration("7d")
    assert format_duration(604800) == "168h"
