"""The `modelport build [PATH]` command: the container image of a project (docker, podman or buildah).

Registered on the root group by cli/main.py (`cli.add_command(build)`); the work is modelport.images'.
Progress goes to stderr, the image reference (or `-o json`) to stdout, so `IMAGE=$(modelport build)` works.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from modelport.cli import output
from modelport.cli.failures import fail_cleanly
from modelport.images.containerfile import DEFAULT_BASE_IMAGE, IMAGE_PORT, RequirementsSource
from modelport.images.engines import DETECTION_ORDER, EngineName

if TYPE_CHECKING:  # the build (and the spec, pydantic behind it) loads only when the command runs
    from modelport.images.build import BuildResult

__all__ = ["build"]


@click.command("build")
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option(
    "-t",
    "--tag",
    metavar="REF",
    default=None,
    help="image reference to build, e.g. registry.example.com/team/iris:1 "
    "[default: <first API>:<12 hex chars of the project's content>]",
)
@click.option(
    "--base-image",
    metavar="REF",
    default=DEFAULT_BASE_IMAGE,
    show_default=True,
    help="a Debian- or Ubuntu-based image with Python >= 3.11 and venv; unless --wheelhouse is given, "
    "its Python must be the minor version that runs modelport here (the wheels are made here)",
)
@click.option(
    "--engine",
    type=click.Choice([name.value for name in DETECTION_ORDER]),
    default=None,
    help="container engine [default: the first of docker (with a daemon), podman, buildah found]",
)
@click.option(
    "--wheelhouse",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="folder of wheels of modelport, its dependencies and the project's requirements, for the base "
    "image's Python [default: made here with pip wheel]; the build itself never needs the network",
)
@click.option(
    "--requirements-from-index",
    is_flag=True,
    help="install requirements.txt from the package index during the build (needs network in the build) "
    "instead of from wheels",
)
@click.option("--push", is_flag=True, help="push the image to its registry after the build (log in first)")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["pretty", "json"]),
    default=None,
    help="pretty: the reference on stdout (default); json: the build's details",
)
@click.pass_context
def build(
    ctx: click.Context,
    /,
    path: Path,
    tag: str | None,
    base_image: str,
    engine: str | None,
    wheelhouse: Path | None,
    requirements_from_index: bool,
    push: bool,
    output: str | None,
) -> None:
    """Build the container image of the project in PATH (default .).

    The image runs one replica of the project's first realtime API on port 8080 (`docker run -p
    8080:8080 IMAGE`); `--spec /etc/modelport/<api>.json` as its command serves another API. modelport and
    the requirements come from wheels made here (or --wheelhouse): the build runs without network.
    """
    chosen = output or ctx.find_root().params.get("output")
    _build(
        path=path,
        tag=tag,
        base_image=base_image,
        engine=engine,
        wheelhouse=wheelhouse,
        requirements=RequirementsSource.INDEX if requirements_from_index else RequirementsSource.WHEELHOUSE,
        push=push,
        as_json=chosen == "json",
    )


@fail_cleanly
def _build(
    *,
    path: Path,
    tag: str | None,
    base_image: str,
    engine: str | None,
    wheelhouse: Path | None,
    requirements: RequirementsSource,
    push: bool,
    as_json: bool,
) -> None:
    from modelport.images.build import build_image
    from modelport.images.engines import detect_engine
    from modelport.spec.load import load_project

    load_project(path)  # an invalid project fails (exit 2) before an engine is looked for
    found = detect_engine(engine)
    result = build_image(
        path,
        engine=found,
        tag=tag,
        base_image=base_image,
        wheelhouse=wheelhouse,
        requirements=requirements,
        push=push,
        progress=_progress,
    )
    if as_json:
        output.print_json(_as_json(result))
        return
    runner = "podman" if result.engine == EngineName.BUILDAH else result.engine.value
    pushed = "; pushed" if result.pushed else ""
    output.stderr.print(
        Text(
            f"built {result.reference} ({result.image_id[:19]}) with {result.engine} in "
            f"{result.seconds:.0f} s{pushed}. Run it: {runner} run --rm -p {IMAGE_PORT}:{IMAGE_PORT} "
            f"{result.reference}, then POST to http://localhost:{IMAGE_PORT}/predict"
        )
    )
    sys.stdout.write(result.reference + "\n")
    sys.stdout.flush()


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _as_json(result: BuildResult) -> dict[str, Any]:
    return {
        "image": result.reference,
        "image_id": result.image_id,
        "engine": result.engine.value,
        "apis": list(result.apis),
        "default_api": result.default_api,
        "port": IMAGE_PORT,
        "pushed": result.pushed,
        "seconds": round(result.seconds, 1),
    }
