"""Debian's unmodified Linux 6.12 EFI stub booted on lazyaccept firmware under unicorn (QEMU direct boot).

Each test is a real run of the stub from image entry to its jump into the kernel (or its failure), so the
statuses, messages and the handoff are what the real binary produces.
"""

from __future__ import annotations

import pytest

from lazyaccept.binaries import ovmf_2026_fd
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.spec.efi import EfiMemoryType
from lazyaccept.units import GiB, MiB, TiB

pytestmark = pytest.mark.real_binary


def boot(**kw) -> object:
    kw.setdefault("smp", 8)
    kw.setdefault("rng_seed", 7)
    return run_boot(BootScenario(**kw))


def test_large_initrd_fails_upstream_in_the_firmwares_own_copy() -> None:
    rep = boot(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB)
    assert rep.outcome == "loader-failed"
    assert "initrd blob" in rep.reason and "EFI_OUT_OF_RESOURCES" in rep.reason
    assert rep.termination is None


@pytest.mark.parametrize("option", ["option1", "option2"])
def test_large_initrd_boots_with_on_demand_accept(option: str) -> None:
    rep = boot(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB, **{option: True})
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert "Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path" in rep.console
    actor = "dxe-option1" if option == "option1" else "loader-option2"
    assert rep.accepted_by_actor[actor] >= 2 * GiB  # the firmware's copy and the stub's buffer
    assert rep.unaccepted_table["set_bytes"] > 60 * GiB
    # The default profile, edk2-stable202502: X86QemuLoadImageLib appends " initrd=initrd" (prefixed from a2ac0fea49).
    assert rep.edk2_profile == "ovmf-x64-2025.02"
    assert rep.boot_params.cmdline == BootScenario.cmdline + " initrd=initrd"
    # hdr.ramdisk_image/size (with the ext_ high halves) name the stub's copy, which the handoff check requires
    # to lie in accepted memory.
    assert rep.boot_params.ramdisk_size == 1 * GiB and rep.boot_params.ramdisk_image % 4096 == 0


def test_streamed_initrd_without_on_demand_accept_is_the_stubs_failure() -> None:
    rep = boot(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB, stream_initrd=True)
    assert rep.outcome == "stub-exited"
    assert "Failed to load initrd" in rep.console
    assert "AllocatePages(MaxAddress)" in rep.explanation


@pytest.mark.parametrize("option1", [False, True])
def test_no_kernel_slot_is_explained(option1: bool) -> None:
    # 80M, not 64M: PlatformPei's PEIFV and DXEFV (0xE0000 + 0xE80000 at 0x820000, edk2-stable202502) take 15.4 MiB
    # of it, and at 64M the kernel's own LoadImage fails before the stub runs.
    rep = boot(ram=64 * GiB, upfront="80M", initrd_size=16 * MiB, option1=option1)
    assert rep.outcome == "stub-exited"
    assert "Failed to decompress kernel" in rep.console
    assert "no allocator-level option can help" in rep.explanation


def test_option2_accepts_ahead_a_kernel_slot() -> None:
    # On 2026.08 (d419725b23) GetMemoryMap types the free memory-type bins as bins, so after option 2's accept
    # ahead the stub's lowest 2 MiB slot starts above them and the kernel is placed.
    rep = boot(ram=64 * GiB, upfront="80M", initrd_size=16 * MiB, option2=True, firmware=str(ovmf_2026_fd()))
    assert rep.edk2_profile == "ovmf-x64-2026.08"
    assert rep.outcome == "kernel-entry", rep.console
    assert any(e["what"] == "accept ahead for the kernel slot" for e in rep.loader_events)
    assert rep.handoff_ok


def test_option2_kernel_slot_above_the_acpi_bins_on_2025_02() -> None:
    # edk2-stable202502's GetMemoryMap types a free entry as its bin only when the whole entry lies in the bin, so
    # empty bins beside memory accepted ahead would read as EfiConventionalMemory and the stub's lowest slot would
    # start inside them (AllocatePages(AllocateAddress) then refuses another type's bin). With OVMF's ACPI tables
    # installed, as every OVMF boot has them, the NVS bin (FACS, TdxDxe's mailbox) and the reclaim bin (the tables)
    # at the top of the accepted memory are in use and typed: the slot starts above them and the kernel is placed.
    rep = boot(ram=64 * GiB, upfront="80M", initrd_size=16 * MiB, option2=True)
    assert rep.edk2_profile == "ovmf-x64-2025.02"
    assert any(e["what"] == "accept ahead for the kernel slot" for e in rep.loader_events)
    assert rep.outcome == "kernel-entry", rep.console
    below = [d for d in rep.memory_map if d.end == 80 * MiB]
    assert [d.type for d in below] == [EfiMemoryType.EfiACPIMemoryNVS]
    assert rep.kernel_entry is not None and rep.kernel_entry >= 80 * MiB
    assert not [c for c in rep.calls if c["name"] == "AllocatePages" and c["status"] == "NOT_FOUND"]


@pytest.mark.parametrize("ram", [4 * GiB, 64 * GiB, 67000 * MiB, 1 * TiB], ids=["4G", "64G", "67000M", "1T"])
@pytest.mark.parametrize("upfront", ["below-4g", "all"])
def test_standard_policies_reach_the_kernel(ram: int, upfront: str) -> None:
    rep = boot(ram=ram, upfront=upfront, initrd_size=64 * MiB, log_calls=False)
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert rep.lost_ram_bytes == 0
    if upfront == "all":
        assert rep.unaccepted_table is None  # nothing left to accept: the stub installs no table
    else:
        assert rep.unaccepted_table["set_bytes"] == ram - 2 * GiB


def test_unaligned_and_short_unaccepted_ranges_are_accepted_by_the_stub() -> None:
    # All RAM below 4 GiB (< 2.75 GiB): 2052 MiB with 2049 MiB + 4 KiB accepted up front leaves one range that
    # is unaligned and shorter than two 2 MiB units: the stub accepts it itself with TDCALL after
    # ExitBootServices, as drivers/firmware/efi/libstub/unaccepted_memory.c does.
    rep = boot(ram=2052 * MiB, upfront=f"{2049 * 1024 + 4}K", initrd_size=16 * MiB)
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.tdcalls_by_stub > 0
    stub = rep.scenario.kernel or "vmlinuz-6.12.117+deb13-cloud-amd64"
    assert rep.accepted_by_actor.get(stub, 0) == 3 * MiB - 4 * 1024
    assert rep.handoff_ok, rep.handoff_problems
