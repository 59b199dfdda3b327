"""Autoscaling through the reconcile loop (controller.loop + controller.scaling): in-flight sampled from the
gateway's counters, the autoscaler run on its interval, scale to zero and back, driven on a FakeClock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from modelport.controller.ports import ComputeVerdict, DesiredApi
from modelport.controller.scaling import MAX_EVENTS, AutoscalingEvent
from modelport.spec.model import ApiSpec
from modelport.types import ApiName, ApiRoute, ApiStatus, ReplicaPhase, Revision
from tests.unit.fakes import Fakes, MemoryStore

IRIS = ApiName("iris")
REV_A, REV_B = Revision("aaaaaa111111"), Revision("bbbbbb222222")
TICK = 0.125  # binary-exact, so a FakeClock moved in ticks lands on whole seconds


def make_spec(*, idempotent: bool = True, **autoscaling: Any) -> ApiSpec:
    fields: dict[str, Any] = {
        "min_replicas": 1,
        "window": "10s",
        "downscale_stabilization_period": "0s",
        "upscale_stabilization_period": "0s",
    }
    fields.update(autoscaling)
    return ApiSpec.model_validate(
        {
            "name": "iris",
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py", "idempotent": idempotent},
            "autoscaling": fields,
        }
    )


class Cluster(Fakes):
    """Replicas turn ready one tick after they start and draining ones exit, like a quick backend."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        super().__init__(store=store)
        self.controller = self.controller_with(autoscale_interval_seconds=10.0)
        self.started = self.clock.monotonic()

    def deploy(self, spec: ApiSpec, *, revision: Revision = REV_A) -> None:
        self.controller.deploy(
            DesiredApi(
                spec=spec,
                revision=revision,
                project_dir=Path(f"/snapshots/{revision}"),
                spec_path=Path(f"/snapshots/{revision}/spec.json"),
                deployed_at=self.clock.wall(),
            )
        )
        self.tick()

    def tick(self) -> None:
        asyncio.run(self.controller.tick())

    def run_until(self, seconds: float, *, step: float = 1.0) -> None:
        """Move to `seconds` after the cluster's start, a tick each `step`, replicas following at once."""
        while self.clock.monotonic() - self.started < seconds:
            self.clock.advance(step)
            self.backend.ready()
            self.backend.finish_draining()
            self.tick()

    @property
    def now(self) -> float:
        return self.clock.monotonic() - self.started

    @property
    def requested(self) -> int:
        return self.controller.api(IRIS).requested

    def route(self) -> ApiRoute:
        return self.routes.latest[IRIS]

    def serving(self) -> int:
        return len(self.route().replicas)

    def busy(self, in_flight: int) -> None:
        """`in_flight` requests on the API's first live replica (the autoscaler counts the sum)."""
        first = min(self.backend.live(), key=lambda r: r.started_at)
        self.traffic.load("iris", in_flight={first.replica_id: in_flight})


def test_sustained_demand_scales_up_after_the_upscale_stabilization(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = Cluster()
    cluster.deploy(make_spec(upscale_stabilization_period="30s", target_replica_concurrency=2.0))
    cluster.run_until(1)
    cluster.busy(8)  # raw 8 / 2 = 4 replicas; one step from 1 may go to 2
    cluster.run_until(29)
    assert (cluster.requested, len(cluster.backend.launches)) == (1, 1), "within the first 30 s after start"
    cluster.run_until(30)
    assert cluster.requested == 2 and len(cluster.backend.launches) == 2
    cluster.run_until(31)
    assert cluster.serving() == 2
    assert "api iris: autoscaling event: 1 -> 2 (in-flight 8.0, target 2)" in caplog.messages


def test_the_window_average_smooths_a_burst() -> None:
    cluster = Cluster()
    cluster.deploy(make_spec(window="10s"))
    cluster.run_until(100)
    cluster.busy(9)
    cluster.run_until(101)  # one sample of 9, nine of 0: avg 0.9, within one replica
    cluster.busy(0)
    cluster.run_until(110)
    assert cluster.requested == 1 and cluster.controller.api(IRIS).events == ()
    cluster.busy(3)
    cluster.run_until(120)  # ten samples of 3
    assert cluster.requested == 2


def test_in_flight_is_sampled_once_a_second_on_faster_ticks() -> None:
    cluster = Cluster()
    cluster.deploy(make_spec(init_replicas=2))
    cluster.busy(2)
    reads = cluster.traffic.reads
    cluster.run_until(4.5, step=TICK)
    cluster.busy(0)
    cluster.run_until(10, step=TICK)
    assert cluster.traffic.reads - reads == 10, "the counters are read only when a sample is due"
    # Samples at 1..10 s: 2, 2, 2, 2, then six 0s. Sampled on every tick, the window would hold only 0s.
    [event] = cluster.controller.api(IRIS).events
    assert (event.from_replicas, event.to_replicas, event.avg_in_flight) == (2, 1, 0.8)


def test_demand_gone_scales_down_after_the_downscale_stabilization() -> None:
    cluster = Cluster()
    cluster.deploy(make_spec(init_replicas=3, downscale_stabilization_period="60s"))
    cluster.run_until(59)
    assert cluster.requested == 3, "no downscale during the first period after start"
    cluster.run_until(60)
    assert cluster.requested == 2  # one step: max_downscale_factor 0.75 of 3, always -1
    cluster.run_until(61)
    assert cluster.serving() == 2 and len(cluster.backend.terminated) == 1
    cluster.run_until(129)
    assert cluster.requested == 2, "the recommendation of 2 at 60 s holds for the 60 s period"
    cluster.run_until(130)
    assert cluster.requested == 1


def test_no_traffic_scales_to_zero_and_the_gateway_holds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = Cluster()
    cluster.deploy(make_spec(min_replicas=0, init_replicas=1, downscale_stabilization_period="30s"))
    cluster.run_until(30)
    assert cluster.requested == 0
    cluster.run_until(31)
    assert cluster.backend.live() == [] and cluster.route().replicas == ()
    view = cluster.controller.api(IRIS)
    assert (view.status, view.reason) == (ApiStatus.SCALED_TO_ZERO, "the first request starts a replica")
    assert cluster.route().status is ApiStatus.SCALED_TO_ZERO and cluster.route().hold_when_empty
    assert "api iris: autoscaling event: 1 -> 0 (in-flight 0.0, target 1)" in caplog.messages
    assert "api iris is scaled to zero" in caplog.messages
    launches = len(cluster.backend.launches)
    cluster.run_until(100)
    assert len(cluster.backend.launches) == launches, "it stays at zero while nothing is held"


def test_held_requests_wake_an_api_at_zero_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = Cluster()
    cluster.deploy(make_spec(min_replicas=0, init_replicas=0, upscale_stabilization_period="60s"))
    assert cluster.backend.launches == [] and cluster.controller.api(IRIS).status is ApiStatus.SCALED_TO_ZERO
    cluster.run_until(5)

    cluster.traffic.load("iris", held=3)
    cluster.clock.advance(0.1)  # the very next pass, not the next autoscaler interval
    cluster.tick()
    assert cluster.requested == 1 and len(cluster.backend.launches) == 1
    view = cluster.controller.api(IRIS)
    assert view.status is ApiStatus.UPDATING
    assert view.reason == "0 of 1 replicas ready, 1 starting: `modelport logs iris` shows their progress"
    assert "api iris: 3 held requests wake it from zero" in caplog.messages
    [event] = view.events
    assert (event.at, event.from_replicas, event.to_replicas) == (cluster.clock.wall(), 0, 1)

    cluster.backend.ready()
    cluster.traffic.load("iris", held=0)
    cluster.tick()
    assert cluster.serving() == 1 and cluster.controller.api(IRIS).status is ApiStatus.LIVE


def test_events_keep_the_last_twenty_with_their_wall_time() -> None:
    cluster = Cluster()
    cluster.deploy(make_spec(target_replica_concurrency=1.0))
    for period in range(MAX_EVENTS + 5):
        # Alternate 10 s of load (1 -> 2) and 10 s of none (2 -> 1): every run changes the count.
        if period % 2 == 0:
            cluster.busy(8)
        else:
            cluster.traffic.load("iris")
        cluster.run_until(10 * (period + 1))
    events = cluster.controller.api(IRIS).events
    assert len(events) == MAX_EVENTS
    wall_start = cluster.clock.wall() - cluster.now
    assert events[0] == AutoscalingEvent(
        at=wall_start + 60, from_replicas=2, to_replicas=1, avg_in_flight=0.0, target=1.0
    )
    assert events[-1] == AutoscalingEvent(
        at=wall_start + 250, from_replicas=1, to_replicas=2, avg_in_flight=8.0, target=1.0
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (make_spec(), (True, False, 0, 0.0)),
        (make_spec(idempotent=False), (False, False, 0, 0.0)),
        (
            make_spec(min_replicas=0, activation_queue_limit=7, activation_timeout="5s"),
            (True, True, 7, 5.0),
        ),
    ],
    ids=["defaults", "not idempotent", "scale to zero"],
)
def test_routes_carry_the_retry_flag_and_the_hold_settings(
    spec: ApiSpec, expected: tuple[bool, bool, int, float]
) -> None:
    cluster = Cluster()
    cluster.deploy(spec)
    route = cluster.route()
    assert (
        route.retry_on_failure,
        route.hold_when_empty,
        route.hold_queue_limit,
        route.hold_timeout_seconds,
    ) == expected


def test_a_crash_looping_api_keeps_its_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelport.controller")
    cluster = Cluster()
    cluster.deploy(make_spec())
    cluster.traffic.load("iris", in_flight={"gone": 6})
    cluster.backend.exit(cluster.backend.launches[0].replica_id, code=3)  # dies before it is ready
    for _ in range(40):
        cluster.clock.advance(1.0)
        cluster.tick()  # replicas never turn ready: each start exits again
        for replica in cluster.backend.in_phase(ReplicaPhase.STARTING):
            cluster.backend.exit(replica.replica_id, code=3)
    assert cluster.requested == 1
    assert cluster.controller.api(IRIS).status is ApiStatus.ERROR
    assert "api iris: autoscaling keeps 1 replicas: its replicas fail to start" in caplog.messages

    # A replica that works ends the streak: the autoscaler acts on the demand again.
    cluster.clock.advance(60.0)
    cluster.tick()
    cluster.run_until(cluster.now + 11)
    assert cluster.requested == 2 and "api iris: autoscaling resumes" in caplog.messages


def test_an_api_that_does_not_fit_keeps_its_count() -> None:
    cluster = Cluster()
    cluster.backend.verdict = ComputeVerdict(fits=False, missing="cpu: requested 4, 1.5 free")
    cluster.deploy(make_spec())
    cluster.traffic.load("iris", in_flight={"elsewhere": 6})
    cluster.run_until(30)
    view = cluster.controller.api(IRIS)
    assert (view.status, view.requested, cluster.backend.launches) == (ApiStatus.COMPUTE_UNAVAILABLE, 1, [])


def test_an_update_keeps_the_scaled_count_and_a_restart_starts_at_init() -> None:
    cluster = Cluster()
    cluster.deploy(make_spec())
    cluster.busy(3)
    cluster.run_until(10)
    assert cluster.requested == 2
    cluster.deploy(make_spec(max_replicas=5), revision=REV_B)
    assert cluster.requested == 2, "a redeploy under load does not shrink the API"

    restarted = Cluster(store=cluster.store)
    restarted.controller.restore()
    assert restarted.requested == 1, "nothing of the autoscaler is persisted: init_replicas again"

    cluster.deploy(make_spec(min_replicas=3), revision=Revision("cccccc333333"))
    assert cluster.requested == 3, "a kept count moves into the new [min, max]"


def test_the_event_line_reads_as_cortex_logs_it() -> None:
    event = AutoscalingEvent(at=0.0, from_replicas=1, to_replicas=3, avg_in_flight=5.8, target=2.0)
    assert event.describe() == "autoscaling event: 1 -> 3 (in-flight 5.8, target 2)"
    assert (
        AutoscalingEvent(0.0, 2, 1, 0.04, 1.6).describe()
        == "autoscaling event: 2 -> 1 (in-flight 0.0, target 1.6)"
    )
