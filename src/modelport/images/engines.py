"""The container engines modelport drives (docker, podman, buildah): finding one, and building and pushing
images with it through its command line.

Called by `images.build` and the `modelport build` command; `ContainerEngine` is the one seam to the engines,
so that a test or another engine (a remote builder) can stand in for them.
"""

from __future__ import annotations

import collections
import os
import resource
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from modelport.errors import ModelportError, UserInputError

__all__ = [
    "DETECTION_ORDER",
    "CommandLineEngine",
    "ContainerEngine",
    "EngineError",
    "EngineName",
    "HostLimits",
    "Progress",
    "detect_engine",
    "explain_failure",
]

Progress = Callable[[str], None]

_TAIL_LINES = 30  # output lines of a failed engine command that its error shows
_DAEMON_TIMEOUT_SECONDS = 20.0
_QUERY_TIMEOUT_SECONDS = 60.0
_PODMAN_NPROC_CEILING = 32768  # podman lowers its own RLIMIT_NPROC to this before it starts a container
# What engines print when a registry cannot be reached, or refuses the credentials.
_UNREACHABLE = ("pinging container registry", "connection refused", "no such host")
_REFUSED = ("unauthorized", "authentication required", "requested access to the resource is denied")


class EngineName(StrEnum):
    DOCKER = "docker"
    PODMAN = "podman"
    BUILDAH = "buildah"


DETECTION_ORDER = (EngineName.DOCKER, EngineName.PODMAN, EngineName.BUILDAH)

_INSTALL = {
    EngineName.DOCKER: "Docker Engine with its daemon running (`apt-get install docker.io`, or "
    "https://docs.docker.com/engine/install/)",
    EngineName.PODMAN: "`apt-get install podman` (Debian, Ubuntu), `dnf install podman` (Fedora, RHEL), "
    "`brew install podman` (macOS)",
    EngineName.BUILDAH: "`apt-get install buildah` or `dnf install buildah` (it builds images; running them "
    "needs podman or docker)",
}


class EngineError(ModelportError):
    """An engine command failed; the message holds its last output lines and the fix when one is known."""


class ContainerEngine(Protocol):
    """What modelport asks of a container engine: build an image from a context, push it, look it up."""

    @property
    def name(self) -> EngineName: ...

    def build(
        self, context: Path, containerfile: Path, *, tag: str, offline: bool, progress: Progress
    ) -> None:
        """Build `containerfile` from the build context `context`, tagged `tag` (with no network in its
        RUN steps when `offline`); EngineError if it fails.
        """
        ...

    def push(self, reference: str, *, progress: Progress) -> None:
        """Push the local image `reference` to its registry; EngineError if it fails."""
        ...

    def image_exists(self, reference: str) -> bool: ...

    def image_id(self, reference: str) -> str:
        """The local image's id (sha256:...); EngineError if there is no such image."""
        ...


@dataclass(frozen=True, slots=True)
class HostLimits:
    """This machine's hard limits, which a container's ulimits may not exceed (none may raise them)."""

    nofile: int
    nproc: int

    @classmethod
    def current(cls) -> HostLimits:
        return cls(nofile=_hard_limit(resource.RLIMIT_NOFILE), nproc=_hard_limit(resource.RLIMIT_NPROC))


@dataclass(frozen=True, slots=True)
class CommandLineEngine:
    """An engine driven through its command line (`executable` is the program found on PATH)."""

    name: EngineName
    executable: str

    def build(
        self, context: Path, containerfile: Path, *, tag: str, offline: bool, progress: Progress
    ) -> None:
        verb = ["bud", "--layers"] if self.name == EngineName.BUILDAH else ["build"]
        network = ["--network", "none"] if offline else []
        args = [*verb, *network, "--file", str(containerfile), "--tag", tag, str(context)]
        # The Containerfile bind-mounts the wheels (RUN --mount): docker needs BuildKit for that.
        env = {"DOCKER_BUILDKIT": "1"} if self.name == EngineName.DOCKER else {}
        self._stream(args, action=f"{self.name} build of {tag}", progress=progress, env=env)

    def push(self, reference: str, *, progress: Progress) -> None:
        self._stream(["push", reference], action=f"{self.name} push of {reference}", progress=progress)

    def image_exists(self, reference: str) -> bool:
        return self._query(self._inspect_args(reference)).returncode == 0

    def image_id(self, reference: str) -> str:
        field = "{{.FromImageID}}" if self.name == EngineName.BUILDAH else "{{.Id}}"
        result = self._query(self._inspect_args(reference, "--format", field))
        if result.returncode != 0 or not result.stdout.strip():
            raise EngineError(f"{self.name} has no image {reference}: {result.stderr.strip()}")
        image_id = result.stdout.strip().splitlines()[0]
        return image_id if ":" in image_id else f"sha256:{image_id}"

    def _inspect_args(self, reference: str, *options: str) -> list[str]:
        if self.name == EngineName.BUILDAH:  # buildah takes no option after the name
            return ["inspect", "--type", "image", *options, reference]
        return ["image", "inspect", *options, reference]

    def _query(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.executable, *args],
                capture_output=True,
                text=True,
                timeout=_QUERY_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EngineError(f"cannot run {self.executable}: {exc}") from None

    def _stream(
        self, args: Sequence[str], *, action: str, progress: Progress, env: dict[str, str] | None = None
    ) -> None:
        """Run the engine, handing each output line to `progress`; EngineError with the fix if it fails."""
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        try:
            process = subprocess.Popen(
                [self.executable, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env={**os.environ, **(env or {})},
            )
        except OSError as exc:
            raise EngineError(f"cannot run {self.executable}: {exc.strerror}") from None
        assert process.stdout is not None
        with process:
            for raw in process.stdout:
                line = raw.rstrip()
                tail.append(line)
                progress(line)
        if process.returncode != 0:
            raise EngineError(
                explain_failure(
                    self.name,
                    action=action,
                    returncode=process.returncode,
                    output=list(tail),
                    limits=HostLimits.current(),
                    containers_conf=os.environ.get("CONTAINERS_CONF"),
                )
            )


def detect_engine(preferred: str | None = None, *, search_path: str | None = None) -> ContainerEngine:
    """The engine named `preferred`, or the first of docker, podman, buildah that works here.

    docker counts only when its daemon answers. UserInputError naming each engine, why it cannot be used
    and how to install one, when none can. `search_path` replaces PATH for the search.
    """
    if preferred is not None and preferred not in EngineName.__members__.values():
        choices = ", ".join(DETECTION_ORDER)
        raise UserInputError(f"--engine: expected one of {choices}, got {preferred!r}")
    candidates = [EngineName(preferred)] if preferred is not None else list(DETECTION_ORDER)
    reasons: list[str] = []
    for name in candidates:
        executable = shutil.which(name.value, path=search_path)
        if executable is None:
            reasons.append(f"{name}: not installed (not on PATH); install: {_INSTALL[name]}")
            continue
        if name == EngineName.DOCKER:
            problem = _docker_daemon_problem(executable)
            if problem is not None:
                reasons.append(f"docker: installed at {executable}, but {problem}")
                continue
        return CommandLineEngine(name=name, executable=executable)
    if preferred is not None:
        raise UserInputError(f"--engine {preferred} cannot build images here: {reasons[0]}")
    listed = "\n".join(f"  {reason}" for reason in reasons)
    raise UserInputError(
        "no container engine to build the image with; modelport build drives docker, podman or buildah:\n"
        f"{listed}\ninstall one of them, then run modelport build again (--engine chooses among several)"
    )


def explain_failure(
    engine: EngineName,
    *,
    action: str,
    returncode: int,
    output: Sequence[str],
    limits: HostLimits,
    containers_conf: str | None,
) -> str:
    """The message of a failed engine command: its last output lines, then each fix that its output calls
    for (pure, so that the known failures can be checked one by one).
    """
    shown = "\n".join(f"  {line}" for line in output if line.strip())
    fixes = _fixes("\n".join(output), engine=engine, limits=limits, containers_conf=containers_conf)
    message = f"{action} failed (exit {returncode}); its last lines:\n{shown}"
    return "\n".join([message, *(f"fix: {fix}" for fix in fixes)])


def _fixes(text: str, *, engine: EngineName, limits: HostLimits, containers_conf: str | None) -> list[str]:
    fixes: list[str] = []
    lowered = text.lower()
    rlimit = "rlimit" in lowered and ("operation not permitted" in lowered or "permission denied" in lowered)
    hybrid = "cgroups in hybrid mode not supported" in lowered
    if engine in (EngineName.PODMAN, EngineName.BUILDAH) and (rlimit or hybrid):
        nproc = min(limits.nproc, _PODMAN_NPROC_CEILING)
        reasons = []
        if rlimit:
            reasons.append(
                f"its default ulimits exceed this machine's hard limits (nofile {limits.nofile}, nproc "
                f"{limits.nproc}), which no process here may raise"
            )
        if hybrid:
            reasons.append("crun does not run containers on hybrid (v1 + v2) cgroups, runc does")
        where = (
            f"add these lines to {containers_conf} (CONTAINERS_CONF)"
            if containers_conf
            else "write them to a file and `export CONTAINERS_CONF=/path/to/that/file`"
        )
        fixes.append(
            f"{engine}'s OCI runtime cannot start the build's containers: {'; '.join(reasons)}. "
            f"Install runc (`apt-get install runc`) and {where}: [containers] default_ulimits = "
            f'["nofile={limits.nofile}:{limits.nofile}", "nproc={nproc}:{nproc}"] and [engine] '
            'runtime = "runc"'
        )
    if (
        "python3: not found" in lowered
        or "python3: command not found" in lowered
        or ("executable file" in lowered and "python3" in lowered)
    ):
        fixes.append(
            "the base image has no python3: choose a --base-image with Python >= 3.11 and venv, "
            "e.g. python:3.11-slim"
        )
    if "ensurepip is not available" in lowered or "no module named venv" in lowered:
        fixes.append(
            "the base image's Python cannot make virtualenvs: install python3-venv in it (Debian, Ubuntu) "
            "or choose python:3.11-slim as --base-image"
        )
    if "useradd: not found" in lowered or "useradd: command not found" in lowered:
        fixes.append("the base image has no useradd: choose a Debian- or Ubuntu-based --base-image")
    if "no matching distribution found for" in lowered:
        fixes.append(
            "pip found no wheel for a package in the wheelhouse: add it (`pip wheel --wheel-dir DIR "
            "PACKAGE`, run with the base image's Python version) or let modelport build make the wheels "
            "(leave out --wheelhouse)"
        )
    if "certificate verify failed" in lowered:
        fixes.append(
            "pip in the build does not trust this network's TLS certificates (a proxy's own CA?): leave out "
            "--requirements-from-index, so that the wheels are made here and the build needs no network"
        )
    if engine == EngineName.DOCKER and (
        "requires buildkit" in lowered or "buildx component is missing" in lowered
    ):
        fixes.append(
            "docker builds this Containerfile with BuildKit (RUN --mount): install the buildx plugin "
            "(`apt-get install docker-buildx`, or docker-buildx-plugin from Docker's repository), "
            "or build with --engine podman"
        )
    if "short-name" in lowered or (
        "initializing source" in lowered or "pull access denied" in lowered or "manifest unknown" in lowered
    ):
        fixes.append(
            f"{engine} could not fetch the base image: pull it first (`{engine} pull IMAGE`), give its full "
            "name (docker.io/library/python:3.11-slim), or name an image this machine has with --base-image"
        )
    if any(words in lowered for words in _UNREACHABLE):
        fixes.append(
            "the registry cannot be reached: check the registry host and port in the reference, and the "
            "network (a registry on plain HTTP must be listed as insecure in the engine's configuration)"
        )
    if any(words in lowered for words in _REFUSED):
        fixes.append(f"the registry refused the credentials: log in with `{engine} login REGISTRY` first")
    return fixes


def _docker_daemon_problem(executable: str) -> str | None:
    try:
        result = subprocess.run(
            [executable, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=_DAEMON_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"its daemon did not answer within {_DAEMON_TIMEOUT_SECONDS:.0f} s"
    except OSError as exc:
        return f"it cannot run: {exc.strerror}"
    if result.returncode == 0:
        return None
    said = next((line for line in result.stderr.splitlines() if line.strip()), "no reason given")
    return f"its daemon does not answer ({said.strip()}): start it (`systemctl start docker`)"


def _hard_limit(which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20
