"""The DXE core pool allocator (edk2 MdeModulePkg/Core/Dxe/Mem/Pool.c).

One pool per memory type. A request is padded to 8 bytes plus a 24-byte POOL_HEAD and a 16-byte POOL_TAIL;
up to the largest bin below one page (2688 bytes with overhead) it is served from free lists of the 12 bin
sizes of mPoolSizeTable, refilled by carving a page of the pool's type (CoreAllocatePoolI); larger requests
get their own pages. A page whose blocks are all free again goes back to the page allocator (CoreFreePoolI).
The caller's buffer is the address after the head, so page-backed pool buffers sit at page + 24.

lazyaccept keeps heads and tails as records instead of bytes in guest memory; FreePool checks them as edk2
checks the signatures. Deliberate differences: a FreePool of a pointer edk2 cannot vouch for (unknown, double
freed, misaligned) is EFI_INVALID_PARAMETER here in every case. edk2 reads the head in guest memory: a DEBUG
build clears freed pool (DEBUG_CLEAR_MEMORY) so the signature check fails as modelled, a RELEASE build may
accept a double free of a page-backed pool, and a wild pointer into unaccepted memory would terminate the TD.
Heap guard, memory profile and the pool lock (EFI_OUT_OF_RESOURCES when taken) are not modelled.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

from lazyaccept.binlayout import Layout
from lazyaccept.firmware.dxe.page import AllocationRequest, PageAllocator, invalid_allocation_type
from lazyaccept.spec.efi import (
    DEFAULT_PAGE_ALLOCATION_GRANULARITY,
    EFI_PAGE_SHIFT,
    MAX_ADDRESS,
    MAX_ALLOC_ADDRESS,
    MAX_UINT32,
    MAX_UINT64,
    MEMORY_TYPE_OEM_RESERVED_MIN,
    RUNTIME_PAGE_ALLOCATION_GRANULARITY,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
)

S = EfiStatus
M = EfiMemoryType

POOL_HEAD = Layout(
    "POOL_HEAD",
    [("Signature", "I"), ("Reserved", "I"), ("Type", "I"), ("Pad", "I"), ("Size", "Q")],
)
POOL_TAIL = Layout("POOL_TAIL", [("Signature", "I"), ("Reserved", "I"), ("Size", "Q")])
SIZE_OF_POOL_HEAD = POOL_HEAD.size  # OFFSET_OF (POOL_HEAD, Data) = 24 on X64
POOL_OVERHEAD = SIZE_OF_POOL_HEAD + POOL_TAIL.size  # 40
POOL_HEAD_SIGNATURE = int.from_bytes(b"phd0", "little")
POOL_TAIL_SIGNATURE = int.from_bytes(b"ptal", "little")
POOL_FREE_SIGNATURE = int.from_bytes(b"pfr0", "little")
# Pool.c mPoolSizeTable: each size the sum of the two before, so blocks split between bins with little waste.
POOL_SIZE_TABLE = (128, 256, 384, 640, 1024, 1664, 2688, 4352, 7040, 11392, 18432, 29824)
MAX_POOL_LIST = len(POOL_SIZE_TABLE)
MAX_POOL_SIZE = MAX_ADDRESS - POOL_OVERHEAD
# sizeof (POOL) on X64, allocated from EfiBootServicesData pool for each OEM/OS memory type in use.
POOL_STRUCT_SIZE = 8 + 8 + 4 + 4 + MAX_POOL_LIST * 16 + 16


def size_to_list(size: int) -> int:
    """Pool.c GetPoolIndexFromSize: the first bin at least `size` bytes, MAX_POOL_LIST if none."""
    return bisect_left(POOL_SIZE_TABLE, size)


def _granularity(memory_type: int) -> int:
    if memory_type in (M.EfiReservedMemoryType, M.EfiACPIMemoryNVS, M.EfiRuntimeServicesCode, M.EfiRuntimeServicesData):
        return RUNTIME_PAGE_ALLOCATION_GRANULARITY
    return DEFAULT_PAGE_ALLOCATION_GRANULARITY


@dataclass
class PoolBlock:
    """A live pool allocation: its head (POOL_HEAD address), Size as the head records it, and type."""

    head: int
    size: int  # bytes including head and tail, as Head->Size
    memory_type: int
    page_backed: bool

    @property
    def buffer(self) -> int:
        return self.head + SIZE_OF_POOL_HEAD

    @property
    def end(self) -> int:
        return self.head + self.size


@dataclass
class _Pool:
    """Pool.c POOL: one memory type's free lists. A free list is LIFO (InsertHeadList, take ForwardLink)."""

    memory_type: int
    used: int = 0
    free_lists: list[dict[int, None]] = field(default_factory=lambda: [{} for _ in range(MAX_POOL_LIST)])
    # page -> {free block head: list index}; page -> number of allocated blocks in it
    page_free: dict[int, dict[int, int]] = field(default_factory=dict)
    page_live: dict[int, int] = field(default_factory=dict)
    struct_block: int | None = None  # the POOL record of an OEM/OS type, itself a pool block


class PoolAllocator:
    """AllocatePool / FreePool with edk2's statuses."""

    def __init__(self, pages: PageAllocator):
        self.pages = pages
        self.pools: dict[int, _Pool] = {}
        self.live: dict[int, PoolBlock] = {}  # keyed by the caller's buffer address
        self.oem_pools: list[int] = []  # lookup order of OEM/OS pools (InsertHeadList)

    # ----------------------------------------------------------------- boot services

    def allocate_pool(self, pool_type: int, size: int, *, buffer: bool = True) -> tuple[EfiStatus, int]:
        """Pool.c CoreAllocatePool: returns (status, buffer address). buffer False is a NULL Buffer pointer.

        With an on-failure hook on the page allocator (option 1), EFI_OUT_OF_RESOURCES asks it to make room
        for the pages this request needs, then retries once."""
        status, addr = self._internal_allocate_pool(pool_type, size, buffer)
        hook = self.pages.on_allocation_failure
        if status == S.OUT_OF_RESOURCES and hook is not None and size <= MAX_POOL_SIZE:
            needed = _pool_pages_needed(size, pool_type)
            req = AllocationRequest(
                "pool", EfiAllocateType.AllocateAnyPages, pool_type, needed, MAX_ALLOC_ADDRESS, status
            )
            if hook(req):
                status, addr = self._internal_allocate_pool(pool_type, size, buffer)
        return status, addr

    def free_pool(self, buffer: int | None) -> EfiStatus:
        """Pool.c CoreFreePool. None (NULL) and anything that is not a live pool buffer: EFI_INVALID_PARAMETER."""
        if not buffer:
            return S.INVALID_PARAMETER
        block = self.live.pop(buffer & MAX_UINT64, None)
        if block is None:
            return S.INVALID_PARAMETER
        self._free_block(block)
        if block.memory_type >= MEMORY_TYPE_OEM_RESERVED_MIN:
            pool = self.pools[block.memory_type]
            if pool.used == 0 and pool.struct_block is not None:
                # Pool.c: the last block of an OEM/OS type frees its POOL record too.
                self.oem_pools.remove(block.memory_type)
                del self.pools[block.memory_type]
                struct = self.live.pop(pool.struct_block)
                self._free_block(struct)
        return S.SUCCESS

    # ----------------------------------------------------------------- queries

    def block_at(self, buffer: int) -> PoolBlock | None:
        return self.live.get(buffer)

    def used_bytes(self, pool_type: int | None = None) -> int:
        if pool_type is None:
            return sum(p.used for p in self.pools.values())
        pool = self.pools.get(pool_type)
        return pool.used if pool else 0

    def pool_pages(self) -> dict[int, int]:
        """Carved pool pages (page -> memory type)."""
        return {page: pool.memory_type for pool in self.pools.values() for page in pool.page_live}

    # ----------------------------------------------------------------- Pool.c internals

    def _internal_allocate_pool(self, pool_type: int, size: int, buffer: bool) -> tuple[EfiStatus, int]:
        """Pool.c CoreInternalAllocatePool."""
        pool_type &= MAX_UINT32
        if invalid_allocation_type(pool_type):
            return S.INVALID_PARAMETER, 0
        if not buffer:
            return S.INVALID_PARAMETER, 0
        size &= MAX_UINT64
        if size > MAX_POOL_SIZE:
            return S.OUT_OF_RESOURCES, 0
        block = self._allocate_pool_i(pool_type, size)
        if block is None:
            return S.OUT_OF_RESOURCES, 0
        return S.SUCCESS, block.buffer

    def _lookup_pool(self, pool_type: int) -> _Pool | None:
        """Pool.c LookupPoolHead: OEM/OS types get a POOL record allocated from EfiBootServicesData pool."""
        pool = self.pools.get(pool_type)
        if pool is not None:
            return pool
        if pool_type < EfiMemoryType.EfiMaxMemoryType:
            pool = self.pools[pool_type] = _Pool(pool_type)
            return pool
        struct = self._allocate_pool_i(M.EfiBootServicesData, POOL_STRUCT_SIZE)
        if struct is None:
            return None
        pool = self.pools[pool_type] = _Pool(pool_type, struct_block=struct.buffer)
        self.oem_pools.insert(0, pool_type)
        return pool

    def _allocate_pool_i(self, pool_type: int, size: int) -> PoolBlock | None:
        """Pool.c CoreAllocatePoolI."""
        granularity = _granularity(pool_type)
        size = (size + 7) & ~7  # ALIGN_VARIABLE
        size += POOL_OVERHEAD
        index = size_to_list(size)
        pool = self._lookup_pool(pool_type)
        if pool is None:
            return None
        page_index = size_to_list(granularity)
        if index >= page_index:
            granule = granularity >> EFI_PAGE_SHIFT
            pages = ((size + (1 << EFI_PAGE_SHIFT) - 1) >> EFI_PAGE_SHIFT) + granule - 1
            pages &= ~(granule - 1)
            head = self.pages.allocate_pool_pages(pool_type, pages)
            if not head:
                return None
            return self._account(pool, PoolBlock(head, size, pool_type, True))
        free_list = pool.free_lists[index]
        if free_list:
            head, _ = free_list.popitem()
            page = head & ~(granularity - 1)
            del pool.page_free[page][head]
            pool.page_live[page] += 1
            return self._account(pool, PoolBlock(head, size, pool_type, False))
        # Nothing in the right bin: carve a larger free block, or a new page.
        offset = POOL_SIZE_TABLE[index]
        max_offset = granularity
        new_page = 0
        source = page_index  # the bin the carved block came from (page_index: a fresh page)
        for larger in range(index + 1, page_index):
            if pool.free_lists[larger]:
                new_page, _ = pool.free_lists[larger].popitem()
                del pool.page_free[new_page & ~(granularity - 1)][new_page]
                max_offset = POOL_SIZE_TABLE[larger]
                source = larger
                break
        page_start = new_page & ~(granularity - 1)
        if not new_page:
            new_page = self.pages.allocate_pool_pages(pool_type, granularity >> EFI_PAGE_SHIFT)
            if not new_page:
                return None
            page_start = new_page
            pool.page_free[page_start] = {}
            pool.page_live[page_start] = 0
        # The request is served from the head of the block; the rest is cut into the largest bins that fit.
        carve = source - 1
        while offset < max_offset:
            fsize = POOL_SIZE_TABLE[carve]
            while offset + fsize <= max_offset:
                free_head = new_page + offset
                pool.free_lists[carve][free_head] = None
                pool.page_free[page_start][free_head] = carve
                offset += fsize
            carve -= 1
        pool.page_live[page_start] += 1
        return self._account(pool, PoolBlock(new_page, size, pool_type, False))

    def _account(self, pool: _Pool, block: PoolBlock) -> PoolBlock:
        pool.used += block.size
        self.live[block.buffer] = block
        return block

    def _free_block(self, block: PoolBlock) -> None:
        """Pool.c CoreFreePoolI after the signature checks."""
        pool = self.pools[block.memory_type]
        pool.used -= block.size
        granularity = _granularity(block.memory_type)
        if block.page_backed:
            granule = granularity >> EFI_PAGE_SHIFT
            pages = ((block.size + (1 << EFI_PAGE_SHIFT) - 1) >> EFI_PAGE_SHIFT) + granule - 1
            self.pages.free_pool_pages(block.head, pages & ~(granule - 1))
            return
        index = size_to_list(block.size)
        page = block.head & ~(granularity - 1)
        pool.free_lists[index][block.head] = None
        pool.page_free[page][block.head] = index
        pool.page_live[page] -= 1
        if pool.page_live[page] == 0:
            # Every block of the page is free: unlink them all and give the page back.
            for head, idx in pool.page_free.pop(page).items():
                del pool.free_lists[idx][head]
            del pool.page_live[page]
            self.pages.free_pool_pages(page, granularity >> EFI_PAGE_SHIFT)


def _pool_pages_needed(size: int, pool_type: int) -> int:
    """Pages a failed AllocatePool needs from the page allocator (a whole carve page for small requests)."""
    granularity = _granularity(pool_type)
    padded = ((size + 7) & ~7) + POOL_OVERHEAD
    if size_to_list(padded) < size_to_list(granularity):
        return granularity >> EFI_PAGE_SHIFT
    return (padded + (1 << EFI_PAGE_SHIFT) - 1) >> EFI_PAGE_SHIFT
