"""The reconcile loop (controller.loop) against typed in-memory fakes, driven tick by tick on a FakeClock."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from modelport.controller.ports import ComputeVerdict, DesiredApi
from modelport.errors import NotFoundError
from modelport.spec.model import ApiSpec
from modelport.types import ApiName, ApiRoute, ApiStatus, ApiTraffic, ReplicaId, ReplicaPhase, Revision
from tests.unit.fakes import Fakes, MemoryStore

IRIS = ApiName("iris")
REV_A, REV_B = Revision("aaaaaa111111"), Revision("bbbbbb222222")


# ---- harness -----------------------------------------------------------------------------------------


def make_spec(
    name: str = "iris", *, replicas: int = 2, surge: str = "25%", unavailable: str = "25%"
) -> ApiSpec:
    return ApiSpec.model_validate(
        {
            "name": name,
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py"},
            "autoscaling": {"min_replicas": 1, "init_replicas": replicas, "max_replica_concurrency": 8},
            "update_strategy": {"max_surge": surge, "max_unavailable": unavailable},
        }
    )


class Cluster(Fakes):
    def __init__(self, store: MemoryStore | None = None) -> None:
        super().__init__(store=store)
        self.controller = self.controller_with(drain_grace_seconds=7.0)

    def desired(self, spec: ApiSpec | None = None, *, revision: Revision = REV_A) -> DesiredApi:
        return DesiredApi(
            spec=spec or make_spec(),
            revision=revision,
            project_dir=Path(f"/snapshots/{revision}"),
            spec_path=Path(f"/snapshots/{revision}/spec.json"),
            deployed_at=self.clock.wall(),
        )

    def tick(self) -> None:
        asyncio.run(self.controller.tick())

    def route(self, name: ApiName = IRIS) -> ApiRoute:
        return self.routes.latest[name]

    def converge(self, *, max_ticks: int = 30) -> int:
        """Tick, turning started replicas ready and draining ones exited, until nothing moves."""
        for ticks in range(max_ticks):
            launches, terminated = len(self.backend.launches), len(self.backend.terminated)
            self.tick()
            self.backend.ready()
            self.backend.finish_draining()
            if (launches, terminated) == (len(self.backend.launches), len(self.backend.terminated)) and not (
                self.backend.in_phase(ReplicaPhase.EXITED)
            ):
                self.tick()
                return ticks
        raise AssertionError("did not converge")


def running_live(cluster: Cluster) -> Cluster:
    cluster.controller.deploy(cluster.desired())
    cluster.converge()
    assert cluster.route().status is ApiStatus.LIVE
    return cluster


# ---- tests -------------------------------------------------------------------------------------------


def test_deploy_starts_replicas_then_routes_them_once_ready(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = Cluster()
    assert cluster.controller.deploy(cluster.desired()) == "created"
    assert cluster.store.apis[IRIS].revision == REV_A

    cluster.tick()
    assert [launch.api_name for launch in cluster.backend.launches] == [IRIS, IRIS]
    launch = cluster.backend.launches[0]
    assert launch.replica_id.startswith("iris-aaaaaa-") and len(launch.replica_id) == len("iris-aaaaaa-") + 6
    assert (launch.revision, launch.generation, launch.project_dir) == (
        REV_A,
        0,
        Path("/snapshots/aaaaaa111111"),
    )
    assert set(cluster.store.replicas) == {r.replica_id for r in cluster.backend.launches}
    assert cluster.route().replicas == ()
    assert cluster.route().status is ApiStatus.UPDATING

    cluster.backend.ready()
    cluster.tick()
    route = cluster.route()
    assert route.status is ApiStatus.LIVE
    assert (
        route.endpoint == "/iris" and route.max_replica_concurrency == 8 and route.unavailable_reason is None
    )
    assert [t.replica_id for t in route.replicas] == sorted(r.replica_id for r in cluster.backend.launches)
    assert {t.address for t in route.replicas} == {r.address for r in cluster.backend.replicas.values()}

    view = cluster.controller.api(IRIS)
    assert (view.status, view.requested, view.up_to_date, view.stale) == (ApiStatus.LIVE, 2, 2, 0)
    assert all(r.up_to_date and r.phase is ReplicaPhase.READY and r.restarts == 0 for r in view.replicas)
    assert "creating api iris (revision aaaaaa): 2 replicas" in caplog.messages
    assert "api iris is live" in caplog.messages

    tables = len(cluster.routes.tables)
    cluster.tick()
    assert len(cluster.routes.tables) == tables, "an unchanged table is not published again"


def test_redeploying_the_same_revision_is_unchanged() -> None:
    cluster = running_live(Cluster())
    launches = len(cluster.backend.launches)
    assert cluster.controller.deploy(cluster.desired()) == "unchanged"
    cluster.tick()
    assert len(cluster.backend.launches) == launches
    assert cluster.store.saves == 1


@pytest.mark.parametrize(
    ("replicas", "surge", "unavailable", "min_ready"),
    [(2, "25%", "25%", 2), (2, "0", "1", 1), (4, "25%", "25%", 3), (3, "1", "0", 3)],
)
def test_rolling_update_keeps_enough_replicas_routed(
    replicas: int, surge: str, unavailable: str, min_ready: int
) -> None:
    cluster = Cluster()
    spec = make_spec(replicas=replicas, surge=surge, unavailable=unavailable)
    cluster.controller.deploy(cluster.desired(spec))
    cluster.converge()
    old_ids = {r.replica_id for r in cluster.backend.live()}
    published_before = len(cluster.routes.tables)

    assert cluster.controller.deploy(cluster.desired(spec, revision=REV_B)) == "updated"
    max_live = replicas + spec.update_strategy.surge_for(replicas)
    for _ in range(40):
        cluster.tick()
        assert len(cluster.backend.live()) <= max_live
        cluster.backend.ready()
        cluster.backend.finish_draining()
    for table in cluster.routes.tables[published_before:]:
        assert len(table[IRIS].replicas) >= min_ready

    final = cluster.route()
    assert len(final.replicas) == replicas and {t.revision for t in final.replicas} == {REV_B}
    assert set(cluster.backend.terminated) == old_ids
    assert all(r.revision == REV_B for r in cluster.backend.replicas.values())
    view = cluster.controller.api(IRIS)
    assert (view.status, view.up_to_date, view.stale, view.revision) == (ApiStatus.LIVE, replicas, 0, REV_B)


def test_stale_replicas_are_counted_during_an_update(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = running_live(Cluster())
    oldest = min(cluster.backend.live(), key=lambda r: r.started_at)
    cluster.controller.deploy(cluster.desired(revision=REV_B))
    assert "updating api iris (revision aaaaaa -> bbbbbb): 2 replicas" in caplog.messages
    cluster.tick()  # surge: one new replica starting, the two old ones still serving
    view = cluster.controller.api(IRIS)
    assert (view.requested, view.up_to_date, view.stale) == (2, 0, 2)
    assert view.status is ApiStatus.UPDATING
    assert [r.up_to_date for r in view.replicas] == [False, False, True]
    new = cluster.backend.launches[-1].replica_id
    assert f"starting replica {new} of api iris (revision bbbbbb)" in caplog.messages

    cluster.backend.ready(new)
    cluster.tick()
    assert f"stopping replica {oldest.replica_id} of api iris (old revision)" in caplog.messages
    view = cluster.controller.api(IRIS)
    assert (view.up_to_date, view.stale) == (1, 1)


def test_a_crashed_ready_replica_is_replaced_after_the_base_delay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = running_live(Cluster())
    victim, survivor = sorted(cluster.backend.live(), key=lambda r: r.replica_id)
    launches = len(cluster.backend.launches)

    cluster.backend.exit(victim.replica_id, code=137)
    cluster.tick()
    assert cluster.backend.forgotten == [victim.replica_id]
    assert victim.replica_id not in cluster.store.replicas
    assert f"replica {victim.replica_id} of api iris exited with code 137" in caplog.messages
    assert [t.replica_id for t in cluster.route().replicas] == [survivor.replica_id]
    assert cluster.route().status is ApiStatus.LIVE  # one ready is still >= min_replicas
    assert len(cluster.backend.launches) == launches, "the first restart waits the base delay (1 s)"
    assert [r.restarts for r in cluster.controller.api(IRIS).replicas] == [1]

    cluster.clock.advance(1.0)
    cluster.tick()
    assert len(cluster.backend.launches) == launches + 1
    cluster.backend.ready()
    cluster.tick()
    assert len(cluster.route().replicas) == 2
    assert [r.restarts for r in cluster.controller.api(IRIS).replicas] == [0, 0]


def test_a_crash_loop_backs_off_and_puts_the_api_in_error() -> None:
    cluster = Cluster()
    cluster.controller.deploy(cluster.desired(make_spec(replicas=1)))
    cluster.tick()
    assert len(cluster.backend.launches) == 1

    for failures, delay in enumerate([1.0, 2.0, 4.0, 8.0, 16.0], start=1):
        cluster.backend.exit(cluster.backend.launches[-1].replica_id, code=3)
        cluster.tick()
        launches = len(cluster.backend.launches)
        cluster.clock.advance(delay - 0.01)
        cluster.tick()
        assert len(cluster.backend.launches) == launches, f"started before the {delay} s delay"
        if failures >= 3:
            reason = (
                f"the predictor failed to start (exit code 3) {failures} times: see `modelport logs iris`"
            )
            view = cluster.controller.api(IRIS)
            assert (view.status, view.reason) == (ApiStatus.ERROR, reason)
            assert (cluster.route().status, cluster.route().unavailable_reason) == (ApiStatus.ERROR, reason)
        else:
            assert cluster.route().status is ApiStatus.UPDATING
        cluster.clock.advance(0.01)
        cluster.tick()
        assert len(cluster.backend.launches) == launches + 1, f"not restarted after the {delay} s delay"

    # A new deploy is a new target: the streak and the delay start over.
    cluster.controller.deploy(cluster.desired(make_spec(replicas=1), revision=REV_B))
    cluster.tick()
    assert cluster.backend.launches[-1].revision == REV_B
    assert cluster.route().status is ApiStatus.UPDATING


def test_delete_removes_the_route_at_once_and_stops_every_replica() -> None:
    cluster = running_live(Cluster())
    ids = {r.replica_id for r in cluster.backend.live()}

    assert cluster.controller.delete(IRIS) is True
    assert IRIS not in cluster.routes.latest
    assert set(cluster.backend.terminated) == ids
    assert IRIS not in cluster.store.apis
    with pytest.raises(NotFoundError, match="api iris is not deployed"):
        cluster.controller.api(IRIS)
    assert cluster.controller.apis() == []
    assert cluster.controller.delete(IRIS) is False

    cluster.backend.finish_draining()
    cluster.tick()
    assert cluster.backend.replicas == {} and cluster.store.replicas == {}
    assert len(cluster.backend.launches) == 2


def test_refresh_replaces_every_replica_without_downtime() -> None:
    cluster = running_live(Cluster())
    old_ids = {r.replica_id for r in cluster.backend.live()}
    published_before = len(cluster.routes.tables)

    refreshed = cluster.controller.refresh(IRIS)
    assert (refreshed.generation, refreshed.revision) == (1, REV_A)
    assert cluster.store.apis[IRIS].generation == 1
    cluster.converge()

    assert all(len(t[IRIS].replicas) >= 2 for t in cluster.routes.tables[published_before:])
    assert set(cluster.backend.terminated) == old_ids
    assert {r.generation for r in cluster.backend.replicas.values()} == {1}
    assert not old_ids & set(cluster.backend.replicas)
    assert cluster.controller.api(IRIS).generation == 1
    with pytest.raises(NotFoundError):
        cluster.controller.refresh(ApiName("nope"))


def test_restore_loads_the_desired_state_and_forgets_vanished_replicas() -> None:
    first = Cluster()
    first.controller.deploy(first.desired())
    first.tick()
    assert len(first.store.replicas) == 2

    second = Cluster(store=first.store)  # a new daemon: same store, a backend that knows no replica
    second.controller.restore()
    assert second.store.replicas == {}
    assert [view.name for view in second.controller.apis()] == [IRIS]
    second.converge()
    assert second.route().status is ApiStatus.LIVE and len(second.route().replicas) == 2


def test_a_failing_poll_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    cluster = Cluster()
    cluster.backend.poll_error = RuntimeError("probe exploded")
    controller = cluster.controller_with(tick_seconds=0.001)
    controller.deploy(cluster.desired())

    async def scenario() -> None:
        stop, polled_thrice = asyncio.Event(), asyncio.Event()

        def count(polls: int) -> None:
            if polls >= 3:
                polled_thrice.set()

        cluster.backend.after_poll = count
        task = asyncio.create_task(controller.run(stop))
        await asyncio.wait_for(polled_thrice.wait(), timeout=5)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert len(cluster.backend.launches) == 2, "the other phases still ran"
    assert any("phase poll failed" in m for m in caplog.messages)


def test_one_api_failing_does_not_hold_back_the_others() -> None:
    cluster = Cluster()
    cluster.backend.compute_error_for = {"bad"}
    cluster.controller.deploy(cluster.desired(make_spec("bad")))
    cluster.controller.deploy(cluster.desired(make_spec("good")))
    cluster.tick()
    assert [launch.api_name for launch in cluster.backend.launches] == ["good", "good"]
    assert set(cluster.routes.latest) == {"bad", "good"}


def test_compute_unavailable_is_reported_until_the_replica_fits() -> None:
    cluster = Cluster()
    cluster.backend.verdict = ComputeVerdict(fits=False, missing="cpu: requested 4, 1.5 free")
    cluster.controller.deploy(cluster.desired())
    cluster.tick()
    assert cluster.backend.launches == []
    view = cluster.controller.api(IRIS)
    assert (view.status, view.reason) == (ApiStatus.COMPUTE_UNAVAILABLE, "cpu: requested 4, 1.5 free")
    assert cluster.route().status is ApiStatus.COMPUTE_UNAVAILABLE
    assert cluster.route().unavailable_reason == "cpu: requested 4, 1.5 free"

    cluster.backend.verdict = ComputeVerdict(fits=True)
    cluster.tick()
    assert len(cluster.backend.launches) == 2
    assert cluster.route().status is ApiStatus.UPDATING


def test_replicas_of_unknown_apis_are_stopped() -> None:
    cluster = running_live(Cluster())
    ghost = replace(
        cluster.backend.live()[0], replica_id=ReplicaId("ghost-123456-abcdef"), api_name=ApiName("ghost")
    )
    cluster.backend.replicas[ghost.replica_id] = ghost
    cluster.tick()
    assert cluster.backend.terminated == [ghost.replica_id]


def test_views_show_traffic_draining_and_every_log_file() -> None:
    cluster = running_live(Cluster())
    first, second = sorted(cluster.backend.live(), key=lambda r: r.started_at)
    cluster.traffic.counters[IRIS] = ApiTraffic(api_name=IRIS, status_2xx=5, in_flight={first.replica_id: 3})
    view = cluster.controller.api(IRIS)
    assert view.traffic.status_2xx == 5
    assert [(r.replica_id, r.in_flight) for r in view.replicas] == [
        (first.replica_id, 3),
        (second.replica_id, 0),
    ]
    assert view.replicas[0].pid == first.pid and view.replicas[0].log_path == first.log_path

    cluster.backend.exit(first.replica_id, code=1)
    cluster.tick()
    cluster.clock.advance(1.0)  # the restart backoff's base delay
    cluster.converge()
    paths = cluster.controller.log_paths(IRIS)
    assert len(paths) == 3 and first.log_path in paths

    cluster.controller.deploy(cluster.desired(revision=REV_B))
    cluster.tick()
    cluster.backend.ready()
    cluster.tick()  # the new replica is ready: one old one is being stopped
    phases = {r.replica_id: r.phase for r in cluster.controller.api(IRIS).replicas}
    assert ReplicaPhase.DRAINING in phases.values()
    with pytest.raises(NotFoundError):
        cluster.controller.log_paths(ApiName("nope"))


def test_shutdown_stops_every_replica_with_the_drain_grace() -> None:
    cluster = running_live(Cluster())
    asyncio.run(cluster.controller.shutdown())
    assert cluster.backend.shutdown_grace == 7.0
    assert all(r.phase is ReplicaPhase.EXITED for r in cluster.backend.replicas.values())


def test_a_deploy_wakes_the_running_loop_for_its_next_pass_at_once() -> None:
    cluster = Cluster()
    controller = cluster.controller_with(tick_seconds=3600.0)  # without the wake-up, no second pass

    async def scenario() -> int:
        stop = asyncio.Event()
        loop = asyncio.create_task(controller.run(stop))
        await asyncio.sleep(0)  # the first pass runs (nothing deployed yet), then the loop waits
        controller.deploy(cluster.desired())
        for _ in range(100):
            if cluster.backend.launches:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(loop, timeout=5)
        return len(cluster.backend.launches)

    assert asyncio.run(scenario()) == 2  # init_replicas started by the pass the deploy woke
