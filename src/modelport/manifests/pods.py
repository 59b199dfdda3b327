"""Pieces of a pod: metadata, security contexts, compute resources, scheduling, env vars and probes.

Pure helpers returning plain dicts, called by cluster.py (controller, gateway) and apis.py (replicas,
workers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelport.errors import UserInputError
from modelport.manifests.layout import GPU_RESOURCE, INF_RESOURCE, RUN_AS_USER
from modelport.manifests.options import RenderOptions
from modelport.spec.model import ComputeSpec
from modelport.spec.units import format_memory

Object = dict[str, Any]

# Variables modelport sets in every API pod; the user's predictor.env may not redefine them.
RESERVED_ENV = frozenset({"POD_NAME", "POD_NAMESPACE"})


def metadata(
    name: str,
    *,
    namespace: str | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> Object:
    meta: Object = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> Object:
    """What Pod Security's `restricted` profile asks of a pod; fsGroup makes mounted volumes writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(*, read_only_root: bool) -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def cpu_quantity(cores: float) -> str:
    """Whole cores as "2", fractions as millicores "200m" (rounded up to 1m, the API's precision)."""
    millis = math.ceil(round(cores * 1000, 6))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(num_bytes: int) -> str:
    """Bytes in the largest exact unit: 536870912 -> "512Mi", 2147483648 -> "2Gi"."""
    return format_memory(num_bytes)


def resources(compute: ComputeSpec) -> Object:
    """Requests and limits of a predictor container.

    No CPU limit: a limit throttles a replica in the middle of a request (latency spikes) even on an idle
    node; the request alone reserves the cores. Memory limit = request, so a leaking replica is OOM-killed
    alone. GPUs and Inferentia chips are extended resources: limits only (Kubernetes sets requests to match).
    """
    requests: Object = {"cpu": cpu_quantity(compute.cpu)}
    limits: Object = {}
    if compute.mem is not None:
        requests["memory"] = limits["memory"] = memory_quantity(compute.mem)
    if compute.gpu:
        limits[GPU_RESOURCE] = str(compute.gpu)
    if compute.inf:
        limits[INF_RESOURCE] = str(compute.inf)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def scheduling(compute: ComputeSpec, options: RenderOptions) -> Object:
    """Tolerations and a nodeSelector for accelerator nodes, only when the API asks for accelerators."""
    tolerations: list[Object] = []
    selector: dict[str, str] = {}
    for count, resource, node_labels in (
        (compute.gpu, GPU_RESOURCE, options.gpu_node_selector),
        (compute.inf, INF_RESOURCE, options.inf_node_selector),
    ):
        if count:
            tolerations.append({"key": resource, "operator": "Exists", "effect": "NoSchedule"})
            selector.update(node_labels)
    placed: Object = {}
    if selector:
        placed["nodeSelector"] = selector
    if tolerations:
        placed["tolerations"] = tolerations
    return placed


def field_env(name: str, field_path: str) -> Object:
    """A variable from the downward API, e.g. the pod's name."""
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def user_env(env: Mapping[str, str], *, api: str) -> list[Object]:
    """predictor.env as container variables, passed literally.

    Kubernetes expands `$(VAR)` in values and turns `$$` into `$`: doubling every `$` keeps values as written.
    """
    clashes = sorted(RESERVED_ENV.intersection(env))
    if clashes:
        raise UserInputError(
            f"API {api!r}: predictor.env.{clashes[0]}: modelport sets {', '.join(sorted(RESERVED_ENV))} in "
            "every pod on Kubernetes (the replica id comes from it): rename the variable"
        )
    return [{"name": name, "value": value.replace("$", "$$")} for name, value in env.items()]


def http_probe(path: str, port: str, *, period: int, failures: int, timeout: int = 1) -> Object:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def sleep_hook(seconds: int) -> Object:
    """A preStop hook that waits while endpoints drop the pod; python is in every modelport image."""
    return {"preStop": {"exec": {"command": ["python", "-c", f"import time; time.sleep({seconds})"]}}}


def spread_over_nodes(selector: Mapping[str, str]) -> list[Object]:
    """Prefer replicas on different nodes (a node failure takes fewer of them), never refuse to schedule."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
        }
    ]
