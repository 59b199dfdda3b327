"""FakeKubeApi: an in-memory Kubernetes API server behind the backend's KubeApi seam, plus the few things
the cluster's controllers and kubelets would do (make a Deployment's pods, start or crash them, publish
EndpointSlices, keep logs), each moved by the test.

Used by test_backend_kubernetes.py, test_cli_envs.py and the in-cluster controller's tests (test_leader.py,
test_kube_loop.py, test_kube_daemon.py): no API server can run in these tests. It is strict
where the real server is: a manifest without apiVersion, kind or metadata.name, an object in a namespace that
does not exist, a changed Deployment selector, a changed immutable ConfigMap, a scale of a missing Deployment,
an update over a stale resourceVersion are refused with the status and message the API server gives.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelport.backends.kubernetes import Kind, KubeApiError
from modelport.clock import FakeClock

Object = dict[str, Any]
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_SELECTOR_TERM = re.compile(r"(?P<key>[A-Za-z0-9./_-]+)(?:=(?P<value>[A-Za-z0-9._-]*))?")
TEMPLATE_HASH_LABEL = "pod-template-hash"


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_timestamp(seconds: float) -> str:
    """The kubelet's RFC 3339 with nanoseconds (trailing zeros trimmed, as Go's RFC3339Nano does)."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1_000_000_000)
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


@dataclass
class Call:
    method: str
    target: str  # "Deployment mp/api-iris"


@dataclass
class FakeKubeApi:
    clock: FakeClock = field(default_factory=FakeClock)
    namespaces: tuple[str, ...] = ("default",)
    objects: dict[tuple[Kind, str, str], Object] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    logs: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # pod -> (wall time, line)
    failures: dict[str, KubeApiError] = field(default_factory=dict)  # method -> raised by its next call
    _counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        for namespace in self.namespaces:
            self.objects[(Kind.NAMESPACE, "", namespace)] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": self._server_metadata({"name": namespace}),
            }

    # The KubeApi seam --------------------------------------------------------------------------------------

    def apply(self, manifest: Object) -> Object:
        self._record("apply", manifest)
        kind = self._kind_of(manifest)
        meta = manifest.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise KubeApiError(status=422, reason="Invalid", message="metadata.name: Required value")
        name = str(meta["name"])
        if not _NAME.fullmatch(name) or len(name) > 253:
            raise KubeApiError(
                status=422, reason="Invalid", message=f"metadata.name: Invalid value: {name!r}"
            )
        if kind in (Kind.POD, Kind.ENDPOINT_SLICE):
            raise KubeApiError(status=403, reason="Forbidden", message=f"{kind} objects are not modelport's")
        namespace = self._namespace_of(kind, meta)
        key = (kind, namespace, name)
        stored = copy.deepcopy(manifest)
        previous = self.objects.get(key)
        if kind is Kind.DEPLOYMENT:
            self._check_deployment(stored, previous)
        immutable = kind is Kind.CONFIG_MAP and previous is not None and previous.get("immutable")
        if immutable and previous is not None and previous.get("data") != stored.get("data"):
            raise KubeApiError(
                status=422,
                reason="Invalid",
                message=f'ConfigMap "{name}" is invalid: data: Forbidden: field is immutable when '
                "`immutable` is set",
            )
        server = {} if previous is None else previous["metadata"]
        stored["metadata"] = {
            **self._server_metadata(stored["metadata"]),
            **_kept(server),
            **stored["metadata"],
        }
        if kind is Kind.DEPLOYMENT:
            stored["spec"].setdefault("replicas", 1)
            generation = int(server.get("generation", 0))
            changed = previous is None or previous.get("spec") != stored.get("spec")
            stored["metadata"]["generation"] = generation + 1 if changed else generation
            stored["status"] = (previous or {}).get("status", {})
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def get(self, kind: Kind, *, name: str, namespace: str) -> Object | None:
        self._record("get", target=f"{kind} {namespace}/{name}")
        found = self.objects.get((kind, namespace if kind.namespaced else "", name))
        return copy.deepcopy(found) if found is not None else None

    def replace(self, manifest: Object) -> Object:
        """PUT: the whole object, over the resourceVersion it names (the API server's optimistic concurrency:
        409 when the stored one moved on; no resourceVersion is an unconditional update, as for Leases)."""
        self._record("replace", manifest)
        kind = self._kind_of(manifest)
        meta = manifest.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise KubeApiError(status=422, reason="Invalid", message="metadata.name: Required value")
        name = str(meta["name"])
        key = (kind, self._namespace_of(kind, meta), name)
        previous = self.objects.get(key)
        plural = f"{kind.value.lower()}s"
        if previous is None:
            raise KubeApiError(status=404, reason="NotFound", message=f'{plural} "{name}" not found')
        version = meta.get("resourceVersion")
        if version and version != previous["metadata"]["resourceVersion"]:
            raise KubeApiError(
                status=409,
                reason="Conflict",
                message=f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        stored = copy.deepcopy(manifest)
        stored["metadata"] = {
            **stored["metadata"],
            **_kept(previous["metadata"]),
            "resourceVersion": str(next(self._counter)),
        }
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def list_objects(self, kind: Kind, *, namespace: str, selector: str) -> list[Object]:
        self._record("list_objects", target=f"{kind} {namespace} {selector}")
        terms = _parse_selector(selector)
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.objects.items(), key=lambda item: item[0][2])
            if k is kind and ns == namespace and _matches(obj["metadata"].get("labels") or {}, terms)
        ]

    def delete(self, kind: Kind, *, name: str, namespace: str) -> bool:
        self._record("delete", target=f"{kind} {namespace}/{name}")
        key = (kind, namespace if kind.namespaced else "", name)
        removed = self.objects.pop(key, None)
        if removed is None:
            return False
        if kind in (Kind.DEPLOYMENT, Kind.JOB):  # the garbage collector stops the owned pods
            for pod in self._pods(namespace, owner=name):
                pod["metadata"]["deletionTimestamp"] = timestamp(self.clock.wall())
        return True

    def read_scale(self, deployment: str, *, namespace: str) -> int:
        self._record("read_scale", target=f"Deployment {namespace}/{deployment}")
        return int(self._deployment(deployment, namespace)["spec"]["replicas"])

    def patch_scale(self, deployment: str, *, namespace: str, replicas: int) -> None:
        self._record("patch_scale", target=f"Deployment {namespace}/{deployment} {replicas}")
        found = self._deployment(deployment, namespace)
        if replicas < 0:
            raise KubeApiError(status=422, reason="Invalid", message="spec.replicas: must be >= 0")
        if found["spec"]["replicas"] != replicas:
            found["spec"]["replicas"] = replicas
            found["metadata"]["generation"] += 1

    def pod_log(self, pod: str, *, namespace: str, since_seconds: int | None, tail_lines: int | None) -> str:
        self._record("pod_log", target=f"Pod {namespace}/{pod} since={since_seconds} tail={tail_lines}")
        found = self.objects.get((Kind.POD, namespace, pod))
        if found is None:
            raise KubeApiError(status=404, reason="NotFound", message=f'pods "{pod}" not found')
        statuses = found.get("status", {}).get("containerStatuses") or []
        ran = any(
            "running" in s.get("state", {})
            or "terminated" in {**s.get("state", {}), **s.get("lastState", {})}
            for s in statuses
        )
        if not ran:
            raise KubeApiError(
                status=400,
                reason="BadRequest",
                message=f'container "replica" in pod "{pod}" is waiting to start: ContainerCreating',
            )
        lines = self.logs.get(pod, [])
        if since_seconds is not None:
            lines = [(at, line) for at, line in lines if at >= self.clock.wall() - since_seconds]
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines else []
        return "".join(f"{log_timestamp(at)} {line}\n" for at, line in lines)

    # What the cluster does on its own ----------------------------------------------------------------------

    def settle(self) -> None:
        """One pass of the Deployment and EndpointSlice controllers: each Deployment gets pods of its
        template up to its replicas (new pods start Pending), pods of an older template are stopped once the
        new ones are ready, extra pods are stopped; statuses and EndpointSlices are brought up to date."""
        for (kind, namespace, name), deployment in list(self.objects.items()):
            if kind is Kind.DEPLOYMENT:
                self._settle_deployment(namespace, name, deployment)
        for (kind, namespace, name), service in list(self.objects.items()):
            if kind is Kind.SERVICE and service.get("spec", {}).get("selector"):
                self._publish_endpoints(namespace, name, service)

    def start_job_pods(self, job: str, *, namespace: str, count: int) -> list[str]:
        """The Job controller creates `count` pods of the Job's template (Pending); their names."""
        template = self.stored(Kind.JOB, job, namespace=namespace)["spec"]["template"]
        names = []
        for _ in range(count):
            pod_name = f"{job}-{next(self._counter)}"
            self.objects[(Kind.POD, namespace, pod_name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **self._server_metadata({"name": pod_name}),
                    "namespace": namespace,
                    "labels": {**template["metadata"]["labels"], "job-name": job},
                    "annotations": dict(template["metadata"].get("annotations") or {}),
                    "ownerReferences": [{"kind": "Job", "name": job}],
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
            }
            names.append(pod_name)
        return names

    def finish_job(self, job: str, *, namespace: str, condition: str) -> None:
        """The Job controller marks the Job finished: `condition` is "Complete" or "Failed"."""
        found = self.stored(Kind.JOB, job, namespace=namespace)
        found["status"] = {"conditions": [{"type": condition, "status": "True"}]}

    def start(self, pod: str, *, namespace: str, ready: bool = True) -> None:
        """The kubelet starts the pod's container; `ready` when its readiness probe passes."""
        found = self.pod(pod, namespace=namespace)
        now = timestamp(self.clock.wall())
        found["status"] = {
            "phase": "Running",
            "podIP": f"192.0.2.{next(self._counter) % 250 + 1}",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": "replica",
                    "ready": ready,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }

    def crash_loop(self, pod: str, *, namespace: str, restarts: int, exit_code: int) -> None:
        found = self.pod(pod, namespace=namespace)
        if "podIP" not in found["status"]:
            self.start(pod, namespace=namespace, ready=False)
        _set_ready(found, ready=False)
        found["status"]["containerStatuses"] = [
            {
                "name": "replica",
                "ready": False,
                "restartCount": restarts,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 5m0s restarting failed container=replica",
                    }
                },
                "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error"}},
            }
        ]

    def fail_image_pull(self, pod: str, *, namespace: str, message: str) -> None:
        found = self.pod(pod, namespace=namespace)
        found["status"]["containerStatuses"] = [
            {
                "name": "replica",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}},
            }
        ]

    def leave_unscheduled(self, pod: str, *, namespace: str, message: str) -> None:
        found = self.pod(pod, namespace=namespace)
        found["status"] = {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ],
        }

    def exit(self, pod: str, *, namespace: str, exit_code: int) -> None:
        found = self.pod(pod, namespace=namespace)
        found["status"]["phase"] = "Failed" if exit_code else "Succeeded"
        _set_ready(found, ready=False)
        found["status"]["containerStatuses"] = [
            {
                "name": "replica",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
                },
            }
        ]

    def finish_terminating(self) -> None:
        """Terminating pods are gone (their grace period is over)."""
        for key, obj in list(self.objects.items()):
            if key[0] is Kind.POD and obj["metadata"].get("deletionTimestamp"):
                del self.objects[key]

    def write_log(self, pod: str, line: str) -> None:
        """The pod's container prints `line` now (the fake clock's wall time)."""
        self.logs.setdefault(pod, []).append((self.clock.wall(), line))

    def fail_next(self, method: str, error: KubeApiError) -> None:
        self.failures[method] = error

    def pod(self, name: str, *, namespace: str) -> Object:
        return self.objects[(Kind.POD, namespace, name)]

    def pod_names(self, namespace: str, *, owner: str | None = None) -> list[str]:
        return [pod["metadata"]["name"] for pod in self._pods(namespace, owner=owner)]

    def put(self, obj: Object) -> None:
        """Store an object as a controller would write it (no checks): pods, EndpointSlices."""
        kind = self._kind_of(obj)
        meta = obj["metadata"]
        namespace = meta.get("namespace", "") if kind.namespaced else ""
        obj["metadata"] = {**self._server_metadata(meta), **meta}
        self.objects[(kind, namespace, meta["name"])] = obj

    def stored(self, kind: Kind, name: str, *, namespace: str) -> Object:
        return self.objects[(kind, namespace if kind.namespaced else "", name)]

    def names(self, kind: Kind, *, namespace: str) -> list[str]:
        return sorted(name for (k, ns, name) in self.objects if k is kind and ns == namespace)

    # Internals ---------------------------------------------------------------------------------------------

    def _record(self, method: str, manifest: Mapping[str, Any] | None = None, *, target: str = "") -> None:
        if manifest is not None:
            meta = manifest.get("metadata") or {}
            target = f"{manifest.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"
        self.calls.append(Call(method=method, target=target))
        error = self.failures.pop(method, None)
        if error is not None:
            raise error

    def _kind_of(self, manifest: Mapping[str, Any]) -> Kind:
        api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
        if not api_version or not kind:
            raise KubeApiError(
                status=400, reason="BadRequest", message="Object 'Kind' or 'apiVersion' is missing"
            )
        for member in Kind:
            if member.value == kind and member.api_version == api_version:
                return member
        raise KubeApiError(
            status=404, reason="NotFound", message=f'no matches for kind "{kind}" in version "{api_version}"'
        )

    def _namespace_of(self, kind: Kind, meta: Mapping[str, Any]) -> str:
        if not kind.namespaced:
            return ""
        namespace = meta.get("namespace")
        if not namespace:
            raise KubeApiError(status=400, reason="BadRequest", message="the namespace must be set")
        if (Kind.NAMESPACE, "", namespace) not in self.objects:
            raise KubeApiError(status=404, reason="NotFound", message=f'namespaces "{namespace}" not found')
        return str(namespace)

    def _server_metadata(self, meta: Mapping[str, Any]) -> Object:
        return {
            "uid": f"uid-{next(self._counter)}",
            "creationTimestamp": timestamp(self.clock.wall()),
            "resourceVersion": str(next(self._counter)),
            "name": meta.get("name"),
        }

    def _check_deployment(self, stored: Object, previous: Object | None) -> None:
        spec = stored.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            raise KubeApiError(
                status=422,
                reason="Invalid",
                message="spec.template.metadata.labels: Invalid value: `selector` does not match template "
                "`labels`",
            )
        if previous is not None and previous["spec"]["selector"] != spec["selector"]:
            raise KubeApiError(
                status=422, reason="Invalid", message="spec.selector: Invalid value: field is immutable"
            )

    def _deployment(self, name: str, namespace: str) -> Object:
        found = self.objects.get((Kind.DEPLOYMENT, namespace, name))
        if found is None:
            raise KubeApiError(status=404, reason="NotFound", message=f'deployments.apps "{name}" not found')
        return found

    def _pods(self, namespace: str, *, owner: str | None) -> list[Object]:
        return [
            obj
            for (kind, ns, _), obj in sorted(self.objects.items(), key=lambda item: item[0][2])
            if kind is Kind.POD and ns == namespace and (owner is None or _owner(obj) == owner)
        ]

    def _settle_deployment(self, namespace: str, name: str, deployment: Object) -> None:
        template = deployment["spec"]["template"]
        revision_key = _template_key(template)
        pods = [p for p in self._pods(namespace, owner=name) if not p["metadata"].get("deletionTimestamp")]
        current = [p for p in pods if _template_hash(p) == revision_key]
        older = [p for p in pods if _template_hash(p) != revision_key]
        wanted = int(deployment["spec"]["replicas"])
        for _ in range(wanted - len(current)):
            pod_name = f"{name}-{revision_key}-{next(self._counter)}"
            self.objects[(Kind.POD, namespace, pod_name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **self._server_metadata({"name": pod_name}),
                    "namespace": namespace,
                    "labels": {**template["metadata"]["labels"], TEMPLATE_HASH_LABEL: revision_key},
                    "annotations": dict(template["metadata"].get("annotations") or {}),
                    "ownerReferences": [{"kind": "ReplicaSet", "name": f"{name}-{revision_key}"}],
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
            }
        stop = current[wanted:] if len(current) > wanted else []
        ready_current = [p for p in current[:wanted] if _is_ready(p)]
        if len(ready_current) >= wanted:
            stop += older
        for pod in stop:
            pod["metadata"]["deletionTimestamp"] = timestamp(self.clock.wall())
        live = [p for p in self._pods(namespace, owner=name) if not p["metadata"].get("deletionTimestamp")]
        updated = [p for p in live if _template_hash(p) == revision_key]
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": len(live),
            "updatedReplicas": len(updated),
            "readyReplicas": sum(1 for p in live if _is_ready(p)),
            "availableReplicas": sum(1 for p in live if _is_ready(p)),
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        }

    def _publish_endpoints(self, namespace: str, service_name: str, service: Object) -> None:
        selector = service["spec"]["selector"]
        endpoints = []
        for pod in self._pods(namespace, owner=None):
            labels = pod["metadata"].get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()) or "podIP" not in pod.get("status", {}):
                continue
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            endpoints.append(
                {
                    "addresses": [pod["status"]["podIP"]],
                    "conditions": {
                        "ready": _is_ready(pod) and not terminating,
                        "serving": _is_ready(pod),
                        "terminating": terminating,
                    },
                    "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": namespace},
                }
            )
        ports = [{"name": p.get("name"), "port": 8080, "protocol": "TCP"} for p in service["spec"]["ports"]]
        slice_name = f"{service_name}-slice"
        self.objects[(Kind.ENDPOINT_SLICE, namespace, slice_name)] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                **self._server_metadata({"name": slice_name}),
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": service_name},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        }


def _template_hash(pod: Mapping[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL, ""))


def _owner(pod: Mapping[str, Any]) -> str | None:
    """The Deployment that owns a pod through its ReplicaSet (`<deployment>-<template hash>`), or its Job."""
    references = pod["metadata"].get("ownerReferences") or []
    if references and references[0].get("kind") == "Job":
        return str(references[0]["name"])
    if not references or references[0].get("kind") != "ReplicaSet":
        return None
    return str(references[0]["name"]).removesuffix(f"-{_template_hash(pod)}")


def _kept(server: Mapping[str, Any]) -> Object:
    return {k: v for k, v in server.items() if k in ("uid", "creationTimestamp", "generation")}


def _template_key(template: Mapping[str, Any]) -> str:
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    key = "".join(ch for ch in str(annotations.get("modelport.dev/revision", "x")) if ch.isalnum())
    restarted = annotations.get("kubectl.kubernetes.io/restartedAt", "")
    return (key[:6] + ("r" if restarted else "")) or "x"


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _set_ready(pod: Object, *, ready: bool) -> None:
    for condition in pod["status"].get("conditions") or []:
        if condition["type"] == "Ready":
            condition["status"] = "True" if ready else "False"


def _parse_selector(selector: str) -> list[tuple[str, str | None]]:
    """`a=b,c` as [(a, b), (c, None)]; anything else is a bug in the caller (the backend builds these)."""
    terms: list[tuple[str, str | None]] = []
    for term in selector.split(","):
        match = _SELECTOR_TERM.fullmatch(term)
        if match is None:
            raise ValueError(f"the fake understands 'key=value' and 'key' selectors only, got {selector!r}")
        terms.append((match["key"], match["value"]))
    return terms


def _matches(labels: Mapping[str, str], terms: list[tuple[str, str | None]]) -> bool:
    return all(key in labels and (value is None or labels[key] == value) for key, value in terms)
