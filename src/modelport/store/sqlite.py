"""Durable state of the local cluster in one SQLite file: the desired APIs and the replicas started for them.

The daemon (modelport.cluster) opens one `SqliteStateStore` at `Settings.database_path` and hands it to the
controller as its `StateStore` port; on restart it reloads desired APIs and the replicas a dead daemon left.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.errors import ConflictError
from modelport.spec.model import ApiSpec
from modelport.types import Address, ApiName, ReplicaId, ReplicaPhase, Revision


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE apis (
            name TEXT PRIMARY KEY,
            spec_json TEXT NOT NULL,
            revision TEXT NOT NULL,
            generation INTEGER NOT NULL,
            project_dir TEXT NOT NULL,
            spec_path TEXT NOT NULL,
            deployed_at REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE replicas (
            replica_id TEXT PRIMARY KEY,
            api_name TEXT NOT NULL,
            revision TEXT NOT NULL,
            generation INTEGER NOT NULL,
            pid INTEGER,
            host TEXT,
            port INTEGER,
            started_at REAL NOT NULL,
            log_path TEXT
        )
        """
    )
    db.execute("CREATE INDEX replicas_by_api ON replicas (api_name)")


# MIGRATIONS[i] takes the schema from version i to i + 1 (`PRAGMA user_version`); append, never edit.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_tables,)
SCHEMA_VERSION = len(MIGRATIONS)


class SqliteStateStore:
    """One connection, used from the daemon's event-loop thread; the lock makes a stray thread safe too.

    Every write is its own committed transaction before the method returns, so a daemon killed with SIGKILL
    loses nothing it reported as done (WAL + synchronous=NORMAL survives a process crash; only a power loss
    may drop the last transactions).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; `_transaction` opens them explicitly.
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5.0
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

    def save_api(self, api: DesiredApi) -> None:
        with self._transaction() as db:
            db.execute(
                """
                INSERT INTO apis (name, spec_json, revision, generation, project_dir, spec_path, deployed_at)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    spec_json = excluded.spec_json, revision = excluded.revision,
                    generation = excluded.generation, project_dir = excluded.project_dir,
                    spec_path = excluded.spec_path, deployed_at = excluded.deployed_at
                """,
                (
                    api.name,
                    api.spec.model_dump_json(),
                    api.revision,
                    api.generation,
                    str(api.project_dir),
                    str(api.spec_path),
                    api.deployed_at,
                ),
            )

    def delete_api(self, name: ApiName) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM apis WHERE name = ?", (name,))
            db.execute("DELETE FROM replicas WHERE api_name = ?", (name,))

    def load_apis(self) -> Sequence[DesiredApi]:
        with self._reading() as db:
            rows = db.execute(
                """
                SELECT spec_json, revision, generation, project_dir, spec_path, deployed_at
                FROM apis ORDER BY name
                """
            ).fetchall()
        return tuple(
            DesiredApi(
                spec=ApiSpec.model_validate_json(spec_json),
                revision=Revision(revision),
                project_dir=Path(project_dir),
                spec_path=Path(spec_path),
                deployed_at=deployed_at,
                generation=generation,
            )
            for spec_json, revision, generation, project_dir, spec_path, deployed_at in rows
        )

    def record_replica(self, replica: ObservedReplica) -> None:
        address = replica.address
        with self._transaction() as db:
            db.execute(
                """
                INSERT OR REPLACE INTO replicas
                    (replica_id, api_name, revision, generation, pid, host, port, started_at, log_path)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    replica.replica_id,
                    replica.api_name,
                    replica.revision,
                    replica.generation,
                    replica.pid,
                    address.host if address is not None else None,
                    address.port if address is not None else None,
                    replica.started_at,
                    str(replica.log_path) if replica.log_path is not None else None,
                ),
            )

    def forget_replica(self, replica_id: ReplicaId) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM replicas WHERE replica_id = ?", (replica_id,))

    def load_replicas(self) -> Sequence[ObservedReplica]:
        """Replicas recorded and not forgotten, as a previous daemon left them.

        The phase is a STARTING placeholder: whether the process still runs is unknown until the daemon looks
        (by pid: `backends.local.kill_stale_replica`); ready_at and exit_code are never stored.
        """
        with self._reading() as db:
            rows = db.execute(
                """
                SELECT replica_id, api_name, revision, generation, pid, host, port, started_at, log_path
                FROM replicas ORDER BY started_at, replica_id
                """
            ).fetchall()
        return tuple(
            ObservedReplica(
                replica_id=ReplicaId(replica_id),
                api_name=ApiName(api_name),
                revision=Revision(revision),
                generation=generation,
                phase=ReplicaPhase.STARTING,
                address=Address(host, port) if host is not None and port is not None else None,
                pid=pid,
                started_at=started_at,
                log_path=Path(log_path) if log_path is not None else None,
            )
            for replica_id, api_name, revision, generation, pid, host, port, started_at, log_path in rows
        )

    def close(self) -> None:
        """Idempotent; every write is already committed."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # One SELECT is atomic on its own; no transaction needed.
        with self._lock:
            if self._db is None:
                raise RuntimeError(f"state store {self._path} is closed")
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


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one committed step per migration (safe to run on every open)."""
    while True:
        # The version is read inside the write transaction: two processes opening a new file at once must not
        # both run the same step.
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConflictError(
                    f"state database has schema version {version}, newer than this modelport understands "
                    f"({SCHEMA_VERSION}): upgrade modelport, or move the database away to start empty"
                )
            if version == SCHEMA_VERSION:
                db.execute("COMMIT")
                return
            MIGRATIONS[version](db)
            # PRAGMA takes no parameters; the value is an int we computed.
            db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
