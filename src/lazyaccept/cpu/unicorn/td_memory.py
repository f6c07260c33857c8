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
from collections.abc import Iterator
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

    def attach(self, uc: Uc) -> None:
        """Map both views of the reservation into a vCPU's unicorn."""
        for base in (0, self.shared_bit):
            uc.mem_map_ptr(base, self.ram.size, UC_PROT_ALL, self.ram.address)
        self.cpus.append(uc)

    def sync(self, start: int = 0, end: int | None = None) -> None:
        """Follow the TDX module's accepted pages in [start, end): what the VMM ADDed, an accept, a REMOVE."""
        end = self.ram.size if end is None else min(end, self.ram.size)
        lost = False
        for s, e, state in self.tdx.state_ranges(start, end):
            lost |= self._follow(self.mapped, s, e, state == PageState.ACCEPTED)
        if lost:
            self._flush_tlb()

    def sync_shared(self, shared: list[tuple[int, int]], start: int, end: int) -> None:
        """Make the shared view of [start, end) those of `shared` (GPA ranges without the bit) that hold RAM."""
        end = min(end, self.ram.size)
        cursor, lost = start, False
        for s, e in shared:
            s, e = max(s, start), min(e, end)
            if s >= e:
                continue
            if cursor < s:
                lost |= self._follow(self.shared, cursor, s, False)
            for rs, re, is_ram in self.tdx.ram.runs(s, e):
                lost |= self._follow(self.shared, rs, re, bool(is_ram))
            cursor = max(cursor, e)
        if cursor < end:
            lost |= self._follow(self.shared, cursor, end, False)
        if lost:
            self._flush_tlb()

    def _follow(self, book: RangeMap[bool], start: int, end: int, want: bool) -> bool:
        """Set the book; True when a page left the view (a translation unicorn cached may now be wrong)."""
        lost = not want and any(done for _s, _e, done in book.runs(start, end))
        book.set(start, end, want)
        return lost

    def _flush_tlb(self) -> None:
        for uc in self.cpus:
            binding: Any = uc  # the binding has no public TLB flush in 2.1.4; its private writer sends UC_CTL_*
            binding._Uc__ctl_w(UC_CTL_TLB_FLUSH)
        self.tlb_flushes += 1

    def is_mapped(self, gpa: int) -> bool:
        """May the guest reach the GPA (shared bit included)?"""
        book = self.shared if gpa & self.shared_bit else self.mapped
        gpa &= ~self.shared_bit
        return gpa < self.ram.size and book.get(gpa)
