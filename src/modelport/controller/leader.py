"""Leader election on one Lease: at most one in-cluster controller of a namespace acts at a time.

Owned by controller/kube_loop.py, which calls `tick()` at the start of every pass and `release()` on shutdown;
the Lease itself is behind controller/kube_ports.py's `LeaseStore`. The algorithm is client-go's
leaderelection: a candidate takes the Lease when nobody holds it or when its holder has not renewed it for
`lease_seconds` *as this candidate observed* (its own monotonic clock, never the other pod's timestamps, so
clock skew between nodes does not matter); the leader renews every `retry_seconds` and stops acting once it
could not renew for `renew_deadline_seconds` (shorter than the lease, so it stops before anyone else may
start). Every write is conditional on the Lease's resourceVersion: two candidates never both win.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from modelport.clock import Clock
from modelport.controller.kube_ports import LeaseRecord, LeaseStore
from modelport.errors import ConflictError, NotFoundError

RELEASED_LEASE_SECONDS = 1.0  # what a released Lease says (client-go's ReleaseOnCancel)


@dataclass(frozen=True, kw_only=True)
class LeaseTimings:
    """client-go's defaults: a 15 s lease, renewed every 2 s, given up after 10 s without a renewal."""

    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry_seconds < renew_deadline_seconds < lease_seconds, got "
                f"{self.retry_seconds} < {self.renew_deadline_seconds} < {self.lease_seconds}"
            )


class LeaderElector:
    """One candidate: `tick()` tries to acquire or renew when a try is due and says whether to act now."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        identity: str,
        clock: Clock,
        timings: LeaseTimings | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not identity:
            raise ValueError("a leader election candidate needs an identity (the pod's name)")
        self._store = store
        self._identity = identity
        self._clock = clock
        self._timings = timings or LeaseTimings()
        self._log = logger or logging.getLogger("modelport.controller.leader")
        self._leader = False
        self._next_try = -math.inf
        self._renewed_at = -math.inf  # monotonic: when the last successful write as leader began
        self._observed: LeaseRecord | None = None
        self._observed_at = -math.inf  # monotonic: when the Lease was last seen to change
        self._reported: str | None = None  # the last standby or failure message logged, not to repeat it

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        return self._leader

    def still_leading(self) -> bool:
        """Whether this candidate leads and its last renewal is within the renew deadline now: checked
        without a call before each write, since a pass may have waited long on the API server since
        `tick()`."""
        now = self._clock.monotonic()
        return self._leader and now - self._renewed_at < self._timings.renew_deadline_seconds

    @property
    def holder(self) -> str | None:
        """Who held the Lease when it was last read (this candidate included)."""
        return None if self._observed is None else self._observed.holder

    def tick(self) -> bool:
        """Acquire or renew the Lease when a try is due; True while this candidate leads."""
        now = self._clock.monotonic()
        if now >= self._next_try:
            self._next_try = now + self._timings.retry_seconds
            self._try(now)
        if self._leader and now - self._renewed_at >= self._timings.renew_deadline_seconds:
            self._step_down(f"the Lease could not be renewed for {self._timings.renew_deadline_seconds:g} s")
        return self._leader

    def release(self) -> None:
        """Give the Lease up at once (on shutdown): another candidate need not wait for it to expire."""
        if not self._leader or self._observed is None:
            return
        self._leader = False
        wall = self._clock.wall()
        released = LeaseRecord(
            holder=None,
            duration_seconds=RELEASED_LEASE_SECONDS,
            acquired_at=wall,
            renewed_at=wall,
            transitions=self._observed.transitions,
            version=self._observed.version,
        )
        try:
            self._store.write(released)
        except Exception as exc:
            self._log.warning("could not release the Lease (it expires on its own): %s", exc)
            return
        self._log.info("%s released the Lease", self._identity)

    # ---- internals ----

    def _try(self, now: float) -> None:
        try:
            record = self._store.read()
        except NotFoundError as exc:
            self._report(f"cannot elect a leader: {exc}")
            return
        except Exception as exc:
            self._report(f"cannot read the Lease: {exc}")
            return
        self._observe(record, now)
        holder = record.holder
        if holder and holder != self._identity and now < self._observed_at + record.duration_seconds:
            if self._leader:
                self._step_down(f"{holder} holds the Lease now")
            self._report(f"standing by: {holder} leads")
            return
        wall = self._clock.wall()
        mine = holder == self._identity
        wanted = LeaseRecord(
            holder=self._identity,
            duration_seconds=self._timings.lease_seconds,
            acquired_at=record.acquired_at if mine and record.acquired_at is not None else wall,
            renewed_at=wall,
            transitions=record.transitions if mine else record.transitions + 1,
            version=record.version,
        )
        try:
            stored = self._store.write(wanted)
        except ConflictError:
            self._log.debug("the Lease changed while %s wrote it; trying again", self._identity)
            return
        except Exception as exc:
            self._report(f"cannot write the Lease: {exc}")
            return
        self._observe(stored, now)
        self._renewed_at = now
        if not self._leader:
            self._leader = True
            self._reported = None
            previous = f" from {holder}" if holder and not mine else ""
            self._log.info("%s leads now (took the Lease%s)", self._identity, previous)

    def _observe(self, record: LeaseRecord, now: float) -> None:
        if self._observed is None or self._observed != record:
            self._observed = record
            self._observed_at = now

    def _step_down(self, why: str) -> None:
        self._leader = False
        self._log.warning("%s stops leading: %s", self._identity, why)

    def _report(self, message: str) -> None:
        if message != self._reported:
            self._reported = message
            log = self._log.info if message.startswith("standing by") else self._log.warning
            log("%s", message)
