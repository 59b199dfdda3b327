"""Job submissions: the bodies POSTed to a BatchAPI or TaskAPI, validated, and a batch job's items in batches.

Called by the front door on `POST /<api>` (and `?dryRun=true`) and by the job scheduler; pure apart from
reading (listing) the files a `delimited_files` or `file_path_lister` job names, locally or on S3 (boto3).
"""

from __future__ import annotations

import fnmatch
import glob
import importlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from modelport.errors import UserInputError
from modelport.spec.errors import describe, field_problems
from modelport.spec.model import Int, Text, check_json_compatible, spec_error
from modelport.spec.units import format_duration, parse_duration

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_JOB_BODY_BYTES",
    "MAX_WORKERS",
    "BatchJobRequest",
    "BatchPlan",
    "BatchSource",
    "FileSource",
    "ItemList",
    "JobRequestError",
    "TaskJobRequest",
    "list_sources",
    "merge_config",
    "parse_batch_job",
    "parse_task_job",
    "plan_batches",
]

MAX_JOB_BODY_BYTES = 10 * 2**20  # Cortex's limit on a job submission
MAX_BATCH_BYTES = 256 * 2**10  # Cortex's limit on one batch (an SQS message), as compact JSON
MAX_WORKERS = 100
_MAX_FILE_PROBLEMS = 20  # a folder of broken files reports this many, then a count
_GLOB_CHARS = frozenset("*?[")
_S3 = "s3://"

_REQUIRED_HINTS: dict[str, str] = {
    "workers": f"how many workers run the job at once, 1 to {MAX_WORKERS}",
    "item_list.items": "the list of items to process",
    "item_list.batch_size": "how many items each predict call receives, e.g. 10",
    "delimited_files.paths": "the newline-delimited JSON files: absolute paths, folders, globs or s3:// URLs",
    "delimited_files.batch_size": "how many JSON lines each predict call receives, e.g. 10",
    "file_path_lister.paths": "the files to list: absolute paths, folders, globs or s3:// URLs",
    "file_path_lister.batch_size": "how many file paths each predict call receives, e.g. 10",
}


class BatchSource(StrEnum):
    """Where a batch job's items come from: exactly one per job."""

    ITEM_LIST = "item_list"  # the items themselves, in the body
    DELIMITED_FILES = "delimited_files"  # each line of newline-delimited JSON files is an item
    FILE_PATH_LISTER = "file_path_lister"  # each matched file's path is an item


_SOURCES = ", ".join(BatchSource)


class JobRequestError(UserInputError):
    """Everything wrong with a job submission, one line per problem naming the field path and the fix."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


def _optional_seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise spec_error(str(exc)) from None
    if seconds <= 0:
        raise spec_error(f"must be > 0s (e.g. 3600 or 1h), got {format_duration(seconds)}")
    return seconds


# A number of seconds (Cortex's form) or a duration string ("10m"); None = no timeout.
Timeout = Annotated[Annotated[float, Strict()] | None, BeforeValidator(_optional_seconds)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("config", check_fields=False)
    @classmethod
    def _json_compatible(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_compatible(value, at=())
        return value


class ItemList(_Body):
    items: list[Any]
    batch_size: Int = Field(ge=1)

    @field_validator("items")
    @classmethod
    def _some_items(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise spec_error("must not be empty: give at least one item")
        return value  # JSON data when parsed from a body; plan_batches reports anything else


class FileSource(_Body):
    """The files of a `delimited_files` or `file_path_lister` job (Cortex's `s3_paths` is read as `paths`).

    A path is an absolute local file, folder (every file below it) or glob (`**` crosses folders), or an S3
    URL: `s3://bucket/prefix` (every object whose key starts with the prefix) or a glob over keys. A matched
    path is kept when it matches one of `includes` and none of `excludes`, fnmatch patterns over the whole
    path (`*` also matches '/').
    """

    paths: list[Text] = Field(validation_alias=AliasChoices("paths", "s3_paths"))
    includes: list[Text] = Field(default_factory=lambda: ["**"])
    excludes: list[Text] = Field(default_factory=list)
    batch_size: Int = Field(ge=1)

    @model_validator(mode="before")
    @classmethod
    def _one_name_for_paths(cls, data: object) -> object:
        if isinstance(data, Mapping) and "paths" in data and "s3_paths" in data:
            raise spec_error("give paths or s3_paths (Cortex's name for it), not both", at=("s3_paths",))
        return data

    @field_validator("paths")
    @classmethod
    def _absolute_or_s3(cls, value: list[str]) -> list[str]:
        if not value:
            raise spec_error("must list at least one file, folder, glob or s3:// URL")
        for index, path in enumerate(value):
            if path.startswith(_S3):
                if not path[len(_S3) :].split("/", 1)[0]:
                    raise spec_error(f"expected s3://bucket/prefix, got {path!r}", at=(index,))
            elif not os.path.isabs(path):
                raise spec_error(
                    f"must be an absolute path or an s3:// URL (the cluster does not know your working "
                    f"directory), got {path!r}",
                    at=(index,),
                )
        return value


class BatchJobRequest(_Body):
    """A BatchAPI job submission (Cortex 0.20's body plus 0.25's `timeout` and `max_receive_count`)."""

    workers: Int = Field(ge=1, le=MAX_WORKERS)
    item_list: ItemList | None = None
    delimited_files: FileSource | None = None
    file_path_lister: FileSource | None = None
    config: dict[str, Any] = Field(default_factory=dict)  # merged over the API's predictor.config
    timeout: Timeout = None  # seconds from submission; None = no limit
    # A batch is leased at most this many times (a failed or lost lease is retried), then recorded failed.
    max_receive_count: Int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> BatchJobRequest:
        problem = _source_problem(self.model_fields_set)
        if problem:
            raise spec_error(problem)
        return self

    @property
    def source(self) -> BatchSource:
        return next(source for source in BatchSource if getattr(self, source) is not None)


class TaskJobRequest(_Body):
    """A TaskAPI submission: the config merged over the API's, and an optional timeout."""

    config: dict[str, Any] = Field(default_factory=dict)
    timeout: Timeout = None


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A batch job's items cut into batches in order, and the files they came from (empty for item_list)."""

    batches: list[list[Any]]
    sources: list[str]

    @property
    def item_count(self) -> int:
        return sum(len(batch) for batch in self.batches)


def parse_batch_job(body: bytes) -> BatchJobRequest:
    """The request in a BatchAPI submission's body; JobRequestError lists every problem at once."""
    data = _json_object(body, example="workers and one of item_list, delimited_files, file_path_lister")
    problems: list[str] = []
    request: BatchJobRequest | None = None
    try:
        request = BatchJobRequest.model_validate(data)
    except ValidationError as exc:
        problems = [str(p) for p in field_problems(exc, root=BatchJobRequest, hints=_REQUIRED_HINTS)]
    source_problem = _source_problem({key for key, value in data.items() if value is not None})
    if source_problem and source_problem not in problems:
        problems.append(source_problem)  # also when a source itself is invalid
    if problems or request is None:
        raise JobRequestError(problems)
    return request


def parse_task_job(body: bytes) -> TaskJobRequest:
    """The request in a TaskAPI submission's body (an empty body runs the task with the API's config)."""
    data = _json_object(body, example="config and timeout, or no body at all", empty_ok=True)
    try:
        return TaskJobRequest.model_validate(data)
    except ValidationError as exc:
        raise JobRequestError(str(p) for p in field_problems(exc, root=TaskJobRequest)) from None


def merge_config(api_config: Mapping[str, Any], job_config: Mapping[str, Any]) -> dict[str, Any]:
    """The config a job's predictor gets: the API's predictor.config with the job's keys over it (shallow)."""
    return {**api_config, **job_config}


def list_sources(request: BatchJobRequest) -> list[str]:
    """The files a job reads (delimited_files) or lists (file_path_lister), in order: what a dry run shows."""
    found = _matched_files(request)
    return [] if found is None else found[1]


def plan_batches(request: BatchJobRequest) -> BatchPlan:
    """Every item of the job, in order, in batches of batch_size; JobRequestError names what is wrong.

    Each batch must be at most MAX_BATCH_BYTES of compact JSON (Cortex's limit on one queued batch).
    """
    if request.item_list is not None:
        batches = _chunk(request.item_list.items, request.item_list.batch_size, field=BatchSource.ITEM_LIST)
        return BatchPlan(batches=batches, sources=[])
    found = _matched_files(request)
    assert found is not None  # a validated request has exactly one source
    field, sources = found
    source = request.delimited_files or request.file_path_lister
    assert source is not None
    items: list[Any] = sources if field is BatchSource.FILE_PATH_LISTER else _read_items(sources)
    return BatchPlan(batches=_chunk(items, source.batch_size, field=field), sources=sources)


# --- the body -------------------------------------------------------------------------------------


def _json_object(body: bytes, *, example: str, empty_ok: bool = False) -> dict[str, Any]:
    if len(body) > MAX_JOB_BODY_BYTES:
        fix = (
            "list files with delimited_files instead"
            if not empty_ok
            else "pass large inputs by reference in config (a path or URL)"
        )
        raise JobRequestError(
            [
                f"the body is {len(body) / 2**20:.1f} MiB; a job submission is limited to "
                f"{MAX_JOB_BODY_BYTES // 2**20} MiB: {fix}"
            ]
        )
    if not body.strip():
        if empty_ok:
            return {}
        raise JobRequestError([f"the body is empty: send a JSON object with {example}"])
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise JobRequestError([f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]) from None
    except UnicodeDecodeError:
        raise JobRequestError(["the body is not UTF-8 text: send JSON encoded as UTF-8"]) from None
    except _JsonProblem as exc:
        raise JobRequestError([f"invalid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise JobRequestError([f"expected a JSON object with {example}, got {describe(data)}"])
    return data


class _JsonProblem(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _JsonProblem(f"the key {key!r} appears twice in one object: keep one")
        found[key] = value
    return found


def _no_constants(name: str) -> None:
    raise _JsonProblem(f"{name} is not a JSON value: send a number, or null")


_LINE_DECODER = json.JSONDecoder(parse_constant=_no_constants)  # one for every line: ~2x faster than loads


def _source_problem(given: Iterable[str]) -> str | None:
    sources = [source.value for source in BatchSource if source in set(given)]
    if len(sources) == 1:
        return None
    got = "none was given" if not sources else f"got {' and '.join(sources)}"
    return f"give exactly one of {_SOURCES}: {got}"


# --- files ----------------------------------------------------------------------------------------


def _matched_files(request: BatchJobRequest) -> tuple[BatchSource, list[str]] | None:
    """The file source's name and its files after includes/excludes; None for an item_list job."""
    if request.delimited_files is not None:
        field, source = BatchSource.DELIMITED_FILES, request.delimited_files
    elif request.file_path_lister is not None:
        field, source = BatchSource.FILE_PATH_LISTER, request.file_path_lister
    else:
        return None
    problems: list[str] = []
    matched: dict[str, None] = {}  # ordered, without duplicates
    for index, path in enumerate(source.paths):
        where = f"{field}.paths[{index}]"
        found = _s3_list(path, where=where) if path.startswith(_S3) else _local_list(path)
        if not found:
            problems.append(f"{where}: no file matches {path!r}")
        matched.update(dict.fromkeys(found))
    if problems:
        raise JobRequestError(problems)
    kept = [
        path
        for path in matched
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in source.includes)
        and not any(fnmatch.fnmatchcase(path, pattern) for pattern in source.excludes)
    ]
    if not kept:
        raise JobRequestError(
            [
                f"{field}: none of the {len(matched)} files matched by paths is kept by includes "
                f"{source.includes} and excludes {source.excludes}: widen includes or narrow excludes"
            ]
        )
    return field, kept


def _local_list(path: str) -> list[str]:
    """The files at `path`: itself, every file below a folder, or every file a glob matches (sorted)."""
    matches = [path] if _GLOB_CHARS.isdisjoint(path) else sorted(glob.glob(path, recursive=True))
    files: list[str] = []
    for match in matches:
        if os.path.isfile(match):
            files.append(match)
        elif os.path.isdir(match):
            below = (
                os.path.join(folder, name) for folder, _, names in os.walk(match) for name in names
            )  # symlinked folders are not followed (no cycles)
            files += sorted(name for name in below if os.path.isfile(name))
    return files


def _read_items(files: list[str]) -> list[Any]:
    """Every JSON value of newline-delimited JSON files, in order; blank lines are skipped."""
    items: list[Any] = []
    problems: list[str] = []
    for path in files:
        try:
            for number, line in enumerate(_lines(path), start=1):
                if not line.strip():
                    continue
                try:
                    items.append(_LINE_DECODER.decode(line.decode("utf-8-sig")))
                except (json.JSONDecodeError, _JsonProblem) as exc:
                    detail = (
                        f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else exc
                    )
                    problems.append(
                        f"{BatchSource.DELIMITED_FILES}: {path}:{number}: invalid JSON: {detail}: "
                        "each line must be one JSON value"
                    )
                    break  # one problem per file: the rest of a broken file says little more
                except UnicodeDecodeError:
                    problems.append(f"{BatchSource.DELIMITED_FILES}: {path}:{number}: not UTF-8 text")
                    break
        except OSError as exc:
            problems.append(f"{BatchSource.DELIMITED_FILES}: {path}: cannot read the file: {exc.strerror}")
    if len(problems) > _MAX_FILE_PROBLEMS:
        hidden = len(problems) - _MAX_FILE_PROBLEMS
        problems = [*problems[:_MAX_FILE_PROBLEMS], f"... and {hidden} more files with problems"]
    if problems:
        raise JobRequestError(problems)
    if not items:
        raise JobRequestError(
            [
                f"{BatchSource.DELIMITED_FILES}: the {len(files)} matched files hold no items, only blank "
                "lines: every line must be one JSON value"
            ]
        )
    return items


def _lines(path: str) -> Iterator[bytes]:
    if path.startswith(_S3):
        yield from _s3_lines(path)
        return
    with open(path, "rb") as stream:
        yield from stream


# --- batches --------------------------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # as queued


def _chunk(items: list[Any], batch_size: int, *, field: BatchSource) -> list[list[Any]]:
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    try:
        sizes = [len(_ENCODER.encode(batch).encode()) for batch in batches]
    except (TypeError, ValueError) as exc:  # items built in Python rather than parsed from a body
        raise JobRequestError([f"{field}: every item must be JSON data: {exc}"]) from None
    oversized = [(index, size) for index, size in enumerate(sizes) if size > MAX_BATCH_BYTES]
    if not oversized:
        return batches
    index, size = oversized[0]
    first, last = index * batch_size, index * batch_size + len(batches[index]) - 1
    limit = f"over the {MAX_BATCH_BYTES // 2**10} KiB limit of one batch"
    if first == last:
        message = (
            f"{field}: item {first} alone is {size / 2**10:.1f} KiB of JSON, {limit}: pass large inputs by "
            "reference (e.g. a file path) instead"
        )
    else:
        smaller = max(1, batch_size * MAX_BATCH_BYTES // size)
        more = f" ({len(oversized) - 1} more batches are too)" if len(oversized) > 1 else ""
        message = (
            f"{field}.batch_size: batch {index} (items {first} to {last}) is {size / 2**10:.1f} KiB of JSON, "
            f"{limit}{more}: use a smaller batch_size, e.g. {smaller}"
        )
    raise JobRequestError([message])


# --- S3 (boto3, imported only when a job names s3:// paths) ---------------------------------------


def _boto3_client(*, where: str, path: str) -> Any:
    try:
        boto3 = importlib.import_module("boto3")
    except ImportError:
        raise JobRequestError(
            [f"{where}: reading {path!r} needs boto3, which is not installed: pip install boto3"]
        ) from None
    return boto3.client("s3")


def _split_s3(path: str) -> tuple[str, str]:
    bucket, _, key = path[len(_S3) :].partition("/")
    return bucket, key


def _s3_list(path: str, *, where: str) -> list[str]:
    """Objects under an s3://bucket/prefix (Cortex's rule), or matching a glob over the whole URL."""
    client = _boto3_client(where=where, path=path)
    bucket, key = _split_s3(path)
    glob_at = min((key.index(char) for char in _GLOB_CHARS if char in key), default=None)
    prefix = key if glob_at is None else key[:glob_at]
    found: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                url = f"{_S3}{bucket}/{entry['Key']}"
                if not entry["Key"].endswith("/") and (glob_at is None or fnmatch.fnmatchcase(url, path)):
                    found.append(url)
    except Exception as exc:  # boto3's errors (credentials, access, network) share no useful base class
        raise JobRequestError([f"{where}: cannot list {path!r}: {exc}"]) from None
    return sorted(found)


def _s3_lines(path: str) -> Iterator[bytes]:
    client = _boto3_client(where=BatchSource.DELIMITED_FILES.value, path=path)
    bucket, key = _split_s3(path)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as exc:  # as above
        raise OSError(0, f"cannot read {path!r}: {exc}") from None
    yield from body.iter_lines()
