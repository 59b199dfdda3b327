"""SqliteStateStore: round trips, upsert, delete cascade, schema versioning and durability across SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelport.controller.ports import DesiredApi, ObservedReplica
from modelport.errors import ConflictError
from modelport.spec.model import ApiSpec
from modelport.store.sqlite import SCHEMA_VERSION, SqliteStateStore
from modelport.types import Address, ApiName, ReplicaId, ReplicaPhase, Revision


def make_spec(name: str = "iris", *, cpu: str = "200m") -> ApiSpec:
    return ApiSpec.model_validate(
        {
            "name": name,
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py", "env": {"MODEL": "v1"}},
            "compute": {"cpu": cpu, "mem": "1Gi"},
            "autoscaling": {"min_replicas": 2, "max_replicas": 5},
        }
    )


def make_api(
    name: str = "iris", *, revision: str = "rev-1", generation: int = 0, cpu: str = "200m"
) -> DesiredApi:
    return DesiredApi(
        spec=make_spec(name, cpu=cpu),
        revision=Revision(revision),
        project_dir=Path(f"/snapshots/{name}/{revision}"),
        spec_path=Path(f"/snapshots/{name}/{revision}/spec.json"),
        deployed_at=1_780_000_123.5,
        generation=generation,
    )


def make_replica(
    replica_id: str = "iris-a1", *, api: str = "iris", port: int | None = 40001
) -> ObservedReplica:
    return ObservedReplica(
        replica_id=ReplicaId(replica_id),
        api_name=ApiName(api),
        revision=Revision("rev-1"),
        generation=3,
        phase=ReplicaPhase.READY,
        address=Address("127.0.0.1", port) if port is not None else None,
        pid=4242,
        started_at=1_780_000_200.25,
        ready_at=1_780_000_201.0,
        log_path=Path(f"/logs/{api}/{replica_id}.log"),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "state.db"


def test_apis_round_trip_and_survive_reopening(db_path: Path) -> None:
    first, second = make_api("iris", generation=2), make_api("bert", revision="rev-9", cpu="2")
    with SqliteStateStore(db_path) as store:
        store.save_api(first)
        store.save_api(second)
        assert store.load_apis() == (second, first)  # ordered by name

    with SqliteStateStore(db_path) as reopened:
        loaded = reopened.load_apis()
    assert loaded == (second, first)
    assert loaded[1].spec.predictor.env == {"MODEL": "v1"}
    assert loaded[0].spec.compute.cpu == 2.0


def test_save_api_replaces_the_previous_version(db_path: Path) -> None:
    with SqliteStateStore(db_path) as store:
        store.save_api(make_api(revision="rev-1"))
        updated = make_api(revision="rev-2", generation=1, cpu="1")
        store.save_api(updated)
        assert store.load_apis() == (updated,)


def test_delete_api_removes_its_replicas_only(db_path: Path) -> None:
    with SqliteStateStore(db_path) as store:
        store.save_api(make_api("iris"))
        store.save_api(make_api("bert"))
        store.record_replica(make_replica("iris-a1", api="iris"))
        store.record_replica(make_replica("bert-b1", api="bert"))

        store.delete_api(ApiName("iris"))
        store.delete_api(ApiName("never-deployed"))  # deleting an unknown API is not an error

        assert [api.name for api in store.load_apis()] == ["bert"]
        assert [r.replica_id for r in store.load_replicas()] == ["bert-b1"]


def test_replicas_round_trip_with_a_starting_placeholder_phase(db_path: Path) -> None:
    ready = make_replica("iris-a1")
    never_bound = make_replica("iris-a2", port=None)
    with SqliteStateStore(db_path) as store:
        store.record_replica(ready)
        store.record_replica(never_bound)
    with SqliteStateStore(db_path) as store:
        loaded: dict[str, ObservedReplica] = {r.replica_id: r for r in store.load_replicas()}

    # Everything recorded comes back; what only observation can tell (phase, readiness) does not.
    assert loaded["iris-a1"] == ObservedReplica(
        replica_id=ReplicaId("iris-a1"),
        api_name=ApiName("iris"),
        revision=Revision("rev-1"),
        generation=3,
        phase=ReplicaPhase.STARTING,
        address=Address("127.0.0.1", 40001),
        pid=4242,
        started_at=1_780_000_200.25,
        log_path=Path("/logs/iris/iris-a1.log"),
    )
    assert loaded["iris-a2"].address is None


def test_record_replica_is_an_upsert_and_forget_removes_it(db_path: Path) -> None:
    with SqliteStateStore(db_path) as store:
        store.record_replica(make_replica("iris-a1", port=40001))
        store.record_replica(make_replica("iris-a1", port=40002))
        store.record_replica(make_replica("iris-a2"))
        assert [(r.replica_id, r.address) for r in store.load_replicas()] == [
            ("iris-a1", Address("127.0.0.1", 40002)),
            ("iris-a2", Address("127.0.0.1", 40001)),
        ]
        store.forget_replica(ReplicaId("iris-a1"))
        store.forget_replica(ReplicaId("unknown"))
        assert [r.replica_id for r in store.load_replicas()] == ["iris-a2"]


def test_schema_version_and_wal_mode_are_set(db_path: Path) -> None:
    SqliteStateStore(db_path).close()
    SqliteStateStore(db_path).close()  # reopening does not migrate twice

    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        raw.close()
    assert tables == {"apis", "replicas"}


def test_a_database_from_a_newer_modelport_is_refused(db_path: Path) -> None:
    SqliteStateStore(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    with pytest.raises(ConflictError, match="newer than this modelport"):
        SqliteStateStore(db_path)


def test_a_closed_store_refuses_use_and_closes_twice_quietly(db_path: Path) -> None:
    store = SqliteStateStore(db_path)
    store.close()
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store.load_apis()


@pytest.mark.integration
def test_writes_survive_a_sigkilled_writer(db_path: Path) -> None:
    # A daemon killed with SIGKILL never runs close(): what it saved must already be on disk.
    writer = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store_sqlite import make_api, make_replica
        from modelport.store.sqlite import SqliteStateStore
        store = SqliteStateStore(Path({str(db_path)!r}))
        store.save_api(make_api("iris"))
        store.record_replica(make_replica("iris-a1"))
        print("saved", flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "saved\n"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    with SqliteStateStore(db_path) as store:
        assert store.load_apis() == (make_api("iris"),)
        assert [r.replica_id for r in store.load_replicas()] == ["iris-a1"]
