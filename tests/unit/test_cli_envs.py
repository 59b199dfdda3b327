"""Unit tests of `modelport env configure|list|delete` (cli/envs.py) and of `--env NAME` on deploy, get,
describe, logs and delete for a Kubernetes environment (cli/kube.py), through the real `modelport` command
with FakeKubeApi (tests/unit/fake_kube.py) passed in as the root command's KubeWiring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from modelport.backends.kubernetes import Kind, KubeApiError
from modelport.cli.envs import Environment, EnvironmentKind
from modelport.cli.kube import KubeWiring, image_reference
from modelport.cli.main import cli
from modelport.images.containerfile import project_digest
from modelport.spec.load import load_project
from tests.support import IRIS_SPEC, write_files
from tests.unit.fake_kube import FakeKubeApi

REPOSITORY = "registry.example.com/team/iris"
PREDICTOR = """\
class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return payload
"""
CONFIGURE = ["env", "configure", "prod", "--kubernetes", "--context", "prod-eu", "--namespace", "mp"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_files(tmp_path / "iris", {"modelport.yaml": IRIS_SPEC, "predictor.py": PREDICTOR})


def run(home: Path, *args: str, wiring: KubeWiring | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], obj=wiring)


class Connections:
    """The wiring's connect: records which environment each command reached, answers with one fake."""

    def __init__(self, fake: FakeKubeApi) -> None:
        self.fake = fake
        self.environments: list[Environment] = []

    def __call__(self, environment: Environment) -> FakeKubeApi:
        self.environments.append(environment)
        return self.fake


# env configure / list / delete ----------------------------------------------------------------------------


def test_configure_list_and_delete_an_environment(home: Path) -> None:
    result = run(home, *CONFIGURE, "--image", REPOSITORY)
    assert result.exit_code == 0, result.output
    assert "configured environment prod: context prod-eu, namespace mp" in result.stderr
    stored = yaml.safe_load((home / "environments.yaml").read_text())
    assert stored == {
        "environments": {
            "prod": {
                "kind": "kubernetes",
                "context": "prod-eu",
                "namespace": "mp",
                "image": REPOSITORY,
                "gateway_service_type": "LoadBalancer",
            }
        }
    }
    listed = run(home, "env", "list", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert [(e["name"], e["kind"]) for e in json.loads(listed.stdout)] == [
        ("local", "local"),
        ("prod", "kubernetes"),
    ]
    table = run(home, "env", "list")
    assert "prod   kubernetes  prod-eu  mp" in table.stdout
    again = run(home, *CONFIGURE, "--image", REPOSITORY, "--gateway-service-type", "ClusterIP")
    assert "updated environment prod" in again.stderr
    assert (
        yaml.safe_load((home / "environments.yaml").read_text())["environments"]["prod"][
            "gateway_service_type"
        ]
        == "ClusterIP"
    )
    deleted = run(home, "env", "delete", "prod")
    assert deleted.exit_code == 0, deleted.output
    assert [e["name"] for e in json.loads(run(home, "env", "list", "-o", "json").stdout)] == ["local"]
    missing = run(home, "env", "delete", "prod")
    assert missing.exit_code == 1
    assert "environment 'prod' is not configured (known: local)" in missing.stderr


def test_configure_reports_every_bad_value_and_stores_nothing(home: Path) -> None:
    result = run(
        home, "env", "configure", "Prod!", "--kubernetes", "--context", "c", "--namespace", "Bad_NS",
        "--image", f"{REPOSITORY}:1.0",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "NAME: invalid environment name 'Prod!'" in result.stderr
    assert "--namespace: invalid name 'Bad_NS'" in result.stderr
    assert (
        "--image: give the repository without a tag or digest, got 'registry.example.com/team/iris:1.0'"
        in (result.stderr)
    )
    assert not (home / "environments.yaml").exists()


def test_local_can_be_neither_configured_nor_deleted(home: Path) -> None:
    configured = run(
        home, "env", "configure", "local", "--kubernetes", "--context", "c", "--image", REPOSITORY
    )
    assert configured.exit_code == 2
    assert "'local' is the embedded cluster on this machine" in configured.stderr
    deleted = run(home, "env", "delete", "local")
    assert deleted.exit_code == 2
    assert "'local' is the embedded cluster on this machine; it cannot be deleted" in deleted.stderr


def test_a_broken_entry_is_named_with_its_file_and_field_and_can_be_deleted(home: Path) -> None:
    home.mkdir()
    (home / "environments.yaml").write_text(
        "environments:\n"
        "  broken: {kind: kubernetes, context: c, namespace: NOPE, image: r/x}\n"
        "  fine: {kind: kubernetes, context: c, namespace: ok, image: r/x}\n"
    )
    result = run(home, "--env", "fine", "get")
    assert result.exit_code == 2
    assert (
        f"{home / 'environments.yaml'}: environments.broken: --namespace: invalid name 'NOPE'"
        in result.stderr
    )
    assert run(home, "env", "delete", "broken").exit_code == 0
    assert [e["name"] for e in json.loads(run(home, "env", "list", "-o", "json").stdout)] == ["local", "fine"]


def test_an_unknown_environment_is_refused_with_how_to_configure_it(home: Path) -> None:
    result = run(home, "get", "--env", "staging")
    assert result.exit_code == 2
    assert "environment 'staging' is not configured (known: local)" in result.stderr
    assert "modelport env configure staging --kubernetes --context CTX" in result.stderr


# --env on the API commands --------------------------------------------------------------------------------


def test_deploy_get_describe_logs_delete_on_a_kubernetes_environment(home: Path, project: Path) -> None:
    assert run(home, *CONFIGURE, "--image", REPOSITORY).exit_code == 0
    fake = FakeKubeApi()
    connections = Connections(fake)
    wiring = KubeWiring(connect=connections)
    image = f"{REPOSITORY}:0123456789ab"

    deployed = run(home, "deploy", str(project), "--env", "prod", "--image", image, wiring=wiring)
    assert deployed.exit_code == 0, deployed.output
    assert "creating iris (RealtimeAPI)" in deployed.stderr
    assert "modelport get iris --env prod" in deployed.stderr
    assert connections.environments[0].context == "prod-eu"
    deployment = fake.stored(Kind.DEPLOYMENT, "api-iris", namespace="mp")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert "modelport-controller" in fake.names(Kind.DEPLOYMENT, namespace="mp")
    assert "modelport-gateway" in fake.names(Kind.SERVICE, namespace="mp")

    listed = run(home, "get", "--env", "prod", "-o", "json", wiring=wiring)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["kind"], row["status"], row["requested"]) == (
        "iris",
        "RealtimeAPI",
        "updating",
        1,
    )

    fake.settle()
    (pod,) = fake.pod_names("mp", owner="api-iris")
    fake.start(pod, namespace="mp")
    fake.settle()
    fake.write_log(pod, "predictor loaded")

    table = run(home, "--env", "prod", "get", wiring=wiring)  # the root command's --env works too
    assert table.exit_code == 0, table.output
    assert table.stdout.split("\n")[1].split()[:4] == ["iris", "live", "1", "1"]
    detail = run(home, "get", "iris", "--env", "prod", "-o", "json", wiring=wiring)
    shown = json.loads(detail.stdout)
    assert (shown["status"], shown["up_to_date"], shown["endpoint"]) == ("live", 1, "/iris")
    assert shown["example_curl"].startswith(
        "kubectl --context prod-eu -n mp port-forward service/modelport-gateway"
    )
    assert shown["spec"]["predictor"]["path"] == "predictor.py"

    described = run(home, "describe", "iris", "--env", "prod", "-o", "json", wiring=wiring)
    (replica,) = json.loads(described.stdout)["replicas"]
    assert (replica["replica_id"], replica["phase"], replica["up_to_date"]) == (pod, "ready", True)

    logs = run(home, "logs", "iris", "--env", "prod", "--no-follow", wiring=wiring)
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == f"[{pod}] predictor loaded\n"

    again = run(home, "deploy", str(project), "--env", "prod", "--image", image, wiring=wiring)
    assert "iris (RealtimeAPI) is up to date" in again.stderr

    deleted = run(home, "delete", "iris", "--env", "prod", wiring=wiring)
    assert deleted.exit_code == 0, deleted.output
    assert fake.names(Kind.DEPLOYMENT, namespace="mp") == ["modelport-controller"]
    gone = run(home, "describe", "iris", "--env", "prod", wiring=wiring)
    assert gone.exit_code == 1
    assert "API 'iris' is not deployed in namespace 'mp' of context 'prod-eu'" in gone.stderr
    assert {e.name for e in connections.environments} == {"prod"}


def test_deploy_wait_fails_with_the_reason_when_the_api_cannot_start(home: Path, project: Path) -> None:
    assert run(home, *CONFIGURE, "--image", REPOSITORY).exit_code == 0
    fake = FakeKubeApi()
    wiring = KubeWiring(connect=Connections(fake))
    assert (
        run(
            home, "deploy", str(project), "--env", "prod", "--image", f"{REPOSITORY}:1", wiring=wiring
        ).exit_code
        == 0
    )
    fake.settle()
    (pod,) = fake.pod_names("mp", owner="api-iris")
    fake.crash_loop(pod, namespace="mp", restarts=4, exit_code=3)
    deploy = ["deploy", str(project), "--env", "prod", "--image", f"{REPOSITORY}:1"]
    waited = run(home, *deploy, "--wait", "--timeout", "0", wiring=wiring)
    assert waited.exit_code == 1
    assert f"iris is error: replica {pod} keeps failing (CrashLoopBackOff, restarted 4 times" in waited.stderr
    assert "see `modelport logs iris --env prod`" in waited.stderr


def test_an_unreachable_cluster_fails_the_deploy_before_any_build(home: Path, project: Path) -> None:
    assert run(home, *CONFIGURE, "--image", REPOSITORY).exit_code == 0
    fake = FakeKubeApi()
    fake.fail_next("get", KubeApiError(status=None, reason="Unreachable", message="https://k8s: refused"))
    result = run(home, "deploy", str(project), "--env", "prod", wiring=KubeWiring(connect=Connections(fake)))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: cannot reach the Kubernetes API server of context 'prod-eu' to read Service "
        "modelport-gateway: https://k8s: refused"
    )
    assert "building" not in result.stderr
    assert [call.method for call in fake.calls] == ["get"]


def test_commands_of_the_local_cluster_refuse_a_kubernetes_environment(home: Path, project: Path) -> None:
    assert run(home, *CONFIGURE, "--image", REPOSITORY).exit_code == 0
    wiring = KubeWiring(connect=Connections(FakeKubeApi()))
    (project / "sample.json").write_text("{}")
    predicted = run(home, "--env", "prod", "predict", "iris", str(project / "sample.json"), wiring=wiring)
    assert predicted.exit_code == 2
    assert "`modelport predict` works on the local environment only for now; 'prod' is a Kubernetes" in (
        predicted.stderr
    )
    job = run(home, "get", "iris", "job1", "--env", "prod", wiring=wiring)
    assert job.exit_code == 2
    assert "`modelport get API JOB_ID` works on the local environment only for now" in job.stderr
    local_image = run(home, "deploy", str(project), "--image", f"{REPOSITORY}:1")
    assert local_image.exit_code == 2
    assert "--image: only Kubernetes environments run images" in local_image.stderr


def test_a_kubernetes_deploy_tags_its_build_with_the_project_digest(project: Path) -> None:
    environment = Environment(
        name="prod", kind=EnvironmentKind.KUBERNETES, context="c", namespace="mp", image=REPOSITORY
    )
    before = image_reference(environment, load_project(project))
    assert before == f"{REPOSITORY}:{project_digest(load_project(project))}"
    assert image_reference(environment, load_project(project)) == before  # the same content, the same tag
    (project / "predictor.py").write_text(PREDICTOR + "# changed\n")
    after = image_reference(environment, load_project(project))
    assert after != before and after.startswith(f"{REPOSITORY}:")
