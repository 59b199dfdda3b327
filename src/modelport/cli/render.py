"""`modelport render kubernetes [PATH]`: the Kubernetes manifests of a project, printed or written to files.

The `render` group is registered on the root command by cli.main; rendering itself is manifests.kubernetes.
Exit codes as for every command: 0 success, 1 failure (e.g. a folder that cannot be written), 2 bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from modelport.cli import output
from modelport.cli.failures import fail_cleanly

if TYPE_CHECKING:  # the manifests (and pydantic behind them) load only when the command runs
    from modelport.manifests.options import GatewayServiceType

R = TypeVar("R")


@click.group()
def render() -> None:
    """Render what a project needs to run elsewhere, without deploying it."""


@render.command("kubernetes")
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option(
    "--image",
    required=True,
    metavar="REF",
    help="the project image that replicas run (modelport and the project's files at /app)",
)
@click.option("--namespace", default="modelport", show_default=True, help="namespace of every object")
@click.option(
    "--gateway-service-type",
    type=click.Choice(["LoadBalancer", "NodePort", "ClusterIP"]),
    default="LoadBalancer",
    show_default=True,
    help="how the prediction gateway is exposed",
)
@click.option(
    "--controller-image",
    metavar="REF",
    default=None,
    help="image of the controller and gateway [default: --image]",
)
@click.option(
    "--storage-size", default="1Gi", show_default=True, help="size of the controller's state volume"
)
@click.option(
    "--storage-class", default=None, help="StorageClass of the state volume [default: the cluster's]"
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write one NN-kind-name.yaml file per object into this folder and print their paths",
)
@click.option(
    "-o",
    "--output",
    "output_format",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="yaml (default): multi-document YAML; json: one v1 List",
)
@fail_cleanly
def kubernetes(
    path: Path,
    image: str,
    namespace: str,
    gateway_service_type: GatewayServiceType,
    controller_image: str | None,
    storage_size: str,
    storage_class: str | None,
    out: Path | None,
    output_format: str | None,
) -> None:
    """Print the Kubernetes objects of the project at PATH: `... | kubectl apply -f -` deploys it.

    The cluster's objects (namespace, controller with its RBAC and state volume, gateway) come first, then
    each API's. Nothing is contacted: the spec and the options are validated as deploy and Kubernetes would.
    """
    from modelport.manifests.kubernetes import RenderOptions, render_project, to_yaml, write_manifests
    from modelport.spec.load import load_project

    project = load_project(path)  # a bad spec fails here (exit 2)
    options = RenderOptions(
        namespace=namespace,
        image=image,
        gateway_service_type=gateway_service_type,
        controller_image=controller_image,
        storage_size=storage_size,
        storage_class=storage_class,
    )
    objects = render_project(project, options)
    as_json = (output_format or _root_output()) == "json"
    if out is not None:
        written = write_manifests(objects, out)
        if as_json:
            output.print_json({"files": [str(file) for file in written]})
        else:
            sys.stdout.write("".join(f"{file}\n" for file in written))
    elif as_json:
        output.print_json({"apiVersion": "v1", "kind": "List", "items": objects})
    else:
        sys.stdout.write(to_yaml(objects))


def _root_output() -> str | None:
    """The root command's `-o json` (`modelport -o json render kubernetes ...`) counts too."""
    chosen = click.get_current_context().find_root().params.get("output")
    return "json" if chosen == "json" else None
