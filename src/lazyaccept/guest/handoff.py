"""What Linux starts from after ExitBootServices: e820, the EFI unaccepted-memory table, where the loader put things.

The record (`Handoff`) does not care how it was produced: `modeled_handoff` builds it from the TDX module's truth the
way the 6.12 x86 EFI stub would; a later producer can fill it from a real stub run (boot_params at RSI, its e820
table, the configuration table). `check_handoff` compares any record with the TDX module's truth.

Sources (read, not copied), Linux 6.12:
- include/linux/efi.h: struct efi_unaccepted_memory {u32 version; u32 unit_size; u64 phys_base; u64 size;
  unsigned long bitmap[];}, LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID. `size` is the bitmap length in bytes; a set bit
  means "not yet accepted"; bit i lives in byte i/8, bit i%8 (little-endian unsigned longs).
- drivers/firmware/efi/libstub/unaccepted_memory.c: allocate_unaccepted_bitmap (lowest and highest type-15
  addresses rounded to the 2 MiB unit, AllocatePool(EfiACPIReclaimMemory), zeroed, installed as a config table)
  and process_unaccepted_memory (a range shorter than 2 units accepted whole, an unaligned head and tail accepted,
  anything outside the bitmap accepted, the aligned rest set in the bitmap).
- drivers/firmware/efi/libstub/x86-stub.c setup_e820: type-15 descriptors become E820_TYPE_RAM (and go through
  process_unaccepted_memory) only with CONFIG_UNACCEPTED_MEMORY; otherwise they are skipped: that RAM is lost.
  EfiACPIReclaimMemory becomes E820_TYPE_ACPI.
- arch/x86/coco/tdx/tdx-shared.c tdx_accept_memory / try_accept_one, shared by the stub and the kernel: per step
  try 1G, then 2M, then 4K; a size is tried only when the address is aligned to it and at least that much remains
  (both checked before any TDCALL), and any non-zero TDCALL status counts as failure of that size. Today's TDX
  modules reject 1G with OPERAND_INVALID, so a 1G TDCALL is issued, and fails, only at 1G-aligned addresses with at
  least 1 GiB left: never for the page allocator's 4 MiB chunks (Kirill Shutemov on LKML, 2024-01-09, reply to
  "x86/tdx: Optimize try_accept_memory()": the alignment check fails 511 times of 512, the length check the rest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

from lazyaccept.binlayout import Layout, guid
from lazyaccept.errors import InputError
from lazyaccept.rangemap import RangeMap
from lazyaccept.tdx.module import AcceptResult, AcceptStats, PageState, TdxModule
from lazyaccept.tdx.status import TdxStatus, status_class, status_name
from lazyaccept.units import PAGE_1G, PAGE_2M, PAGE_4K, GiB, MiB, align_down, align_up, human_size

LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID = guid("d5d1de3c-105c-44f9-9ea9-bcef98120031")
EFI_UNACCEPTED_UNIT_SIZE = PAGE_2M  # the stub's unit (PMD_SIZE)
UNACCEPTED_TABLE_VERSION = 1
EFI_UNACCEPTED_MEMORY = 15  # EfiUnacceptedMemoryType
# edk2's DXE pool puts a 24-byte POOL_HEAD before the buffer AllocatePool returns: the table starts 0x18 into its
# page, as the 67000M oops shows (table at ...624018, bitmap at ...624030).
EDK2_POOL_HEAD_BYTES = 0x18
# Where the 6.12 stub looks for a slot for the decompressed kernel (LOAD_PHYSICAL_ADDR) and its size (REFERENCE 6).
LOAD_PHYSICAL_ADDR = 16 * MiB
KERNEL_INIT_SIZE = 56 * MiB
GPA_LIMIT = 1 << 52

UNACCEPTED_TABLE_HEADER = Layout(
    "struct efi_unaccepted_memory",
    [("version", "I"), ("unit_size", "I"), ("phys_base", "Q"), ("size", "Q")],
)

STUB_ACTOR = "stub"


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


# ----------------------------------------------------------------------------- the table


@dataclass
class UnacceptedTable:
    """struct efi_unaccepted_memory, its bitmap held as a RangeMap over unit numbers (True = not yet accepted)."""

    phys_base: int
    bitmap_bytes: int  # the C field `size`
    unit_size: int = EFI_UNACCEPTED_UNIT_SIZE
    version: int = UNACCEPTED_TABLE_VERSION
    bits: RangeMap[bool] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.bits is None:
            self.bits = RangeMap(False, limit=self.nbits)

    @classmethod
    def covering(cls, start: int, end: int, unit_size: int = EFI_UNACCEPTED_UNIT_SIZE) -> UnacceptedTable:
        """allocate_unaccepted_bitmap: the table for type-15 memory between start and end, all bits clear."""
        base = align_down(start, unit_size)
        top = align_up(end, unit_size)
        return cls(base, -(-(top - base) // (unit_size * 8)), unit_size)

    @property
    def nbits(self) -> int:
        return self.bitmap_bytes * 8

    @property
    def span_end(self) -> int:
        """First address past what the bitmap can describe."""
        return self.phys_base + self.nbits * self.unit_size

    @property
    def encoded_size(self) -> int:
        return UNACCEPTED_TABLE_HEADER.size + self.bitmap_bytes

    def unit_runs(self, first: int = 0, last: int | None = None) -> list[tuple[int, int]]:
        """Runs [u0, u1) of set bits within units [first, last)."""
        return [(s, e) for s, e, v in self.bits.runs(first, self.nbits if last is None else last) if v]

    def set_ranges(self) -> list[tuple[int, int]]:
        """Physical ranges whose bits are set."""
        return [(self.phys(s), self.phys(e)) for s, e in self.unit_runs()]

    def set_bytes(self) -> int:
        return self.bits.total(0, self.nbits, bool) * self.unit_size

    def phys(self, unit: int) -> int:
        return self.phys_base + unit * self.unit_size

    def mark(self, start: int, end: int, value: bool = True) -> None:
        """Set (or clear) the bits of the unit-aligned physical range [start, end)."""
        if start % self.unit_size or end % self.unit_size or start < self.phys_base or end > self.span_end:
            raise ValueError(f"[{start:#x}, {end:#x}) is not a unit-aligned range inside the bitmap")
        self.bits.set((start - self.phys_base) // self.unit_size, (end - self.phys_base) // self.unit_size, value)

    def copy(self) -> UnacceptedTable:
        return UnacceptedTable(self.phys_base, self.bitmap_bytes, self.unit_size, self.version, self.bits.copy())


def encode_unaccepted_table(table: UnacceptedTable) -> bytes:
    """The table's bytes as the stub leaves them in memory: header, then the bitmap."""
    head = UNACCEPTED_TABLE_HEADER.pack(
        version=table.version, unit_size=table.unit_size, phys_base=table.phys_base, size=table.bitmap_bytes
    )
    bitmap = bytearray(table.bitmap_bytes)
    for u0, u1 in table.unit_runs():
        # Whole bytes in one slice assignment; the partial bytes at either end bit by bit.
        b0, b1 = -(-u0 // 8), u1 // 8
        if b0 < b1:
            bitmap[b0:b1] = b"\xff" * (b1 - b0)
            edges = [*range(u0, b0 * 8), *range(b1 * 8, u1)]
        else:
            edges = list(range(u0, u1))
        for u in edges:
            bitmap[u // 8] |= 1 << (u % 8)
    return head + bytes(bitmap)


_BYTE_RUNS = re.compile(rb"\x00+|\xff+|[\x01-\xfe]", re.DOTALL)


def parse_unaccepted_table(data: bytes | bytearray | memoryview, *, base_offset: int = 0) -> UnacceptedTable:
    """Read and validate a table (bytes from its first byte; extra bytes after the bitmap are ignored).

    Hostile input raises InputError naming the field and its offset (plus base_offset, e.g. the table's address).
    Runs of 0x00 and 0xff bytes are decoded at once, so a 4 TiB TD's 256 KiB bitmap costs what its runs cost.
    """
    if len(data) < UNACCEPTED_TABLE_HEADER.size:
        raise InputError(
            f"truncated struct efi_unaccepted_memory header: {len(data)} of {UNACCEPTED_TABLE_HEADER.size} bytes",
            field="struct efi_unaccepted_memory",
            offset=base_offset,
        )
    hdr = UNACCEPTED_TABLE_HEADER.unpack(data, 0, what="struct efi_unaccepted_memory header")

    def bad(message: str, name: str) -> InputError:
        return InputError(message, field=name, offset=base_offset + UNACCEPTED_TABLE_HEADER.offset_of(name))

    if hdr["version"] != UNACCEPTED_TABLE_VERSION:
        raise bad(f"unknown unaccepted memory table version {hdr['version']} (Linux knows version 1)", "version")
    unit = hdr["unit_size"]
    if unit < PAGE_4K or unit & (unit - 1):
        raise bad(f"unit_size {unit:#x} is not a power of two of at least 4 KiB", "unit_size")
    base = hdr["phys_base"]
    if base % unit or base >= GPA_LIMIT:
        raise bad(f"phys_base {base:#x} is not unit-aligned below the 52-bit GPA limit", "phys_base")
    size = hdr["size"]
    if size > (GPA_LIMIT - base) // (unit * 8) + 1:
        raise bad(f"bitmap of {size:#x} bytes describes memory beyond the 52-bit GPA limit", "size")
    start = UNACCEPTED_TABLE_HEADER.size
    if len(data) - start < size:
        raise InputError(
            f"truncated unaccepted memory bitmap: {size:#x} bytes declared, {max(0, len(data) - start):#x} present",
            field="bitmap",
            offset=base_offset + start,
        )
    table = UnacceptedTable(base, size, unit, hdr["version"])
    raw = bytes(data[start : start + size])
    runs: list[list[int]] = []
    for m in _BYTE_RUNS.finditer(raw):
        b0, b1 = m.span()
        first = raw[b0]
        pieces = [(b0 * 8, b1 * 8)] if first == 0xFF else [(b0 * 8 + a, b0 * 8 + b) for a, b in _BIT_RUNS[first]]
        for u0, u1 in pieces:
            if runs and runs[-1][1] == u0:
                runs[-1][1] = u1
            else:
                runs.append([u0, u1])
    for u0, u1 in runs:
        table.bits.set(u0, u1, True)
    return table


def _bit_runs(byte: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for bit in range(8):
        if byte >> bit & 1:
            if out and out[-1][1] == bit:
                out[-1] = (out[-1][0], bit + 1)
            else:
                out.append((bit, bit + 1))
    return out


_BIT_RUNS = [_bit_runs(b) for b in range(256)]


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

    def ram_ranges(self) -> list[tuple[int, int]]:
        """E820 RAM, merged."""
        return merge_ranges((e.start, e.end) for e in self.e820 if e.type == E820Type.RAM)

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
        before = _snapshot(self.tdx.stats)
        status = TdxStatus.SUCCESS
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
                res.add(_delta(self.tdx.stats, before))

    def _one_g_attempts(self, start: int, stop: int, end: int, vcpu: int | None, actor: str, res: AcceptResult):
        """1G TDCALLs at each 1G boundary q in [start, stop) with end - q >= 1 GiB; all but the first in closed form."""
        first = align_up(start, PAGE_1G)
        last = min(stop - 1, end - PAGE_1G)
        if first > last:
            return
        n = (last - first) // PAGE_1G + 1
        before = _snapshot(self.tdx.stats)
        status = self.tdx.accept_rcx(first | 2, vcpu=0 if vcpu is None else vcpu, actor=actor)
        one = _delta(self.tdx.stats, before)
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


def _snapshot(stats: AcceptStats) -> AcceptStats:
    copy = AcceptStats()
    copy.add(stats)
    return copy


def _delta(stats: AcceptStats, before: AcceptStats) -> AcceptStats:
    d = _snapshot(stats)
    d.add(before, -1)
    return d


# ----------------------------------------------------------------------------- the modeled stub


def process_unaccepted_memory(
    table: UnacceptedTable, start: int, end: int, accept
) -> list[tuple[int, int]]:
    """libstub process_unaccepted_memory for one type-15 descriptor; `accept(s, e)` is arch_accept_memory.
    Returns the ranges accepted immediately."""
    unit = table.unit_size
    done: list[tuple[int, int]] = []

    def now(s: int, e: int) -> None:
        if s < e:
            accept(s, e)
            done.append((s, e))

    if end - start < 2 * unit:
        now(start, end)
        return done
    if start % unit:
        now(start, align_up(start, unit))
        start = align_up(start, unit)
    if end % unit:
        now(align_down(end, unit), end)
        end = align_down(end, unit)
    if start < table.phys_base:
        now(start, min(table.phys_base, end))
        start = table.phys_base
    if end < table.phys_base:
        return done
    if end > table.span_end:
        now(table.span_end, end)
        end = table.span_end
    if start < end:
        table.mark(start, end)
    return done


def modeled_handoff(
    tdx: TdxModule,
    ram_ranges,
    *,
    kernel_supports_unaccepted: bool = True,
    accept_all_at_exit: bool = False,
    kernel_bytes: int = KERNEL_INIT_SIZE,
    initrd_bytes: int = 0,
    table_address: int | None = None,
    vcpu: int = 0,
) -> Handoff:
    """What the 6.12 x86 EFI stub hands the kernel, given the TDX module's truth over `ram_ranges`.

    The firmware's memory map is taken to report every RAM page that is not accepted as EfiUnacceptedMemoryType
    (DXE is not in the repository yet). The table goes where AllocatePool(EfiACPIReclaimMemory) would put it in
    accepted memory below 4 GiB (or at `table_address`), 0x18 into its first page, and is written into guest
    memory through the TDX module's access check. The stub's own accepts go through the TDX module as "stub".
    `accept_all_at_exit` models a firmware that accepts all memory at ExitBootServices (edk2's AmdSevDxe handler;
    TDX has none upstream) under the actor "firmware-exit".
    """
    ram = merge_ranges(ram_ranges)
    notes: list[str] = []
    if accept_all_at_exit:
        for s, e in ram:
            for ps, pe in _not_accepted(tdx, s, e):
                res = tdx.accept_range(ps, pe - ps, vcpu=vcpu, actor="firmware-exit")
                if not res.ok:
                    raise GuestCrash("panic", f"firmware could not accept [{ps:#x}, {pe:#x})", res.failed_gpa)
        notes.append("the firmware accepted all memory at ExitBootServices")
    descriptors = merge_ranges(r for s, e in ram for r in _not_accepted(tdx, s, e))
    accepted_low = [r for s, e in ram for r in _accepted(tdx, s, min(e, 4 * GiB))]

    table = None
    table_pages: tuple[int, int] | None = None
    loaded: list[LoadedRange] = []
    top = accepted_low[-1][1] if accepted_low else 0
    if descriptors and kernel_supports_unaccepted:
        table = UnacceptedTable.covering(descriptors[0][0], descriptors[-1][1])
        pages = align_up(EDK2_POOL_HEAD_BYTES + table.encoded_size, PAGE_4K)
        if table_address is None:
            if not accepted_low or top - pages < accepted_low[-1][0]:
                raise GuestCrash("panic", "no accepted memory below 4 GiB for the unaccepted memory table")
            table_address = align_down(top, PAGE_4K) - pages + EDK2_POOL_HEAD_BYTES
        page0 = align_down(table_address, PAGE_4K)
        table_pages = (page0, align_up(table_address + table.encoded_size, PAGE_4K))
        top = min(top, page0)
    if initrd_bytes:
        # AllocatePages(MaxAddress): the highest free conventional (accepted) memory.
        lo = align_down(top - initrd_bytes, PAGE_4K)
        loaded.append(LoadedRange("initrd", lo, lo + initrd_bytes))
        top = lo
    if kernel_bytes:
        # efi_random_alloc with seed 0 takes the lowest 2 MiB-aligned slot at or above LOAD_PHYSICAL_ADDR.
        for s, e in accepted_low:
            slot = max(align_up(s, PAGE_2M), LOAD_PHYSICAL_ADDR)
            if slot + kernel_bytes <= min(e, top):
                loaded.append(LoadedRange("kernel", slot, slot + kernel_bytes))
                break
        else:
            raise GuestCrash("panic", f"no accepted {human_size(kernel_bytes)} slot above 16 MiB for the kernel")

    stub_done: list[tuple[int, int]] = []
    before = _snapshot(tdx.stats)
    if table is not None:
        accepter = TdxAccepter(tdx)
        for s, e in descriptors:
            stub_done += process_unaccepted_memory(
                table, s, e, lambda a, b: accepter.accept(a, b, vcpu=vcpu, actor=STUB_ACTOR)
            )
        tdx.memory.write(table_address, encode_unaccepted_table(table), actor=STUB_ACTOR, vcpu=vcpu)
    elif descriptors:
        notes.append(
            f"kernel without unaccepted-memory support: {human_size(sum(e - s for s, e in descriptors))} of "
            "type-15 memory left out of e820 (lost)"
        )

    e820_ram = ram if kernel_supports_unaccepted else subtract_ranges(ram, descriptors)
    holes = [table_pages] if table_pages else []
    e820 = [E820Entry(s, e - s, E820Type.RAM) for s, e in subtract_ranges(e820_ram, holes)]
    if table_pages:
        e820.append(E820Entry(table_pages[0], table_pages[1] - table_pages[0], E820Type.ACPI))
    e820.sort(key=lambda x: x.start)
    return Handoff(
        e820,
        table,
        table_address if table is not None else None,
        descriptors,
        sorted(loaded, key=lambda x: x.start),
        kernel_supports_unaccepted,
        stub_done,
        _delta(tdx.stats, before),
        "model",
        notes,
    )


def _not_accepted(tdx: TdxModule, start: int, end: int) -> list[tuple[int, int]]:
    return merge_ranges((s, e) for s, e, p in tdx.pages.runs(start, end) if p.state != PageState.ACCEPTED)


def _accepted(tdx: TdxModule, start: int, end: int) -> list[tuple[int, int]]:
    return merge_ranges((s, e) for s, e, p in tdx.pages.runs(start, end) if p.state == PageState.ACCEPTED)


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
    return chk
