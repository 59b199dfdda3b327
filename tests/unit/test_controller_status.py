"""Status derivation (controller.status): Cortex's order of checks over observed replicas."""

from __future__ import annotations

import pytest

from modelport.controller.backoff import BackoffPolicy, RestartBackoff, record_failure
from modelport.controller.plan import Target
from modelport.controller.ports import ComputeVerdict
from modelport.controller.status import ReplicaCounts, StatusReport, count_replicas, derive_status
from modelport.types import ApiName, ApiStatus, ReplicaPhase, Revision
from tests.unit.fakes import observed_replica

TARGET = Target(Revision("new"), 0)
POLICY = BackoffPolicy()
NO_FIT = ComputeVerdict(fits=False, missing="cpu: requested 4, 1.5 free")


def crashed(times: int, *, exit_code: int = 3) -> RestartBackoff:
    state = RestartBackoff()
    for _ in range(times):
        state = record_failure(state, now=0.0, exit_code=exit_code, was_ready=False)
    return state


def counts(requested: int, up_to_date: int, *, current_live: int | None = None) -> ReplicaCounts:
    live = up_to_date if current_live is None else current_live
    return ReplicaCounts(requested=requested, up_to_date=up_to_date, stale=0, current_live=live)


def updating(ready: int, requested: int, starting: int) -> StatusReport:
    return StatusReport(
        ApiStatus.UPDATING,
        f"{ready} of {requested} replicas ready, {starting} starting: "
        "`modelport logs iris` shows their progress",
    )


LIVE = StatusReport(ApiStatus.LIVE)
SCALED_TO_ZERO = StatusReport(ApiStatus.SCALED_TO_ZERO, "the first request starts a replica")
NO_COMPUTE = StatusReport(ApiStatus.COMPUTE_UNAVAILABLE, "cpu: requested 4, 1.5 free")
CRASH_REASON = "the predictor failed to start (exit code 3) 3 times: see `modelport logs iris`"

CASES = [
    ("all requested ready", counts(2, 2), 1, RestartBackoff(), None, StatusReport(ApiStatus.LIVE)),
    ("live beats a crash streak", counts(2, 2), 1, crashed(3), NO_FIT, StatusReport(ApiStatus.LIVE)),
    ("crash loop", counts(2, 0), 1, crashed(3), None, StatusReport(ApiStatus.ERROR, CRASH_REASON)),
    (
        "crash loop beats compute",
        counts(2, 0),
        1,
        crashed(3),
        NO_FIT,
        StatusReport(ApiStatus.ERROR, CRASH_REASON),
    ),
    ("below the threshold", counts(2, 0), 1, crashed(2), None, updating(0, 2, 0)),
    ("crashing with one ready", counts(2, 1), 1, crashed(4), None, StatusReport(ApiStatus.LIVE)),
    (
        "compute unavailable",
        counts(2, 0),
        1,
        RestartBackoff(),
        NO_FIT,
        StatusReport(ApiStatus.COMPUTE_UNAVAILABLE, "cpu: requested 4, 1.5 free"),
    ),
    (
        "compute short but one is starting",
        counts(2, 0, current_live=1),
        1,
        RestartBackoff(),
        NO_FIT,
        updating(0, 2, 1),
    ),
    ("at least min_replicas ready", counts(3, 1), 1, RestartBackoff(), None, StatusReport(ApiStatus.LIVE)),
    ("below min_replicas", counts(3, 1), 2, RestartBackoff(), None, updating(1, 3, 0)),
    (
        "nothing ready yet",
        counts(2, 0, current_live=2),
        1,
        RestartBackoff(),
        None,
        updating(0, 2, 2),
    ),
    ("scaled to zero", counts(0, 0), 0, RestartBackoff(), None, SCALED_TO_ZERO),
    ("at zero an old crash streak is moot", counts(0, 0), 0, crashed(3), NO_FIT, SCALED_TO_ZERO),
    ("waking from zero", counts(1, 0, current_live=1), 0, RestartBackoff(), None, updating(0, 1, 1)),
    ("waking without compute", counts(1, 0), 0, RestartBackoff(), NO_FIT, NO_COMPUTE),
    ("min 0: one ready is live while more start", counts(3, 1), 0, RestartBackoff(), None, LIVE),
]


@pytest.mark.parametrize(
    ("case", "replica_counts", "min_replicas", "backoff", "compute", "expected"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_derive_status(
    case: str,
    replica_counts: ReplicaCounts,
    min_replicas: int,
    backoff: RestartBackoff,
    compute: ComputeVerdict | None,
    expected: StatusReport,
) -> None:
    report = derive_status(
        replica_counts,
        api_name=ApiName("iris"),
        min_replicas=min_replicas,
        backoff=backoff,
        policy=POLICY,
        compute=compute,
    )
    assert report == expected


def test_crash_reason_names_the_last_exit_code() -> None:
    state = record_failure(crashed(3), now=0.0, exit_code=1, was_ready=False)
    report = derive_status(
        counts(1, 0), api_name=ApiName("iris"), min_replicas=1, backoff=state, policy=POLICY, compute=None
    )
    assert report.reason == "the predictor failed to start (exit code 1) 4 times: see `modelport logs iris`"


def test_count_replicas() -> None:
    observed = [
        observed_replica("a", ReplicaPhase.READY),
        observed_replica("b", ReplicaPhase.STARTING),
        observed_replica("c", ReplicaPhase.DRAINING),
        observed_replica("d", ReplicaPhase.READY, rev="old"),
        observed_replica("e", ReplicaPhase.READY, gen=1),  # another generation is stale too
        observed_replica("f", ReplicaPhase.STARTING, rev="old"),
        observed_replica("g", ReplicaPhase.EXITED),
    ]
    assert count_replicas(observed, target=TARGET, requested=3) == ReplicaCounts(
        requested=3, up_to_date=1, stale=2, current_live=2
    )


def test_a_rolling_update_says_the_previous_revision_serves() -> None:
    during = ReplicaCounts(requested=2, up_to_date=1, stale=1, current_live=2)
    report = derive_status(
        during,
        api_name=ApiName("iris"),
        min_replicas=2,
        backoff=RestartBackoff(),
        policy=POLICY,
        compute=None,
    )
    assert report.status is ApiStatus.UPDATING
    assert report.reason is not None
    assert (
        "1 of 2 replicas ready, 1 starting; the previous revision serves meanwhile (1 ready" in report.reason
    )

    broken = ReplicaCounts(requested=2, up_to_date=0, stale=2, current_live=0)
    report = derive_status(
        broken, api_name=ApiName("iris"), min_replicas=2, backoff=crashed(3), policy=POLICY, compute=None
    )
    assert report == StatusReport(
        ApiStatus.ERROR, CRASH_REASON + "; the previous revision still serves (2 ready replicas)"
    )
