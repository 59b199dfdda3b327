"""SqliteJobStore on real SQLite files: leases, expiry, dead letters, jobs, persistence and racing writers.

Every time is wall-clock seconds passed explicitly (the store never reads a clock), starting at T0.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelport.controller.jobstore import (
    COMPLETION_ITEM_ID,
    ItemState,
    JobRecord,
    JobStore,
    Lease,
    QueueDepth,
    QueueItem,
    Settlement,
)
from modelport.errors import ConflictError, NotFoundError
from modelport.store.jobs import SqliteJobStore
from modelport.store.sqlite import SCHEMA_VERSION as STATE_SCHEMA_VERSION
from modelport.store.sqlite import SqliteStateStore
from modelport.types import ApiKind, ApiName, JobId, JobStatus, Revision
from tests.unit.test_store_sqlite import make_api

T0 = 1_780_000_000.0
Q = "job-1"
ASYNC_Q = "async/iris"


def make_job(
    job_id: str = "job-1",
    *,
    api: str = "sum",
    created_at: float = T0,
    max_receive_count: int = 3,
    kind: ApiKind = ApiKind.BATCH,
) -> JobRecord:
    return JobRecord(
        job_id=JobId(job_id),
        api_name=ApiName(api),
        kind=kind,
        revision=Revision("rev-1"),
        workers=2,
        config={"threshold": 0.5, "nested": {"labels": ["a", "b"]}},
        timeout_seconds=60.0,
        max_receive_count=max_receive_count,
        total_batches=3,
        status=JobStatus.ENQUEUING,
        created_at=created_at,
        submission={"workers": 2, "item_list": {"batch_size": 2}},
    )


def batches(n: int, *, start: int = 0) -> list[QueueItem]:
    return [
        QueueItem(item_id=f"b{i}", payload=json.dumps([i, i + 1]).encode()) for i in range(start, start + n)
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteJobStore]:
    with SqliteJobStore(db_path) as opened:
        yield opened


def lease(
    store: JobStore, queue: str = Q, *, at: float = T0, worker: str = "w1", visibility: float = 30
) -> Lease:
    leased = store.lease(queue, worker=worker, now=at, visibility_seconds=visibility)
    assert leased is not None, f"nothing leasable in {queue} at {at}"
    return leased


def lease_all(store: JobStore, queue: str = Q, *, at: float = T0) -> list[str]:
    ids = []
    while (leased := store.lease(queue, worker="w", now=at, visibility_seconds=30)) is not None:
        ids.append(leased.item_id)
    return ids


# ---- leasing -------------------------------------------------------------------------------------


def test_it_is_a_job_store_and_leases_oldest_first(db_path: Path) -> None:
    with SqliteJobStore(db_path) as opened:
        store: JobStore = opened  # mypy checks the structural match
        store.enqueue(Q, batches(3), now=T0, max_receive_count=3)
        store.enqueue(Q, batches(1, start=3), now=T0 - 10, max_receive_count=3)  # enqueued earlier: first out

        first = lease(store, at=T0 + 1, visibility=30)
        assert first == Lease(
            queue=Q,
            item_id="b3",
            token=first.token,
            payload=b"[3, 4]",
            content_type="application/json",
            metadata={},
            receive_count=1,
            expires_at=T0 + 31,
        )
        assert len(first.token) == 32 and int(first.token, 16) >= 0
        rest = [lease(store, at=T0 + 1) for _ in range(3)]
        assert [r.item_id for r in rest] == ["b0", "b1", "b2"]  # same enqueue time: insertion order
        assert len({first.token, *(r.token for r in rest)}) == 4
        assert store.lease(Q, worker="w1", now=T0 + 1, visibility_seconds=30) is None
        assert store.lease("another-queue", worker="w1", now=T0 + 1, visibility_seconds=30) is None


def test_an_expired_lease_is_leased_again_with_a_new_token_before_newer_items(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(3), now=T0, max_receive_count=3)
    old = lease(store, at=T0, visibility=30)
    assert lease(store, at=T0 + 29.9).item_id == "b1"  # b0 is still invisible

    again = lease(store, at=T0 + 30, worker="w2")  # b0's lease expired; b0 is older than b2
    assert (again.item_id, again.receive_count, again.expires_at) == ("b0", 2, T0 + 60)
    assert again.token != old.token
    assert lease(store, at=T0 + 30).item_id == "b2"
    view = store.item(Q, "b0")
    assert view is not None and (view.state, view.receive_count) == (ItemState.LEASED, 2)


def test_stale_tokens_change_nothing(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(1), now=T0, max_receive_count=3)
    old = lease(store, at=T0, visibility=10)
    new = lease(store, at=T0 + 10, worker="w2", visibility=10)

    assert not store.extend(Q, old.token, now=T0 + 11, visibility_seconds=100)
    assert not store.ack(Q, old.token, now=T0 + 11, result=b"late")
    assert store.fail(Q, old.token, now=T0 + 11, error="late") is Settlement.STALE
    assert store.depth(Q, now=T0 + 11) == QueueDepth(in_progress=1)  # still the new lease's, until T0 + 20
    assert store.ack(Q, new.token, now=T0 + 12)

    for token in (old.token, new.token):  # a settled item answers every token as stale
        assert not store.ack(Q, token, now=T0 + 13)
        assert not store.extend(Q, token, now=T0 + 13, visibility_seconds=10)
        assert store.fail(Q, token, now=T0 + 13, error="twice") is Settlement.STALE
    assert not store.ack(Q, "0" * 32, now=T0 + 13)
    view = store.item(Q, "b0")
    assert view is not None and (view.state, view.error, view.result) == (ItemState.SUCCEEDED, None, None)


def test_a_lease_past_expiry_that_nobody_took_still_acks(store: SqliteJobStore) -> None:
    # A slow worker's result is kept rather than recomputed, as long as no one leased the item again.
    store.enqueue(Q, batches(1), now=T0, max_receive_count=3)
    slow = lease(store, at=T0, visibility=10)
    assert store.ack(Q, slow.token, now=T0 + 25)
    assert store.depth(Q, now=T0 + 25) == QueueDepth(succeeded=1, succeeded_seconds_sum=25.0)


def test_extend_pushes_the_expiry(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(1), now=T0, max_receive_count=3)
    held = lease(store, at=T0, visibility=30)
    assert store.extend(Q, held.token, now=T0 + 20, visibility_seconds=30)  # now expires at T0 + 50

    assert store.lease(Q, worker="w2", now=T0 + 40, visibility_seconds=30) is None
    assert store.depth(Q, now=T0 + 40) == QueueDepth(in_progress=1)
    assert store.depth(Q, now=T0 + 50) == QueueDepth(queued=1)
    assert lease(store, at=T0 + 50, worker="w2").receive_count == 2
    assert not store.extend("other-queue", held.token, now=T0 + 50, visibility_seconds=30)


# ---- dead letters --------------------------------------------------------------------------------


def test_fail_requeues_while_attempts_are_left_then_dead_letters(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(2), now=T0, max_receive_count=2)
    first = lease(store, at=T0)
    assert store.fail(Q, first.token, now=T0 + 1, error="ValueError: bad row 3") is Settlement.REQUEUED
    view = store.item(Q, "b0")
    assert view is not None
    assert (view.state, view.receive_count, view.error) == (ItemState.QUEUED, 1, "ValueError: bad row 3")

    second = lease(store, at=T0 + 1)  # leasable again at once, ahead of b1
    assert (second.item_id, second.receive_count) == ("b0", 2)
    assert store.fail(Q, second.token, now=T0 + 2, error="ValueError: bad row 3 again") is Settlement.DEAD

    [dead] = store.dead_letters(Q)
    assert (dead.item_id, dead.state, dead.receive_count) == ("b0", ItemState.DEAD, 2)
    assert (dead.error, dead.updated_at) == ("ValueError: bad row 3 again", T0 + 2)
    assert lease_all(store, at=T0 + 2) == ["b1"]


def test_a_lease_that_expires_with_no_attempts_left_becomes_a_dead_letter(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(1), now=T0, max_receive_count=2)
    store.enqueue(Q, batches(1, start=1), now=T0 + 1, max_receive_count=2)
    lease(store, at=T0, visibility=10)
    assert lease(store, at=T0 + 10, visibility=10).receive_count == 2  # b0's second (last) attempt

    # At T0 + 20 b0's last lease has expired: it is dead, and the next item is tried.
    assert lease(store, at=T0 + 20).item_id == "b1"
    [dead] = store.dead_letters(Q)
    assert dead.item_id == "b0"
    assert dead.error == "lease expired after 2 attempts (the worker died or hung)"
    assert store.depth(Q, now=T0 + 20) == QueueDepth(in_progress=1, dead=1)


def test_dead_letters_come_oldest_first(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(3), now=T0, max_receive_count=1)
    leases = [lease(store, at=T0) for _ in range(3)]
    for leased in reversed(leases):
        assert store.fail(Q, leased.token, now=T0 + 1, error=f"error in {leased.item_id}") is Settlement.DEAD
    assert [(d.item_id, d.error) for d in store.dead_letters(Q)] == [
        ("b0", "error in b0"),
        ("b1", "error in b1"),
        ("b2", "error in b2"),
    ]


# ---- depth and worker history --------------------------------------------------------------------


def test_depth_counts_items_by_state_and_averages_lease_to_ack(store: SqliteJobStore) -> None:
    assert store.depth(Q, now=T0) == QueueDepth()
    assert store.depth(Q, now=T0).avg_seconds is None
    store.enqueue(Q, batches(6), now=T0, max_receive_count=1)
    b0, b1, b2, b3 = (lease(store, at=T0, visibility=10) for _ in range(4))
    assert store.ack(Q, b0.token, now=T0 + 2)
    assert store.ack(Q, b1.token, now=T0 + 4)
    assert store.fail(Q, b2.token, now=T0 + 5, error="boom") is Settlement.DEAD

    depth = store.depth(Q, now=T0 + 9)
    assert depth == QueueDepth(queued=2, in_progress=1, succeeded=2, dead=1, succeeded_seconds_sum=6.0)
    assert (depth.unsettled, depth.avg_seconds) == (3, 3.0)
    # b3's lease expires at T0 + 10: from then on it counts as queued again.
    assert store.depth(Q, now=T0 + 10) == QueueDepth(queued=3, succeeded=2, dead=1, succeeded_seconds_sum=6.0)
    assert b3.item_id == "b3"


def test_workers_seen_remembers_every_worker_that_leased(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(3), now=T0, max_receive_count=3)
    assert store.workers_seen(Q) == frozenset()
    for worker in ("w1", "w2", "w1"):
        leased = lease(store, at=T0, worker=worker)
        assert store.ack(Q, leased.token, now=T0 + 1)
    assert store.workers_seen(Q) == {"w1", "w2"}
    assert store.workers_seen("other-queue") == frozenset()


def test_release_worker_makes_its_leases_leasable_at_once(store: SqliteJobStore) -> None:
    store.enqueue(Q, batches(4), now=T0, max_receive_count=2)
    held = [lease(store, at=T0, worker=w, visibility=30) for w in ("w1", "w1", "w2")]

    assert store.release_worker(Q, "w1", now=T0 + 1) == 2
    assert store.release_worker(Q, "w1", now=T0 + 1) == 0
    assert store.depth(Q, now=T0 + 1) == QueueDepth(queued=3, in_progress=1)
    again = lease(store, at=T0 + 1, worker="w3")
    assert (again.item_id, again.receive_count) == ("b0", 2)  # the attempt w1 used still counts
    assert store.extend(Q, held[2].token, now=T0 + 1, visibility_seconds=30)  # w2 keeps its lease


# ---- jobs ----------------------------------------------------------------------------------------


def test_create_job_saves_the_record_and_enqueues_batches_and_completion(store: SqliteJobStore) -> None:
    job = make_job()
    store.create_job(job, batches(2), completion=True)

    assert store.get_job(job.job_id) == job
    assert store.get_job(JobId("unknown")) is None
    assert store.depth(Q, now=T0) == QueueDepth(queued=2)
    completion = store.item(f"{Q}/complete", COMPLETION_ITEM_ID)
    assert completion is not None and (completion.state, completion.enqueued_at) == (ItemState.QUEUED, T0)

    # The completion item waits until every batch is settled (succeeded or dead).
    first, second = lease(store, at=T0), lease(store, at=T0)
    assert store.lease(f"{Q}/complete", worker="w1", now=T0, visibility_seconds=30) is None
    assert store.ack(Q, first.token, now=T0 + 1)
    assert store.lease(f"{Q}/complete", worker="w1", now=T0 + 1, visibility_seconds=30) is None
    assert store.fail(Q, second.token, now=T0 + 1, error="x") is Settlement.REQUEUED
    assert store.lease(f"{Q}/complete", worker="w1", now=T0 + 1, visibility_seconds=30) is None
    assert store.ack(Q, lease(store, at=T0 + 2).token, now=T0 + 3)
    done = lease(store, f"{Q}/complete", at=T0 + 3)
    assert (done.item_id, done.receive_count) == (COMPLETION_ITEM_ID, 1)
    assert store.ack(f"{Q}/complete", done.token, now=T0 + 4)


def test_a_task_job_without_completion_has_no_completion_queue(store: SqliteJobStore) -> None:
    task = make_job("task-1", kind=ApiKind.TASK)
    store.create_job(task, [QueueItem(item_id="task", payload=b'{"epochs": 3}')], completion=False)
    assert store.get_job(task.job_id) == task
    assert lease(store, "task-1").payload == b'{"epochs": 3}'
    assert store.depth("task-1/complete", now=T0) == QueueDepth()


def test_create_job_is_all_or_nothing(store: SqliteJobStore) -> None:
    duplicated = [*batches(3), QueueItem(item_id="b1", payload=b"[]")]
    with pytest.raises(ConflictError, match="'b1'"):
        store.create_job(make_job(), duplicated, completion=True)
    assert store.get_job(JobId(Q)) is None
    assert store.list_jobs() == ()
    assert store.depth(Q, now=T0) == QueueDepth()
    assert store.depth(f"{Q}/complete", now=T0) == QueueDepth()

    # An id the queue already holds (left by an earlier enqueue) fails the whole job the same way.
    store.enqueue(Q, batches(1, start=2), now=T0, max_receive_count=3)
    with pytest.raises(ConflictError, match="already holds an item 'b2'"):
        store.create_job(make_job(), batches(3), completion=True)
    assert store.get_job(JobId(Q)) is None
    assert store.depth(Q, now=T0) == QueueDepth(queued=1)
    assert store.depth(f"{Q}/complete", now=T0) == QueueDepth()


def test_a_job_id_is_used_once(store: SqliteJobStore) -> None:
    store.create_job(make_job(), batches(2), completion=False)
    with pytest.raises(ConflictError, match="already exists"):
        store.create_job(make_job(created_at=T0 + 5), batches(5, start=10), completion=False)
    assert store.get_job(JobId(Q)) == make_job()
    assert store.depth(Q, now=T0) == QueueDepth(queued=2)


def test_enqueue_is_all_or_nothing(store: SqliteJobStore) -> None:
    store.enqueue(ASYNC_Q, batches(2), now=T0, max_receive_count=3)
    with pytest.raises(ConflictError, match="already holds an item 'b1'"):
        store.enqueue(ASYNC_Q, batches(3, start=5) + batches(1, start=1), now=T0, max_receive_count=3)
    assert store.depth(ASYNC_Q, now=T0) == QueueDepth(queued=2)
    with pytest.raises(ValueError, match="max_receive_count must be >= 1"):
        store.enqueue(ASYNC_Q, batches(1, start=9), now=T0, max_receive_count=0)


def test_mark_started_sets_running_once(store: SqliteJobStore) -> None:
    store.create_job(make_job(), batches(1), completion=False)
    store.mark_started(JobId(Q), at=T0 + 1)
    store.mark_started(JobId(Q), at=T0 + 2)
    store.mark_started(JobId("deleted-meanwhile"), at=T0 + 2)
    job = store.get_job(JobId(Q))
    assert job is not None and (job.status, job.started_at) == (JobStatus.RUNNING, T0 + 1)


def test_finish_job_ends_it_once_and_dead_letters_what_was_left(store: SqliteJobStore) -> None:
    store.create_job(make_job(), batches(4), completion=True)
    assert store.ack(Q, lease(store, at=T0).token, now=T0 + 1)
    held = lease(store, at=T0 + 1)

    ended = store.finish_job(JobId(Q), status=JobStatus.STOPPED, at=T0 + 5, reason="stopped by the user")
    assert (ended.status, ended.ended_at, ended.reason) == (JobStatus.STOPPED, T0 + 5, "stopped by the user")
    assert store.get_job(JobId(Q)) == ended
    # Nothing vanishes: the leased and queued batches and the completion item are dead letters with the
    # reason.
    assert [(d.item_id, d.error) for d in store.dead_letters(Q)] == [
        ("b1", "stopped by the user"),
        ("b2", "stopped by the user"),
        ("b3", "stopped by the user"),
    ]
    [completion] = store.dead_letters(f"{Q}/complete")
    assert (completion.error, completion.updated_at) == ("stopped by the user", T0 + 5)
    assert store.depth(Q, now=T0 + 5) == QueueDepth(succeeded=1, dead=3, succeeded_seconds_sum=1.0)
    assert not store.ack(Q, held.token, now=T0 + 6)  # the worker's late ack is refused
    assert store.lease(Q, worker="w1", now=T0 + 6, visibility_seconds=30) is None

    later = store.finish_job(JobId(Q), status=JobStatus.TIMED_OUT, at=T0 + 9, reason="timed out after 60 s")
    assert later == ended  # the first terminal status stays
    store.mark_started(JobId(Q), at=T0 + 9)
    assert store.get_job(JobId(Q)) == ended


def test_finish_job_without_a_reason_names_the_status(store: SqliteJobStore) -> None:
    store.create_job(make_job(), batches(1), completion=False)
    store.finish_job(JobId(Q), status=JobStatus.WORKER_ERROR, at=T0 + 1, reason=None)
    [dead] = store.dead_letters(Q)
    assert dead.error == "the job ended as worker_error"


def test_finish_job_refuses_unknown_jobs_and_non_terminal_statuses(store: SqliteJobStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.finish_job(JobId("nope"), status=JobStatus.STOPPED, at=T0, reason=None)
    store.create_job(make_job(), batches(1), completion=False)
    with pytest.raises(ValueError, match="terminal"):
        store.finish_job(JobId(Q), status=JobStatus.RUNNING, at=T0, reason=None)
    assert store.get_job(JobId(Q)) == make_job()


def test_list_jobs_newest_first_and_active_jobs_oldest_first(store: SqliteJobStore) -> None:
    for job_id, api, at in [("j1", "a", T0), ("j2", "b", T0 + 1), ("j3", "a", T0 + 2), ("j4", "a", T0 + 2)]:
        store.create_job(make_job(job_id, api=api, created_at=at), batches(1), completion=False)
    assert [j.job_id for j in store.list_jobs()] == [
        "j4",
        "j3",
        "j2",
        "j1",
    ]  # a tie: the later submission first
    assert [j.job_id for j in store.list_jobs(ApiName("a"))] == ["j4", "j3", "j1"]
    assert store.list_jobs(ApiName("unknown")) == ()

    store.mark_started(JobId("j2"), at=T0 + 3)
    store.finish_job(JobId("j3"), status=JobStatus.SUCCEEDED, at=T0 + 4, reason=None)
    assert [j.job_id for j in store.active_jobs()] == ["j1", "j2", "j4"]


def test_delete_jobs_forgets_an_apis_jobs_queues_and_async_queue(store: SqliteJobStore) -> None:
    store.create_job(make_job("a1", api="a"), batches(3), completion=True)
    store.create_job(make_job("a2", api="a"), batches(2), completion=True)
    store.create_job(make_job("b1", api="b"), batches(2), completion=True)
    lease(store, "a1", worker="wa")
    lease(store, "b1", worker="wb")
    store.enqueue("async/a", batches(2), now=T0, max_receive_count=3)
    store.enqueue("async/b", batches(2), now=T0, max_receive_count=3)

    assert store.delete_jobs(ApiName("a")) == 2
    assert store.list_jobs() == (make_job("b1", api="b"),)
    for queue in ("a1", "a1/complete", "a2", "a2/complete", "async/a"):
        assert store.depth(queue, now=T0) == QueueDepth()
    assert store.workers_seen("a1") == frozenset()
    assert store.depth("b1", now=T0) == QueueDepth(queued=1, in_progress=1)
    assert store.depth("async/b", now=T0) == QueueDepth(queued=2)
    assert store.workers_seen("b1") == {"wb"}
    assert store.delete_jobs(ApiName("a")) == 0
    store.create_job(make_job("a1", api="a"), batches(1), completion=False)  # the id is free again


# ---- async requests ------------------------------------------------------------------------------


def test_async_requests_carry_metadata_and_keep_results(store: SqliteJobStore) -> None:
    metadata = {"query": "debug=1", "headers": {"x-trace": "abc"}}
    store.enqueue(
        ASYNC_Q,
        [
            QueueItem(item_id="req-1", payload=b"hello", content_type="text/plain", metadata=metadata),
            QueueItem(item_id="req-2", payload=b'{"x": 1}'),
        ],
        now=T0,
        max_receive_count=1,
    )
    request = lease(store, ASYNC_Q, at=T0 + 1, worker="iris-r1")
    assert (request.payload, request.content_type, request.metadata) == (b"hello", "text/plain", metadata)
    view = store.item(ASYNC_Q, "req-1")
    assert view is not None and view.state is ItemState.LEASED
    assert store.ack(
        ASYNC_Q, request.token, now=T0 + 3, result=b'{"label": "setosa"}', result_type="application/json"
    )

    done = store.item(ASYNC_Q, "req-1")
    assert done is not None
    assert (done.state, done.result, done.result_type) == (
        ItemState.SUCCEEDED,
        b'{"label": "setosa"}',
        "application/json",
    )
    assert (done.receive_count, done.enqueued_at, done.updated_at, done.error) == (1, T0, T0 + 3, None)

    failing = lease(store, ASYNC_Q, at=T0 + 4, worker="iris-r1")
    assert failing.metadata == {}
    assert store.fail(ASYNC_Q, failing.token, now=T0 + 5, error="KeyError: 'y'") is Settlement.DEAD
    failed = store.item(ASYNC_Q, "req-2")
    assert failed is not None and (failed.state, failed.error, failed.result) == (
        ItemState.DEAD,
        "KeyError: 'y'",
        None,
    )
    assert store.item(ASYNC_Q, "req-3") is None
    assert store.depth(ASYNC_Q, now=T0 + 5).avg_seconds == 2.0


def test_purge_deletes_settled_items_last_updated_before_the_time(store: SqliteJobStore) -> None:
    store.enqueue(ASYNC_Q, batches(5), now=T0, max_receive_count=1)
    b0, b1, b2, _b3 = (lease(store, ASYNC_Q, at=T0, visibility=100) for _ in range(4))
    assert store.ack(ASYNC_Q, b0.token, now=T0 + 1)
    assert store.fail(ASYNC_Q, b1.token, now=T0 + 2, error="x") is Settlement.DEAD
    assert store.ack(ASYNC_Q, b2.token, now=T0 + 5)

    assert store.purge(ASYNC_Q, finished_before=T0 + 5) == 2  # b0 and b1; b2 finished at T0 + 5 itself
    assert store.item(ASYNC_Q, "b0") is None and store.item(ASYNC_Q, "b1") is None
    assert store.depth(ASYNC_Q, now=T0 + 5) == QueueDepth(
        queued=1, in_progress=1, succeeded=1, succeeded_seconds_sum=5.0
    )
    assert store.purge(ASYNC_Q, finished_before=T0 + 1000) == 1  # queued and leased items are never purged
    assert store.depth(ASYNC_Q, now=T0 + 5) == QueueDepth(queued=1, in_progress=1)


# ---- one file, many connections ------------------------------------------------------------------


def test_leases_and_jobs_survive_reopening(db_path: Path) -> None:
    with SqliteJobStore(db_path) as first:
        first.create_job(make_job(), batches(2), completion=True)
        first.mark_started(JobId(Q), at=T0 + 1)
        held = lease(first, at=T0 + 1, worker="w1")

    with SqliteJobStore(db_path) as reopened:
        job = reopened.get_job(JobId(Q))
        assert job is not None and (job.status, job.started_at, job.config) == (
            JobStatus.RUNNING,
            T0 + 1,
            make_job().config,
        )
        assert reopened.workers_seen(Q) == {"w1"}
        assert lease(reopened, at=T0 + 2).item_id == "b1"  # b0 is still leased
        assert reopened.ack(Q, held.token, now=T0 + 3)  # the token from before the restart still settles it
        assert reopened.depth(Q, now=T0 + 3) == QueueDepth(
            in_progress=1, succeeded=1, succeeded_seconds_sum=2.0
        )


def test_two_stores_racing_lease_every_item_exactly_once(db_path: Path) -> None:
    with SqliteJobStore(db_path) as setup:
        setup.enqueue(Q, batches(500), now=T0, max_receive_count=3)
    start = threading.Barrier(2, timeout=30)

    def drain() -> list[str]:
        with SqliteJobStore(db_path) as own:  # its own connection
            try:
                ids = [lease(own, at=T0 + 1).item_id]
            except BaseException:
                start.abort()  # the other racer fails at once instead of waiting out the barrier
                raise
            # Both hold a lease before either drains (a store waiting on the lock may sleep through the
            # whole queue otherwise); then they race for the other 498.
            start.wait()
            return ids + lease_all(own, at=T0 + 1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        racers = [pool.submit(drain) for _ in range(2)]
        leased = [racer.result(timeout=60) for racer in racers]
    counts = Counter(leased[0] + leased[1])
    assert set(counts) == {f"b{i}" for i in range(500)}
    assert max(counts.values()) == 1


_RACER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from modelport.store.jobs import SqliteJobStore
    store = SqliteJobStore(Path(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    while (leased := store.lease("job-1", worker=sys.argv[2], now=2e9, visibility_seconds=30)) is not None:
        print(leased.item_id, flush=True)
    """
)


@pytest.mark.integration
def test_two_processes_racing_lease_every_item_exactly_once(db_path: Path) -> None:
    with SqliteJobStore(db_path) as setup:
        setup.enqueue(Q, batches(500), now=T0, max_receive_count=3)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(db_path), f"w{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
        for racer in racers:  # both start leasing at (nearly) the same moment
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate(timeout=60)[0].split() for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()
    assert [racer.returncode for racer in racers] == [0, 0]
    counts = Counter(outputs[0] + outputs[1])
    assert set(counts) == {f"b{i}" for i in range(500)}
    assert max(counts.values()) == 1
    with SqliteJobStore(db_path) as store:
        assert store.workers_seen(Q) <= {"w0", "w1"}
        assert store.depth(Q, now=2e9) == QueueDepth(in_progress=500)


@pytest.mark.integration
def test_a_lease_survives_a_sigkilled_process(db_path: Path) -> None:
    writer = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from modelport.controller.jobstore import QueueItem
        from modelport.store.jobs import SqliteJobStore
        store = SqliteJobStore(Path({str(db_path)!r}))
        store.enqueue("job-1", [QueueItem(item_id="b0", payload=b"[]")], now={T0}, max_receive_count=3)
        leased = store.lease("job-1", worker="w1", now={T0}, visibility_seconds=30)
        print(leased.token, flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        token = process.stdout.readline().strip()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    with SqliteJobStore(db_path) as store:
        assert store.depth(Q, now=T0 + 1) == QueueDepth(in_progress=1)
        assert store.ack(Q, token, now=T0 + 2)


@pytest.mark.parametrize("jobs_first", [True, False], ids=["job-store-first", "state-store-first"])
def test_it_shares_the_file_with_the_state_store(db_path: Path, jobs_first: bool) -> None:
    if jobs_first:
        jobs, state = SqliteJobStore(db_path), SqliteStateStore(db_path)
    else:
        state, jobs = SqliteStateStore(db_path), SqliteJobStore(db_path)
    with jobs, state:
        state.save_api(make_api("sum"))
        jobs.create_job(make_job(), batches(2), completion=False)
        held = lease(jobs, at=T0)
        state.delete_api(ApiName("iris"))
        assert jobs.ack(Q, held.token, now=T0 + 1)

    with SqliteStateStore(db_path) as state, SqliteJobStore(db_path) as jobs:
        assert [api.name for api in state.load_apis()] == ["sum"]
        assert jobs.get_job(JobId(Q)) == make_job()
        assert jobs.depth(Q, now=T0 + 1) == QueueDepth(queued=1, succeeded=1, succeeded_seconds_sum=1.0)

    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (STATE_SCHEMA_VERSION,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_job_tables_from_a_newer_modelport_are_refused(db_path: Path) -> None:
    SqliteJobStore(db_path).close()
    SqliteJobStore(db_path).close()  # reopening migrates nothing twice
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE schema_parts SET version = version + 1 WHERE part = 'jobs'")
    raw.commit()
    raw.close()
    with pytest.raises(ConflictError, match="newer than this modelport"):
        SqliteJobStore(db_path)
    SqliteStateStore(db_path).close()  # the state store's own version is untouched


def test_a_closed_store_refuses_use_and_closes_twice_quietly(db_path: Path) -> None:
    store = SqliteJobStore(db_path)
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.depth(Q, now=T0)
    with pytest.raises(RuntimeError, match="closed"):
        store.enqueue(Q, batches(1), now=T0, max_receive_count=1)


def test_a_hundred_thousand_items_enqueue_and_lease_fast(store: SqliteJobStore) -> None:
    # Measured on a laptop-class core: ~0.5 s to enqueue, ~0.1 ms a lease. The bounds catch an O(n) lease
    # (a scan of 100k rows takes milliseconds) without being a benchmark.
    items = [QueueItem(item_id=f"b{i}", payload=b'[{"x": 1}]') for i in range(100_000)]
    started = time.perf_counter()
    store.create_job(make_job(), items, completion=True)
    enqueued = time.perf_counter() - started
    assert enqueued < 5.0

    started = time.perf_counter()
    held = [lease(store, at=T0, visibility=10) for _ in range(300)]  # 300 live leases beside 99,700 queued
    leased_late = lease(store, at=T0 + 10)  # every lease expired: the oldest one comes back first
    per_lease = (time.perf_counter() - started) / 301
    assert per_lease < 0.004, f"{per_lease * 1000:.2f} ms a lease"
    assert (held[-1].item_id, leased_late.item_id) == ("b299", "b0")
    assert store.depth(Q, now=T0 + 10) == QueueDepth(queued=99_999, in_progress=1)
