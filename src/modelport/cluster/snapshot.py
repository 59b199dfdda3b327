"""Immutable copies of deployed projects: each revision's replicas run from their own snapshot.

Called by the control API on deploy. A snapshot is keyed by the project's files digest, written to a
temporary folder and renamed into place, so a half-copied project is never used and later edits to the
user's folder never leak into running replicas until the next deploy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelport.controller.ports import DesiredApi
from modelport.errors import UserInputError
from modelport.spec.load import Project, files_digest, project_files
from modelport.spec.model import ApiSpec
from modelport.types import Revision


@dataclass(frozen=True, slots=True)
class Snapshot:
    project_dir: Path
    spec_path: Path


def snapshot_project(project: Project, *, snapshots_dir: Path) -> Path:
    """Copy the project's files (as `project_files` lists them) once per files digest; return the copy."""
    target = snapshots_dir / project.files_digest[:16]
    if target.is_dir():
        return target
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=snapshots_dir))
    try:
        copied = project_files(project.root, spec_file=project.spec_file)
        for relative in copied:
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project.root / relative, destination)
        # The folder is named after the digest load_project computed: make sure that is what was copied.
        if files_digest(staging, copied) != project.files_digest:
            raise UserInputError(
                f"the project in {project.root} changed while it was being deployed: deploy again"
            )
        try:
            os.rename(staging, target)
        except OSError:
            # Another deploy of the same digest won the race: its copy is identical.
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def write_spec(spec: ApiSpec, *, revision: Revision, specs_dir: Path) -> Path:
    """The resolved spec as JSON, where the replica process reads it; written atomically."""
    path = specs_dir / spec.name / f"{revision}.json"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(spec.model_dump_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def prepare(project: Project, spec: ApiSpec, *, snapshots_dir: Path, specs_dir: Path) -> Snapshot:
    revision = project.revision(spec.name)
    project_dir = snapshot_project(project, snapshots_dir=snapshots_dir)
    return Snapshot(
        project_dir=project_dir, spec_path=write_spec(spec, revision=revision, specs_dir=specs_dir)
    )


def prune(*, keep: Iterable[DesiredApi], snapshots_dir: Path, specs_dir: Path) -> list[Path]:
    """Delete snapshots and spec files no deployed API refers to; returns what was deleted.

    Only safe while no replica of an older revision runs, which is why the daemon calls it at start-up,
    before it launches anything (replicas of a rolling update still run from their old snapshot).
    """
    wanted = {api.project_dir for api in keep} | {api.spec_path for api in keep}
    removed: list[Path] = []
    for folder in snapshots_dir.iterdir() if snapshots_dir.is_dir() else ():
        if folder not in wanted:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for spec_file in specs_dir.glob("*/*.json") if specs_dir.is_dir() else ():
        if spec_file not in wanted:
            spec_file.unlink(missing_ok=True)
            removed.append(spec_file)
    return removed
