"""The DXE core page allocator and UEFI memory map (edk2 MdeModulePkg/Core/Dxe/Mem/Page.c and MemoryBin.c).

The memory map (edk2's gMemoryMap) is a RangeMap of MapEntry(type, attribute) with None where no system memory
is: adjacent entries of equal type and attribute are always merged, as CoreAddRange merges them. A FreeIndex
keeps the EfiConventionalMemory runs in address order with per-block maximum lengths, so the top-down search
of CoreFindFreePagesI costs O(sqrt(runs)) instead of a walk of the whole map: a 4 TiB TD with 100,000
allocations never loops over pages or over the map.

Faithful to edk2: parameter checks and statuses of CoreInternalAllocatePages / CoreInternalFreePages /
CoreConvertPagesEx (AllocateAddress over memory that is not free, unaccepted memory included, is EFI_NOT_FOUND),
the top-down search with the memory-type bins of MemoryBin.c (OVMF's Peiless table by default), the default
bin and the final anywhere-below-MaxAddress pass, PromoteMemoryResource, the map key bumped by every
CoreAddRange, CoreGetMemoryMap's size probe (GCD reserved, persistent, runtime MMIO and unaccepted entries, plus
two descriptors of slack per special bin from d419725b23) and its typing of free memory in the bins (whole entries
before d419725b23, split at the bin edges from it: Edk2Profile.splits_free_bins), its descriptor size 48 and
version 1.

Not modelled: heap guard, memory profile, memory protection policy, the memory-attribute-protocol check of
CoreFreePages, the pages the DXE core spends on its own MEMORY_MAP records (AllocateMemoryMapEntry), the
S4 bin-size feedback of UpdateMemoryStatistics, and the memory-map-change event group.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from lazyaccept.firmware.dxe.gcd import DXE_CORE_IMAGE_HANDLE, Gcd, GcdType
from lazyaccept.firmware.profiles import DEFAULT_PROFILE
from lazyaccept.rangemap import RangeMap
from lazyaccept.spec.efi import (
    EFI_CACHE_ATTRIBUTE_MASK,
    EFI_MEMORY_ACCESS_MASK,
    EFI_MEMORY_ATTRIBUTE_MASK,
    EFI_MEMORY_DESCRIPTOR_SIZE,
    EFI_MEMORY_DESCRIPTOR_VERSION,
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
    MAX_ALLOC_ADDRESS,
    MAX_UINT32,
    MAX_UINT64,
    MEMORY_TYPE_OEM_RESERVED_MIN,
    RUNTIME_PAGE_ALLOCATION_GRANULARITY,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
    MemoryDescriptor,
    pack_memory_map,
)

S = EfiStatus
M = EfiMemoryType
MAX_TYPE = int(M.EfiMaxMemoryType)
MAP_LIMIT = 1 << 64
PAGE = 1 << EFI_PAGE_SHIFT


@dataclass(frozen=True)
class MapEntry:
    """The value of one run of the memory map (edk2 MEMORY_MAP without its range)."""

    type: int
    attribute: int = 0


@dataclass
class MemoryTypeStatistics:
    """Page.c / MemoryBin.h EFI_MEMORY_TYPE_STATISTICS: one memory type's bin."""

    base_address: int = 0
    maximum_address: int = MAX_ALLOC_ADDRESS
    current_number_of_pages: int = 0
    number_of_pages: int = 0
    information_index: int = MAX_TYPE
    special: bool = False
    runtime: bool = False


# Page.c mMemoryTypeStatistics initialiser: which types are "special" (kept in their bin in the memory map
# for S4 stability) and which are runtime.
_SPECIAL_TYPES = frozenset(
    {
        M.EfiReservedMemoryType,
        M.EfiRuntimeServicesCode,
        M.EfiRuntimeServicesData,
        M.EfiACPIReclaimMemory,
        M.EfiACPIMemoryNVS,
        M.EfiPalCode,
        M.EfiUnacceptedMemoryType,
    }
)
_RUNTIME_TYPES = frozenset({M.EfiRuntimeServicesCode, M.EfiRuntimeServicesData, M.EfiPalCode})
_RUNTIME_GRANULARITY_TYPES = frozenset(
    {M.EfiReservedMemoryType, M.EfiACPIMemoryNVS, M.EfiRuntimeServicesCode, M.EfiRuntimeServicesData}
)

_UNACCEPTED_ATTRIBUTE_CAPS = (
    EFI_MEMORY_RP
    | EFI_MEMORY_WP
    | EFI_MEMORY_XP
    | EFI_MEMORY_RO
    | EFI_MEMORY_UC
    | EFI_MEMORY_UCE
    | EFI_MEMORY_WC
    | EFI_MEMORY_WT
    | EFI_MEMORY_WB
)


def invalid_allocation_type(memory_type: int) -> bool:
    """The memory types AllocatePages and AllocatePool reject with EFI_INVALID_PARAMETER (Page.c, Pool.c)."""
    return (
        MAX_TYPE <= memory_type < MEMORY_TYPE_OEM_RESERVED_MIN
        or memory_type in (M.EfiConventionalMemory, M.EfiPersistentMemory, M.EfiUnacceptedMemoryType)
        or not 0 <= memory_type <= MAX_UINT32
    )


@dataclass(frozen=True)
class AllocationRequest:
    """A failed allocation, handed to the on-failure hook (option 1 lives there, in accept.py)."""

    kind: str  # "pages" or "pool"
    allocate_type: int
    memory_type: int
    pages: int
    address: int  # the max address for AllocateMaxAddress, the address for AllocateAddress, else MAX
    status: EfiStatus


# Returns True when it made room (accepted memory): the allocation is then retried once.
AllocationFailureHook = Callable[[AllocationRequest], bool]


@dataclass(frozen=True)
class MemoryMapResult:
    """The outputs of GetMemoryMap. memory_map_size is the required size on EFI_BUFFER_TOO_SMALL."""

    status: EfiStatus
    memory_map_size: int
    map_key: int
    descriptor_size: int
    descriptor_version: int
    descriptors: tuple[MemoryDescriptor, ...] = ()
    # With the pre-f80a406aa9 probe: bytes written past the end of the caller's buffer.
    overflow_bytes: int = 0

    def pack(self) -> bytes:
        return pack_memory_map(self.descriptors, self.descriptor_size)


class FreeIndex:
    """Free runs (start, length) sorted by start, in blocks that know their largest run.

    find_top answers CoreFindFreePagesI's question (the highest range of `size` bytes inside one free run,
    ending at or below max_incl, starting at or above min_addr) in O(block + blocks)."""

    __slots__ = ("_starts", "_lens", "_maxes", "_firsts", "block")

    def __init__(self, block: int = 64) -> None:
        self.block = block  # runs per block before a split at 2 x block
        self._starts: list[list[int]] = []
        self._lens: list[list[int]] = []
        self._maxes: list[int] = []
        self._firsts: list[int] = []

    def __len__(self) -> int:
        return sum(len(b) for b in self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for st, ln in zip(self._starts, self._lens, strict=True):
            yield from zip(st, ln, strict=True)

    def add(self, start: int, length: int) -> None:
        if not self._starts:
            self._starts.append([start])
            self._lens.append([length])
            self._maxes.append(length)
            self._firsts.append(start)
            return
        bi = max(0, bisect_right(self._firsts, start) - 1)
        st, ln = self._starts[bi], self._lens[bi]
        j = bisect_left(st, start)
        st.insert(j, start)
        ln.insert(j, length)
        self._firsts[bi] = st[0]
        if length > self._maxes[bi]:
            self._maxes[bi] = length
        if len(st) > 2 * self.block:
            half = len(st) // 2
            st2, ln2 = st[half:], ln[half:]
            del st[half:], ln[half:]
            self._maxes[bi] = max(ln)
            self._starts.insert(bi + 1, st2)
            self._lens.insert(bi + 1, ln2)
            self._maxes.insert(bi + 1, max(ln2))
            self._firsts.insert(bi + 1, st2[0])

    def remove(self, start: int) -> None:
        bi = bisect_right(self._firsts, start) - 1
        st, ln = self._starts[bi], self._lens[bi]
        j = bisect_left(st, start)
        if j == len(st) or st[j] != start:
            raise KeyError(f"no free run starts at {start:#x}")
        st.pop(j)
        length = ln.pop(j)
        if not st:
            del self._starts[bi], self._lens[bi], self._maxes[bi], self._firsts[bi]
            return
        self._firsts[bi] = st[0]
        if length == self._maxes[bi]:
            self._maxes[bi] = max(ln)

    def find_top(self, max_incl: int, min_addr: int, size: int) -> int | None:
        bi = bisect_right(self._firsts, max_incl) - 1
        if bi < 0:
            return None
        st, ln = self._starts[bi], self._lens[bi]
        j = bisect_right(st, max_incl) - 1
        # Only this run can straddle max_incl; clip it.
        end_incl = min(st[j] + ln[j] - 1, max_incl)
        base = end_incl - size + 1
        if base < min_addr:
            return None  # every lower run ends lower
        if base >= st[j]:
            return base
        hi = j  # runs st[:hi] of block b end below max_incl: the highest one long enough wins
        for b in range(bi, -1, -1):
            st, ln = self._starts[b], self._lens[b]
            if b < bi:
                hi = len(st)
            if hi == 0:
                continue
            if st[hi - 1] + ln[hi - 1] - size < min_addr:
                return None
            longest = self._maxes[b] if hi == len(ln) else max(ln[:hi])
            if longest < size:
                continue
            for k in range(hi - 1, -1, -1):
                if ln[k] >= size:
                    base = st[k] + ln[k] - size
                    return base if base >= min_addr else None
        return None


def is_free_entry(v: MapEntry | None) -> bool:
    # CoreFindFreePagesI: only EfiConventionalMemory, and never special-purpose memory.
    return v is not None and v.type == M.EfiConventionalMemory and not v.attribute & EFI_MEMORY_SP


class PageAllocator:
    """AllocatePages / FreePages / GetMemoryMap over the memory map, bound to a GCD."""

    def __init__(
        self,
        gcd: Gcd,
        *,
        memory_type_information: Iterable[tuple[int, int]] = DEFAULT_PROFILE.memory_type_information,
        probe_counts_unaccepted: bool = DEFAULT_PROFILE.probe_counts_unaccepted,
        splits_free_bins: bool = DEFAULT_PROFILE.splits_free_bins,
    ):
        self.gcd = gcd
        gcd.memory_map = self
        self.map: RangeMap[MapEntry | None] = RangeMap(None, limit=MAP_LIMIT)
        self.free = FreeIndex()
        self.map_key = 0
        self.memory_type_information = tuple((int(t), int(n)) for t, n in memory_type_information)
        self.stats = [
            MemoryTypeStatistics(special=t in _SPECIAL_TYPES, runtime=t in _RUNTIME_TYPES) for t in range(MAX_TYPE + 1)
        ]
        self.default_maximum_address = MAX_ALLOC_ADDRESS
        self.default_base_address = MAX_ALLOC_ADDRESS
        self.bins_initialized = False
        # False reproduces edk2 before commit f80a406aa9: the size probe forgot GCD unaccepted entries.
        self.probe_counts_unaccepted = probe_counts_unaccepted
        self.splits_free_bins = splits_free_bins  # see Edk2Profile.splits_free_bins
        self.on_allocation_failure: AllocationFailureHook | None = None
        self.promotions = 0

    # ----------------------------------------------------------------- boot services

    def allocate_pages(
        self, allocate_type: int, memory_type: int, pages: int, memory: int | None = 0
    ) -> tuple[EfiStatus, int]:
        """Page.c CoreAllocatePages. memory is *Memory on input (None: a NULL pointer); returns (status, address).

        With an on-failure hook installed (option 1), a failed allocation asks it to accept memory and is
        retried once when it did. The hook sees EFI_NOT_FOUND too: AllocateAddress over unaccepted memory
        fails with it (CoreConvertPagesEx), which the dropped AcceptMemoryResource patch, triggered only by
        EFI_OUT_OF_RESOURCES, never handled."""
        status, addr = self._internal_allocate_pages(allocate_type, memory_type, pages, memory)
        if status in (S.OUT_OF_RESOURCES, S.NOT_FOUND) and self.on_allocation_failure is not None:
            address = MAX_ALLOC_ADDRESS if allocate_type == EfiAllocateType.AllocateAnyPages else (memory or 0)
            req = AllocationRequest("pages", allocate_type, memory_type, pages, address, status)
            if self.on_allocation_failure(req):
                status, addr = self._internal_allocate_pages(allocate_type, memory_type, pages, memory)
        return status, addr

    def free_pages(self, memory: int, pages: int) -> EfiStatus:
        """Page.c CoreInternalFreePages: EFI_NOT_FOUND when no map entry holds memory (unaccepted memory, a
        gap, MMIO), EFI_INVALID_PARAMETER when misaligned, EFI_NOT_FOUND again when any page is already free."""
        memory &= MAX_UINT64
        pages &= MAX_UINT64
        v = self.map.get(memory)
        if v is None:
            return S.NOT_FOUND
        alignment = RUNTIME_PAGE_ALLOCATION_GRANULARITY if v.type in _RUNTIME_GRANULARITY_TYPES else PAGE
        if memory & (alignment - 1):
            return S.INVALID_PARAMETER
        return self._convert_pages(memory, pages, new_type=M.EfiConventionalMemory)

    def get_memory_map(self, memory_map_size: int | None, *, buffer: bool = True) -> MemoryMapResult:
        """Page.c CoreGetMemoryMap. memory_map_size None is a NULL MemoryMapSize; buffer False a NULL MemoryMap."""
        size = EFI_MEMORY_DESCRIPTOR_SIZE
        if memory_map_size is None:
            return MemoryMapResult(S.INVALID_PARAMETER, 0, self.map_key, 0, 0)
        gcd_entries = 0
        counted = {GcdType.EfiGcdMemoryTypePersistent, GcdType.EfiGcdMemoryTypeReserved}
        if self.probe_counts_unaccepted:
            counted.add(GcdType.EfiGcdMemoryTypeUnaccepted)
        for _, _, g in self.gcd.runs():
            if g.gcd_type in counted or (
                g.gcd_type == GcdType.EfiGcdMemoryTypeMemoryMappedIo and g.attributes & EFI_MEMORY_RUNTIME
            ):
                gcd_entries += 1
        map_entries = sum(1 for _, _, v in self.map.runs() if v is not None)
        needed = size * (gcd_entries + map_entries)
        if self.splits_free_bins:  # d419725b23: room for a split below and above each bin
            needed += 2 * size * len(self._special_bins())
        if memory_map_size < needed:
            return MemoryMapResult(S.BUFFER_TOO_SMALL, needed, self.map_key, size, EFI_MEMORY_DESCRIPTOR_VERSION)
        if not buffer:
            return MemoryMapResult(S.INVALID_PARAMETER, needed, self.map_key, size, EFI_MEMORY_DESCRIPTOR_VERSION)
        descriptors = self._build_memory_map()
        used = len(descriptors) * size
        overflow = max(0, used - memory_map_size)
        if overflow and self.probe_counts_unaccepted:  # cannot happen: the probe is an upper bound
            return MemoryMapResult(S.BUFFER_TOO_SMALL, needed, self.map_key, size, EFI_MEMORY_DESCRIPTOR_VERSION)
        return MemoryMapResult(
            S.SUCCESS, used, self.map_key, size, EFI_MEMORY_DESCRIPTOR_VERSION, tuple(descriptors), overflow
        )

    def terminate_memory_map(self, map_key: int) -> EfiStatus:
        """Page.c CoreTerminateMemoryMap: a stale key is EFI_INVALID_PARAMETER (runtime entries are always
        aligned on X64, where the runtime granularity is one page)."""
        return S.SUCCESS if map_key == self.map_key else S.INVALID_PARAMETER

    # ----------------------------------------------------------------- what the GCD and the pool call

    def add_memory_descriptor(self, memory_type: int, start: int, number_of_pages: int, attribute: int) -> None:
        """Page.c CoreAddMemoryDescriptor; the first call also sets up the memory-type bins (MemoryBin.c)."""
        if start & EFI_PAGE_MASK or MAX_TYPE <= memory_type < MEMORY_TYPE_OEM_RESERVED_MIN or number_of_pages == 0:
            return
        end = start + (number_of_pages << EFI_PAGE_SHIFT)
        if any(v is not None for _, _, v in self.map.runs(start, end)):
            # CoreAddRange requires a range absent from the map; edk2 would corrupt its list here.
            raise RuntimeError(f"memory map already holds part of [{start:#x}, {end:#x})")
        self._set(start, end, MapEntry(memory_type, attribute))
        if not self.bins_initialized:
            self._allocate_bins()

    def update_memory_attributes(self, start: int, number_of_pages: int, attributes: int) -> None:
        """Page.c CoreUpdateMemoryAttributes (status ignored, as in edk2)."""
        self._convert_pages(start, number_of_pages, new_attribute=attributes)

    def allocate_pool_pages(self, pool_type: int, pages: int) -> int:
        """Page.c CoreAllocatePoolPages: 0 when no room (no promotion retry at conversion, as edk2)."""
        start = self._find_free_pages(MAX_ALLOC_ADDRESS, pages, pool_type)
        if start:
            self._convert_pages(start, pages, new_type=pool_type)
        return start

    def free_pool_pages(self, memory: int, pages: int) -> None:
        self._convert_pages(memory, pages, new_type=M.EfiConventionalMemory)

    # ----------------------------------------------------------------- queries

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, MapEntry]]:
        return ((s, e, v) for s, e, v in self.map.runs(start, end) if v is not None)

    def entry_at(self, address: int) -> MapEntry | None:
        return self.map.get(address)

    def free_bytes(self) -> int:
        return sum(n for _, n in self.free)

    def bytes_of_type(self, memory_type: int) -> int:
        return self.map.total(0, MAP_LIMIT, lambda v: v is not None and v.type == memory_type)

    def largest_free_run(self, max_address: int = MAX_ALLOC_ADDRESS) -> int:
        return max((min(s + n, max_address + 1) - s for s, n in self.free if s <= max_address), default=0)

    def bins(self) -> list[tuple[int, int, int]]:
        """(type, base, end) of every non-empty bin."""
        return [
            (t, st.base_address, st.maximum_address + 1)
            for t, st in enumerate(self.stats[:MAX_TYPE])
            if st.number_of_pages
        ]

    # ----------------------------------------------------------------- Page.c internals

    def _internal_allocate_pages(
        self, allocate_type: int, memory_type: int, pages: int, memory: int | None
    ) -> tuple[EfiStatus, int]:
        """Page.c CoreInternalAllocatePages, statuses in edk2's order."""
        if not 0 <= allocate_type & MAX_UINT32 < EfiAllocateType.MaxAllocateType:
            return S.INVALID_PARAMETER, 0
        memory_type &= MAX_UINT32
        if invalid_allocation_type(memory_type):
            return S.INVALID_PARAMETER, 0
        if memory is None:
            return S.INVALID_PARAMETER, 0
        memory &= MAX_UINT64
        pages &= MAX_UINT64
        alignment = RUNTIME_PAGE_ALLOCATION_GRANULARITY if memory_type in _RUNTIME_GRANULARITY_TYPES else PAGE
        if allocate_type == EfiAllocateType.AllocateAddress and memory & (alignment - 1):
            return S.NOT_FOUND, 0  # edk2: a misaligned address is NOT_FOUND, not INVALID_PARAMETER
        granule = alignment >> EFI_PAGE_SHIFT
        pages = ((pages + granule - 1) & ~(granule - 1)) & MAX_UINT64
        start = memory
        max_address = MAX_ALLOC_ADDRESS
        if allocate_type == EfiAllocateType.AllocateAddress:
            if start == 0:  # page 0 is kept for NULL-pointer detection
                return S.NOT_FOUND, 0
            if pages == 0 or pages > max_address >> EFI_PAGE_SHIFT:
                return S.NOT_FOUND, 0
            end = (start + (pages << EFI_PAGE_SHIFT) - 1) & MAX_UINT64
            if start >= end or start > max_address or end > max_address:
                return S.NOT_FOUND, 0
            for t, st in enumerate(self.stats[:MAX_TYPE]):
                if t != memory_type and st.special and st.number_of_pages > 0:
                    lo, hi = st.base_address, st.maximum_address
                    if lo <= start <= hi or lo <= end <= hi or (start < lo and end > hi):
                        return S.NOT_FOUND, 0
        elif allocate_type == EfiAllocateType.AllocateMaxAddress:
            max_address = start
        if allocate_type != EfiAllocateType.AllocateAddress:
            start = self._find_free_pages(max_address, pages, memory_type)
            if start == 0:
                return S.OUT_OF_RESOURCES, 0
        status = self._convert_pages(start, pages, new_type=memory_type)
        if status != S.SUCCESS and self._promote_memory_resource():
            status = self._convert_pages(start, pages, new_type=memory_type)
        return status, (start if status == S.SUCCESS else 0)

    def _find_free_pages_i(self, max_address: int, min_address: int, pages: int) -> int:
        """Page.c CoreFindFreePagesI: the base of the highest fit, 0 when none (so page 0 never fits)."""
        if max_address < EFI_PAGE_MASK or pages == 0:
            return 0
        if max_address & EFI_PAGE_MASK != EFI_PAGE_MASK:
            max_address = ((max_address - PAGE) & ~EFI_PAGE_MASK) | EFI_PAGE_MASK
        base = self.free.find_top(max_address, min_address, pages << EFI_PAGE_SHIFT)
        return base or 0

    def _find_free_pages(self, max_address: int, pages: int, memory_type: int) -> int:
        """Page.c FindFreePages: the type's bin, the default bin, anywhere below max_address, then promotion."""
        while True:
            if memory_type < MAX_TYPE and max_address >= self.stats[memory_type].maximum_address:
                st = self.stats[memory_type]
                start = self._find_free_pages_i(st.maximum_address, st.base_address, pages)
                if start:
                    return start
            if max_address >= self.default_maximum_address:
                start = self._find_free_pages_i(self.default_maximum_address, 0, pages)
                if start:
                    self.default_base_address = min(self.default_base_address, start)
                    return start
            start = self._find_free_pages_i(max_address, 0, pages)
            if start:
                return start
            if not self._promote_memory_resource():
                return 0

    def _convert_pages(
        self, start: int, pages: int, *, new_type: int | None = None, new_attribute: int | None = None
    ) -> EfiStatus:
        """Page.c CoreConvertPagesEx: change the type (allocate or free) or the attribute of a range."""
        changing_type = new_type is not None
        end = (start + ((pages << EFI_PAGE_SHIFT) & MAX_UINT64) - 1) & MAX_UINT64
        if pages == 0 or start & EFI_PAGE_MASK or start >= end:
            return S.INVALID_PARAMETER
        while start < end:
            run_start, run_end, v = self.map.run_at(start)
            if v is None:
                return S.NOT_FOUND
            entry_end = run_end - 1
            if changing_type and new_type != M.EfiConventionalMemory and entry_end < end:
                return S.NOT_FOUND  # an allocation must fit inside one free descriptor
            range_end = min(end, entry_end)
            if new_type is not None:
                # Allocate only free pages, free only allocated ones; edk2 may already have converted the
                # entries before this one when freeing across entries, and so does this model.
                if (new_type == M.EfiConventionalMemory) == (v.type == M.EfiConventionalMemory):
                    return S.NOT_FOUND
                value = MapEntry(new_type, v.attribute)
            else:
                value = MapEntry(v.type, new_attribute if new_attribute is not None else v.attribute)
            self._set(start, range_end + 1, value)
            start = range_end + 1
        return S.SUCCESS

    def _set(self, start: int, end: int, value: MapEntry | None) -> None:
        """CoreAddRange and the clipping around it: one map change, one map key bump, free index in step."""
        lo, hi = max(start - 1, 0), min(end + 1, MAP_LIMIT)
        for s, _, v in self.map.runs(lo, hi):
            if is_free_entry(v):
                self.free.remove(self.map.run_at(s)[0])
        self.map.set(start, end, value)
        for s, _, v in self.map.runs(lo, hi):
            if is_free_entry(v):
                rs, re, _ = self.map.run_at(s)
                self.free.add(rs, re - rs)
        self.map_key += 1

    def _promote_memory_resource(self) -> bool:
        """Page.c PromoteMemoryResource: untested (present + initialized) reserved GCD memory becomes
        system memory and free pages. Unaccepted memory is never promoted here."""
        promoted = False
        for s, e, g in list(self.gcd.runs()):
            caps = g.capabilities & (EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED | EFI_MEMORY_TESTED)
            if g.gcd_type != GcdType.EfiGcdMemoryTypeReserved or e - 1 >= MAX_ALLOC_ADDRESS:
                continue
            if caps != EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED:
                continue
            more = g.capabilities & EFI_MEMORY_MORE_RELIABLE
            new = replace(
                g,
                gcd_type=GcdType.EfiGcdMemoryTypeMoreReliable if more else GcdType.EfiGcdMemoryTypeSystemMemory,
                capabilities=g.capabilities | EFI_MEMORY_TESTED,
                image_handle=DXE_CORE_IMAGE_HANDLE,
                device_handle=None,
            )
            self.gcd.map.set(s, e, new)
            self.gcd.version += 1
            attr = new.capabilities & ~(
                EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED | EFI_MEMORY_TESTED | EFI_MEMORY_RUNTIME
            )
            self._set(s, e, MapEntry(M.EfiConventionalMemory, attr))
            promoted = True
        if promoted:
            self.promotions += 1
        return promoted

    # ----------------------------------------------------------------- memory-type bins (MemoryBin.c)

    def _allocate_bins(self) -> None:
        """MemoryBin.c AllocateMemoryTypeInformationBins: one contiguous allocation at the top of the first
        memory, carved into bins in table order from the top, then freed; later allocations of other types
        go below the bins first (the default bin)."""
        info = [(t, n) for t, n in self.memory_type_information if t <= MAX_TYPE]
        required_pages = sum(n for t, n in info if t < MAX_TYPE)
        if required_pages == 0:
            self.bins_initialized = True
            return
        status, base = self._internal_allocate_pages(
            EfiAllocateType.AllocateAnyPages, M.EfiBootServicesData, required_pages, 0
        )
        if status != S.SUCCESS:
            return  # retried when more memory is added, as edk2
        last = base + (required_pages << EFI_PAGE_SHIFT)
        self.default_maximum_address = base - 1
        for t, n in info:
            if t < MAX_TYPE and n:
                self.stats[t].base_address = last - (n << EFI_PAGE_SHIFT)
                self.stats[t].maximum_address = last - 1
                last = self.stats[t].base_address
        self._convert_pages(base, required_pages, new_type=M.EfiConventionalMemory)
        for index, (t, n) in enumerate(info):
            if t < MAX_TYPE and n:
                self.stats[t].number_of_pages = n
                self.stats[t].information_index = index
        for st in self.stats[:MAX_TYPE]:
            st.current_number_of_pages = 0
            if st.maximum_address == MAX_ALLOC_ADDRESS:
                st.maximum_address = self.default_maximum_address
        self.bins_initialized = True

    def _special_bins(self) -> list[tuple[int, int, int]]:
        """(base, end, type) of every special, non-empty bin, by base."""
        return sorted(
            (st.base_address, st.maximum_address + 1, t)
            for t, st in enumerate(self.stats[:MAX_TYPE])
            if st.special and st.number_of_pages > 0
        )

    # ----------------------------------------------------------------- CoreGetMemoryMap's build

    def _descriptor_type(self, memory_type: int, attribute: int) -> tuple[int, int]:
        """Page.c SetEfiMemoryDescriptorType: the RUNTIME bit follows the type."""
        if memory_type < MAX_TYPE:
            if self.stats[memory_type].runtime:
                attribute |= EFI_MEMORY_RUNTIME
            else:
                attribute &= ~EFI_MEMORY_RUNTIME
        return memory_type, attribute

    def _build_memory_map(self) -> list[MemoryDescriptor]:
        # [type, start, end, attribute]; memory-map entries come sorted and merged, so the only earlier
        # descriptor one can merge with (MergeMemoryMapDescriptor) is the previous one.
        out: list[list[int]] = []
        for s, e, v in self.map.runs():
            if v is None:
                continue
            t, attr = self._descriptor_type(v.type, v.attribute)
            if out and out[-1][0] == t and out[-1][3] == attr and out[-1][2] == s:
                out[-1][2] = e
            else:
                out.append([t, s, e, attr])
        bins = self._special_bins()
        if bins and self.splits_free_bins:
            out = _merge_adjacent(self._split_into_bins(out, bins))
        elif bins:
            out = _merge_adjacent(self._type_whole_entries(out, bins))
        self._append_gcd_descriptors(out)
        for d in out:
            d[3] &= ~EFI_MEMORY_ACCESS_MASK
        out = _merge_adjacent(out)
        return [MemoryDescriptor(t, s, (e - s) >> EFI_PAGE_SHIFT, a) for t, s, e, a in out]

    def _type_whole_entries(self, descs: list[list[int]], bins: list[tuple[int, int, int]]) -> list[list[int]]:
        """Page.c CoreGetMemoryMap before d419725b23 (edk2-stable202502..202511): a free memory map entry takes a
        special bin's type only when it lies wholly inside that bin; one that crosses a bin edge stays
        EfiConventionalMemory. The entries are the internal map's, merged by type and attribute (CoreAddRange)."""
        bases = [b[0] for b in bins]
        out: list[list[int]] = []
        for t, s, e, attr in descs:
            i = bisect_right(bases, s) - 1
            if t == M.EfiConventionalMemory and i >= 0 and e <= bins[i][1]:
                t, attr = self._descriptor_type(bins[i][2], attr)
            out.append([t, s, e, attr])
        return out

    def _split_into_bins(self, descs: list[list[int]], bins: list[tuple[int, int, int]]) -> list[list[int]]:
        """Page.c CoreGetMemoryMap from d419725b23 (edk2-stable202602, master c5aa7e7d): free memory is split at
        the edges of each special bin and the part inside reported as the bin's type."""
        bases = [b[0] for b in bins]
        out: list[list[int]] = []
        for t, s, e, attr in descs:
            if t != M.EfiConventionalMemory:
                out.append([t, s, e, attr])
                continue
            pos = s
            i = max(0, bisect_right(bases, s) - 1)
            while i < len(bins) and bins[i][0] < e:
                b_start, b_end, b_type = bins[i]
                if b_end > pos:
                    lo, hi = max(pos, b_start), min(e, b_end)
                    if lo > pos:
                        out.append([t, pos, lo, attr])
                    bt, battr = self._descriptor_type(b_type, attr)
                    out.append([bt, lo, hi, battr])
                    pos = hi
                i += 1
            if pos < e:
                out.append([t, pos, e, attr])
        return out

    def _append_gcd_descriptors(self, out: list[list[int]]) -> None:
        """Reserved, runtime MMIO, persistent and unaccepted GCD entries, merged as CoreGetMemoryMap merges them
        (adjacent GCD entries of equal type, capabilities and attributes, handles ignored), then merged into any
        earlier adjacent descriptor of equal type and attribute."""
        by_end = {(t, a, e): i for i, (t, s, e, a) in enumerate(out)}
        by_start = {(t, a, s): i for i, (t, s, e, a) in enumerate(out)}

        def emit(t: int, s: int, e: int, a: int) -> None:
            below = by_end.get((t, a, s))
            above = by_start.get((t, a, e))
            candidates = [i for i in (below, above) if i is not None]
            if not candidates:
                out.append([t, s, e, a])
                by_end[(t, a, e)] = by_start[(t, a, s)] = len(out) - 1
                return
            i = min(candidates)
            d = out[i]
            del by_end[(d[0], d[3], d[2])], by_start[(d[0], d[3], d[1])]
            d[1], d[2] = min(d[1], s), max(d[2], e)
            by_end[(t, a, d[2])] = by_start[(t, a, d[1])] = i

        merged: list[list] = []
        for s, e, g in self.gcd.runs():
            key = (g.gcd_type, g.capabilities, g.attributes)
            if merged and merged[-1][2] == key:
                merged[-1][1] = e
            else:
                merged.append([s, e, key])
        for s, e, (gtype, caps, attrs) in merged:
            if gtype == GcdType.EfiGcdMemoryTypeReserved or (
                gtype == GcdType.EfiGcdMemoryTypeMemoryMappedIo and attrs & EFI_MEMORY_RUNTIME
            ):
                a = (attrs & ~EFI_MEMORY_PORT_IO) | (caps & (EFI_CACHE_ATTRIBUTE_MASK | EFI_MEMORY_ATTRIBUTE_MASK))
                if gtype == GcdType.EfiGcdMemoryTypeReserved:
                    t = M.EfiReservedMemoryType
                elif attrs & EFI_MEMORY_PORT_IO:
                    t = M.EfiMemoryMappedIOPortSpace
                else:
                    t = M.EfiMemoryMappedIO
                emit(t, s, e, a)
            elif gtype == GcdType.EfiGcdMemoryTypePersistent:
                emit(
                    M.EfiPersistentMemory,
                    s,
                    e,
                    attrs | EFI_MEMORY_NV | (caps & (EFI_CACHE_ATTRIBUTE_MASK | EFI_MEMORY_ATTRIBUTE_MASK)),
                )
            elif gtype == GcdType.EfiGcdMemoryTypeUnaccepted:
                emit(M.EfiUnacceptedMemoryType, s, e, attrs | (caps & _UNACCEPTED_ATTRIBUTE_CAPS))


def _merge_adjacent(descs: list[list[int]]) -> list[list[int]]:
    """MemoryAttributesTable.c MergeMemoryMap: fold consecutive descriptors of equal type and attribute."""
    out: list[list[int]] = []
    for d in descs:
        if out and out[-1][0] == d[0] and out[-1][3] == d[3] and out[-1][2] == d[1]:
            out[-1][2] = d[2]
        else:
            out.append(list(d))
    return out
