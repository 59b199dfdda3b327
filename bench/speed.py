"""Speed benchmark: modelport against the peers' harness on one core, in one command, printing one table.

    .venv/bin/python bench/speed.py                      # M1 + M2, Starlette + LitServe, 1 round of 10 s
    .venv/bin/python bench/speed.py --full               # the recorded protocol: 3 rounds of 15 s, all peers
    .venv/bin/python bench/speed.py --peers litserve,mlserver --rounds 3 --duration 15 --profile

Builds what it needs (wrk from apt; bench/.venvs/<peer> virtualenvs pinned to the harness's recorded
versions, without torch), copies the harness (../shared/bench) to bench/.work/harness and runs it once per
model with modelport added as contenders (`--add`): bench/contender.py starts a fresh local cluster (its own
home, free ports) on the server core and deploys examples/bench-m1, bench-m2 and bench-m2/batch.yaml (skipped
while the spec does not accept predictor.server_side_batching). Every server process is pinned to core
BENCH_SERVER_CPUS (1), wrk to BENCH_LOADGEN_CPUS (0). Ratios are to bare Starlette of the same round.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from speed_report import BASELINE, load_runs, notes, table, targets

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED = REPO.parent / "shared" / "bench"
VENVS = BENCH / ".venvs"
WORK = BENCH / ".work"
HARNESS = WORK / "harness"
RESULTS = BENCH / "results"
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "1")  # the harness reads the same two variables
LOADGEN_CPUS = os.environ.get("BENCH_LOADGEN_CPUS", "0")

# Top-level packages per virtualenv; versions come from the harness's requirements-<venv>.txt (its recorded
# run). No torch: M3 is not part of this benchmark.
VENV_PACKAGES = {
    "base": ["starlette", "uvicorn[standard]", "uvloop", "httptools", "numpy", "scikit-learn", "psutil"],
    "litserve": ["litserve", "fastapi", "uvicorn[standard]", "uvloop", "httptools", "numpy", "scikit-learn"],
    "mlserver": ["mlserver", "numpy", "scikit-learn"],
    "bentoml": ["bentoml", "uvloop", "httptools", "numpy", "scikit-learn"],
    "ray": ["ray[serve]", "numpy", "scikit-learn"],
    "tools": ["py-spy"],
}
# Peer -> its harness contenders per model (batching variants only where the issue compares them: M2).
PEER_CONTENDERS = {
    "litserve": {"m1": ["litserve"], "m2": ["litserve", "litserve-batch"]},
    "mlserver": {"m1": ["mlserver"], "m2": ["mlserver"]},
    "bentoml": {"m1": ["bentoml"], "m2": ["bentoml", "bentoml-batch"]},
    "ray": {"m1": ["rayserve"], "m2": ["rayserve", "rayserve-batch"]},
}
PEER_VENV = {"litserve": "litserve", "mlserver": "mlserver", "bentoml": "bentoml", "ray": "ray"}
# modelport contenders per model: (name, project folder or spec file, endpoint).
MODELPORT = {
    "m1": [("modelport", "examples/bench-m1", "/bench-m1")],
    "m2": [
        ("modelport", "examples/bench-m2", "/bench-m2"),
        ("modelport-batch", "examples/bench-m2/batch.yaml", "/bench-m2-batch"),
    ],
}


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


# -- setup ------------------------------------------------------------------------------------------------


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: install it (Debian: apt-get install wrk) and run again")
    log("installing wrk (apt) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=600)


def pinned(venv: str) -> list[str]:
    """The venv's top-level packages at the versions of the harness's recorded run (unpinned if absent)."""
    versions: dict[str, str] = {}
    requirements = SHARED / f"requirements-{venv}.txt"
    if requirements.exists():
        for line in requirements.read_text().splitlines():
            name, _, version = line.strip().partition("==")
            if version:
                versions[name.lower().replace("_", "-")] = version
    specs = []
    for package in VENV_PACKAGES[venv]:
        bare = package.split("[")[0].lower()
        specs.append(f"{package}=={versions[bare]}" if bare in versions else package)
    return specs


def ensure_venv(venv: str) -> None:
    """Create bench/.venvs/<venv> once; reinstall only when its package list changed."""
    path = VENVS / venv
    marker = path / ".bench-packages"
    packages = pinned(venv)
    if marker.exists() and marker.read_text() == "\n".join(packages):
        return
    python = shutil.which("python3.11") or sys.executable
    started = time.monotonic()
    log(f"creating bench/.venvs/{venv}: {' '.join(packages)} ...")
    subprocess.run([python, "-m", "venv", "--clear", str(path)], check=True, timeout=300)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *packages], check=True, timeout=1200)
    marker.write_text("\n".join(packages))
    log(f"bench/.venvs/{venv} ready in {time.monotonic() - started:.0f} s")


def copy_harness() -> None:
    """A writable copy of the shared harness (it writes logs beside itself), using bench/.venvs."""
    if not (SHARED / "bench.py").exists():
        raise SystemExit(f"the peers' harness is not at {SHARED}")
    shutil.rmtree(HARNESS, ignore_errors=True)
    ignore = shutil.ignore_patterns(".venvs", "results", "logs", "__pycache__")
    shutil.copytree(SHARED, HARNESS, ignore=ignore)
    for path in HARNESS.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)  # the shared copy is read-only
    HARNESS.chmod(HARNESS.stat().st_mode | 0o200)
    (HARNESS / ".venvs").symlink_to(VENVS)


def batching_accepted() -> str | None:
    """None when the batch spec loads; otherwise why not (the contender is then skipped)."""
    from modelport.spec.load import load_project

    try:
        load_project(REPO / "examples" / "bench-m2" / "batch.yaml")
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


def free_base_port(span: int) -> int:
    """A base port whose next `span` ports are free now (the harness moves 10 ports per server)."""
    for _ in range(50):
        base = random.randrange(20000, 30000 - span, 10)
        if all(_port_free(port) for port in range(base, base + span)):
            return base
    raise SystemExit("no free port range found between 20000 and 30000")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- run ---------------------------------------------------------------------------------------------------


def run_model(model: str, args: argparse.Namespace, *, raw: Path, cold: Path, skip: set[str]) -> None:
    contenders = [BASELINE] + [c for peer in args.peers for c in PEER_CONTENDERS[peer][model]]
    command = [str(VENVS / "base" / "bin" / "python"), str(HARNESS / "bench.py"), "run"]
    command += ["--models", model, "--rounds", str(args.rounds), "--duration", str(args.duration)]
    command += ["--warmup", str(args.warmup), "--start-timeout", "120", "--out", str(raw)]
    for name, project, endpoint in MODELPORT[model]:
        if name in skip:
            continue
        server = f"{sys.executable} {BENCH / 'contender.py'} --port {{port}} --project {REPO / project}"
        server += f" --name {name} --record {cold} --homes {WORK / 'homes'}"
        command += ["--add", f"{name}|{server}|{endpoint}"]
        contenders.append(name)
    runs = len(contenders) * args.rounds
    command += ["--only", ",".join(contenders), "--port", str(free_base_port(10 * runs + 3))]
    # Each server: start-up (<= 120 s), 3 s idle, warm-up, c=1 and c=32; Ray's start-up is the longest.
    limit = runs * (150 + args.warmup + 2 * args.duration + 60)
    log(f"{model}: {', '.join(contenders)} x {args.rounds} round(s) ...")
    subprocess.run(command, check=True, timeout=limit, cwd=HARNESS)


# -- main --------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default="m1,m2", help="comma-separated: m1, m2")
    parser.add_argument(
        "--peers", default="litserve", help="comma-separated: litserve, mlserver, bentoml, ray, all, none"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk at c=1 and at c=32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="3 rounds of 15 s, 4 s warm-up, all peers")
    parser.add_argument("--profile", action="store_true", help="then py-spy the gateway and an M1 replica")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    args = parser.parse_args()
    if args.full:
        args.rounds, args.duration, args.warmup, args.peers = 3, 15, 4, "all"
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    args.peers = list(PEER_CONTENDERS) if "all" in peers else peers
    unknown = set(args.peers) - set(PEER_CONTENDERS)
    args.models = [m for m in args.models.split(",") if m]
    if unknown or set(args.models) - set(MODELPORT):
        parser.error(f"unknown peers or models: {sorted(unknown) or args.models}")
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    ensure_wrk()
    for venv in ["base", *(PEER_VENV[p] for p in args.peers), *(["tools"] if args.profile else [])]:
        ensure_venv(venv)
    copy_harness()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw, cold = RESULTS / f"raw-{stamp}.jsonl", RESULTS / f"cold-{stamp}.jsonl"
    skip: set[str] = set()
    why = batching_accepted()
    if why is not None:
        skip.add("modelport-batch")
        log(f"modelport-batch skipped: the spec is not accepted yet ({why})")
    try:
        for model in args.models:
            run_model(model, args, raw=raw, cold=cold, skip=skip)
    finally:
        shutil.rmtree(WORK / "homes", ignore_errors=True)
    runs = load_runs(raw, cold)
    invocation = " ".join([".venv/bin/python bench/speed.py", *sys.argv[1:]])
    cores = f"server core {SERVER_CPUS}, wrk core {LOADGEN_CPUS}"
    output = [
        f"modelport speed benchmark, {time.strftime('%Y-%m-%d %H:%M')}: `{invocation}`",
        f"{args.rounds} round(s), wrk {args.duration} s per level after {args.warmup} s warm-up; {cores}."
        f" Cells: median over rounds (ratio to {BASELINE} of the same round).",
        "",
        table(runs),
        "",
        "cold start: modelport rows = deploy -> first 200 on a running cluster; the others = process launch "
        "-> first 200 (the harness's measure). RSS: every process of the server (modelport: daemon with "
        "gateway and controller, and the replica). CPU us/req: all server processes at c=32.",
        notes(runs),
        "",
        targets(runs),
    ]
    if skip:
        output.append(f"- modelport-batch skipped: {why}")
    if args.profile:
        from profiling import profile, report

        log("profiling the gateway and an M1 replica under c=32 ...")
        profiles = profile(
            REPO / "examples" / "bench-m1",
            seconds=args.profile_seconds,
            port=free_base_port(1),
            server_cpus=SERVER_CPUS,
            loadgen_cpus=LOADGEN_CPUS,
            native=False,
        )
        output += ["", "py-spy, M1 under wrk c=32 (top 10 by self time):", report(profiles)]
        shutil.rmtree(WORK / "homes", ignore_errors=True)
    text = "\n".join(output)
    (RESULTS / f"table-{stamp}.md").write_text(text + "\n")
    print(text)
    log(f"done in {time.monotonic() - started:.0f} s; raw {raw}, table {RESULTS / f'table-{stamp}.md'}")


if __name__ == "__main__":
    main()
