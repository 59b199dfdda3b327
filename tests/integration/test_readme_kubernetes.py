"""The README's "Deploy to Kubernetes" commands marked CI, run as a user types them (real CLI processes).

The build command is run by tests/integration/test_container_image.py (with a base image made here, as no
registry can be pulled); the commands marked "live cluster" need a Kubernetes API server and are not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
KUBERNETES_VERSIONS = ("1.25.0", "1.30.0", "1.37.0")


def modelport(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELPORT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "modelport", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_render_writes_manifests_that_validate_for_every_supported_kubernetes(tmp_path: Path) -> None:
    command = (
        "modelport render kubernetes examples/iris-classifier"
        " --image registry.example.com/team/iris:1 --out k8s/"
    )
    assert command in README
    out = tmp_path / "k8s"

    rendered = modelport(*command.split()[1:-1], str(out), home=tmp_path / "home")

    assert rendered.returncode == 0, rendered.stderr
    files = sorted(out.glob("*.yaml"))
    kinds = {yaml.safe_load(f.read_text())["kind"] for f in files}
    assert {
        "Namespace",
        "Role",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "Lease",
    } <= kinds
    for version in KUBERNETES_VERSIONS:
        validated = subprocess.run(
            [
                str(Path(sys.executable).parent / "kubernetes-validate"),
                "-k",
                version,
                "--strict",
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert validated.returncode == 0, validated.stdout + validated.stderr


def test_env_configure_stores_the_environment_deploy_uses(tmp_path: Path) -> None:
    command = (
        "modelport env configure prod --kubernetes --context my-cluster --namespace modelport \\\n"
        "    --image registry.example.com/team/iris"
    )
    assert command in README
    home = tmp_path / "home"

    configured = modelport(*command.replace("\\\n", " ").split()[1:], home=home)

    assert configured.returncode == 0, configured.stderr
    listed = modelport("env", "list", "-o", "json", home=home)
    assert listed.returncode == 0, listed.stderr
    prod = next(env for env in json.loads(listed.stdout) if env["name"] == "prod")
    assert (prod["context"], prod["namespace"], prod["image"]) == (
        "my-cluster",
        "modelport",
        "registry.example.com/team/iris",
    )
