"""The GCD memory space map: resource conversion and edk2's statuses (Gcd.c)."""

from __future__ import annotations

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.exit import DxeCore
from lazyaccept.firmware.dxe.gcd import (
    DXE_CORE_IMAGE_HANDLE,
    TESTED_MEMORY_ATTRIBUTES,
    Gcd,
    GcdType,
    MemoryAllocation,
    Resource,
    gcd_type_for_resource,
    largest_free_region,
    resource_capabilities,
)
from lazyaccept.firmware.dxe.page import PageAllocator
from lazyaccept.spec.efi import (
    EFI_MEMORY_INITIALIZED,
    EFI_MEMORY_PORT_IO,
    EFI_MEMORY_PRESENT,
    EFI_MEMORY_RUNTIME,
    EFI_MEMORY_TESTED,
    EFI_MEMORY_UC,
    EFI_MEMORY_WB,
    EFI_MEMORY_XP,
    EfiGcdAllocateType,
    EfiMemoryType,
    EfiStatus,
)
from lazyaccept.spec.pi_hob import ResourceAttribute as RA
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.units import GiB, MiB

from .conftest import td_layout

S = EfiStatus
G = GcdType
GA = EfiGcdAllocateType


@pytest.mark.parametrize(
    ("rtype", "attrs", "expected"),
    [
        (ResourceType.SYSTEM_MEMORY, TESTED_MEMORY_ATTRIBUTES, G.EfiGcdMemoryTypeSystemMemory),
        (ResourceType.SYSTEM_MEMORY, TESTED_MEMORY_ATTRIBUTES | RA.MORE_RELIABLE, G.EfiGcdMemoryTypeMoreReliable),
        (ResourceType.SYSTEM_MEMORY, 0x3, G.EfiGcdMemoryTypeReserved),  # untested: promotable
        (ResourceType.SYSTEM_MEMORY, 0x1, G.EfiGcdMemoryTypeReserved),
        (ResourceType.SYSTEM_MEMORY, 0x0, G.EfiGcdMemoryTypeNonExistent),
        (ResourceType.SYSTEM_MEMORY, 0x7 | RA.PERSISTENT | RA.PERSISTABLE, G.EfiGcdMemoryTypePersistent),
        (ResourceType.MEMORY_MAPPED_IO, 0, G.EfiGcdMemoryTypeMemoryMappedIo),
        (ResourceType.FIRMWARE_DEVICE, 0, G.EfiGcdMemoryTypeMemoryMappedIo),
        (ResourceType.MEMORY_RESERVED, 0, G.EfiGcdMemoryTypeReserved),
        (ResourceType.MEMORY_UNACCEPTED, 0x7, G.EfiGcdMemoryTypeUnaccepted),
        (ResourceType.IO, 0, G.EfiGcdMemoryTypeNonExistent),
    ],
)
def test_resource_to_gcd_type(rtype: int, attrs: int, expected: GcdType) -> None:
    assert gcd_type_for_resource(rtype, attrs) == expected


def test_capabilities_conversion() -> None:
    # System memory keeps only the memory conversions; other types also record present/initialized/tested.
    assert resource_capabilities(G.EfiGcdMemoryTypeSystemMemory, 0x7 | RA.WRITE_BACK_CACHEABLE) == EFI_MEMORY_WB
    internal = EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED | EFI_MEMORY_TESTED
    assert resource_capabilities(G.EfiGcdMemoryTypeUnaccepted, 0x7) == internal


def _gcd(**kw: object) -> Gcd:
    gcd = Gcd(**kw)  # type: ignore[arg-type]
    PageAllocator(gcd, memory_type_information=())
    return gcd


def test_unaccepted_resources_never_reach_the_memory_map(core: DxeCore) -> None:
    unaccepted = core.gcd.ranges_of_type(G.EfiGcdMemoryTypeUnaccepted)
    assert unaccepted == [(128 * MiB, 1 * GiB), (4 * GiB, 5 * GiB)]
    for s, e in unaccepted:
        assert core.pages.map.total(s, e, lambda v: v is not None) == 0
        _, d = core.gcd.get_memory_space_descriptor(s)
        assert d is not None and d.image_handle is None
        assert d.capabilities == EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED | EFI_MEMORY_TESTED | EFI_MEMORY_RUNTIME
    _, d = core.gcd.get_memory_space_descriptor(0)
    assert d is not None and d.gcd_memory_type == G.EfiGcdMemoryTypeSystemMemory
    assert d.image_handle == DXE_CORE_IMAGE_HANDLE and d.length == 128 * MiB


def test_add_memory_space_statuses() -> None:
    gcd = _gcd()
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeNonExistent, 0, 0x1000, 0) == S.INVALID_PARAMETER
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeMaximum, 0, 0x1000, 0) == S.INVALID_PARAMETER
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeReserved, 0, 0, 0) == S.INVALID_PARAMETER
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeReserved, (1 << 48) - 0x1000, 0x2000, 0) == S.UNSUPPORTED
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeMemoryMappedIo, 0x1000, 0x1000, EFI_MEMORY_UC) == S.SUCCESS
    _, d = gcd.get_memory_space_descriptor(0x1000)
    assert d is not None and d.capabilities == EFI_MEMORY_UC | EFI_MEMORY_RUNTIME | EFI_MEMORY_PORT_IO
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeReserved, 0x1000, 0x1000, 0) == S.ACCESS_DENIED


def test_add_system_memory_feeds_the_memory_map() -> None:
    gcd = _gcd()
    assert gcd.add_memory_space(G.EfiGcdMemoryTypeSystemMemory, 0x100000, 0x100000, EFI_MEMORY_WB) == S.SUCCESS
    _, d = gcd.get_memory_space_descriptor(0x100000)
    assert d is not None and d.image_handle == DXE_CORE_IMAGE_HANDLE
    pages = gcd.memory_map
    assert isinstance(pages, PageAllocator)
    assert list(pages.runs()) == [(0x100000, 0x200000, pages.entry_at(0x100000))]
    entry = pages.entry_at(0x100000)
    assert entry is not None and entry.type == EfiMemoryType.EfiConventionalMemory and entry.attribute == EFI_MEMORY_WB
    # Owned by the DXE core: it cannot be removed under the memory map.
    assert gcd.remove_memory_space(0x100000, 0x1000) == S.ACCESS_DENIED


def test_remove_and_free_statuses() -> None:
    gcd = _gcd()
    assert gcd.remove_memory_space(0x1000, 0x1000) == S.NOT_FOUND  # non-existent
    assert gcd.remove_memory_space(0x1000, 0) == S.INVALID_PARAMETER
    gcd.add_memory_space(G.EfiGcdMemoryTypeUnaccepted, 0x10000, 0x10000, 0)
    assert gcd.free_memory_space(0x10000, 0x1000) == S.NOT_FOUND  # not allocated
    assert gcd.remove_memory_space(0x12000, 0x2000) == S.SUCCESS  # a hole in the middle splits the entry
    assert gcd.ranges_of_type(G.EfiGcdMemoryTypeUnaccepted) == [(0x10000, 0x12000), (0x14000, 0x20000)]


def test_allocate_memory_space_statuses() -> None:
    gcd = _gcd()
    gcd.add_memory_space(G.EfiGcdMemoryTypeMemoryMappedIo, 0xE000_0000, 0x1000_0000, EFI_MEMORY_UC)
    mmio = G.EfiGcdMemoryTypeMemoryMappedIo
    assert gcd.allocate_memory_space(GA.EfiGcdMaxAllocateType, mmio, 0, 0x1000, 0, 1)[0] == S.INVALID_PARAMETER
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, 7, 0, 0x1000, 0, 1)[0] == S.INVALID_PARAMETER
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 0, 0x1000, None, 1)[0] == S.INVALID_PARAMETER
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 0, 0x1000, 0xE000_0000, None)[0] == (
        S.INVALID_PARAMETER
    )
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 64, 0x1000, 0xE000_0000, 1)[0] == S.NOT_FOUND
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 0, 0, 0xE000_0000, 1)[0] == S.INVALID_PARAMETER
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 16, 0x1000, 0xE000_1000, 1)[0] == S.NOT_FOUND
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 0, 0x1000, 0xD000_0000, 1)[0] == S.NOT_FOUND
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 12, 0x1000, 0xE000_0000, 1) == (
        S.SUCCESS,
        0xE000_0000,
    )
    assert gcd.allocate_memory_space(GA.EfiGcdAllocateAddress, mmio, 12, 0x1000, 0xE000_0000, 1)[0] == S.NOT_FOUND
    top = gcd.allocate_memory_space(GA.EfiGcdAllocateAnySearchTopDown, mmio, 20, 0x1000, 0, 2)
    assert top == (S.SUCCESS, 0xEFF0_0000)
    bottom = gcd.allocate_memory_space(GA.EfiGcdAllocateAnySearchBottomUp, mmio, 20, 0x1000, 0, 2)
    assert bottom == (S.SUCCESS, 0xE010_0000)
    below = gcd.allocate_memory_space(GA.EfiGcdAllocateMaxAddressSearchTopDown, mmio, 12, 0x2000, 0xE800_0000, 2)
    assert below == (S.SUCCESS, 0xE7FF_E000)  # (max + 1 - length) & ~mask, max inclusive
    assert gcd.free_memory_space(0xE000_0000, 0x1000) == S.SUCCESS
    _, d = gcd.get_memory_space_descriptor(0xE000_0000)
    assert d is not None and d.image_handle is None


def test_set_memory_space_attributes() -> None:
    calls: list[tuple[int, int, int]] = []

    def cpu(base: int, length: int, attributes: int) -> int:
        calls.append((base, length, attributes))
        return S.SUCCESS

    gcd = _gcd(cpu_set_memory_attributes=cpu)
    gcd.add_memory_space(G.EfiGcdMemoryTypeMemoryMappedIo, 0x10000, 0x10000, EFI_MEMORY_UC | EFI_MEMORY_XP)
    assert gcd.set_memory_space_attributes(0x10000, 0, EFI_MEMORY_UC) == S.INVALID_PARAMETER
    assert gcd.set_memory_space_attributes(0x10000, 0x1000, EFI_MEMORY_WB) == S.UNSUPPORTED
    assert gcd.set_memory_space_attributes(0x10800, 0x1000, EFI_MEMORY_RUNTIME) == S.INVALID_PARAMETER
    assert gcd.set_memory_space_attributes(0x10000, 0x1000, EFI_MEMORY_UC | EFI_MEMORY_XP) == S.SUCCESS
    assert calls == [(0x10000, 0x1000, EFI_MEMORY_UC | EFI_MEMORY_XP)]
    # Only non-CPU bits: the entry keeps its cache and access attributes, the CPU is not called.
    assert gcd.set_memory_space_attributes(0x10000, 0x1000, EFI_MEMORY_RUNTIME) == S.SUCCESS
    _, d = gcd.get_memory_space_descriptor(0x10000)
    assert d is not None and d.attributes == EFI_MEMORY_RUNTIME | EFI_MEMORY_UC | EFI_MEMORY_XP
    assert len(calls) == 1
    no_cpu = _gcd(cpu_set_memory_attributes=None)
    no_cpu.add_memory_space(G.EfiGcdMemoryTypeMemoryMappedIo, 0x10000, 0x10000, EFI_MEMORY_UC)
    assert no_cpu.set_memory_space_attributes(0x10000, 0x1000, EFI_MEMORY_UC) == S.NOT_AVAILABLE_YET


def test_set_memory_space_capabilities_updates_memory_map() -> None:
    gcd = _gcd()
    gcd.add_memory_space(G.EfiGcdMemoryTypeSystemMemory, 0x100000, 0x100000, 0)
    assert gcd.set_memory_space_capabilities(0x100800, 0x1000, EFI_MEMORY_WB) == S.INVALID_PARAMETER
    assert gcd.set_memory_space_capabilities(0x100000, 0x100000, EFI_MEMORY_WB) == S.SUCCESS
    pages = gcd.memory_map
    assert isinstance(pages, PageAllocator)
    entry = pages.entry_at(0x100000)
    assert entry is not None and entry.attribute == EFI_MEMORY_WB
    gcd.set_memory_space_attributes(0x100000, 0x1000, EFI_MEMORY_WB)
    # Capabilities must keep the attributes in use.
    assert gcd.set_memory_space_capabilities(0x100000, 0x1000, EFI_MEMORY_UC) == S.UNSUPPORTED


def test_get_memory_space_descriptor_and_map(core: DxeCore) -> None:
    assert core.gcd.get_memory_space_descriptor(1 << 48)[0] == S.NOT_FOUND
    status, d = core.gcd.get_memory_space_descriptor(5 * GiB + 123)
    assert status == S.SUCCESS and d is not None
    assert (d.base_address, d.gcd_memory_type) == (5 * GiB, G.EfiGcdMemoryTypeNonExistent)
    status, descs = core.gcd.get_memory_space_map()
    assert status == S.SUCCESS
    assert [x.base_address for x in descs] == sorted(x.base_address for x in descs)
    assert descs[0].base_address == 0 and descs[-1].end == 1 << 48
    assert all(a.end == b.base_address for a, b in zip(descs, descs[1:], strict=False))


def test_initialize_places_allocation_hobs_and_bins() -> None:
    gcd = Gcd()
    pages = PageAllocator(gcd)
    hobs = [MemoryAllocation(0x800000, 0x6000, EfiMemoryType.EfiBootServicesData)]
    region = gcd.initialize(td_layout(1 * GiB, 0, 256 * MiB), hobs)
    assert region == (0x806000, 256 * MiB)
    entry = pages.entry_at(0x800000)
    assert entry is not None and entry.type == EfiMemoryType.EfiBootServicesData
    # OVMF's bins sit at the top of the first region, NVS highest; other types go below them.
    bins = {t: (b, e) for t, b, e in pages.bins()}
    assert bins[EfiMemoryType.EfiACPIMemoryNVS][1] == 256 * MiB
    assert pages.default_maximum_address == min(b for b, _ in bins.values()) - 1


def test_initialize_rejects_broken_hand_off() -> None:
    gcd = Gcd()
    PageAllocator(gcd)
    with pytest.raises(InputError, match="no tested system memory"):
        gcd.initialize([Resource(0, GiB, ResourceType.MEMORY_UNACCEPTED)])
    gcd = Gcd()
    PageAllocator(gcd)
    with pytest.raises(InputError, match="cannot be added to the GCD"):
        gcd.initialize([Resource(0, 256 * MiB), Resource(128 * MiB, 256 * MiB, ResourceType.MEMORY_UNACCEPTED)])


def test_largest_free_region() -> None:
    hobs = [MemoryAllocation(0x1000, 0x1000), MemoryAllocation(0x8000, 0x1000)]
    assert largest_free_region(0, 0x10000, hobs) == (0x9000, 0x10000)
    assert largest_free_region(0, 0x4000, []) == (0, 0x4000)
