"""Unit tests of controller.leader (LeaderElector) on the rendered Lease, through backends/kube_lease.py and
the Kubernetes backend against FakeKubeApi (no API server can run here), on a FakeClock: acquiring a free
Lease, renewing it, standing by, taking over an expired one, stepping down, two candidates racing, releasing.
"""

from __future__ import annotations

import logging

import pytest

from modelport.backends.kube_lease import KubeLeaseStore, lease_record
from modelport.backends.kubernetes import Kind, KubeApiError, KubernetesBackend
from modelport.cluster.kube_cluster import kube_layout
from modelport.controller.kube_ports import LeaseRecord
from modelport.controller.leader import LeaderElector, LeaseTimings
from modelport.errors import ConflictError, NotFoundError
from modelport.manifests import RenderOptions, render_cluster
from tests.unit.fake_kube import FakeKubeApi

NS = "mp"
LEASE = "modelport-controller"
TIMINGS = LeaseTimings()  # 15 s lease, 10 s renew deadline, a try every 2 s


@pytest.fixture
def fake() -> FakeKubeApi:
    fake = FakeKubeApi(namespaces=(NS,))
    backend = KubernetesBackend(fake, namespace=NS, context=None, layout=kube_layout(), clock=fake.clock)
    backend.apply_objects(render_cluster(RenderOptions(namespace=NS, image="registry.example.com/iris:1")))
    return fake


def candidate(fake: FakeKubeApi, identity: str) -> LeaderElector:
    backend = KubernetesBackend(fake, namespace=NS, context=None, layout=kube_layout(), clock=fake.clock)
    store = KubeLeaseStore(backend, name=LEASE, namespace=NS)
    return LeaderElector(store, identity=identity, clock=fake.clock, timings=TIMINGS)


def stored(fake: FakeKubeApi) -> LeaseRecord:
    return lease_record(fake.stored(Kind.LEASE, LEASE, namespace=NS))


def test_a_free_lease_is_taken_at_once_and_renewed_every_retry(fake: FakeKubeApi) -> None:
    a = candidate(fake, "controller-a")
    assert a.tick() is True
    lease = stored(fake)
    assert (lease.holder, lease.duration_seconds, lease.transitions) == ("controller-a", 15.0, 1)
    assert lease.acquired_at == lease.renewed_at == pytest.approx(fake.clock.wall(), abs=1e-5)
    spec = fake.stored(Kind.LEASE, LEASE, namespace=NS)["spec"]
    assert spec["renewTime"].endswith("Z") and "." in spec["renewTime"]  # MicroTime
    # The rendered labels survive the controller's updates.
    assert fake.stored(Kind.LEASE, LEASE, namespace=NS)["metadata"]["labels"]["app.kubernetes.io/name"]

    writes = sum(1 for call in fake.calls if call.method == "replace")
    fake.clock.advance(1.0)
    assert a.tick() is True  # no try due yet: no call
    assert sum(1 for call in fake.calls if call.method == "replace") == writes
    fake.clock.advance(1.0)
    assert a.tick() is True
    renewed = stored(fake)
    assert lease.renewed_at is not None
    assert renewed.renewed_at == pytest.approx(lease.renewed_at + 2.0, abs=1e-5)
    assert renewed.acquired_at == lease.acquired_at and renewed.transitions == 1


def test_still_leading_tells_a_pass_whether_its_last_renewal_is_recent_enough(fake: FakeKubeApi) -> None:
    a = candidate(fake, "controller-a")
    assert a.still_leading() is False
    assert a.tick() is True and a.still_leading() is True
    fake.clock.advance(9.9)
    assert a.still_leading() is True
    fake.clock.advance(0.1)
    assert a.still_leading() is False  # 10 s since the renewal: another candidate may soon take over
    assert a.is_leader is True  # until the next tick() decides


def test_a_second_candidate_stands_by_while_the_leader_renews(fake: FakeKubeApi) -> None:
    a, b = candidate(fake, "controller-a"), candidate(fake, "controller-b")
    assert a.tick() is True
    for _ in range(20):  # 40 s: far past one lease, but renewed all along
        assert b.tick() is False
        fake.clock.advance(2.0)
        assert a.tick() is True
    assert b.holder == "controller-a"
    assert stored(fake).holder == "controller-a"


def test_the_standby_takes_over_once_the_lease_expires_as_it_observed_it(fake: FakeKubeApi) -> None:
    a, b = candidate(fake, "controller-a"), candidate(fake, "controller-b")
    assert a.tick() is True
    assert b.tick() is False  # b sees a's Lease now: expiry counts from here, whatever renewTime says
    fake.clock.advance(14.0)  # a is gone (no more renewals)
    assert b.tick() is False  # 14 s after b first saw it: not expired yet
    fake.clock.advance(1.0)
    assert b.tick() is False  # expired now, but b's next try is 2 s after its last one
    fake.clock.advance(1.0)
    assert b.tick() is True
    lease = stored(fake)
    assert (lease.holder, lease.transitions) == ("controller-b", 2)
    # a comes back (it was paused, say): it sees b's fresh Lease and stands by instead of fighting.
    assert a.tick() is False
    assert stored(fake).holder == "controller-b"


def test_a_leader_that_cannot_renew_stops_before_anyone_may_take_over(fake: FakeKubeApi) -> None:
    a = candidate(fake, "controller-a")
    assert a.tick() is True
    unreachable = KubeApiError(status=None, reason="Unreachable", message="https://k8s: connection refused")
    for _ in range(4):  # 8 s of failed renewals: still within the renew deadline
        fake.clock.advance(2.0)
        fake.fail_next("get", unreachable)
        assert a.tick() is True
    fake.clock.advance(2.0)
    fake.fail_next("get", unreachable)
    assert a.tick() is False  # 10 s without a renewal: it stops, 5 s before its Lease expires for others
    fake.clock.advance(2.0)
    assert a.tick() is True  # the API server answers again and nobody took the Lease: a leads again


def test_two_candidates_racing_for_a_free_lease_never_both_win(fake: FakeKubeApi) -> None:
    backend = KubernetesBackend(fake, namespace=NS, context=None, layout=kube_layout(), clock=fake.clock)
    slow = KubeLeaseStore(backend, name=LEASE, namespace=NS)
    seen = slow.read()  # a reads the free Lease ...
    b = candidate(fake, "controller-b")
    assert b.tick() is True  # ... b takes it in between ...
    with pytest.raises(ConflictError, match="another client changed it"):  # ... a's write is refused
        slow.write(
            LeaseRecord(
                holder="controller-a",
                duration_seconds=15,
                acquired_at=None,
                renewed_at=None,
                transitions=1,
                version=seen.version,
            )
        )
    assert stored(fake).holder == "controller-b"


def test_a_conflicting_write_leaves_the_candidate_standing_by(fake: FakeKubeApi) -> None:
    a = candidate(fake, "controller-a")
    fake.fail_next(
        "replace", KubeApiError(status=409, reason="Conflict", message="the object has been modified")
    )
    assert a.tick() is False
    fake.clock.advance(2.0)
    assert a.tick() is True


def test_release_lets_the_standby_take_over_at_once(fake: FakeKubeApi) -> None:
    a, b = candidate(fake, "controller-a"), candidate(fake, "controller-b")
    assert a.tick() is True
    assert b.tick() is False
    a.release()
    assert a.is_leader is False
    released = stored(fake)
    assert (released.holder, released.duration_seconds) == (None, 1.0)
    fake.clock.advance(2.0)
    assert b.tick() is True
    assert (stored(fake).holder, stored(fake).transitions) == ("controller-b", 2)
    a.release()  # not leading: writes nothing
    assert stored(fake).holder == "controller-b"


def test_a_restarted_container_with_the_same_pod_name_resumes_at_once(fake: FakeKubeApi) -> None:
    assert candidate(fake, "controller-a").tick() is True
    fake.clock.advance(3.0)
    again = candidate(fake, "controller-a")  # the kubelet restarted the container: same pod, same name
    assert again.tick() is True
    assert stored(fake).transitions == 1


def test_a_missing_lease_is_reported_with_the_fix(
    fake: FakeKubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    del fake.objects[(Kind.LEASE, NS, LEASE)]
    a = candidate(fake, "controller-a")
    with caplog.at_level(logging.WARNING, logger="modelport.controller.leader"):
        assert a.tick() is False
        fake.clock.advance(2.0)
        assert a.tick() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # said once, not every try
    assert "Lease 'modelport-controller' does not exist" in warnings[0]
    assert "modelport deploy --env ENV" in warnings[0]
    backend = KubernetesBackend(fake, namespace=NS, context=None, layout=kube_layout(), clock=fake.clock)
    with pytest.raises(NotFoundError):
        KubeLeaseStore(backend, name=LEASE, namespace=NS).read()


def test_the_fake_refuses_an_update_over_a_stale_version(fake: FakeKubeApi) -> None:
    lease = fake.stored(Kind.LEASE, LEASE, namespace=NS)
    old = {**lease, "metadata": {**lease["metadata"]}}
    assert fake.replace(dict(lease))["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
    with pytest.raises(KubeApiError) as caught:
        fake.replace(old)
    assert (caught.value.status, caught.value.reason) == (409, "Conflict")


@pytest.mark.parametrize(
    ("lease", "deadline", "retry"), [(15, 15, 2), (15, 10, 10), (10, 12, 2), (15, 10, 0)]
)
def test_timings_must_leave_the_leader_time_to_stop(lease: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry_seconds < renew_deadline_seconds < lease_seconds"):
        LeaseTimings(lease_seconds=lease, renew_deadline_seconds=deadline, retry_seconds=retry)
