"""edk2 2026.08 (Debian forky) under the real-firmware runner: the OvmfPkgX64 image direct-boots Debian's 6.12 EFI
stub into the kernel on a 4 GiB, 2-vCPU TD with a sound handoff; the PEI-less IntelTdxX64 image with Microsoft keys
enrolled refuses the unsigned stub under Secure Boot and ends where BDS finds nothing to boot, as it would under
QEMU."""

from __future__ import annotations

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.tdvf_run import SECURE_BOOT_REFUSED_LINE, TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.units import GiB

pytestmark = pytest.mark.real_binary

MAX_WALL_S = 600  # a bound, not a figure: a run that needs more is stuck


def test_inteltdx_2026_08_refuses_the_unsigned_stub_and_bds_finds_nothing_to_boot() -> None:
    # OVMF.inteltdx.ms.fd enrols Microsoft's keys, so LoadImage of the unsigned stub is a security violation, and
    # X86QemuLoadImageLib (edk2 5a6a9f7955, 2025-10) refuses the legacy loader in a confidential VM.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), kernel=store.linux_vmlinuz(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.NO_BOOT_OPTION and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console)
    assert "Secure Boot refused the kernel" in rep.detail
    assert SECURE_BOOT_REFUSED_LINE in rep.console and "not using insecure legacy linux kernel loader" in rep.console
    assert rep.tdcalls["MEM_PAGE_ACCEPT"] > 0 and rep.rip < KERNEL_TEXT_MAPPING


def test_ovmf_2026_08_boots_the_stub_into_the_kernel_on_two_vcpus() -> None:
    # Also the test of the TD vCPU's code pages: before writes to an executed page kept to unicorn's slow path,
    # this image ran a stale translation of a page DXE had reloaded and was terminated in FaultTolerantWriteDxe.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_2026_fd(), ram=4 * GiB, vcpus=2, kernel=store.linux_vmlinuz(),
                           max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.KERNEL and rep.exit_code == EXIT_BOOTED, (rep.detail, rep.console[-500:])
    assert rep.kernel is not None and not rep.kernel.check.problems, rep.kernel.check.problems
    table = rep.kernel.handoff.table if rep.kernel.handoff else None
    assert table is not None and table.set_bytes() == 2 * GiB  # above 4 GiB, as upstream leaves it
    assert {a for a in rep.accepted_by_actor if a.startswith("SecMain")} == {"SecMain vCPU 0", "SecMain vCPU 1"}
