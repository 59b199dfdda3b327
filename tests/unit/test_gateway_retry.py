"""The retry policy (gateway.retry): when a failed request may be sent again and where, and the 502 text."""

from __future__ import annotations

import pytest

from modelport.gateway.retry import MAX_SENDS, FailedAttempt, Next, after_failure, failure_message
from modelport.gateway.upstream import FailureStage, UpstreamError
from modelport.types import ApiName, ReplicaId

CONNECT, SEND, AWAIT, RESPONSE = (
    FailureStage.CONNECT,
    FailureStage.SEND,
    FailureStage.AWAIT,
    FailureStage.RESPONSE,
)


@pytest.mark.parametrize(
    ("stage", "sends", "retry_on_failure", "expected"),
    [
        # Nothing sent: another replica, whatever the API allows.
        (CONNECT, 0, False, Next.OTHER_REPLICA),
        (CONNECT, 1, True, Next.OTHER_REPLICA),
        # The write failed: the replica never had the request; a new connection to it, retrying on or off.
        (SEND, 1, False, Next.SAME_REPLICA),
        # Written, unanswered: the one retry, elsewhere, only where the API allows it.
        (AWAIT, 1, True, Next.OTHER_REPLICA),
        (AWAIT, 1, False, Next.GIVE_UP),
        # Never more than two writes of one request, whatever failed.
        (AWAIT, MAX_SENDS, True, Next.GIVE_UP),
        (SEND, MAX_SENDS, True, Next.GIVE_UP),
        (CONNECT, MAX_SENDS, True, Next.GIVE_UP),
        # Part of a response arrived: the replica acted on it.
        (RESPONSE, 1, True, Next.GIVE_UP),
    ],
)
def test_after_failure(stage: FailureStage, sends: int, retry_on_failure: bool, expected: Next) -> None:
    decision = after_failure(stage, sends=sends, retry_on_failure=retry_on_failure)
    assert decision.next is expected
    assert bool(decision.why_not) == (expected is Next.GIVE_UP)


def test_no_sequence_of_failures_sends_a_request_more_than_twice() -> None:
    """Walk every chain of up to 8 failed attempts the policy allows (failed connects write nothing, and the
    gateway never tries a replica twice, which bounds them in practice); count the writes."""

    def most_writes(sends: int, depth: int, retry_on_failure: bool) -> int:
        most = sends
        for stage in FailureStage:
            written = sends if stage is CONNECT else sends + 1
            most = max(most, written)
            decision = after_failure(stage, sends=written, retry_on_failure=retry_on_failure)
            if depth and decision.next is not Next.GIVE_UP:
                most = max(most, most_writes(written, depth - 1, retry_on_failure))
        return most

    assert most_writes(0, 8, retry_on_failure=True) == MAX_SENDS == 2
    assert most_writes(0, 8, retry_on_failure=False) == 2  # a failed write, then one on a new connection


def attempt(replica: str, reason: str, stage: FailureStage = AWAIT) -> FailedAttempt:
    return FailedAttempt(replica=ReplicaId(replica), failure=UpstreamError(reason, stage=stage))


def test_the_message_leads_with_the_first_failure_and_says_how_it_was_retried() -> None:
    api = ApiName("iris")
    closed = "closed the connection before answering"
    assert failure_message(api, [attempt("a", closed)], why_not="retrying is off") == (
        "replica a of api iris closed the connection before answering; not retried: retrying is off"
    )
    attempts = [
        attempt(
            "a", "dropped the connection (connection reset by peer) before the whole request was sent", SEND
        ),
        attempt("a", "could not be reached at 127.0.0.1:1 (connection refused)", CONNECT),
        attempt("b", closed),
    ]
    assert failure_message(api, attempts, why_not="no other replica is available") == (
        "replica a of api iris dropped the connection (connection reset by peer) before the whole request "
        "was sent; retried on a new connection to replica a, which could not be reached at 127.0.0.1:1 "
        "(connection refused); retried on replica b, which closed the connection before answering; "
        "not retried again: no other replica is available"
    )
