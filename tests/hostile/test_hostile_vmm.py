"""A hostile VMM: a TD HOB that lies about RAM, pages removed (and AUGed again) under the guest, a host that
backs private memory at 4K only, OPERAND_BUSY at random. Model-level runs here; the same attacks on real EFI
binaries are in test_hostile_vmm_binaries.py. Each attack ends in a clear rejection, a termination report or a
counted, reported cost: nothing is accepted twice or lost silently."""

from __future__ import annotations

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe import invariants
from lazyaccept.firmware.dxe.exit import DxePolicy
from lazyaccept.firmware.pi.hob import Hob, PhitHob, ResourceHob, encode_hob_list
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec, verify_against_truth
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.pi_hob import (
    EFI_HOB_HANDOFF_INFO_TABLE,
    EFI_HOB_RESOURCE_DESCRIPTOR,
    TDVF_RAM_ATTRIBUTES,
    ResourceType,
)
from lazyaccept.tdx.module import PageState, TdTerminated
from lazyaccept.units import PAGE_2M, PAGE_4K, GiB, MiB
from lazyaccept.vmm.td import HobConvention, Td, TdConfig, build_td

from .conftest import RandomBusy

UNACCEPTED, SYSTEM = ResourceType.MEMORY_UNACCEPTED, ResourceType.SYSTEM_MEMORY
PHYSICAL_START = EFI_HOB_RESOURCE_DESCRIPTOR.offset_of("PhysicalStart")


def td_4g(**kw) -> Td:
    return build_td(TdConfig(ram_size=4 * GiB, vcpus=kw.pop("vcpus", 2), **kw))


def write_td_hob(td: Td, resources: list[tuple[ResourceType, int, int]]) -> None:
    """The VMM writes a TD HOB of its own making into the TD_HOB section (before the TD runs)."""
    section = td.firmware.td_hob
    records: list[Hob] = [PhitHob()]  # what tdvf_hob_create writes first
    records += [ResourceHob(kind, TDVF_RAM_ATTRIBUTES, start, size) for kind, start, size in resources]
    raw = encode_hob_list(records, base_address=section.memory_base, end_pointer="qemu")
    td.tdx.memory.vmm_write(section.memory_base, raw.ljust(section.memory_size, b"\0"))


def qemu_resources(td: Td) -> list[tuple[ResourceType, int, int]]:
    return [(UNACCEPTED if e.kind.value == "unaccepted" else SYSTEM, e.start, e.size) for e in td.ram_entries]


def hob_offset(index: int) -> int:
    """Offset of resource descriptor HOB[index] in a list of a PHIT and resource descriptors."""
    return EFI_HOB_HANDOFF_INFO_TABLE.size + (index - 1) * EFI_HOB_RESOURCE_DESCRIPTOR.size


# ------------------------------------------------------------------------------------------------ TD HOB lies


def test_td_hob_declaring_ram_over_the_firmware_volume_is_rejected() -> None:
    td = td_4g()
    resources = qemu_resources(td) + [(UNACCEPTED, 0xFFC00000, 0x400000)]  # CFV + BFV, as pending RAM
    write_td_hob(td, resources)
    with pytest.raises(InputError) as err:
        run_sec(td, parse_policy("below-4g"))
    index = len(resources)
    assert err.value.field == f"HOB[{index}].PhysicalStart"
    assert err.value.offset == hob_offset(index) + PHYSICAL_START
    assert "firmware's BFV section" in str(err.value) and "firmware is not RAM" in str(err.value)
    assert td.tdx.incidents == [] and td.tdx.stats.tdcalls == 0  # rejected before any accept


def test_td_hob_declaring_its_own_section_unaccepted_is_rejected() -> None:
    # Double-accept bait: SEC would accept over the TD HOB it is reading (PAGE_ALREADY_ACCEPTED at best; a
    # zeroed HOB if the VMM removed and re-AUGed it first).
    td = td_4g()
    hob = td.firmware.td_hob
    write_td_hob(td, [(UNACCEPTED, 0, 2 * GiB), (UNACCEPTED, 4 * GiB, 2 * GiB)])
    with pytest.raises(InputError) as err:
        run_sec(td, parse_policy("below-4g"))
    assert err.value.field == "HOB[1].PhysicalStart" and err.value.offset == hob_offset(1) + PHYSICAL_START
    assert "TEMP_MEM" in str(err.value) or "TD_HOB" in str(err.value)
    assert "SEC would accept it again" in str(err.value)
    assert td.tdx.pages.get(hob.memory_base).state == PageState.ACCEPTED and not td.tdx.incidents


def test_td_hob_calling_pending_ram_system_memory_is_rejected() -> None:
    # QEMU marks only the sections it ADDed as system memory: a HOB claiming more makes SEC and DXE believe
    # pending memory is accepted, and the first touch would terminate the TD.
    td = td_4g()
    resources = [(SYSTEM if s < 2 * GiB else k, s, n) for k, s, n in qemu_resources(td)]
    write_td_hob(td, resources)
    with pytest.raises(InputError) as err:
        run_sec(td, parse_policy("256M"))
    assert err.value.field == "HOB[1].PhysicalStart"
    assert "outside the firmware's TD_HOB and TEMP_MEM sections" in str(err.value)


def test_cloud_hypervisor_convention_still_boots() -> None:
    # All RAM as SYSTEM_MEMORY, no type 7: the firmware's own metadata says what was added (td-shim's reading).
    td = build_td(TdConfig(ram_size=4 * GiB, vcpus=2, hob_convention=HobConvention.CLOUD_HYPERVISOR))
    sec = run_sec(td, parse_policy("256M"))
    assert verify_against_truth(td, sec) == [] and not td.tdx.incidents


def test_td_hob_declaring_ram_the_vmm_does_not_back_terminates_the_td() -> None:
    # The lie cannot be seen from the HOB: SEC's accept of it exits to a VMM that has no memory there.
    td = td_4g()
    write_td_hob(td, qemu_resources(td) + [(UNACCEPTED, 0xC0000000, 64 * MiB)])  # in the 32-bit PCI hole
    with pytest.raises(TdTerminated) as err:
        run_sec(td, parse_policy("below-4g"))
    term = err.value.termination
    assert term.gpa == 0xC0000000 and term.access == "accept" and term.actor == "sec"
    assert "does not back with RAM" in term.reason and td.tdx.termination is term


@pytest.mark.parametrize(
    ("resources", "field", "words"),
    [
        ([(UNACCEPTED, 0, 2 * GiB), (UNACCEPTED, GiB, 2 * GiB)], "HOB[2].PhysicalStart", "overlaps"),
        ([(UNACCEPTED, 0x1000, 2 * GiB - 0x800)], "HOB[1].ResourceLength", "not a multiple of 0x1000"),
        ([(UNACCEPTED, 1 << 51, GiB)], "HOB[1].ResourceLength", "ends above the address limit"),
        ([(UNACCEPTED, 0, 0)], "HOB[1].ResourceLength", "empty resource range"),
    ],
    ids=["overlapping", "unaligned", "beyond-gpa-width", "empty"],
)
def test_malformed_td_hob_ranges_name_field_and_offset(resources, field: str, words: str) -> None:
    td = td_4g()
    write_td_hob(td, resources)
    with pytest.raises(InputError) as err:
        run_sec(td, parse_policy("below-4g"))
    assert err.value.field == field and words in str(err.value)
    assert err.value.offset is not None and td.tdx.stats.tdcalls == 0


def test_td_hob_without_end_of_list_is_rejected() -> None:
    td = td_4g()
    section = td.firmware.td_hob
    raw = td.tdx.memory.backing.read(section.memory_base, len(td.hob_bytes))[:-8]  # drop END_OF_HOB_LIST
    filler = bytes(EFI_HOB_RESOURCE_DESCRIPTOR.pack({"Header.HobType": 3, "Header.HobLength": 48}))
    td.tdx.memory.vmm_write(section.memory_base, (raw + filler * 400)[: section.memory_size])
    with pytest.raises(InputError) as err:
        run_sec(td, parse_policy("below-4g"))
    assert err.value.field.startswith("HOB[") and err.value.offset is not None


# ------------------------------------------------------------------------------------------------ REMOVE, re-AUG


def booted_dxe(ram: int = 4 * GiB, upfront: str = "256M", **policy):
    td = build_td(TdConfig(ram_size=ram, vcpus=2))
    sec = run_sec(td, parse_policy(upfront))
    return td, start_dxe(td, sec, DxePolicy(**policy))


def test_removed_page_is_a_termination_at_the_next_touch_not_a_silent_reaccept() -> None:
    td, dxe = booted_dxe()
    status, page = dxe.allocate_pages(0, M.EfiLoaderData, 1)
    assert status == S.SUCCESS
    td.tdx.memory.write(page, b"loader data", actor="loader")
    before = dict(td.tdx.accepted_by_actor)
    td.tdx.remove(page, PAGE_4K)
    with pytest.raises(TdTerminated) as err:
        td.tdx.memory.read(page, 16, actor="loader")
    assert "a page the VMM removed" in err.value.termination.reason
    assert td.tdx.accepted_by_actor == before and td.tdx.incidents == []


def test_reaugd_page_is_never_reaccepted_by_the_firmware() -> None:
    # The VMM removes an accepted page and AUGs it again: it is pending, the firmware's record says accepted.
    td, dxe = booted_dxe(option1=True, option3=True, accept_all_at_exit=True)
    status, page = dxe.allocate_pages(0, M.EfiLoaderData, 1)
    td.tdx.remove(page, PAGE_4K)
    td.tdx.aug(page, PAGE_4K)
    # Every firmware path that accepts goes by GCD, which calls the page accepted: none accepts it again.
    assert dxe.accept_memory(page, PAGE_4K) == S.SUCCESS  # option 3: "already accepted", no TDCALL
    assert dxe.free_pages(page, 1) == S.SUCCESS
    assert dxe.allocate_pages(0, M.EfiLoaderData, 1 << 15)[0] == S.SUCCESS  # option 1 accepts elsewhere
    # Accept-all at exit accepts the unaccepted GCD entries only (and changes the map key: the loader retries).
    assert dxe.exit_boot_services(0, dxe.get_memory_map(1 << 20).map_key) == S.INVALID_PARAMETER
    assert dxe.exit_boot_services(0, dxe.get_memory_map(1 << 20).map_key) == S.SUCCESS
    assert td.tdx.pages.get(page).state == PageState.PENDING and td.tdx.incidents == []
    # The firmware's record and the truth now disagree, and the invariant check says so.
    assert any(f"{page:#x}" in p for p in invariants.find_violations(dxe.gcd, dxe.pages, dxe.pool, td.tdx))


def test_guest_that_reaccepts_a_reaugd_page_is_recorded() -> None:
    # A guest that keeps no record and accepts again gets SUCCESS and a zeroed page: the TDX module records it.
    td, dxe = booted_dxe()
    status, page = dxe.allocate_pages(0, M.EfiLoaderData, 1)
    td.tdx.memory.write(page, b"secret", actor="guest")
    td.tdx.remove(page, PAGE_4K)
    td.tdx.aug(page, PAGE_4K)
    assert td.tdx.accept_rcx(page, actor="naive-guest") == 0
    assert td.tdx.memory.read(page, 6, actor="guest") == bytes(6)
    (incident,) = td.tdx.incidents
    assert (incident.kind, incident.start, incident.end, incident.actor) == (
        "reaccept-after-remove",
        page,
        page + PAGE_4K,
        "naive-guest",
    )
    assert any("reaccept-after-remove" in p for p in invariants.find_violations(dxe.gcd, dxe.pages, dxe.pool, td.tdx))


# ------------------------------------------------------------------------------------------------ 4K-only host


def test_4k_only_host_counts_size_mismatch_fallbacks_and_their_cost() -> None:
    results = {}
    for profile in ("kvm-2m", "kvm-4k"):
        td = build_td(TdConfig(ram_size=64 * GiB, vcpus=8, profile=profile))
        sec = run_sec(td, parse_policy("512M"))
        assert verify_against_truth(td, sec) == []
        results[profile] = sec
    two_m, four_k = results["kvm-2m"], results["kvm-4k"]
    assert two_m.stats.mismatches == 0
    # Every 2M accept SEC tried fell back to 512 4K accepts, each an exit and an AUG.
    assert four_k.stats.mismatches == two_m.stats.accepted_2m > 0
    assert four_k.stats.accepted_2m == 0 and four_k.stats.accepted_4k == two_m.stats.accepted_4k + 512 * (
        two_m.stats.accepted_2m
    )
    assert four_k.stats.exits >= 512 * four_k.stats.mismatches
    assert four_k.accepted_bytes == two_m.accepted_bytes
    assert four_k.phase_ns > 1.3 * two_m.phase_ns


def test_4k_only_host_in_the_sec_command_report(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lazyaccept.cli import main

    assert main(["sec", "-m", "16G", "-smp", "4", "--upfront", "256M", "--profile", "kvm-4k", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sec"]["tdx_stats"]["mismatches"] > 0 and data["truth_check"] == []
    assert main(["sec", "-m", "16G", "-smp", "4", "--upfront", "256M", "--profile", "kvm-4k"]) == 0
    assert "size mismatches" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ OPERAND_BUSY


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operand_busy_is_absorbed_by_secs_three_retries(seed: int) -> None:
    td = build_td(TdConfig(ram_size=16 * GiB, vcpus=4))
    busy = RandomBusy(td.tdx, seed, rate=0.7, max_burst=3)
    sec = run_sec(td, parse_policy("1G"))
    assert busy.injected > 0
    assert sec.stats.busy == busy.injected  # every busy TDCALL counted, each retried
    assert verify_against_truth(td, sec) == [] and not td.tdx.incidents
    assert sec.accepted_bytes == 1 * GiB


def test_a_fourth_busy_in_a_row_stops_sec_with_a_clear_error() -> None:
    td = build_td(TdConfig(ram_size=16 * GiB, vcpus=4))
    td.tdx.inject_busy(4)
    with pytest.raises(InputError, match=r"SEC could not accept memory at 0x0: TDCALL returned OPERAND_BUSY"):
        run_sec(td, parse_policy("1G"))
    # SEC stopped at the failed accept (edk2: ASSERT and CpuDeadLoop): nothing but the VMM's pages accepted.
    assert td.tdx.stats.busy == 4 and td.tdx.bytes_in_state(PageState.ACCEPTED) == td.tdx.accepted_by_actor["vmm"]


def test_busy_in_dxe_fails_the_allocation_keeps_records_straight_and_a_retry_succeeds() -> None:
    td, dxe = booted_dxe(option1=True)
    free_before = dxe.pages.free_bytes()
    td.tdx.inject_busy(4)  # beyond TdAcceptPages' 3 retries: AcceptMemory returns EFI_INVALID_PARAMETER
    status, _ = dxe.allocate_pages(0, M.EfiLoaderData, (512 * MiB) // PAGE_4K)
    assert status == S.OUT_OF_RESOURCES
    assert dxe.acceptor.events[-1].status == S.INVALID_PARAMETER
    invariants.check_core(dxe)  # GCD and the TDX module agree on what was (not) accepted
    assert dxe.pages.free_bytes() == free_before
    RandomBusy(td.tdx, 7, rate=1.0, max_burst=3)
    status, address = dxe.allocate_pages(0, M.EfiLoaderData, (512 * MiB) // PAGE_4K)
    assert status == S.SUCCESS and address % PAGE_2M == 0
    invariants.check_core(dxe)
    assert td.tdx.stats.busy > 4
