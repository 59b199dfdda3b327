"""The durable queue and the job records on SQLite: `SqliteJobStore`, the `JobStore` the scheduler drives.

The daemon (modelport.cluster) opens one on the state store's file (`state.db`) beside `SqliteStateStore`;
controller/jobs.py and the control API's worker and async routes call it. Its tables are its own.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from modelport.controller.jobstore import (
    COMPLETION_ITEM_ID,
    COMPLETION_QUEUE_SUFFIX,
    ItemState,
    ItemView,
    JobRecord,
    Lease,
    QueueDepth,
    QueueItem,
    Settlement,
    async_queue,
    completion_queue,
)
from modelport.errors import ConflictError, NotFoundError
from modelport.types import ApiKind, ApiName, JobId, JobStatus, Revision

# Two stores (or processes) on one file wait this long for each other's write transactions before failing.
BUSY_TIMEOUT_SECONDS = 10.0

# The SQL spells ItemState values literally ('queued', 'leased', 'succeeded', 'dead'): the partial index on
# live leases is usable only by queries whose `state = 'leased'` is a literal.
_ACTIVE_STATUSES = tuple(s.value for s in JobStatus if not s.is_terminal)
_NO_METADATA = "{}"


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE jobs (
            job_id TEXT PRIMARY KEY,
            api_name TEXT NOT NULL,
            kind TEXT NOT NULL,
            revision TEXT NOT NULL,
            workers INTEGER NOT NULL,
            config_json TEXT NOT NULL,
            timeout_seconds REAL,
            max_receive_count INTEGER NOT NULL,
            total_batches INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            reason TEXT,
            submission_json TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX jobs_by_api ON jobs (api_name, created_at)")
    db.execute("CREATE INDEX jobs_by_status ON jobs (status, created_at)")
    # `seq` (the rowid) breaks ties between items enqueued at the same time: FIFO in insertion order.
    db.execute(
        """
        CREATE TABLE queue_items (
            seq INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            item_id TEXT NOT NULL,
            state TEXT NOT NULL,
            payload BLOB NOT NULL,
            content_type TEXT NOT NULL,
            metadata_json TEXT NOT NULL,
            max_receive_count INTEGER NOT NULL,
            receive_count INTEGER NOT NULL DEFAULT 0,
            token TEXT,
            leased_by TEXT,
            leased_at REAL,
            expires_at REAL,
            seconds REAL,
            result BLOB,
            result_type TEXT,
            error TEXT,
            enqueued_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (queue, item_id)
        )
        """
    )
    # Leasing seeks the oldest queued item of a queue, and its leases past expiry (few: one per worker at
    # most), each in O(log n) however long the queue is. The partial index holds only the live leases, so
    # enqueueing does not pay for it; queries must spell `state = 'leased'` literally to use it.
    db.execute("CREATE INDEX queue_items_by_state ON queue_items (queue, state, enqueued_at)")
    db.execute("CREATE INDEX queue_items_by_expiry ON queue_items (queue, expires_at) WHERE state = 'leased'")
    # Only live leases hold a token (settling clears it), so this index stays as small as the work in flight.
    db.execute("CREATE INDEX queue_items_by_token ON queue_items (token) WHERE token IS NOT NULL")
    db.execute(
        """
        CREATE TABLE queue_workers (
            queue TEXT NOT NULL,
            worker TEXT NOT NULL,
            PRIMARY KEY (queue, worker)
        ) WITHOUT ROWID
        """
    )


# The job tables version themselves in `schema_parts` (part 'jobs'), apart from SqliteStateStore's
# `PRAGMA user_version`: each store migrates only its own tables, and opening either store first works.
# MIGRATIONS[i] takes the jobs part from version i to i + 1; append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_tables,)
SCHEMA_VERSION = len(MIGRATIONS)
_SCHEMA_PART = "jobs"


def migrate(db: sqlite3.Connection) -> None:
    """Bring the job tables to SCHEMA_VERSION in one write transaction (safe on every open, any process)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_parts (part TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        row = db.execute("SELECT version FROM schema_parts WHERE part = ?", (_SCHEMA_PART,)).fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise ConflictError(
                f"the job tables of the state database have schema version {version}, newer than this "
                f"modelport understands ({SCHEMA_VERSION}): upgrade modelport, or move the database away "
                "to start empty"
            )
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute(
            "INSERT OR REPLACE INTO schema_parts (part, version) VALUES (?, ?)",
            (_SCHEMA_PART, SCHEMA_VERSION),
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteJobStore:
    """Jobs and the durable queue on one SQLite file, shared with `SqliteStateStore` and other processes.

    One connection of its own, guarded by a lock (any thread may call). Every mutation is one committed
    transaction before the method returns: WAL + synchronous=NORMAL survives a SIGKILLed process (only a
    power loss may drop the last transactions). Writers take the lock up front (BEGIN IMMEDIATE), so two
    stores or processes leasing from one queue never hand out the same item; a store waits up to
    BUSY_TIMEOUT_SECONDS for another's transaction rather than failing. A lease past its expiry still
    belongs to its token until someone leases the item again (a slow worker's late ack is kept).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; `_transaction` opens them explicitly.
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    # ---- jobs ----

    def create_job(self, job: JobRecord, items: Sequence[QueueItem], *, completion: bool) -> None:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone() is not None:
                raise ConflictError(f"job {job.job_id!r} already exists: a job id is used once")
            db.execute(
                """
                INSERT INTO jobs (job_id, api_name, kind, revision, workers, config_json, timeout_seconds,
                    max_receive_count, total_batches, status, created_at, started_at, ended_at, reason,
                    submission_json)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    job.job_id,
                    job.api_name,
                    job.kind.value,
                    job.revision,
                    job.workers,
                    _dump(job.config),
                    job.timeout_seconds,
                    job.max_receive_count,
                    job.total_batches,
                    job.status.value,
                    job.created_at,
                    job.started_at,
                    job.ended_at,
                    job.reason,
                    _dump(job.submission),
                ),
            )
            at, attempts = job.created_at, job.max_receive_count
            _insert_items(db, job.job_id, items, now=at, max_receive_count=attempts)
            if completion:
                completion_item = QueueItem(item_id=COMPLETION_ITEM_ID, payload=b"{}")
                _insert_items(
                    db, completion_queue(job.job_id), (completion_item,), now=at, max_receive_count=attempts
                )

    def get_job(self, job_id: JobId) -> JobRecord | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, api_name: ApiName | None = None) -> Sequence[JobRecord]:
        """Newest first (by created_at, then by submission order)."""
        with self._reading() as db:
            if api_name is None:
                rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC")
            else:
                rows = db.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE api_name = ? "
                    "ORDER BY created_at DESC, rowid DESC",
                    (api_name,),
                )
            return tuple(_job(row) for row in rows.fetchall())

    def active_jobs(self) -> Sequence[JobRecord]:
        with self._reading() as db:
            marks = ", ".join("?" * len(_ACTIVE_STATUSES))
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY created_at, rowid",
                _ACTIVE_STATUSES,
            ).fetchall()
        return tuple(_job(row) for row in rows)

    def mark_started(self, job_id: JobId, *, at: float) -> None:
        """A job that ended, or is unknown (deleted meanwhile), is left as it is."""
        marks = ", ".join("?" * len(_ACTIVE_STATUSES))
        with self._transaction() as db:
            db.execute(
                f"""
                UPDATE jobs SET started_at = ?, status = ?
                WHERE job_id = ? AND started_at IS NULL AND status IN ({marks})
                """,
                (at, JobStatus.RUNNING.value, job_id, *_ACTIVE_STATUSES),
            )

    def finish_job(self, job_id: JobId, *, status: JobStatus, at: float, reason: str | None) -> JobRecord:
        """Raises NotFoundError for an unknown job, ValueError for a status that is not terminal. The
        abandoned items' error is `reason`, or "the job ended as <status>" without one."""
        if not status.is_terminal:
            raise ValueError(f"finish_job needs a terminal status, got {status.value!r}")
        with self._transaction() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found")
            record = _job(row)
            if record.status.is_terminal:
                return record
            db.execute(
                "UPDATE jobs SET status = ?, ended_at = ?, reason = ? WHERE job_id = ?",
                (status.value, at, reason, job_id),
            )
            error = reason if reason is not None else f"the job ended as {status.value}"
            db.executemany(
                """
                UPDATE queue_items
                SET state = 'dead', error = ?, token = NULL, expires_at = NULL, updated_at = ?
                WHERE queue = ? AND state IN ('queued', 'leased')
                """,
                [(error, at, queue) for queue in (job_id, completion_queue(job_id))],
            )
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job(row)

    def delete_jobs(self, api_name: ApiName) -> int:
        """Forget the API's jobs, their queues, and the API's async queue `async/<api>`; returns how many
        jobs."""
        with self._transaction() as db:
            job_ids = [
                job_id for (job_id,) in db.execute("SELECT job_id FROM jobs WHERE api_name = ?", (api_name,))
            ]
            queues = [(queue,) for job_id in job_ids for queue in (job_id, completion_queue(JobId(job_id)))]
            queues.append((async_queue(api_name),))
            db.executemany("DELETE FROM queue_items WHERE queue = ?", queues)
            db.executemany("DELETE FROM queue_workers WHERE queue = ?", queues)
            db.execute("DELETE FROM jobs WHERE api_name = ?", (api_name,))
        return len(job_ids)

    # ---- queue ----

    def enqueue(self, queue: str, items: Sequence[QueueItem], *, now: float, max_receive_count: int) -> None:
        """All or nothing; an item id already in the queue (or twice in `items`) raises ConflictError."""
        with self._transaction() as db:
            _insert_items(db, queue, items, now=now, max_receive_count=max_receive_count)

    def lease(self, queue: str, *, worker: str, now: float, visibility_seconds: float) -> Lease | None:
        """Oldest by enqueue time (then enqueue order); a requeued item keeps its place. The item of a
        job's `<job_id>/complete` queue is leasable only once no item of `<job_id>` is queued or leased."""
        with self._transaction() as db:
            db.execute(
                """
                UPDATE queue_items
                SET state = 'dead', token = NULL, expires_at = NULL, updated_at = :now,
                    error = 'lease expired after ' || receive_count || ' attempts (the worker died or hung)'
                WHERE queue = :queue AND state = 'leased' AND expires_at <= :now
                    AND receive_count >= max_receive_count
                """,
                {"queue": queue, "now": now},
            )
            if queue.endswith(COMPLETION_QUEUE_SUFFIX) and _batches_unsettled(db, queue):
                return None
            picked = db.execute(
                """
                SELECT seq FROM (
                    SELECT * FROM (
                        SELECT seq, enqueued_at FROM queue_items WHERE queue = :queue AND state = 'queued'
                        ORDER BY enqueued_at, seq LIMIT 1
                    )
                    UNION ALL
                    SELECT * FROM (
                        SELECT seq, enqueued_at FROM queue_items
                        WHERE queue = :queue AND state = 'leased' AND expires_at <= :now
                        ORDER BY enqueued_at, seq LIMIT 1
                    )
                )
                ORDER BY enqueued_at, seq LIMIT 1
                """,
                {"queue": queue, "now": now},
            ).fetchone()
            if picked is None:
                return None
            token = secrets.token_hex(16)
            expires_at = now + visibility_seconds
            item_id, payload, content_type, metadata_json, receive_count = db.execute(
                """
                UPDATE queue_items
                SET state = 'leased', token = ?, leased_by = ?, leased_at = ?, expires_at = ?, updated_at = ?,
                    receive_count = receive_count + 1
                WHERE seq = ?
                RETURNING item_id, payload, content_type, metadata_json, receive_count
                """,
                (token, worker, now, expires_at, now, picked[0]),
            ).fetchone()
            db.execute("INSERT OR IGNORE INTO queue_workers (queue, worker) VALUES (?, ?)", (queue, worker))
        return Lease(
            queue=queue,
            item_id=item_id,
            token=token,
            payload=payload,
            content_type=content_type,
            metadata=json.loads(metadata_json),
            receive_count=receive_count,
            expires_at=expires_at,
        )

    def extend(self, queue: str, token: str, *, now: float, visibility_seconds: float) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE queue_items SET expires_at = ? WHERE token = ? AND queue = ? AND state = 'leased'",
                (now + visibility_seconds, token, queue),
            )
            return cursor.rowcount == 1

    def ack(
        self,
        queue: str,
        token: str,
        *,
        now: float,
        result: bytes | None = None,
        result_type: str | None = None,
    ) -> bool:
        """The lease's seconds (lease to ack) feed `depth().avg_seconds`; an earlier attempt's error is
        cleared."""
        with self._transaction() as db:
            cursor = db.execute(
                """
                UPDATE queue_items
                SET state = 'succeeded', result = ?, result_type = ?, seconds = ? - leased_at, error = NULL,
                    token = NULL, expires_at = NULL, updated_at = ?
                WHERE token = ? AND queue = ? AND state = 'leased'
                """,
                (result, result_type, now, now, token, queue),
            )
            return cursor.rowcount == 1

    def fail(self, queue: str, token: str, *, now: float, error: str) -> Settlement:
        """Requeued (at once, keeping `error` as the last one) while attempts are left, else dead."""
        with self._transaction() as db:
            row = db.execute(
                """
                UPDATE queue_items
                SET state = CASE WHEN receive_count < max_receive_count THEN 'queued' ELSE 'dead' END,
                    error = ?, token = NULL, expires_at = NULL, updated_at = ?
                WHERE token = ? AND queue = ? AND state = 'leased'
                RETURNING state
                """,
                (error, now, token, queue),
            ).fetchone()
        if row is None:
            return Settlement.STALE
        return Settlement.REQUEUED if ItemState(row[0]) is ItemState.QUEUED else Settlement.DEAD

    def depth(self, queue: str, *, now: float) -> QueueDepth:
        with self._reading() as db:
            queued, in_progress, succeeded, dead, seconds = db.execute(
                """
                SELECT
                    COUNT(*) FILTER (WHERE state = 'queued' OR (state = 'leased' AND expires_at <= :now)),
                    COUNT(*) FILTER (WHERE state = 'leased' AND expires_at > :now),
                    COUNT(*) FILTER (WHERE state = 'succeeded'),
                    COUNT(*) FILTER (WHERE state = 'dead'),
                    TOTAL(seconds) FILTER (WHERE state = 'succeeded')
                FROM queue_items WHERE queue = :queue
                """,
                {"queue": queue, "now": now},
            ).fetchone()
        return QueueDepth(
            queued=queued,
            in_progress=in_progress,
            succeeded=succeeded,
            dead=dead,
            succeeded_seconds_sum=seconds,
        )

    def item(self, queue: str, item_id: str) -> ItemView | None:
        """The stored state: a lease past its expiry shows LEASED until the item is leased again."""
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM queue_items WHERE queue = ? AND item_id = ?", (queue, item_id)
            ).fetchone()
        return None if row is None else _item_view(row)

    def dead_letters(self, queue: str) -> Sequence[ItemView]:
        """Oldest first by enqueue time (a job's batches in batch order)."""
        with self._reading() as db:
            rows = db.execute(
                f"""
                SELECT {_ITEM_COLUMNS} FROM queue_items WHERE queue = ? AND state = 'dead'
                ORDER BY enqueued_at, seq
                """,
                (queue,),
            ).fetchall()
        return tuple(_item_view(row) for row in rows)

    def workers_seen(self, queue: str) -> frozenset[str]:
        with self._reading() as db:
            rows = db.execute("SELECT worker FROM queue_workers WHERE queue = ?", (queue,)).fetchall()
        return frozenset(worker for (worker,) in rows)

    def purge(self, queue: str, *, finished_before: float) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                """
                DELETE FROM queue_items WHERE queue = ? AND state IN ('succeeded', 'dead') AND updated_at < ?
                """,
                (queue, finished_before),
            )
            return cursor.rowcount

    def release_worker(self, queue: str, worker: str, *, now: float) -> int:
        """The worker exited: its live leases expire now (the next lease call takes them, or turns those
        out of attempts into dead letters). As with any expired lease, a token stays valid until the item
        is leased again."""
        with self._transaction() as db:
            cursor = db.execute(
                """
                UPDATE queue_items SET expires_at = ?, updated_at = ?
                WHERE queue = ? AND state = 'leased' AND leased_by = ? AND expires_at > ?
                """,
                (now, now, queue, worker, now),
            )
            return cursor.rowcount

    # ---- lifecycle ----

    def close(self) -> None:
        """Idempotent; every write is already committed."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> SqliteJobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # One SELECT is atomic on its own (a consistent snapshot under WAL); no transaction needed.
        with self._lock:
            if self._db is None:
                raise RuntimeError(f"job store {self._path} is closed")
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._reading() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


_JOB_COLUMNS = (
    "job_id, api_name, kind, revision, workers, config_json, timeout_seconds, max_receive_count, "
    "total_batches, status, created_at, started_at, ended_at, reason, submission_json"
)
_ITEM_COLUMNS = "queue, item_id, state, receive_count, enqueued_at, updated_at, result, result_type, error"


def _job(row: Sequence[Any]) -> JobRecord:
    (
        job_id,
        api_name,
        kind,
        revision,
        workers,
        config_json,
        timeout_seconds,
        max_receive_count,
        total_batches,
        status,
        created_at,
        started_at,
        ended_at,
        reason,
        submission_json,
    ) = row
    return JobRecord(
        job_id=JobId(job_id),
        api_name=ApiName(api_name),
        kind=ApiKind(kind),
        revision=Revision(revision),
        workers=workers,
        config=json.loads(config_json),
        timeout_seconds=timeout_seconds,
        max_receive_count=max_receive_count,
        total_batches=total_batches,
        status=JobStatus(status),
        created_at=created_at,
        started_at=started_at,
        ended_at=ended_at,
        reason=reason,
        submission=json.loads(submission_json),
    )


def _item_view(row: Sequence[Any]) -> ItemView:
    queue, item_id, state, receive_count, enqueued_at, updated_at, result, result_type, error = row
    return ItemView(
        queue=queue,
        item_id=item_id,
        state=ItemState(state),
        receive_count=receive_count,
        enqueued_at=enqueued_at,
        updated_at=updated_at,
        result=result,
        result_type=result_type,
        error=error,
    )


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), separators=(",", ":"))


def _insert_items(
    db: sqlite3.Connection, queue: str, items: Sequence[QueueItem], *, now: float, max_receive_count: int
) -> None:
    """Inside the caller's transaction; a duplicate id raises ConflictError (the caller rolls back)."""
    if max_receive_count < 1:
        raise ValueError(f"max_receive_count must be >= 1, got {max_receive_count}")
    twice = [item_id for item_id, n in Counter(item.item_id for item in items).items() if n > 1]
    if twice:
        raise ConflictError(
            f"item ids must be unique within a queue: {twice[0]!r} is given more than once for {queue!r}"
        )
    (last_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM queue_items").fetchone()
    try:
        db.executemany(
            """
            INSERT INTO queue_items (queue, item_id, state, payload, content_type, metadata_json,
                max_receive_count, enqueued_at, updated_at)
            VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)
            """,
            [
                (
                    queue,
                    item.item_id,
                    item.payload,
                    item.content_type,
                    _dump(item.metadata) if item.metadata else _NO_METADATA,
                    max_receive_count,
                    now,
                    now,
                )
                for item in items
            ],
        )
    except sqlite3.IntegrityError as err:
        # Only on this error path: name the first id the queue held before this insert.
        held = next(
            (
                item.item_id
                for item in items
                if db.execute(
                    "SELECT 1 FROM queue_items WHERE queue = ? AND item_id = ? AND seq <= ?",
                    (queue, item.item_id, last_seq),
                ).fetchone()
            ),
            "?",
        )
        raise ConflictError(
            f"queue {queue!r} already holds an item {held!r}: item ids must be unique within a queue"
        ) from err


def _batches_unsettled(db: sqlite3.Connection, queue: str) -> bool:
    """For `<job_id>/complete` of a known job: whether a batch of `<job_id>` is still queued or leased."""
    job_id = queue.removesuffix(COMPLETION_QUEUE_SUFFIX)
    if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is None:
        return False
    unsettled = db.execute(
        "SELECT 1 FROM queue_items WHERE queue = ? AND state IN ('queued', 'leased') LIMIT 1", (job_id,)
    ).fetchone()
    return unsettled is not None
