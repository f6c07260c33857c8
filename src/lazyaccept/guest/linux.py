"""Linux 6.12's handling of unaccepted memory after the EFI stub, on top of the TDX module.

State is held in ranges: memblock as a RangeMap (not memory / free / reserved), the page allocator as a RangeMap
(used / free / on zone->unaccepted_pages in 4 MiB chunks), the EFI bitmap as a RangeMap of units. A 4 TiB TD has a
million chunks; every step works on runs of chunks, never on one chunk at a time.

What is modelled, and where it comes from (Linux 6.12 unless said otherwise; read, not copied):
- memblock (mm/memblock.c memblock_alloc_range_nid): top-down allocations, each followed by
  accept_memory(found, size). The early allocations whose size grows with RAM are modelled by name: the memmap
  (mm/sparse.c sparse_buffer_init: one buffer per node of present sections x 2 MiB, i.e. a 64-byte struct page per
  4K page), the dentry and inode hash tables (mm/mm_init.c alloc_large_system_hash with HASH_EARLY, since
  fixup_hashdist turns hashdist off on a single-node TD), the per-CPU areas, and in mm_core_init the SWIOTLB
  bounce buffer below 4 GiB and its slots array top-down (Linux._swiotlb). All run on the boot CPU before SMP.
  Boot services memory stays reserved (efi_reserve_boot_services) through all of them.
- drivers/firmware/efi/unaccepted_memory.c accept_memory / range_contains_unaccepted_memory: clip to the bitmap;
  a range ending on a unit boundary is extended by one guard unit (load_unaligned_zeropad may read across it);
  each run of set bits goes to arch_accept_memory and is cleared; concurrent callers whose unit ranges overlap
  (the accepting_list) wait for each other.
- drivers/firmware/efi/efi.c reserve_unaccepted: 6.12 reserves and maps PAGE_ALIGN(sizeof(table) + size) bytes from
  the table's page, so a table starting inside its page can end in an unmapped page; fixed by 0862438c9048 (2026).
- mm/mm_init.c defer_init: memblock_free_all frees one section of the top zone; deferred_init_memmap frees the
  rest from kernel_init (page_alloc_init_late), before most initcalls.
- mm/page_alloc.c __free_pages_core / __free_unaccepted and mm/mm_init.c deferred_free_pages: a MAX_PAGE_ORDER
  (4 MiB) block that contains unaccepted memory (guard unit included) goes on zone->unaccepted_pages; smaller
  pieces are accepted at once; with accept_memory=eager every block is accepted when freed (deferred struct page
  init runs in parallel on the node's CPUs, padata_do_multithreaded in section-sized pieces).
- mm/page_alloc.c cond_accept_memory (6.12, "mm: accept to promo watermark"): called for each zone an allocation
  visits; while free memory minus unaccepted memory is below the zone's promo watermark, take the first chunk off
  the list (try_to_accept_memory_one) and accept it; with watermarks still zero (before init_per_zone_wmark_min)
  6.12.0 accepts nothing, 6.12.y with 800f1059c99e accepts one chunk per call.
- Watermarks as __setup_per_zone_wmarks computes them: min_free_kbytes = clamp(isqrt(16 x lowmem KiB), 128 KiB,
  256 MiB) split by managed pages; step = max(min/4, managed x watermark_scale_factor/10000); low/high/promo =
  min + 1/2/3 steps. Managed pages include unaccepted memory (__free_pages_core counts them before listing them).
- arch/x86/coco/tdx/tdx-shared.c tdx_accept_memory (guest/handoff.py TdxAccepter): 1G, then 2M, then 4K per step.

Deliberate simplifications (each said where it is used): chunks leave the unaccepted list lowest address first;
reclaim, page cache and NUMA are not modelled; the order in which deferred-init threads list chunks is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import isqrt

from lazyaccept.errors import ConfigError
from lazyaccept.guest.handoff import (
    E820Type,
    GuestCrash,
    Handoff,
    LinuxAcceptCounters,
    TdxAccepter,
)
from lazyaccept.guest.unaccepted import UnacceptedTable
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import Actor
from lazyaccept.spec.efi import EfiMemoryType
from lazyaccept.tdx.module import AcceptResult, PageState, TdxModule
from lazyaccept.units import PAGE_2M, PAGE_4K, GiB, KiB, MiB, align_down, align_up, human_size

__all__ = [
    "CHUNK_BYTES",
    "GuestCrash",
    "Linux",
    "LinuxConfig",
    "Phase",
    "Allocation",
    "Zone",
    "UnacceptedMemory",
    "accept_concurrency",
    "alloc_large_system_hash_bytes",
    "min_free_kbytes",
    "reserve_unaccepted_range",
]

MAX_PAGE_ORDER = 10
CHUNK_BYTES = PAGE_4K << MAX_PAGE_ORDER  # 4 MiB: one MAX_PAGE_ORDER block on zone->unaccepted_pages
SECTION_BYTES = 128 * MiB  # SECTION_SIZE_BITS 27 on x86_64
STRUCT_PAGE_BYTES = 64
MAX_DMA_ADDRESS = 16 * MiB
IO_TLB_DEFAULT_SIZE = 64 * MiB
IO_TLB_SIZE = 2 * KiB  # one slab (IO_TLB_SHIFT 11)
IO_TLB_SEGSIZE = 128  # slabs per segment: swiotlb_adjust_size rounds to whole segments
IO_TLB_MIN_SLABS = MiB // IO_TLB_SIZE  # swiotlb_init_remap gives up below 1 MiB
IO_TLB_SLOT_BYTES = 24  # sizeof(struct io_tlb_slot), 6.12: orig_addr, alloc_size, list, pad_slots
PREWMARK_CALLS_BASE, PREWMARK_CALLS_PER_32_BLOCKS = 67, 27  # measured: see LinuxConfig
LARGE_BLOCK_MEMORY = 64 * GiB  # arch/x86/mm/init_64.c probe_memory_block_size: below it, 128 MiB blocks
MAX_BLOCK_BYTES = 2 * GiB
TABLE_HEADER_BYTES = 24  # sizeof(struct efi_unaccepted_memory)
ADAPT_SCALE_NPAGES = (64 * GiB) // PAGE_4K  # alloc_large_system_hash: above 64 GiB the scale grows
LOW_LIMIT = 4 * GiB  # memblock_alloc_low on x86_64 (ARCH_LOW_ADDRESS_LIMIT)

USED, FREE, UNACCEPTED = 0, 1, 2  # page allocator states
NOT_MEMORY, MB_FREE, MB_RESERVED = 0, 1, 2  # memblock states

# (name, start, end, lowmem_reserve_ratio): include/linux/mmzone.h zones on x86_64, mm/page_alloc.c ratios.
ZONE_LAYOUT = (("DMA", 0, 16 * MiB, 256), ("DMA32", 16 * MiB, 4 * GiB, 256), ("Normal", 4 * GiB, 1 << 52, 32))


@dataclass(frozen=True)
class LinuxConfig:
    """The kernel: version features, command line, and the sizes of the early allocations we cannot derive."""

    unaccepted_memory: bool = True  # CONFIG_UNACCEPTED_MEMORY=y and a kernel >= 6.5
    accept_memory: str = "lazy"  # the accept_memory= parameter: "lazy" (default) or "eager"
    watermark_zero_fix: bool = True  # 800f1059c99e, in 6.12.y stable (March 2025); False = 6.12.0
    table_reservation_fix: bool = False  # 0862438c9048 (2026): 7.0, 6.12.y from 6.12.75 (kernel_image.py)
    deferred_struct_page_init: bool = True  # CONFIG_DEFERRED_STRUCT_PAGE_INIT, on in distribution kernels
    watermark_scale_factor: int = 10  # vm.watermark_scale_factor default
    min_free_kbytes: int | None = None  # None: Linux's formula
    hashdist: bool = False  # fixup_hashdist: off on a single-node TD, so the big hashes come from memblock
    # Measured, not assumed: Debian's 6.12.117+deb13-cloud-amd64 run after the Python firmware (ovmf-x64-2025.02,
    # 1 vCPU) by `lazyaccept boot -m 4G -smp 1 --initrd INITRAMFS --append "console=ttyS0 nokaslr" --run-kernel`
    # and the same with -m 8G, read from the addresses of its accepts and its phases (guest/kernel_progress.py):
    # - percpu: "percpu: Embedded 66 pages/cpu ... u2097152", a 2 MiB unit per CPU (PMD-sized atom);
    # - the other early memblock allocations before the memmap (page tables, NODE_DATA, the log buffer, ACPI
    #   copies) together fit in the 2 MiB unit at the top of memory: the memmap lay right below it at both sizes;
    # - while the watermarks are zero every page-allocator call accepts one chunk: mm init's took all 32 chunks of
    #   the one section memblock_free_all frees; between deferred page init and init_per_zone_wmark_min the kernel
    #   made 94 calls at 4 GiB and 121 at 8 GiB, i.e. 67 plus 27 per 32 memory blocks (each block's sysfs device,
    #   add_memory_block and its kernfs nodes, allocates). None: that measured count for this TD.
    # prewmark_alloc_bytes, what those calls take, is not measured: it only matters when it exceeds what they accept.
    percpu_unit_bytes: int = 2 * MiB
    misc_memblock_bytes: int = 2 * MiB
    prewmark_mm_init_calls: int = 32
    prewmark_initcall_calls: int | None = None
    prewmark_alloc_bytes: int = 32 * MiB

    def __post_init__(self) -> None:
        if self.accept_memory not in ("lazy", "eager"):
            raise ConfigError(f"accept_memory must be 'lazy' or 'eager', got {self.accept_memory!r}")


@dataclass
class Zone:
    name: str
    start: int
    end: int
    ratio: int
    managed: int = 0
    wmark_min: int = 0
    wmark_low: int = 0
    wmark_high: int = 0
    wmark_promo: int = 0
    lowmem_reserve: dict[str, int] = field(default_factory=dict)  # bytes kept from allocations aimed at zone X


@dataclass
class Phase:
    name: str
    ns: int
    accepted: dict[str, int]  # bytes accepted during the phase, by actor
    notes: list[str] = field(default_factory=list)

    @property
    def accepted_bytes(self) -> int:
        return sum(self.accepted.values())


@dataclass
class Allocation:
    ranges: list[tuple[int, int]]
    accepted_bytes: int = 0  # chunks accepted to satisfy it (cond_accept_memory)
    ns: int = 0

    @property
    def size(self) -> int:
        return sum(e - s for s, e in self.ranges)


def accept_concurrency(workers: int) -> int:
    """How many of `workers` CPUs accept at once when each takes the next chunk off the list.

    Chunk j's accept_memory(c, 4 MiB) covers units 2j..2j+2 (guard unit included), so it overlaps chunks j-1 and
    j+1 on the accepting_list and waits for them: neighbours never run together, and in steady state about every
    other worker accepts while the rest wait (two workers are fully serialised).
    """
    return max(1, (workers + 1) // 2)


def reserve_unaccepted_range(address: int, table_bytes: int, *, fixed: bool = False) -> tuple[int, int]:
    """drivers/firmware/efi/efi.c reserve_unaccepted: the range memblock_add()s and reserves for the table.
    6.12 aligns the table's size, not its end (start = PAGE_ALIGN_DOWN(address), size = PAGE_ALIGN(bytes)), so a
    table starting inside its page can end past the range; 0862438c9048 aligns the end instead."""
    start = align_down(address, PAGE_4K)
    end = align_up(address + table_bytes, PAGE_4K) if fixed else start + align_up(table_bytes, PAGE_4K)
    return start, end


def min_free_kbytes(lowmem_bytes: int) -> int:
    """calculate_min_free_kbytes: clamp(isqrt(lowmem_kbytes * 16), 128, 262144)."""
    return min(max(isqrt(lowmem_bytes // KiB * 16), 128), 262144)


def alloc_large_system_hash_bytes(kernel_bytes: int, all_bytes: int, scale: int, bucket: int = 8) -> int:
    """alloc_large_system_hash(numentries=0, high_limit=0): one bucket per 2^scale bytes, the scale growing by one
    each time memory quadruples above 64 GiB, a power of two, at most 1/16 of memory and 2^31 buckets."""
    n = align_up(kernel_bytes // PAGE_4K, MiB // PAGE_4K)
    adapt = ADAPT_SCALE_NPAGES
    while adapt < n:
        scale += 1
        adapt <<= 2
    n = n >> (scale - 12) if scale > 12 else n << (12 - scale)
    if n * bucket < PAGE_4K:
        n = PAGE_4K // bucket
    n = 1 << max(0, (n - 1).bit_length())
    n = min(n, (all_bytes >> 4) // bucket, 0x80000000)
    return bucket << (n.bit_length() - 1)


# ----------------------------------------------------------------------------- the kernel's view of the bitmap


class UnacceptedMemory:
    """drivers/firmware/efi/unaccepted_memory.c over an UnacceptedTable, accepting through a TdxAccepter.

    `readable_bytes` is how much of the bitmap is mapped (None: all of it); a scan reading a bitmap word beyond it
    is the page fault of the 67000M reports (reserve_unaccepted under-reserving an unaligned table).
    """

    def __init__(self, table: UnacceptedTable, accepter: TdxAccepter, address: int = 0, readable: int | None = None):
        self.table = table
        self.accepter = accepter
        self.address = address
        self.readable = readable

    def _clip(self, start: int, end: int) -> tuple[int, int] | None:
        """Unit range [u0, u1) accept_memory and range_contains_unaccepted_memory look at, guard unit included."""
        t = self.table
        if start < t.phys_base:
            start = t.phys_base
        if end < t.phys_base:
            return None
        start -= t.phys_base
        end -= t.phys_base
        if end % t.unit_size == 0:
            end += t.unit_size  # the guard unit
        end = min(end, t.nbits * t.unit_size)
        if start >= end:
            return None
        u0, u1 = start // t.unit_size, -(-end // t.unit_size)
        self._read_words(u0, u1)
        return u0, u1

    def _read_words(self, u0: int, u1: int) -> None:
        if self.readable is None or u1 <= u0:
            return
        first, last = u0 // 64, (u1 - 1) // 64
        bad = max(first, self.readable // 8)
        if bad <= last:
            gpa = self.address + TABLE_HEADER_BYTES + bad * 8
            raise GuestCrash(
                "oops",
                f"BUG: unable to handle page fault for address {gpa:#x} in accept_memory: bitmap word {bad} lies "
                f"past the {self.readable:#x} mapped bytes of the unaccepted memory table (reserve_unaccepted)",
                gpa,
            )

    def range_contains_unaccepted(self, start: int, end: int) -> bool:
        r = self._clip(start, end)
        return r is not None and bool(self.table.bits.total(r[0], r[1], bool))

    def accept_memory(self, start: int, size: int, *, vcpu: int | None, actor: str) -> AcceptResult:
        """accept_memory(start, size): each run of set bits to arch_accept_memory, then cleared."""
        res = AcceptResult()
        r = self._clip(start, start + size)
        if r is None:
            return res
        for a, b in self.table.unit_runs(*r):
            res.add(self.accepter.accept(self.table.phys(a), self.table.phys(b), vcpu=vcpu, actor=actor))
            self.table.bits.set(a, b, False)
        return res

    def accept_chunks(self, start: int, count: int, *, actor: str) -> AcceptResult:
        """`count` consecutive chunks from `start`, each accept_memory(c, 4 MiB), in address order, in closed form.

        Chunk j clears its window of units (guard included) before chunk j+1 runs, so with 2 MiB units chunk j
        accepts the set units among 2j+1 and 2j+2 (units 0-2 for the first): the union is every set unit in
        [start, end + 1 unit), with one arch_accept_memory call per chunk and run of set units it finds. No call is
        1 GiB long, so no 1G TDCALL is issued. The cost is counted, not charged: the caller distributes it over the
        CPUs that did the work.
        """
        res = AcceptResult()
        t = self.table
        r = self._clip(start, start + count * CHUNK_BYTES)
        if r is None:
            return res
        u = CHUNK_BYTES // t.unit_size  # units per chunk (0 when units are larger than a chunk)
        base = (start - t.phys_base) // t.unit_size
        for a, b in t.unit_runs(*r):
            self.accepter.counters.arch_calls += _chunk_calls(a - base, b - base, u, count)
            res.add(self.accepter.accept(t.phys(a), t.phys(b), vcpu=None, actor=actor, single_call=False))
            t.bits.set(a, b, False)
        return res


# ----------------------------------------------------------------------------- the kernel


class Linux:
    """One Linux 6.12 guest from handoff to a running page allocator; every accept through the TDX module."""

    def __init__(self, tdx: TdxModule, handoff: Handoff, config: LinuxConfig | None = None):
        self.tdx = tdx
        self.handoff = handoff
        self.config = config or LinuxConfig()
        self.vcpus = tdx.num_vcpus
        self.counters = LinuxAcceptCounters()
        self.accepter = TdxAccepter(tdx, self.counters)
        self.phases: list[Phase] = []
        self.memblock: RangeMap[int] = RangeMap(NOT_MEMORY)
        self.buddy: RangeMap[int] = RangeMap(USED)
        self.zones: list[Zone] = []
        self.memblock_allocs: dict[str, tuple[int, int]] = {}
        self.watermarks_ready = False
        self.notes: list[str] = []
        self.unaccepted: UnacceptedMemory | None = None
        if self.config.unaccepted_memory and handoff.table is not None:
            self.unaccepted = UnacceptedMemory(handoff.table.copy(), self.accepter, handoff.table_address or 0)
        elif handoff.table is not None:
            self.notes.append("kernel without unaccepted-memory support ignores the table")

    # ------------------------------------------------------------------------- phases and time

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """A phase ends at a barrier: every vCPU's clock moves to the slowest one's."""
        self._barrier()
        t0 = max(self.tdx.clocks_ns)
        acc0 = dict(self.tdx.accepted_by_actor)
        ph = Phase(name, 0, {})
        try:
            yield ph
        finally:
            self._barrier()
            ph.ns = max(self.tdx.clocks_ns) - t0
            ph.accepted = {k: v - acc0.get(k, 0) for k, v in self.tdx.accepted_by_actor.items() if v != acc0.get(k, 0)}
            self.phases.append(ph)

    def _barrier(self) -> None:
        top = max(self.tdx.clocks_ns)
        for v, clk in enumerate(self.tdx.clocks_ns):
            if clk < top:
                self.tdx.charge(v, top - clk)

    def _spread(self, ns: int, cpus: int) -> None:
        """Work of `ns` done evenly by vCPUs 0..cpus-1."""
        cpus = max(1, min(cpus, self.vcpus))
        for v in range(cpus):
            self.tdx.charge(v, -(-ns // cpus))

    def _copy_ns(self, n_bytes: int) -> int:
        return self.tdx.profile.bytes_ns(n_bytes, self.tdx.profile.copy_bytes_per_s)

    # ------------------------------------------------------------------------- boot

    def boot(self) -> list[Phase]:
        """From the handoff to /init, as the kernel's own phases go (kernel_progress.PHASE_ENTRIES): start_kernel's
        memblock allocations; mm_core_init (SWIOTLB from mem_init, memblock_free_all, the allocations made while the
        watermarks are zero); kernel_init and the initcalls (deferred page init, more such allocations, then
        init_per_zone_wmark_min)."""
        cfg = self.config
        with self.phase("linux-early"):
            self._setup_memblock()
            self._early_allocations()
        with self.phase("linux-mm-init") as ph:
            self._swiotlb()
            deferred = self._free_all()
            self._prewmark_allocations(ph, cfg.prewmark_mm_init_calls, 0)
        with self.phase("linux-initcalls") as ph:
            if deferred:
                self._deferred_init(deferred, cfg.accept_memory == "eager", ph)
            calls = cfg.prewmark_initcall_calls
            if calls is None:
                calls = PREWMARK_CALLS_BASE + self.memory_blocks() * PREWMARK_CALLS_PER_32_BLOCKS // 32
            self._prewmark_allocations(ph, calls, cfg.prewmark_alloc_bytes)
            self._setup_watermarks()
        return self.phases

    def _setup_memblock(self) -> None:
        for e in self.handoff.e820:
            if e.type == E820Type.RAM:
                self.memblock.set(e.start, e.end, MB_FREE)
        self._reserve(0, MiB)  # setup_arch keeps the first 1 MiB away from the kernel's allocators
        for r in self.handoff.loaded:
            self._reserve(r.start, r.end)
        # arch/x86/platform/efi/quirks.c efi_reserve_boot_services (6.12): boot services code and data stay
        # reserved until efi_free_boot_services, after mm init; so top-down allocations below 4 GiB go beneath them
        for d in self.handoff.memory_map:
            if d.type in (EfiMemoryType.EfiBootServicesCode, EfiMemoryType.EfiBootServicesData):
                self._reserve(d.physical_start, d.end)
        if self.unaccepted is not None:
            addr = self.unaccepted.address
            size = TABLE_HEADER_BYTES + self.unaccepted.table.bitmap_bytes
            start, end = reserve_unaccepted_range(addr, size, fixed=self.config.table_reservation_fix)
            self.memblock.set(start, end, MB_RESERVED)  # memblock_add + memblock_reserve: mapped and kept
            mapped_end = end
            while self.memblock.get(mapped_end) != NOT_MEMORY:
                mapped_end = self.memblock.run_at(mapped_end)[1]
            readable = mapped_end - (addr + TABLE_HEADER_BYTES)
            if readable < self.unaccepted.table.bitmap_bytes:
                self.unaccepted.readable = readable
                self.notes.append(
                    f"unaccepted table at {addr:#x} ({size:#x} bytes) ends at {addr + size:#x}, but only "
                    f"[{start:#x}, {end:#x}) is reserved and mapped: the last "
                    f"{addr + size - mapped_end} bytes of the bitmap are unreadable"
                )

    def _reserve(self, start: int, end: int) -> None:
        self.memblock.update(start, end, lambda v: MB_RESERVED if v == MB_FREE else v)

    def _early_allocations(self) -> None:
        cfg = self.config
        ram = self.memblock.total(0, self.memblock.limit, lambda v: v != NOT_MEMORY)
        if cfg.misc_memblock_bytes:
            self.memblock_alloc("misc", cfg.misc_memblock_bytes, PAGE_4K, actor=Actor.LINUX_MEMBLOCK)
        sections = self._present_sections()
        self.memblock_alloc(
            "memmap",
            sections * (SECTION_BYTES // PAGE_4K) * STRUCT_PAGE_BYTES,
            PAGE_2M,
            lo=MAX_DMA_ADDRESS,
            actor=Actor.LINUX_MEMMAP,
        )
        self.memblock_alloc(
            "percpu", self.vcpus * cfg.percpu_unit_bytes, PAGE_2M, lo=MAX_DMA_ADDRESS, actor=Actor.LINUX_MEMBLOCK
        )
        if not cfg.hashdist:
            free = self.memblock.total(0, self.memblock.limit, lambda v: v == MB_FREE)
            self.memblock_alloc(
                "dentry-hash", alloc_large_system_hash_bytes(free, ram, 13), 64, actor=Actor.LINUX_MEMBLOCK
            )
            self.memblock_alloc(
                "inode-hash", alloc_large_system_hash_bytes(free, ram, 14), 64, actor=Actor.LINUX_MEMBLOCK
            )

    def _swiotlb(self) -> None:
        """kernel/dma/swiotlb.c (6.12), which every TDX guest bounces DMA through: arch/x86/mm/mem_encrypt.c
        mem_encrypt_setup_arch sizes it 6% of memory clamped to [64 MiB, 1 GiB], in whole 128-slab segments
        (swiotlb_adjust_size); swiotlb_adjust_nareas rounds the slab count up to a power of two. mem_init's
        pci_iommu_alloc then runs swiotlb_init_remap: the buffer from memblock_alloc_low (x86 sets SWIOTLB_ANY only
        on an SME host), then the slots array, PAGE_ALIGN(slabs x io_tlb_slot), top-down anywhere (memblock_alloc),
        which is what it accepts on a TD whose memory below 4 GiB the firmware accepted."""
        ram = self.memblock.total(0, self.memblock.limit, lambda v: v != NOT_MEMORY)  # memblock_phys_mem_size
        size = min(max(ram * 6 // 100, IO_TLB_DEFAULT_SIZE), GiB)
        slabs = align_up(-(-size // IO_TLB_SIZE), IO_TLB_SEGSIZE)
        slabs = 1 << (slabs - 1).bit_length()
        # A buffer that does not fit is halved (whole segments) and retried down to IO_TLB_MIN_SLABS; then the kernel
        # boots on without one (a warning, no panic): swiotlb_init_remap since 8d58aa484920 (6.2), so 6.12 and 7.x.
        while self._memblock_find(slabs * IO_TLB_SIZE, PAGE_4K, 0, LOW_LIMIT) is None:
            if slabs <= IO_TLB_MIN_SLABS:
                self.notes.append(f"swiotlb: no bounce buffer fits below 4 GiB ({human_size(slabs * IO_TLB_SIZE)})")
                return
            slabs = align_up(slabs >> 1, IO_TLB_SEGSIZE)
        self.memblock_alloc("swiotlb", slabs * IO_TLB_SIZE, PAGE_4K, hi=LOW_LIMIT, actor=Actor.LINUX_MEMBLOCK)
        self.memblock_alloc("swiotlb-slots", align_up(slabs * IO_TLB_SLOT_BYTES, PAGE_4K), PAGE_4K,
                            actor=Actor.LINUX_MEMBLOCK)

    def memory_blocks(self) -> int:
        """The memory block devices memory_dev_init registers: probe_memory_block_size (arch/x86/mm/init_64.c,
        6.12) picks 128 MiB below 64 GiB of memory, above it in a guest the largest size up to 2 GiB that divides
        the end of memory; one block per size-aligned range holding memory."""
        end = max((e for s, e, v in self.memblock.runs() if v != NOT_MEMORY), default=0)
        size = SECTION_BYTES
        if end >= LARGE_BLOCK_MEMORY:
            size = MAX_BLOCK_BYTES
            while size > SECTION_BYTES and end % size:
                size //= 2
        return self._present_sections(size)

    def _present_sections(self, section: int = SECTION_BYTES) -> int:
        n = 0
        last = -1
        for s, e, v in self.memblock.runs():
            if v == NOT_MEMORY:
                continue
            first = max(s // section, last + 1)
            end_sec = (e - 1) // section
            if end_sec >= first:
                n += end_sec - first + 1
                last = end_sec
        return n

    def memblock_alloc(
        self, name: str, size: int, align: int, *, lo: int = 0, hi: int | None = None, actor: str
    ) -> tuple[int, int]:
        """memblock_alloc_range_nid: the highest free fit below hi, reserved, accepted, then written (zeroed)."""
        found = self._memblock_find(size, align, lo, self.memblock.limit if hi is None else hi)
        if found is None:
            raise GuestCrash("panic", f"Failed to allocate {human_size(size)} for {name} from memblock")
        self.memblock.set(found, found + size, MB_RESERVED)
        if self.unaccepted is not None:
            self.unaccepted.accept_memory(found, size, vcpu=0, actor=actor)
        self.tdx.check_access(found, size, "write", actor=actor, vcpu=0)
        self.tdx.charge(0, self._copy_ns(size) if name != "memmap" else 0)  # zeroing; memmap init is timed later
        self.memblock_allocs[name] = (found, found + size)
        return found, found + size

    def _memblock_find(self, size: int, align: int, lo: int, hi: int) -> int | None:
        """memblock_find_in_range_node, top-down: the highest aligned free fit in [lo, hi), or None."""
        for s, e, v in reversed(list(self.memblock.runs(lo, hi))):
            found = align_down(e - size, align)
            if v == MB_FREE and found >= s:
                return found
        return None

    # ------------------------------------------------------------------------- memblock_free_all, deferred init

    def _free_all(self) -> list[tuple[int, int]]:
        """memblock_free_all: every free range to the buddy allocator, but for the top zone with deferred struct
        page init only up to its first deferred pfn (mm/mm_init.c defer_init, 6.12: one section's worth of pages,
        then the next section boundary); the rest is returned for deferred init (page_alloc_init_late)."""
        self.zones = [Zone(n, s, e, r) for n, s, e, r in ZONE_LAYOUT]
        eager = self.config.accept_memory == "eager"
        top = self.zones[-1]
        deferred_ranges: list[tuple[int, int]] = []
        first = next((align_up(max(s, top.start), PAGE_4K) for s, e, v in self.memblock.runs(top.start, top.end)
                      if v != NOT_MEMORY), top.end)
        first_deferred = min(top.end, align_up(first + SECTION_BYTES, SECTION_BYTES))
        for s, e, v in self.memblock.runs():
            # __free_memory_core frees whole pages only: PFN_UP(start) to PFN_DOWN(end) (mm/memblock.c, 6.12);
            # a reservation that ends inside a page (a table the firmware placed unaligned) keeps that page
            s, e = align_up(s, PAGE_4K), align_down(e, PAGE_4K)
            if v != MB_FREE or s >= e:
                continue
            for z in self.zones:
                zs, ze = max(s, z.start), min(e, z.end)
                if zs >= ze:
                    continue
                z.managed += ze - zs
                if z is top and self.config.deferred_struct_page_init and ze > first_deferred:
                    if zs < first_deferred:
                        self._free_range_early(zs, first_deferred, eager)
                    deferred_ranges.append((max(zs, first_deferred), ze))
                else:
                    self._free_range_early(zs, ze, eager)
        late = sum(e - s for s, e in deferred_ranges)
        early = sum(z.managed for z in self.zones) - late
        self.tdx.charge(0, self._copy_ns(early // PAGE_4K * STRUCT_PAGE_BYTES))  # struct pages initialised now
        return deferred_ranges

    def _free_range_early(self, s: int, e: int, eager: bool) -> None:
        """memblock_free_all's __free_pages_memory on the boot CPU: naturally aligned blocks, largest first."""
        head_end = min(align_up(s, CHUNK_BYTES), e)
        tail_start = max(align_down(e, CHUNK_BYTES), head_end)
        for bs, be in _aligned_blocks(s, head_end) + _aligned_blocks(tail_start, e):
            if self.unaccepted is not None and self.unaccepted.range_contains_unaccepted(bs, be):
                self.unaccepted.accept_memory(bs, be - bs, vcpu=0, actor=Actor.LINUX_BUDDY)
            self.buddy.set(bs, be, FREE)
        if head_end < tail_start:
            self._list_chunks(head_end, tail_start, eager, vcpus=1)

    def _deferred_init(self, ranges: list[tuple[int, int]], eager: bool, ph: Phase) -> None:
        """deferred_init_memmap: struct pages initialised and freed by the node's CPUs in section-sized pieces."""
        total = sum(e - s for s, e in ranges)
        threads = max(1, min(self.vcpus, -(-total // SECTION_BYTES)))
        for s, e in ranges:
            a = min(align_up(s, CHUNK_BYTES), e)
            b = max(align_down(e, CHUNK_BYTES), a)
            for ps, pe in ((s, a), (b, e)):
                if ps < pe:
                    # deferred_free_pages: "accept chunks smaller than MAX_PAGE_ORDER upfront"
                    if self.unaccepted is not None:
                        self.unaccepted.accept_memory(ps, pe - ps, vcpu=0, actor=Actor.LINUX_BUDDY)
                    self.buddy.set(ps, pe, FREE)
            if a < b:
                self._list_chunks(a, b, eager, vcpus=threads)
        self._spread(self._copy_ns(total // PAGE_4K * STRUCT_PAGE_BYTES), threads)
        ph.notes.append(f"deferred struct page init on {threads} CPU(s)")

    def _list_chunks(self, a: int, b: int, eager: bool, vcpus: int) -> None:
        """MAX_PAGE_ORDER blocks of [a, b): those whose window (guard unit included) holds a set bit go on the
        unaccepted list, or with accept_memory=eager are accepted now; the rest are free."""
        self.buddy.set(a, b, FREE)
        if self.unaccepted is None:
            return
        t = self.unaccepted.table
        units = self.unaccepted._clip(a, b)  # reads the bitmap words, as page_contains_unaccepted does
        if units is None:
            return
        for u0, u1 in t.unit_runs(*units):
            x0, x1 = t.phys(u0), t.phys(u1)
            c0 = max(a, align_up(x0 - CHUNK_BYTES - t.unit_size + 1, CHUNK_BYTES))
            c1 = min(b, align_down(x1 - 1, CHUNK_BYTES) + CHUNK_BYTES)
            if c0 < c1:
                self.buddy.set(c0, c1, UNACCEPTED)
        if eager:
            for s, e, v in list(self.buddy.runs(a, b)):
                if v == UNACCEPTED:
                    self._accept_chunk_run(s, (e - s) // CHUNK_BYTES, Actor.LINUX_EAGER, workers=vcpus, spread=vcpus)

    # ------------------------------------------------------------------------- chunks and watermarks

    def _accept_chunk_run(self, start: int, count: int, actor: str, *, workers: int, spread: int) -> AcceptResult:
        """try_to_accept_memory_one `count` times from `start`: accept, then free the chunks as accepted memory.
        The cost is spread over `spread` CPUs, `workers` of which accept at once (bandwidth sharing)."""
        assert self.unaccepted is not None
        with self.tdx.parallel(workers):
            res = self.unaccepted.accept_chunks(start, count, actor=actor)
        self.buddy.set(start, start + count * CHUNK_BYTES, FREE)
        self.counters.chunks_accepted += count
        self._spread(res.cost_ns, spread)
        return res

    def _take_chunks(self, z: Zone, count: int) -> list[tuple[int, int]]:
        """The first `count` chunks of the zone's unaccepted list (lowest address first) as (start, n) runs."""
        out = []
        for s, e, v in self.buddy.runs(z.start, z.end):
            if count <= 0:
                break
            if v == UNACCEPTED:
                n = min(count, (e - s) // CHUNK_BYTES)
                out.append((s, n))
                count -= n
        return out

    def unaccepted_bytes(self, z: Zone) -> int:
        return self.buddy.total(z.start, z.end, lambda v: v == UNACCEPTED)

    def free_bytes(self, z: Zone) -> int:
        """NR_FREE_PAGES minus NR_UNACCEPTED: accepted free memory."""
        return self.buddy.total(z.start, z.end, lambda v: v == FREE)

    def _setup_watermarks(self) -> None:
        """init_per_zone_wmark_min: min_free_kbytes, __setup_per_zone_wmarks, setup_per_zone_lowmem_reserve."""
        lowmem = sum(z.managed for z in self.zones)
        kbytes = self.config.min_free_kbytes or min_free_kbytes(lowmem)
        pages_min = kbytes // 4
        lowmem_pages = max(1, lowmem // PAGE_4K)
        for z in self.zones:
            managed = z.managed // PAGE_4K
            wmin = pages_min * managed // lowmem_pages
            step = max(wmin >> 2, managed * self.config.watermark_scale_factor // 10000)
            z.wmark_min, z.wmark_low = wmin * PAGE_4K, (wmin + step) * PAGE_4K
            z.wmark_high, z.wmark_promo = (wmin + 2 * step) * PAGE_4K, (wmin + 3 * step) * PAGE_4K
        for i, z in enumerate(self.zones):
            above = 0
            for upper in self.zones[i + 1 :]:
                above += upper.managed
                z.lowmem_reserve[upper.name] = above // z.ratio if z.managed else 0
        self.watermarks_ready = True

    def _prewmark_allocations(self, ph: Phase, calls: int, n_bytes: int) -> None:
        """`calls` page-allocator calls taking `n_bytes` in all before init_per_zone_wmark_min, all watermarks zero
        (see cond_accept_memory above): each call accepts a chunk of the first zone it visits (Normal first) while
        that zone has any; a lower zone is visited, and accepts, only for what the zones above cannot give."""
        cfg = self.config
        want = align_up(n_bytes, PAGE_4K)
        for z in reversed(self.zones):
            if not z.managed:
                continue
            chunks = self.unaccepted_bytes(z) // CHUNK_BYTES
            if chunks and cfg.watermark_zero_fix:
                deficit = max(0, want - self.free_bytes(z))
                k = min(chunks, max(calls, -(-deficit // CHUNK_BYTES)))
                for s, n in self._take_chunks(z, k):
                    self._accept_chunk_run(s, n, Actor.LINUX_BUDDY, workers=1, spread=1)
                ph.notes.append(f"watermarks zero: one chunk per allocation call, {human_size(k * CHUNK_BYTES)}")
            calls = 0  # the calls were served by this zone
            want -= self._take(z, min(want, self.free_bytes(z)), Actor.LINUX_BUDDY, [])
            if not want:
                return
        if want:
            raise GuestCrash(
                "oom",
                f"out of memory before watermarks were set: {human_size(want)} short; watermarks are zero, so "
                "cond_accept_memory accepts nothing (6.12 before 800f1059c99e)",
            )

    # ------------------------------------------------------------------------- allocation

    def alloc(
        self, n_bytes: int, *, workers: int = 1, touch_passes: int = 1, actor: str = Actor.LINUX_BUDDY
    ) -> Allocation:
        """Allocate n_bytes for a task running on `workers` vCPUs (0..workers-1), as get_page_from_freelist would:
        Normal first, then DMA32, then DMA, each above its min watermark (plus lowmem_reserve for lower zones),
        accepting chunks so that free memory stays at the promo watermark. The task then writes the memory
        `touch_passes` times (the kernel zeroing it counts as one). Reclaim is not modelled: running out is an OOM.
        """
        if not self.watermarks_ready:
            raise RuntimeError("boot() first")
        workers = max(1, min(workers, self.vcpus))
        want = align_up(n_bytes, PAGE_4K)
        alloc = Allocation([])
        accept = AcceptResult()
        order = list(reversed([z for z in self.zones if z.managed]))
        target = order[0].name if order else "Normal"
        active = accept_concurrency(workers)
        for z in order:
            if not want:
                break
            chunks = self.unaccepted_bytes(z) // CHUNK_BYTES
            if chunks:
                need = z.wmark_promo + want - self.free_bytes(z)
                k = min(chunks, max(0, -(-need // CHUNK_BYTES)))
                for s, n in self._take_chunks(z, k):
                    with self.tdx.parallel(active):
                        part = self.unaccepted.accept_chunks(s, n, actor=actor)  # type: ignore[union-attr]
                    self.buddy.set(s, s + n * CHUNK_BYTES, FREE)
                    self.counters.chunks_accepted += n
                    accept.add(part)
                    alloc.accepted_bytes += n * CHUNK_BYTES
            floor = z.wmark_min + (z.lowmem_reserve.get(target, 0) if z.name != target else 0)
            take = min(want, max(0, self.free_bytes(z) - floor))
            want -= self._take(z, take, actor, alloc.ranges)
        if want:
            raise GuestCrash("oom", f"Out of memory: {human_size(want)} of {human_size(n_bytes)} not allocated")
        touch = self._copy_ns(alloc.size) * touch_passes
        # The accepts run `active` at a time; everything else spreads over all workers.
        alloc.ns = max(-(-accept.cost_ns // active), -(-(accept.cost_ns + touch) // workers))
        for v in range(workers):
            self.tdx.charge(v, alloc.ns)
        return alloc

    def _take(self, z: Zone, n_bytes: int, actor: str, out: list[tuple[int, int]]) -> int:
        """Hand out n_bytes of the zone's free accepted memory (lowest first); the task writes it."""
        left = n_bytes
        for s, e, v in list(self.buddy.runs(z.start, z.end)):
            if left <= 0:
                break
            if v == FREE:
                n = min(left, e - s)
                self.buddy.set(s, s + n, USED)
                self.tdx.check_access(s, n, "write", actor=actor, vcpu=0)
                out.append((s, s + n))
                left -= n
        return n_bytes - left

    def free(self, alloc: Allocation) -> None:
        for s, e in alloc.ranges:
            self.buddy.set(s, e, FREE)
        alloc.ranges = []

    # ------------------------------------------------------------------------- reports

    def verify(self) -> list[str]:
        """Linux's record against the TDX module (after boot): every byte of memory it knows is accepted unless it
        sits in a chunk on an unaccepted list, and no set bit covers accepted memory (Linux would accept it again
        and panic)."""
        problems = []
        for s, e, v in self.memblock.runs():
            if v == NOT_MEMORY:
                continue
            for bs, be, bv in self.buddy.runs(s, e):
                if bv != UNACCEPTED and not self.tdx.is_accepted(bs, be - bs):
                    problems.append(f"[{bs:#x}, {be:#x}) is in use or free for Linux but not accepted")
        if self.unaccepted is not None:
            for s, e in self.unaccepted.table.set_ranges():
                if any(p.state == PageState.ACCEPTED for *_, p in self.tdx.pages.runs(s, e)):
                    problems.append(f"bit set over accepted memory in [{s:#x}, {e:#x})")
        return problems

    def zone(self, name: str) -> Zone:
        return next(z for z in self.zones if z.name == name)

    def summary(self) -> dict:
        return {
            "phases": {p.name: p.ns for p in self.phases},
            "accepted_by_actor": dict(self.tdx.accepted_by_actor),
            "memblock": {k: v[1] - v[0] for k, v in self.memblock_allocs.items()},
            "unaccepted_left": sum(self.unaccepted_bytes(z) for z in self.zones),
            "counters": self.counters.__dict__ | {"try_1g_software_rejects": self.counters.try_1g_software_rejects},
        }


def _chunk_calls(r0: int, r1: int, u: int, count: int) -> int:
    """arch_accept_memory calls that chunks 0..count-1 (u units each) make for the set units [r0, r1), relative to
    chunk 0: chunk 0 handles units 0..u, chunk j >= 1 units j*u+1..(j+1)*u (unit j*u was its predecessor's guard).
    With units larger than a chunk the count is an approximation: one call per run."""
    if u < 1:
        return 1
    calls = 1 if r0 <= u else 0
    j0 = max(1, -(-(r0 - u) // u))
    j1 = min(count - 1, (r1 - 2) // u)
    return calls + max(0, j1 - j0 + 1)


def _aligned_blocks(s: int, e: int) -> list[tuple[int, int]]:
    """__free_pages_memory's split of [s, e) into naturally aligned power-of-two blocks of at most 4 MiB."""
    out = []
    while s < e:
        order = min(MAX_PAGE_ORDER, ((s // PAGE_4K) & -(s // PAGE_4K)).bit_length() - 1 if s else MAX_PAGE_ORDER)
        while s + (PAGE_4K << order) > e:
            order -= 1
        out.append((s, s + (PAGE_4K << order)))
        s += PAGE_4K << order
    return out
