"""modelport as one contender of the peers' harness: a fresh local cluster that serves one benchmark example.

Started by the harness (../shared/bench/bench.py, `--add`) through bench/speed.py, pinned to the server core:

    python bench/contender.py --port PORT --project examples/bench-m1 --record results/cold.jsonl

This process becomes the cluster daemon (`modelport cluster run`, gateway on PORT) so that the harness's root
process is modelport itself: its RSS and CPU sums are the daemon's and the replicas' (which inherit
BENCH_RUN_TAG), nothing else. A detached helper waits for the daemon, deploys the project, times the deploy
-> first 200 on the running cluster, appends one JSON line to --record, and exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLD_START_POLL_SECONDS = 0.005  # the 0.5 s target needs a finer grain than the harness's 50 ms


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_status(port: int, path: str, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def modelport_flags(home: Path, *, gateway_port: int, control_port: int) -> list[str]:
    return ["--home", str(home), "--gateway-port", str(gateway_port), "--control-port", str(control_port)]


def measure_cold_start(args: argparse.Namespace, home: Path, control_port: int) -> dict[str, object]:
    """Wait for the daemon, then deploy and poll the API until its first 200 (runs in the helper)."""
    from modelport.client import Client
    from modelport.settings import Settings

    client = Client(Settings(home=home, gateway_port=args.port, control_port=control_port))
    deadline = time.monotonic() + args.timeout
    while not client.is_running():
        if time.monotonic() > deadline:
            return {"error": "the cluster did not answer"}
        time.sleep(0.02)
    project = Path(args.project)
    spec = project if project.is_file() else project / "modelport.yaml"
    sample = (spec.parent / "sample.json").read_bytes()
    # What a user's `modelport` command costs before it reaches the cluster (interpreter, imports).
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "modelport",
            *modelport_flags(home, gateway_port=args.port, control_port=control_port),
            "get",
            "-o",
            "json",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )
    cli_seconds = time.perf_counter() - started

    started = time.perf_counter()
    results = client.deploy(project)
    deploy_call = time.perf_counter() - started
    endpoint = f"/{results[0]['api']}"
    status = 0
    while status != 200 and time.monotonic() < deadline:
        status = post_status(args.port, endpoint, sample)
        if status != 200:
            time.sleep(COLD_START_POLL_SECONDS)
    first_200 = time.perf_counter() - started
    if status != 200:
        return {"error": f"no 200 from {endpoint} within {args.timeout:.0f} s (last status {status})"}
    return {
        "api": results[0]["api"],
        "deploy_to_first_200_s": round(first_200, 4),
        "deploy_call_s": round(deploy_call, 4),
        "cli_startup_s": round(cli_seconds, 4),
    }


def run_helper(args: argparse.Namespace, home: Path, control_port: int) -> None:
    """The detached helper: on the load generator's cores, so that it does not take the server core."""
    loadgen = os.environ.get("BENCH_LOADGEN_CPUS", "0")
    os.sched_setaffinity(0, {int(cpu) for cpu in loadgen.split(",")})
    try:
        record = measure_cold_start(args, home, control_port)
    except Exception as exc:  # recorded, never raised: the helper's failure must not hide the run
        record = {"error": repr(exc)}
    record.update(
        contender=args.name,
        model=os.environ.get("BENCH_MODEL", ""),
        project=args.project,
        tag=os.environ.get("BENCH_RUN_TAG", ""),
        ts=time.time(),
    )
    with open(args.record, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the gateway's port (the harness's {port})")
    parser.add_argument("--project", required=True, help="a project folder or spec file to deploy")
    parser.add_argument("--record", required=True, help="JSON-lines file the cold-start figures go to")
    parser.add_argument("--name", default="modelport", help="the contender's name, kept in the record")
    parser.add_argument("--homes", default=str(REPO / "bench" / ".work" / "homes"))
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    Path(args.homes).mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="cluster-", dir=args.homes))
    control_port = free_port()
    # The harness puts its own folder on PYTHONPATH for the peers' servers; modelport must not see it.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    child = os.fork()
    if child == 0:  # double fork: the helper is nobody's child, so the daemon never has to reap it
        if os.fork() == 0:
            os.environ.pop("PYTHONPATH", None)
            run_helper(args, home, control_port)
        os._exit(0)
    os.waitpid(child, 0)
    command = [
        sys.executable,
        "-m",
        "modelport",
        *modelport_flags(home, gateway_port=args.port, control_port=control_port),
        "cluster",
        "run",
    ]
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
