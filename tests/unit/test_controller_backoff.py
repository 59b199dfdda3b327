"""Restart backoff (controller.backoff): delays, resets and the crash-loop threshold, on a FakeClock."""

from __future__ import annotations

import pytest

from modelport.clock import FakeClock
from modelport.controller.backoff import (
    BackoffPolicy,
    RestartBackoff,
    is_crash_looping,
    may_start,
    next_start_at,
    record_failure,
    record_ready,
)

POLICY = BackoffPolicy()


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0), (7, 60.0), (8, 60.0), (10_000, 60.0)],
)
def test_delay_doubles_from_base_up_to_cap(failures: int, delay: float) -> None:
    assert POLICY.delay(failures) == delay


def test_custom_policy() -> None:
    policy = BackoffPolicy(base_seconds=0.5, cap_seconds=3.0)
    assert [policy.delay(k) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_fresh_target_may_start_at_once() -> None:
    assert next_start_at(RestartBackoff(), POLICY) is None
    assert may_start(RestartBackoff(), POLICY, now=0.0)


def test_starts_wait_out_the_growing_delay() -> None:
    clock = FakeClock()
    state = RestartBackoff()
    for expected_delay in (1.0, 2.0, 4.0, 8.0):
        state = record_failure(state, now=clock.monotonic(), exit_code=3, was_ready=False)
        assert next_start_at(state, POLICY) == clock.monotonic() + expected_delay
        clock.advance(expected_delay - 0.01)
        assert not may_start(state, POLICY, now=clock.monotonic())
        clock.advance(0.01)
        assert may_start(state, POLICY, now=clock.monotonic())


def test_crash_loop_after_threshold_of_never_ready_failures() -> None:
    state = RestartBackoff()
    for _ in range(2):
        state = record_failure(state, now=0.0, exit_code=3, was_ready=False)
        assert not is_crash_looping(state, POLICY)
    state = record_failure(state, now=0.0, exit_code=3, was_ready=False)
    assert is_crash_looping(state, POLICY)
    assert (state.failures, state.never_ready_failures, state.last_exit_code) == (3, 3, 3)


def test_crashes_after_readiness_delay_restarts_but_are_not_a_crash_loop() -> None:
    state = RestartBackoff()
    for _ in range(5):
        state = record_failure(state, now=0.0, exit_code=137, was_ready=True)
    assert state.failures == 5
    assert POLICY.delay(state.failures) == 16.0
    assert not is_crash_looping(state, POLICY)


def test_readiness_resets_the_streak() -> None:
    state = RestartBackoff()
    for _ in range(3):
        state = record_failure(state, now=5.0, exit_code=3, was_ready=False)
    state = record_ready(state)
    assert (state.failures, state.never_ready_failures) == (0, 0)
    assert not is_crash_looping(state, POLICY)
    assert may_start(state, POLICY, now=5.0)
    # The next failure starts the count again from the base delay.
    state = record_failure(state, now=10.0, exit_code=1, was_ready=True)
    assert next_start_at(state, POLICY) == 11.0
