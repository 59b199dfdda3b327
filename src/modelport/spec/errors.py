"""Spec errors: `SpecError` with one `SpecProblem` per mistake, and pydantic's errors put in the user's words.

Raised by `spec.load`; the CLI prints `str(err)`, one `file: path: message` line per problem. `spec.job` words
the errors of job submissions with the same `field_problems`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from modelport.errors import UserInputError
from modelport.spec.model import ERROR_TYPE, SUPPORTED_KINDS, ApiSpec

# What a required field is for, keyed by its path without list indices.
_REQUIRED_HINTS: dict[str, str] = {
    "name": "the API's name, a DNS-1035 label such as 'iris-classifier'",
    "kind": f"the API kind; supported: {', '.join(SUPPORTED_KINDS)}",
    "predictor": "a predictor block, e.g. predictor: {type: python, path: predictor.py}",
    "predictor.type": "the predictor type; supported: python",
    "predictor.path": (
        "the file that defines PythonPredictor (Task for a TaskAPI), relative to the project directory"
    ),
    "monitoring.model_type": "classification or regression",
    "predictor.server_side_batching.max_batch_size": "the most requests one predict call gets, e.g. 32",
    "predictor.server_side_batching.batch_interval": (
        "how long a batch may wait for a busy predictor, e.g. 10ms"
    ),
}
_TYPE_NAMES: dict[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
}
_COMPARISONS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CONSTRAINTS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One mistake in a validated document: the field path (`item_list.batch_size`, may be empty), the fix."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """One mistake: the spec file's name, the field path (`[0].autoscaling.window`, may be empty), the fix."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}" if self.path else f"{self.file}: {self.message}"


class SpecError(UserInputError):
    """Everything wrong with a project's spec, reported at once."""

    def __init__(self, problems: Iterable[SpecProblem]) -> None:
        self.problems: tuple[SpecProblem, ...] = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def format_path(loc: Sequence[str | int]) -> str:
    """("[0]", ...) style: (0, "autoscaling", "window") -> "[0].autoscaling.window"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def describe(value: object) -> str:
    """A user's value as YAML would show it: 'two', 5, true, null, a mapping, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 0 rather than 0.0: the user most likely wrote 0
    return repr(value) if isinstance(value, str) else str(value)


def problems_from_validation(
    error: ValidationError, *, file: str, prefix: tuple[str | int, ...] = ()
) -> list[SpecProblem]:
    """One SpecProblem per pydantic error of `ApiSpec` validation, with the path prefixed (e.g. `(0,)`)."""
    return [
        SpecProblem(file, problem.path, problem.message)
        for problem in field_problems(error, root=ApiSpec, hints=_REQUIRED_HINTS, prefix=prefix)
    ]


def field_problems(
    error: ValidationError,
    *,
    root: type[BaseModel],
    hints: Mapping[str, str] | None = None,
    prefix: tuple[str | int, ...] = (),
) -> list[FieldProblem]:
    """One FieldProblem per pydantic error of validating `root`, in the user's words.

    `hints` says what a required field is for, keyed by its path without list indices ("item_list.items").
    """
    problems = []
    for detail in error.errors():
        loc = detail["loc"]
        if loc and loc[-1] == "[key]":  # a mapping key itself is wrong, e.g. a YAML int key in config
            loc = (*loc[:-2], str(loc[-2]))
            message = f"mapping keys must be strings, got {describe(detail['input'])}: quote the key"
        else:
            if detail["type"] == ERROR_TYPE:
                loc += tuple(detail.get("ctx", {}).get("at", ()))
            message = _message(detail, loc, root=root, hints=hints or {})
        problems.append(FieldProblem(format_path(prefix + loc), message))
    return problems


def _message(
    detail: ErrorDetails, loc: tuple[str | int, ...], *, root: type[BaseModel], hints: Mapping[str, str]
) -> str:
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail["input"]
    if kind == ERROR_TYPE:
        return str(ctx["message"])
    if kind == "missing":
        hint = hints.get(".".join(str(part) for part in loc if isinstance(part, str)))
        return f"required: {hint}" if hint else "required"
    if kind == "extra_forbidden":
        return _unknown_field(str(loc[-1]), _model_at(root, loc[:-1]))
    if kind in ("model_type", "model_attributes_type", "dict_type") and (model := _model_at(root, loc)):
        return f"expected a mapping with the fields {', '.join(_keys(model))}, got {describe(value)}"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {describe(value)}"
    if kind in ("literal_error", "enum"):
        return f"expected one of {ctx['expected']}, got {describe(value)}"
    if kind in _COMPARISONS:
        return f"must be {_COMPARISONS[kind]} {describe(ctx[_CONSTRAINTS[kind]])}, got {describe(value)}"
    if kind == "finite_number":
        return f"expected a finite number, got {describe(value)}"
    return f"invalid value {describe(value)}: {detail['msg'][0].lower()}{detail['msg'][1:]}"


def _unknown_field(field: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown field {field!r}"
    known = _keys(model)
    close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field {field!r}: did you mean {close[0]!r}?"
    return f"unknown field {field!r}: expected one of {', '.join(known)}"


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model validating the mapping at `loc` below `root` (None below a dict field like config or env)."""
    model = root
    for part in loc:
        field = _field_by_key(model, part) if isinstance(part, str) else None
        inner = _model_in(field.annotation) if field else None
        if inner is None:
            return None
        model = inner
    return model


def _keys(model: type[BaseModel]) -> list[str]:
    """The keys a user writes for `model`'s fields: `async` for `async_settings`, `paths` for `paths`."""
    return [_aliases(name, field)[0] for name, field in model.model_fields.items()]


def _aliases(name: str, field: FieldInfo) -> list[str]:
    """A field's keys, the one users write first (a validation alias, else the alias, else the name)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)] + [name]
    if isinstance(alias, str):
        return [alias, name]
    return [field.alias, name] if field.alias else [name]


def _field_by_key(model: type[BaseModel], key: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in _aliases(name, field):
            return field
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if (found := _model_in(member)) is not None:
                return found
    return None
