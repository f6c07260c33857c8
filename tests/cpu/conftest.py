"""Fixtures shared by the CPU-backend tests."""

from __future__ import annotations

import pytest

from lazyaccept.cpu.select import KvmInfo, detect_kvm


@pytest.fixture(scope="module")
def kvm() -> KvmInfo:
    """KVM as this machine offers it; skip without it unless it is supposed to be there (then fail)."""
    info = detect_kvm()
    if not info.usable:
        if info.expected:
            pytest.fail(f"this machine should offer KVM but: {info.detail}")
        pytest.skip(f"{info.detail}: these runs happen on unicorn only")
    return info
