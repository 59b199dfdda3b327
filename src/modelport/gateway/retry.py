"""The retry policy: after a failed exchange with a replica, whether the request may be sent again, and where.

Pure functions called by gateway.app.Gateway on the failure path of every forwarded request, and the text of
the 502 that tells the client what happened when it gives up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from modelport.gateway.upstream import FailureStage, UpstreamError
from modelport.types import ApiName, ReplicaId

# A request's bytes are written to replicas at most this many times, whatever fails: a payload that kills its
# replica must not take down more than two of them.
MAX_SENDS = 2


class Next(StrEnum):
    SAME_REPLICA = "same replica"  # on a new connection: the failed one proved the request never arrived
    OTHER_REPLICA = "other replica"  # one not tried yet for this request
    GIVE_UP = "give up"  # answer 502


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    why_not: str = ""  # with GIVE_UP: why the request is not sent again, for the 502


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    replica: ReplicaId
    failure: UpstreamError


_SAME_REPLICA = Decision(Next.SAME_REPLICA)
_OTHER_REPLICA = Decision(Next.OTHER_REPLICA)
_MID_RESPONSE = Decision(Next.GIVE_UP, "the replica may have acted on the request")
_BUDGET_SPENT = Decision(Next.GIVE_UP, f"a request is sent to replicas at most {MAX_SENDS} times")
_RETRY_OFF = Decision(
    Next.GIVE_UP, "the replica may have processed it and retry_on_failure is off for this api"
)
NO_OTHER_REPLICA = "no other replica is available"


def after_failure(stage: FailureStage, *, sends: int, retry_on_failure: bool) -> Decision:
    """What to do after an exchange failed at `stage`; `sends` counts the writes of this request so far,
    the failed one included (a failed connect wrote nothing)."""
    if stage is FailureStage.RESPONSE:
        return _MID_RESPONSE
    if sends >= MAX_SENDS:
        return _BUDGET_SPENT
    if stage is FailureStage.CONNECT:
        # Nothing was sent: any other replica may have it, even for an API whose requests are not idempotent
        # (as nginx's proxy_next_upstream does).
        return _OTHER_REPLICA
    if stage is FailureStage.SEND:
        # Most likely a pooled keep-alive connection the replica had just closed; the replica itself may be
        # fine. A new connection shows which: if the replica is gone, its connect fails and another is tried.
        return _SAME_REPLICA
    # Written and unanswered: the replica may have run the request (or died of it). This is the one retry,
    # and never on the same replica.
    return _OTHER_REPLICA if retry_on_failure else _RETRY_OFF


def failure_message(api: ApiName, attempts: Sequence[FailedAttempt], *, why_not: str) -> str:
    """The 502 text: the first failure (the one that matters to the client), then each retry and why it
    stopped there. `attempts` is in order and never empty."""
    first = attempts[0]
    text = f"replica {first.replica} of api {api} {first.failure.reason}"
    previous = first.replica
    for attempt in attempts[1:]:
        where = (
            f"a new connection to replica {attempt.replica}"
            if attempt.replica == previous
            else (f"replica {attempt.replica}")
        )
        text += f"; retried on {where}, which {attempt.failure.reason}"
        previous = attempt.replica
    return f"{text}; {'not retried again' if len(attempts) > 1 else 'not retried'}: {why_not}"
