"""A hostile VMM while real EFI binaries run: the test acts as the VMM between boot-service calls (an EfiMachine
subclass whose services act on the TDX module) or on the TD it built (before SEC). Small C applications make
the attacks cheap; three runs of Debian's real Linux 6.12 EFI stub show them on an unmodified binary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.cpu.machine import EfiMachine
from lazyaccept.errors import InputError
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.tdx.module import PageState, TdTerminated
from lazyaccept.units import PAGE_4K, GiB, MiB
from lazyaccept.vmm.td import Td

from .conftest import AppBuilder, Captured, RandomBusy, cases, hostile_boot
from .test_hostile_vmm import UNACCEPTED, qemu_resources, write_td_hob

pytestmark = pytest.mark.real_binary
ACCEPT_APP = Path(__file__).parents[1] / "cpu" / "efi_apps" / "accept_memory_app.c"
MP = pytest.MonkeyPatch


def vmm_at_stall(action: Callable[[EfiMachine, int], None]) -> type[EfiMachine]:
    """An EfiMachine whose Stall lets the VMM act on the first page the running image allocated."""

    class AtStall(EfiMachine):
        page: int | None = None

        def bs_AllocatePages(self, alloc_type: int, memory_type: int, pages: int, memory_ptr: int) -> int:
            status = super().bs_AllocatePages(alloc_type, memory_type, pages, memory_ptr)
            if status == S.SUCCESS and self.page is None:
                self.page = self.r64(memory_ptr)
            return status

        def bs_Stall(self, microseconds: int) -> int:
            if self.page is not None:
                action(self, self.page)
            return super().bs_Stall(microseconds)

    return AtStall


def remove(machine: EfiMachine, page: int) -> None:
    machine.tdx.remove(page, PAGE_4K)


def remove_and_aug(machine: EfiMachine, page: int) -> None:
    machine.tdx.remove(page, PAGE_4K)
    machine.tdx.aug(page, PAGE_4K)


def app_run(
    monkeypatch: MP,
    app: Path,
    machine_class: type[EfiMachine] | None = None,
    on_td: Callable[[Td], object] | None = None,
    **kw: object,
) -> tuple[BootReport, Captured]:
    kw.setdefault("ram", 8 * GiB)
    kw.setdefault("smp", 2)
    kw.setdefault("upfront", "256M")
    with hostile_boot(monkeypatch, machine_class, on_td) as captured:
        rep = run_boot(BootScenario(efi_app=str(app), **kw))
    return rep, captured


# ------------------------------------------------------------------------------------------------ REMOVE / re-AUG


def test_page_removed_under_an_application_terminates_at_its_next_touch(monkeypatch: MP, efi_app: AppBuilder) -> None:
    app = efi_app("remove_app")
    rep, cap = app_run(monkeypatch, app, vmm_at_stall(remove))
    page = cases(rep.console)["page"]
    assert rep.outcome == "terminated"
    assert rep.termination.startswith(f"TD terminated: read of GPA {page:#x} by {app.name} (vCPU 0) at RIP ")
    assert rep.termination.endswith("EPT violation on a page the VMM removed")
    assert "marker" not in cases(rep.console)  # the app never saw its page again
    assert cap.td.tdx.pages.get(page).state == PageState.REMOVED and cap.td.tdx.incidents == []


def test_firmware_does_not_reaccept_a_page_the_vmm_removed_and_augd_again(monkeypatch: MP, efi_app: AppBuilder) -> None:
    # The app asks the firmware's option-3 AcceptMemory for its page: GCD says accepted, so the firmware
    # issues no TDCALL and the page stays pending; the app's next touch ends the TD instead of a zeroed page.
    app = efi_app("remove_app", "FIRMWARE_ACCEPT")
    rep, cap = app_run(monkeypatch, app, vmm_at_stall(remove_and_aug), option3=True)
    got = cases(rep.console)
    assert S(got["accept_memory"]) == S.SUCCESS and "marker" not in got
    assert rep.outcome == "terminated" and "pending (unaccepted) page" in rep.termination
    assert cap.td.tdx.incidents == [] and "loader-option3" not in rep.accepted_by_actor


def test_guest_reaccept_after_remove_is_recorded_by_the_tdx_module(monkeypatch: MP, efi_app: AppBuilder) -> None:
    # A guest that keeps no record accepts its page again with TDCALL: SUCCESS, and the marker is gone.
    app = efi_app("remove_app", "GUEST_REACCEPT")
    rep, cap = app_run(monkeypatch, app, vmm_at_stall(remove_and_aug))
    got = cases(rep.console)
    assert got["tdcall_accept"] == 0 and got["marker"] == 0  # 0x5AFEC0DE was written before the removal
    (incident,) = cap.td.tdx.incidents
    assert (incident.kind, incident.start, incident.actor) == ("reaccept-after-remove", got["page"], app.name)


def test_boot_report_names_the_reaccept_incident(monkeypatch: MP, efi_app: AppBuilder) -> None:
    rep, _ = app_run(monkeypatch, efi_app("remove_app", "GUEST_REACCEPT"), vmm_at_stall(remove_and_aug))
    assert "reaccept-after-remove" in repr(getattr(rep, "incidents", None))


# ------------------------------------------------------------------------------------------------ hostile TD HOB


def test_hostile_td_hob_stops_the_boot_before_any_binary_runs(monkeypatch: MP, efi_app: AppBuilder) -> None:
    def lie(td: Td) -> None:
        write_td_hob(td, qemu_resources(td) + [(UNACCEPTED, 0xFFC00000, 0x400000)])

    with pytest.raises(InputError, match=r"overlaps the firmware's BFV section .*field HOB\[\d+\]\.PhysicalStart"):
        app_run(monkeypatch, efi_app("misuse_app"), on_td=lie)


def test_td_hob_ram_without_backing_is_a_terminated_report(monkeypatch: MP, efi_app: AppBuilder) -> None:
    def lie(td: Td) -> None:
        write_td_hob(td, qemu_resources(td) + [(UNACCEPTED, 0xC0000000, 64 * MiB)])

    try:
        rep, _ = app_run(monkeypatch, efi_app("misuse_app"), on_td=lie, upfront="below-4g")
    except TdTerminated as exc:
        pytest.fail(f"run_boot raised {exc}")
    assert rep.outcome == "terminated" and "0xc0000000" in rep.termination


# ------------------------------------------------------------------------------------------------ busy, 4K host


@pytest.fixture(scope="module")
def accept_app(efi_app: AppBuilder) -> Path:
    """tests/cpu's option-3 application: allocate 512 MiB, on failure AcceptMemory and retry."""
    return efi_app(ACCEPT_APP)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_operand_busy_during_an_application_is_absorbed(monkeypatch: MP, accept_app: Path, seed: int) -> None:
    busy: list[RandomBusy] = []
    rep, cap = app_run(
        monkeypatch, accept_app, on_td=lambda td: busy.append(RandomBusy(td.tdx, seed, rate=0.6)),
        ram=64 * GiB, smp=4, option3=True,
    )
    assert rep.outcome == "app-exited" and rep.reason.endswith("SUCCESS"), rep.reason
    assert busy[0].injected > 0 and cap.td.tdx.stats.busy == busy[0].injected
    assert rep.accepted_by_actor["loader-option3"] == 512 * MiB and cap.td.tdx.incidents == []


def test_a_fourth_busy_makes_accept_memory_a_device_error(monkeypatch: MP, accept_app: Path) -> None:
    class BusyAtAccept(EfiMachine):
        def bs_AcceptMemory(self, start: int, size: int) -> int:
            self.tdx.inject_busy(4)  # more than TdAcceptPages' 3 retries
            return super().bs_AcceptMemory(start, size)

    rep, cap = app_run(monkeypatch, accept_app, BusyAtAccept, ram=64 * GiB, smp=4, option3=True)
    assert rep.outcome == "app-exited" and rep.reason.endswith("DEVICE_ERROR")  # the option-3 contract
    assert "AcceptMemory failed" in rep.console
    assert ("AcceptMemory", "DEVICE_ERROR") in [(c["name"], c["status"]) for c in rep.calls]
    assert cap.td.tdx.stats.busy == 4 and "loader-option3" not in rep.accepted_by_actor


def test_4k_only_host_costs_more_and_counts_mismatches_during_a_run(monkeypatch: MP, accept_app: Path) -> None:
    runs = {}
    for profile in ("kvm-2m", "kvm-4k"):
        runs[profile] = app_run(monkeypatch, accept_app, ram=64 * GiB, smp=4, option3=True, profile=profile)
    (rep2m, cap2m), (rep4k, cap4k) = runs["kvm-2m"], runs["kvm-4k"]
    assert rep2m.reason.endswith("SUCCESS") and rep4k.reason.endswith("SUCCESS")
    assert cap2m.td.tdx.stats.mismatches == 0
    assert cap4k.td.tdx.stats.mismatches >= (512 * MiB) // (2 * MiB)  # every fresh 2M accept fell back
    app_phase = {p: [ph for ph in r.phases if ph.accepted_bytes >= 512 * MiB][-1] for p, (r, _) in runs.items()}
    assert app_phase["kvm-4k"].virtual_ns > 2 * app_phase["kvm-2m"].virtual_ns  # the cost, in the report


# ------------------------------------------------------------------------------------------------ the real stub


def stub_boot(
    monkeypatch: MP,
    machine_class: type[EfiMachine] | None = None,
    on_td: Callable[[Td], object] | None = None,
    **kw: object,
) -> tuple[BootReport, Captured]:
    kw.setdefault("ram", 64 * GiB)
    kw.setdefault("smp", 4)
    kw.setdefault("rng_seed", 7)
    kw.setdefault("initrd_size", 16 * MiB)
    with hostile_boot(monkeypatch, machine_class, on_td) as captured:
        rep = run_boot(BootScenario(**kw))
    return rep, captured


def test_stub_terminated_when_the_vmm_removes_the_page_it_allocated(monkeypatch: MP) -> None:
    class RemoveFirstAllocation(EfiMachine):
        removed: int | None = None

        def bs_AllocatePages(self, alloc_type: int, memory_type: int, pages: int, memory_ptr: int) -> int:
            status = super().bs_AllocatePages(alloc_type, memory_type, pages, memory_ptr)
            if status == S.SUCCESS and self.removed is None:
                self.removed = self.r64(memory_ptr)
                self.tdx.remove(self.removed, PAGE_4K)
            return status

    rep, cap = stub_boot(monkeypatch, RemoveFirstAllocation)
    removed = cap.machine.removed
    assert rep.outcome == "terminated", rep.reason
    assert f"of GPA {removed:#x} by vmlinuz" in rep.termination
    assert rep.termination.endswith("EPT violation on a page the VMM removed")
    assert cap.td.tdx.incidents == []  # nobody accepted it again


def test_stub_handoff_check_finds_a_page_the_vmm_swapped_at_exit_boot_services(
    monkeypatch: MP,
) -> None:
    class SwapAtExit(EfiMachine):
        swapped: int | None = None

        def bs_ExitBootServices(self, image_handle: int, map_key: int) -> int:
            if self.swapped is None:
                # The last page of the largest free accepted range: nobody touches it before the kernel does.
                runs = [(s, e) for s, e, v in self.dxe.pages.runs() if v is not None
                        and v.type == M.EfiConventionalMemory]
                start, end = max(runs, key=lambda r: r[1] - r[0])
                self.swapped = end - PAGE_4K
                self.tdx.remove(self.swapped, PAGE_4K)
                self.tdx.aug(self.swapped, PAGE_4K)
            return super().bs_ExitBootServices(image_handle, map_key)

    rep, cap = stub_boot(monkeypatch, SwapAtExit)
    swapped = cap.machine.swapped
    assert rep.outcome == "kernel-entry", rep.reason
    assert not rep.handoff_ok
    assert any(f"{swapped:#x}" in p or f"{swapped + PAGE_4K:#x}" in p for p in rep.handoff_problems), (
        rep.handoff_problems
    )
    assert cap.td.tdx.incidents == []  # neither firmware nor stub accepted it again


def test_stub_boots_through_random_operand_busy_with_option1(monkeypatch: MP) -> None:
    busy: list[RandomBusy] = []
    rep, cap = stub_boot(
        monkeypatch, on_td=lambda td: busy.append(RandomBusy(td.tdx, 2026, rate=0.5)), upfront="256M",
        option1=True, initrd_size=64 * MiB,
    )
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert busy[0].injected > 0 and cap.td.tdx.stats.busy == busy[0].injected
    assert rep.accepted_by_actor.get("dxe-option1", 0) > 0 and cap.td.tdx.incidents == []
