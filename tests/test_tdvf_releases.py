"""edk2 2026.08 (Debian forky) under the real-firmware runner: the OvmfPkgX64 image direct-boots Debian's 6.12 EFI
stub into the kernel on a 4 GiB, 2-vCPU TD with a sound handoff; the PEI-less IntelTdxX64 image with Microsoft keys
enrolled refuses the unsigned stub under Secure Boot and ends where BDS finds nothing to boot, as it would under
QEMU."""

from __future__ import annotations

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.errors import InputError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.guest.handoff_check import side_effect_free_reader
from lazyaccept.tdvf_run import SECURE_BOOT_REFUSED_LINE, TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.units import GiB, MiB

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


def test_inteltdx_2026_08_admits_debians_signed_shim_which_refuses_a_kernel_without_sbat() -> None:
    # QEMU 10's -shim: fw_cfg's etc/boot/shim and the unpatched etc/boot/kernel. Secure Boot admits Microsoft's
    # signature on shim (no "verification failed" from the firmware: X86QemuLoadImageLib starts it), shim reads
    # the kernel from QemuKernelLoaderFsDxe's file system byte for byte as signed, and refuses it: Debian's kernel
    # has no .sbat section, which shim 16.1 (pe.c verify_sbat_section) requires of an image it loads itself.
    store = BinaryStore()
    kernel = store.linux_signed_vmlinuz()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), ram=4 * GiB, kernel=kernel, shim=store.shim_signed_efi(),
                           initrd_size=16 * MiB, max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.REFUSED and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console[-500:])
    assert "Verification failed (0x1A Security Violation)" in rep.detail and "no .sbat section" in rep.detail
    assert SECURE_BOOT_REFUSED_LINE not in rep.console
    assert rep.td is not None
    data, read = kernel.read_bytes(), side_effect_free_reader(rep.td.tdx)
    copies = []
    for base in range(0, 2 * GiB, 2 * MiB):  # the firmware's blob and shim's file buffer
        try:
            chunk = read(base, 2 * MiB)
        except InputError:  # a page the TD never accepted, or one it made shared
            continue
        at = chunk.find(data[:4096])
        while at >= 0:
            copies.append(base + at)
            at = chunk.find(data[:4096], at + 1)
    assert len(copies) == 2 and all(read(gpa, len(data)) == data for gpa in copies), [hex(c) for c in copies]


def test_inteltdx_2026_08_refuses_an_unsigned_shim() -> None:
    # The other half of Secure Boot's check on -shim: LoadImage of Debian's unsigned shim build is a security
    # violation, X86QemuLoadImageLib gives up on direct boot, BDS finds nothing else to boot; no shim code runs.
    store = BinaryStore()
    rep = run_tdvf(TdvfRun(store.ovmf_inteltdx_fd(), ram=4 * GiB, kernel=store.linux_signed_vmlinuz(),
                           shim=store.shim_efi(), max_wall_s=MAX_WALL_S))
    assert rep.outcome == TdvfOutcome.NO_BOOT_OPTION and rep.exit_code == EXIT_FAILED, (rep.detail, rep.console)
    assert "Secure Boot refused the shim (it is unsigned)" in rep.detail
    assert "Verification failed" not in rep.console and SECURE_BOOT_REFUSED_LINE not in rep.console


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
