"""Where the request path spends its CPU: py-spy on the gateway (daemon) and on one replica under wrk load.

Called by bench/speed.py (`--profile`); runnable alone once speed.py has built bench/.venvs/tools and the
harness copy:

    .venv/bin/python bench/profiling.py --project examples/bench-m1 --seconds 8

Starts a fresh cluster with bench/contender.py on the server core, drives wrk (c=32, the load core), samples
both processes with py-spy (non-blocking, so the processes are never paused) and prints, per process, its CPU
per request and the top functions by self time (the leaf frame of each non-idle sample).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PY_SPY = BENCH / ".venvs" / "tools" / "bin" / "py-spy"
HARNESS = BENCH / ".work" / "harness"
# Leaf frames that stand for C code below them, as py-spy (Python frames only) shows it.
NOTES = {
    "Runner.run (asyncio/runners.py)": "uvloop's C loop: epoll, recv/send, httptools, callback dispatch",
    "_worker (futures/thread.py)": "predictor thread between work items: queue wake-up, GIL hand-over",
}
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


@dataclass(frozen=True)
class ProcessProfile:
    role: str
    pid: int
    samples: int
    cpu_us_per_request: float
    top: list[tuple[str, int]]  # (function and file, self samples)
    threads: dict[str, int]  # samples per thread name


def self_time(folded: str, *, top: int = 10) -> tuple[int, list[tuple[str, int]], dict[str, int]]:
    """py-spy's raw (folded, --threads) output -> total samples, the `top` leaf functions by sample count,
    and the samples per thread name."""
    counts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            threads[frames[0].partition(": ")[2] or frames[0]] += count
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        if match:
            short = "/".join(Path(match["file"]).parts[-2:]) if match["file"] else "?"
            leaf = f"{match['function']} ({short})"
        counts[leaf] += count
    return total, counts.most_common(top), dict(threads)


def _post_ok(url: str, body: bytes) -> bool:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _stop(daemon: subprocess.Popen[bytes], replicas: list[int]) -> None:
    """SIGTERM the daemon (it drains and stops its replicas), then SIGKILL whatever of ours is left."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=40)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(timeout=5)
    for pid in replicas:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def profile(
    project: Path, *, seconds: float, port: int, server_cpus: str, loadgen_cpus: str, native: bool
) -> list[ProcessProfile]:
    sample = project / "sample.json"
    body_file = Path(tempfile.mkdtemp(prefix="profile-", dir=BENCH / ".work")) / "body.json"
    body_file.write_bytes(sample.read_bytes().strip())
    endpoint = f"http://127.0.0.1:{port}/{project.name}"
    env = dict(os.environ, BENCH_RUN_TAG=uuid.uuid4().hex[:12], BENCH_LOADGEN_CPUS=loadgen_cpus)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    record = body_file.parent / "cold.jsonl"
    command = ["taskset", "-c", server_cpus, sys.executable, str(BENCH / "contender.py")]
    command += ["--port", str(port), "--project", str(project), "--record", str(record)]
    daemon = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    replicas: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not _post_ok(endpoint, body_file.read_bytes()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"{endpoint} did not answer 200 (daemon exit code {daemon.poll()})")
            time.sleep(0.05)
        replicas = [
            child.pid
            for child in psutil.Process(daemon.pid).children(recursive=True)
            if "replica" in child.cmdline()
        ]
        roles = [("gateway + controller (daemon)", daemon.pid)] + [("replica", pid) for pid in replicas]
        wrk_command = ["taskset", "-c", loadgen_cpus, "wrk", "-t1", "-c32", f"-d{seconds + 3:.0f}s"]
        wrk_command += ["-s", str(HARNESS / "post.lua"), endpoint]
        wrk = subprocess.Popen(
            wrk_command, env=dict(env, BENCH_BODY_FILE=str(body_file)), stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.5)  # let wrk's connections open; the sampling window starts on a loaded server
        cpu_before = {pid: _cpu_seconds(pid) for _, pid in roles}
        spies = []
        for role, pid in roles:
            out = body_file.parent / f"{pid}.folded"
            spy = ["taskset", "-c", loadgen_cpus, str(PY_SPY), "record", "--pid", str(pid), "--threads"]
            spy += ["--rate", "200", "--duration", f"{seconds:.0f}", "--format", "raw", "-o", str(out)]
            # Native stacks need the process paused for each sample; Python-only sampling does not.
            spy += ["--native"] if native else ["--nonblocking"]
            spies.append((role, pid, out, subprocess.Popen(spy)))
        for *_, spy_process in spies:
            spy_process.wait(timeout=seconds + 60)
        cpu_after = {pid: _cpu_seconds(pid) for _, pid in roles}
        stdout, _ = wrk.communicate(timeout=60)
        result = json.loads(next(line[8:] for line in stdout.splitlines() if line.startswith("WRKJSON ")))
        requests_in_window = result["requests"] * seconds / (result["duration_us"] / 1e6)
        profiles = []
        for role, pid, out, _ in spies:
            total, top, threads = self_time(out.read_text() if out.exists() else "")
            per_request = (cpu_after[pid] - cpu_before[pid]) / max(1.0, requests_in_window) * 1e6
            profiles.append(ProcessProfile(role, pid, total, round(per_request, 1), top, threads))
        rps = result["requests"] / (result["duration_us"] / 1e6)
        print(f"wrk c=32 during the profile: {rps:,.0f} req/s (slowed by the samplers)", file=sys.stderr)
        return profiles
    finally:
        _stop(daemon, replicas)


def report(profiles: list[ProcessProfile]) -> str:
    lines = []
    for item in profiles:
        lines.append(
            f"\n{item.role} (pid {item.pid}): {item.cpu_us_per_request:.0f} us CPU per request, "
            f"{item.samples} non-idle samples ("
            + ", ".join(f"{name} {100 * n / max(1, item.samples):.0f}%" for name, n in item.threads.items())
            + ")"
        )
        lines.append("| self % | function (file) |\n|---|---|")
        for name, count in item.top:
            note = f" ({NOTES[name]})" if name in NOTES else ""
            lines.append(f"| {100 * count / max(1, item.samples):.1f} | `{name}`{note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--project", type=Path, default=REPO / "examples" / "bench-m1")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    parser.add_argument("--native", action="store_true", help="include C frames (uvloop, httptools)")
    args = parser.parse_args()
    from contender import free_port

    profiles = profile(
        args.project.resolve(),
        seconds=args.seconds,
        port=args.port or free_port(),
        server_cpus=os.environ.get("BENCH_SERVER_CPUS", "1"),
        loadgen_cpus=os.environ.get("BENCH_LOADGEN_CPUS", "0"),
        native=args.native,
    )
    print(report(profiles))


if __name__ == "__main__":
    main()
