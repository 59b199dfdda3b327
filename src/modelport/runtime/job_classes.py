"""The user's classes for jobs: a BatchAPI's `PythonPredictor` and a TaskAPI's `Task`, loaded and called.

Called by `runtime.worker` on its user-code thread. Cortex's conventions: `__init__(self, config, job_spec)`,
`predict(self, payload, batch_id)` and `on_job_complete(self)` for a batch predictor, `Task()(config)` for a
task; only the parameters a method declares are passed. Loading raises `PredictorLoadError`, as
`runtime.predictor` does for a realtime predictor.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# Private to runtime.predictor, shared inside the runtime package: one way to import a user's file and to
# read a method's signature for every kind of API.
from modelport.runtime.predictor import (
    CLASS_NAME,
    PredictorLoadError,
    _import_file,
    _method_signature,
    declared_parameters,
    user_traceback,
)

BATCH_INIT_PARAMETERS = ("config", "job_spec")
BATCH_PREDICT_PARAMETERS = ("payload", "batch_id")
TASK_CLASS_NAME = "Task"
TASK_CALL_PARAMETERS = ("config",)


@dataclass(frozen=True, slots=True)
class BatchPredictor:
    """A constructed batch predictor and the parameters its `predict` declared."""

    instance: Any
    predict_parameters: frozenset[str]
    has_on_job_complete: bool

    def predict(self, items: list[Any], *, batch_id: str) -> None:
        """Run one batch; the return value is ignored (the user stores results, as with Cortex)."""
        available = {"payload": items, "batch_id": batch_id}
        self.instance.predict(**{name: available[name] for name in self.predict_parameters})

    def on_job_complete(self) -> None:
        if self.has_on_job_complete:
            self.instance.on_job_complete()


@dataclass(frozen=True, slots=True)
class TaskRunner:
    """A constructed `Task` and whether its `__call__` declares `config`."""

    instance: Any
    call_parameters: frozenset[str]

    def run(self, config: Mapping[str, Any]) -> None:
        available = {"config": dict(config)}
        self.instance(**{name: available[name] for name in self.call_parameters})


def load_batch_predictor(*, project_dir: Path, path: str, job_spec: Mapping[str, Any]) -> BatchPredictor:
    """Import `project_dir/path` and construct its `PythonPredictor` with the declared among config/job_spec.

    `config` is `job_spec["config"]` (the API's config with the job's merged over it).
    """
    cls = _user_class(project_dir, path, CLASS_NAME)
    where = f"{CLASS_NAME}.{{}} in {path}"
    if not callable(getattr(cls, "predict", None)):
        raise PredictorLoadError(
            f"{CLASS_NAME} in {path} has no predict method: a BatchAPI predictor defines "
            "predict(self, payload, batch_id) (any subset of these parameters)"
        )
    _reject_async(cls, ("predict", "on_job_complete"), where=where)
    predict = declared_parameters(
        _method_signature(cls, "predict"), BATCH_PREDICT_PARAMETERS, where=where.format("predict")
    )
    has_on_job_complete = callable(getattr(cls, "on_job_complete", None))
    if has_on_job_complete:
        declared_parameters(
            _method_signature(cls, "on_job_complete"), (), where=where.format("on_job_complete")
        )
    init = declared_parameters(
        _method_signature(cls, "__init__"), BATCH_INIT_PARAMETERS, where=where.format("__init__")
    )
    config = job_spec.get("config")
    arguments = {"config": dict(config) if isinstance(config, Mapping) else {}, "job_spec": dict(job_spec)}
    instance = _construct(
        cls, {name: arguments[name] for name in init}, shown=f"{CLASS_NAME}.__init__ in {path}"
    )
    return BatchPredictor(
        instance=instance, predict_parameters=predict, has_on_job_complete=has_on_job_complete
    )


def load_task(*, project_dir: Path, path: str) -> TaskRunner:
    """Import `project_dir/path` and construct its `Task` (no arguments); its `__call__` takes `config`."""
    cls = _user_class(project_dir, path, TASK_CLASS_NAME)
    where = f"{TASK_CLASS_NAME}.{{}} in {path}"
    if not any("__call__" in vars(klass) for klass in cls.__mro__[:-1]):  # not object's (it has none)
        raise PredictorLoadError(
            f"{TASK_CLASS_NAME} in {path} has no __call__ method: a TaskAPI class defines "
            "__call__(self, config)"
        )
    _reject_async(cls, ("__call__",), where=where)
    call = declared_parameters(
        _method_signature(cls, "__call__"), TASK_CALL_PARAMETERS, where=where.format("__call__")
    )
    declared_parameters(_method_signature(cls, "__init__"), (), where=where.format("__init__"))
    instance = _construct(cls, {}, shown=f"{TASK_CLASS_NAME}.__init__ in {path}")
    return TaskRunner(instance=instance, call_parameters=call)


def _user_class(project_dir: Path, path: str, name: str) -> type:
    file = project_dir / path
    if not file.is_file():
        raise PredictorLoadError(
            f"predictor file not found: {file} (predictor.path {path!r} is relative to the project "
            f"directory {project_dir})"
        )
    module: ModuleType = _import_file(file, shown=path)
    cls = getattr(module, name, None)
    if not inspect.isclass(cls):
        raise PredictorLoadError(f"{path} does not define a class named {name}")
    return cls


def _reject_async(cls: type, names: tuple[str, ...], *, where: str) -> None:
    for name in names:
        method = getattr(cls, name, None)
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            raise PredictorLoadError(
                f"{where.format(name)} is async; define it with a plain def: it runs on the worker's thread, "
                "not on an event loop"
            )


def _construct(cls: type, arguments: Mapping[str, Any], *, shown: str) -> Any:
    try:
        return cls(**arguments)
    except BaseException as exc:  # SystemExit raised by user code is a failure too
        raise PredictorLoadError(f"{shown} raised:\n{user_traceback(exc)}") from None
