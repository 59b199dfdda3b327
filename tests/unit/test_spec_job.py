"""Unit tests of spec.job: job submission bodies (BatchAPI, TaskAPI), their errors, and batch planning over
real files (folders, globs, includes/excludes, newline-delimited JSON)."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelport.errors import UserInputError
from modelport.spec.job import (
    MAX_BATCH_BYTES,
    MAX_JOB_BODY_BYTES,
    BatchJobRequest,
    BatchSource,
    FileSource,
    ItemList,
    JobRequestError,
    TaskJobRequest,
    list_sources,
    merge_config,
    parse_batch_job,
    parse_task_job,
    plan_batches,
)
from tests.support import write_files


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def batch_errors(value: object) -> list[str]:
    with pytest.raises(JobRequestError) as caught:
        parse_batch_job(value if isinstance(value, bytes) else body(value))
    assert isinstance(caught.value, UserInputError)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def plan_errors(request: BatchJobRequest) -> list[str]:
    with pytest.raises(JobRequestError) as caught:
        plan_batches(request)
    return caught.value.problems


def files_job(root: Path, *paths: str, field: str = "delimited_files", **source: Any) -> BatchJobRequest:
    absolute = [path if path.startswith("s3://") else str(root / path) for path in paths]
    return parse_batch_job(body({"workers": 2, field: {"paths": absolute, "batch_size": 2, **source}}))


def ndjson(*values: object) -> str:
    return "".join(json.dumps(value) + "\n" for value in values)


# --- batch job bodies -----------------------------------------------------------------------------


def test_an_item_list_job_with_its_defaults() -> None:
    request = parse_batch_job(
        body({"workers": 3, "item_list": {"items": [1, "a", {"b": None}], "batch_size": 2}})
    )
    assert request.workers == 3
    assert request.item_list == ItemList(items=[1, "a", {"b": None}], batch_size=2)
    assert request.source is BatchSource.ITEM_LIST
    assert (request.config, request.timeout, request.max_receive_count) == ({}, None, 3)
    assert request.delimited_files is None and request.file_path_lister is None


def test_every_field_given_and_cortex_s3_paths_read_as_paths() -> None:
    request = parse_batch_job(
        body(
            {
                "workers": 100,
                "file_path_lister": {
                    "s3_paths": ["s3://bucket/images/"],
                    "includes": ["*.jpg"],
                    "excludes": ["*/tmp/*"],
                    "batch_size": 16,
                },
                "config": {"dest": "s3://bucket/out", "k": [1, 2.5]},
                "timeout": "1h30m",
                "max_receive_count": 1,
            }
        )
    )
    assert request.file_path_lister == FileSource(
        paths=["s3://bucket/images/"], includes=["*.jpg"], excludes=["*/tmp/*"], batch_size=16
    )
    assert request.source is BatchSource.FILE_PATH_LISTER
    assert (request.timeout, request.max_receive_count) == (5400.0, 1)
    assert request.config == {"dest": "s3://bucket/out", "k": [1, 2.5]}
    default_filters = files_job(Path("/data"), "x.jsonl").delimited_files
    assert default_filters is not None and (default_filters.includes, default_filters.excludes) == (
        ["**"],
        [],
    )


@pytest.mark.parametrize(("timeout", "seconds"), [(600, 600.0), (0.5, 0.5), ("10m", 600.0), ("90", 90.0)])
def test_timeout_is_seconds_or_a_duration(timeout: object, seconds: float) -> None:
    request = parse_batch_job(
        body({"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "timeout": timeout})
    )
    assert request.timeout == seconds
    assert parse_task_job(body({"timeout": timeout})).timeout == seconds


ONE_ITEM = {"items": [1], "batch_size": 1}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"workers": 1, "item": ONE_ITEM},
            [
                "item: unknown field 'item': did you mean 'item_list'?",
                "give exactly one of item_list, delimited_files, file_path_lister: none was given",
            ],
        ),
        (
            {"workers": 1, "item_list": {"items": [1], "batch_size": 0}},
            ["item_list.batch_size: must be >= 1, got 0"],
        ),
        (
            {"workers": 1, "item_list": {"items": [], "batch_size": 1}},
            ["item_list.items: must not be empty: give at least one item"],
        ),
        (
            {"workers": 1, "item_list": {"items": [1]}},
            ["item_list.batch_size: required: how many items each predict call receives, e.g. 10"],
        ),
        (
            {"workers": 1},
            ["give exactly one of item_list, delimited_files, file_path_lister: none was given"],
        ),
        (
            {"workers": 1, "item_list": ONE_ITEM, "file_path_lister": {"paths": ["/d"], "batch_size": 1}},
            [
                "give exactly one of item_list, delimited_files, file_path_lister: got item_list and "
                "file_path_lister"
            ],
        ),
        (
            {"item_list": ONE_ITEM},
            ["workers: required: how many workers run the job at once, 1 to 100"],
        ),
        ({"workers": 0, "item_list": ONE_ITEM}, ["workers: must be >= 1, got 0"]),
        ({"workers": 101, "item_list": ONE_ITEM}, ["workers: must be <= 100, got 101"]),
        ({"workers": "2", "item_list": ONE_ITEM}, ["workers: expected an integer, got '2'"]),
        (
            {"workers": 1, "item_list": ONE_ITEM, "max_receive_count": 0},
            ["max_receive_count: must be >= 1, got 0"],
        ),
        (
            {"workers": 1, "item_list": ONE_ITEM, "timeout": 0},
            ["timeout: must be > 0s (e.g. 3600 or 1h), got 0s"],
        ),
        (
            {"workers": 1, "item_list": ONE_ITEM, "timeout": "soon"},
            [
                "timeout: expected a duration like 30s, 5m, 1h30m or 250ms (or a number of seconds), got "
                "'soon'"
            ],
        ),
        ({"workers": 1, "item_list": ONE_ITEM, "config": [1]}, ["config: expected a mapping, got a list"]),
        (
            {"workers": 1, "delimited_files": {"paths": ["data/*.jsonl"], "batch_size": 1}},
            [
                "delimited_files.paths[0]: must be an absolute path or an s3:// URL (the cluster does not "
                "know your working directory), got 'data/*.jsonl'"
            ],
        ),
        (
            {"workers": 1, "delimited_files": {"paths": [], "batch_size": 1}},
            ["delimited_files.paths: must list at least one file, folder, glob or s3:// URL"],
        ),
        (
            {"workers": 1, "delimited_files": {"batch_size": 1}},
            [
                "delimited_files.paths: required: the newline-delimited JSON files: absolute paths, folders, "
                "globs or s3:// URLs"
            ],
        ),
        (
            {"workers": 1, "file_path_lister": {"paths": ["/a"], "s3_paths": ["s3://b/a"], "batch_size": 1}},
            ["file_path_lister.s3_paths: give paths or s3_paths (Cortex's name for it), not both"],
        ),
        (
            {"workers": 1, "file_path_lister": {"paths": ["s3:///key"], "batch_size": 1, "include": ["*"]}},
            [
                "file_path_lister.paths[0]: expected s3://bucket/prefix, got 's3:///key'",
                "file_path_lister.include: unknown field 'include': did you mean 'includes'?",
            ],
        ),
    ],
)
def test_batch_body_errors_name_the_field_and_the_fix(value: object, expected: list[str]) -> None:
    assert batch_errors(value) == expected


def test_every_problem_is_reported_at_once() -> None:
    assert batch_errors(
        {
            "workers": 0,
            "item_list": {"items": [], "batch_size": 0},
            "delimited_files": {"paths": ["/d"], "batch_size": 1},
            "timeout": -5,
            "confg": {},
        }
    ) == [
        "workers: must be >= 1, got 0",
        "item_list.items: must not be empty: give at least one item",
        "item_list.batch_size: must be >= 1, got 0",
        "timeout: must be > 0s (e.g. 3600 or 1h), got -5s",
        "confg: unknown field 'confg': did you mean 'config'?",
        "give exactly one of item_list, delimited_files, file_path_lister: got item_list and delimited_files",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"workers": 1,\n  "item_list": }', "invalid JSON at line 2, column 16: Expecting value"),
        (
            b'{"workers": 1, "workers": 2}',
            "invalid JSON: the key 'workers' appears twice in one object: keep one",
        ),
        (b'{"workers": NaN}', "invalid JSON: NaN is not a JSON value: send a number, or null"),
        (
            b"[1, 2]",
            "expected a JSON object with workers and one of item_list, delimited_files, file_path_lister, "
            "got a list",
        ),
        (
            b"  \n",
            "the body is empty: send a JSON object with workers and one of item_list, delimited_files, "
            "file_path_lister",
        ),
        (b'{"workers": "\xff"}', "the body is not UTF-8 text: send JSON encoded as UTF-8"),
    ],
)
def test_malformed_bodies(raw: bytes, message: str) -> None:
    assert batch_errors(raw) == [message]


def test_a_body_over_10_mib_is_refused_before_it_is_parsed() -> None:
    items = "[" + ",".join(["1"] * (10 * 2**20)) + "]"  # 20 MiB of valid JSON
    raw = f'{{"workers": 1, "item_list": {{"items": {items}, "batch_size": 1}}}}'.encode()
    started = time.perf_counter()
    assert batch_errors(raw) == [
        "the body is 20.0 MiB; a job submission is limited to 10 MiB: list files with delimited_files instead"
    ]
    assert time.perf_counter() - started < 0.5  # refused on its length, not parsed
    at_limit = b" " * (MAX_JOB_BODY_BYTES - 60) + body({"workers": 1, "item_list": ONE_ITEM})
    assert len(at_limit) <= MAX_JOB_BODY_BYTES
    assert parse_batch_job(at_limit).workers == 1


def test_python_construction_keeps_the_rules() -> None:
    request = BatchJobRequest(workers=1, item_list=ItemList(items=[1], batch_size=1))
    assert request.source is BatchSource.ITEM_LIST
    with pytest.raises(ValidationError, match="give exactly one of item_list"):
        BatchJobRequest(
            workers=1,
            item_list=ItemList(items=[1], batch_size=1),
            delimited_files=FileSource(paths=["/x"], batch_size=1),
        )
    with pytest.raises(ValidationError, match="expected JSON-compatible data"):
        BatchJobRequest(workers=1, item_list=ItemList(items=[1], batch_size=1), config={"s": {1, 2}})
    built = BatchJobRequest(workers=1, item_list=ItemList(items=[1, {"s": {1, 2}}], batch_size=1))
    assert plan_errors(built) == [
        "item_list: every item must be JSON data: Object of type set is not JSON serializable"
    ]


# --- task bodies ----------------------------------------------------------------------------------


def test_task_bodies() -> None:
    assert parse_task_job(b"") == TaskJobRequest()  # `curl -X POST <endpoint>` runs the task as configured
    assert parse_task_job(body({"config": {"epochs": 3}, "timeout": 60})) == TaskJobRequest(
        config={"epochs": 3}, timeout=60.0
    )
    with pytest.raises(JobRequestError) as caught:
        parse_task_job(body({"conf": {}, "timeout": "never", "workers": 2}))
    assert caught.value.problems == [
        "timeout: expected a duration like 30s, 5m, 1h30m or 250ms (or a number of seconds), got 'never'",
        "conf: unknown field 'conf': did you mean 'config'?",
        "workers: unknown field 'workers': expected one of config, timeout",
    ]
    with pytest.raises(JobRequestError) as caught:
        parse_task_job(b"x" * (MAX_JOB_BODY_BYTES + 1))
    assert caught.value.problems == [
        "the body is 10.0 MiB; a job submission is limited to 10 MiB: pass large inputs by reference in "
        "config (a path or URL)"
    ]
    with pytest.raises(JobRequestError, match=r"^expected a JSON object with config and timeout"):
        parse_task_job(b'"run"')


def test_merge_config_is_shallow_and_the_job_wins() -> None:
    api = {"model": "a.pkl", "opts": {"x": 1, "y": 2}, "keep": True}
    job = {"model": "b.pkl", "opts": {"x": 9}}
    assert merge_config(api, job) == {"model": "b.pkl", "opts": {"x": 9}, "keep": True}
    assert api == {"model": "a.pkl", "opts": {"x": 1, "y": 2}, "keep": True}  # inputs untouched
    assert merge_config(api, {}) == api and merge_config(api, {}) is not api


# --- planning: item lists -------------------------------------------------------------------------


def test_item_list_is_chunked_in_order() -> None:
    request = parse_batch_job(body({"workers": 1, "item_list": {"items": list(range(7)), "batch_size": 3}}))
    plan = plan_batches(request)
    assert plan.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan.sources == [] and list_sources(request) == []
    assert plan.item_count == 7


def test_100k_items_are_planned_quickly() -> None:
    items = [{"id": index, "text": f"item {index}"} for index in range(100_000)]
    raw = body({"workers": 4, "item_list": {"items": items, "batch_size": 10}})
    started = time.perf_counter()
    plan = plan_batches(parse_batch_job(raw))
    elapsed = time.perf_counter() - started
    assert len(plan.batches) == 10_000 and plan.batches[-1][-1] == items[-1]
    assert elapsed < 3.0, f"parsing and planning 100k items took {elapsed:.2f} s"


def test_a_batch_over_256_kib_asks_for_a_smaller_batch_size() -> None:
    big = "x" * (100 * 2**10)  # each item is about 100 KiB of JSON
    assert plan_errors(
        parse_batch_job(body({"workers": 1, "item_list": {"items": [big] * 6, "batch_size": 3}}))
    ) == [
        "item_list.batch_size: batch 0 (items 0 to 2) is 300.0 KiB of JSON, over the 256 KiB limit of one "
        "batch (1 more batches are too): use a smaller batch_size, e.g. 2"
    ]
    huge = "y" * MAX_BATCH_BYTES
    assert plan_errors(
        parse_batch_job(body({"workers": 1, "item_list": {"items": [1, huge], "batch_size": 1}}))
    ) == [
        "item_list: item 1 alone is 256.0 KiB of JSON, over the 256 KiB limit of one batch: pass large "
        "inputs by reference (e.g. a file path) instead"
    ]
    fits = parse_batch_job(body({"workers": 1, "item_list": {"items": [big, big], "batch_size": 2}}))
    assert len(plan_batches(fits).batches) == 1


# --- planning: files ------------------------------------------------------------------------------


def test_delimited_files_from_a_folder_recursively_in_path_order(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "data/b.jsonl": ndjson({"n": 3}, {"n": 4}),
            "data/a.jsonl": ndjson({"n": 1}) + "\n   \n" + ndjson({"n": 2}),  # blank lines are skipped
            "data/sub/deep/c.jsonl": ndjson({"n": 5}),
            "extra.jsonl": ndjson([6], "seven"),
        },
    )
    request = files_job(tmp_path, "data", "extra.jsonl")
    plan = plan_batches(request)
    assert plan.sources == [
        str(tmp_path / "data/a.jsonl"),
        str(tmp_path / "data/b.jsonl"),
        str(tmp_path / "data/sub/deep/c.jsonl"),
        str(tmp_path / "extra.jsonl"),
    ]
    assert plan.batches == [[{"n": 1}, {"n": 2}], [{"n": 3}, {"n": 4}], [{"n": 5}, [6]], ["seven"]]
    assert list_sources(request) == plan.sources


def test_globs_includes_and_excludes(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "in/2024/01.jsonl": ndjson(1),
            "in/2024/02.jsonl": ndjson(2),
            "in/2024/_SUCCESS": "",
            "in/2025/01.jsonl": ndjson(3),
            "in/2025/tmp/01.jsonl": ndjson(4),
            "in/notes.txt": "not json",
        },
    )

    def sources(*paths: str, **filters: Any) -> list[str]:
        request = files_job(tmp_path, *paths, **filters)
        return [Path(path).relative_to(tmp_path).as_posix() for path in list_sources(request)]

    assert sources("in/*/01.jsonl") == ["in/2024/01.jsonl", "in/2025/01.jsonl"]
    assert sources("in/**/*.jsonl") == [
        "in/2024/01.jsonl",
        "in/2024/02.jsonl",
        "in/2025/01.jsonl",
        "in/2025/tmp/01.jsonl",
    ]
    assert sources("in/2024*") == [
        "in/2024/01.jsonl",
        "in/2024/02.jsonl",
        "in/2024/_SUCCESS",
    ]  # a folder glob
    # Patterns match the whole path (tmp_path itself is under /tmp: "*/tmp/*" would exclude everything).
    assert sources("in", includes=["*.jsonl"], excludes=["*/in/*/tmp/*"]) == [
        "in/2024/01.jsonl",
        "in/2024/02.jsonl",
        "in/2025/01.jsonl",
    ]
    assert sources("in", includes=["*/2025/*", "*.txt"]) == [
        "in/2025/01.jsonl",
        "in/2025/tmp/01.jsonl",
        "in/notes.txt",
    ]
    # A file named twice (by a folder and a glob) is read once, where it first appears.
    assert sources("in/2025/01.jsonl", "in/2025") == ["in/2025/01.jsonl", "in/2025/tmp/01.jsonl"]
    plan = plan_batches(files_job(tmp_path, "in", excludes=["*_SUCCESS", "*.txt"]))
    assert plan.batches == [[1, 2], [3, 4]]


def test_file_path_lister_batches_the_paths_themselves(tmp_path: Path) -> None:
    write_files(
        tmp_path, {f"images/{index:02d}.jpg": b"\xff\xd8" for index in range(5)} | {"images/x.txt": ""}
    )
    request = files_job(tmp_path, "images", field="file_path_lister", includes=["*.jpg"])
    plan = plan_batches(request)
    expected = [str(tmp_path / f"images/{index:02d}.jpg") for index in range(5)]
    assert plan.sources == expected
    assert plan.batches == [expected[0:2], expected[2:4], expected[4:]]  # binary files are never read


def test_a_path_that_matches_nothing(tmp_path: Path) -> None:
    write_files(tmp_path, {"data/a.jsonl": ndjson(1), "empty/.keep": ""})
    request = files_job(tmp_path, "data/a.jsonl", "missing/*.jsonl", "nope.jsonl")
    assert plan_errors(request) == [
        f"delimited_files.paths[1]: no file matches '{tmp_path / 'missing/*.jsonl'}'",
        f"delimited_files.paths[2]: no file matches '{tmp_path / 'nope.jsonl'}'",
    ]
    with pytest.raises(JobRequestError, match=r"^file_path_lister.paths\[0\]: no file matches"):
        list_sources(files_job(tmp_path, "data/*.csv", field="file_path_lister"))
    assert plan_errors(files_job(tmp_path, "data", excludes=["*.jsonl"])) == [
        "delimited_files: none of the 1 files matched by paths is kept by includes ['**'] and excludes "
        "['*.jsonl']: widen includes or narrow excludes"
    ]


def test_invalid_lines_name_the_file_and_line(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "d/1.jsonl": ndjson(1, 2) + "{'single': 'quotes'}\n" + "not json either\n",
            "d/2.jsonl": ndjson(3),
            "d/3.jsonl": '{"a": 1}\n\n{"b": NaN}\n',
            "d/4.jsonl": b'"ok"\n"\xff"\n',
        },
    )
    assert plan_errors(files_job(tmp_path, "d")) == [
        f"delimited_files: {tmp_path / 'd/1.jsonl'}:3: invalid JSON: Expecting property name enclosed in "
        "double quotes (column 2): each line must be one JSON value",
        f"delimited_files: {tmp_path / 'd/3.jsonl'}:3: invalid JSON: NaN is not a JSON value: send a number, "
        "or null: each line must be one JSON value",
        f"delimited_files: {tmp_path / 'd/4.jsonl'}:2: not UTF-8 text",
    ]
    # A dry run lists the files without reading them.
    assert len(list_sources(files_job(tmp_path, "d"))) == 4


def test_files_with_only_blank_lines_hold_no_items(tmp_path: Path) -> None:
    write_files(tmp_path, {"blank.jsonl": "\n  \n\n"})
    assert plan_errors(files_job(tmp_path, "blank.jsonl")) == [
        "delimited_files: the 1 matched files hold no items, only blank lines: every line must be one "
        "JSON value"
    ]


def test_100k_lines_are_planned_quickly(tmp_path: Path) -> None:
    write_files(tmp_path, {"big.jsonl": ndjson(*({"id": index} for index in range(100_000)))})
    started = time.perf_counter()
    plan = plan_batches(files_job(tmp_path, "big.jsonl", batch_size=100))
    elapsed = time.perf_counter() - started
    assert len(plan.batches) == 1000 and plan.batches[999][99] == {"id": 99_999}
    assert elapsed < 3.0, f"planning 100k lines took {elapsed:.2f} s"


@pytest.mark.skipif(importlib.util.find_spec("boto3") is not None, reason="boto3 is installed here")
def test_s3_paths_without_boto3_say_how_to_get_it() -> None:
    request = files_job(Path("/"), "s3://bucket/data/", field="file_path_lister")
    assert plan_errors(request) == [
        "file_path_lister.paths[0]: reading 's3://bucket/data/' needs boto3, which is not installed: "
        "pip install boto3"
    ]
