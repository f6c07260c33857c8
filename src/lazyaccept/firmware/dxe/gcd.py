"""The GCD memory space map of the DXE core (edk2 MdeModulePkg/Core/Dxe/Gcd/Gcd.c), unaccepted memory included.

The map covers [0, 2^address_bits) as a RangeMap of GcdEntry values. edk2 merges two adjacent entries whenever
their type, capabilities, attributes and handles are equal (CoreCleanupGcdMapEntry after every operation); a
RangeMap keeps runs of equal values merged, which is the same map.

An EFI_RESOURCE_MEMORY_UNACCEPTED resource becomes an EfiGcdMemoryTypeUnaccepted entry that is never handed to
the memory map, so it can never be allocated (CoreInitializeGcdServices). Accepting memory is done by callers
(accept.py, exit.py) with RemoveMemorySpace + AddMemorySpace(SystemMemory), as edk2's AmdSevDxe does.

Not modelled: the I/O space map, firmware-volume HOBs, and the pool memory the DXE core spends on its own
EFI_GCD_MAP_ENTRY records (CoreAllocateGcdMapEntry).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.rangemap import RangeMap
from lazyaccept.spec.efi import (
    EFI_CACHE_ATTRIBUTE_MASK,
    EFI_GCD_MEMORY_SPACE_DESCRIPTOR,
    EFI_MEMORY_ACCESS_MASK,
    EFI_MEMORY_HOT_PLUGGABLE,
    EFI_MEMORY_INITIALIZED,
    EFI_MEMORY_MORE_RELIABLE,
    EFI_MEMORY_NV,
    EFI_MEMORY_PORT_IO,
    EFI_MEMORY_PRESENT,
    EFI_MEMORY_RO,
    EFI_MEMORY_RP,
    EFI_MEMORY_RUNTIME,
    EFI_MEMORY_SP,
    EFI_MEMORY_TESTED,
    EFI_MEMORY_UC,
    EFI_MEMORY_UCE,
    EFI_MEMORY_WB,
    EFI_MEMORY_WC,
    EFI_MEMORY_WP,
    EFI_MEMORY_WT,
    EFI_MEMORY_XP,
    EFI_PAGE_MASK,
    EFI_PAGE_SHIFT,
    EFI_PAGE_SIZE,
    EfiGcdAllocateType,
    EfiGcdMemoryType,
    EfiMemoryType,
    EfiStatus,
)
from lazyaccept.spec.pi_hob import ResourceAttribute as RA
from lazyaccept.spec.pi_hob import ResourceType

GcdType = EfiGcdMemoryType
S = EfiStatus

# Gcd.c MINIMUM_INITIAL_MEMORY_SIZE: the smallest first region the DXE core accepts.
MINIMUM_INITIAL_MEMORY_SIZE = 0x10000
# An opaque EFI_HANDLE for the DXE core image: GCD system memory handed to the memory map is allocated to it.
DXE_CORE_IMAGE_HANDLE = 0xD8E0_0001


# Gcd.c MEMORY_ATTRIBUTE_MASK and the three classes of system memory it distinguishes.
MEMORY_ATTRIBUTE_MASK = int(
    RA.PRESENT
    | RA.INITIALIZED
    | RA.TESTED
    | RA.READ_PROTECTED
    | RA.WRITE_PROTECTED
    | RA.EXECUTION_PROTECTED
    | RA.READ_ONLY_PROTECTED
    | RA.BIT_16_IO
    | RA.BIT_32_IO
    | RA.BIT_64_IO
    | RA.PERSISTENT
    | RA.SPECIAL_PURPOSE
)
TESTED_MEMORY_ATTRIBUTES = int(RA.PRESENT | RA.INITIALIZED | RA.TESTED)
INITIALIZED_MEMORY_ATTRIBUTES = int(RA.PRESENT | RA.INITIALIZED)
PRESENT_MEMORY_ATTRIBUTES = int(RA.PRESENT)

# Gcd.c mAttributeConversionTable: (resource attribute, capability, applies to system memory too).
_ATTRIBUTE_CONVERSION: tuple[tuple[int, int, bool], ...] = (
    (RA.UNCACHEABLE, EFI_MEMORY_UC, True),
    (RA.UNCACHED_EXPORTED, EFI_MEMORY_UCE, True),
    (RA.WRITE_COMBINEABLE, EFI_MEMORY_WC, True),
    (RA.WRITE_THROUGH_CACHEABLE, EFI_MEMORY_WT, True),
    (RA.WRITE_BACK_CACHEABLE, EFI_MEMORY_WB, True),
    (RA.READ_PROTECTABLE, EFI_MEMORY_RP, True),
    (RA.WRITE_PROTECTABLE, EFI_MEMORY_WP, True),
    (RA.EXECUTION_PROTECTABLE, EFI_MEMORY_XP, True),
    (RA.READ_ONLY_PROTECTABLE, EFI_MEMORY_RO, True),
    (RA.PRESENT, EFI_MEMORY_PRESENT, False),
    (RA.INITIALIZED, EFI_MEMORY_INITIALIZED, False),
    (RA.TESTED, EFI_MEMORY_TESTED, False),
    (RA.PERSISTABLE, EFI_MEMORY_NV, True),
    (RA.MORE_RELIABLE, EFI_MEMORY_MORE_RELIABLE, True),
    (RA.SPECIAL_PURPOSE, EFI_MEMORY_SP, True),
    (RA.HOT_PLUGGABLE, EFI_MEMORY_HOT_PLUGGABLE, True),
)


def resource_capabilities(gcd_type: int, attributes: int) -> int:
    """Gcd.c CoreConvertResourceDescriptorHobAttributesToCapabilities: system memory keeps only the
    'memory' conversions; every other type also records PRESENT/INITIALIZED/TESTED."""
    system = gcd_type in (GcdType.EfiGcdMemoryTypeSystemMemory, GcdType.EfiGcdMemoryTypeMoreReliable)
    caps = 0
    for res_attr, cap, memory in _ATTRIBUTE_CONVERSION:
        if (memory or not system) and attributes & res_attr:
            caps |= cap
    return caps


def gcd_type_for_resource(resource_type: int, attributes: int) -> GcdType:
    """The GCD memory type CoreInitializeGcdServices gives a resource descriptor HOB (NonExistent: none)."""
    t = GcdType.EfiGcdMemoryTypeNonExistent
    if resource_type == ResourceType.SYSTEM_MEMORY:
        masked = attributes & MEMORY_ATTRIBUTE_MASK
        if masked == TESTED_MEMORY_ATTRIBUTES:
            more = attributes & RA.MORE_RELIABLE
            t = GcdType.EfiGcdMemoryTypeMoreReliable if more else GcdType.EfiGcdMemoryTypeSystemMemory
        if masked in (INITIALIZED_MEMORY_ATTRIBUTES, PRESENT_MEMORY_ATTRIBUTES):
            t = GcdType.EfiGcdMemoryTypeReserved
        if attributes & RA.SPECIAL_PURPOSE:
            t = GcdType.EfiGcdMemoryTypeSystemMemory
        if attributes & RA.PERSISTENT:
            t = GcdType.EfiGcdMemoryTypePersistent
    elif resource_type in (ResourceType.MEMORY_MAPPED_IO, ResourceType.FIRMWARE_DEVICE):
        t = GcdType.EfiGcdMemoryTypeMemoryMappedIo
    elif resource_type in (ResourceType.MEMORY_MAPPED_IO_PORT, ResourceType.MEMORY_RESERVED):
        t = GcdType.EfiGcdMemoryTypeReserved
    elif resource_type == ResourceType.MEMORY_UNACCEPTED:
        t = GcdType.EfiGcdMemoryTypeUnaccepted
    return t


class ResourceLike(Protocol):
    """Anything shaped like a resource descriptor HOB (pi/hob.py's ResourceHob, or Resource below)."""

    @property
    def resource_type(self) -> int: ...
    @property
    def attributes(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def length(self) -> int: ...


@dataclass(frozen=True)
class Resource:
    """A plain resource descriptor: what SEC hands DXE for one range."""

    start: int
    length: int
    resource_type: int = ResourceType.SYSTEM_MEMORY
    attributes: int = TESTED_MEMORY_ATTRIBUTES

    @property
    def end(self) -> int:
        return self.start + self.length


class AllocationLike(Protocol):
    """A memory allocation HOB: memory SEC/PEI already used (stacks, the HOB list, the DXE core image...)."""

    @property
    def start(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def memory_type(self) -> int: ...


@dataclass(frozen=True)
class MemoryAllocation:
    start: int
    length: int
    memory_type: int = EfiMemoryType.EfiBootServicesData


@dataclass(frozen=True)
class GcdEntry:
    """The value of one run of the GCD memory space map (EFI_GCD_MAP_ENTRY without its address range)."""

    gcd_type: GcdType = GcdType.EfiGcdMemoryTypeNonExistent
    capabilities: int = 0
    attributes: int = 0
    image_handle: int | None = None
    device_handle: int | None = None


@dataclass(frozen=True)
class GcdMemorySpaceDescriptor:
    """EFI_GCD_MEMORY_SPACE_DESCRIPTOR as GetMemorySpaceDescriptor / GetMemorySpaceMap return it."""

    base_address: int
    length: int
    capabilities: int
    attributes: int
    gcd_memory_type: GcdType
    image_handle: int | None = None
    device_handle: int | None = None

    @property
    def end(self) -> int:
        return self.base_address + self.length

    def pack(self) -> bytes:
        return EFI_GCD_MEMORY_SPACE_DESCRIPTOR.pack(
            BaseAddress=self.base_address,
            Length=self.length,
            Capabilities=self.capabilities,
            Attributes=self.attributes,
            GcdMemoryType=self.gcd_memory_type,
            ImageHandle=self.image_handle or 0,
            DeviceHandle=self.device_handle or 0,
        )


class MemoryMapSink(Protocol):
    """What the GCD calls in the memory map (Page.c); the page allocator implements it."""

    def add_memory_descriptor(self, memory_type: int, start: int, number_of_pages: int, attribute: int) -> None: ...

    def update_memory_attributes(self, start: int, number_of_pages: int, attributes: int) -> None: ...


# The CPU architectural protocol's SetMemoryAttributes(base, length, attributes) -> EFI_STATUS.
CpuSetMemoryAttributes = Callable[[int, int, int], int]


def _cpu_arch_ok(base: int, length: int, attributes: int) -> int:
    return S.SUCCESS


class _Op(IntEnum):
    ADD = 1
    FREE = 2
    REMOVE = 3
    SET_ATTRIBUTES = 4
    SET_CAPABILITIES = 5


def _cpu_arch_attributes(attributes: int) -> int:
    """Gcd.c ConverToCpuArchAttributes: the access bits plus the first cache type set, by precedence."""
    out = attributes & EFI_MEMORY_ACCESS_MASK
    for bit in (EFI_MEMORY_UC, EFI_MEMORY_WC, EFI_MEMORY_WT, EFI_MEMORY_WB, EFI_MEMORY_UCE, EFI_MEMORY_WP):
        if attributes & bit:
            return out | bit
    return out


_SYSTEM_TYPES = (GcdType.EfiGcdMemoryTypeSystemMemory, GcdType.EfiGcdMemoryTypeMoreReliable)
_RAM_TYPES = (*_SYSTEM_TYPES, GcdType.EfiGcdMemoryTypeUnaccepted)


class Gcd:
    """The GCD memory space map and its DXE services, with edk2's statuses."""

    def __init__(
        self, address_bits: int = 48, *, cpu_set_memory_attributes: CpuSetMemoryAttributes | None = _cpu_arch_ok
    ):
        if not 32 <= address_bits <= 64:
            raise ConfigError(f"GCD address width must be 32..64 bits, got {address_bits}")
        self.address_bits = address_bits
        self.limit = 1 << address_bits
        self.map: RangeMap[GcdEntry] = RangeMap(GcdEntry(), limit=self.limit)
        # None models a DXE phase before CpuDxe installed the CPU architectural protocol.
        self.cpu_set_memory_attributes = cpu_set_memory_attributes
        self.memory_map: MemoryMapSink | None = None
        self.version = 0  # bumps on every change; lets callers cache derived views

    # ----------------------------------------------------------------- queries

    def descriptors(self, start: int = 0, end: int | None = None) -> Iterator[GcdMemorySpaceDescriptor]:
        """Entries intersecting [start, end), whole (not clipped)."""
        for s, _e, v in self.map.runs(start, end):
            s0, e0, _ = self.map.run_at(s)
            yield _descriptor(s0, e0, v)

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, GcdEntry]]:
        """Entries intersecting [start, end), clipped to it."""
        return self.map.runs(start, end)

    def ranges_of_type(self, gcd_type: GcdType, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        return [(s, e) for s, e, v in self.map.runs(start, end) if v.gcd_type == gcd_type]

    def bytes_of_type(self, gcd_type: GcdType) -> int:
        return self.map.total(0, self.limit, lambda v: v.gcd_type == gcd_type)

    def is_ram(self, start: int, end: int) -> bool:
        """Every byte of [start, end) is system, more-reliable or unaccepted memory."""
        return 0 <= start < end <= self.limit and self.map.all_equal(start, end, lambda v: v.gcd_type in _RAM_TYPES)

    # ----------------------------------------------------------------- DXE services

    def add_memory_space(self, gcd_type: int, base: int, length: int, capabilities: int) -> EfiStatus:
        """Gcd.c CoreAddMemorySpace: system memory is also allocated to the DXE core and added to the memory
        map as EfiConventionalMemory with the given capabilities as its attribute."""
        status = self.internal_add_memory_space(gcd_type, base, length, capabilities)
        if status != S.SUCCESS or gcd_type not in _SYSTEM_TYPES:
            return status
        page_base = (base + EFI_PAGE_MASK) & ~EFI_PAGE_MASK
        page_length = (base + length - page_base) & ~EFI_PAGE_MASK
        status, _ = self.allocate_memory_space(
            EfiGcdAllocateType.EfiGcdAllocateAddress,
            gcd_type,
            EFI_PAGE_SHIFT,
            page_length,
            page_base,
            DXE_CORE_IMAGE_HANDLE,
        )
        if status == S.SUCCESS:
            self._sink_add(page_base, page_length >> EFI_PAGE_SHIFT, capabilities)
            return status
        # edk2 falls back to claiming page by page; a per-page loop, but only over a range that just failed.
        for page in range(page_base, page_base + page_length, EFI_PAGE_SIZE):
            status, _ = self.allocate_memory_space(
                EfiGcdAllocateType.EfiGcdAllocateAddress,
                gcd_type,
                EFI_PAGE_SHIFT,
                EFI_PAGE_SIZE,
                page,
                DXE_CORE_IMAGE_HANDLE,
            )
            if status == S.SUCCESS:
                self._sink_add(page, 1, capabilities)
        return status

    def internal_add_memory_space(self, gcd_type: int, base: int, length: int, capabilities: int) -> EfiStatus:
        """Gcd.c CoreInternalAddMemorySpace: add to the GCD only."""
        if gcd_type <= GcdType.EfiGcdMemoryTypeNonExistent or gcd_type >= GcdType.EfiGcdMemoryTypeMaximum:
            return S.INVALID_PARAMETER
        return self._convert_space(_Op.ADD, base, length, gcd_type=GcdType(gcd_type), capabilities=capabilities)

    def remove_memory_space(self, base: int, length: int) -> EfiStatus:
        return self._convert_space(_Op.REMOVE, base, length)

    def free_memory_space(self, base: int, length: int) -> EfiStatus:
        return self._convert_space(_Op.FREE, base, length)

    def set_memory_space_attributes(self, base: int, length: int, attributes: int) -> EfiStatus:
        return self._convert_space(_Op.SET_ATTRIBUTES, base, length, attributes=attributes)

    def set_memory_space_capabilities(self, base: int, length: int, capabilities: int) -> EfiStatus:
        return self._convert_space(_Op.SET_CAPABILITIES, base, length, capabilities=capabilities)

    def get_memory_space_descriptor(self, base: int) -> tuple[EfiStatus, GcdMemorySpaceDescriptor | None]:
        """Gcd.c CoreGetMemorySpaceDescriptor: the entry containing base, or EFI_NOT_FOUND beyond the map."""
        if not 0 <= base < self.limit:
            return S.NOT_FOUND, None
        s, e, v = self.map.run_at(base)
        return S.SUCCESS, _descriptor(s, e, v)

    def get_memory_space_map(self) -> tuple[EfiStatus, list[GcdMemorySpaceDescriptor]]:
        """Gcd.c CoreGetMemorySpaceMap without its AllocatePool of the returned array (the boot-service
        facade in exit.py does that, so that the map key effect is kept)."""
        return S.SUCCESS, [_descriptor(s, e, v) for s, e, v in self.map.runs()]

    def allocate_memory_space(
        self,
        allocate_type: int,
        gcd_type: int,
        alignment: int,
        length: int,
        base_address: int | None,
        image_handle: int | None,
        device_handle: int | None = None,
    ) -> tuple[EfiStatus, int]:
        """Gcd.c CoreAllocateSpace for memory: returns (status, base). base_address None is a NULL pointer."""
        if not 0 <= allocate_type < EfiGcdAllocateType.EfiGcdMaxAllocateType:
            return S.INVALID_PARAMETER, 0
        if not 0 <= gcd_type < GcdType.EfiGcdMemoryTypeMaximum:
            return S.INVALID_PARAMETER, 0
        if base_address is None or not image_handle:
            return S.INVALID_PARAMETER, 0
        if alignment >= 64:
            return S.NOT_FOUND, 0
        if length == 0:
            return S.INVALID_PARAMETER, 0
        mask = (1 << alignment) - 1
        t = GcdType(gcd_type)

        def usable(v: GcdEntry) -> bool:  # CoreAllocateSpaceCheckEntry
            return v.image_handle is None and v.gcd_type == t

        def covered(base: int) -> bool:
            end = base + length
            return 0 <= base and end <= self.limit and self.map.all_equal(base, end, usable)

        base = base_address
        if allocate_type == EfiGcdAllocateType.EfiGcdAllocateAddress:
            if base & mask or not covered(base):
                return S.NOT_FOUND, 0
        else:
            found = False
            top_down = allocate_type in (
                EfiGcdAllocateType.EfiGcdAllocateAnySearchTopDown,
                EfiGcdAllocateType.EfiGcdAllocateMaxAddressSearchTopDown,
            )
            has_max = allocate_type in (
                EfiGcdAllocateType.EfiGcdAllocateMaxAddressSearchBottomUp,
                EfiGcdAllocateType.EfiGcdAllocateMaxAddressSearchTopDown,
            )
            max_address = base_address if has_max else self.limit - 1
            runs = list(self.map.runs())
            if top_down:
                runs.reverse()
            for s, e, v in runs:
                if not usable(v):
                    continue
                if top_down:
                    if s + length > max_address:
                        continue
                    if length > e:
                        return S.NOT_FOUND, 0
                    base = (min(e - 1, max_address) + 1 - length) & ~mask
                else:
                    base = (s + mask) & ~mask
                    if base + length - 1 > max_address:
                        return S.NOT_FOUND, 0
                if covered(base):
                    found = True
                    break
            if not found:
                return S.NOT_FOUND, 0
        self.map.update(
            base, base + length, lambda v: replace(v, image_handle=image_handle, device_handle=device_handle)
        )
        self.version += 1
        return S.SUCCESS, base

    # ----------------------------------------------------------------- building from SEC's hand-off

    def add_resources(self, resources: Iterable[ResourceLike]) -> None:
        """The first loop of Gcd.c CoreInitializeGcdServices: every memory resource descriptor into the GCD
        (I/O resources are not modelled). edk2 ignores a resource the GCD refuses (overlap, beyond the address
        width); lazyaccept reports it, since it means SEC handed over a broken HOB list. Empty ones are skipped."""
        for r in resources:
            t = gcd_type_for_resource(r.resource_type, r.attributes)
            if t == GcdType.EfiGcdMemoryTypeNonExistent or r.length == 0:
                continue
            status = self.internal_add_memory_space(t, r.start, r.length, resource_capabilities(t, r.attributes))
            if status != S.SUCCESS:
                raise InputError(
                    f"resource [{r.start:#x}, {r.start + r.length:#x}) of type {r.resource_type} cannot be added to "
                    f"the GCD: {status} (overlapping another resource or beyond the {self.address_bits}-bit address "
                    "space)",
                    field="EFI_HOB_RESOURCE_DESCRIPTOR",
                )

    def initialize(
        self,
        resources: Iterable[ResourceLike],
        allocations: Iterable[AllocationLike] = (),
        initial_region: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """Gcd.c CoreInitializeMemoryServices + CoreInitializeGcdServices: the first memory region for the DXE
        core (the memory-type bins land at its top), every resource into the GCD, the memory allocation HOBs
        into the memory map, then all remaining tested system memory as EfiConventionalMemory.

        initial_region defaults to the largest part, free of allocation HOBs, of the largest tested system
        memory resource below 4 GiB: where TDX's Peiless OVMF puts the PHIT free memory
        (PeilessStartupLib/Hob.c ConstructFwHobList). lazyaccept does not model the HOB list's own placement.
        Returns the initial region [start, end)."""
        if self.memory_map is None:
            raise RuntimeError("the GCD needs its memory map (PageAllocator) before initialization")
        resources = list(resources)
        allocations = list(allocations)
        tested = [
            r
            for r in resources
            if r.resource_type == ResourceType.SYSTEM_MEMORY
            and gcd_type_for_resource(r.resource_type, r.attributes) in _SYSTEM_TYPES
        ]
        if initial_region is None:
            low = [r for r in tested if r.start + r.length <= 1 << 32]
            pool = low or tested
            if not pool:
                raise InputError(
                    "no tested system memory in the resource list: the DXE core cannot start",
                    field="EFI_HOB_RESOURCE_DESCRIPTOR",
                )
            phit = max(pool, key=lambda r: (r.length, -r.start))
            s, e = page_align_range(*largest_free_region(phit.start, phit.start + phit.length, allocations))
            if e - s < MINIMUM_INITIAL_MEMORY_SIZE:
                raise InputError(f"the largest free system memory [{s:#x}, {e:#x}) is too small to start DXE")
            initial_region = (s, e)
            attributes = phit.attributes
        else:
            attributes = next(
                (r.attributes for r in tested if r.start <= initial_region[0] < r.start + r.length),
                TESTED_MEMORY_ATTRIBUTES,
            )
        start, end = page_align_range(*initial_region)  # PageAlignAddress / PageAlignLength, as edk2
        initial_region = (start, end)
        t = gcd_type_for_resource(ResourceType.SYSTEM_MEMORY, attributes)
        self.memory_map.add_memory_descriptor(
            EfiMemoryType.EfiConventionalMemory,
            start,
            (end - start) >> EFI_PAGE_SHIFT,
            resource_capabilities(t, attributes),
        )
        self.add_resources(resources)
        status, desc = self.get_memory_space_descriptor(start)
        if desc is None or desc.gcd_memory_type not in _SYSTEM_TYPES:
            raise InputError(f"the DXE initial region [{start:#x}, {end:#x}) is not tested system memory")
        self.allocate_memory_space(
            EfiGcdAllocateType.EfiGcdAllocateAddress, desc.gcd_memory_type, 0, end - start, start, DXE_CORE_IMAGE_HANDLE
        )
        for a in allocations:
            status, desc = self.get_memory_space_descriptor(a.start)
            if desc is None:
                continue
            status, _ = self.allocate_memory_space(
                EfiGcdAllocateType.EfiGcdAllocateAddress,
                desc.gcd_memory_type,
                0,
                a.length,
                a.start,
                DXE_CORE_IMAGE_HANDLE,
            )
            if status == S.SUCCESS and desc.gcd_memory_type in _SYSTEM_TYPES:
                self.memory_map.add_memory_descriptor(
                    a.memory_type, a.start, a.length >> EFI_PAGE_SHIFT, desc.capabilities & ~EFI_MEMORY_RUNTIME
                )
        for d in list(self.descriptors()):
            if d.gcd_memory_type not in _SYSTEM_TYPES or d.image_handle is not None:
                continue
            s, e = page_align_range(d.base_address, d.end)
            if s == e:
                continue
            self.memory_map.add_memory_descriptor(
                EfiMemoryType.EfiConventionalMemory, s, (e - s) >> EFI_PAGE_SHIFT, d.capabilities & ~EFI_MEMORY_RUNTIME
            )
            self.allocate_memory_space(
                EfiGcdAllocateType.EfiGcdAllocateAddress, d.gcd_memory_type, 0, e - s, s, DXE_CORE_IMAGE_HANDLE
            )
        return initial_region

    # ----------------------------------------------------------------- internals

    def _sink_add(self, start: int, pages: int, attribute: int) -> None:
        if self.memory_map is not None and pages:
            self.memory_map.add_memory_descriptor(EfiMemoryType.EfiConventionalMemory, start, pages, attribute)

    def _convert_space(
        self,
        op: _Op,
        base: int,
        length: int,
        *,
        gcd_type: GcdType | None = None,
        capabilities: int = 0,
        attributes: int = 0,
    ) -> EfiStatus:
        """Gcd.c CoreConvertSpace for memory operations."""
        if length == 0:
            return S.INVALID_PARAMETER
        end = base + length
        if base < 0 or end > self.limit:
            return S.UNSUPPORTED  # CoreSearchGcdMapEntry found no entry covering the range
        runs = list(self.map.runs(base, end))
        for _, _, v in runs:
            status = _check_entry(op, v, base, length, capabilities, attributes)
            if status != S.SUCCESS:
                return status
        cpu_attributes = 0
        if op == _Op.SET_ATTRIBUTES:
            cpu_attributes = _cpu_arch_attributes(attributes)
            if cpu_attributes:
                if self.cpu_set_memory_attributes is None:
                    return S.NOT_AVAILABLE_YET
                status = EfiStatus(self.cpu_set_memory_attributes(base, length, cpu_attributes))
                if status != S.SUCCESS:
                    return status
        if op == _Op.ADD:
            assert gcd_type is not None
            extra = EFI_MEMORY_RUNTIME | (
                EFI_MEMORY_PORT_IO if gcd_type == GcdType.EfiGcdMemoryTypeMemoryMappedIo else 0
            )
            self.map.update(base, end, lambda v: replace(v, gcd_type=gcd_type, capabilities=capabilities | extra))
        elif op == _Op.FREE:
            self.map.update(base, end, lambda v: replace(v, image_handle=None, device_handle=None))
        elif op == _Op.REMOVE:
            self.map.update(
                base, end, lambda v: replace(v, gcd_type=GcdType.EfiGcdMemoryTypeNonExistent, capabilities=0)
            )
        elif op == _Op.SET_ATTRIBUTES:

            def set_attributes(v: GcdEntry) -> GcdEntry:
                new = attributes
                if cpu_attributes == 0 and attributes != 0:
                    # Only non-CPU bits (e.g. RUNTIME) were given: keep the entry's cache and access bits.
                    new |= v.attributes & (EFI_CACHE_ATTRIBUTE_MASK | EFI_MEMORY_ACCESS_MASK)
                return replace(v, attributes=new)

            self.map.update(base, end, set_attributes)
        else:
            self.map.update(base, end, lambda v: replace(v, capabilities=capabilities))
            if self.memory_map is not None:
                # edk2 converts the whole [base, length) once per system-memory entry and stops at the first
                # gap; lazyaccept converts each system-memory run once, clipped to it (same result without gaps).
                for s, e, v in runs:
                    if v.gcd_type in _SYSTEM_TYPES:
                        self.memory_map.update_memory_attributes(
                            s, (e - s) >> EFI_PAGE_SHIFT, capabilities & ~EFI_MEMORY_RUNTIME
                        )
        self.version += 1
        return S.SUCCESS


def _check_entry(op: _Op, v: GcdEntry, base: int, length: int, capabilities: int, attributes: int) -> EfiStatus:
    """The per-entry verification loop of CoreConvertSpace."""
    if op == _Op.ADD:
        if v.gcd_type != GcdType.EfiGcdMemoryTypeNonExistent or v.image_handle is not None:
            return S.ACCESS_DENIED
    elif op == _Op.FREE:
        if v.image_handle is None:
            return S.NOT_FOUND
    elif op == _Op.REMOVE:
        if v.gcd_type == GcdType.EfiGcdMemoryTypeNonExistent:
            return S.NOT_FOUND
        if v.image_handle is not None:
            return S.ACCESS_DENIED
    elif op == _Op.SET_ATTRIBUTES:
        if attributes & EFI_MEMORY_RUNTIME and (base & EFI_PAGE_MASK or length & EFI_PAGE_MASK):
            return S.INVALID_PARAMETER
        if v.capabilities & attributes != attributes:
            return S.UNSUPPORTED
    elif op == _Op.SET_CAPABILITIES:
        if base & EFI_PAGE_MASK or length & EFI_PAGE_MASK:
            return S.INVALID_PARAMETER
        if capabilities & v.attributes != v.attributes:
            return S.UNSUPPORTED
    return S.SUCCESS


def _descriptor(start: int, end: int, v: GcdEntry) -> GcdMemorySpaceDescriptor:
    return GcdMemorySpaceDescriptor(
        start, end - start, v.capabilities, v.attributes, v.gcd_type, v.image_handle, v.device_handle
    )


def largest_free_region(start: int, end: int, allocations: Iterable[AllocationLike]) -> tuple[int, int]:
    """Gcd.c FindLargestFreeRegion: the largest part of [start, end) no allocation HOB covers (ties: the upper)."""
    cuts = sorted(
        (max(a.start, start), min(a.start + a.length, end))
        for a in allocations
        if a.start < end and a.start + a.length > start
    )
    best = (start, start)
    pos = start
    for s, e in [*cuts, (end, end)]:
        if s > pos and s - pos >= best[1] - best[0]:
            best = (pos, s)
        pos = max(pos, e)
    return best


def page_align_range(start: int, end: int) -> tuple[int, int]:
    """Gcd.c PageAlignAddress / PageAlignLength: round the start up and the end down to pages."""
    s = (start + EFI_PAGE_MASK) & ~EFI_PAGE_MASK
    e = end & ~EFI_PAGE_MASK
    return s, max(s, e)
