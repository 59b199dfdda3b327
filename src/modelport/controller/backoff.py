"""Restart backoff for crashed replicas: a pure policy over explicit state and an injected `now`.

Owns the consecutive-failure count of one API's current target and the delay it imposes before the next
start. Called by controller.loop (counting exits, gating launches) and controller.status (crash loops).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Delay before the next start = min(base * 2**(k-1), cap) after k consecutive failures."""

    base_seconds: float = 1.0
    cap_seconds: float = 60.0
    # This many consecutive failures of replicas that never became ready put the API in error. The
    # controller keeps retrying at the capped delay: a fix elsewhere (a file, a dependency) may heal it.
    error_threshold: int = 3

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # Cap the exponent too: 2**k overflows float arithmetic long before k stops growing.
        exponent = min(failures - 1, 62)
        return min(self.base_seconds * 2.0**exponent, self.cap_seconds)


@dataclass(frozen=True, slots=True)
class RestartBackoff:
    """Consecutive failures of one target (api, revision, generation) since a replica of it became ready."""

    failures: int = 0
    # Failures of replicas that never answered /readyz: these, not crashes under load, make a crash loop.
    never_ready_failures: int = 0
    last_failure_at: float | None = None  # monotonic seconds
    last_exit_code: int | None = None


def record_failure(
    state: RestartBackoff, *, now: float, exit_code: int | None, was_ready: bool
) -> RestartBackoff:
    """A replica of the target exited without the controller asking."""
    return RestartBackoff(
        failures=state.failures + 1,
        never_ready_failures=state.never_ready_failures + (0 if was_ready else 1),
        last_failure_at=now,
        last_exit_code=exit_code,
    )


def record_ready(state: RestartBackoff) -> RestartBackoff:
    """A replica of the target became ready: the predictor works, so the streak is over."""
    # The last exit code stays: it still explains the replica that crashed, for the logs.
    return replace(state, failures=0, never_ready_failures=0, last_failure_at=None)


def next_start_at(state: RestartBackoff, policy: BackoffPolicy) -> float | None:
    """The monotonic time from which a new replica may start; None when nothing holds it back."""
    if state.last_failure_at is None or state.failures == 0:
        return None
    return state.last_failure_at + policy.delay(state.failures)


def may_start(state: RestartBackoff, policy: BackoffPolicy, *, now: float) -> bool:
    start_at = next_start_at(state, policy)
    return start_at is None or now >= start_at


def is_crash_looping(state: RestartBackoff, policy: BackoffPolicy) -> bool:
    return state.never_ready_failures >= policy.error_threshold
