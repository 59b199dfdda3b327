"""Compute accounting of the local backend: what fits, what the refusal says, which GPUs a replica gets."""

from __future__ import annotations

import pytest

from modelport.backends.compute import (
    ComputeLedger,
    ComputeRequest,
    MachineCapacity,
    detect_capacity,
    format_bytes,
)
from modelport.controller.ports import ComputeVerdict
from modelport.errors import UnavailableError
from modelport.spec.model import ApiSpec
from modelport.types import ReplicaId

GI = 1 << 30


def rid(n: int) -> ReplicaId:
    return ReplicaId(f"r{n}")


def test_ten_default_replicas_fit_on_two_cores_and_the_eleventh_does_not() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=2.0, mem=8 * GI))
    default = ComputeRequest(cpu=0.2, mem=None)
    for n in range(10):
        assert ledger.check(default).fits, n
        ledger.reserve(rid(n), default)

    assert ledger.check(default) == ComputeVerdict(fits=False, missing="cpu: requested 0.2, 0 of 2 free")


def test_cpu_refusal_names_request_free_and_total() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=2.0, mem=8 * GI))
    ledger.reserve(rid(1), ComputeRequest(cpu=0.2, mem=None))

    assert ledger.check(ComputeRequest(cpu=4, mem=None)).missing == "cpu: requested 4, 1.8 of 2 free"
    assert ledger.check(ComputeRequest(cpu=1.8, mem=None)).fits


def test_memory_counts_only_when_requested() -> None:
    capacity = MachineCapacity(cpu=8.0, mem=int(23.4 * GI))
    ledger = ComputeLedger(capacity)
    ledger.reserve(rid(1), ComputeRequest(cpu=0.2, mem=int(3.3 * GI)))
    ledger.reserve(rid(2), ComputeRequest(cpu=0.2, mem=None))

    verdict = ledger.check(ComputeRequest(cpu=0.2, mem=64 * GI))
    assert verdict == ComputeVerdict(fits=False, missing="mem: requested 64Gi, 20.1Gi of 23.4Gi free")
    assert ledger.check(ComputeRequest(cpu=0.2, mem=20 * GI)).fits
    assert ledger.check(ComputeRequest(cpu=0.2, mem=None)).fits


def test_gpu_and_inf_requests_on_a_machine_without_them() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=2.0, mem=8 * GI))

    assert ledger.check(ComputeRequest(cpu=0.2, mem=None, gpu=1)).missing == "gpu: requested 1, 0 of 0 free"
    assert ledger.check(ComputeRequest(cpu=0.2, mem=None, inf=1)).missing == "inf: requested 1, 0 of 0 free"


def test_every_shortfall_is_reported_at_once() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=2.0, mem=4 * GI, gpu=1))

    verdict = ledger.check(ComputeRequest(cpu=3, mem=8 * GI, gpu=2))
    assert not verdict.fits
    assert verdict.missing == (
        "cpu: requested 3, 2 of 2 free; mem: requested 8Gi, 4Gi of 4Gi free; gpu: requested 2, 1 of 1 free"
    )


def test_gpu_indices_are_distinct_and_come_back_on_release() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=16.0, mem=64 * GI, gpu=4))
    one, two = ComputeRequest(cpu=1, mem=None, gpu=1), ComputeRequest(cpu=1, mem=None, gpu=2)

    assert ledger.reserve(rid(1), one) == (0,)
    assert ledger.reserve(rid(2), two) == (1, 2)
    assert ledger.reserve(rid(3), ComputeRequest(cpu=1, mem=None)) == ()
    assert ledger.check(two).missing == "gpu: requested 2, 1 of 4 free"
    with pytest.raises(UnavailableError, match="requests 2 gpu"):
        ledger.reserve(rid(4), two)

    ledger.release(rid(1))
    assert ledger.check(two).fits
    assert ledger.reserve(rid(5), two) == (0, 3)
    ledger.release(rid(99))  # unknown: nothing to give back


def test_released_requests_free_cpu_and_memory() -> None:
    ledger = ComputeLedger(MachineCapacity(cpu=1.0, mem=2 * GI))
    big = ComputeRequest(cpu=1.0, mem=2 * GI)
    ledger.reserve(rid(1), big)
    assert not ledger.check(big).fits
    ledger.release(rid(1))
    assert ledger.check(big).fits


def test_request_is_read_from_the_spec_compute_section() -> None:
    spec = ApiSpec.model_validate(
        {
            "name": "bert",
            "kind": "RealtimeAPI",
            "predictor": {"type": "python", "path": "predictor.py"},
            "compute": {"cpu": "1500m", "mem": "512Mi", "gpu": 1},
        }
    )
    assert ComputeRequest.of(spec) == ComputeRequest(cpu=1.5, mem=512 << 20, gpu=1, inf=0)


def test_format_bytes() -> None:
    assert format_bytes(64 * GI) == "64Gi"
    assert format_bytes(512 << 20) == "512Mi"
    assert format_bytes(1.5 * (1 << 40)) == "1.5Ti"
    assert format_bytes(1000) == "1000"


def test_detected_capacity_is_plausible() -> None:
    capacity = detect_capacity()
    assert capacity.cpu >= 1
    assert capacity.mem > 64 << 20
    assert capacity.gpu >= 0
    assert capacity.inf == 0
