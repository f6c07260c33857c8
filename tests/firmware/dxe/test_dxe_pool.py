"""AllocatePool / FreePool (Pool.c): statuses, carving, page-backed pools, returning pages."""

from __future__ import annotations

import pytest

from lazyaccept.firmware.dxe.exit import DxeCore
from lazyaccept.firmware.dxe.invariants import InvariantViolation, check_core
from lazyaccept.firmware.dxe.pool import MAX_POOL_SIZE, POOL_OVERHEAD, POOL_SIZE_TABLE, SIZE_OF_POOL_HEAD, size_to_list
from lazyaccept.spec.efi import EfiMemoryType, EfiStatus

S = EfiStatus
M = EfiMemoryType


def test_pool_header_sizes() -> None:
    assert SIZE_OF_POOL_HEAD == 24 and POOL_OVERHEAD == 40
    assert size_to_list(128) == 0 and size_to_list(129) == 1 and size_to_list(4096) == 7
    assert size_to_list(POOL_SIZE_TABLE[-1] + 1) == len(POOL_SIZE_TABLE)


@pytest.mark.parametrize(
    "pool_type", [M.EfiConventionalMemory, M.EfiPersistentMemory, M.EfiUnacceptedMemoryType, 16, 0x6FFFFFFF]
)
def test_allocate_pool_rejects_types(core: DxeCore, pool_type: int) -> None:
    assert core.allocate_pool(pool_type, 64) == (S.INVALID_PARAMETER, 0)


def test_allocate_pool_statuses(core: DxeCore) -> None:
    assert core.allocate_pool(M.EfiBootServicesData, 64, buffer=False) == (S.INVALID_PARAMETER, 0)
    assert core.allocate_pool(M.EfiBootServicesData, MAX_POOL_SIZE + 1) == (S.OUT_OF_RESOURCES, 0)
    assert core.allocate_pool(M.EfiBootServicesData, 1 << 40) == (S.OUT_OF_RESOURCES, 0)  # beyond accepted memory
    status, buf = core.allocate_pool(M.EfiBootServicesData, 0)  # edk2 hands out a 128-byte block
    assert status == S.SUCCESS and buf % 8 == 0
    check_core(core)


def test_free_pool_statuses(core: DxeCore) -> None:
    assert core.free_pool(None) == S.INVALID_PARAMETER
    assert core.free_pool(0) == S.INVALID_PARAMETER
    status, buf = core.allocate_pool(M.EfiLoaderData, 100)
    assert status == S.SUCCESS
    assert core.free_pool(buf + 8) == S.INVALID_PARAMETER  # misaligned / not a pool head
    assert core.free_pool(0x1234_5000) == S.INVALID_PARAMETER  # unknown
    assert core.free_pool(buf) == S.SUCCESS
    assert core.free_pool(buf) == S.INVALID_PARAMETER  # double free
    check_core(core)


def test_small_pools_share_a_carved_page(core: DxeCore) -> None:
    key = core.pages.map_key
    bufs = [core.allocate_pool(M.EfiBootServicesData, 100)[1] for _ in range(10)]
    pages = {b & ~0xFFF for b in bufs}
    assert len(pages) <= 2
    assert all(b % 8 == 0 for b in bufs)
    assert core.pages.map_key != key  # a new pool page changed the map
    key = core.pages.map_key
    status, small = core.allocate_pool(M.EfiBootServicesData, 8)  # room left in the carved pages
    assert status == S.SUCCESS and core.pages.map_key == key
    for b in [*bufs, small]:
        assert core.free_pool(b) == S.SUCCESS
    # Every block free again: the pages went back to the page allocator.
    assert core.pool.pool_pages() == {}
    assert core.pool.used_bytes() == 0
    check_core(core)


def test_carving_fills_the_page_with_free_blocks(core: DxeCore) -> None:
    status, buf = core.allocate_pool(M.EfiLoaderData, 64)  # 64 + 40 -> bin 0 (128 bytes)
    assert status == S.SUCCESS and buf % 0x1000 == SIZE_OF_POOL_HEAD
    pool = core.pool.pools[M.EfiLoaderData]
    page = buf & ~0xFFF
    # Pool.c: the rest of the page is cut into the largest bins that fit: 2688, 1024, 256.
    carved = sorted((head - page, POOL_SIZE_TABLE[idx]) for head, idx in pool.page_free[page].items())
    assert carved == [(128, 2688), (2816, 1024), (3840, 256)]
    status, buf2 = core.allocate_pool(M.EfiLoaderData, 200)  # bin 1 (256): the carved block at 3840
    assert buf2 == page + 3840 + SIZE_OF_POOL_HEAD
    check_core(core)


def test_large_pools_get_their_own_pages(core: DxeCore) -> None:
    status, buf = core.allocate_pool(M.EfiACPIReclaimMemory, 4096)
    assert status == S.SUCCESS and buf % 0x1000 == SIZE_OF_POOL_HEAD
    block = core.pool.block_at(buf)
    assert block is not None and block.page_backed and block.size == 4096 + POOL_OVERHEAD
    entry = core.pages.entry_at(block.head)
    assert entry is not None and entry.type == M.EfiACPIReclaimMemory
    assert core.pages.map.total(block.head, block.head + 0x2000, lambda v: v is not None and v.type == 9) == 0x2000
    assert core.free_pool(buf) == S.SUCCESS
    entry = core.pages.entry_at(block.head)
    assert entry is not None and entry.type != M.EfiACPIReclaimMemory
    check_core(core)


def test_oem_pool_types_come_and_go(core: DxeCore) -> None:
    status, a = core.allocate_pool(0x70000001, 32)
    assert status == S.SUCCESS
    assert 0x70000001 in core.pool.pools
    status, b = core.allocate_pool(0x80000002, 5000)
    assert status == S.SUCCESS
    assert core.free_pool(a) == S.SUCCESS
    assert 0x70000001 not in core.pool.pools  # its POOL record was freed with its last block
    assert core.free_pool(b) == S.SUCCESS
    assert core.pool.used_bytes() == 0
    check_core(core)


def test_freeing_pool_pages_with_free_pages_is_caught(core: DxeCore) -> None:
    """edk2 lets FreePages free any allocated pages, a pool's included; the invariant checker notices."""
    status, buf = core.allocate_pool(M.EfiLoaderData, 64)
    assert status == S.SUCCESS
    assert core.free_pages(buf & ~0xFFF, 1) == S.SUCCESS
    with pytest.raises(InvariantViolation, match="not in pages of its type"):
        check_core(core)
