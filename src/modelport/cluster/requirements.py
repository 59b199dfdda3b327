"""Checks a project's requirements.txt against the Python environment the local cluster's replicas run in.

The local backend does not install anything: replicas run in modelport's own environment. Called on
deploy, so that a missing package is a warning with the command that fixes it, not a replica crash later.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement


def unmet_requirements(project_root: Path) -> list[str]:
    """One line per requirement of `project_root/requirements.txt` this environment does not satisfy."""
    path = project_root / "requirements.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    problems = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue  # comments and pip options (-r, -e, --index-url) are pip's business
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue  # URLs, paths: cannot be checked without pip; pip will say
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"requirements.txt:{number}: {requirement.name} is not installed")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(
                f"requirements.txt:{number}: {requirement.name} {installed} is installed, "
                f"the project needs {requirement.specifier}"
            )
    return problems


def requirements_warning(project_root: Path) -> str | None:
    """The warning `deploy` shows, or None when every requirement is met."""
    problems = unmet_requirements(project_root)
    if not problems:
        return None
    return (
        "the local cluster runs replicas in modelport's Python environment "
        f"({sys.executable}), which does not meet the project's requirements:\n  "
        + "\n  ".join(problems)
        + f"\nto fix it: {sys.executable} -m pip install -r {project_root / 'requirements.txt'}"
    )
