"""The kernel's batch scheduling class for the data-plane processes (Linux; elsewhere nothing changes).

Called once at start by the processes that serve requests: `runtime.server` (every replica process) and
`cluster.daemon` (the local cluster's thread that runs the gateway), never as a side effect of a library
call. A gateway and its
replicas often share a core: a request wakes the replica, and its answer wakes the gateway. A normally
scheduled process that is woken pre-empts the one that woke it, so they hand the core back and forth once per
request (about two context switches per request, each evicting the other's cache). In the batch class a
woken process waits for the running one to block (no wake-up pre-emption); it then handles everything that
arrived meanwhile. CPU shares over time are unchanged (same weights, same fairness). Measured with
bench/speed.py's M1 (gateway + one replica on one core, wrk c=32): about 30% less CPU per request, a lower
c=32 p99 and the same c=1 latency (shared/reference/hop-probe.md saw the same for its designs).
The cost: on a core shared with other, normally scheduled programs, these processes do not pre-empt them
on wake-up either, so a request may wait up to one scheduler slice (a few ms) behind them.
"""

from __future__ import annotations

import contextlib
import os


def use_batch_scheduling() -> bool:
    """Put the calling thread (and the threads and processes it starts later) in the batch scheduling class.

    Returns whether it is in that class now. Best effort: needs no privilege on Linux; where the class does
    not exist, or the call is refused (a seccomp profile), nothing changes.
    """
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return False
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, batch, os.sched_param(0))
        return True
    return False
