"""edk2 2026.08 (Debian forky) under the real-firmware runner: the PEI-less IntelTdxX64 image with Microsoft keys
enrolled refuses Debian's unsigned 6.12 EFI stub under Secure Boot and ends where BDS finds nothing to boot, as it
would under QEMU. (The OvmfPkgX64 2026.08 image direct-boots the same stub into the kernel, but that run takes
minutes of CPU, past what a test may take: README, "The real firmware".)"""

from __future__ import annotations

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.exitcodes import EXIT_FAILED
from lazyaccept.tdvf_run import SECURE_BOOT_REFUSED_LINE, TdvfOutcome, TdvfRun, run_tdvf

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
