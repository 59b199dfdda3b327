"""The project image end to end: `modelport build` of the iris example with a real engine, on a Debian base
made by mmdebstrap or debootstrap, then the image run with podman (or docker) on loopback ports and asked for
predictions.

Slow: the base (made once per machine when MODELPORT_TEST_BASE_CACHE names a folder, and reused while the
engine still holds it) and pip inside the build take most of it. CI installs podman, buildah, runc and
mmdebstrap (.ci/run); the test is skipped only when no container engine is installed. No network is needed
past the machine's package index (pip wheel) and Debian mirror (the base): the build itself is offline.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelport.errors import UserInputError
from modelport.images.engines import ContainerEngine, EngineError, EngineName, detect_engine
from tests.integration.conftest import EXAMPLES
from tests.support import HttpReply, free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

BASE_IMAGE = "localhost/modelport-test-base:bookworm-python3-1"  # bump the suffix when the recipe changes
DEBIAN_PACKAGES = "python3,python3-venv"  # Python 3.11, as CI's: the wheels are made by this interpreter
PODMAN_DEFAULT_NOFILE = 1048576
SAMPLE = (EXAMPLES / "iris-classifier" / "sample.json").read_bytes()
VERSICOLOR = json.dumps({"sepal_length": 6.0, "sepal_width": 2.7, "petal_length": 4.2, "petal_width": 1.3})


@dataclass(frozen=True)
class Runner:
    """The program that runs containers: podman (it also runs what buildah builds), or docker."""

    executable: str

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check:
            assert done.returncode == 0, f"{self.executable} {' '.join(args)}: {done.stderr}"
        return done


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerEngine]:
    with pytest.MonkeyPatch.context() as patch:
        try:
            found = detect_engine(None)
        except UserInputError as exc:
            pytest.skip(f"no container engine installed (.ci/run installs podman and buildah): {exc}")
        if found.name != EngineName.DOCKER:
            _containers_conf(patch, folder=tmp_path_factory.mktemp("containers"))
        yield found


@pytest.fixture(scope="module")
def runner(engine: ContainerEngine) -> Runner:
    name = "docker" if engine.name == EngineName.DOCKER else "podman"
    executable = shutil.which(name)
    if executable is None:
        pytest.skip(f"{engine.name} builds images but cannot run them: install podman to run this test")
    return Runner(executable)


def _containers_conf(patch: pytest.MonkeyPatch, *, folder: Path) -> None:
    """Where podman's default ulimits exceed the hard limits (CI's machines: nofile 20000), give podman the
    containers.conf that .ci/run writes, unless CONTAINERS_CONF already names one.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if "CONTAINERS_CONF" in os.environ or nofile >= PODMAN_DEFAULT_NOFILE:
        return
    conf = folder / "containers.conf"
    runtime = '[engine]\nruntime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n{runtime}'
    )
    patch.setenv("CONTAINERS_CONF", str(conf))


@pytest.fixture(scope="module")
def base_image(engine: ContainerEngine, runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm image with python3 and venv (no registry needed): the engine's copy if it still
    has one, else the cached rootfs tarball, else a new one (30 to 60 s).
    """
    if engine.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    cache = Path(os.environ.get("MODELPORT_TEST_BASE_CACHE") or tmp_path_factory.mktemp("base-cache"))
    tarball = cache / f"{BASE_IMAGE.rsplit(':', 1)[1]}.tar"
    if not tarball.is_file():
        _make_rootfs(tarball, scratch=tmp_path_factory.mktemp("rootfs"))
    started = time.monotonic()
    runner("import", str(tarball), BASE_IMAGE, timeout=300)
    print(f"imported {BASE_IMAGE} in {time.monotonic() - started:.1f} s")
    return BASE_IMAGE


def _make_rootfs(tarball: Path, *, scratch: Path) -> None:
    """A Debian bookworm rootfs with python3 and venv, as a tarball: mmdebstrap (about a third faster,
    and it writes the tarball itself) or debootstrap.
    """
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial")
    started = time.monotonic()
    variant = ["--variant=minbase", f"--include={DEBIAN_PACKAGES}"]
    if mmdebstrap := shutil.which("mmdebstrap"):
        trim = [f"--dpkgopt=path-exclude=/usr/share/{folder}/*" for folder in ("doc", "man", "locale")]
        command = [mmdebstrap, "--quiet", *variant, "--dpkgopt=force-unsafe-io", *trim, "--format=tar"]
        _bootstrap([*command, "bookworm", str(partial)])
    elif debootstrap := shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin"):
        root = scratch / "bookworm"
        _bootstrap([debootstrap, *variant, "bookworm", str(root)])
        for unneeded in ["usr/share/doc", "usr/share/man", "usr/share/locale", "var/lib/apt/lists"]:
            shutil.rmtree(root / unneeded, ignore_errors=True)  # a smaller tarball, a quicker import
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=300)
        shutil.rmtree(root, ignore_errors=True)
    else:
        pytest.fail(
            "neither mmdebstrap nor debootstrap is installed: `apt-get install mmdebstrap` (.ci/run does)"
        )
    partial.rename(tarball)
    print(f"made {tarball} in {time.monotonic() - started:.1f} s")


def _bootstrap(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    output = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, f"{command[0]} (it needs root and a Debian mirror) failed:\n{output}"


@pytest.fixture(scope="module")
def iris_image(engine: ContainerEngine, runner: Runner, base_image: str, iris_project: Path) -> Iterator[str]:
    """The iris example's image, built by `modelport build` in a subprocess."""
    tag = f"localhost/modelport-test-iris:{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "modelport", "build", str(iris_project), "--tag", tag,
         "--base-image", base_image, "--engine", engine.name],
        capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    print(f"built {tag} in {time.monotonic() - started:.1f} s")
    assert done.stdout == f"{tag}\n"  # only the reference on stdout: IMAGE=$(modelport build) works
    assert "making the wheels of modelport" in done.stderr
    try:
        yield tag
    finally:
        runner("rmi", tag, check=False)


def http(url: str, body: bytes | None = None) -> HttpReply:
    headers = {"content-type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return HttpReply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, dict(exc.headers), exc.read())


@contextmanager
def container(
    runner: Runner,
    image: str,
    *,
    port: int,
    options: tuple[str, ...] = (),
    command: tuple[str, ...] = (),
) -> Iterator[str]:
    """A container of `image` publishing its port 8080 on 127.0.0.1:`port`, ready; removed by its id."""
    publish = ("--publish", f"127.0.0.1:{port}:8080")
    container_id = runner("run", "--detach", *publish, *options, image, *command).stdout.strip()
    try:

        def ready() -> bool:
            try:
                return http(f"http://127.0.0.1:{port}/readyz").status == 200
            except OSError:  # not listening yet, or the published port is not wired yet
                state = runner("inspect", "--format", "{{.State.Running}}", container_id).stdout.strip()
                assert state == "true", runner("logs", container_id).stderr
                return False

        wait_until(ready, message=f"container {container_id[:12]} ready", timeout=90, interval=0.2)
        yield container_id
    finally:
        runner("rm", "--force", container_id, check=False)


def test_the_image_serves_the_iris_api_and_drains_on_stop(runner: Runner, iris_image: str) -> None:
    config = json.loads(runner("image", "inspect", "--format", "{{json .Config}}", iris_image).stdout)
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/app"
    assert "8080/tcp" in config["ExposedPorts"]
    assert config["Cmd"] == ["--spec", "/etc/modelport/iris-classifier.json"]
    assert config["Labels"]["dev.modelport.default-api"] == "iris-classifier"
    assert not config.get("Healthcheck")

    port = free_port()
    with container(runner, iris_image, port=port) as container_id:
        reply = http(f"http://127.0.0.1:{port}/predict", SAMPLE)
        assert (reply.status, reply.body) == (200, b"setosa")
        assert http(f"http://127.0.0.1:{port}/healthz").status == 200
        user = runner("exec", container_id, "id", "-u").stdout.strip()
        assert user == "1000"
        started = time.monotonic()
        runner("stop", "--time", "20", container_id)
        assert time.monotonic() - started < 15  # drained on SIGTERM, not killed at the deadline
        exit_code = runner("inspect", "--format", "{{.State.ExitCode}}", container_id).stdout.strip()
        assert exit_code == "0"


def test_two_containers_of_the_image_serve_side_by_side(runner: Runner, iris_image: str) -> None:
    first_port, second_port = free_port(), free_port()
    # The second names its spec and grace as Kubernetes does (a command after the image replaces the CMD),
    # and its replica id.
    second = {
        "options": ("--env", "MODELPORT_REPLICA_ID=second"),
        "command": ("--spec", "/etc/modelport/iris-classifier.json", "--grace", "5"),
    }
    with (
        container(runner, iris_image, port=first_port),
        container(runner, iris_image, port=second_port, **second) as second_id,
    ):
        for port in (first_port, second_port):
            assert http(f"http://127.0.0.1:{port}/predict", SAMPLE).body == b"setosa"
            assert http(f"http://127.0.0.1:{port}/predict", VERSICOLOR.encode()).body == b"versicolor"
            assert json.loads(http(f"http://127.0.0.1:{port}/predict").body)["api"] == "iris-classifier"
        logs = runner("logs", second_id)
        assert "[replica second]" in logs.stdout + logs.stderr


def test_a_push_to_an_unreachable_registry_fails_with_the_fix(
    engine: ContainerEngine, runner: Runner, iris_image: str
) -> None:
    reference = f"127.0.0.1:{free_port()}/iris:1"  # nothing listens there
    runner("tag", iris_image, reference)
    try:
        with pytest.raises(EngineError) as caught:
            engine.push(reference, progress=lambda line: None)
        message = str(caught.value)
        assert f"{engine.name} push of {reference} failed" in message
        assert "fix: the registry cannot be reached" in message
    finally:
        runner("rmi", reference, check=False)
