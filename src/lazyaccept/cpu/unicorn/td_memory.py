"""A TD's memory under unicorn: one host reservation behind every GPA, reachable by the guest only where the TDX
module says the page is accepted (private view) or the guest shared it with the VMM (shared view).

The reservation is an anonymous MAP_NORESERVE mapping as large as the TD's highest RAM address: the kernel backs
a page only when it is first written, so a 64 GiB TD costs what the firmware touches. The same bytes are the TDX
module's guest-memory backing (`HostRam` is a tdx.memory Backing), so an accept's zeroing, the VMM's ADDs and
Python-side reads all see what the guest wrote.

The reservation is mapped into each vCPU's unicorn twice, once at GPA 0 (private) and once at the shared bit
(shared), and never remapped (every vCPU of the TD sees the same bytes): which pages the guest may reach is
decided where every guest translation is made, the TLB fill (td_paging runs the page walk in Python, unicorn's
virtual-TLB mode), from the books kept here. unicorn's
mem_map/mem_unmap cost grows with its region count (10-25 ms each with ~2,400 regions: most of a boot's time
when each accept and each MapGPA made or split a region); a flush of its TLB is what a page leaving a view needs.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Iterator
from typing import Any

from unicorn import UC_PROT_ALL, Uc
from unicorn.unicorn_const import UC_CTL_TLB_FLUSH

from lazyaccept.rangemap import RangeMap
from lazyaccept.tdx.memory import Buffer, SparseBacking
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.units import PAGE_4K, GiB, align_down, align_up

# Python's mmap module names MAP_NORESERVE only from 3.13; without it a reservation larger than RAM plus swap
# fails under the kernel's default overcommit heuristic.
MAP_NORESERVE_LINUX = 0x4000


_ZERO_PAGE = bytes(PAGE_4K)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class HostRam:
    """GPA-addressed host memory [0, size): reads, writes and zeroing straight on the reservation."""

    def __init__(self, size: int):
        self.size = align_up(size, PAGE_4K)
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", MAP_NORESERVE_LINUX)
        self.map = mmap.mmap(-1, self.size, flags=flags)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.view = memoryview(self.map)

    @classmethod
    def for_td(cls, tdx: TdxModule) -> HostRam:
        """The TD's memory up to its highest RAM address (4 GiB at least: the firmware sits below it), made the
        TDX module's backing with what the VMM already ADDed."""
        top = max([4 * GiB] + [e for _s, e, is_ram in tdx.ram.runs() if is_ram])
        if isinstance(tdx.memory.backing, HostRam) and tdx.memory.backing.size == align_up(top, PAGE_4K):
            return tdx.memory.backing  # already the TD's (a restored snapshot's)
        ram = cls(top)
        ram.adopt(tdx.memory.backing)
        tdx.memory.backing = ram
        return ram

    def _check(self, gpa: int, size: int) -> None:
        if gpa < 0 or gpa + size > self.size:
            raise ValueError(f"[{gpa:#x}, {gpa + size:#x}) lies outside the TD's host memory [0, {self.size:#x})")

    def read(self, gpa: int, size: int) -> bytes:
        self._check(gpa, size)
        return bytes(self.view[gpa : gpa + size])

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        self._check(gpa, size)
        yield self.view[gpa : gpa + size].toreadonly()

    def write(self, gpa: int, data: Buffer) -> None:
        n = memoryview(data).nbytes
        self._check(gpa, n)
        self.view[gpa : gpa + n] = memoryview(data).cast("B")

    def zero(self, start: int, end: int) -> None:
        """Whole pages are given back to the kernel (they read as zero again), so accepting 2 GiB costs nothing."""
        start, end = max(start, 0), min(end, self.size)
        if start >= end:
            return
        lo, hi = align_up(start, PAGE_4K), align_down(end, PAGE_4K)
        if lo >= hi:
            self.view[start:end] = bytes(end - start)
            return
        self.view[start:lo] = bytes(lo - start)
        self.view[hi:end] = bytes(end - hi)
        self.map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def resident_runs(self) -> Iterator[tuple[int, int]]:
        """[start, end) runs of pages the kernel backs (mincore(2)): where anything was ever written or read;
        every other page reads as zero."""
        pages = self.size // PAGE_4K
        vec = (ctypes.c_ubyte * pages)()
        if _libc().mincore(ctypes.c_void_p(self.address), ctypes.c_size_t(self.size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed on the TD's host memory")
        flags = bytes(vec)
        page = flags.find(1)  # bit 0: resident
        while page >= 0:
            end = page
            while end < pages and flags[end] & 1:
                end += 1
            yield page * PAGE_4K, end * PAGE_4K
            page = flags.find(1, end)

    def nonzero_runs(self) -> Iterator[tuple[int, int]]:
        """[start, end) runs of pages holding a non-zero byte: what a copy of this memory must keep."""
        view = self.view
        for start, end in self.resident_runs():
            run = None
            for gpa in range(start, end, PAGE_4K):
                if view[gpa : gpa + PAGE_4K] != _ZERO_PAGE:
                    run = gpa if run is None else run
                elif run is not None:
                    yield run, gpa
                    run = None
            if run is not None:
                yield run, end

    def adopt(self, old: object) -> None:
        """Copy what a sparse backing holds (the VMM's ADDed bytes written before this memory existed)."""
        if isinstance(old, SparseBacking):
            for index, chunk in old.chunks.items():
                base = index * len(chunk)
                n = min(len(chunk), self.size - base)
                if n > 0:
                    self.view[base : base + n] = memoryview(chunk)[:n]


class AcceptedMapping:
    """What of the reservation the guest may reach: the TDX module's accepted pages in the private view, and the
    pages shared with the VMM at GPA | shared bit, onto the same host bytes (td_paging hands unicorn GPAs with the
    bit).

    One host page never backs both views: sharing a page is the VMM's REMOVE of the private one (its contents are
    gone), and converting it back is a re-AUG and ACCEPT, which zeroes it.

    The books are the TD's, not a vCPU's: every vCPU's unicorn is attached, and a page leaving a view flushes the
    TLB of each (a TD's accept or MapGPA changes what all of its vCPUs reach)."""

    def __init__(self, tdx: TdxModule, ram: HostRam, shared_bit: int):
        self.tdx = tdx
        self.ram = ram
        self.shared_bit = shared_bit
        self.mapped: RangeMap[bool] = RangeMap(False, limit=ram.size)  # the private view: accepted pages
        self.shared: RangeMap[bool] = RangeMap(False, limit=ram.size)  # by GPA without the shared bit
        self.cpus: list[Uc] = []
        self.regions = 2  # unicorn regions per vCPU: the two views
        self.tlb_flushes = 0
        self.handed: set[int] = set()  # page numbers (shared bit included) TLB fills returned since the last flush
        self._reachable: set[int] = set()  # page numbers known to be in their view
        self.code_pages: set[int] = set()  # page numbers a vCPU fetched code from (their writes stay on the slow path)
        self.on_loss: list[Callable[[], None]] = []  # told when a page leaves a view (the page walkers' memory)

    def attach(self, uc: Uc) -> None:
        """Map both views of the reservation into a vCPU's unicorn."""
        for base in (0, self.shared_bit):
            uc.mem_map_ptr(base, self.ram.size, UC_PROT_ALL, self.ram.address)
        self.cpus.append(uc)

    def sync(self, start: int = 0, end: int | None = None) -> None:
        """Follow the TDX module's accepted pages in [start, end): what the VMM ADDed, an accept, a REMOVE."""
        end = self.ram.size if end is None else min(end, self.ram.size)
        lost: list[tuple[int, int]] = []
        for s, e, state in self.tdx.state_ranges(start, end):
            self._follow(self.mapped, s, e, state == PageState.ACCEPTED, lost)
        self._lose(lost)

    def sync_shared(self, shared: list[tuple[int, int]], start: int, end: int) -> None:
        """Make the shared view of [start, end) those of `shared` (GPA ranges without the bit) that hold RAM."""
        end = min(end, self.ram.size)
        cursor = start
        lost: list[tuple[int, int]] = []
        for s, e in shared:
            s, e = max(s, start), min(e, end)
            if s >= e:
                continue
            if cursor < s:
                self._follow(self.shared, cursor, s, False, lost)
            for rs, re, is_ram in self.tdx.ram.runs(s, e):
                self._follow(self.shared, rs, re, bool(is_ram), lost)
            cursor = max(cursor, e)
        if cursor < end:
            self._follow(self.shared, cursor, end, False, lost)
        self._lose([(s | self.shared_bit, e | self.shared_bit) for s, e in lost])

    def _follow(self, book: RangeMap[bool], start: int, end: int, want: bool, lost: list[tuple[int, int]]) -> None:
        """Set the book; the runs that leave the view go to `lost`."""
        if not want:
            lost += [(s, e) for s, e, done in book.runs(start, end) if done]
        book.set(start, end, want)

    def _lose(self, lost: list[tuple[int, int]]) -> None:
        """Pages left a view (GPAs, shared bit included): forget them as reachable, and flush unicorn's TLBs if
        one of them was handed to unicorn since the last flush (a cached translation would still reach it). A
        page no TLB fill returned since cannot be in a TLB: the flush, and the refill of every vCPU's working set
        after it, is skipped (OVMF's IoMmu converts a fresh bounce buffer at every fw_cfg DMA)."""
        if not lost:
            return
        for forget in self.on_loss:
            forget()
        pages = self._reachable
        stale = False
        for s, e in lost:
            first, last = s >> 12, (e - 1) >> 12
            if last - first < len(pages):
                for page in range(first, last + 1):
                    pages.discard(page)
            else:
                for page in [p for p in pages if first <= p <= last]:
                    pages.discard(page)
            handed = self.handed
            if last - first < len(handed):
                stale = stale or any(page in handed for page in range(first, last + 1))
            else:
                stale = stale or any(first <= page <= last for page in handed)
        if stale:
            self.flush_tlb()

    def flush_tlb(self) -> None:
        for uc in self.cpus:
            binding: Any = uc  # the binding has no public TLB flush in 2.1.4; its private writer sends UC_CTL_*
            binding._Uc__ctl_w(UC_CTL_TLB_FLUSH)
        self.handed.clear()
        self.tlb_flushes += 1

    def is_mapped(self, gpa: int) -> bool:
        """May the guest reach the GPA (shared bit included)? Pages found reachable are remembered until they
        leave a view: a TLB fill asks this for every page-table entry and the leaf it walks."""
        page = gpa >> 12
        if page in self._reachable:
            return True
        book = self.shared if gpa & self.shared_bit else self.mapped
        gpa &= ~self.shared_bit
        if gpa < self.ram.size and book.get(gpa):
            self._reachable.add(page)
            return True
        return False
