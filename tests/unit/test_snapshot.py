"""Unit tests of cluster.snapshot: per-digest project copies and per-revision spec JSON under a temp home."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.cluster.snapshot import Snapshot, prepare, prune, snapshot_project, write_spec
from modelport.controller.ports import DesiredApi
from modelport.errors import UserInputError
from modelport.spec.load import Project, load_project
from modelport.spec.model import ApiSpec
from tests.support import IRIS_SPEC, write_files


def make_project(root: Path, **files: str) -> Project:
    write_files(root, {"modelport.yaml": IRIS_SPEC, "predictor.py": "class Predictor: ...\n", **files})
    return load_project(root)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_snapshot_copies_the_project_files_but_not_ignored_ones(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "project",
        **{
            "lib/util.py": "X = 1\n",
            "data/big.bin": "weights",
            ".modelportignore": "data/\n*.log\n",
            "debug.log": "noise",
            ".env": "SECRET=1",
            "__pycache__/predictor.cpython-311.pyc": "compiled",
        },
    )
    copy = snapshot_project(project, snapshots_dir=tmp_path / "home" / "snapshots")
    assert copy.parent == tmp_path / "home" / "snapshots"
    assert copy.name == project.files_digest[:16]
    # The spec file is not part of the revision's files: replicas read the resolved spec JSON instead.
    assert tree(copy) == {"lib/util.py": "X = 1\n", "predictor.py": "class Predictor: ...\n"}


def test_the_same_digest_reuses_the_folder_and_later_edits_do_not_leak(tmp_path: Path) -> None:
    root, snapshots = tmp_path / "project", tmp_path / "snapshots"
    first = snapshot_project(make_project(root), snapshots_dir=snapshots)

    # Loading the same files again (even with another spec) gives the same digest: no second copy.
    write_files(root, {"modelport.yaml": IRIS_SPEC.replace("0.5", "0.9")})
    again = snapshot_project(load_project(root), snapshots_dir=snapshots)
    assert again == first
    assert [p.name for p in snapshots.iterdir()] == [first.name]

    # Editing a file makes a new snapshot; the old one keeps what its replicas run.
    write_files(root, {"predictor.py": "class Predictor: pass  # v2\n"})
    changed = snapshot_project(load_project(root), snapshots_dir=snapshots)
    assert changed != first
    assert (first / "predictor.py").read_text() == "class Predictor: ...\n"
    assert (changed / "predictor.py").read_text() == "class Predictor: pass  # v2\n"
    assert sorted(p.name for p in snapshots.iterdir()) == sorted([first.name, changed.name])


def test_no_staging_folder_is_left_behind(tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    snapshot_project(make_project(tmp_path / "a"), snapshots_dir=snapshots)
    snapshot_project(make_project(tmp_path / "b", **{"other.py": ""}), snapshots_dir=snapshots)
    names = [p.name for p in snapshots.iterdir()]
    assert len(names) == 2
    assert not [name for name in names if name.startswith(".staging-")]


def test_a_failed_snapshot_leaves_no_staging_folder(tmp_path: Path) -> None:
    root, snapshots = tmp_path / "project", tmp_path / "snapshots"
    project = make_project(root)
    # A plain file where the snapshot folder goes makes the final rename fail after the copy.
    snapshots.mkdir()
    blocker = snapshots / project.files_digest[:16]
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        snapshot_project(project, snapshots_dir=snapshots)
    assert [p.name for p in snapshots.iterdir()] == [blocker.name]
    # Once the blocker is gone the same deploy succeeds.
    blocker.unlink()
    assert tree(snapshot_project(project, snapshots_dir=snapshots)) == {
        "predictor.py": "class Predictor: ...\n"
    }


def test_a_file_edited_after_load_does_not_end_up_under_the_old_digest(tmp_path: Path) -> None:
    root, snapshots = tmp_path / "project", tmp_path / "snapshots"
    project = make_project(root)
    write_files(root, {"predictor.py": "class Predictor: pass  # edited after load\n"})
    try:
        copy = snapshot_project(project, snapshots_dir=snapshots)
    except UserInputError:
        return  # refusing a project that changed while it was read is also correct
    assert (copy / "predictor.py").read_text() == "class Predictor: ...\n"


def test_write_spec_round_trips_into_the_same_api_spec(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    spec = project.api("iris")
    revision = project.revision("iris")
    path = write_spec(spec, revision=revision, specs_dir=tmp_path / "specs")
    assert path == tmp_path / "specs" / "iris" / f"{revision}.json"
    assert ApiSpec.model_validate_json(path.read_text()) == spec
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the .tmp file was renamed away


def test_write_spec_keeps_an_existing_revision_file(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    spec, revision = project.api("iris"), project.revision("iris")
    first = write_spec(spec, revision=revision, specs_dir=tmp_path / "specs")
    inode = first.stat().st_ino
    assert write_spec(spec, revision=revision, specs_dir=tmp_path / "specs") == first
    assert first.stat().st_ino == inode  # not rewritten: a replica may be reading it


def test_prepare_gives_the_snapshot_and_the_revision_spec(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    spec = project.api("iris")
    snapshot = prepare(project, spec, snapshots_dir=tmp_path / "snapshots", specs_dir=tmp_path / "specs")
    assert snapshot == Snapshot(
        project_dir=tmp_path / "snapshots" / project.files_digest[:16],
        spec_path=tmp_path / "specs" / "iris" / f"{project.revision('iris')}.json",
    )
    assert (snapshot.project_dir / spec.predictor.path).is_file()
    assert ApiSpec.model_validate_json(snapshot.spec_path.read_text()) == spec


def test_prune_keeps_what_deployed_apis_use_and_removes_the_rest(tmp_path: Path) -> None:
    snapshots, specs = tmp_path / "snapshots", tmp_path / "specs"
    root = tmp_path / "project"
    old_project = make_project(root)
    old = prepare(old_project, old_project.api("iris"), snapshots_dir=snapshots, specs_dir=specs)
    write_files(root, {"predictor.py": "class PythonPredictor: pass  # v2\n"})
    new_project = load_project(root)
    new = prepare(new_project, new_project.api("iris"), snapshots_dir=snapshots, specs_dir=specs)
    (snapshots / ".staging-crashed").mkdir()  # a deploy interrupted by a crash
    deployed = DesiredApi(
        spec=new_project.api("iris"),
        revision=new_project.revision("iris"),
        project_dir=new.project_dir,
        spec_path=new.spec_path,
        deployed_at=0.0,
    )

    removed = prune(keep=[deployed], snapshots_dir=snapshots, specs_dir=specs)

    assert set(removed) == {old.project_dir, old.spec_path, snapshots / ".staging-crashed"}
    assert sorted(snapshots.iterdir()) == [new.project_dir]
    assert list(specs.glob("*/*.json")) == [new.spec_path]
    assert prune(keep=[], snapshots_dir=tmp_path / "none", specs_dir=tmp_path / "none") == []
