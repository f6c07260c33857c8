"""TDVF SEC for TDX: read the TD HOB, accept the up-front part in parallel, hand DXE its HOB list.

Mirrors edk2 OvmfPkg/IntelTdx/TdxHelperLib/SecTdxHelper.c (TdxHelperProcessTdHob -> ProcessHobList:
AcceptMemoryForAPsStack, then AcceptMemory) and OvmfPkg/Library/PlatformInitLib/IntelTdx.c
(TransferTdxHobList, PlatformTdxPublishRamRegions), generalised from "below 4 GiB" to the policies of
firmware/sec/policy.py. What differs between edk2 releases and builds (the sub-2 MiB tail, the allocation HOBs
handed to DXE) is the edk2 profile's (firmware/profiles.py).

SEC keeps its own record of what is accepted (the VMM's added pieces plus what it accepted), builds DXE's HOB
list from that record, and `verify_against_truth` compares the record with the TDX module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.firmware.pi.hob import (
    EDK2_TD_HOB_TYPES,
    HobList,
    MemoryAllocationHob,
    PhitHob,
    ResourceHob,
    encode_hob_list,
    parse_hob_list,
)
from lazyaccept.firmware.profiles import PCIE_MMCONFIG, Edk2Profile, ProfileChoice, detect
from lazyaccept.firmware.sec.mp_accept import ACCEPT_CHUNK_SIZE, MpAccepter, aps_stack_size
from lazyaccept.firmware.sec.policy import UpfrontPolicy
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import Actor
from lazyaccept.spec.pi_hob import (
    EFI_HOB_GENERIC_HEADER,
    EFI_HOB_RESOURCE_DESCRIPTOR,
    TDVF_RAM_ATTRIBUTES,
    ResourceAttribute,
    ResourceType,
)
from lazyaccept.tdx.module import AcceptStats, PageState
from lazyaccept.tdx.status import status_name
from lazyaccept.units import PAGE_4K, GiB, MiB, align_down, align_up, format_size
from lazyaccept.vmm.td import Td
from lazyaccept.vmm.tdvf import TdvfMetadata, TdvfSectionType

SEC_ACTOR = Actor.SEC
EFI_BOOT_SERVICES_DATA = 4  # EFI_MEMORY_TYPE EfiBootServicesData
# Permanent PEI memory handed to DXE through the PHIT. OVMF's PublishPeiMemory sizes it from the address width
# (GetPeiMemoryCap, tens of MiB); lazyaccept assumes 64 MiB and places it at the top of accepted RAM below
# 4 GiB (OVMF uses the top of low RAM, which a lazy policy may leave unaccepted).
PEI_MEMORY_SIZE = 64 * MiB
MIN_PEI_MEMORY_SIZE = 4 * MiB
# PlatformAddReservedMemoryBaseSizeHob (..., Cacheable=FALSE) of PlatformInitLib/Platform.c (edk2-stable202502).
MMCONFIG_ATTRIBUTES = (
    ResourceAttribute.PRESENT | ResourceAttribute.INITIALIZED | ResourceAttribute.UNCACHEABLE | ResourceAttribute.TESTED
)


@dataclass
class SecResult:
    policy: UpfrontPolicy
    td_hob: HobList
    convention: str  # "qemu" (type 7 present) or "system-memory" (older convention)
    pending_before: list[tuple[int, int]]
    accepted: RangeMap[bool]  # SEC's own record: accepted RAM (VMM-added + SEC-accepted)
    ram: list[tuple[int, int]]
    stats: AcceptStats
    vcpu_ns: list[int]
    ap_stack: tuple[int, int] | None
    dxe_hobs: HobList
    dxe_hob_base: int
    dxe_hob_bytes: bytes
    edk2_profile: Edk2Profile
    edk2_profile_why: str = ""
    # Sub-2 MiB tails SEC left pending yet hands to DXE as system memory (edk2 before b15f98e68f).
    dropped_tails: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed_assert: str | None = None  # an edk2 ASSERT SEC's input makes fail (compiled out of RELEASE builds)

    @property
    def dropped_tail_bytes(self) -> int:
        return sum(e - s for s, e in self.dropped_tails)

    @property
    def phase_ns(self) -> int:
        """SEC's duration: the slowest vCPU."""
        return max(self.vcpu_ns)

    @property
    def accepted_bytes(self) -> int:
        return self.accepted.total(0, self.accepted.limit, bool)

    @property
    def sec_accepted_bytes(self) -> int:
        return self.stats.accepted_bytes

    def accepted_ranges(self) -> list[tuple[int, int]]:
        return [(s, e) for s, e, v in self.accepted.runs() if v]


def read_td_hob(td: Td) -> HobList:
    """Read and validate the TD HOB from guest memory, as SEC finds it at the TD_HOB section."""
    section = td.firmware.td_hob
    raw = td.tdx.memory.read(section.memory_base, section.memory_size, actor=SEC_ACTOR)
    hobs = parse_hob_list(
        raw,
        base_address=section.memory_base,
        allowed_types=EDK2_TD_HOB_TYPES,
        range_alignment=PAGE_4K,
        max_address=td.tdx.private_limit,
    )
    check_td_hob_ram(hobs, raw, td.firmware)
    return hobs


_RAM_TYPES = (ResourceType.SYSTEM_MEMORY, ResourceType.MEMORY_UNACCEPTED)


def check_td_hob_ram(hobs: HobList, raw: bytes, firmware: TdvfMetadata) -> None:
    """The TD HOB's RAM against what the firmware's own metadata says the VMM added. Ours, not edk2's: the HOB
    comes from the untrusted VMM and SEC is about to accept what it calls pending, so it must not
    - call the firmware's BFV/CFV RAM (DXE would hand firmware pages out as free memory);
    - call a TD_HOB or TEMP_MEM section the VMM added unaccepted (SEC would accept over its own input: a double
      accept, which a VMM that removed and re-AUGed the page turns into a zeroed page);
    - with type-7 descriptors present (QEMU's convention), call anything but those sections SYSTEM_MEMORY: QEMU
      adds nothing else, so such memory is pending and its first touch would terminate the TD.
    An InputError names the descriptor's PhysicalStart and its offset in the TD HOB."""
    added: RangeMap[bool] = RangeMap(False)
    for section in firmware.ram_sections:
        added.set(section.memory_base, section.memory_end, True)
    unaccepted = ResourceType.MEMORY_UNACCEPTED
    qemu_convention = any(isinstance(h, ResourceHob) and h.resource_type == unaccepted for h in hobs)
    offset = 0
    for index, hob in enumerate(hobs):
        at, offset = offset, offset + EFI_HOB_GENERIC_HEADER.unpack(raw, offset)["HobLength"]
        if not isinstance(hob, ResourceHob) or hob.resource_type not in _RAM_TYPES:
            continue
        what = f"TD HOB {hob.resource_type.name} [{hob.start:#x}, {hob.end:#x})"

        def fail(message: str, index: int = index, at: int = at, what: str = what) -> InputError:
            return InputError(
                f"{what} {message}",
                field=f"HOB[{index}].PhysicalStart",
                offset=at + EFI_HOB_RESOURCE_DESCRIPTOR.offset_of("PhysicalStart"),
            )

        for section in firmware.sections:
            if not (hob.start < section.memory_end and section.memory_base < hob.end):
                continue
            where = f"the firmware's {section.type.name} section [{section.memory_base:#x}, {section.memory_end:#x})"
            if section.from_image:
                raise fail(f"overlaps {where}: firmware is not RAM")
            if hob.resource_type == ResourceType.MEMORY_UNACCEPTED:
                raise fail(f"calls {where}, which the VMM added, unaccepted: SEC would accept it again")
        if qemu_convention and hob.resource_type == ResourceType.SYSTEM_MEMORY:
            claimed = hob.length - added.total(hob.start, hob.end, bool)
            if claimed:
                raise fail(
                    f"calls {claimed:#x} bytes outside the firmware's TD_HOB and TEMP_MEM sections added; the VMM "
                    "adds nothing else, so that memory is pending"
                )


def run_sec(td: Td, policy: UpfrontPolicy, profile: ProfileChoice | Edk2Profile | None = None) -> SecResult:
    """SEC as the edk2 profile's build and release runs it (default: the profile read from the TD's image)."""
    if isinstance(profile, Edk2Profile):
        profile = ProfileChoice(profile, "given")
    choice = profile or detect(td.firmware)
    edk2 = choice.profile
    tdx = td.tdx
    start_ns = list(tdx.clocks_ns)
    hobs = read_td_hob(td)
    memory = [
        r for r in hobs.resources() if r.resource_type in (ResourceType.SYSTEM_MEMORY, ResourceType.MEMORY_UNACCEPTED)
    ]
    memory.sort(key=lambda r: r.start)
    ram = [(r.start, r.end) for r in memory]
    record: RangeMap[bool] = RangeMap(False, limit=tdx.private_limit)
    notes: list[str] = []
    if any(r.resource_type == ResourceType.MEMORY_UNACCEPTED for r in memory):
        convention = "qemu"
        pending = [(r.start, r.end) for r in memory if r.resource_type == ResourceType.MEMORY_UNACCEPTED]
        for r in memory:
            if r.resource_type == ResourceType.SYSTEM_MEMORY:
                record.set(r.start, r.end, True)
    else:
        # No type 7 (Cloud Hypervisor's convention): all of it is RAM; only the sections the firmware's own
        # metadata declares were added are accepted already (td-shim reads such a HOB the same way).
        convention = "system-memory"
        added = RangeMap(False, limit=tdx.private_limit)
        for section in td.firmware.ram_sections:
            added.set(section.memory_base, section.memory_end, True)
        pending = []
        for s, e in ram:
            for rs, re_, is_added in added.runs(s, e):
                if is_added:
                    record.set(rs, re_, True)
                else:
                    pending.append((rs, re_))
        notes.append("TD HOB has no EFI_RESOURCE_MEMORY_UNACCEPTED: treating SYSTEM_MEMORY as pending RAM")
    pending.sort()
    added_bytes = record.total(0, record.limit, bool)
    ram_bytes = sum(e - s for s, e in ram)
    if policy.kind == "size" and policy.size_bytes > ram_bytes:
        raise ConfigError(f"up-front size {policy.name} is larger than the TD's {format_size(ram_bytes)} of RAM")

    mp = MpAccepter(tdx, tdx.num_vcpus, SEC_ACTOR, accept_tail=edk2.sec_accepts_tail)
    ap_stack, done_until, failed_assert = accept_ap_stacks(mp, pending, record, notes)
    hob_ends = {e for _, e in pending}
    for s, e in policy.targets(pending, added_bytes):
        s = max(s, done_until)  # AcceptMemory skips what the AP-stack step accepted
        if s < e:
            mp.mp_accept(s, e, hob_end=e in hob_ends)
            record.set(s, e, True)
    # SEC decompresses PEIFV and DXEFV into their fixed ranges (OvmfPkg/Sec/SecMain.c DecompressMemFvs), so under
    # a lazy policy what of them is still pending is accepted first (upstream's below-4g has it all already).
    for fv in edk2.reservations:
        if fv.memory_type != EFI_BOOT_SERVICES_DATA:
            continue
        for s, e in ram:
            lo, hi = max(s, fv.base), min(e, fv.end)
            for ps, pe, done in record.runs(lo, hi) if lo < hi else ():
                if not done:
                    mp.bsp_accept(ps, pe)
                    record.set(ps, pe, True)
    if policy.kind == "size" and record.total(0, record.limit, bool) > policy.size_bytes:
        notes.append("the AP stack area, the firmware's own ranges and the VMM-added RAM exceed the up-front size: "
                     "accepted more")
    if mp.outcome.failed is not None:
        f = mp.outcome.failed
        # edk2's SEC cannot go on without the memory (TdAcceptPages fails: ASSERT and CpuDeadLoop).
        raise InputError(f"SEC could not accept memory at {f.failed_gpa:#x}: TDCALL returned {status_name(f.status)}")
    dropped = mp.outcome.dropped_tails
    if dropped:
        notes.append(
            f"{edk2.name} leaves {sum(e - s for s, e in dropped):#x} bytes of sub-2MiB tails unaccepted yet hands "
            "them to DXE as system memory (fixed by b15f98e68f, edk2-stable202511): "
            + ", ".join(f"[{s:#x}, {e:#x})" for s, e in dropped)
        )
    vcpu_ns = [now - before for now, before in zip(tdx.clocks_ns, start_ns, strict=True)]
    dxe_hobs, base, raw = build_dxe_hob_list(td, memory, record, edk2)
    return SecResult(
        policy,
        hobs,
        convention,
        pending,
        record,
        ram,
        mp.outcome.stats,
        vcpu_ns,
        ap_stack,
        dxe_hobs,
        base,
        raw,
        edk2,
        choice.why,
        list(dropped),
        notes,
        failed_assert,
    )


# The ASSERT SecTdxHelper.c's AcceptMemoryForAPsStack makes when no unaccepted range holds the AP stacks.
AP_STACK_ASSERT = "OvmfPkg/IntelTdx/TdxHelperLib/SecTdxHelper.c AcceptMemoryForAPsStack: ASSERT (MemoryRegionFound)"


def accept_ap_stacks(
    mp: MpAccepter, pending: list[tuple[int, int]], record: RangeMap[bool], notes: list[str]
) -> tuple[tuple[int, int] | None, int, str | None]:
    """AcceptMemoryForAPsStack (edk2-stable202502 to 202605 alike): with more than one vCPU the BSP accepts the
    unaccepted ranges in order, small ones whole, until one holds APS_STACK_SIZE (the stacks at its top).
    Returns (the AP stack area or None, where the up-front accept resumes, the failed ASSERT or None).

    No range large enough (e.g. 4096 vCPUs need 64 MiB): upstream's ASSERT (MemoryRegionFound) fails. A DEBUG
    build stops there in CpuDeadLoop (OvmfPkgX64.dsc's PcdDebugPropertyMask 0x2F), the TD hanging in SEC; a
    RELEASE build compiles the ASSERT out (Debian's OVMF 2025.02 and 2026.08 images are RELEASE builds: no
    ASSERT file names in any module) and goes on. By then the BSP has accepted every unaccepted range, so
    AcceptMemory finds all of them below PhysicalEnd and wakes no AP: nothing is striped onto APs here either."""
    if mp.n == 1:
        return None, 0, None
    need = aps_stack_size(mp.n)
    done_until = 0
    for s, e in pending:
        end = s + need if e - s >= need and e - s > ACCEPT_CHUNK_SIZE else e
        mp.bsp_accept(s, end)
        record.set(s, end, True)
        done_until = end
        if e - s >= need:
            return (end - need, end), done_until, None
    mp.n = 1  # the APs never got stacks: whatever follows is the BSP's
    notes.append(
        f"no unaccepted range holds the {need:#x}-byte AP stack area: {AP_STACK_ASSERT} fails; a RELEASE build "
        "(Debian's) goes on with every range accepted by the BSP and no AP woken, a DEBUG build hangs in SEC"
    )
    return None, done_until, AP_STACK_ASSERT


def build_dxe_hob_list(
    td: Td, memory: list[ResourceHob], record: RangeMap[bool], profile: Edk2Profile
) -> tuple[HobList, int, bytes]:
    """The PI HOB list DXE starts from: accepted RAM as SYSTEM_MEMORY, the rest as UNACCEPTED, and the profile's
    allocation HOBs, and Q35's MMCONFIG window as reserved memory (profiles.PCIE_MMCONFIG).

    TransferTdxHobList turns unaccepted HOBs ending at or below 4 GiB into SYSTEM_MEMORY and leaves the others;
    it never splits a HOB that straddles what was accepted. lazyaccept splits each HOB at the exact accepted
    boundary, so that DXE's view equals what SEC accepted under any policy.

    Allocations: PlatformTdxPublishRamRegions reserves the reset vector's page tables, the AP mailbox and the work
    area (each must lie in a TEMP_MEM section of the image: the VMM added it); the TD_HOB and the other TEMP_MEM
    sections get no allocation HOB, so DXE (and the OS) may reuse them. PlatformPei reserves PEIFV and DXEFV; a
    PEI-less build allocates DXEFV's buffer from the HOB list's free memory instead.
    """
    resources: list = []
    for r in memory:
        for s, e, accepted in record.runs(r.start, r.end):
            kind = ResourceType.SYSTEM_MEMORY if accepted else ResourceType.MEMORY_UNACCEPTED
            resources.append(ResourceHob(kind, TDVF_RAM_ATTRIBUTES, s, e - s))
    temp_mem = td.firmware.of_type(TdvfSectionType.TEMP_MEM)
    for res in profile.reservations:
        if res.memory_type == EFI_BOOT_SERVICES_DATA:
            continue
        if not any(t.memory_base <= res.base and res.end <= t.memory_end for t in temp_mem):
            raise InputError(
                f"{profile.name}'s {res.what} [{res.base:#x}, {res.end:#x}) is in no TEMP_MEM section of the "
                f"firmware's TDVF metadata: the image is not {profile.build} {profile.release}"
            )
    allocations = [MemoryAllocationHob(a.base, a.size, a.memory_type) for a in profile.reservations]
    mmconfig = PCIE_MMCONFIG
    if any(r.end > mmconfig.base for r in memory if r.start < 4 * GiB):
        # edk2 ASSERTs LowMemory <= PciExBarBase; QEMU's q35 never puts RAM there (below 4 GiB ends by 0xb0000000).
        raise InputError(f"RAM below 4 GiB reaches the Q35 MMCONFIG window at {mmconfig.base:#x}")
    resources.append(ResourceHob(ResourceType.MEMORY_RESERVED, MMCONFIG_ATTRIBUTES, mmconfig.base, mmconfig.size))
    allocations.append(MemoryAllocationHob(mmconfig.base, mmconfig.size, mmconfig.memory_type))
    # PEI memory: the top PEI_MEMORY_SIZE of the highest accepted range below 4 GiB that is large enough, outside
    # the reserved ranges. With little accepted below 4 GiB, PEI memory shrinks to half of the largest range.
    free = RangeMap(False, limit=record.limit)
    for s, e, v in record.runs(0, 4 * GiB):
        free.set(s, e, v)
    for res in profile.reservations:
        free.set(res.base, res.end, False)
    low = [(s, e) for s, e, v in free.runs(0, 4 * GiB) if v and e - s >= MIN_PEI_MEMORY_SIZE * 2]
    if not low:
        raise InputError(f"no accepted RAM range below 4 GiB of {2 * MIN_PEI_MEMORY_SIZE // MiB} MiB for DXE")
    want = PEI_MEMORY_SIZE + align_up(profile.phit_fv_buffer, PAGE_4K)
    big = [(s, e) for s, e in low if e - s >= want]
    start, end = big[-1] if big else max(low, key=lambda r: r[1] - r[0])
    size = min(want, align_down((end - start) // 2, MiB))
    top = align_down(end, PAGE_4K)
    bottom = top - size
    free_top = top
    if profile.phit_fv_buffer:
        # PrePiLib AllocatePages: from the top of the HOB list's free memory (PeilessStartupLib DxeLoadCore).
        free_top = top - align_up(profile.phit_fv_buffer, PAGE_4K)
        allocations.append(MemoryAllocationHob(free_top, top - free_top, EFI_BOOT_SERVICES_DATA))
    draft = [PhitHob(), *resources, *allocations]
    size = len(encode_hob_list(draft + [MemoryAllocationHob(0, 0, 0)], base_address=bottom))
    used = align_up(size, PAGE_4K)
    if profile.phit_fv_buffer and bottom + used + MIN_PEI_MEMORY_SIZE > free_top:
        raise InputError(
            f"the {top - bottom:#x}-byte PEI memory at {bottom:#x} cannot hold {profile.name}'s "
            f"{profile.phit_fv_buffer:#x}-byte DXEFV buffer and the HOB list: accept more below 4 GiB up front"
        )
    phit = PhitHob(memory_top=top, memory_bottom=bottom, free_memory_top=free_top, free_memory_bottom=bottom + used)
    hobs = [phit, *resources, *allocations, MemoryAllocationHob(bottom, used, EFI_BOOT_SERVICES_DATA)]
    raw = encode_hob_list(hobs, base_address=bottom)
    td.tdx.memory.write(bottom, raw, actor=SEC_ACTOR)
    return HobList(hobs, base_address=bottom, size_bytes=len(raw)), bottom, raw


def verify_against_truth(td: Td, sec: SecResult) -> list[str]:
    """SEC's record against the TDX module: every RAM byte SEC calls accepted is, and no other RAM is, but for
    the sub-2 MiB tails the profile's SEC drops while calling them accepted."""
    problems = []
    expected = sec.accepted.copy()
    for s, e in sec.dropped_tails:  # the known upstream loss (edk2 before b15f98e68f): pending by design
        expected.set(s, e, False)
    for s, e in sec.ram:
        for rs, re_, accepted in expected.runs(s, e):
            truth = td.tdx.pages.total(rs, re_, lambda p: p.state == PageState.ACCEPTED)
            want = re_ - rs if accepted else 0
            if truth != want:
                problems.append(
                    f"[{rs:#x}, {re_:#x}) SEC says {'accepted' if accepted else 'pending'}, "
                    f"the TDX module has {truth:#x} bytes accepted"
                )
    return problems
