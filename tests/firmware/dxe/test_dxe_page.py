"""The page allocator and GetMemoryMap: every status of Page.c, top-down placement, bins, the map key."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource
from lazyaccept.firmware.dxe.invariants import check_core
from lazyaccept.firmware.dxe.page import FreeIndex, MapEntry
from lazyaccept.firmware.profiles import INTELTDX_2026_08, OVMF_X64_2025_02, OVMF_X64_2026_08, Edk2Profile
from lazyaccept.spec.efi import (
    EFI_MEMORY_RUNTIME,
    MAX_UINT64,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
    MemoryDescriptor,
)
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.units import GiB, MiB

from .conftest import make_core, td_layout

S = EfiStatus
M = EfiMemoryType
A = EfiAllocateType
PAGE = 0x1000


def free_runs(core: DxeCore) -> list[tuple[int, int]]:
    return [(s, e) for s, e, v in core.pages.runs() if v.type == M.EfiConventionalMemory]


# ----------------------------------------------------------------- AllocatePages parameter checks


@pytest.mark.parametrize(
    "memory_type",
    [M.EfiConventionalMemory, M.EfiPersistentMemory, M.EfiUnacceptedMemoryType, M.EfiMaxMemoryType, 0x6FFFFFFF],
)
def test_allocate_rejects_memory_types(core: DxeCore, memory_type: int) -> None:
    key = core.pages.map_key
    for alloc_type in (A.AllocateAnyPages, A.AllocateMaxAddress, A.AllocateAddress):
        assert core.allocate_pages(alloc_type, memory_type, 1, 16 * MiB) == (S.INVALID_PARAMETER, 0)
    assert core.pages.map_key == key


@pytest.mark.parametrize("memory_type", [0x70000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, M.EfiPalCode])
def test_allocate_accepts_oem_os_types(core: DxeCore, memory_type: int) -> None:
    status, addr = core.allocate_pages(A.AllocateAnyPages, memory_type, 3)
    assert status == S.SUCCESS
    entry = core.pages.entry_at(addr)
    assert entry is not None and entry.type == memory_type
    assert core.free_pages(addr, 3) == S.SUCCESS
    check_core(core)


def test_allocate_parameter_statuses(core: DxeCore) -> None:
    assert core.allocate_pages(A.MaxAllocateType, M.EfiLoaderData, 1) == (S.INVALID_PARAMETER, 0)
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 1, None) == (S.INVALID_PARAMETER, 0)
    # AllocateAddress failures are all EFI_NOT_FOUND in edk2, a misaligned address included.
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 0x2000_0800)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 0)[0] == S.NOT_FOUND  # page 0
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 0, 0x2000_0000)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 2, MAX_UINT64 - 0xFFF)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1 << 52, 0x1000)[0] == S.NOT_FOUND
    # AnyPages of 0 pages finds nothing: EFI_OUT_OF_RESOURCES.
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 0) == (S.OUT_OF_RESOURCES, 0)
    assert core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, 1, 0xFFE) == (S.OUT_OF_RESOURCES, 0)
    check_core(core)


def test_allocate_address_over_unaccepted_is_not_found(core: DxeCore) -> None:
    # Page.c CoreConvertPagesEx: no memory-map entry covers unaccepted memory.
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 512 * MiB)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 4 * GiB)[0] == S.NOT_FOUND
    # Straddling the end of accepted memory: one free descriptor must hold the whole range.
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 2, 128 * MiB - PAGE)[0] == S.NOT_FOUND
    # Beyond RAM altogether.
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 3 * GiB)[0] == S.NOT_FOUND
    check_core(core)


def test_allocate_address_statuses(core: DxeCore) -> None:
    status, addr = core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 16, 32 * MiB)
    assert (status, addr) == (S.SUCCESS, 32 * MiB)
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, 32 * MiB + 15 * PAGE)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderCode, 32, 32 * MiB - 16 * PAGE)[0] == S.NOT_FOUND
    # Into another type's special bin: EFI_NOT_FOUND even though the pages are free.
    nvs = next(b for t, b, _ in core.pages.bins() if t == M.EfiACPIMemoryNVS)
    assert core.allocate_pages(A.AllocateAddress, M.EfiLoaderData, 1, nvs)[0] == S.NOT_FOUND
    assert core.allocate_pages(A.AllocateAddress, M.EfiACPIMemoryNVS, 1, nvs) == (S.SUCCESS, nvs)
    check_core(core)


# ----------------------------------------------------------------- placement


def test_any_pages_is_top_down_with_bins() -> None:
    # The PEI-less build's table has a boot-services-data bin (PeilessStartup.c); OvmfPkgX64's has none.
    core = make_core(DxePolicy(edk2_profile=INTELTDX_2026_08))
    bins = {t: (b, e) for t, b, e in core.pages.bins()}
    # A type with a bin lands at the top of its bin.
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiBootServicesData, 4)
    assert status == S.SUCCESS and addr == bins[M.EfiBootServicesData][1] - 4 * PAGE
    # Without a bin: the top of the default bin, just below the bins.
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 4)
    assert status == S.SUCCESS and addr + 4 * PAGE == core.pages.default_maximum_address + 1
    # Too big for its bin: falls to the default bin.
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiACPIReclaimMemory, 9)
    assert status == S.SUCCESS and addr + 9 * PAGE <= core.pages.default_maximum_address + 1
    check_core(core)


def test_max_address_rounds_down_to_a_page(core: DxeCore) -> None:
    # Page.c CoreFindFreePagesI: a MaxAddress that is not the last byte of a page excludes that page.
    status, addr = core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, 2, 0x0400_0800)
    assert status == S.SUCCESS and addr + 2 * PAGE == 0x0400_0000
    status, addr = core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderCode, 2, 0x0400_1FFF)
    assert status == S.SUCCESS and addr + 2 * PAGE == 0x0400_2000
    check_core(core)


def test_out_of_resources_beyond_accepted_memory(core: DxeCore) -> None:
    free = sum(e - s for s, e in free_runs(core))
    assert core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (free >> 12) + 1) == (S.OUT_OF_RESOURCES, 0)
    assert core.allocate_pages(A.AllocateMaxAddress, M.EfiLoaderData, 256, 16 * MiB - 1)[0] == S.SUCCESS
    # Unaccepted memory is never promoted.
    assert core.pages.promotions == 0
    check_core(core)


def test_promote_untested_memory_on_out_of_resources() -> None:
    resources = [*td_layout(512 * MiB, 0, 128 * MiB), Resource(4 * GiB, 64 * MiB, ResourceType.SYSTEM_MEMORY, 0x3)]
    core = DxeCore(resources)
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (100 * MiB) >> 12)
    assert status == S.SUCCESS
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, (32 * MiB) >> 12)
    assert status == S.SUCCESS and addr >= 4 * GiB
    assert core.pages.promotions == 1
    check_core(core)


# ----------------------------------------------------------------- FreePages


def test_free_pages_statuses(core: DxeCore) -> None:
    status, addr = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 8)
    assert status == S.SUCCESS
    assert core.free_pages(512 * MiB, 1) == S.NOT_FOUND  # unaccepted: not in the memory map
    assert core.free_pages(3 * GiB, 1) == S.NOT_FOUND  # no RAM
    assert core.free_pages(addr + 0x800, 1) == S.INVALID_PARAMETER  # misaligned inside an entry
    assert core.free_pages(addr, 0) == S.INVALID_PARAMETER
    assert core.free_pages(addr - 16 * PAGE, 1) == S.NOT_FOUND  # already free
    assert core.free_pages(addr, 8) == S.SUCCESS
    assert core.free_pages(addr, 8) == S.NOT_FOUND  # double free
    check_core(core)


def test_free_merges_neighbours(core: DxeCore) -> None:
    before = list(core.pages.runs())
    addrs = [core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 4)[1] for _ in range(3)]
    assert len(list(core.pages.runs())) == len(before) + 2  # free, one merged allocation, free
    for a in (addrs[1], addrs[0], addrs[2]):
        assert core.free_pages(a, 4) == S.SUCCESS
    assert list(core.pages.runs()) == before
    check_core(core)


def test_free_across_types_and_partial_free(core: DxeCore) -> None:
    _, a = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 4)
    _, b = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderCode, 4)
    assert b + 4 * PAGE == a
    assert core.free_pages(b, 8) == S.SUCCESS  # two descriptors, both allocated
    _, a = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 4)
    # Freeing past the allocation into free memory: edk2 frees the first part, then fails.
    assert core.free_pages(a, 8) == S.NOT_FOUND
    entry = core.pages.entry_at(a)
    assert entry is not None and entry.type == M.EfiConventionalMemory
    check_core(core)


# ----------------------------------------------------------------- map key


def test_map_key_changes_on_every_change(core: DxeCore) -> None:
    k0 = core.pages.map_key
    assert core.get_memory_map(0).map_key == k0
    _, a = core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 1)
    k1 = core.pages.map_key
    assert k1 != k0
    core.allocate_pages(A.AllocateAnyPages, M.EfiLoaderData, 1 << 40)  # fails: no change
    assert core.pages.map_key == k1
    core.free_pages(a, 1)
    assert core.pages.map_key not in (k0, k1)


# ----------------------------------------------------------------- GetMemoryMap


def test_get_memory_map_statuses(core: DxeCore) -> None:
    assert core.get_memory_map(None).status == S.INVALID_PARAMETER
    probe = core.get_memory_map(0, buffer=False)
    assert probe.status == S.BUFFER_TOO_SMALL
    assert (probe.descriptor_size, probe.descriptor_version) == (48, 1)
    assert probe.map_key == core.pages.map_key
    assert core.get_memory_map(probe.memory_map_size - 1).status == S.BUFFER_TOO_SMALL
    assert core.get_memory_map(probe.memory_map_size, buffer=False).status == S.INVALID_PARAMETER
    result = core.get_memory_map(probe.memory_map_size)
    assert result.status == S.SUCCESS
    # The default profile (edk2-stable202502) probes without the two GCD unaccepted entries (fixed by f80a406aa9)
    # and without the bin slack d419725b23 added, so its map overruns the probed size by exactly those two.
    assert result.memory_map_size == 48 * len(result.descriptors) == probe.memory_map_size + 2 * 48
    assert result.overflow_bytes == 2 * 48
    assert len(result.pack()) == result.memory_map_size


@pytest.mark.parametrize("profile", [OVMF_X64_2025_02, OVMF_X64_2026_08, INTELTDX_2026_08], ids=lambda p: p.name)
def test_probe_counts_every_source_of_descriptors(profile: Edk2Profile) -> None:
    # Page.c: memory-map entries + GCD reserved/persistent/runtime-MMIO/unaccepted entries (the two unaccepted
    # ones only from f80a406aa9) + 2 per special bin (only from d419725b23).
    core = make_core(DxePolicy(edk2_profile=profile))
    map_entries = len(list(core.pages.runs()))
    special_bins = sum(1 for t, _, _ in core.pages.bins() if t in (0, 5, 6, 9, 10))
    assert special_bins == 5
    probe = core.get_memory_map(0)
    unaccepted = 2 if profile.probe_counts_unaccepted else 0
    slack = 2 * special_bins if profile.splits_free_bins else 0
    assert probe.memory_map_size == 48 * (map_entries + unaccepted + slack)


@pytest.mark.parametrize("profile", [OVMF_X64_2025_02, OVMF_X64_2026_08], ids=lambda p: p.name)
def test_unaccepted_memory_is_type_15(profile: Edk2Profile) -> None:
    core = make_core(DxePolicy(edk2_profile=profile))
    result = core.get_memory_map(1 << 20)
    unaccepted = [d for d in result.descriptors if d.type == M.EfiUnacceptedMemoryType]
    assert unaccepted == [
        MemoryDescriptor(15, 128 * MiB, (896 * MiB) >> 12, 0),
        MemoryDescriptor(15, 4 * GiB, GiB >> 12, 0),
    ]
    bins = core.pages._special_bins()
    bin_types = {t for _, _, t in bins}
    assert len(bins) == 5 and bins[-1][1] == 128 * MiB  # all five free, at the top of the first memory
    typed = [d for d in result.descriptors if d.type in bin_types]
    if profile.splits_free_bins:
        # d419725b23 (edk2-stable202602): free memory is split at the bin edges and typed as each bin.
        assert [(d.physical_start, d.end, d.type) for d in typed] == bins
        runtime = [d for d in typed if d.type in (M.EfiRuntimeServicesCode, M.EfiRuntimeServicesData)]
        assert runtime and all(d.attribute & EFI_MEMORY_RUNTIME for d in runtime)
    else:
        # edk2-stable202502: the free bins are one free entry with the memory below them, which lies in no single
        # bin, so the whole first 128 MiB is one EfiConventionalMemory descriptor and no bin is typed.
        assert typed == []
        assert result.descriptors[0] == MemoryDescriptor(M.EfiConventionalMemory, 0, (128 * MiB) >> 12, 0)


def test_reserved_and_runtime_mmio_in_memory_map() -> None:
    resources = [
        *td_layout(512 * MiB, 0, 512 * MiB),
        Resource(0xFEC0_0000, 0x1000, ResourceType.MEMORY_RESERVED),
        Resource(0xE000_0000, 0x1000_0000, ResourceType.MEMORY_MAPPED_IO),
    ]
    core = DxeCore(resources)
    before = {d.type for d in core.get_memory_map(1 << 20).descriptors}
    assert M.EfiReservedMemoryType in before and M.EfiMemoryMappedIO not in before
    core.set_memory_space_attributes(0xE000_0000, 0x1000_0000, EFI_MEMORY_RUNTIME)
    after = core.get_memory_map(1 << 20).descriptors
    assert any(d.type == M.EfiMemoryMappedIO and d.physical_start == 0xE000_0000 for d in after)
    check_core(core)


def _many_unaccepted_ranges(policy: DxePolicy) -> DxeCore:
    """Accepted and unaccepted memory interleaved: 40 type-15 GCD entries (as a VMM with holes could give)."""
    resources = [Resource(0, 256 * MiB)]
    base = 4 * GiB
    for _ in range(40):
        resources.append(Resource(base, 64 * MiB, ResourceType.MEMORY_UNACCEPTED))
        resources.append(Resource(base + 64 * MiB, 2 * MiB, ResourceType.MEMORY_RESERVED))
        base += 128 * MiB
    return DxeCore(resources, policy=policy)


def test_regression_f80a406aa9_probe_counts_unaccepted() -> None:
    """edk2 commit f80a406aa9 (2025): the size probe missed GCD unaccepted entries, so a loader that
    allocated exactly the probed size had GetMemoryMap write past its buffer."""
    fixed = _many_unaccepted_ranges(DxePolicy(edk2_profile=OVMF_X64_2026_08))
    probe = fixed.get_memory_map(0)
    result = fixed.get_memory_map(probe.memory_map_size)
    assert result.status == S.SUCCESS and result.overflow_bytes == 0
    assert result.memory_map_size <= probe.memory_map_size
    assert sum(d.type == M.EfiUnacceptedMemoryType for d in result.descriptors) == 40

    buggy = _many_unaccepted_ranges(DxePolicy(edk2_profile=OVMF_X64_2025_02))
    probe = buggy.get_memory_map(0)
    result = buggy.get_memory_map(probe.memory_map_size)
    assert result.status == S.SUCCESS  # the bug returns success...
    assert result.overflow_bytes >= 40 * 48 - 10 * 48  # ...having written past the caller's buffer


# ----------------------------------------------------------------- the free index


def test_free_index_is_the_map_free_runs(core: DxeCore) -> None:
    runs = [(s, e - s) for s, e, v in core.pages.runs() if v == MapEntry(M.EfiConventionalMemory)]
    assert sorted(core.pages.free) == runs


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(1, 8)), min_size=0, max_size=300),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 12)), min_size=1, max_size=30),
)
def test_free_index_find_top_matches_brute_force(
    runs: list[tuple[int, int]], queries: list[tuple[int, int, int]]
) -> None:
    idx = FreeIndex(block=2)  # many blocks, so block skipping is exercised
    taken: list[tuple[int, int]] = []
    pos = 0
    for gap, length in runs:
        pos += gap
        taken.append((pos, length))
        idx.add(pos, length)
        pos += length + 1
    for s, _ in taken[::3]:
        idx.remove(s)
    live = [r for i, r in enumerate(taken) if i % 3]
    assert list(idx) == live
    for max_incl, min_addr, size in queries:
        best = None
        for s, n in live:
            end = min(s + n - 1, max_incl)
            if end - s + 1 >= size and end - size + 1 >= min_addr and s <= max_incl:
                cand = end - size + 1
                best = cand if best is None or cand > best else best
        assert idx.find_top(max_incl, min_addr, size) == best


def test_large_td_stays_range_based() -> None:
    core = make_core(low=2 * GiB, high=4 * 1024 * GiB - 2 * GiB, upfront=2 * GiB, with_tdx=False)
    assert len(core.gcd.map) < 10
    result = core.get_memory_map(1 << 20)
    assert sum(d.size for d in result.descriptors if d.type == 15) == 4 * 1024 * GiB - 2 * GiB
