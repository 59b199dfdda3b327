"""The validated, frozen API spec: one `ApiSpec` per entry of modelport.yaml, every default resolved.

Built by `spec.load` from YAML; read by the controller, the runtime (as JSON) and the CLI (`to_display_dict`).

Kinds: RealtimeAPI; AsyncAPI (a RealtimeAPI whose requests are queued and whose results are stored; no
server-side batching, no monitoring; `async` settings); BatchAPI and TaskAPI (workers started per submitted
job: no autoscaling, update_strategy, monitoring, server-side batching, processes/threads or idempotent;
`compute` is per worker). A TaskAPI's predictor.path defines a class `Task` whose `__call__(self, config)`
runs to completion (checked by the runtime when the task runs, not here). A field a kind does not use is an
error when given; its resolved default stays on the object (so every `ApiSpec` has the same attributes) but
is left out of `model_dump` and `to_display_dict`, so a dumped spec validates again as the same spec.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from modelport.spec.units import (
    format_cpu,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)
from modelport.types import ApiKind

MAX_NAME_LENGTH = 42  # Cortex's limit (a Kubernetes label less the prefixes it added)
SUPPORTED_KINDS = (ApiKind.REALTIME, ApiKind.BATCH, ApiKind.ASYNC, ApiKind.TASK)
RESERVED_ENDPOINTS = frozenset({"/metrics"})  # served by the gateway itself
DURATION_FIELDS = (
    "window",
    "downscale_stabilization_period",
    "upscale_stabilization_period",
    "activation_timeout",
)
MIN_BATCH_SIZE = 2
MAX_BATCH_SIZE = 1024  # the largest bucket of the replica's batch-size histogram
ERROR_TYPE = "modelport"  # pydantic error type of our own messages; spec.errors shows them verbatim
DAY_SECONDS = 86400.0

# The fields each kind does not use ("section" or "predictor.field"), with why; giving one is an error.
_UNUSED_BY_KIND: dict[str, dict[str, str]] = {
    ApiKind.BATCH: {
        "autoscaling": "a job's workers are chosen when it is submitted",
        "update_strategy": "a job's workers run the API as it was when the job was submitted",
        "monitoring": "a batch's predictions are not returned through the API",
        "predictor.server_side_batching": "predict already receives a whole batch of the job's items",
        "predictor.processes_per_replica": "a worker runs one batch at a time",
        "predictor.threads_per_process": "a worker runs one batch at a time",
        "predictor.idempotent": "a batch whose worker fails is retried up to the job's max_receive_count",
    },
    ApiKind.TASK: {
        "autoscaling": "each submitted task runs in one worker of its own",
        "update_strategy": "a task runs the API as it was when the task was submitted",
        "monitoring": "a task returns no predictions",
        "predictor.server_side_batching": "a task is called once, with its config",
        "predictor.processes_per_replica": "a task runs once, in one process",
        "predictor.threads_per_process": "a task runs once, in one process",
        "predictor.idempotent": "a task runs once per submission",
    },
    ApiKind.ASYNC: {
        "monitoring": "an AsyncAPI's results are stored, not returned to the client that sent the request",
        "predictor.server_side_batching": "queued requests are taken one at a time by each predictor thread",
    },
}

_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENDPOINT_CHARS = re.compile(r"/[A-Za-z0-9\-._~/]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"(\d+)(%?)")


def spec_error(message: str, *, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """An error whose message is shown as is; `at` locates it below the field being validated."""
    return PydanticCustomError(ERROR_TYPE, "{message}", {"message": message, "at": at})


def _converted(parse: Callable[[object], Any]) -> BeforeValidator:
    def convert(value: object) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise spec_error(str(exc)) from None

    return BeforeValidator(convert)


def _optional_memory(value: object) -> int | None:
    return None if value is None else parse_memory(value)


# Strict: YAML gives real ints and floats, so "2" or `true` for a count is a mistake worth reporting.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Seconds = Annotated[float, _converted(parse_duration), Strict()]
LongSeconds = Annotated[float, _converted(lambda value: parse_duration(value, days=True)), Strict()]  # "7d"
Cores = Annotated[float, _converted(parse_cpu), Strict()]
Bytes = Annotated[Annotated[int, Strict()] | None, _converted(_optional_memory)]
Text = Annotated[str, Strict()]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerSideBatchingSpec(_Spec):
    """Cortex 0.25's `server_side_batching`: predict receives lists and returns one result per request.

    Unlike Cortex, threads_per_process need not equal max_batch_size: waiting requests hold no predictor
    thread (they wait on the event loop), and batches run one at a time per process whenever the predictor
    is free. A further thread (threads_per_process > 1) takes a batch only once it is full or has waited
    batch_interval; with one thread, batches simply run back to back.
    """

    max_batch_size: Int
    batch_interval: Seconds  # how long a batch may wait for a busy predictor before it takes another thread

    @field_validator("max_batch_size")
    @classmethod
    def _batch_size(cls, value: int) -> int:
        if value < MIN_BATCH_SIZE:
            raise spec_error(
                f"must be >= {MIN_BATCH_SIZE}, got {value}: a batch of one is no batching "
                "(remove server_side_batching to turn it off)"
            )
        if value > MAX_BATCH_SIZE:
            raise spec_error(f"must be <= {MAX_BATCH_SIZE}, got {value}")
        return value

    @field_validator("batch_interval")
    @classmethod
    def _positive_interval(cls, value: float) -> float:
        return _positive_seconds(value, example="10ms")


class PredictorSpec(_Spec):
    type: Literal["python"]
    path: Text  # the file defining PythonPredictor, relative to the project root
    config: dict[str, Any] = Field(default_factory=dict)
    python_path: Text | None = None  # a directory added to sys.path; the project root when unset
    # Values given as YAML numbers or booleans are stringified (1 -> "1", true -> "true").
    env: dict[str, Text] = Field(default_factory=dict)
    processes_per_replica: Int = Field(default=1, ge=1, le=100)
    threads_per_process: Int = Field(default=1, ge=1)
    image: Text | None = None  # accepted for Cortex compatibility; replicas run in the local interpreter
    # An idempotent predictor's request may run twice: when its replica dies before answering, the gateway
    # sends it to another replica once. `false` turns that retry off.
    idempotent: bool = Field(default=True, strict=True)
    # None: every request is its own predict call. See ServerSideBatchingSpec for the thread count.
    server_side_batching: ServerSideBatchingSpec | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        if value in ("tensorflow", "onnx"):
            raise spec_error(
                f"predictor type {value!r} is not supported yet by this version; supported: python"
            )
        return value

    @field_validator("path")
    @classmethod
    def _predictor_file(cls, value: str) -> str:
        path = _inside_project(value)
        if not path.endswith(".py"):
            raise spec_error(f"must be the .py file that defines PythonPredictor, got {value!r}")
        return path

    @field_validator("python_path")
    @classmethod
    def _python_dir(cls, value: str | None) -> str | None:
        return None if value is None else _inside_project(value)

    @field_validator("config")
    @classmethod
    def _json_compatible(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_compatible(value, at=())
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _stringify_env(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        for key in value:
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise spec_error(
                    f"invalid environment variable name {key!r}: use letters, digits and '_', "
                    "not starting with a digit",
                    at=(str(key),),
                )
        return {key: _env_value(item) for key, item in value.items()}


class ComputeSpec(_Spec):
    cpu: Cores = Field(default=0.2, gt=0)  # cores
    gpu: Int = Field(default=0, ge=0)
    inf: Int = Field(default=0, ge=0)
    mem: Bytes = None  # bytes; None = no limit

    @field_validator("mem")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise spec_error(f"must be > 0 bytes (e.g. 512Mi), got {value}")
        return value


class AutoscalingSpec(_Spec):
    min_replicas: Int = Field(default=1, ge=0)  # 0 = scale to zero (beyond Cortex 0.20)
    max_replicas: Int = Field(default=100, gt=0)
    init_replicas: Int = Field(default=None, validate_default=True)  # resolved to min_replicas when unset
    # Resolved by ApiSpec to processes_per_replica * threads_per_process when unset (1 * 1 here).
    target_replica_concurrency: Float = Field(default=1.0, gt=0)
    max_replica_concurrency: Int = Field(default=1024, ge=1, le=65535)
    window: Seconds = 60.0
    downscale_stabilization_period: Seconds = 300.0
    upscale_stabilization_period: Seconds = 60.0
    max_downscale_factor: Float = Field(default=0.75, ge=0, lt=1)
    max_upscale_factor: Float = Field(default=1.5, gt=1)
    downscale_tolerance: Float = Field(default=0.05, ge=0, lt=1)
    upscale_tolerance: Float = Field(default=0.05, ge=0, lt=1)
    # Scale to zero: requests that arrive while an API has no replica wait in the gateway for the first one,
    # at most this many at once (more get 503) and each at most this long (then 503).
    activation_queue_limit: Int = Field(default=100, ge=1, le=65535)
    activation_timeout: Seconds = 60.0

    @field_validator("max_replicas")
    @classmethod
    def _at_least_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_replicas")
        if minimum is not None and value < minimum:
            raise spec_error(f"must be >= min_replicas ({minimum}), got {value}")
        return value

    @field_validator("init_replicas", mode="wrap")
    @classmethod
    def _within_bounds(
        cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> int:
        minimum, maximum = info.data.get("min_replicas"), info.data.get("max_replicas")
        if value is None:  # unset: start at min_replicas (1 when min_replicas itself is invalid)
            return 1 if minimum is None else int(minimum)
        replicas = int(handler(value))
        if minimum is not None and replicas < minimum:
            raise spec_error(f"must be >= min_replicas ({minimum}), got {replicas}")
        if maximum is not None and replicas > maximum:
            raise spec_error(f"must be <= max_replicas ({maximum}), got {replicas}")
        return replicas

    @field_validator("window")
    @classmethod
    def _whole_tens_of_seconds(cls, value: float) -> float:
        tens = value / 10
        if value < 10 or not math.isclose(tens, round(tens), abs_tol=1e-9):
            raise spec_error(f"must be at least 10s and a multiple of 10s, got {format_duration(value)}")
        return value

    @field_validator("downscale_stabilization_period", "upscale_stabilization_period")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise spec_error(f"must be >= 0s, got {format_duration(value)}")
        return value

    @field_validator("activation_timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        return _positive_seconds(value, example="60s")


class UpdateStrategySpec(_Spec):
    """How many replicas a rolling update may add (surge) or take away (unavailable): "N" or "N%"."""

    max_surge: Text = "25%"
    max_unavailable: Text = "25%"

    @field_validator("max_surge", "max_unavailable", mode="before")
    @classmethod
    def _count_or_percent(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
        if match is None or (match[2] and int(match[1]) > 100):
            raise spec_error(
                f"expected a replica count like 1 or a percentage from 0% to 100%, got {value!r}"
            )
        return match[0]

    @field_validator("max_unavailable")
    @classmethod
    def _can_progress(cls, value: str, info: ValidationInfo) -> str:
        surge = info.data.get("max_surge")
        if surge is not None and _is_zero(surge) and _is_zero(value):
            raise spec_error(
                "max_surge and max_unavailable cannot both be 0: an update could never replace a replica; "
                "set one of them to at least 1"
            )
        return value

    def surge_for(self, replicas: int) -> int:
        """Extra replicas allowed during an update of `replicas`; a percentage rounds up (Kubernetes)."""
        return _resolve(self.max_surge, replicas, round_up=True)

    def unavailable_for(self, replicas: int) -> int:
        """Replicas that may be missing during an update of `replicas`; a percentage rounds down."""
        return _resolve(self.max_unavailable, replicas, round_up=False)


class NetworkingSpec(_Spec):
    endpoint: Text  # ApiSpec resolves it to "/<name>" when unset
    api_gateway: Literal["public", "none"] = "public"
    local_port: Int | None = Field(
        default=None, ge=1, le=65535
    )  # Cortex 0.20's local port; accepted, ignored

    @field_validator("endpoint")
    @classmethod
    def _url_path(cls, value: str) -> str:
        problem = _endpoint_problem(value)
        if problem:
            raise spec_error(f"{problem}, got {value!r}")
        return value


class MonitoringSpec(_Spec):
    model_type: Literal["classification", "regression"]
    key: Text | None = None  # the JSON key holding the prediction when the response is an object


class AsyncSpec(_Spec):
    """AsyncAPI only (`async:` in YAML): how long results are kept and how often a request is tried."""

    result_retention: LongSeconds = 7 * DAY_SECONDS  # Cortex kept results 7 days
    # A request whose replica dies (or whose lease expires) is taken again, up to this many times in all.
    max_receive_count: Int = Field(default=3, ge=1)

    @field_validator("result_retention")
    @classmethod
    def _positive_retention(cls, value: float) -> float:
        if value <= 0:
            raise spec_error(f"must be > 0s (e.g. 7d or 12h), got {format_duration(value)}")
        return value


class ApiSpec(_Spec):
    name: Text
    kind: ApiKind
    # A RealtimeAPI's or AsyncAPI's PythonPredictor, a BatchAPI's batch predictor, a TaskAPI's Task class.
    predictor: PredictorSpec
    compute: ComputeSpec = Field(default_factory=ComputeSpec)  # per replica, or per worker of a job
    # The next two are resolved to their defaults for BatchAPI and TaskAPI too, which do not use them.
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    update_strategy: UpdateStrategySpec = Field(default_factory=UpdateStrategySpec)
    networking: NetworkingSpec = Field(
        default=None, validate_default=True
    )  # always resolved by the validator below
    monitoring: MonitoringSpec | None = None
    # `async:` in YAML (a Python keyword); resolved for AsyncAPI, None for the other kinds.
    async_settings: AsyncSpec | None = Field(
        default=None, validation_alias=AliasChoices("async", "async_settings")
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_dependent_defaults(cls, data: object) -> object:
        """Defaults that depend on other fields: the endpoint on the name, the target on the predictor."""
        if not isinstance(data, Mapping):
            return data
        resolved = {key: value for key, value in data.items() if value is not None}  # null = unset
        name, kind = resolved.get("name"), resolved.get("kind")
        resolved["networking"] = _with_endpoint(
            resolved.get("networking"), f"/{name}" if isinstance(name, str) else "/"
        )
        if _unused_reason(kind, "autoscaling") is None:  # a given section of a kind without it is an error
            resolved["autoscaling"] = _with_target(
                resolved.get("autoscaling"), _concurrency(resolved.get("predictor"))
            )
        if kind == ApiKind.ASYNC and "async" not in resolved and "async_settings" not in resolved:
            resolved["async"] = {}
        return resolved

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_1035.fullmatch(value):
            raise spec_error(
                f"invalid name {value!r}: use a DNS-1035 label: lowercase letters, digits and '-', starting "
                "with a letter and ending with a letter or digit (e.g. 'iris-classifier')"
            )
        if len(value) > MAX_NAME_LENGTH:
            raise spec_error(f"must be at most {MAX_NAME_LENGTH} characters, got {len(value)} ({value!r})")
        return value

    @field_validator("kind")
    @classmethod
    def _supported_kind(cls, value: ApiKind) -> ApiKind:
        if value not in SUPPORTED_KINDS:
            supported = ", ".join(SUPPORTED_KINDS)
            raise spec_error(f"kind {value} is not supported yet by this version; supported: {supported}")
        return value

    @field_validator("predictor", mode="wrap")
    @classmethod
    def _predictor_fits_kind(
        cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> object:
        """Reports the predictor fields the kind does not use together with the predictor's other errors."""
        kind = info.data.get("kind")
        if isinstance(value, PredictorSpec):
            given = {key: getattr(value, key) for key in value.model_fields_set}
        elif isinstance(value, Mapping):
            given = dict(value)
        else:
            return handler(value)  # not a mapping: reported as such
        unused = {
            key: reason for key in given if (reason := _unused_reason(kind, f"predictor.{key}")) is not None
        }
        if not unused:
            return handler(value)
        errors = [
            InitErrorDetails(
                type=spec_error(f"not used by kind {kind} ({reason}): remove it"),
                loc=(key,),
                input=given[key],
            )
            for key, reason in unused.items()
        ]
        try:
            handler({key: item for key, item in given.items() if key not in unused})
        except ValidationError as exc:
            errors += [_init_error(detail) for detail in exc.errors()]
        raise ValidationError.from_exception_data(PredictorSpec.__name__, errors)

    @field_validator("autoscaling", "update_strategy", "monitoring", mode="before")
    @classmethod
    def _section_fits_kind(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("kind")
        reason = _unused_reason(kind, str(info.field_name))
        if reason is not None:
            raise spec_error(f"not used by kind {kind} ({reason}): remove it")
        return value

    @field_validator("async_settings", mode="before")
    @classmethod
    def _async_only(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("kind")
        if kind is not None and kind != ApiKind.ASYNC:
            raise spec_error(
                f"only used by kind {ApiKind.ASYNC} (how long results are kept, how often a request is "
                f"tried), not by kind {kind}: remove it"
            )
        return value

    @model_serializer(mode="wrap")
    def _fields_the_kind_uses(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The dump leaves out what the kind does not use (so it validates again) and writes `async`."""
        data: dict[str, Any] = handler(self)
        settings = data.pop("async_settings", None)
        if self.kind is ApiKind.ASYNC:
            data["async"] = settings
        for path in _UNUSED_BY_KIND.get(self.kind, {}):
            section, _, field = path.partition(".")
            if not field:
                data.pop(section, None)
            elif isinstance(data.get(section), dict):
                data[section].pop(field, None)
        return data

    def to_display_dict(self) -> dict[str, Any]:
        """The resolved spec in the units a user writes: durations "1m", cpu "200m", mem "1Gi" or None."""
        shown = self.model_dump(mode="json")
        shown["compute"]["cpu"] = format_cpu(self.compute.cpu)
        shown["compute"]["mem"] = None if self.compute.mem is None else format_memory(self.compute.mem)
        if "autoscaling" in shown:
            for field in DURATION_FIELDS:
                shown["autoscaling"][field] = format_duration(getattr(self.autoscaling, field))
            target = self.autoscaling.target_replica_concurrency
            shown["autoscaling"]["target_replica_concurrency"] = (
                int(target) if target.is_integer() else target
            )
        batching = self.predictor.server_side_batching
        if batching is not None:
            shown["predictor"]["server_side_batching"]["batch_interval"] = format_duration(
                batching.batch_interval
            )
        if self.async_settings is not None:
            shown["async"]["result_retention"] = format_duration(
                self.async_settings.result_retention, days=True
            )
        return shown


def _positive_seconds(value: float, *, example: str) -> float:
    if value <= 0:
        raise spec_error(f"must be > 0s (e.g. {example}), got {format_duration(value)}")
    return value


def _inside_project(value: str) -> str:
    """A normalised relative path; absolute paths and paths climbing out of the project are errors."""
    if not value.strip():
        raise spec_error("must not be empty: give a path relative to the project directory")
    if value.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", value):
        raise spec_error(f"must be relative to the project directory, got {value!r}")
    path = posixpath.normpath(value.replace("\\", "/"))
    if path == ".." or path.startswith("../"):
        raise spec_error(f"must stay inside the project directory, got {value!r}")
    return path


def check_json_compatible(value: object, *, at: tuple[str | int, ...]) -> None:
    """config reaches the replica as JSON: a YAML date, set or binary would not come back the same."""
    if isinstance(value, float) and not math.isfinite(value):
        raise spec_error(f"expected a finite number, got {value!r}", at=at)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise spec_error(f"mapping keys must be strings, got {key!r}: quote the key", at=at)
            check_json_compatible(item, at=(*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json_compatible(item, at=(*at, index))
    elif isinstance(value, date | datetime):
        raise spec_error(
            f"expected JSON-compatible data, got the date {value}: quote it to keep it as text", at=at
        )
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise spec_error(
            f"expected JSON-compatible data (strings, numbers, booleans, null, lists, mappings), "
            f"got {type(value).__name__}",
            at=at,
        )


def _unused_reason(kind: object, path: str) -> str | None:
    """Why `kind` does not use the field at `path` ("autoscaling", "predictor.idempotent"), or None."""
    return _UNUSED_BY_KIND.get(kind, {}).get(path) if isinstance(kind, str) else None


def _init_error(detail: ErrorDetails) -> InitErrorDetails:
    """A reported error as pydantic takes it back, to be raised again together with others."""
    ctx = detail.get("ctx")
    if detail["type"] == ERROR_TYPE and ctx is not None:
        return InitErrorDetails(
            type=PydanticCustomError(ERROR_TYPE, "{message}", ctx), loc=detail["loc"], input=detail["input"]
        )
    error = InitErrorDetails(type=detail["type"], loc=detail["loc"], input=detail["input"])
    if ctx is not None:
        error["ctx"] = ctx
    return error


def _env_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value  # strings pass; anything else fails the str check with the variable's path


def _is_zero(size: str) -> bool:
    return int(size.rstrip("%")) == 0


def _resolve(size: str, replicas: int, *, round_up: bool) -> int:
    if not size.endswith("%"):
        return int(size)
    scaled = int(size[:-1]) * replicas
    return -(-scaled // 100) if round_up else scaled // 100


def _endpoint_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return "must start with '/', e.g. '/iris-classifier'"
    if "?" in value or "#" in value:
        return "must be a plain path without a query string or fragment"
    if any(char.isspace() for char in value):
        return "must not contain spaces"
    if not _ENDPOINT_CHARS.fullmatch(value):
        return "may contain only letters, digits, '-', '.', '_', '~' and '/'"
    if "//" in value or (len(value) > 1 and value.endswith("/")):
        return "must not contain empty segments or end with '/'"
    if value in RESERVED_ENDPOINTS:
        return f"is reserved by the gateway (reserved: {', '.join(sorted(RESERVED_ENDPOINTS))})"
    return None


def _concurrency(predictor: object) -> float:
    """The default target_replica_concurrency: requests a replica works on at once without queueing.

    processes x threads; with server-side batching a thread works on a whole batch, so processes x
    max_batch_size (Cortex's effective value), else the autoscaler would add replicas before batches form.
    """
    if isinstance(predictor, PredictorSpec):
        batching = predictor.server_side_batching
        per_process = batching.max_batch_size if batching else predictor.threads_per_process
        return float(predictor.processes_per_replica * per_process)
    if not isinstance(predictor, Mapping):
        return 1.0
    processes, threads = predictor.get("processes_per_replica", 1), predictor.get("threads_per_process", 1)
    batching = predictor.get("server_side_batching")
    if isinstance(batching, Mapping) and "max_batch_size" in batching:
        threads = batching["max_batch_size"]
    valid = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (processes, threads))
    return float(processes * threads) if valid else 1.0  # an invalid count is reported on its own field


def _with_target(autoscaling: object, target: float) -> object:
    if autoscaling is None:
        return {"target_replica_concurrency": target}
    if isinstance(autoscaling, Mapping) and autoscaling.get("target_replica_concurrency") is None:
        return {**autoscaling, "target_replica_concurrency": target}
    if (
        isinstance(autoscaling, AutoscalingSpec)
        and "target_replica_concurrency" not in autoscaling.model_fields_set
    ):
        return autoscaling.model_copy(update={"target_replica_concurrency": target})
    return autoscaling


def _with_endpoint(networking: object, endpoint: str) -> object:
    if networking is None:
        return {"endpoint": endpoint}
    if isinstance(networking, Mapping) and networking.get("endpoint") is None:
        return {**networking, "endpoint": endpoint}
    return networking
