"""edk2's own TDVF (Debian's OVMF.fd 2025.02) from the reset vector on a unicorn TD vCPU: the first differential
test between the real firmware's SEC and the Python SEC model, on the TDX module's accepted ranges."""

from __future__ import annotations

from collections.abc import Mapping

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from lazyaccept import binaries
from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_paging import shared_bit_translates
from lazyaccept.cpu.unicorn.td_state import enter_initial_state, in_protected_32, old_exception_offset_ok
from lazyaccept.firmware.sec.policy import UpfrontPolicy
from lazyaccept.firmware.sec.sec import run_sec
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import StopKind
from lazyaccept.spec.tdx import TdcallLeaf
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import TdConfig, build_td
from tests.cpu.sec_truth import accepted, assert_sec_model_agrees


def test_initial_state_is_32_bit_protected_mode() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    enter_initial_state(uc, gpaw=52, vcpu_index=0, init_rcx=0x809000, cpuid1_eax=0x806F8)
    assert in_protected_32(uc)
    assert uc.reg_read(X.UC_X86_REG_RIP) == 0xFFFFFFF0
    assert (uc.reg_read(X.UC_X86_REG_RBX), uc.reg_read(X.UC_X86_REG_RSI)) == (52, 0)
    assert uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080) & 0x901 == 0x901  # SCE | LME | NXE
    uc.mem_map(0x100000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x100000, b"\x48\x90")  # 32-bit: dec eax; nop (64-bit: a REX-prefixed nop)
    uc.reg_write(X.UC_X86_REG_RAX, 5)
    uc.emu_start(0x100000, 0x100002)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 4


def test_old_exception_offset_matches_this_unicorn() -> None:
    assert old_exception_offset_ok()


def test_ovmf_sec_accepts_what_the_sec_model_accepts() -> None:
    config = TdConfig(ram_size=2 * GiB, vcpus=1, firmware_path=str(binaries.ovmf_fd()))
    td = build_td(config)
    seen_accept = False

    def after_sec(leaf: int, _regs: Mapping[str, int]) -> str | None:
        nonlocal seen_accept
        if leaf == TdcallLeaf.MEM_PAGE_ACCEPT:
            seen_accept = True
            return None
        return f"first {TdcallLeaf(leaf).name} after SEC's accepts" if seen_accept else None

    result = TdMachine(td, until=after_sec).run(max_wall_s=45)
    assert result.stop.kind == StopKind.REQUESTED, (result.stop, result.module, result.serial)
    assert result.module == "SecMain"
    assert td.tdx.termination is None

    assert_sec_model_agrees(td, config)
    assert result.progress.tdcalls["MEM_PAGE_ACCEPT"] == td.tdx.stats.accepted_2m + td.tdx.stats.accepted_4k


def test_a_64_gib_td_is_two_unicorn_regions_and_reaches_only_what_the_vmm_added() -> None:
    config = TdConfig(ram_size=64 * GiB, firmware_path=str(binaries.ovmf_fd()))
    td = build_td(config)
    vcpu = TdMachine(td).vcpus[0]
    assert vcpu.ram.size >= 64 * GiB and vcpu.mapping.regions == 2  # private and shared views, never remapped
    added = [(s, e) for s, e, state in td.tdx.state_ranges() if state == PageState.ACCEPTED]
    assert added and all(vcpu.mapping.is_mapped(s) and vcpu.mapping.is_mapped(e - 1) for s, e in added)
    assert not vcpu.mapping.is_mapped(0x100000) and not vcpu.mapping.is_mapped(vcpu.shared_bit | 0x100000)


def test_the_page_walker_translates_a_pte_with_the_shared_bit() -> None:
    # unicorn's own walker (TCG_PHYS_ADDR_BITS 40) takes bit 51 for a reserved bit; td_paging's does not.
    assert shared_bit_translates(52) is None and shared_bit_translates(48) is None


def test_ovmf_boots_from_the_reset_vector_to_the_uefi_shell() -> None:
    config = TdConfig(ram_size=2 * GiB, vcpus=1, firmware_path=str(binaries.ovmf_fd()))
    td = build_td(config)
    platform = Q35Platform.for_td(td)  # fw_cfg with DMA: OVMF's bounce buffers are TD-shared pages

    def at_the_shell(_leaf: int, _regs: Mapping[str, int]) -> str | None:
        return "the UEFI shell started" if "UEFI Interactive Shell" in platform.uart.text() else None

    result = TdMachine(td, platform=platform, until=at_the_shell).run(max_wall_s=240)
    assert result.stop.kind == StopKind.REQUESTED, (result.stop, result.module, result.serial[-2000:])
    assert "BdsDxe: starting Boot0001" in result.serial and td.tdx.termination is None
    events = platform.events.counts
    assert events["fw_cfg.dma"] > 0 and not events["fw_cfg.dma error"], platform.events.lines
    # SEC accepted all RAM below 4 GiB (2 GiB here) up front, as upstream TDVF does; nothing was accepted since.
    # What OVMF shared since (its DMA bounce buffers) the VMM removed from the private view.
    model = build_td(config)
    run_sec(model, UpfrontPolicy("below-4g"))
    shared = RangeMap(False, limit=model.tdx.private_limit)
    for s, e in platform.shared_ranges():
        shared.set(s, e, True)
    kept = [(s, e) for a, b in accepted(model.tdx) for s, e, sh in shared.runs(a, b) if not sh]
    assert accepted(td.tdx) == kept
    assert td.tdx.bytes_in_state(PageState.REMOVED) == events["mapgpa.removed 4K pages"] * 4096 > 0
    counts = result.progress.tdcalls
    assert counts["MEM_PAGE_ACCEPT"] == 1510 and counts["MR_RTMR_EXTEND"] >= 2 and counts["VP_VMCALL"] > 1000
    assert platform.shared_ranges(), "OVMF made its MMIO window shared through MapGPA"


def test_a_hostile_vmm_removing_the_firmwares_stack_page_gets_the_td_terminated() -> None:
    # The VMM takes back (TDH.MEM.PAGE.REMOVE) the accepted page under the firmware's stack after its 200th
    # TDVMCALL; the firmware's next push or pop touches it and the TDX module ends the TD there, as KVM does.
    config = TdConfig(ram_size=2 * GiB, vcpus=1, firmware_path=str(binaries.ovmf_fd()))
    td = build_td(config)
    platform = Q35Platform.for_td(td)
    machine = TdMachine(td, platform=platform)
    vcpu = machine.vcpus[0]
    vmcalls = 0
    taken: list[int] = []

    def hostile(leaf: int, _regs: Mapping[str, int]) -> str | None:
        nonlocal vmcalls
        vmcalls += leaf == TdcallLeaf.VP_VMCALL
        if vmcalls == 200 and not taken:
            page = vcpu.uc.reg_read(X.UC_X86_REG_RSP) & ~0xFFF  # identity-mapped in SEC/PEI/DXE
            td.tdx.remove(page, 4096)
            vcpu.mapping.sync(page, page + 4096)  # KVM zaps the page's EPT entry with the removal
            taken.append(page)
        return None

    machine.until = hostile
    result = machine.run(max_wall_s=120)
    assert taken and result.stop.kind == StopKind.TERMINATED, (result.stop, result.serial[-500:])
    assert td.tdx.termination is not None and f"{taken[0]:#x}"[:-3] in str(result.stop.detail)
