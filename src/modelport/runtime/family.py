"""The processes of one replica when processes_per_replica > 1: forking them, watching them, stopping them.

Used by `runtime.server` only. The parent is a worker too; the children share its listening socket and the
readiness counters. A child that dies makes the parent stop the whole replica (it is replaced as a unit);
children notice the parent's death through a pipe (portable, unlike prctl(PR_SET_PDEATHSIG)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from modelport.runtime.options import EXIT_CRASHED

log = logging.getLogger("modelport.runtime")


class Lifeline:
    """A child's end of a pipe whose other end only the parent holds: end-of-file = the parent is gone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def watch(self, on_parent_gone: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(self._fd, 1)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(self._fd)
                on_parent_gone()

        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, readable)


class Children:
    """The parent's view of its children: a thread per child waits for its exit and reports it on the loop.

    (uvloop reserves SIGCHLD, and waiting on each pid, not on -1, leaves the user's own subprocesses alone.)
    """

    def __init__(self, indexes: dict[int, int], *, lifeline_fd: int) -> None:
        self._indexes = indexes  # pid -> process index (1-based among children; the parent is 0)
        self._running = set(indexes)
        self._lifeline_fd = lifeline_fd  # held open, never written: closing it (by dying) tells the children
        self._all_exited: asyncio.Event | None = None
        self._on_exit: Callable[[int, int], None] = lambda index, code: None

    def watch(self, on_exit: Callable[[int, int], None]) -> None:
        """Call `on_exit(index, exit_code)` on the running loop as each child exits (-N = signal N)."""
        loop = asyncio.get_running_loop()
        self._all_exited = asyncio.Event()
        self._on_exit = on_exit
        for pid in self._indexes:
            threading.Thread(
                target=self._wait, args=(pid, loop), name=f"wait-child-{pid}", daemon=True
            ).start()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def wait(self, seconds: float) -> bool:
        """Wait for every child to exit; False if some are still running after `seconds`."""
        if not self._running:
            return True
        assert self._all_exited is not None, "watch() first"
        try:
            await asyncio.wait_for(self._all_exited.wait(), max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    def _signal(self, signum: int) -> None:
        for pid in self._running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _wait(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = EXIT_CRASHED
        with contextlib.suppress(RuntimeError):  # the loop is closed: the parent is exiting anyway
            loop.call_soon_threadsafe(self._exited, pid, code)

    def _exited(self, pid: int, code: int) -> None:
        self._running.discard(pid)
        if not self._running and self._all_exited is not None:
            self._all_exited.set()
        self._on_exit(self._indexes[pid], code)


def fork_children(count: int, *, run_child: Callable[[int, Lifeline], int]) -> Children:
    """Fork `count` children; each runs `run_child(index, lifeline)` and exits with its result.

    Call before any thread or event loop exists in this process (fork copies only the calling thread).
    """
    read_fd, write_fd = os.pipe()
    indexes: dict[int, int] = {}
    try:
        for index in range(1, count + 1):
            pid = os.fork()
            if pid == 0:
                os.close(write_fd)
                _child_main(run_child, index, Lifeline(read_fd))
            indexes[pid] = index
    except OSError:
        for pid in indexes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(read_fd)
    return Children(indexes, lifeline_fd=write_fd)


def exit_now(code: int) -> NoReturn:
    """Flush what was logged or printed, then exit without running atexit handlers or joining threads."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _child_main(run_child: Callable[[int, Lifeline], int], index: int, lifeline: Lifeline) -> NoReturn:
    # A forked child must never return into the parent's code path, whatever happens.
    code = EXIT_CRASHED
    try:
        code = run_child(index, lifeline)
    except BaseException:
        log.exception("process %d of the replica crashed", index + 1)
    exit_now(code)
