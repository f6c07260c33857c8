"""From SEC to DXE: start the DXE core's memory services on the HOB list SEC handed over."""

from __future__ import annotations

from dataclasses import replace

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import MemoryAllocation
from lazyaccept.firmware.pi.hob import HobList, MemoryAllocationHob, ResourceHob, parse_hob_list
from lazyaccept.firmware.sec import SecResult
from lazyaccept.vmm.td import Td


def handed_over_hobs(sec: SecResult) -> HobList:
    """The HOB list as DXE receives it: the bytes SEC wrote at HobStart, parsed and checked again (edk2's DxeMain
    takes only the pointer, so DXE trusts no Python object of SEC's). Bad bytes: an InputError naming the field."""
    return parse_hob_list(sec.dxe_hob_bytes, base_address=sec.dxe_hob_base)


def start_dxe(td: Td, sec: SecResult, policy: DxePolicy | None = None) -> DxeCore:
    """The DXE core's GCD and memory map from SEC's HOB list (resources, allocations, PHIT free memory), as the
    edk2 profile SEC ran with builds them."""
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
