"""From SEC to DXE: PEI's use of its permanent memory, then the DXE core's memory services on the HOB list SEC
handed over."""

from __future__ import annotations

from dataclasses import replace

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import MemoryAllocation
from lazyaccept.firmware.pi.hob import HobList, MemoryAllocationHob, ResourceHob, parse_hob_list
from lazyaccept.firmware.sec import SecResult
from lazyaccept.firmware.sec.sec import PEI_MEMORY_SIZE
from lazyaccept.units import GiB
from lazyaccept.vmm.td import Td


def handed_over_hobs(sec: SecResult) -> HobList:
    """The HOB list as DXE receives it: the bytes SEC wrote at HobStart, parsed and checked again (edk2's DxeMain
    takes only the pointer, so DXE trusts no Python object of SEC's). Bad bytes: an InputError naming the field."""
    return parse_hob_list(sec.dxe_hob_bytes, base_address=sec.dxe_hob_base)


def enter_pei_memory(td: Td, sec: SecResult) -> None:
    """PublishPeiMemory (OvmfPkg/PlatformPei/MemDetect.c, edk2-stable202502) puts PEI's permanent memory at the top
    of RAM below 4 GiB, whatever SEC accepted, and PeiCore moves its stack and HOBs there. The Python firmware
    otherwise places it at the top of *accepted* RAM (the lazy policies need that), but when SEC dropped the sub-2
    MiB tail at that top (a PEI build before b15f98e68f) it is upstream's own policy and bug: PeiCore's use of the
    tail is an EPT violation on an unaccepted page, and the TDX module terminates the TD (TdTerminated), as it does
    for the real OVMF 2025.02 (tests/test_tdvf_regressions.py)."""
    if sec.edk2_profile.build != "OvmfPkgX64" or not sec.dropped_tails:
        return
    low_end = max(e for s, e in sec.ram if s < 4 * GiB)
    if any(e == low_end for _, e in sec.dropped_tails):
        base = max(0, low_end - PEI_MEMORY_SIZE)  # GetPeiMemoryCap is tens of MiB; the tail is in its top 2 MiB
        td.tdx.check_access(base, low_end - base, "write", actor="PeiCore")


def start_dxe(td: Td, sec: SecResult, policy: DxePolicy | None = None) -> DxeCore:
    """The DXE core's GCD and memory map from SEC's HOB list (resources, allocations, PHIT free memory), as the
    edk2 profile SEC ran with builds them. A PEI build first enters its permanent memory (enter_pei_memory), which
    may terminate the TD."""
    enter_pei_memory(td, sec)
    policy = replace(policy or DxePolicy(), edk2_profile=sec.edk2_profile)
    hobs = handed_over_hobs(sec)
    resources = [h for h in hobs.hobs if isinstance(h, ResourceHob)]
    allocations = [
        MemoryAllocation(h.base, h.length, h.memory_type) for h in hobs.hobs if isinstance(h, MemoryAllocationHob)
    ]
    phit = hobs.phit
    initial = (phit.free_memory_bottom, phit.free_memory_top) if phit.free_memory_top else None
    # The PHIT's used part (the HOB list) is an allocation already; DXE starts in the free part above it.
    return DxeCore(resources, tdx=td.tdx, policy=policy, allocations=allocations, initial_region=initial)
