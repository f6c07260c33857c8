"""Shared builders for the DXE memory-services tests: small TDs described as SEC would hand them to DXE."""

from __future__ import annotations

import pytest

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.tdx.costs import profile_by_name
from lazyaccept.tdx.module import TdxModule
from lazyaccept.units import GiB, MiB

UNACCEPTED = ResourceType.MEMORY_UNACCEPTED


def td_layout(low_bytes: int, high_bytes: int, upfront_bytes: int) -> list[Resource]:
    """RAM [0, low) and [4 GiB, 4 GiB + high); the first upfront_bytes accepted, the rest type 7."""
    res = [Resource(0, upfront_bytes)]
    if low_bytes > upfront_bytes:
        res.append(Resource(upfront_bytes, low_bytes - upfront_bytes, UNACCEPTED))
    if high_bytes:
        res.append(Resource(4 * GiB, high_bytes, UNACCEPTED))
    return res


def make_tdx(low_bytes: int, high_bytes: int, upfront_bytes: int, profile: str = "kvm-2m") -> TdxModule:
    tdx = TdxModule(profile=profile_by_name(profile), num_vcpus=8)
    tdx.add_ram(0, low_bytes)
    if high_bytes:
        tdx.add_ram(4 * GiB, high_bytes)
    tdx.accept_range(0, upfront_bytes, actor="sec")
    return tdx


def make_core(
    policy: DxePolicy | None = None,
    *,
    low: int = 1 * GiB,
    high: int = 1 * GiB,
    upfront: int = 128 * MiB,
    with_tdx: bool = True,
    profile: str = "kvm-2m",
) -> DxeCore:
    tdx = make_tdx(low, high, upfront, profile) if with_tdx else None
    return DxeCore(td_layout(low, high, upfront), tdx=tdx, policy=policy or DxePolicy())


@pytest.fixture
def core() -> DxeCore:
    """Upstream policy, 1 GiB low (128 MiB accepted) + 1 GiB high, with the TDX module."""
    return make_core()
