"""EFI applications (C, tests/hostile/efi_apps/) that misuse boot services, write to memory they do not own or
never return. Each misuse gets the status edk2 gives and is logged, and the run goes on; a wild write ends the
run with a termination report; a runaway ends on its budget with a report."""

from __future__ import annotations

import pytest

from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.cpu.machine import EfiMachine, MachineConfig
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import GiB

from .conftest import AppBuilder, cases

pytestmark = pytest.mark.real_binary

# What edk2 (MdeModulePkg/Core/Dxe) returns for each misuse in misuse_app.c.
EDK2_STATUS = {
    "free_pool_null": S.INVALID_PARAMETER,  # Pool.c CoreFreePool: Buffer == NULL
    "free_pool_first": S.SUCCESS,
    "free_pool_double": S.INVALID_PARAMETER,  # the POOL_HEAD signature check fails on freed pool
    "free_pool_stack": S.INVALID_PARAMETER,  # not a pool buffer
    "free_pool_interior": S.INVALID_PARAMETER,
    "allocate_pool_null_buffer": S.INVALID_PARAMETER,
    "allocate_pool_unaccepted_type": S.INVALID_PARAMETER,  # EfiUnacceptedMemoryType cannot be allocated
    "allocate_pool_huge": S.OUT_OF_RESOURCES,
    "allocate_pages_bad_type": S.INVALID_PARAMETER,  # AllocateType >= MaxAllocateType
    "allocate_pages_unaccepted_type": S.INVALID_PARAMETER,
    "free_pages_unaligned": S.INVALID_PARAMETER,
    "free_pages_first": S.SUCCESS,
    "free_pages_double": S.NOT_FOUND,  # CoreConvertPages: the pages are free already
    "free_pages_unaccepted": S.NOT_FOUND,  # no memory-map entry holds unaccepted memory
    "allocate_address_unaccepted": S.NOT_FOUND,  # CoreConvertPagesEx: not free memory (not OUT_OF_RESOURCES)
    "allocate_address_firmware_data": S.NOT_FOUND,
    "allocate_address_pci_hole": S.NOT_FOUND,
    "allocate_address_firmware_volume": S.NOT_FOUND,
    "allocate_address_zero": S.NOT_FOUND,
    "allocate_max_address_too_low": S.OUT_OF_RESOURCES,
    "get_memory_map_null_size": S.INVALID_PARAMETER,
    "get_memory_map_size_0": S.BUFFER_TOO_SMALL,
    "get_memory_map_null_buffer": S.INVALID_PARAMETER,
    "load_image_size_0": S.LOAD_ERROR,  # Image.c CoreLoadImageCommon: SourceSize 0
    "load_image_no_path_no_buffer": S.INVALID_PARAMETER,  # CoreLoadImageCommon: FilePath NULL, no SourceBuffer
    "load_image_unknown_path": S.NOT_FOUND,  # GetFileBufferByFilePath: no SFS, LoadFile2 or LoadFile matches
    "load_image_bad_parent": S.INVALID_PARAMETER,
    "start_image_unknown": S.INVALID_PARAMETER,
    "exit_other_image": S.INVALID_PARAMETER,  # CoreExit: not the current image
    "exit_boot_services_wrong_key": S.INVALID_PARAMETER,  # CoreTerminateMemoryMap: stale key
}


def run_app(app, **kw) -> BootReport:
    kw.setdefault("ram", 8 * GiB)
    kw.setdefault("smp", 2)
    kw.setdefault("upfront", "256M")
    return run_boot(BootScenario(efi_app=str(app), **kw))


@pytest.fixture(scope="module")
def misuse(efi_app: AppBuilder) -> BootReport:
    return run_app(efi_app("misuse_app"))


@pytest.mark.parametrize("case", sorted(EDK2_STATUS))
def test_misuse_gets_edk2s_status(misuse: BootReport, case: str) -> None:
    got = cases(misuse.console)
    assert case in got, misuse.console
    assert S(got[case]) == EDK2_STATUS[case], f"{case}: {S(got[case]).name}"


def test_misuse_is_logged_and_the_run_goes_on(misuse: BootReport) -> None:
    got = cases(misuse.console)
    assert got["unaccepted_address"] == 256 << 20  # the app found unaccepted memory where SEC stopped
    assert got["get_memory_map_size_0_needed"] > 0  # BUFFER_TOO_SMALL tells the size needed
    statuses = [(c["name"], c["status"]) for c in misuse.calls]
    assert ("FreePool", "INVALID_PARAMETER") in statuses and ("ExitBootServices", "INVALID_PARAMETER") in statuses
    assert ("ExitBootServices", "SUCCESS") in statuses  # the retry with a fresh map key
    assert misuse.termination is None and misuse.outcome == "app-exited"


def test_boot_services_after_exit_boot_services_are_refused_and_logged(misuse: BootReport) -> None:
    # edk2 zeroes gBS; a call through a pointer cached before ExitBootServices has no defined outcome there.
    # lazyaccept refuses it with EFI_UNSUPPORTED and logs it.
    after = [c for c in misuse.calls if c["detail"] == "called after ExitBootServices"]
    assert [c["name"] for c in after] == ["BS.FreePool", "BS.GetMemoryMap", "BS.AllocatePool"]
    assert all(c["status"] == "UNSUPPORTED" for c in after)
    assert misuse.reason.endswith("exited with UNSUPPORTED")


def test_load_image_of_a_non_pe_buffer_is_unsupported(misuse: BootReport) -> None:
    assert S(cases(misuse.console)["load_image_not_a_pe"]) == S.UNSUPPORTED


def test_call_through_the_cleared_boot_services_pointer_is_reported(efi_app: AppBuilder) -> None:
    rep = run_app(efi_app("exit_null_app"))
    assert rep.outcome == "error"
    assert rep.reason == "jump to address 0 (a call through a NULL pointer) at RIP 0x0"
    assert rep.kernel_entry is None


@pytest.mark.parametrize(
    ("define", "gpa", "reason"),
    [
        (None, 256 << 20, "an unaccepted page the VMM never mapped"),
        ("PCI_HOLE", 0xE0000000, "an unaccepted page the VMM never mapped"),
        ("VIA_FIRMWARE", 256 << 20, "an unaccepted page the VMM never mapped"),
    ],
    ids=["own-code", "pci-hole", "through-the-firmware"],
)
def test_write_to_memory_not_accepted_ends_the_run_with_a_report(
    efi_app: AppBuilder, define: str | None, gpa: int, reason: str
) -> None:
    app = efi_app("wild_write_app", *([define] if define else []))
    rep = run_app(app)
    assert rep.outcome == "terminated"
    assert rep.termination.startswith(f"TD terminated: write of GPA {gpa:#x} by {app.name} (vCPU 0)")
    assert reason in rep.termination
    assert "still running" not in rep.console
    if define == "VIA_FIRMWARE":  # the firmware's write on the app's behalf, logged at the service
        assert rep.calls[-1]["name"] == "BS.GetMemoryMap" and rep.calls[-1]["detail"] == "TD terminated"
    else:
        assert " at RIP " in rep.termination  # the app's own instruction


def test_set_mem_over_memory_not_accepted_terminates(efi_app: AppBuilder) -> None:
    rep = run_app(efi_app("wild_write_app", "SET_MEM_HUGE"))
    assert rep.outcome == "terminated", rep.reason


def test_runaway_application_ends_on_the_time_budget(efi_app: AppBuilder) -> None:
    rep = run_app(efi_app("runaway_app"), timeout_s=0.5)
    assert rep.outcome == "budget" and rep.reason == "time budget exhausted"
    assert "spinning" in rep.console and rep.termination is None


def test_runaway_application_ends_on_the_instruction_budget(efi_app: AppBuilder) -> None:
    # BootScenario has no instruction budget; MachineConfig does.
    from lazyaccept.vmm.td import TdConfig, build_td

    td = build_td(TdConfig(ram_size=4 * GiB, vcpus=1))
    dxe = start_dxe(td, run_sec(td, parse_policy("256M")))
    machine = EfiMachine(td.tdx, dxe, MachineConfig(max_instructions=200_000, timeout_s=30))
    status, handle = machine.load_image(efi_app("runaway_app").read_bytes(), "runaway_app.efi")
    assert status == S.SUCCESS
    stop = machine.start_image(handle)
    assert (stop.kind, stop.detail) == ("budget", "instruction budget exhausted")
    image = machine.images[handle]
    assert image.base <= stop.rip < image.base + image.pe.size_of_image  # stopped inside the loop
