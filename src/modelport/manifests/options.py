"""What a Kubernetes render is parameterised by (`RenderOptions`), checked as the API server would check it.

Built by `modelport render kubernetes` (cli.render) or whoever applies the manifests; read by every renderer
of this package. The name and quantity rules here are Kubernetes' own, so a bad value fails before any YAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from modelport.errors import UserInputError
from modelport.manifests.layout import CONTROL_PORT, CONTROLLER_NAME
from modelport.spec.units import parse_quantity

GatewayServiceType = Literal["LoadBalancer", "NodePort", "ClusterIP"]
GATEWAY_SERVICE_TYPES: tuple[GatewayServiceType, ...] = ("LoadBalancer", "NodePort", "ClusterIP")

# Cortex's node-group conventions: accelerator nodes carry this label and a NoSchedule taint of the same key.
DEFAULT_GPU_NODE_SELECTOR: Mapping[str, str] = {"nvidia.com/gpu": "true"}
DEFAULT_INF_NODE_SELECTOR: Mapping[str, str] = {"aws.amazon.com/neuron": "true"}

MAX_LABEL_LENGTH = 63  # a DNS-1123 label, a label value, a label key's name part
MAX_SUBDOMAIN_LENGTH = 253
MAX_IMAGE_NAME_LENGTH = 255  # the repository part of an image reference (distribution/reference)

_DNS_1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS_1123_LABEL = re.compile(_DNS_1123_LABEL)
DNS_1123_SUBDOMAIN = re.compile(rf"{_DNS_1123_LABEL}(?:\.{_DNS_1123_LABEL})*")
LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")

# The grammar of distribution/reference, which the kubelet's image pull follows:
# [registry[:port]/]path[:tag][@algorithm:hex], with a lowercase path.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_IMAGE_HINT = (
    "expected [registry[:port]/]repository[:tag][@sha256:digest] with a lowercase repository, "
    "e.g. registry.example.com/team/iris:1.0"
)


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """Where and how a project runs on Kubernetes. Invalid values raise UserInputError when constructed."""

    namespace: str = "modelport"
    image: str  # the project image: modelport and the project's files at /app
    gateway_service_type: GatewayServiceType = "LoadBalancer"
    controller_image: str | None = None  # the controller's and the gateway's image; `image` when unset
    storage_size: str = "1Gi"  # the controller's state volume (SQLite)
    storage_class: str | None = None  # the cluster's default StorageClass when unset
    # Node labels that accelerator pods require; an empty mapping schedules on any node with the device.
    gpu_node_selector: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))
    inf_node_selector: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INF_NODE_SELECTOR))
    job_ttl_seconds: int = 3600  # how long a finished job's pods (and their logs) are kept

    def __post_init__(self) -> None:
        problems = [
            *_dns_label_problems("namespace", self.namespace),
            *_image_problems("image", self.image),
            *(
                []
                if self.controller_image is None
                else _image_problems("controller_image", self.controller_image)
            ),
            *_quantity_problems("storage_size", self.storage_size),
            *([] if self.storage_class is None else _subdomain_problems("storage_class", self.storage_class)),
            *_label_map_problems("gpu_node_selector", self.gpu_node_selector),
            *_label_map_problems("inf_node_selector", self.inf_node_selector),
        ]
        if self.gateway_service_type not in GATEWAY_SERVICE_TYPES:
            problems.append(
                f"gateway_service_type: expected one of {', '.join(GATEWAY_SERVICE_TYPES)}, "
                f"got {self.gateway_service_type!r}"
            )
        if isinstance(self.job_ttl_seconds, bool) or not isinstance(self.job_ttl_seconds, int):
            problems.append(
                f"job_ttl_seconds: expected a whole number of seconds, got {self.job_ttl_seconds!r}"
            )
        elif self.job_ttl_seconds < 0:
            problems.append(f"job_ttl_seconds: must be >= 0, got {self.job_ttl_seconds}")
        if problems:
            raise UserInputError("\n".join(problems))

    @property
    def system_image(self) -> str:
        """The image of the controller and the gateway."""
        return self.controller_image or self.image

    @property
    def control_url(self) -> str:
        """The control API as pods of the namespace reach it (through the controller's Service)."""
        return f"http://{CONTROLLER_NAME}.{self.namespace}.svc:{CONTROL_PORT}"


def dns_label_problem(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label (a namespace, a Service port name's cousin), or None."""
    if not isinstance(value, str) or not DNS_1123_LABEL.fullmatch(value):
        return (
            f"invalid name {value!r}: use lowercase letters, digits and '-', starting and ending with a "
            "letter or digit"
        )
    if len(value) > MAX_LABEL_LENGTH:
        return f"must be at most {MAX_LABEL_LENGTH} characters, got {len(value)}"
    return None


def _dns_label_problems(name: str, value: str) -> list[str]:
    problem = dns_label_problem(value)
    return [] if problem is None else [f"{name}: {problem} (e.g. 'modelport')"]


def _subdomain_problems(name: str, value: str) -> list[str]:
    if not isinstance(value, str) or not DNS_1123_SUBDOMAIN.fullmatch(value):
        return [
            f"{name}: invalid name {value!r}: use lowercase letters, digits, '-' and '.', starting and "
            "ending with a letter or digit (e.g. 'gp3')"
        ]
    if len(value) > MAX_SUBDOMAIN_LENGTH:
        return [f"{name}: must be at most {MAX_SUBDOMAIN_LENGTH} characters, got {len(value)}"]
    return []


def _image_problems(name: str, value: str) -> list[str]:
    match = _IMAGE_REFERENCE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return [f"{name}: invalid image reference {value!r}: {_IMAGE_HINT}"]
    if len(match["name"]) > MAX_IMAGE_NAME_LENGTH:
        return [f"{name}: the repository name must be at most {MAX_IMAGE_NAME_LENGTH} characters"]
    return []


def _quantity_problems(name: str, value: str) -> list[str]:
    try:
        amount = parse_quantity(value) if isinstance(value, str) else None
    except ValueError:
        amount = None
    if amount is None:
        return [f"{name}: expected a storage size like 1Gi or 500Mi, got {value!r}"]
    if amount <= 0:
        return [f"{name}: must be more than 0 bytes, got {value!r}"]
    return []


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key ([prefix/]name), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > MAX_SUBDOMAIN_LENGTH or not DNS_1123_SUBDOMAIN.fullmatch(prefix)):
        return f"invalid label key {key!r}: the prefix before '/' must be a DNS subdomain like 'example.com'"
    if not LABEL_NAME.fullmatch(name) or len(name) > MAX_LABEL_LENGTH:
        return (
            f"invalid label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if value and (not LABEL_NAME.fullmatch(value) or len(value) > MAX_LABEL_LENGTH):
        return (
            f"invalid label value {value!r}: use at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _label_map_problems(name: str, labels: Mapping[str, str]) -> list[str]:
    if not isinstance(labels, Mapping):
        return [f"{name}: expected a mapping of node label keys to values, got {labels!r}"]
    problems = []
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            problems.append(f"{name}: expected text keys and values, got {key!r}: {value!r}")
            continue
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems
