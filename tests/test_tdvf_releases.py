"""edk2 2026.08 (Debian forky) under the real-firmware runner: the OvmfPkgX64 image direct-boots Debian's 6.12 EFI
stub into the kernel, and the PEI-less IntelTdxX64 image with Microsoft keys enrolled refuses that unsigned stub
under Secure Boot and ends where BDS finds nothing to boot, as it would under QEMU."""

from __future__ import annotations

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.tdvf_run import SECURE_BOOT_REFUSED_LINE, TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary

# A bound, not a figure: a run that needs more is stuck (the figures are in the README).
MAX_WALL_S = 600


def test_ovmf_2026_08_direct_boots_the_6_12_stub_into_the_kernel() -> None:
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_2026_fd(), kernel=store.linux_vmlinuz(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.KERNEL and rep.exit_code == EXIT_BOOTED, (rep.detail, rep.console[-800:])
    assert rep.rip >= KERNEL_TEXT_MAPPING
    # SEC accepted all RAM below 4 GiB; what is missing stayed shared (MapGPA) at the stub's jump.
    shared = sum(e - s for s, e in rep.shared_ranges)
    assert rep.accepted_bytes + shared >= 2 * GiB - 64 * 1024 * 1024 and rep.tdvmcalls["MAP_GPA"] > 0


def test_inteltdx_2026_08_refuses_the_unsigned_stub_and_bds_finds_nothing_to_boot() -> None:
    # OVMF.inteltdx.ms.fd enrols Microsoft's keys, so LoadImage of the unsigned stub is a security violation, and
    # X86QemuLoadImageLib (edk2 5a6a9f7955, 2025-10) refuses the legacy loader in a confidential VM.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), kernel=store.linux_vmlinuz(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.NO_BOOT_OPTION and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console)
    assert "Secure Boot refused the kernel" in rep.detail
    assert SECURE_BOOT_REFUSED_LINE in rep.console and "not using insecure legacy linux kernel loader" in rep.console
    assert rep.tdcalls["MEM_PAGE_ACCEPT"] > 0 and rep.rip < KERNEL_TEXT_MAPPING
