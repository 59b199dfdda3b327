"""The Containerfile of a project's image and the layout of its build context: pure text, no I/O.

Called by `images.build` (which stages the context this text expects) and by the tests; the image runs one
replica of one API (`python -m modelport replica`), as the Kubernetes manifests (modelport.manifests) expect.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.errors import UserInputError
from modelport.types import ApiKind
from modelport.version import __version__

if TYPE_CHECKING:  # the CLI reads this module's constants without loading the spec (and pydantic)
    from modelport.spec.load import Project

__all__ = [
    "APP_DIR",
    "CONTAINERFILE_NAME",
    "DEFAULT_BASE_IMAGE",
    "IMAGE_PORT",
    "IMAGE_UID",
    "SPEC_DIR",
    "VENV_DIR",
    "ContextPaths",
    "ModelportSource",
    "RequirementsSource",
    "check_reference",
    "default_api",
    "project_digest",
    "render_containerfile",
    "spec_path",
]

DEFAULT_BASE_IMAGE = "python:3.11-slim"
MIN_PYTHON = (3, 11)
APP_DIR = "/app"  # the project's files (manifests.layout.PROJECT_DIR)
SPEC_DIR = "/etc/modelport"  # one resolved spec per API; Kubernetes mounts its ConfigMap here instead
VENV_DIR = "/opt/modelport"  # modelport, its dependencies and the requirements; its bin/ leads PATH
IMAGE_PORT = 8080  # manifests.layout.REPLICA_PORT
IMAGE_UID = 1000  # manifests.layout.RUN_AS_USER
REQUIREMENTS_FILE = Path("requirements.txt")
CONTAINERFILE_NAME = "Containerfile"
_SERVED_KINDS = frozenset({ApiKind.REALTIME, ApiKind.ASYNC})  # the kinds `modelport replica` serves

# The replica needs an id; Kubernetes passes the pod's name, `docker run` gets the container's hostname.
_ENTRYPOINT_SCRIPT = (
    f"exec {VENV_DIR}/bin/python -m modelport replica --project-dir {APP_DIR} --host 0.0.0.0 "
    f'--port {IMAGE_PORT} --replica-id "${{MODELPORT_REPLICA_ID:-${{HOSTNAME:-replica}}}}" "$@"'
)

# A reference as `docker tag` accepts it: [host[:port]/]path[:tag][@digest], the path in lower case.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::\d+)?/)"
_REFERENCE = re.compile(
    rf"{_HOST}?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)


class RequirementsSource(StrEnum):
    """Where the image's pip finds the packages of the project's requirements.txt."""

    WHEELHOUSE = "wheelhouse"  # wheels in the build context: the build needs no network
    INDEX = "index"  # the package index, during the build: the build needs the network (and its TLS)


@dataclass(frozen=True, slots=True)
class ContextPaths:
    """Folders of the build context, relative to it, that `images.build` fills and the Containerfile reads."""

    app: str = "app"  # the project's files (ignore files honoured) and its spec file
    specs: str = "specs"  # <api>.json: each API's resolved spec
    modelport_wheels: str = "wheels/modelport"  # modelport and its dependencies (or the user's wheelhouse)
    project_wheels: str = "wheels/project"  # the requirements' wheels that the first folder lacks


@dataclass(frozen=True, slots=True)
class ModelportSource:
    """How the image gets modelport and the requirements: always from wheels in the build context.

    The digests go into the install commands' text, so that an engine's layer cache re-runs an install
    exactly when its wheels changed (engines key RUN layers on the instruction's text, not on the files
    a RUN bind-mounts). `python` is the interpreter the wheels were made for (`pip wheel` on this machine):
    the base image must run the same minor version, or binary wheels would not install.
    """

    modelport_wheels_digest: str
    project_wheels_digest: str = ""
    python: tuple[int, int] | None = None
    requirements: RequirementsSource = RequirementsSource.WHEELHOUSE
    # With the extra the in-cluster controller needs (images/wheelhouse.py IMAGE_EXTRAS).
    requirement: str = f"modelport[kubernetes]=={__version__}"


def default_api(project: Project) -> str:
    """The API that `docker run IMAGE` serves: the first one served by replicas (realtime or async), else
    the first (batch and task APIs run `modelport worker` as the command Kubernetes gives their Jobs).
    """
    served = [api.name for api in project.apis if api.kind in _SERVED_KINDS]
    return served[0] if served else project.apis[0].name


def spec_path(api: str) -> str:
    """Where the image holds an API's resolved spec (what `--spec` names)."""
    return f"{SPEC_DIR}/{api}.json"


def project_digest(project: Project) -> str:
    """12 hex chars that change when any API's resolved spec or any project file changes."""
    revisions = "\n".join(f"{api.name}={project.revision(api.name)}" for api in project.apis)
    return hashlib.sha256(revisions.encode()).hexdigest()[:12]


def check_reference(reference: str, *, option: str) -> str:
    """`reference` if it is an image reference an engine accepts; UserInputError naming `option` if not."""
    if not _REFERENCE.fullmatch(reference) or len(reference) > 255:
        raise UserInputError(
            f"{option}: {reference!r} is not an image reference: expected [registry[:port]/]name[:tag] "
            "with a lower-case name, e.g. python:3.11-slim or registry.example.com/team/iris:1"
        )
    return reference


def render_containerfile(
    project: Project,
    *,
    base_image: str,
    modelport_source: ModelportSource,
    files: Sequence[Path],
    paths: ContextPaths = ContextPaths(),
) -> str:
    """The Containerfile of `project`'s image, from the least to the most often changed layer.

    `files` are the project's files as `spec.load.project_files` lists them (they are what the context's
    app folder holds); requirements.txt gets its own install layer when it is one of them. `docker run IMAGE`
    serves `default_api(project)`; `--spec /etc/modelport/<api>.json` as the command serves another.
    """
    check_reference(base_image, option="--base-image")
    apis = [api.name for api in project.apis]
    source = modelport_source
    lines = [
        f"# The image of the modelport project {project.root.name!r}: APIs {', '.join(apis)}.",
        f"# Generated by modelport {__version__} (`modelport build`); its build context holds the project",
        f"# ({paths.app}/), each API's resolved spec ({paths.specs}/) and the wheels pip installs (wheels/).",
        f"FROM {base_image}",
        "",
        "ENV PYTHONUNBUFFERED=1 \\",
        "    PYTHONDONTWRITEBYTECODE=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    PIP_NO_CACHE_DIR=1 \\",
        "    PIP_ROOT_USER_ACTION=ignore \\",
        "    HOME=/home/modelport \\",
        f"    PATH={VENV_DIR}/bin:$PATH",
        "",
        f"# Python >= {_dotted(MIN_PYTHON)} with venv, modelport's virtualenv, and the user replicas run as.",
        f"RUN python3 -c {_shell_quote(_python_check(source.python))} \\",
        f"    && python3 -m venv {VENV_DIR} \\",
        f"    && {{ id -u {IMAGE_UID} >/dev/null 2>&1 || useradd --uid {IMAGE_UID} --user-group "
        "--no-create-home --shell /usr/sbin/nologin modelport; } \\",
        f"    && mkdir -p /home/modelport && chown {IMAGE_UID}:{IMAGE_UID} /home/modelport",
        "",
        f"# modelport and its dependencies, from the wheels (wheelhouse {source.modelport_wheels_digest}).",
        f"RUN --mount=type=bind,source={paths.modelport_wheels},target=/wheels/modelport \\",
        f"    WHEELHOUSE={source.modelport_wheels_digest} {VENV_DIR}/bin/pip install --no-index \\",
        f"    --find-links /wheels/modelport {_shell_quote(source.requirement)}",
    ]
    if REQUIREMENTS_FILE in files:
        lines += ["", *_requirements_layer(source, paths=paths)]
    lines += [
        "",
        "# Each API's resolved spec (what `modelport replica --spec` reads), then the project's files.",
        f"COPY {paths.specs}/ {SPEC_DIR}/",
        f"COPY {paths.app}/ {APP_DIR}/",
        f"WORKDIR {APP_DIR}",
        f"USER {IMAGE_UID}:{IMAGE_UID}",
        f"EXPOSE {IMAGE_PORT}",
        "# No HEALTHCHECK: Kubernetes probes GET /readyz and GET /healthz.",
        f"ENTRYPOINT {_json_array(['/bin/sh', '-c', _ENTRYPOINT_SCRIPT, 'modelport-replica'])}",
        f"CMD {_json_array(['--spec', spec_path(default_api(project))])}",
        "",
        *_labels(project, base_image=base_image),
        "",
    ]
    return "\n".join(lines)


def _requirements_layer(source: ModelportSource, *, paths: ContextPaths) -> list[str]:
    target = f"{VENV_DIR}/requirements.txt"
    if source.requirements == RequirementsSource.INDEX:
        pip = f"{VENV_DIR}/bin/pip install --find-links /wheels/modelport -r {target}"
        comment = "# The project's requirements.txt, from the package index (the build needs the network)."
    else:
        pip = (
            f"WHEELHOUSE={source.project_wheels_digest} {VENV_DIR}/bin/pip install --no-index "
            f"--find-links /wheels/modelport --find-links /wheels/project -r {target}"
        )
        digest = source.project_wheels_digest
        comment = f"# The project's requirements.txt, from the wheels (wheelhouse {digest})."
    return [
        comment,
        f"COPY {REQUIREMENTS_FILE.as_posix()} {target}",
        f"RUN --mount=type=bind,source={paths.modelport_wheels},target=/wheels/modelport \\",
        f"    --mount=type=bind,source={paths.project_wheels},target=/wheels/project \\",
        f"    {pip}",
    ]


def _python_check(wheels_python: tuple[int, int] | None) -> str:
    """A Python one-liner that exits with the fix when the base image's Python cannot run the wheels."""
    minimum = _dotted(MIN_PYTHON)
    check = (
        "import sys; v = sys.version_info[:2]; "
        f'sys.exit("modelport needs Python >= {minimum}; the base image has Python %d.%d: choose another '
        f'--base-image, e.g. {DEFAULT_BASE_IMAGE}" % v) if v < {MIN_PYTHON!r} else None'
    )
    if wheels_python is not None:
        made_for = _dotted(wheels_python)
        check += (
            f'; sys.exit("the wheelhouse was made for Python {made_for} (the Python that ran '
            "modelport build); the base image has Python %d.%d: choose a --base-image with Python "
            f'{made_for}, e.g. python:{made_for}-slim, or pass --wheelhouse with wheels for it" % v) '
            f"if v != {wheels_python!r} else None"
        )
    return check


def _labels(project: Project, *, base_image: str) -> list[str]:
    apis = ",".join(api.name for api in project.apis)
    labels = {
        "org.opencontainers.image.title": project.root.name,
        "org.opencontainers.image.description": f"modelport APIs: {apis}",
        "org.opencontainers.image.revision": project_digest(project),
        "org.opencontainers.image.base.name": base_image,
        "dev.modelport.version": __version__,
        "dev.modelport.apis": apis,
        "dev.modelport.default-api": default_api(project),
    }
    pairs = [f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in labels.items()]
    return ["LABEL " + " \\\n      ".join(pairs)]


def _json_array(words: Sequence[str]) -> str:
    return json.dumps(list(words), ensure_ascii=False)


def _shell_quote(text: str) -> str:
    """Single-quote `text` for /bin/sh (a quote inside becomes '"'"')."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(str(part) for part in version)
