"""One guarded, timed phase of a reconcile pass: an error is logged and the loop goes on; a slow phase is
logged. Used by both control loops (controller/loop.py locally, controller/kube_loop.py in a cluster).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from modelport.clock import Clock


@contextlib.contextmanager
def guarded_phase(phase: str, *, clock: Clock, log: logging.Logger, slow_seconds: float) -> Iterator[None]:
    started = clock.monotonic()
    try:
        yield
    except Exception:
        log.exception("controller phase %s failed; the loop goes on", phase)
    finally:
        elapsed = clock.monotonic() - started
        if elapsed > slow_seconds:
            log.warning("controller phase %s took %.1f s", phase, elapsed)
