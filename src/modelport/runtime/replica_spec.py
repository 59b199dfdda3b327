"""What a replica process reads of its API's spec: the resolved spec file, as plain data, without pydantic.

Read by `runtime.server` at start-up (and handed to `runtime.app`, `runtime.async_consumer` and
`runtime.interpreter`). The daemon validated the spec (modelport.spec) and wrote `ApiSpec.model_dump_json()`;
importing the spec model would cost every replica start about 0.3 s on the benchmark machine (pydantic builds
its validators at import), a third of deploy -> first 200. So the replica reads only the fields it uses,
checking their types, and names the field when the file is not what the daemon writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from modelport.types import ApiKind

T = TypeVar("T")


class SpecFileError(Exception):
    """The spec file cannot be read as a resolved spec; `str()` names the file and the field."""


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """predictor.server_side_batching."""

    max_batch_size: int
    batch_interval: float  # seconds


@dataclass(frozen=True, slots=True)
class PredictorSettings:
    """The spec's `predictor` section, as the runtime uses it."""

    path: str
    config: Mapping[str, Any]
    python_path: str | None
    env: Mapping[str, str]
    processes_per_replica: int
    threads_per_process: int
    idempotent: bool
    server_side_batching: BatchingSettings | None


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    name: str
    kind: ApiKind
    predictor: PredictorSettings


def read_replica_spec(path: Path) -> ReplicaSpec:
    """The spec file `path` (JSON of a resolved ApiSpec). Raises OSError or SpecFileError."""
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SpecFileError(f"{path} is not JSON: {exc}") from None
    fields = _Fields(path)
    spec = fields.mapping(data, "the spec")
    predictor = fields.mapping(spec.get("predictor"), "predictor")
    batching = predictor.get("server_side_batching")
    kind = fields.typed(spec.get("kind"), str, "kind")
    try:
        api_kind = ApiKind(kind)
    except ValueError:
        raise SpecFileError(f"{path}: kind {kind!r} is not a kind of API") from None
    return ReplicaSpec(
        name=fields.typed(spec.get("name"), str, "name"),
        kind=api_kind,
        predictor=PredictorSettings(
            path=fields.typed(predictor.get("path"), str, "predictor.path"),
            config=fields.mapping(predictor.get("config", {}), "predictor.config"),
            python_path=fields.optional(predictor.get("python_path"), str, "predictor.python_path"),
            env=fields.strings(predictor.get("env", {}), "predictor.env"),
            processes_per_replica=fields.count(
                predictor.get("processes_per_replica", 1), "predictor.processes_per_replica"
            ),
            threads_per_process=fields.count(
                predictor.get("threads_per_process", 1), "predictor.threads_per_process"
            ),
            idempotent=fields.typed(predictor.get("idempotent", True), bool, "predictor.idempotent"),
            server_side_batching=None
            if batching is None
            else BatchingSettings(
                max_batch_size=fields.count(
                    fields.mapping(batching, "predictor.server_side_batching").get("max_batch_size"),
                    "predictor.server_side_batching.max_batch_size",
                ),
                batch_interval=fields.seconds(
                    batching.get("batch_interval"), "predictor.server_side_batching.batch_interval"
                ),
            ),
        ),
    )


class _Fields:
    """Type checks that name the field and the file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _wrong(self, at: str, expected: str, value: object) -> SpecFileError:
        return SpecFileError(
            f"{self._path}: {at} must be {expected}, got {value!r}; the file should be the JSON of a "
            "resolved spec, as `modelport deploy` writes it"
        )

    def mapping(self, value: object, at: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self._wrong(at, "a mapping", value)
        return value

    def typed(self, value: object, kind: type[T], at: str) -> T:
        if not isinstance(value, kind):
            raise self._wrong(at, f"a {kind.__name__}", value)
        return value

    def optional(self, value: object, kind: type[T], at: str) -> T | None:
        return None if value is None else self.typed(value, kind, at)

    def strings(self, value: object, at: str) -> dict[str, str]:
        mapping = self.mapping(value, at)
        if not all(isinstance(item, str) for item in mapping.values()):
            raise self._wrong(at, "a mapping of strings", value)
        return mapping

    def count(self, value: object, at: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self._wrong(at, "an integer >= 1", value)
        return value

    def seconds(self, value: object, at: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise self._wrong(at, "a number of seconds > 0", value)
        return float(value)
