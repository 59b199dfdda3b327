"""Unit tests of spec.model (defaults, constraints, round trip, display), spec.units and spec.errors' "
"wording."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelport.spec.errors import SpecError, SpecProblem, problems_from_validation
from modelport.spec.model import (
    ApiSpec,
    AutoscalingSpec,
    ComputeSpec,
    NetworkingSpec,
    PredictorSpec,
    ServerSideBatchingSpec,
    UpdateStrategySpec,
)
from modelport.spec.units import (
    format_cpu,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)
from modelport.types import ApiKind


def entry(**sections: Any) -> dict[str, Any]:
    """A minimal valid API mapping, with `sections` merged over it (a None value removes the key)."""
    api: dict[str, Any] = {
        "name": "iris",
        "kind": "RealtimeAPI",
        "predictor": {"type": "python", "path": "predictor.py"},
    }
    for key, value in sections.items():
        if value is None:
            api.pop(key, None)
        elif isinstance(value, dict) and isinstance(api.get(key), dict):
            api[key] = {**api[key], **value}
        else:
            api[key] = value
    return api


def problems(api: dict[str, Any]) -> list[str]:
    """The lines a user would read for one invalid API at index 0."""
    with pytest.raises(ValidationError) as caught:
        ApiSpec.model_validate(api)
    return [
        str(problem) for problem in problems_from_validation(caught.value, file="modelport.yaml", prefix=(0,))
    ]


# --- defaults -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "expected"),
    [
        ("predictor", "config", {}),
        ("predictor", "python_path", None),
        ("predictor", "env", {}),
        ("predictor", "processes_per_replica", 1),
        ("predictor", "threads_per_process", 1),
        ("predictor", "image", None),
        ("predictor", "server_side_batching", None),
        ("compute", "cpu", 0.2),
        ("compute", "gpu", 0),
        ("compute", "inf", 0),
        ("compute", "mem", None),
        ("autoscaling", "min_replicas", 1),
        ("autoscaling", "max_replicas", 100),
        ("autoscaling", "init_replicas", 1),
        ("autoscaling", "target_replica_concurrency", 1.0),
        ("autoscaling", "max_replica_concurrency", 1024),
        ("autoscaling", "window", 60.0),
        ("autoscaling", "downscale_stabilization_period", 300.0),
        ("autoscaling", "upscale_stabilization_period", 60.0),
        ("autoscaling", "max_downscale_factor", 0.75),
        ("autoscaling", "max_upscale_factor", 1.5),
        ("autoscaling", "downscale_tolerance", 0.05),
        ("autoscaling", "upscale_tolerance", 0.05),
        ("update_strategy", "max_surge", "25%"),
        ("update_strategy", "max_unavailable", "25%"),
        ("networking", "endpoint", "/iris"),
        ("networking", "api_gateway", "public"),
        ("networking", "local_port", None),
    ],
)
def test_every_default_is_resolved(section: str, field: str, expected: object) -> None:
    spec = ApiSpec.model_validate(entry())
    assert getattr(getattr(spec, section), field) == expected
    assert spec.monitoring is None
    assert spec.kind is ApiKind.REALTIME


def test_dependent_defaults_follow_the_fields_they_depend_on() -> None:
    spec = ApiSpec.model_validate(
        entry(
            name="sleep",
            predictor={"processes_per_replica": 3, "threads_per_process": 4},
            autoscaling={"min_replicas": 2},
        )
    )
    assert spec.autoscaling.target_replica_concurrency == 12.0
    assert spec.autoscaling.init_replicas == 2
    assert spec.networking.endpoint == "/sleep"


def test_explicit_values_and_nulls() -> None:
    explicit = ApiSpec.model_validate(
        entry(
            autoscaling={"target_replica_concurrency": 2.5, "init_replicas": 3}, networking={"endpoint": "/x"}
        )
    )
    assert explicit.autoscaling.target_replica_concurrency == 2.5
    assert explicit.autoscaling.init_replicas == 3
    assert explicit.networking.endpoint == "/x"
    # An empty YAML block (`compute:`) or a null field means "use the default".
    nulls = ApiSpec.model_validate(
        entry(compute=None, autoscaling={"init_replicas": None}) | {"compute": None}
    )
    assert nulls.compute == ComputeSpec()
    assert nulls.autoscaling.init_replicas == 1


def test_constructing_in_python_resolves_the_same_defaults() -> None:
    spec = ApiSpec(
        name="a",
        kind=ApiKind.REALTIME,
        predictor=PredictorSpec(type="python", path="p.py", processes_per_replica=2, threads_per_process=3),
        autoscaling=AutoscalingSpec(min_replicas=2),
    )
    assert spec.autoscaling.target_replica_concurrency == 6.0
    assert spec.autoscaling.init_replicas == 2
    assert spec.networking == NetworkingSpec(endpoint="/a")


@pytest.mark.parametrize(
    ("batching", "messages"),
    [
        ({"max_batch_size": 2, "batch_interval": "1ms"}, []),
        ({"max_batch_size": 1024, "batch_interval": 0.5}, []),
        (
            {"max_batch_size": 1, "batch_interval": "10ms"},
            [
                "max_batch_size: must be >= 2, got 1: a batch of one is no batching (remove "
                "server_side_batching to turn it off)"
            ],
        ),
        ({"max_batch_size": 1025, "batch_interval": "10ms"}, ["max_batch_size: must be <= 1024, got 1025"]),
        ({"max_batch_size": 8.0, "batch_interval": "10ms"}, ["max_batch_size: expected an integer, got 8"]),
        (
            {"max_batch_size": 8, "batch_interval": "0s"},
            ["batch_interval: must be > 0s (e.g. 10ms), got 0s"],
        ),
        (
            {"max_batch_size": 8, "batch_interval": "soon"},
            [
                "batch_interval: expected a duration like 30s, 5m, 1h30m or 250ms (or a number of seconds), "
                "got 'soon'"
            ],
        ),
        (
            {"max_batch_size": 8},
            ["batch_interval: required: how long a batch may wait for a busy predictor, e.g. 10ms"],
        ),
        (
            {"max_batch_size": 8, "batch_interval": "1s", "threads": 8},
            ["threads: unknown field 'threads': expected one of max_batch_size, batch_interval"],
        ),
    ],
)
def test_server_side_batching(batching: dict[str, Any], messages: list[str]) -> None:
    api = entry(predictor={"server_side_batching": batching})
    if not messages:
        resolved = ApiSpec.model_validate(api).predictor.server_side_batching
        assert resolved is not None and resolved.max_batch_size == batching["max_batch_size"]
        assert ApiSpec.model_validate_json(ApiSpec.model_validate(api).model_dump_json()) == (
            ApiSpec.model_validate(api)
        )
    else:
        prefix = "modelport.yaml: [0].predictor.server_side_batching."
        assert problems(api) == [prefix + message for message in messages]


def test_server_side_batching_does_not_require_threads_to_match() -> None:
    # Cortex 0.25 required threads_per_process == max_batch_size; waiting requests hold no thread here.
    spec = ApiSpec.model_validate(
        entry(predictor={"server_side_batching": {"max_batch_size": 32, "batch_interval": "5ms"}})
    )
    assert spec.predictor.threads_per_process == 1
    assert spec.predictor.server_side_batching == ServerSideBatchingSpec(
        max_batch_size=32, batch_interval=0.005
    )


def test_specs_are_frozen() -> None:
    spec = ApiSpec.model_validate(entry())
    with pytest.raises(ValidationError):
        spec.name = "other"


# --- constraints at their edges -------------------------------------------------------------------

OK = None


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("predictor", {"processes_per_replica": 1}, OK),
        ("predictor", {"processes_per_replica": 100}, OK),
        ("predictor", {"processes_per_replica": 0}, "predictor.processes_per_replica: must be >= 1, got 0"),
        (
            "predictor",
            {"processes_per_replica": 101},
            "predictor.processes_per_replica: must be <= 100, got 101",
        ),
        ("predictor", {"threads_per_process": 0}, "predictor.threads_per_process: must be >= 1, got 0"),
        ("compute", {"cpu": 0}, "compute.cpu: must be > 0, got 0"),
        ("compute", {"gpu": -1}, "compute.gpu: must be >= 0, got -1"),
        ("compute", {"gpu": 0.5}, "compute.gpu: expected an integer, got 0.5"),
        ("compute", {"inf": 2}, OK),
        ("compute", {"mem": 0}, "compute.mem: must be > 0 bytes (e.g. 512Mi), got 0"),
        ("autoscaling", {"min_replicas": 0}, OK),
        (
            "autoscaling",
            {"activation_queue_limit": 0},
            "autoscaling.activation_queue_limit: must be >= 1, got 0",
        ),
        (
            "autoscaling",
            {"activation_timeout": "0s"},
            "autoscaling.activation_timeout: must be > 0s (e.g. 60s), got 0s",
        ),
        ("predictor", {"idempotent": False}, OK),
        ("predictor", {"idempotent": "no"}, "predictor.idempotent: expected true or false, got 'no'"),
        ("autoscaling", {"min_replicas": -1}, "autoscaling.min_replicas: must be >= 0, got -1"),
        (
            "autoscaling",
            {"max_replicas": 0, "min_replicas": 1},
            "autoscaling.max_replicas: must be > 0, got 0",
        ),
        ("autoscaling", {"min_replicas": 2, "max_replicas": 2}, OK),
        (
            "autoscaling",
            {"min_replicas": 2, "max_replicas": 1},
            "autoscaling.max_replicas: must be >= min_replicas (2), got 1",
        ),
        (
            "autoscaling",
            {"min_replicas": 2, "init_replicas": 1},
            "autoscaling.init_replicas: must be >= min_replicas (2), got 1",
        ),
        (
            "autoscaling",
            {"max_replicas": 3, "init_replicas": 4},
            "autoscaling.init_replicas: must be <= max_replicas (3), got 4",
        ),
        ("autoscaling", {"max_replicas": 3, "init_replicas": 3}, OK),
        (
            "autoscaling",
            {"target_replica_concurrency": 0},
            "autoscaling.target_replica_concurrency: must be > 0, got 0",
        ),
        ("autoscaling", {"target_replica_concurrency": 0.5}, OK),
        (
            "autoscaling",
            {"max_replica_concurrency": 0},
            "autoscaling.max_replica_concurrency: must be >= 1, got 0",
        ),
        ("autoscaling", {"max_replica_concurrency": 65535}, OK),
        (
            "autoscaling",
            {"max_replica_concurrency": 65536},
            "autoscaling.max_replica_concurrency: must be <= 65535, got 65536",
        ),
        ("autoscaling", {"window": "10s"}, OK),
        (
            "autoscaling",
            {"window": 9},
            "autoscaling.window: must be at least 10s and a multiple of 10s, got 9s",
        ),
        (
            "autoscaling",
            {"window": "45s"},
            "autoscaling.window: must be at least 10s and a multiple of 10s, got 45s",
        ),
        ("autoscaling", {"downscale_stabilization_period": 0}, OK),
        (
            "autoscaling",
            {"upscale_stabilization_period": "-1s"},
            "autoscaling.upscale_stabilization_period: must be >= 0s, got -1s",
        ),
        ("autoscaling", {"max_downscale_factor": 0}, OK),
        ("autoscaling", {"max_downscale_factor": 1}, "autoscaling.max_downscale_factor: must be < 1, got 1"),
        ("autoscaling", {"max_upscale_factor": 1}, "autoscaling.max_upscale_factor: must be > 1, got 1"),
        ("autoscaling", {"downscale_tolerance": 0.99}, OK),
        ("autoscaling", {"upscale_tolerance": -0.1}, "autoscaling.upscale_tolerance: must be >= 0, got -0.1"),
        ("update_strategy", {"max_surge": 0}, OK),
        ("update_strategy", {"max_surge": "100%"}, OK),
        (
            "update_strategy",
            {"max_surge": "101%"},
            "update_strategy.max_surge: expected a replica count like 1 or a percentage from 0% to 100%, "
            "got '101%'",
        ),
        (
            "update_strategy",
            {"max_unavailable": -1},
            "update_strategy.max_unavailable: expected a replica count like 1 or a percentage from 0% to "
            "100%, "
            "got -1",
        ),
        ("networking", {"endpoint": "/a/b-c_d.e~f"}, OK),
        (
            "networking",
            {"endpoint": "iris"},
            "networking.endpoint: must start with '/', e.g. '/iris-classifier', got 'iris'",
        ),
        (
            "networking",
            {"endpoint": "/iris?x=1"},
            "networking.endpoint: must be a plain path without a query string or fragment, got '/iris?x=1'",
        ),
        (
            "networking",
            {"endpoint": "/my api"},
            "networking.endpoint: must not contain spaces, got '/my api'",
        ),
        (
            "networking",
            {"endpoint": "/iris/"},
            "networking.endpoint: must not contain empty segments or end with '/', got '/iris/'",
        ),
        (
            "networking",
            {"endpoint": "/metrics"},
            "networking.endpoint: is reserved by the gateway (reserved: /metrics), got '/metrics'",
        ),
        ("networking", {"api_gateway": "none", "local_port": 8888}, OK),
        (
            "networking",
            {"api_gateway": "private"},
            "networking.api_gateway: expected one of 'public' or 'none', got 'private'",
        ),
        ("networking", {"local_port": 0}, "networking.local_port: must be >= 1, got 0"),
        ("monitoring", {"model_type": "regression", "key": "price"}, OK),
        (
            "monitoring",
            {"model_type": "ranking"},
            "monitoring.model_type: expected one of 'classification' or 'regression', got 'ranking'",
        ),
    ],
)
def test_constraint_edges(section: str, values: dict[str, Any], message: str | None) -> None:
    api = entry(**{section: values})
    if message is None:
        spec = ApiSpec.model_validate(api)
        for field, value in values.items():
            assert getattr(getattr(spec, section), field) is not None, (field, value)
    else:
        assert problems(api) == [f"modelport.yaml: [0].{message}"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("iris", True),
        ("iris-classifier-2", True),
        ("a", True),
        ("a" * 42, True),
        ("a" * 43, False),
        ("Iris", False),
        ("2iris", False),
        ("iris-", False),
        ("iris_classifier", False),
        ("", False),
    ],
)
def test_names_are_dns_1035_labels_of_at_most_42_characters(name: str, ok: bool) -> None:
    api = entry(name=name, networking={"endpoint": "/x"})
    if ok:
        assert ApiSpec.model_validate(api).name == name
    elif len(name) > 42:
        assert problems(api) == [
            f"modelport.yaml: [0].name: must be at most 42 characters, got 43 ({name!r})"
        ]
    else:
        assert problems(api) == [
            f"modelport.yaml: [0].name: invalid name {name!r}: use a DNS-1035 label: lowercase letters, "
            "digits "
            "and '-', starting with a letter and ending with a letter or digit (e.g. 'iris-classifier')"
        ]


@pytest.mark.parametrize(
    ("path", "stored", "message"),
    [
        ("predictor.py", "predictor.py", None),
        ("./src/../predictor.py", "predictor.py", None),
        ("src/predictor.py", "src/predictor.py", None),
        ("../predictor.py", None, "must stay inside the project directory, got '../predictor.py'"),
        ("src/../../p.py", None, "must stay inside the project directory, got 'src/../../p.py'"),
        ("/abs/predictor.py", None, "must be relative to the project directory, got '/abs/predictor.py'"),
        ("predictor", None, "must be the .py file that defines PythonPredictor, got 'predictor'"),
        ("", None, "must not be empty: give a path relative to the project directory"),
    ],
)
def test_predictor_path_stays_in_the_project(path: str, stored: str | None, message: str | None) -> None:
    api = entry(predictor={"path": path})
    if message is None:
        assert ApiSpec.model_validate(api).predictor.path == stored
    else:
        assert problems(api) == [f"modelport.yaml: [0].predictor.path: {message}"]


def test_python_path_is_normalised_and_must_stay_inside() -> None:
    assert ApiSpec.model_validate(entry(predictor={"python_path": "./lib/"})).predictor.python_path == "lib"
    assert problems(entry(predictor={"python_path": ".."})) == [
        "modelport.yaml: [0].predictor.python_path: must stay inside the project directory, got '..'"
    ]


def test_env_values_given_as_yaml_scalars_are_stringified() -> None:
    spec = ApiSpec.model_validate(entry(predictor={"env": {"A": 1, "B": True, "C": 0.5, "D": "x"}}))
    assert spec.predictor.env == {"A": "1", "B": "true", "C": "0.5", "D": "x"}
    assert problems(entry(predictor={"env": {"A": None, "1X": "y"}})) == [
        "modelport.yaml: [0].predictor.env.1X: invalid environment variable name '1X': use letters, digits "
        "and '_', not starting with a digit"
    ]
    assert problems(entry(predictor={"env": {"A": None}})) == [
        "modelport.yaml: [0].predictor.env.A: expected a string, got null"
    ]


def test_config_must_survive_json() -> None:
    import datetime

    config = {"labels": ["a", "b"], "nested": {"n": 1, "x": None, "f": 0.5}}
    assert ApiSpec.model_validate(entry(predictor={"config": config})).predictor.config == config
    dated = {"nested": {"when": datetime.date(2020, 1, 1)}}
    assert problems(entry(predictor={"config": dated})) == [
        "modelport.yaml: [0].predictor.config.nested.when: expected JSON-compatible data, got the date "
        "2020-01-01: quote it to keep it as text"
    ]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (
            "TrafficSplitter",
            "kind TrafficSplitter is not supported yet by this version; supported: RealtimeAPI, BatchAPI, "
            "AsyncAPI, TaskAPI",
        ),
        (
            "Realtime",
            "expected one of 'RealtimeAPI', 'BatchAPI', 'AsyncAPI', 'TaskAPI' or 'TrafficSplitter', got "
            "'Realtime'",
        ),
    ],
)
def test_unsupported_and_unknown_kinds(kind: str, message: str) -> None:
    assert problems(entry(kind=kind)) == [f"modelport.yaml: [0].kind: {message}"]


def test_other_predictor_types_are_not_supported_yet() -> None:
    assert problems(entry(predictor={"type": "tensorflow"})) == [
        "modelport.yaml: [0].predictor.type: predictor type 'tensorflow' is not supported yet by this "
        "version; "
        "supported: python"
    ]
    assert problems(entry(predictor={"type": "pytorch"})) == [
        "modelport.yaml: [0].predictor.type: expected one of 'python', got 'pytorch'"
    ]


def test_error_wording_for_types_unknown_and_missing_fields() -> None:
    api = entry(
        predictor={"threads_per_proces": 2, "processes_per_replica": "two"},
        autoscaling={"zzz": 1, "min_replicas": True},
        compute="big",
        monitoring={},
    )
    del api["kind"]
    assert problems(api) == [
        "modelport.yaml: [0].kind: required: the API kind; supported: RealtimeAPI, BatchAPI, AsyncAPI, "
        "TaskAPI",
        "modelport.yaml: [0].predictor.processes_per_replica: expected an integer, got 'two'",
        "modelport.yaml: [0].predictor.threads_per_proces: unknown field 'threads_per_proces': "
        "did you mean 'threads_per_process'?",
        "modelport.yaml: [0].compute: expected a mapping with the fields cpu, gpu, inf, mem, got 'big'",
        "modelport.yaml: [0].autoscaling.min_replicas: expected an integer, got true",
        "modelport.yaml: [0].autoscaling.zzz: unknown field 'zzz': expected one of min_replicas, "
        "max_replicas, "
        "init_replicas, target_replica_concurrency, max_replica_concurrency, window, "
        "downscale_stabilization_period, upscale_stabilization_period, max_downscale_factor, "
        "max_upscale_factor, "
        "downscale_tolerance, upscale_tolerance, activation_queue_limit, activation_timeout",
        "modelport.yaml: [0].monitoring.model_type: required: classification or regression",
    ]
    assert problems({"predictor": {"type": "python"}}) == [
        "modelport.yaml: [0].name: required: the API's name, a DNS-1035 label such as 'iris-classifier'",
        "modelport.yaml: [0].kind: required: the API kind; supported: RealtimeAPI, BatchAPI, AsyncAPI, "
        "TaskAPI",
        "modelport.yaml: [0].predictor.path: required: the file that defines PythonPredictor (Task for a "
        "TaskAPI), relative to the project directory",
    ]


def test_no_message_leaks_pydantic_wording() -> None:
    api = entry(
        predictor={"config": {1: "x"}, "env": ["A"], "image": 3},
        compute={"cpu": [], "mem": "lots"},
        autoscaling={"window": {}, "max_upscale_factor": "x"},
        networking={"endpoint": 5},
    )
    lines = problems(api)
    assert lines[:2] == [
        "modelport.yaml: [0].predictor.config.1: mapping keys must be strings, got 1: quote the key",
        "modelport.yaml: [0].predictor.env: expected a mapping, got a list",
    ]
    assert len(lines) == 8
    for line in lines:
        assert "Input should" not in line and "Field required" not in line, line
        assert line.startswith("modelport.yaml: [0]."), line


def test_spec_error_renders_one_line_per_problem() -> None:
    error = SpecError(
        [SpecProblem("modelport.yaml", "[0].name", "bad"), SpecProblem("modelport.yaml", "", "empty")]
    )
    assert str(error) == "modelport.yaml: [0].name: bad\nmodelport.yaml: empty"
    assert error.problems[0] == SpecProblem(file="modelport.yaml", path="[0].name", message="bad")


# --- update strategy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "expected"),
    [
        ("25%", "25%", 4, (1, 1)),
        ("25%", "25%", 5, (2, 1)),  # 1.25 rounds up for surge, down for unavailable
        ("25%", "25%", 1, (1, 0)),
        ("0%", "100%", 3, (0, 3)),
        (2, 0, 10, (2, 0)),
        ("3", "1", 10, (3, 1)),
        ("50%", "50%", 0, (0, 0)),
    ],
)
def test_update_strategy_resolves_counts(
    surge: str | int, unavailable: str | int, replicas: int, expected: tuple[int, int]
) -> None:
    strategy = UpdateStrategySpec.model_validate({"max_surge": surge, "max_unavailable": unavailable})
    assert (strategy.surge_for(replicas), strategy.unavailable_for(replicas)) == expected


def test_update_strategy_stores_strings_and_rejects_two_zeros() -> None:
    assert UpdateStrategySpec.model_validate({"max_surge": 1, "max_unavailable": 0}).max_surge == "1"
    assert problems(entry(update_strategy={"max_surge": 0, "max_unavailable": "0%"})) == [
        "modelport.yaml: [0].update_strategy.max_unavailable: max_surge and max_unavailable cannot both "
        "be 0: "
        "an update could never replace a replica; set one of them to at least 1"
    ]


# --- round trip and display -----------------------------------------------------------------------

FULL = entry(
    predictor={
        "processes_per_replica": 2,
        "threads_per_process": 3,
        "config": {"model": "m.pkl", "k": [1, 2.5, None, True]},
        "env": {"LEVEL": 3},
        "python_path": "lib",
        "image": "cortexlabs/python-predictor-cpu:0.20.0",
        "server_side_batching": {"max_batch_size": 32, "batch_interval": "100ms"},
    },
    compute={"cpu": "1500m", "gpu": 1, "mem": "1Gi"},
    autoscaling={"min_replicas": 1, "window": "1m30s", "downscale_stabilization_period": "250ms"},
    update_strategy={"max_surge": 1, "max_unavailable": "10%"},
    networking={"api_gateway": "none", "local_port": 8888},
    monitoring={"model_type": "classification", "key": "label"},
)


@pytest.mark.parametrize("api", [entry(), FULL], ids=["defaults", "everything-set"])
def test_resolved_spec_round_trips_exactly(api: dict[str, Any]) -> None:
    spec = ApiSpec.model_validate(api)
    again = ApiSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.model_dump_json() == spec.model_dump_json()
    assert ApiSpec.model_validate(spec.model_dump()) == spec


def test_display_dict_uses_the_users_units() -> None:
    shown = ApiSpec.model_validate(FULL).to_display_dict()
    assert shown["kind"] == "RealtimeAPI"
    assert shown["compute"] == {"cpu": "1500m", "gpu": 1, "inf": 0, "mem": "1Gi"}
    assert shown["autoscaling"]["window"] == "1m30s"
    assert shown["autoscaling"]["downscale_stabilization_period"] == "250ms"
    assert shown["autoscaling"]["upscale_stabilization_period"] == "1m"
    assert shown["autoscaling"]["target_replica_concurrency"] == 64  # 2 processes x max_batch_size 32
    assert shown["monitoring"] == {"model_type": "classification", "key": "label"}
    assert shown["predictor"]["server_side_batching"] == {"max_batch_size": 32, "batch_interval": "100ms"}
    defaults = ApiSpec.model_validate(entry()).to_display_dict()
    assert defaults["compute"] == {"cpu": "200m", "gpu": 0, "inf": 0, "mem": None}
    assert defaults["autoscaling"]["downscale_stabilization_period"] == "5m"
    assert defaults["predictor"]["server_side_batching"] is None


# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60s", 60.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("1m30.5s", 90.5),
        ("500us", 0.0005),
        (" 10s ", 10.0),
        ("-1s", -1.0),
        ("30", 30.0),
        (30, 30.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "1d", "m", "", "1h 30m", "s5", True, None, [1], float("inf")])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like 30s, 5m, 1h30m or 250ms"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (60, "1m"),
        (300, "5m"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (0.25, "250ms"),
        (1.5, "1.5s"),
        (-10, "-10s"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "cores", "shown"),
    [
        (1, 1.0, "1"),
        (0.5, 0.5, "500m"),
        ("200m", 0.2, "200m"),
        ("1.5", 1.5, "1500m"),
        ("2", 2.0, "2"),
        ("1e1", 10.0, "10"),
    ],
)
def test_cpu_quantities(value: object, cores: float, shown: str) -> None:
    assert parse_cpu(value) == pytest.approx(cores)
    assert format_cpu(parse_cpu(value)) == shown


@pytest.mark.parametrize(
    ("value", "num_bytes", "shown"),
    [
        ("200Mi", 200 * 2**20, "200Mi"),
        ("1Gi", 2**30, "1Gi"),
        ("500M", 500_000_000, "500M"),
        ("1G", 10**9, "1G"),
        ("1.5Gi", 3 * 2**29, "1536Mi"),
        (1024, 1024, "1Ki"),
        ("1000", 1000, "1k"),
        (1023, 1023, "1023"),
        ("1500m", 2, "2"),  # fractional bytes round up, as in Kubernetes
    ],
)
def test_memory_quantities(value: object, num_bytes: int, shown: str) -> None:
    assert parse_memory(value) == num_bytes
    assert format_memory(parse_memory(value)) == shown


@pytest.mark.parametrize("value", ["two", "1 Gi", "1GB", "", True, 1.5, None])
def test_memory_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a memory amount like 512Mi, 1Gi or 500M"):
        parse_memory(value)


def test_batching_sets_the_default_target_concurrency_to_whole_batches() -> None:
    batched = ApiSpec.model_validate(
        entry(
            predictor={
                "type": "python",
                "path": "p.py",
                "processes_per_replica": 2,
                "server_side_batching": {"max_batch_size": 16, "batch_interval": "5ms"},
            }
        )
    )
    assert batched.autoscaling.target_replica_concurrency == 32.0
    explicit = ApiSpec.model_validate(
        entry(
            predictor={
                "type": "python",
                "path": "p.py",
                "server_side_batching": {"max_batch_size": 16, "batch_interval": "5ms"},
            },
            autoscaling={"target_replica_concurrency": 4},
        )
    )
    assert explicit.autoscaling.target_replica_concurrency == 4.0
