"""Environments: named places to deploy to (`local`, the embedded cluster, always; Kubernetes namespaces the
user configures), stored in `$MODELPORT_HOME/environments.yaml`, and the `modelport env` commands.

cli/main.py resolves the root `--env NAME` with `find_environment` and registers the `env` group.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import click
import yaml

from modelport.cli import output
from modelport.cli.failures import fail_cleanly
from modelport.errors import NotFoundError, UserInputError
from modelport.settings import Settings

__all__ = [
    "ENVIRONMENTS_FILE",
    "LOCAL",
    "Environment",
    "EnvironmentKind",
    "delete_environment",
    "env",
    "find_environment",
    "load_environments",
    "save_environment",
]

ENVIRONMENTS_FILE = "environments.yaml"
LOCAL = "local"
GatewayServiceType = Literal["LoadBalancer", "NodePort", "ClusterIP"]
GATEWAY_SERVICE_TYPES: tuple[GatewayServiceType, ...] = ("LoadBalancer", "NodePort", "ClusterIP")
_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9_]{0,61}[a-z0-9])?")
_KEYS = frozenset({"kind", "context", "namespace", "image", "gateway_service_type"})


class EnvironmentKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


@dataclass(frozen=True, kw_only=True)
class Environment:
    """Where commands act. A Kubernetes environment deploys to `namespace` through kubeconfig `context`, and
    pushes each build to `image` (a repository: the tag is the project's content digest)."""

    name: str
    kind: EnvironmentKind
    context: str | None = None
    namespace: str | None = None
    image: str | None = None
    gateway_service_type: GatewayServiceType = "LoadBalancer"

    @property
    def is_kubernetes(self) -> bool:
        return self.kind is EnvironmentKind.KUBERNETES

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, "kind": self.kind.value}
        if self.is_kubernetes:
            shown |= {
                "context": self.context,
                "namespace": self.namespace,
                "image": self.image,
                "gateway_service_type": self.gateway_service_type,
            }
        return shown


LOCAL_ENVIRONMENT = Environment(name=LOCAL, kind=EnvironmentKind.LOCAL)


def kubernetes_environment(
    name: str, *, context: str, namespace: str, image: str, gateway_service_type: str
) -> Environment:
    """A checked Kubernetes environment: UserInputError naming each bad value (all at once) and the fix."""
    problems = [
        *_name_problems(name),
        *([] if context.strip() else ["--context: give the kubeconfig context to deploy through"]),
        *_namespace_problems(namespace),
        *_image_problems(image),
    ]
    if gateway_service_type not in GATEWAY_SERVICE_TYPES:
        problems.append(
            f"--gateway-service-type: expected one of {', '.join(GATEWAY_SERVICE_TYPES)}, "
            f"got {gateway_service_type!r}"
        )
    if problems:
        raise UserInputError("\n".join(problems))
    service_type: GatewayServiceType = next(t for t in GATEWAY_SERVICE_TYPES if t == gateway_service_type)
    return Environment(
        name=name,
        kind=EnvironmentKind.KUBERNETES,
        context=context,
        namespace=namespace,
        image=image,
        gateway_service_type=service_type,
    )


def _name_problems(name: str) -> list[str]:
    if name == LOCAL:
        return ["NAME: 'local' is the embedded cluster on this machine; it cannot be configured or deleted"]
    if not _NAME.fullmatch(name):
        return [
            f"NAME: invalid environment name {name!r}: use 1-63 lowercase letters, digits, '-' and '_', "
            "starting and ending with a letter or digit (e.g. 'prod')"
        ]
    return []


def _namespace_problems(namespace: str) -> list[str]:
    from modelport.manifests.options import dns_label_problem

    problem = dns_label_problem(namespace)
    return [] if problem is None else [f"--namespace: {problem} (e.g. 'modelport')"]


def _image_problems(image: str) -> list[str]:
    from modelport.images.containerfile import check_reference

    try:
        check_reference(image, option="--image")
    except UserInputError as exc:
        return [str(exc)]
    last = image.rsplit("/", 1)[-1]
    if ":" in last or "@" in image:
        return [
            f"--image: give the repository without a tag or digest, got {image!r}: deploy tags each build "
            "with the project's content digest (e.g. registry.example.com/team/iris)"
        ]
    return []


# Storage ---------------------------------------------------------------------------------------------------


def environments_path(settings: Settings) -> Path:
    return settings.home / ENVIRONMENTS_FILE


def load_environments(settings: Settings) -> dict[str, Environment]:
    """Every environment, `local` first; UserInputError naming the file and the field when it is invalid."""
    path = environments_path(settings)
    found = {LOCAL: LOCAL_ENVIRONMENT}
    problems = []
    for name, entry in _read_entries(path).items():
        try:
            found[str(name)] = _parse_entry(str(name), entry)
        except UserInputError as exc:
            problems += [f"{path}: environments.{name}: {line}" for line in str(exc).splitlines()]
    if problems:
        problems.append("fix them with `modelport env configure NAME ...` or `modelport env delete NAME`")
        raise UserInputError("\n".join(problems))
    return found


def _read_entries(path: Path) -> dict[str, Any]:
    """The file's `environments` mapping as written, entries unchecked (so that configure and delete can
    repair a file with one bad entry); {} when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(f"{path}: not valid YAML ({exc}): fix or delete the file") from None
    if document is None:
        return {}
    entries = document.get("environments") if isinstance(document, dict) else None
    if entries is None and isinstance(document, dict) and set(document) <= {"environments"}:
        return {}
    if not isinstance(entries, dict):
        raise UserInputError(
            f"{path}: expected a mapping `environments: {{NAME: {{...}}}}`: fix or delete the file"
        )
    return {str(name): entry for name, entry in entries.items()}


def _parse_entry(name: str, entry: Any) -> Environment:
    if not isinstance(entry, dict):
        raise UserInputError("expected a mapping with kind, context, namespace and image")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS))
        raise UserInputError(f"unknown keys {', '.join(map(str, unknown))}; known: {known}")
    if entry.get("kind") != EnvironmentKind.KUBERNETES.value:
        raise UserInputError(f"kind: expected 'kubernetes', got {entry.get('kind')!r}")
    values = {key: entry.get(key) for key in ("context", "namespace", "image")}
    missing = [key for key, value in values.items() if not isinstance(value, str) or not value]
    if missing:
        raise UserInputError(f"{', '.join(missing)}: expected text")
    return kubernetes_environment(
        name,
        context=str(values["context"]),
        namespace=str(values["namespace"]),
        image=str(values["image"]),
        gateway_service_type=str(entry.get("gateway_service_type", "LoadBalancer")),
    )


def find_environment(settings: Settings, name: str) -> Environment:
    """The environment called `name`; `local` never reads the file."""
    if name == LOCAL:
        return LOCAL_ENVIRONMENT
    environments = load_environments(settings)
    if name not in environments:
        raise UserInputError(
            f"environment {name!r} is not configured (known: {', '.join(environments)}): configure it with "
            f"`modelport env configure {name} --kubernetes --context CTX --namespace NS --image REPOSITORY`"
        )
    return environments[name]


def save_environment(settings: Settings, environment: Environment) -> bool:
    """Add or replace one environment, leaving the others as written; whether it replaced one. The file is
    replaced atomically."""
    if not environment.is_kubernetes:
        raise UserInputError(f"{environment.name!r}: only Kubernetes environments are stored")
    path = environments_path(settings)
    entries = _read_entries(path)
    existed = environment.name in entries
    entries[environment.name] = {key: value for key, value in environment.as_json().items() if key != "name"}
    _write(path, entries)
    return existed


def delete_environment(settings: Settings, name: str) -> None:
    if name == LOCAL:
        raise UserInputError("'local' is the embedded cluster on this machine; it cannot be deleted")
    path = environments_path(settings)
    entries = _read_entries(path)
    if name not in entries:
        known = ", ".join([LOCAL, *entries])
        raise NotFoundError(f"environment {name!r} is not configured (known: {known})")
    del entries[name]
    _write(path, entries)


def _write(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"environments": entries}
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=".environments-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write("# modelport environments: change them with `modelport env configure|delete`.\n")
            yaml.safe_dump(document, stream, sort_keys=False)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


# Commands --------------------------------------------------------------------------------------------------


def _settings(ctx: click.Context) -> Settings:
    """The root command's settings (its --home applies); Settings.from_env when run on its own."""
    root = ctx.find_root().obj
    settings = getattr(root, "settings", None)
    return settings if isinstance(settings, Settings) else Settings.from_env()


def _wants_json(ctx: click.Context, output_format: str | None) -> bool:
    return (output_format or ctx.find_root().params.get("output")) == "json"


OUTPUT = click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["pretty", "json"]),
    default=None,
    help="pretty tables for people (default), json for programs",
)


@click.group("env")
def env() -> None:
    """Configure where commands act: `local` (this machine) or a Kubernetes namespace."""


@env.command("configure")
@click.argument("name")
@click.option("--kubernetes", "kubernetes", is_flag=True, required=True, help="a Kubernetes environment")
@click.option("--context", required=True, help="kubeconfig context to use (`kubectl config get-contexts`)")
@click.option("--namespace", default="modelport", show_default=True, help="the namespace to deploy to")
@click.option(
    "--image",
    required=True,
    metavar="REPOSITORY",
    help="where deploy pushes the project's image, without a tag, e.g. registry.example.com/team/iris",
)
@click.option(
    "--gateway-service-type",
    type=click.Choice(list(GATEWAY_SERVICE_TYPES)),
    default="LoadBalancer",
    show_default=True,
    help="how the prediction gateway is exposed",
)
@OUTPUT
@click.pass_context
@fail_cleanly
def configure(
    ctx: click.Context,
    /,
    name: str,
    kubernetes: bool,
    context: str,
    namespace: str,
    image: str,
    gateway_service_type: str,
    output_format: str | None,
) -> None:
    """Create or replace the environment NAME (nothing is contacted; deploy --env NAME uses it)."""
    settings = _settings(ctx)
    environment = kubernetes_environment(
        name, context=context, namespace=namespace, image=image, gateway_service_type=gateway_service_type
    )
    existed = save_environment(settings, environment)
    if _wants_json(ctx, output_format):
        output.print_json(environment.as_json())
        return
    output.stderr.print(
        f"{'updated' if existed else 'configured'} environment {name}: context {context}, namespace "
        f"{namespace}, images {image}:<digest>\ndeploy to it: modelport deploy --env {name}"
    )


@env.command("list")
@OUTPUT
@click.pass_context
@fail_cleanly
def list_environments(ctx: click.Context, /, output_format: str | None) -> None:
    """Every environment: local, then the configured ones."""
    environments = load_environments(_settings(ctx))
    if _wants_json(ctx, output_format):
        output.print_json([environment.as_json() for environment in environments.values()])
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("env", "kind", "context", "namespace", "image"):
        table.add_column(column, no_wrap=True)
    for environment in environments.values():
        table.add_row(
            environment.name,
            environment.kind.value,
            environment.context or "-",
            environment.namespace or "-",
            environment.image or "-",
        )
    output.stdout.print(table)


@env.command("delete")
@click.argument("name")
@click.pass_context
@fail_cleanly
def delete(ctx: click.Context, /, name: str) -> None:
    """Forget the environment NAME; what it deployed keeps running (`modelport delete API --env NAME`)."""
    delete_environment(_settings(ctx), name)
    output.stderr.print(f"deleted environment {name}")
