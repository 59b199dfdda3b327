"""The wheels an image installs offline: made on this machine with `pip wheel`, or given by the user.

Called by `images.build` before the image build, so that the build itself needs no network (a container
build often has none, or no way through a TLS-intercepting proxy that only the host trusts).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelport.errors import ModelportError, UserInputError
from modelport.version import __version__

__all__ = [
    "Progress",
    "WheelhouseError",
    "copy_wheelhouse",
    "make_wheels",
    "modelport_source",
    "remove_duplicates",
    "wheels_digest",
]

Progress = Callable[[str], None]
_TAIL_LINES = 25


class WheelhouseError(ModelportError):
    """`pip wheel` could not make the wheels (no network and no cache, a requirement that does not exist)."""


# Every image can also run the in-cluster controller (`modelport cluster run --backend kubernetes`), which
# needs the Kubernetes client: the images install modelport with this extra.
IMAGE_EXTRAS = "[kubernetes]"


def modelport_source() -> str:
    """What `pip wheel` builds modelport from, with the image's extras: the source tree it runs from when
    there is one, else the release of this version (`modelport[kubernetes]==X` from the package index).
    """
    try:
        direct_url = importlib.metadata.distribution("modelport").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        direct_url = None
    if direct_url:  # PEP 610: an editable or local-folder install names its source
        url = urlparse(json.loads(direct_url).get("url", ""))
        if url.scheme == "file" and _is_modelport_tree(Path(unquote(url.path))):
            return unquote(url.path) + IMAGE_EXTRAS
    tree = Path(__file__).resolve().parents[3]  # src/modelport/images/wheelhouse.py -> the repository
    if _is_modelport_tree(tree):
        return str(tree) + IMAGE_EXTRAS
    return f"modelport{IMAGE_EXTRAS}=={__version__}"


def make_wheels(
    requirements: Sequence[str],
    *,
    destination: Path,
    find_links: Sequence[Path] = (),
    cwd: Path,
    progress: Progress,
) -> None:
    """`pip wheel` of `requirements` (pip's arguments: a folder, `name==version`, or `-r FILE`) into
    `destination`, with this interpreter and pip's own configuration (index, proxy, cache).
    """
    destination.mkdir(parents=True, exist_ok=True)
    links = [arg for folder in find_links for arg in ("--find-links", str(folder))]
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(destination),
        *links,
        *requirements,
    ]
    progress(f"pip wheel {' '.join(requirements)}")
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise WheelhouseError(f"cannot run pip ({sys.executable} -m pip): {exc.strerror}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        tail = "\n".join(f"  {line}" for line in lines[-_TAIL_LINES:])
        raise WheelhouseError(
            f"pip could not make the wheels of {' '.join(requirements)} (exit {result.returncode}):\n{tail}\n"
            "modelport build makes the image's wheels on this machine, so pip here needs its package index "
            "(or its cache); without one, pass --wheelhouse DIR holding wheels of modelport, its "
            "dependencies and the project's requirements for the base image's Python"
        )


def copy_wheelhouse(source: Path, *, destination: Path) -> int:
    """Copy the user's wheelhouse (wheels and sdists, not subfolders) into `destination`; the file count.

    UserInputError when it is not a folder or holds no modelport wheel.
    """
    if not source.is_dir():
        raise UserInputError(
            f"--wheelhouse {source}: not a folder: give a folder of wheels (pip wheel -w DIR)"
        )
    files = sorted(path for path in source.iterdir() if path.is_file())
    if not any(_distribution_name(path) == "modelport" for path in files):
        raise UserInputError(
            f"--wheelhouse {source}: no modelport wheel in it: add one with "
            f"`pip wheel --wheel-dir {source} 'modelport[kubernetes]=={__version__}'` (or `pip wheel` of "
            "modelport's source folder), with its dependencies and the project's requirements"
        )
    destination.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, destination / path.name)
    return len(files)


def wheels_digest(folder: Path) -> str:
    """12 hex chars over the folder's distributions that ignore the times inside wheels, so that a wheel
    rebuilt from unchanged sources (same files, new timestamps) keeps the digest and the image's cache.
    """
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        if path.suffix == ".whl" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel:
                for member in sorted(wheel.infolist(), key=lambda info: info.filename):
                    digest.update(f"{member.filename}\0{member.CRC:08x}\0{member.file_size}\n".encode())
        else:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def remove_duplicates(folder: Path, *, of: Path) -> None:
    """Delete the files of `folder` that `of` holds under the same name (pip wheel -r re-saves them)."""
    for path in list(folder.iterdir()):
        if path.is_file() and (of / path.name).is_file():
            path.unlink()


def _distribution_name(path: Path) -> str:
    """The normalized project name of a wheel or sdist file name (modelport-0.1.0-py3-none-any.whl)."""
    return path.name.split("-", 1)[0].lower().replace("_", "-").replace(".", "-")


def _is_modelport_tree(path: Path) -> bool:
    pyproject = path / "pyproject.toml"
    if not pyproject.is_file() or not (path / "src" / "modelport").is_dir():
        return False
    try:
        return bool(tomllib.loads(pyproject.read_text()).get("project", {}).get("name") == "modelport")
    except (OSError, ValueError):
        return False
