"""What Linux starts from after ExitBootServices: e820, the EFI unaccepted-memory table, where the loader put things.

The record (`Handoff`) does not care how it was produced: the stub model (guest/stub_model.py) fills it as the 6.12
x86 EFI stub would; guest/handoff_check.py reads it back from a real stub run (boot_params, its e820 table, the
configuration table). `check_handoff` compares any record with the TDX module's truth. The table itself and the
stub's accept-or-mark rules are guest/unaccepted.py's.

Sources (read, not copied), Linux 6.12:
- arch/x86/coco/tdx/tdx-shared.c tdx_accept_memory / try_accept_one, shared by the stub and the kernel: per step
  try 1G, then 2M, then 4K; a size is tried only when the address is aligned to it and at least that much remains
  (both checked before any TDCALL), and any non-zero TDCALL status counts as failure of that size. Today's TDX
  modules reject 1G with OPERAND_INVALID, so a 1G TDCALL is issued, and fails, only at 1G-aligned addresses with at
  least 1 GiB left: never for the page allocator's 4 MiB chunks (Kirill Shutemov on LKML, 2024-01-09, reply to
  "x86/tdx: Optimize try_accept_memory()": the alignment check fails 511 times of 512, the length check the rest).
  When 4K fails too, the caller (arch_accept_memory) panics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from lazyaccept.errors import InputError
from lazyaccept.guest.acpi_check import AcpiView, check_acpi
from lazyaccept.guest.unaccepted import UnacceptedTable, encode_unaccepted_table
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import Actor
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.tdx.module import AcceptResult, AcceptStats, PageState, TdxModule
from lazyaccept.tdx.status import TdxStatus, status_class, status_name
from lazyaccept.units import PAGE_1G, PAGE_2M, PAGE_4K, align_down, align_up

STUB_ACTOR = Actor.STUB


class E820Type(IntEnum):
    """arch/x86/include/asm/e820/types.h."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    PMEM = 7
    SOFT_RESERVED = 0xEFFFFFFF


class GuestCrash(Exception):
    """The guest OS died: a panic, an oops or an OOM. A run outcome, like TdTerminated, not a user error."""

    def __init__(self, kind: str, message: str, gpa: int | None = None):
        self.kind = kind  # "panic" | "oops" | "oom"
        self.gpa = gpa
        super().__init__(f"Linux {kind}: {message}")


@dataclass(frozen=True)
class E820Entry:
    start: int
    size: int
    type: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class LoadedRange:
    """Something the loader placed in memory that the kernel must keep (kernel image, initrd, boot_params)."""

    name: str
    start: int
    end: int


# ----------------------------------------------------------------------------- the record


@dataclass
class Handoff:
    """What the OS finds when it starts: e820, the unaccepted-memory table and where the loader put things."""

    e820: list[E820Entry]
    table: UnacceptedTable | None
    table_address: int | None = None  # efi.unaccepted: where the table lives (None: no table installed)
    unaccepted_descriptors: list[tuple[int, int]] = field(default_factory=list)  # type-15 ranges at exit
    loaded: list[LoadedRange] = field(default_factory=list)
    kernel_supports_unaccepted: bool = True
    stub_accepted: list[tuple[int, int]] = field(default_factory=list)  # ranges the stub accepted itself
    stub_stats: AcceptStats = field(default_factory=AcceptStats)
    producer: str = "model"
    notes: list[str] = field(default_factory=list)
    memory_map: list[MemoryDescriptor] = field(default_factory=list)  # the UEFI map at ExitBootServices (real stubs)
    acpi: AcpiView | None = None  # the ACPI tables under the configuration table (real stubs; guest/acpi_check.py)
    acpi_error: str | None = None  # why they could not be read

    def ram_ranges(self) -> list[tuple[int, int]]:
        """E820 RAM, merged."""
        return merge_ranges((e.start, e.end) for e in self.e820 if e.type == E820Type.RAM)

    def loaded_named(self, name: str) -> list[LoadedRange]:
        return [r for r in self.loaded if r.name == name]

    def table_bytes(self) -> bytes:
        return encode_unaccepted_table(self.table) if self.table else b""


def merge_ranges(ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract_ranges(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    m: RangeMap[bool] = RangeMap(False)
    for s, e in ranges:
        m.set(s, e, True)
    for s, e in holes:
        m.set(s, e, False)
    return [(s, e) for s, e, v in m.runs() if v]


# ----------------------------------------------------------------------------- tdx_accept_memory


@dataclass
class LinuxAcceptCounters:
    """What the Linux accept path did, beyond the TDX module's own counters."""

    arch_calls: int = 0  # arch_accept_memory / tdx_accept_memory invocations
    loop_steps: int = 0  # iterations of tdx_accept_memory's loop = successful accepts
    tdcalls_1g: int = 0  # 1G TDCALLs issued (each OPERAND_INVALID on today's modules)
    chunks_accepted: int = 0  # 4 MiB page-allocator chunks taken off zone->unaccepted_pages

    @property
    def try_1g_software_rejects(self) -> int:
        """try_accept_one(1G) calls that failed the alignment or length check without a TDCALL."""
        return self.loop_steps - self.tdcalls_1g


class TdxAccepter:
    """arch/x86/coco/tdx/tdx-shared.c tdx_accept_memory through the TDX module, in closed form per run.

    `accept(start, end)` issues exactly the TDCALL sequence of one tdx_accept_memory(start, end) call: the failing 1G
    TDCALLs at 1G boundaries with 1 GiB left, 4K steps to a 2 MiB boundary, 2M steps while 2 MiB remains (falling
    back to 4K on any failure, which on a 4K-mapping host is PAGE_SIZE_MISMATCH then 512 4K accepts), 4K steps for
    the tail. Pages that are not yet accepted take the closed form (the TDX module's TdAcceptPages, whose sequence
    is identical for such pages); at the first already-accepted page the loop runs TDCALL by TDCALL and Linux
    panics, as "TDX: Failed to accept memory" does. tests/guest check the closed form against that literal loop.
    OPERAND_BUSY (fault injection only) is not modelled on this path.
    """

    def __init__(self, tdx: TdxModule, counters: LinuxAcceptCounters | None = None):
        self.tdx = tdx
        self.counters = counters or LinuxAcceptCounters()

    def accept(
        self, start: int, end: int, *, vcpu: int | None, actor: str, single_call: bool = True
    ) -> AcceptResult:
        """One tdx_accept_memory(start, end); with single_call=False, the union of several calls each shorter than
        1 GiB (no 1G TDCALL is then possible). vcpu=None counts the cost without charging a clock."""
        res = AcceptResult()
        if start >= end:
            return res
        if start % PAGE_4K or end % PAGE_4K:
            raise ValueError(f"tdx_accept_memory on unaligned [{start:#x}, {end:#x})")
        if single_call:
            self.counters.arch_calls += 1
        bad = self._first_accepted(start, end)
        stop = end if bad is None else max(start, align_down(bad, PAGE_2M))
        if single_call:
            self._one_g_attempts(start, stop, end, vcpu, actor, res)
        head = min(align_up(start, PAGE_2M), stop)
        mid = head + (stop - head) // PAGE_2M * PAGE_2M if stop == end else stop
        for s, e, size in ((start, head, PAGE_4K), (head, mid, PAGE_2M), (mid, stop, PAGE_4K)):
            if s < e:
                part = self.tdx.accept_pages(s, (e - s) // size, size, vcpu=vcpu, actor=actor)
                res.add(part)
                self.counters.loop_steps += part.accepted_4k + part.accepted_2m
                if not part.ok:
                    raise GuestCrash(
                        "panic",
                        f"TDX: Failed to accept memory at {part.failed_gpa:#x} ({status_name(part.status)})",
                        part.failed_gpa,
                    )
        if bad is not None:
            self.literal(stop, end, vcpu=0 if vcpu is None else vcpu, actor=actor, call_end=end, res=res)
        return res

    def literal(
        self, start: int, end: int, *, vcpu: int, actor: str, call_end: int | None = None, res: AcceptResult | None
    ) -> None:
        """tdx_accept_memory's loop TDCALL by TDCALL (for the failing path and as the reference in tests)."""
        call_end = end if call_end is None else call_end
        before = snapshot_stats(self.tdx.stats)
        status: int = TdxStatus.SUCCESS
        try:
            while start < end:
                size = 0
                for level, page in ((2, PAGE_1G), (1, PAGE_2M), (0, PAGE_4K)):
                    if start % page or call_end - start < page:
                        continue  # try_accept_one's checks, before any TDCALL
                    status = self.tdx.accept_rcx(start | level, vcpu=vcpu, actor=actor)
                    if level == 2:
                        self.counters.tdcalls_1g += 1
                    if status == TdxStatus.SUCCESS:
                        size = page
                        break
                if not size:
                    raise GuestCrash(
                        "panic", f"TDX: Failed to accept memory at {start:#x} ({status_name(status)})", start
                    )
                self.counters.loop_steps += 1
                start += size
        finally:
            if res is not None:
                res.add(stats_since(self.tdx.stats, before))

    def _one_g_attempts(self, start: int, stop: int, end: int, vcpu: int | None, actor: str, res: AcceptResult):
        """1G TDCALLs at each 1G boundary q in [start, stop) with end - q >= 1 GiB; all but the first in closed form."""
        first = align_up(start, PAGE_1G)
        last = min(stop - 1, end - PAGE_1G)
        if first > last:
            return
        n = (last - first) // PAGE_1G + 1
        before = snapshot_stats(self.tdx.stats)
        status = self.tdx.accept_rcx(first | 2, vcpu=0 if vcpu is None else vcpu, actor=actor)
        one = stats_since(self.tdx.stats, before)
        if status_class(status) != TdxStatus.OPERAND_INVALID:
            raise NotImplementedError("a TDX module that accepts 1G pages: use TdxAccepter.literal")
        if n > 1:
            self.tdx.stats.add(one, n - 1)
            if vcpu is not None:
                self.tdx.charge(vcpu, one.cost_ns * (n - 1))
        res.add(one, n)
        if vcpu is None:
            self.tdx.charge(0, -one.cost_ns)  # issued on vCPU 0 only because accept_rcx needs one: uncharge
        self.counters.tdcalls_1g += n

    def _first_accepted(self, start: int, end: int) -> int | None:
        for s, _e, p in self.tdx.pages.runs(start, end):
            if p.state == PageState.ACCEPTED:
                return s
        return None


def snapshot_stats(stats: AcceptStats) -> AcceptStats:
    copy = AcceptStats()
    copy.add(stats)
    return copy


def stats_since(stats: AcceptStats, before: AcceptStats) -> AcceptStats:
    d = snapshot_stats(stats)
    d.add(before, -1)
    return d


def _not_accepted(tdx: TdxModule, start: int, end: int) -> list[tuple[int, int]]:
    return merge_ranges((s, e) for s, e, p in tdx.pages.runs(start, end) if p.state != PageState.ACCEPTED)


# ----------------------------------------------------------------------------- the check


@dataclass
class HandoffCheck:
    problems: list[str] = field(default_factory=list)
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)  # pending RAM this kernel can never use
    would_lose_without_support_bytes: int = 0  # type-15 memory a kernel without support leaves out

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lost_bytes(self) -> int:
        return sum(e - s for s, e in self.lost_ranges)


def check_handoff(tdx: TdxModule, handoff: Handoff) -> HandoffCheck:
    """The record against the TDX module's truth.

    - every set bit covers RAM that is not accepted (a set bit over accepted memory makes Linux accept it again:
      PAGE_ALREADY_ACCEPTED, and Linux panics);
    - every e820 RAM byte is accepted or covered by a set bit (otherwise the kernel's first touch kills the TD);
    - the table and what the loader placed (kernel, initrd) lie in accepted memory;
    - lost memory: RAM the TDX module holds that is not accepted and not in e820 RAM; and how much type-15 memory a
      kernel without unaccepted-memory support would lose.
    """
    chk = HandoffCheck()
    table = handoff.table
    covered: RangeMap[bool] = RangeMap(False)
    if table is not None:
        for s, e in table.set_ranges():
            covered.set(s, e, True)
            if tdx.ram.total(s, e, lambda r: not r):
                chk.problems.append(f"bitmap marks [{s:#x}, {e:#x}) unaccepted but part of it is not RAM")
            acc = [(a, b) for a, b, p in tdx.pages.runs(s, e) if p.state == PageState.ACCEPTED]
            if acc:
                a, b = acc[0]
                chk.problems.append(
                    f"bitmap marks [{s:#x}, {e:#x}) unaccepted but [{a:#x}, {b:#x}) is already accepted: Linux would "
                    "accept it again (PAGE_ALREADY_ACCEPTED) and panic"
                )
        if handoff.table_address is not None:
            if not tdx.is_accepted(align_down(handoff.table_address, PAGE_4K), PAGE_4K):
                chk.problems.append(f"the table at {handoff.table_address:#x} is not in accepted memory")
    elif handoff.kernel_supports_unaccepted and any(
        _not_accepted(tdx, s, e) for s, e in handoff.ram_ranges()
    ):
        chk.problems.append("e820 RAM holds unaccepted memory but no unaccepted memory table was installed")
    for r in handoff.loaded:
        if not tdx.is_accepted(align_down(r.start, PAGE_4K), align_up(r.end, PAGE_4K) - align_down(r.start, PAGE_4K)):
            chk.problems.append(f"the loader put the {r.name} at [{r.start:#x}, {r.end:#x}) in memory not accepted")
    e820_ram = handoff.ram_ranges()
    for s, e in e820_ram:
        for ps, pe in _not_accepted(tdx, s, e):
            for cs, ce, c in covered.runs(ps, pe):
                if not c:
                    chk.problems.append(
                        f"e820 RAM [{cs:#x}, {ce:#x}) is neither accepted nor marked in the bitmap: the kernel's "
                        "first touch terminates the TD"
                    )
    ram_truth = [(s, e) for s, e, r in tdx.ram.runs() if r]
    for s, e in subtract_ranges(ram_truth, e820_ram):
        chk.lost_ranges += _not_accepted(tdx, s, e)
    chk.would_lose_without_support_bytes = sum(e - s for s, e in handoff.unaccepted_descriptors)
    if handoff.producer == "stub":  # a real firmware's handoff: Linux in a TD also needs its ACPI tables
        if handoff.acpi_error is not None:
            chk.problems.append(f"the ACPI tables are unreadable: {handoff.acpi_error}")
        else:
            chk.problems += check_acpi(handoff.acpi, handoff.memory_map, tdx.num_vcpus,
                                       side_effect_free_reader(tdx))
    return chk


def side_effect_free_reader(tdx: TdxModule):
    """Read guest memory for a report: a pointer into memory that is not accepted is an error in the handoff,
    not a guest access that terminates the TD."""

    def read(gpa: int, n: int) -> bytes:
        lo, hi = align_down(gpa, PAGE_4K), align_up(gpa + n, PAGE_4K)
        if gpa < 0 or not tdx.is_accepted(lo, hi - lo):
            raise InputError(f"the handoff points at {gpa:#x}, which is not accepted memory")
        return tdx.memory.backing.read(gpa, n)

    return read
