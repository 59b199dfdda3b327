"""The speed benchmark's table: the harness's raw runs joined with modelport's cold-start records.

Used by bench/speed.py after the runs; `python bench/speed_report.py RAW.jsonl COLD.jsonl` prints the table of
an earlier run again.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

BASELINE = "starlette-w1"


def load_runs(raw: Path, cold: Path) -> list[dict[str, Any]]:
    runs = [json.loads(line) for line in raw.read_text().splitlines() if line.strip()]
    colds = [json.loads(line) for line in cold.read_text().splitlines()] if cold.exists() else []
    # The contender appends one line per start, in run order: the n-th record of a (contender, model) is
    # the n-th run of that pair.
    for name, model in {(r["contender"], r["model"]) for r in runs}:
        mine = [r for r in runs if r["contender"] == name and r["model"] == model]
        theirs = [c for c in colds if c.get("contender") == name and c.get("model") == model]
        for run, record in zip(mine, theirs, strict=False):
            run["deploy"] = record
    return runs


def _ratio_cell(values: list[float], ratios: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    value = statistics.median(values)
    text = f"{value:,.{digits}f}"
    if ratios:
        text += f" ({statistics.median(ratios):.2f}x)"
    return text


METRICS: list[tuple[str, Any, int]] = [
    ("c=1 p50 ms", lambda r: r["c1"]["p50_us"] / 1000, 3),
    ("c=1 p99 ms", lambda r: r["c1"]["p99_us"] / 1000, 2),
    ("c=32 req/s", lambda r: r["c32"]["rps"], 0),
    ("c=32 p50 ms", lambda r: r["c32"]["p50_us"] / 1000, 2),
    ("c=32 p99 ms", lambda r: r["c32"]["p99_us"] / 1000, 2),
    ("cold start s", lambda r: r.get("deploy", {}).get("deploy_to_first_200_s", r["cold_start_s"]), 2),
    ("RSS MB", lambda r: r.get("rss_mb"), 0),
    ("CPU us/req", lambda r: 1e6 * r["c32"]["server_cpu_s"] / max(1, r["c32"]["requests"]), 0),
]


def table(runs: list[dict[str, Any]]) -> str:
    header = "| model | contender | " + " | ".join(name for name, _, _ in METRICS) + " | procs | errors |"
    lines = [header, "|" + "---|" * (len(METRICS) + 4)]
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        base = {r["round"]: r for r in mine if r["contender"] == BASELINE and r.get("ok")}
        for name in dict.fromkeys(r["contender"] for r in mine):
            ok = [r for r in mine if r["contender"] == name and r.get("ok")]
            if not ok:
                error = next(r.get("error", "") for r in mine if r["contender"] == name)
                lines.append(f"| {model} | {name} | FAILED: {error[:150]} |")
                continue
            cells = []
            for _, get, digits in METRICS:
                values = [v for v in (get(r) for r in ok) if v is not None]
                ratios = [
                    get(r) / get(base[r["round"]])
                    for r in ok
                    if r["round"] in base and get(r) is not None and get(base[r["round"]])
                ]
                cells.append(_ratio_cell(values, ratios, digits))
            procs = statistics.median(r["nprocs"] for r in ok)
            errors = sum(r["c1"]["errors"] + r["c32"]["errors"] for r in ok)
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + f" | {procs:.0f} | {errors} |")
    return "\n".join(lines)


def notes(runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        if not run["contender"].startswith("modelport") or not run.get("ok"):
            continue
        base = next(
            (
                r
                for r in runs
                if r["contender"] == BASELINE and r["model"] == run["model"] and r["round"] == run["round"]
            ),
            None,
        )
        same = base is not None and base.get("sample_response") == run.get("sample_response")
        deploy = run.get("deploy", {})
        first_200 = deploy.get("deploy_to_first_200_s", "n/a")
        lines.append(
            f"- {run['model']} {run['contender']} r{run['round']}: cluster start + deploy -> first 200 "
            f"{run['cold_start_s']:.2f} s; deploy -> first 200 {first_200} s "
            f"(the `modelport` CLI adds {deploy.get('cli_startup_s', 'n/a')} s of start-up); response "
            f"{'identical to' if same else 'DIFFERENT from'} the baseline's; foreign CPU during c=32 "
            f"{run['c32']['foreign_cpu_s']:.1f} s of {run['c32']['wall_s']:.0f} s"
        )
    return "\n".join(lines)


def _median_of(runs: list[dict[str, Any]], model: str, name: str, get: Any) -> float | None:
    values = [get(r) for r in runs if r["model"] == model and r["contender"] == name and r.get("ok")]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _per_round_ratio(runs: list[dict[str, Any]], model: str, name: str, other: str, get: Any) -> float | None:
    pairs: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["model"] == model and r.get("ok") and r["contender"] in (name, other):
            pairs.setdefault(r["round"], {})[r["contender"]] = get(r)
    ratios = [p[name] / p[other] for p in pairs.values() if p.get(name) and p.get(other)]
    return statistics.median(ratios) if ratios else None


def targets(runs: list[dict[str, Any]]) -> str:
    """The issue's targets, read off this run (medians; ratios per round, then the median)."""
    rps = METRICS[2][1]
    checks: list[tuple[str, float | None, str, bool | None]] = []

    def check(what: str, value: float | None, unit: str, goal: float, *, at_most: bool = False) -> None:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        checks.append((what, value, unit, met))

    check(
        "M1 c=32 req/s / starlette-w1 (goal >= 1.5)",
        _per_round_ratio(runs, "m1", "modelport", BASELINE, rps),
        "x",
        1.5,
    )
    check(
        "M1 c=1 p50 through the gateway (goal <= 0.15 ms)",
        _median_of(runs, "m1", "modelport", METRICS[0][1]),
        " ms",
        0.15,
        at_most=True,
    )
    check(
        "M1 c=1 p50 / starlette-w1's (goal <= 1.25: 0.15 ms against the recorded run's 0.12 ms)",
        _per_round_ratio(runs, "m1", "modelport", BASELINE, METRICS[0][1]),
        "x",
        1.25,
        at_most=True,
    )
    check(
        "M1 c=32 p99 / starlette-w1's (goal <= 1)",
        _per_round_ratio(runs, "m1", "modelport", BASELINE, METRICS[4][1]),
        "x",
        1.0,
        at_most=True,
    )
    check(
        "M2 c=32 req/s, modelport-batch / litserve-batch (goal >= 2.5)",
        _per_round_ratio(runs, "m2", "modelport-batch", "litserve-batch", rps),
        "x",
        2.5,
    )
    check(
        "M1 cold start, deploy -> first 200 (goal <= 0.5 s)",
        _median_of(runs, "m1", "modelport", METRICS[5][1]),
        " s",
        0.5,
        at_most=True,
    )
    check(
        "M1 RSS, gateway + controller + replica (goal <= 120 MB)",
        _median_of(runs, "m1", "modelport", METRICS[6][1]),
        " MB",
        120,
        at_most=True,
    )
    lines = ["| target | this run | met |", "|---|---|---|"]
    for what, value, unit, met in checks:
        shown = "n/a" if value is None else f"{value:.2f}{unit}"
        lines.append(f"| {what} | {shown} | {'n/a' if met is None else 'yes' if met else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    loaded = load_runs(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n\n".join([table(loaded), notes(loaded), targets(loaded)]))
