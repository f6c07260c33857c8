"""The EFI unaccepted-memory table, and which unaccepted ranges Linux's EFI stub accepts itself.

One module shared by the stub model (guest/stub_model.py), the kernel model (guest/linux.py), the check of a
real stub's handoff (guest/handoff_check.py) and backend selection (cpu/select.py).

Linux 6.12, read, not copied:
- include/linux/efi.h struct efi_unaccepted_memory {u32 version; u32 unit_size; u64 phys_base; u64 size;
  unsigned long bitmap[];}: `size` is the bitmap length in bytes; a set bit means "not yet accepted"; bit i is
  byte i/8, bit i%8 (little-endian unsigned longs).
- drivers/firmware/efi/libstub/unaccepted_memory.c allocate_unaccepted_bitmap: the bitmap spans the lowest and
  highest EfiUnacceptedMemoryType addresses rounded to the unit; process_unaccepted_memory: what of one
  descriptor the stub accepts at once and what it sets in the bitmap (`stub_split`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lazyaccept.errors import InputError
from lazyaccept.rangemap import RangeMap
from lazyaccept.spec.linux_efi import EFI_UNACCEPTED_UNIT_SIZE, UNACCEPTED_TABLE_HEADER, UNACCEPTED_TABLE_VERSION
from lazyaccept.units import PAGE_4K, align_down, align_up

GPA_LIMIT = 1 << 52

Range = tuple[int, int]


@dataclass
class UnacceptedTable:
    """struct efi_unaccepted_memory, its bitmap held as a RangeMap over unit numbers (True = not yet accepted)."""

    phys_base: int
    bitmap_bytes: int  # the C field `size`
    unit_size: int = EFI_UNACCEPTED_UNIT_SIZE
    version: int = UNACCEPTED_TABLE_VERSION
    bits: RangeMap[bool] = field(default=None)  # type: ignore[assignment,arg-type]  # made in __post_init__

    def __post_init__(self) -> None:
        if self.bits is None:
            self.bits = RangeMap(False, limit=self.nbits)

    @classmethod
    def covering(cls, start: int, end: int, unit_size: int = EFI_UNACCEPTED_UNIT_SIZE) -> UnacceptedTable:
        """allocate_unaccepted_bitmap (libstub unaccepted_memory.c, 6.12): the table for type-15 memory between
        start and end, every bit clear."""
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

    def unit_runs(self, first: int = 0, last: int | None = None) -> list[Range]:
        """Runs [u0, u1) of set bits within units [first, last)."""
        return [(s, e) for s, e, v in self.bits.runs(first, self.nbits if last is None else last) if v]

    def set_ranges(self) -> list[Range]:
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


# ----------------------------------------------------------------------------- the stub's rules


def stub_split(
    start: int, end: int, phys_base: int, span_end: int, unit: int = EFI_UNACCEPTED_UNIT_SIZE
) -> tuple[list[Range], Range | None]:
    """One type-15 descriptor [start, end) as libstub process_unaccepted_memory (unaccepted_memory.c, 6.12) treats
    it: (the ranges it accepts at once, in call order; the range it sets in the bitmap, or None).

    Accepted at once: all of a range shorter than two units (so that a longer one always keeps a whole unit for the
    bitmap), an unaligned head and tail, and whatever lies below phys_base or past the bitmap's end."""
    if end - start < 2 * unit:
        return [(start, end)], None
    now: list[Range] = []
    if start % unit:
        now.append((start, align_up(start, unit)))
        start = align_up(start, unit)
    if end % unit:
        now.append((align_down(end, unit), end))
        end = align_down(end, unit)
    if start < phys_base:
        now.append((start, min(phys_base, end)))
        start = phys_base
    if end < phys_base:
        return now, None
    if end > span_end:
        now.append((span_end, end))
        end = span_end
    return now, ((start, end) if start < end else None)


def process_unaccepted_memory(table: UnacceptedTable, start: int, end: int, accept: Callable[[int, int], object]
                              ) -> list[Range]:
    """process_unaccepted_memory for one descriptor: `accept(s, e)` is the stub's arch_accept_memory; the rest is
    set in the table. Returns the ranges accepted at once."""
    now, marked = stub_split(start, end, table.phys_base, table.span_end, table.unit_size)
    for s, e in now:
        accept(s, e)
    if marked is not None:
        table.mark(*marked)
    return now


def stub_accepted_ranges(descriptors: Iterable[Range], unit: int = EFI_UNACCEPTED_UNIT_SIZE) -> list[Range]:
    """What the stub accepts itself of these type-15 memory-map ranges (one per descriptor), with the bitmap
    allocate_unaccepted_bitmap would make for them."""
    ranges = sorted(descriptors)
    if not ranges:
        return []
    base = align_down(ranges[0][0], unit)
    span_end = base + -(-(align_up(max(e for _, e in ranges), unit) - base) // (unit * 8)) * 8 * unit
    return [r for s, e in ranges for r in stub_split(s, e, base, span_end, unit)[0] if r[0] < r[1]]


# ----------------------------------------------------------------------------- bytes


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


def _bit_runs(byte: int) -> list[Range]:
    out: list[Range] = []
    for bit in range(8):
        if byte >> bit & 1:
            if out and out[-1][1] == bit:
                out[-1] = (out[-1][0], bit + 1)
            else:
                out.append((bit, bit + 1))
    return out


_BIT_RUNS = [_bit_runs(b) for b in range(256)]
