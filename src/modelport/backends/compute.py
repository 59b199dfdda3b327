"""What this machine can give replicas (cpu, memory, GPUs) and the ledger of what live replicas requested.

Used by backends/local.py: `check_compute` asks the ledger whether one more replica fits, `launch` takes a
reservation (and distinct GPU indices), reaping a replica releases it. Requests, not limits (as in Cortex).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from modelport.controller.ports import ComputeVerdict
from modelport.errors import UnavailableError
from modelport.spec.model import ApiSpec
from modelport.types import ReplicaId

# Floating-point slack when comparing cpu cores: ten replicas of 0.2 cores must fit in 2.0 cores.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class MachineCapacity:
    """Everything replicas may request on this machine; GPUs are numbered 0..gpus-1 (CUDA device order)."""

    cpu: float  # cores
    mem: int  # bytes
    gpu: int = 0
    inf: int = 0  # Inferentia chips; never present on a local machine


@dataclass(frozen=True, slots=True)
class ComputeRequest:
    """One replica's request, read from `spec.compute`."""

    cpu: float
    mem: int | None
    gpu: int = 0
    inf: int = 0

    @classmethod
    def of(cls, spec: ApiSpec) -> ComputeRequest:
        compute = spec.compute
        return cls(cpu=compute.cpu, mem=compute.mem, gpu=compute.gpu, inf=compute.inf)


def detect_capacity() -> MachineCapacity:
    """Probe this machine once (the daemon calls it at start; `nvidia-smi` takes a moment)."""
    return MachineCapacity(cpu=float(_usable_cpus()), mem=psutil.virtual_memory().total, gpu=_count_gpus())


def _usable_cpus() -> int:
    # The affinity mask is what this process may actually run on (taskset, container cpusets).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _count_gpus() -> int:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return 0
    try:
        listing = subprocess.run(
            [nvidia_smi, "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # A broken driver install means no usable GPU, not a daemon that cannot start.
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


class ComputeLedger:
    """Capacity minus the requests of the replicas holding a reservation (every replica not yet EXITED)."""

    def __init__(self, capacity: MachineCapacity) -> None:
        self._capacity = capacity
        self._requests: dict[ReplicaId, ComputeRequest] = {}
        self._gpus: dict[ReplicaId, tuple[int, ...]] = {}

    @property
    def capacity(self) -> MachineCapacity:
        return self._capacity

    def check(self, request: ComputeRequest) -> ComputeVerdict:
        cap = self._capacity
        used_cpu = sum(r.cpu for r in self._requests.values())
        used_mem = sum(r.mem or 0 for r in self._requests.values())
        used_gpu = sum(r.gpu for r in self._requests.values())
        used_inf = sum(r.inf for r in self._requests.values())
        missing: list[str] = []
        if request.cpu > cap.cpu - used_cpu + _EPSILON:
            missing.append(_shortfall("cpu", request.cpu, cap.cpu - used_cpu, cap.cpu, _cores))
        if request.mem is not None and request.mem > cap.mem - used_mem:
            missing.append(_shortfall("mem", request.mem, cap.mem - used_mem, cap.mem, format_bytes))
        if request.gpu > cap.gpu - used_gpu:
            missing.append(_shortfall("gpu", request.gpu, cap.gpu - used_gpu, cap.gpu, _cores))
        if request.inf > cap.inf - used_inf:
            missing.append(_shortfall("inf", request.inf, cap.inf - used_inf, cap.inf, _cores))
        return ComputeVerdict(fits=not missing, missing="; ".join(missing))

    def reserve(self, replica_id: ReplicaId, request: ComputeRequest) -> tuple[int, ...]:
        """Record the request and return the GPU indices given to this replica alone.

        cpu and mem are requests the controller checked with `check` first, so they are recorded even past
        capacity; GPUs cannot be shared, so running out of them raises UnavailableError.
        """
        taken = {index for indices in self._gpus.values() for index in indices}
        free = [index for index in range(self._capacity.gpu) if index not in taken]
        if request.gpu > len(free):
            total = self._capacity.gpu
            raise UnavailableError(
                f"replica {replica_id} requests {request.gpu} gpu(s); {len(free)} of {total} free"
            )
        gpus = tuple(free[: request.gpu])
        self._requests[replica_id] = request
        self._gpus[replica_id] = gpus
        return gpus

    def release(self, replica_id: ReplicaId) -> None:
        self._requests.pop(replica_id, None)
        self._gpus.pop(replica_id, None)


def _shortfall(name: str, requested: float, free: float, total: float, fmt: Callable[[float], str]) -> str:
    return f"{name}: requested {fmt(requested)}, {fmt(max(free, 0))} of {fmt(total)} free"


def _cores(value: float) -> str:
    # "0.2", "1.8", "4": enough digits for millicores, no float noise (2 - 0.2 * 1 = 1.8, not 1.7999...).
    return f"{round(value, 3):g}"


def format_bytes(value: float) -> str:
    """Kubernetes-style binary quantity: 64Gi, 20.1Gi, 512Mi; one decimal when not a whole unit."""
    for unit, size in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if value >= size:
            return f"{round(value / size, 1):g}{unit}"
    return f"{int(value)}"
