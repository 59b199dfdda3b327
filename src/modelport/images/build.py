"""Building a project's image: stage the build context (project files, resolved specs, wheels), render the
Containerfile, run the engine, push.

Called by the `modelport build` command (cli/build.py) and by tests; the engine is passed in (see engines.py).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import UserInputError
from modelport.images.containerfile import (
    CONTAINERFILE_NAME,
    DEFAULT_BASE_IMAGE,
    REQUIREMENTS_FILE,
    ContextPaths,
    ModelportSource,
    RequirementsSource,
    check_reference,
    default_api,
    project_digest,
    render_containerfile,
)
from modelport.images.engines import ContainerEngine, EngineName, Progress
from modelport.images.wheelhouse import (
    copy_wheelhouse,
    make_wheels,
    modelport_source,
    remove_duplicates,
    wheels_digest,
)
from modelport.spec.load import Project, load_project, project_files

__all__ = ["BuildResult", "PreparedContext", "build_image", "default_tag", "prepare_context"]


@dataclass(frozen=True, slots=True)
class PreparedContext:
    """A staged build context: its folder, the Containerfile in it, and what that file installs."""

    root: Path
    containerfile: Path
    text: str
    source: ModelportSource
    files: tuple[Path, ...]  # the project's files under app/, relative to the project


@dataclass(frozen=True, slots=True)
class BuildResult:
    reference: str  # the tag the image was built (and pushed) as
    image_id: str
    engine: EngineName
    apis: tuple[str, ...]
    default_api: str  # what the image serves without arguments
    pushed: bool
    containerfile: str
    seconds: float


def default_tag(project: Project) -> str:
    """`<first API>:<12 hex chars of the project's content>`: a new tag whenever a spec or a file changes."""
    return f"{project.apis[0].name}:{project_digest(project)}"


def build_image(
    project_dir: Path,
    *,
    engine: ContainerEngine,
    tag: str | None = None,
    base_image: str = DEFAULT_BASE_IMAGE,
    wheelhouse: Path | None = None,
    requirements: RequirementsSource = RequirementsSource.WHEELHOUSE,
    push: bool = False,
    progress: Progress = lambda line: None,
) -> BuildResult:
    """Build the image of the project at `project_dir` (and push it): SpecError for an invalid project,
    UserInputError for a bad reference or wheelhouse, WheelhouseError or EngineError when a step fails.
    """
    started = time.monotonic()
    if push and tag is None:
        raise UserInputError(
            "--push needs a --tag that names the registry, e.g. registry.example.com/team/iris:1 "
            "(the default tag, <first API>:<digest>, names none)"
        )
    project = load_project(project_dir)
    reference = check_reference(tag if tag is not None else default_tag(project), option="--tag")
    check_reference(base_image, option="--base-image")
    names = tuple(api.name for api in project.apis)
    progress(f"project {project.root} ({project.spec_file.name}): APIs {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="modelport-build-") as scratch:
        context = prepare_context(
            project,
            destination=Path(scratch),
            base_image=base_image,
            wheelhouse=wheelhouse,
            requirements=requirements,
            progress=progress,
        )
        progress(f"building {reference} from {base_image} with {engine.name}")
        # Offline unless the requirements come from the index: proof that the wheels hold everything.
        offline = requirements == RequirementsSource.WHEELHOUSE
        engine.build(context.root, context.containerfile, tag=reference, offline=offline, progress=progress)
    image_id = engine.image_id(reference)
    if push:
        progress(f"pushing {reference} with {engine.name}")
        engine.push(reference, progress=progress)
    return BuildResult(
        reference=reference,
        image_id=image_id,
        engine=engine.name,
        apis=names,
        default_api=default_api(project),
        pushed=push,
        containerfile=context.text,
        seconds=time.monotonic() - started,
    )


def prepare_context(
    project: Project,
    *,
    destination: Path,
    base_image: str = DEFAULT_BASE_IMAGE,
    wheelhouse: Path | None = None,
    requirements: RequirementsSource = RequirementsSource.WHEELHOUSE,
    progress: Progress = lambda line: None,
) -> PreparedContext:
    """Stage the build context of `project` in the empty folder `destination` and write its Containerfile.

    Without `wheelhouse`, `pip wheel` makes the wheels here, with this interpreter (so the base image must
    run the same Python minor version, which the build checks first).
    """
    paths = ContextPaths()
    files = tuple(project_files(project.root, spec_file=project.spec_file))
    has_requirements = REQUIREMENTS_FILE in files
    _copy_tree(project.root, [*files, project.spec_file.relative_to(project.root)], destination / paths.app)
    specs = destination / paths.specs
    specs.mkdir(parents=True)
    for api in project.apis:
        (specs / f"{api.name}.json").write_text(api.model_dump_json())
    if has_requirements:
        shutil.copyfile(project.root / REQUIREMENTS_FILE, destination / REQUIREMENTS_FILE)
    modelport_wheels = destination / paths.modelport_wheels
    project_wheels = destination / paths.project_wheels
    project_wheels.mkdir(parents=True)  # the requirements layer mounts it, even empty
    python: tuple[int, int] | None = None
    if wheelhouse is not None:
        count = copy_wheelhouse(wheelhouse, destination=modelport_wheels)
        progress(f"using the wheelhouse {wheelhouse} ({count} files)")
    else:
        source = modelport_source()
        progress(f"making the wheels of modelport ({source}) and its dependencies with pip wheel")
        make_wheels([source], destination=modelport_wheels, cwd=project.root, progress=progress)
        if has_requirements and requirements == RequirementsSource.WHEELHOUSE:
            progress(f"making the wheels of {REQUIREMENTS_FILE} with pip wheel")
            make_wheels(
                ["-r", str(project.root / REQUIREMENTS_FILE)],
                destination=project_wheels,
                find_links=[modelport_wheels],
                cwd=project.root,
                progress=progress,
            )
            remove_duplicates(project_wheels, of=modelport_wheels)
        python = (sys.version_info.major, sys.version_info.minor)
    source_spec = ModelportSource(
        modelport_wheels_digest=wheels_digest(modelport_wheels),
        project_wheels_digest=wheels_digest(project_wheels),
        python=python,
        requirements=requirements,
    )
    text = render_containerfile(
        project, base_image=base_image, modelport_source=source_spec, files=files, paths=paths
    )
    containerfile = destination / CONTAINERFILE_NAME
    containerfile.write_text(text)
    return PreparedContext(
        root=destination, containerfile=containerfile, text=text, source=source_spec, files=files
    )


def _copy_tree(root: Path, files: list[Path], destination: Path) -> None:
    """Copy `files` (relative to `root`) under `destination`, readable by any user (the image's user is
    not the files' owner): folders 755, files 644, or 755 when executable.
    """
    destination.mkdir(parents=True, exist_ok=True)
    os.chmod(destination, 0o755)
    for relative in files:
        target = destination / relative
        for folder in reversed(target.relative_to(destination).parents[:-1]):
            (destination / folder).mkdir(exist_ok=True)
            os.chmod(destination / folder, 0o755)
        shutil.copyfile(root / relative, target)
        executable = os.stat(root / relative).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.chmod(target, 0o755 if executable else 0o644)
