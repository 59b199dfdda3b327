"""Unit tests of runtime.replica_spec: how a replica reads the spec file the daemon writes (no pydantic)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from modelport.runtime.replica_spec import (
    BatchingSettings,
    SpecFileError,
    read_replica_spec,
)
from modelport.spec.model import ApiSpec
from modelport.types import ApiKind


def written(tmp_path: Path, spec: dict[str, object]) -> Path:
    """The file as the daemon writes it: ApiSpec.model_dump_json() of the validated spec."""
    path = tmp_path / "spec.json"
    path.write_text(ApiSpec.model_validate(spec).model_dump_json())
    return path


def test_reads_what_the_daemon_writes_with_the_same_values(tmp_path: Path) -> None:
    path = written(
        tmp_path,
        {
            "name": "iris",
            "kind": "RealtimeAPI",
            "predictor": {
                "type": "python",
                "path": "src/predictor.py",
                "config": {"threshold": 0.5, "labels": ["a", "b"]},
                "python_path": "src",
                "env": {"MODEL": "small", "WORKERS": 2},
                "processes_per_replica": 2,
                "threads_per_process": 3,
                "idempotent": False,
            },
        },
    )
    full = ApiSpec.model_validate_json(path.read_bytes())
    spec = read_replica_spec(path)
    assert (spec.name, spec.kind) == (full.name, ApiKind.REALTIME)
    predictor = spec.predictor
    assert predictor.path == full.predictor.path == "src/predictor.py"
    assert predictor.config == full.predictor.config
    assert predictor.python_path == full.predictor.python_path == "src"
    assert predictor.env == full.predictor.env == {"MODEL": "small", "WORKERS": "2"}
    assert (predictor.processes_per_replica, predictor.threads_per_process) == (2, 3)
    assert predictor.idempotent is False and predictor.server_side_batching is None


def test_reads_server_side_batching_and_the_defaults(tmp_path: Path) -> None:
    path = written(
        tmp_path,
        {
            "name": "batched",
            "kind": "RealtimeAPI",
            "predictor": {
                "type": "python",
                "path": "predictor.py",
                "server_side_batching": {"max_batch_size": 8, "batch_interval": "20ms"},
            },
        },
    )
    predictor = read_replica_spec(path).predictor
    assert predictor.server_side_batching == BatchingSettings(max_batch_size=8, batch_interval=0.02)
    assert (predictor.processes_per_replica, predictor.threads_per_process) == (1, 1)
    assert predictor.idempotent is True and predictor.env == {} and predictor.config == {}


def test_an_async_api_is_read_with_its_kind(tmp_path: Path) -> None:
    path = written(
        tmp_path, {"name": "queued", "kind": "AsyncAPI", "predictor": {"type": "python", "path": "p.py"}}
    )
    assert read_replica_spec(path).kind is ApiKind.ASYNC


@pytest.mark.parametrize(
    ("content", "names"),
    [
        (b"{not json", "is not JSON"),
        (b"[]", "the spec must be a mapping"),
        (orjson.dumps({"name": "x", "kind": "RealtimeAPI"}), "predictor must be a mapping"),
        (orjson.dumps({"name": "x", "kind": "Nope", "predictor": {"path": "p.py"}}), "kind 'Nope'"),
        (
            orjson.dumps({"name": "x", "kind": "RealtimeAPI", "predictor": {"path": 3}}),
            "predictor.path must be a str",
        ),
        (
            orjson.dumps(
                {"name": "x", "kind": "RealtimeAPI", "predictor": {"path": "p.py", "threads_per_process": 0}}
            ),
            "predictor.threads_per_process must be an integer >= 1",
        ),
    ],
)
def test_a_file_that_is_not_a_resolved_spec_names_the_field(
    tmp_path: Path, content: bytes, names: str
) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(content)
    with pytest.raises(SpecFileError) as raised:
        read_replica_spec(path)
    assert names in str(raised.value) and str(path) in str(raised.value)


def test_starting_a_replica_imports_neither_pydantic_nor_starlette() -> None:
    # What a replica's start-up imports (python -m modelport replica): the cost measured by bench/speed.py's
    # cold start. Starlette comes later, and only for predictors that use it.
    code = (
        "import sys, modelport.runtime.server; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'starlette', 'yaml'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
