"""Guest memory backed by a CPU backend, mapped lazily and only where the TDX module says it is accepted.

This is the TDX module's GuestMemory backing while binaries run: Python-side firmware writes and guest code
see the same bytes. A page is mapped on first touch; a 2 MiB chunk is mapped whole only when all of it is
accepted, otherwise just the touched 4K pages, so host memory follows what the guest touches and an access to
pending memory is always caught. When pages stop being accepted-and-intact (accept zeroes them, REMOVE takes
them away) they are unmapped, so the next touch goes through the check again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from lazyaccept.cpu.backend import CpuBackend
from lazyaccept.rangemap import RangeMap
from lazyaccept.tdx.memory import CHUNK, Buffer, SparseBacking, is_zero, zero_views
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.units import PAGE_2M, PAGE_4K, align_down, align_up

# Writes of zeros at least this large into partly mapped memory write only the mapped runs (_zeros_into); smaller
# ones map the whole range as any write does, without testing the bytes.
ZERO_SPLIT = PAGE_2M


class EmulatedBacking:
    def __init__(self, backend: CpuBackend, tdx: TdxModule, prior: SparseBacking | None = None):
        self.backend = backend
        self.tdx = tdx
        self.prior = prior  # bytes written before the CPU existed (TD HOB, SEC's HOB list, tables)
        self.mapped: RangeMap[bool] = RangeMap(False, limit=tdx.private_limit)
        self.mapped_bytes = 0

    # Backing protocol ------------------------------------------------------------------------------------
    def read(self, gpa: int, size: int) -> bytes:
        """Mapped parts from the CPU's memory; accepted memory never touched reads as zero without mapping it."""
        parts = []
        for s, e, is_mapped in self.mapped.runs(gpa, gpa + size):
            if is_mapped:
                parts.append(self.backend.read(s, e - s))
            elif self.prior is not None and self._prior_has(s, e):
                parts.append(self.prior.read(s, e - s))
            else:
                parts.append(bytes(e - s))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        """What read returns, as views: the backend's own memory where mapped (no copy), shared zeros elsewhere."""
        for s, e, is_mapped in self.mapped.runs(gpa, gpa + size):
            if is_mapped:
                yield from self.backend.views(s, e - s)
            elif self.prior is not None and self._prior_has(s, e):
                yield from self.prior.views(s, e - s)
            else:
                yield from zero_views(e - s)

    def write(self, gpa: int, data: Buffer) -> None:
        end = gpa + len(data)
        # The mapping test first: it is cheap, and most small writes go to mapped memory.
        if self._untouched(gpa, end):
            if is_zero(data):
                self._zeros_into_untouched(gpa, end)
                return
        elif len(data) >= ZERO_SPLIT and is_zero(data):
            self._zeros_into(gpa, end)
            return
        self.ensure_mapped(gpa, end)
        self.backend.write(gpa, data)

    def write_views(self, gpa: int, size: int, views: Callable[[], Iterator[memoryview]]) -> None:
        """Write the `size` bytes `views()` yields exactly as one write of them would (zeros into untouched
        memory stay free), without joining them: views() is called again for the copy after a zero test."""
        end = gpa + size
        if self._untouched(gpa, end):
            if all(is_zero(view) for view in views()):
                self._zeros_into_untouched(gpa, end)
                return
        elif size >= ZERO_SPLIT and all(is_zero(view) for view in views()):
            self._zeros_into(gpa, end)
            return
        self.ensure_mapped(gpa, end)
        for view in views():
            self.backend.write(gpa, view)
            gpa += len(view)

    def _untouched(self, start: int, end: int) -> bool:
        return self.mapped.all_equal(start, end, lambda m: not m)

    def _zeros_into(self, start: int, end: int) -> None:
        """Zeros written over [start, end), part of it mapped: the mapped runs are written, the untouched ones
        stay free. A big zero write that merely begins or ends in a mapped page (an unaligned pool buffer filled
        64 MiB at a time: each chunk starts in the page the last one mapped) so maps and touches nothing new."""
        for s, e, is_mapped in list(self.mapped.runs(start, end)):
            if not is_mapped:
                self._zeros_into_untouched(s, e)
                continue
            for view in zero_views(e - s):
                self.backend.write(s, view)
                s += len(view)

    def _zero_written(self, start: int, end: int) -> None:
        """Zero [start, end) within pages, mapping nothing new: written where mapped, dropped from `prior` elsewhere."""
        for s, e, is_mapped in list(self.mapped.runs(start, end)) if start < end else []:
            if is_mapped:
                self.backend.write(s, bytes(e - s))
            elif self.prior is not None:
                self.prior.zero(s, e)

    def _zeros_into_untouched(self, start: int, end: int) -> None:
        # It reads as zero already, so large zero copies stay free.
        if self.prior is not None:
            self.prior.zero(start, end)

    def zero(self, start: int, end: int) -> None:
        # Only whole pages are unmapped; the mapped parts of a page at either unaligned end get zeros written
        # (SetMem(buffer, size, 0) of a pool buffer: unmapping them would break the page tables' 4K granularity).
        inner_start, inner_end = align_up(start, PAGE_4K), align_down(end, PAGE_4K)
        if inner_start >= inner_end:
            self._zero_written(start, end)
            return
        self._zero_written(start, inner_start)
        self._zero_written(inner_end, end)
        start, end = inner_start, inner_end
        for s, e, is_mapped in list(self.mapped.runs(start, end)):
            if is_mapped:
                self.backend.unmap(s, e - s)
                self.mapped_bytes -= e - s
        self.mapped.set(start, end, False)
        if self.prior is not None:
            self.prior.zero(start, end)

    # Mapping ---------------------------------------------------------------------------------------------
    def ensure_mapped(self, start: int, end: int) -> None:
        """Map [start, end) page-aligned (the caller has checked it is accepted)."""
        start, end = align_down(start, PAGE_4K), align_up(end, PAGE_4K)
        for s, e, is_mapped in list(self.mapped.runs(start, end)):
            if not is_mapped:
                self._map(*self._widen(s, e))

    def map_on_touch(self, gpa: int, size: int) -> bool:
        """A guest access faulted on unmapped memory: map it if accepted (True), else leave it (False)."""
        start, end = align_down(gpa, PAGE_4K), align_up(gpa + max(size, 1), PAGE_4K)
        if not self.tdx.is_accepted(start, end - start):
            return False
        self.ensure_mapped(start, end)
        return True

    def _widen(self, s: int, e: int) -> tuple[int, int]:
        """Grow [s, e) to whole 2 MiB chunks where the chunk is entirely accepted and unmapped."""
        lo, hi = align_down(s, PAGE_2M), align_up(e, PAGE_2M)
        if lo < s and self._chunk_free(lo):
            s = lo
        if hi > e and self._chunk_free(hi - PAGE_2M):
            e = hi
        return s, e

    def _chunk_free(self, base: int) -> bool:
        return self.tdx.pages.all_equal(
            base, base + PAGE_2M, lambda p: p.state == PageState.ACCEPTED
        ) and self.mapped.all_equal(base, base + PAGE_2M, lambda m: not m)

    def _map(self, s: int, e: int) -> None:
        self.backend.map(s, e - s)
        self.mapped.set(s, e, True)
        self.mapped_bytes += e - s
        if self.prior is not None and self._prior_has(s, e):
            self.backend.write(s, self.prior.read(s, e - s))

    def _prior_has(self, s: int, e: int) -> bool:
        if self.prior is None:
            return False
        chunks = self.prior.chunks
        first, last = s // CHUNK, (e - 1) // CHUNK
        if last - first > len(chunks):
            return any(first <= k <= last for k in chunks)
        return any(k in chunks for k in range(first, last + 1))
