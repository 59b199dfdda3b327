"""Unit tests of modelport.images: the Containerfile's layers, the staged build context, the wheels' digest,
engine detection (real subprocesses on a PATH of our making) and the fixes named for known engine failures.

Nothing here needs a container engine or the network: the wheelhouse is a folder of wheels made on the spot.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelport.cli.build import build
from modelport.errors import UserInputError
from modelport.images.build import build_image, default_tag, prepare_context
from modelport.images.containerfile import (
    ModelportSource,
    RequirementsSource,
    check_reference,
    render_containerfile,
)
from modelport.images.engines import EngineError, EngineName, HostLimits, detect_engine, explain_failure
from modelport.images.wheelhouse import copy_wheelhouse, wheels_digest
from modelport.spec.load import Project, load_project, project_files
from modelport.spec.model import ApiSpec
from tests.support import IRIS_SPEC, write_files

TWO_APIS = (
    IRIS_SPEC
    + """\
- name: sleep
  kind: RealtimeAPI
  predictor:
    type: python
    path: sleep.py
"""
)
SOURCE = ModelportSource(modelport_wheels_digest="aaaaaaaaaaaa", project_wheels_digest="bbbbbbbbbbbb")
LIMITS = HostLimits(nofile=20000, nproc=96365)


def make_project(root: Path, **files: str) -> Project:
    defaults = {"modelport.yaml": TWO_APIS, "predictor.py": "# iris\n", "sleep.py": "# sleep\n"}
    write_files(root, {**defaults, **files})
    return load_project(root)


def render(project: Project, source: ModelportSource = SOURCE) -> str:
    files = project_files(project.root, spec_file=project.spec_file)
    return render_containerfile(project, base_image="python:3.11-slim", modelport_source=source, files=files)


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword, " ".join(rest.split())))
    return found


def position(steps: list[tuple[str, str]], keyword: str, contains: str = "") -> int:
    matches = [index for index, (word, rest) in enumerate(steps) if word == keyword and contains in rest]
    assert len(matches) == 1, f"{keyword} {contains!r}: {matches} in {steps}"
    return matches[0]


Date = tuple[int, int, int, int, int, int]


def wheel(folder: Path, name: str, files: dict[str, str], *, date: Date = (2020, 1, 1, 0, 0, 0)) -> Path:
    """A wheel-shaped zip (pip is not involved: these tests only copy and digest wheels)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in files.items():
            archive.writestr(zipfile.ZipInfo(member, date_time=date), content)
    return path


# --- the Containerfile -----------------------------------------------------------------------------------


def test_layers_go_from_the_least_to_the_most_often_changed(tmp_path: Path) -> None:
    steps = instructions(render(make_project(tmp_path, **{"requirements.txt": "numpy\n"})))
    order = [
        position(steps, "FROM", "python:3.11-slim"),
        position(steps, "RUN", "python3 -m venv /opt/modelport"),
        position(steps, "RUN", "'modelport[kubernetes]==0.1.0'"),
        position(steps, "COPY", "requirements.txt"),
        position(steps, "RUN", "-r /opt/modelport/requirements.txt"),
        position(steps, "COPY", "specs/ /etc/modelport/"),
        position(steps, "COPY", "app/ /app/"),
        position(steps, "WORKDIR", "/app"),
        position(steps, "USER"),
        position(steps, "ENTRYPOINT"),
        position(steps, "CMD"),
    ]
    assert order == sorted(order)
    assert order[0] == 0
    # Both installs read only the bind-mounted wheels (no index, no network), and name the wheels' digest
    # so that an engine's cache re-runs them when the wheels change.
    modelport = steps[order[2]][1]
    assert "--no-index --find-links /wheels/modelport" in modelport
    assert "--mount=type=bind,source=wheels/modelport,target=/wheels/modelport" in modelport
    assert "WHEELHOUSE=aaaaaaaaaaaa" in modelport
    requirements = steps[order[4]][1]
    assert "--no-index --find-links /wheels/modelport --find-links /wheels/project" in requirements
    assert "WHEELHOUSE=bbbbbbbbbbbb" in requirements
    assert not any(word in {"HEALTHCHECK", "ADD"} for word, _ in steps)


def test_the_image_runs_the_first_api_as_uid_1000_on_port_8080(tmp_path: Path) -> None:
    steps = dict(instructions(render(make_project(tmp_path))))
    assert steps["USER"] == "1000:1000"
    assert steps["EXPOSE"] == "8080"
    assert steps["CMD"] == '["--spec", "/etc/modelport/iris.json"]'
    assert "useradd --uid 1000" in instructions(render(make_project(tmp_path)))[2][1]
    labels = steps["LABEL"]
    assert 'dev.modelport.apis="iris,sleep"' in labels
    assert 'dev.modelport.default-api="iris"' in labels
    assert 'org.opencontainers.image.base.name="python:3.11-slim"' in labels


def test_the_entrypoint_passes_the_command_and_a_replica_id_to_the_replica(tmp_path: Path) -> None:
    """The ENTRYPOINT's shell script, run by a real /bin/sh with `printf` in place of the replica."""
    entrypoint = dict(instructions(render(make_project(tmp_path))))["ENTRYPOINT"]
    shell, flag, script, name = json.loads(entrypoint)
    assert (shell, flag, name) == ("/bin/sh", "-c", "modelport-replica")
    assert script.startswith("exec /opt/modelport/bin/python -m modelport replica ")
    echoing = script.replace("/opt/modelport/bin/python", "printf '%s|'")

    def run(env: dict[str, str]) -> list[str]:
        command = [shell, flag, echoing, name, "--spec", "/etc/modelport/sleep.json"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return done.stdout.split("|")

    args = run({"HOSTNAME": "pod-7", "PATH": os.environ["PATH"]})
    assert args[:-1] == [
        *[
            "-m",
            "modelport",
            "replica",
            "--project-dir",
            "/app",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--replica-id",
            "pod-7",
        ],
        "--spec",
        "/etc/modelport/sleep.json",
    ]
    named = run({"HOSTNAME": "pod-7", "MODELPORT_REPLICA_ID": "r 1", "PATH": os.environ["PATH"]})
    assert named[named.index("--replica-id") + 1] == "r 1"


def test_no_requirements_layer_without_requirements_txt(tmp_path: Path) -> None:
    text = render(make_project(tmp_path))
    assert "requirements.txt" not in text
    assert "/wheels/project" not in text


def test_requirements_from_the_index_need_the_network_but_modelport_does_not(tmp_path: Path) -> None:
    source = ModelportSource(modelport_wheels_digest="a" * 12, requirements=RequirementsSource.INDEX)
    steps = instructions(render(make_project(tmp_path, **{"requirements.txt": "numpy\n"}), source))
    requirements = steps[position(steps, "RUN", "-r /opt/modelport/requirements.txt")][1]
    assert "--no-index" not in requirements
    assert "--no-index" in steps[position(steps, "RUN", "'modelport[kubernetes]==0.1.0'")][1]


def python_check(text: str) -> str:
    """The Python one-liner that the first RUN gives to the base image's python3."""
    line = next(line for line in text.splitlines() if line.startswith("RUN python3 -c "))
    words = shlex.split(line.removeprefix("RUN ").removesuffix("\\"))
    assert words[:2] == ["python3", "-c"]
    return words[2]


def test_the_base_images_python_is_checked_against_the_wheels(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    here = (sys.version_info.major, sys.version_info.minor)
    matching = ModelportSource(modelport_wheels_digest="a" * 12, python=here)
    assert subprocess.run([sys.executable, "-c", python_check(render(project, matching))]).returncode == 0
    other = ModelportSource(modelport_wheels_digest="a" * 12, python=(here[0], here[1] + 1))
    done = subprocess.run(
        [sys.executable, "-c", python_check(render(project, other))], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert f"the wheelhouse was made for Python {here[0]}.{here[1] + 1}" in done.stderr
    assert f"the base image has Python {here[0]}.{here[1]}" in done.stderr


def test_a_push_needs_a_tag_that_names_the_registry(tmp_path: Path) -> None:
    make_project(tmp_path)
    engine = detect_engine("podman", search_path=str(stand_in_podman(tmp_path / "bin")))
    with pytest.raises(UserInputError, match=r"--push needs a --tag that names the registry"):
        build_image(tmp_path, engine=engine, push=True)


def test_image_references_are_checked(tmp_path: Path) -> None:
    for good in ["python:3.11-slim", "localhost/iris:1", "registry.example.com:5000/team/iris-api:v1.2"]:
        assert check_reference(good, option="--tag") == good
    for bad in ["Iris:1", "iris:1 extra", "", "iris:-1", "python:3.11\nRUN rm -rf /"]:
        with pytest.raises(UserInputError, match=r"--tag: .* is not an image reference"):
            check_reference(bad, option="--tag")
    project = make_project(tmp_path)
    with pytest.raises(UserInputError, match="--base-image"):
        render_containerfile(project, base_image="FROM x", modelport_source=SOURCE, files=[])
    assert default_tag(project).startswith("iris:")
    assert default_tag(project) != default_tag(make_project(tmp_path, **{"predictor.py": "# changed\n"}))


# --- the build context -----------------------------------------------------------------------------------


def test_the_context_holds_the_projects_files_specs_and_wheels_ignore_files_honoured(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "project",
        **{
            "requirements.txt": "numpy\n",
            "pkg/helpers.py": "X = 1\n",
            "data/big.csv": "1,2\n",
            "notes.log": "debug\n",
            "scratch.tmp": "x\n",
            ".modelportignore": "data/\n*.log\n",
            ".cortexignore": "*.tmp\n",
        },
    )
    (project.root / "predictor.py").chmod(0o600)  # private to its owner here; the image's user must read it
    wheelhouse = tmp_path / "wheelhouse"
    wheel(wheelhouse, "modelport-0.1.0-py3-none-any.whl", {"modelport/__init__.py": ""})
    wheel(wheelhouse, "numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl", {"numpy/__init__.py": ""})
    context = tmp_path / "context"
    context.mkdir()

    prepared = prepare_context(project, destination=context, wheelhouse=wheelhouse)

    app = context / "app"
    copied = sorted(path.relative_to(app).as_posix() for path in app.rglob("*") if path.is_file())
    assert copied == ["modelport.yaml", "pkg/helpers.py", "predictor.py", "requirements.txt", "sleep.py"]
    assert stat.S_IMODE((app / "predictor.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((app / "pkg").stat().st_mode) == 0o755
    specs = {
        path.name: ApiSpec.model_validate_json(path.read_text()) for path in (context / "specs").iterdir()
    }
    assert specs == {"iris.json": project.api("iris"), "sleep.json": project.api("sleep")}
    assert (context / "requirements.txt").read_text() == "numpy\n"
    assert sorted(path.name for path in (context / "wheels" / "modelport").iterdir()) == sorted(
        path.name for path in wheelhouse.iterdir()
    )
    assert (context / "wheels" / "project").is_dir()
    assert (context / "Containerfile").read_text() == prepared.text
    # A given wheelhouse's Python is unknown: only the >= 3.11 check runs, not the same-version one.
    assert prepared.source.python is None
    assert prepared.source.modelport_wheels_digest == wheels_digest(wheelhouse)
    assert "COPY requirements.txt" in prepared.text


def test_requirements_txt_excluded_by_an_ignore_rule_is_not_installed(tmp_path: Path) -> None:
    project = make_project(
        tmp_path, **{"requirements.txt": "numpy\n", ".modelportignore": "requirements.txt\n"}
    )
    assert "requirements.txt" not in render(project)


def test_a_wheelhouse_without_modelport_is_refused(tmp_path: Path) -> None:
    wheel(tmp_path / "wheels", "numpy-2.0.0-py3-none-any.whl", {"numpy/__init__.py": ""})
    with pytest.raises(UserInputError, match=r"no modelport wheel in it: add one with `pip wheel"):
        copy_wheelhouse(tmp_path / "wheels", destination=tmp_path / "out")
    with pytest.raises(UserInputError, match="not a folder"):
        copy_wheelhouse(tmp_path / "missing", destination=tmp_path / "out")


def test_the_wheels_digest_ignores_timestamps_but_not_contents(tmp_path: Path) -> None:
    name = "modelport-0.1.0-py3-none-any.whl"
    wheel(tmp_path / "a", name, {"modelport/x.py": "1"}, date=(2020, 1, 1, 0, 0, 0))
    wheel(tmp_path / "b", name, {"modelport/x.py": "1"}, date=(2024, 6, 1, 12, 0, 0))
    wheel(tmp_path / "c", name, {"modelport/x.py": "2"})
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()
    assert wheels_digest(tmp_path / "a") == wheels_digest(tmp_path / "b")
    assert wheels_digest(tmp_path / "a") != wheels_digest(tmp_path / "c")
    assert len(wheels_digest(tmp_path / "a")) == 12


# --- finding an engine -----------------------------------------------------------------------------------


def executable(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def stand_in_podman(folder: Path) -> Path:
    executable(folder, "podman", "exit 1")
    return folder


def test_no_engine_on_path_lists_each_engine_and_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(UserInputError) as caught:
        detect_engine(None, search_path=str(tmp_path))
    message = str(caught.value)
    for line in ["docker: not installed", "podman: not installed", "buildah: not installed"]:
        assert line in message
    assert "apt-get install podman" in message
    assert "install one of them, then run modelport build again" in message


def test_docker_counts_only_when_its_daemon_answers(tmp_path: Path) -> None:
    daemonless = "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2; exit 1"
    executable(tmp_path / "bin", "docker", daemonless)
    with pytest.raises(
        UserInputError, match=r"docker: installed at .*, but its daemon does not answer \(Cannot"
    ):
        detect_engine(None, search_path=str(tmp_path / "bin"))
    executable(tmp_path / "bin", "podman", "exit 0")
    engine = detect_engine(None, search_path=str(tmp_path / "bin"))
    assert engine.name == EngineName.PODMAN
    executable(tmp_path / "bin", "docker", "echo 27.0.1")
    assert detect_engine(None, search_path=str(tmp_path / "bin")).name == EngineName.DOCKER
    assert detect_engine("podman", search_path=str(tmp_path / "bin")).name == EngineName.PODMAN


def test_a_chosen_engine_that_is_missing_or_unknown_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        UserInputError, match=r"--engine buildah cannot build images here: buildah: not installed"
    ):
        detect_engine("buildah", search_path=str(tmp_path))
    with pytest.raises(
        UserInputError, match=r"--engine: expected one of docker, podman, buildah, got 'kaniko'"
    ):
        detect_engine("kaniko", search_path=str(tmp_path))


def test_the_engine_builds_offline_streams_its_output_and_explains_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `podman` (a real program) that records its arguments, prints, and fails when told to."""
    record = tmp_path / "args"
    rlimit = "Error: runc: error setting rlimit type 7: operation not permitted"
    script = (
        f'printf "%s\\n" "$@" > {record}; echo "STEP 1/2: FROM base"; echo "STEP 2/2: RUN true" >&2\n'
        f'if [ -n "$FAIL" ]; then echo "{rlimit}" >&2; exit 126; fi'
    )
    executable(tmp_path / "bin", "podman", script)
    engine = detect_engine("podman", search_path=str(tmp_path / "bin"))
    lines: list[str] = []
    context = tmp_path / "context"
    containerfile = context / "Containerfile"
    engine.build(context, containerfile, tag="iris:1", offline=True, progress=lines.append)
    assert record.read_text().split() == [
        "build", "--network", "none", "--file", str(containerfile), "--tag", "iris:1", str(context)
    ]  # fmt: skip
    assert lines == ["STEP 1/2: FROM base", "STEP 2/2: RUN true"]
    engine.build(context, containerfile, tag="iris:1", offline=False, progress=lines.append)
    assert "--network" not in record.read_text().split()
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(EngineError) as caught:
        engine.build(context, containerfile, tag="iris:1", offline=True, progress=lines.append)
    message = str(caught.value)
    assert message.startswith("podman build of iris:1 failed (exit 126); its last lines:\n  STEP 1/2")
    assert "fix: podman's OCI runtime cannot start the build's containers" in message


# --- known failures and their fixes ----------------------------------------------------------------------


def test_podman_ulimit_and_crun_failures_name_the_containers_conf_fix() -> None:
    # The errors engines.md recorded on this machine kind (podman 4.3 as root, hard nofile 20000).
    rlimit = (
        "Error: runc: runc create failed: unable to start container process: error during container init: "
        "error setting rlimits for ready process: error setting rlimit type 7: operation not permitted: "
        "OCI permission denied"
    )
    message = explain_failure(
        EngineName.PODMAN, action="podman build of x:1", returncode=125, output=[rlimit], limits=LIMITS,
        containers_conf=None,
    )  # fmt: skip
    assert message.startswith("podman build of x:1 failed (exit 125); its last lines:\n  Error: runc")
    assert "exceed this machine's hard limits (nofile 20000, nproc 96365)" in message
    assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in message
    assert 'runtime = "runc"' in message
    assert "export CONTAINERS_CONF=" in message
    hybrid = "Error: OCI runtime error: crun: cgroups in hybrid mode not supported, drop all controllers"
    message = explain_failure(
        EngineName.PODMAN,
        action="a",
        returncode=126,
        output=[hybrid],
        limits=LIMITS,
        containers_conf="/c.conf",
    )
    assert "crun does not run containers on hybrid (v1 + v2) cgroups, runc does" in message
    assert "add these lines to /c.conf (CONTAINERS_CONF)" in message


def test_base_image_and_wheel_failures_name_their_fix() -> None:
    def fixes(*lines: str, engine: EngineName = EngineName.PODMAN) -> list[str]:
        message = explain_failure(
            engine, action="a", returncode=1, output=list(lines), limits=LIMITS, containers_conf=None
        )
        return [line for line in message.splitlines() if line.startswith("fix: ")]

    assert fixes("/bin/sh: 1: python3: not found") == [
        "fix: the base image has no python3: choose a --base-image with Python >= 3.11 and venv, "
        "e.g. python:3.11-slim"
    ]
    assert "install python3-venv" in fixes("The virtual environment was not created successfully because "
                                           "ensurepip is not available.")[0]  # fmt: skip
    assert "add it (`pip wheel --wheel-dir DIR" in fixes("ERROR: No matching distribution found for scipy")[0]
    assert (
        "install the buildx plugin"
        in fixes(
            "ERROR: BuildKit is enabled but the buildx component is missing or broken.",
            engine=EngineName.DOCKER,
        )[0]
    )
    assert (
        "the registry cannot be reached" in fixes('pinging container registry 127.0.0.1:5999: Get "..."')[0]
    )
    certificate = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    assert "leave out --requirements-from-index" in fixes(certificate)[0]
    assert fixes('Error: building at STEP "RUN make": exit status 2') == []


# --- the command -----------------------------------------------------------------------------------------


def test_the_command_exits_2_on_an_invalid_spec_before_looking_for_an_engine(tmp_path: Path) -> None:
    write_files(tmp_path, {"modelport.yaml": IRIS_SPEC + "  compute: {cpu: lots}\n", "predictor.py": ""})
    result = CliRunner().invoke(build, [str(tmp_path)], env={"PATH": str(tmp_path / "empty")})
    assert result.exit_code == 2, result.output
    assert "modelport.yaml: [0].compute.cpu:" in result.stderr
    assert "container engine" not in result.stderr
    assert result.stdout == ""


def test_the_command_exits_2_naming_the_engines_when_none_is_installed(tmp_path: Path) -> None:
    make_project(tmp_path)
    result = CliRunner().invoke(
        build, [str(tmp_path), "--tag", "iris:1"], env={"PATH": str(tmp_path / "empty")}
    )
    assert result.exit_code == 2, result.output
    assert "no container engine to build the image with" in result.stderr
    assert "podman: not installed" in result.stderr
    assert "Traceback" not in result.output
