"""The user's predictor: importing its file, finding `PythonPredictor`, constructing it, calling its methods.

Called by `runtime.server` (loading, on a predictor thread) and `runtime.app` (calls, on predictor threads).
Knows nothing of HTTP: a call is a `PredictCall`; the methods' declared parameters decide what is passed.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

CLASS_NAME = "PythonPredictor"
INIT_PARAMETERS = ("config",)
PREDICT_PARAMETERS = ("payload", "query_params", "headers", "batch_id")
POST_PREDICT_PARAMETERS = ("response", "payload", "query_params", "headers")

_RUNTIME_DIR = str(Path(__file__).parent)


class PredictorLoadError(Exception):
    """The predictor cannot be served; `str()` is the whole message for the log (traceback included)."""


@dataclass(frozen=True, slots=True)
class PredictCall:
    """What one request gives the predictor; fields the predictor does not declare are left empty."""

    payload: object = None
    # runtime.app passes Starlette's QueryParams and Headers (multi-valued, `getlist`; header names
    # case-insensitive), as Cortex did; typed as the Mapping they both are, so this stays HTTP-agnostic.
    query_params: Mapping[str, str] | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Predictor:
    """A constructed predictor and the parameters its methods declared."""

    instance: Any
    predict_parameters: frozenset[str]
    post_predict_parameters: frozenset[str] | None  # None: no post_predict method

    def wants(self, name: str) -> bool:
        """Whether predict or post_predict declared `name`: the caller only computes what is wanted."""
        return name in self.predict_parameters or (
            self.post_predict_parameters is not None and name in self.post_predict_parameters
        )

    def predict(self, call: PredictCall) -> object:
        available = {"payload": call.payload, "query_params": call.query_params, "headers": call.headers}
        kwargs = {name: available.get(name) for name in self.predict_parameters}  # batch_id is None
        return self.instance.predict(**kwargs)

    def predict_batch(self, calls: Sequence[PredictCall]) -> object:
        """Server-side batching (Cortex 0.25): each declared argument is a list, item i from request i."""
        return self.instance.predict(**_columns(calls, self.predict_parameters))

    def post_predict_batch(self, responses: list[object], calls: Sequence[PredictCall]) -> None:
        """Once per batch: `response` is the list predict returned, the other arguments lists as above."""
        if self.post_predict_parameters is None:
            return
        kwargs = _columns(calls, self.post_predict_parameters - {"response"})
        if "response" in self.post_predict_parameters:
            kwargs["response"] = responses
        self.instance.post_predict(**kwargs)

    def post_predict(self, response: object, call: PredictCall) -> None:
        if self.post_predict_parameters is None:
            return
        available = {
            "response": response,
            "payload": call.payload,
            "query_params": call.query_params,
            "headers": call.headers,
        }
        self.instance.post_predict(**{name: available[name] for name in self.post_predict_parameters})


def _columns(calls: Sequence[PredictCall], names: frozenset[str]) -> dict[str, object]:
    # batch_id belongs to batch jobs; a realtime predictor that declares it gets None, as without batching.
    return {name: None if name == "batch_id" else [getattr(call, name) for call in calls] for name in names}


def load_predictor(*, project_dir: Path, path: str, config: Mapping[str, Any]) -> Predictor:
    """Import `project_dir/path`, check `PythonPredictor`'s methods, then construct it (user code runs here).

    Raises PredictorLoadError with a one-line message (missing file or class, a bad signature) or the
    user's traceback (import or __init__ raised).
    """
    file = project_dir / path
    if not file.is_file():
        raise PredictorLoadError(
            f"predictor file not found: {file} (predictor.path {path!r} is relative to the project "
            f"directory {project_dir})"
        )
    module = _import_file(file, shown=path)
    cls = getattr(module, CLASS_NAME, None)
    if not inspect.isclass(cls):
        raise PredictorLoadError(f"{path} does not define a class named {CLASS_NAME}")
    if not callable(getattr(cls, "predict", None)):
        raise PredictorLoadError(
            f"{CLASS_NAME} in {path} has no predict method: define "
            f"predict(self, payload, query_params, headers) (any subset of these parameters)"
        )
    for name in ("predict", "post_predict"):
        method = getattr(cls, name, None)
        if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
            raise PredictorLoadError(
                f"{CLASS_NAME}.{name} in {path} is async; define it with a plain def: it runs on the "
                "replica's predictor threads (predictor.threads_per_process), not on an event loop"
            )
    where = f"{CLASS_NAME}.{{}} in {path}"
    predict = declared_parameters(
        _method_signature(cls, "predict"), PREDICT_PARAMETERS, where=where.format("predict")
    )
    post_predict = None
    if callable(getattr(cls, "post_predict", None)):
        post_predict = declared_parameters(
            _method_signature(cls, "post_predict"),
            POST_PREDICT_PARAMETERS,
            where=where.format("post_predict"),
        )
    init = declared_parameters(
        _method_signature(cls, "__init__"), INIT_PARAMETERS, where=where.format("__init__")
    )
    arguments = {"config": dict(config)}
    try:
        instance = cls(**{name: arguments[name] for name in init})
    except BaseException as exc:  # SystemExit raised by user code is a failure too
        raise PredictorLoadError(f"{CLASS_NAME}.__init__ in {path} raised:\n{user_traceback(exc)}") from None
    return Predictor(instance=instance, predict_parameters=predict, post_predict_parameters=post_predict)


def declared_parameters(
    signature: inspect.Signature, allowed: tuple[str, ...], *, where: str
) -> frozenset[str]:
    """The names among `allowed` that `signature` declares (all of them when it takes **kwargs).

    A parameter we cannot pass is an error now rather than a TypeError on every request, unless it has a
    default. `signature` excludes `self`.
    """
    names: set[str] = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return frozenset(allowed)
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if parameter.name in allowed and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY:
            names.add(parameter.name)
        elif parameter.default is inspect.Parameter.empty:
            raise PredictorLoadError(
                f"{where} declares the parameter {parameter.name!r}, which modelport cannot pass; "
                f"declare any of: {', '.join(allowed)} (by name)"
            )
    return frozenset(names)


def user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` from the first frame outside modelport's runtime and importlib."""
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip("\n")


def _is_machinery(filename: str) -> bool:
    return filename.startswith((_RUNTIME_DIR, "<frozen importlib"))


def _method_signature(cls: type, name: str) -> inspect.Signature:
    """The signature of method `name` as called on an instance, read from the class (before construction)."""
    attribute = inspect.getattr_static(cls, name)
    if attribute is object.__init__:  # no __init__ of its own: takes nothing
        return inspect.Signature()
    if isinstance(attribute, staticmethod | classmethod):
        return inspect.signature(getattr(cls, name))
    signature = inspect.signature(attribute)
    if inspect.isfunction(attribute):  # drop `self`
        parameters = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=parameters)
    return signature


def _import_file(file: Path, *, shown: str) -> ModuleType:
    # Registered under its file name (as `import predictor` would) so that pickle and dataclasses find
    # the module, unless that name is taken (a file called json.py must not replace the json module).
    name = file.stem if file.stem.isidentifier() and file.stem not in sys.modules else "modelport_predictor"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise PredictorLoadError(f"cannot import {shown}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit or KeyboardInterrupt raised by user code is a failure too
        sys.modules.pop(name, None)
        raise PredictorLoadError(f"importing {shown} failed:\n{user_traceback(exc)}") from None
    return module
