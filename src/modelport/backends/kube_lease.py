"""The controllers' Lease (coordination.k8s.io/v1) as controller/kube_ports.py's `LeaseStore`: read it, and
write it back only over the resourceVersion it was read at (an update, never an apply, so that two
candidates cannot both win).

Built by modelport.cluster.kube_daemon for controller/leader.py's LeaderElector. The Lease exists before any
controller runs (the rendered manifests create it: the controller's Role may only get and update it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from modelport.backends.kube_state import Object, parse_timestamp
from modelport.backends.kubernetes import Kind, KubernetesBackend
from modelport.controller.kube_ports import LeaseRecord
from modelport.errors import NotFoundError

__all__ = ["KubeLeaseStore", "lease_record", "lease_spec"]


class KubeLeaseStore:
    """One named Lease of the backend's namespace."""

    def __init__(self, backend: KubernetesBackend, *, name: str, namespace: str) -> None:
        self._backend = backend
        self._name = name
        self._namespace = namespace
        self._last: Object | None = None  # the Lease as last read or written, the base of the next write

    def read(self) -> LeaseRecord:
        found = self._backend.lease(self._name)
        if found is None:
            raise NotFoundError(
                f"Lease {self._name!r} does not exist in {self._backend.where}: apply the manifests of "
                "`modelport render kubernetes` (`modelport deploy --env ENV` applies them), which create it"
            )
        self._last = found
        return lease_record(found)

    def write(self, record: LeaseRecord) -> LeaseRecord:
        base = self._last or {
            "apiVersion": Kind.LEASE.api_version,
            "kind": Kind.LEASE.value,
            "metadata": {"name": self._name, "namespace": self._namespace},
        }
        lease = copy.deepcopy(base)
        lease["metadata"]["resourceVersion"] = record.version
        lease["spec"] = lease_spec(record)
        stored = self._backend.replace_lease(lease)
        self._last = stored
        return lease_record(stored)


def lease_record(lease: Mapping[str, Any]) -> LeaseRecord:
    """What a Lease object says."""
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or "") or None,
        duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
        acquired_at=parse_timestamp(spec.get("acquireTime")),
        renewed_at=parse_timestamp(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        version=str(meta.get("resourceVersion") or ""),
    )


def lease_spec(record: LeaseRecord) -> Object:
    """A Lease's spec for `record` (a released Lease has no holder)."""
    spec: Object = {
        "leaseDurationSeconds": max(1, math.ceil(record.duration_seconds)),
        "leaseTransitions": record.transitions,
    }
    if record.holder is not None:
        spec["holderIdentity"] = record.holder
    if record.acquired_at is not None:
        spec["acquireTime"] = _micro_time(record.acquired_at)
    if record.renewed_at is not None:
        spec["renewTime"] = _micro_time(record.renewed_at)
    return spec


def _micro_time(seconds: float) -> str:
    """Kubernetes' MicroTime: RFC 3339 with microseconds, in UTC."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
