"""The handoff check after a real stub ran: what the kernel will be told (boot_params' E820 table and the
EFI unaccepted-memory table) against the TDX module's truth.

- every set bit of the bitmap is memory that is really pending (a set bit over accepted memory would make the
  kernel accept it again: a double accept, fatal in Linux);
- every E820 RAM byte is accepted, or covered by a set bit (else the kernel touches pending memory and the TD
  dies);
- TD RAM that appears in no E820 entry is lost to the OS (a kernel without unaccepted-memory support drops
  type-15 memory this way).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lazyaccept.binlayout import Layout
from lazyaccept.cpu import guids
from lazyaccept.errors import InputError
from lazyaccept.guest.boot_params import parse_boot_params
from lazyaccept.rangemap import RangeMap
from lazyaccept.tdx.module import PageState
from lazyaccept.units import human_size

if TYPE_CHECKING:
    from lazyaccept.boot import BootReport
    from lazyaccept.cpu.machine import EfiMachine
    from lazyaccept.vmm.td import Td

# drivers/firmware/efi/libstub/unaccepted_memory.c / include/linux/efi.h: struct efi_unaccepted_memory
EFI_UNACCEPTED_MEMORY = Layout(
    "efi_unaccepted_memory", [("version", "I"), ("unit_size", "I"), ("phys_base", "Q"), ("size", "Q")]
)
MAX_BITMAP_BYTES = 64 << 20  # a 64 TiB TD at 2 MiB units needs 4 MiB


def _reader(td: Td):
    """Read guest memory for the report without side effects: a pointer into memory that is not accepted is an
    error in the handoff, not a reason to terminate the TD."""

    def read(gpa: int, n: int) -> bytes:
        if not td.tdx.is_accepted(gpa - gpa % 4096, -(-(gpa + n) // 4096) * 4096 - (gpa - gpa % 4096)):
            raise InputError(f"the handoff points at {gpa:#x}, which is not accepted memory")
        return td.tdx.memory.backing.read(gpa, n)

    return read


def bitmap_ranges(bitmap: bytes, phys_base: int, unit: int) -> RangeMap[bool]:
    """Set bits as ranges; runs of 0xFF bytes become one range each, so a 4 TiB table costs little."""
    out: RangeMap[bool] = RangeMap(False)
    for m in re.finditer(rb"\xff+|[^\x00\xff]", bitmap):
        i, j = m.span()
        if bitmap[i] == 0xFF:
            out.set(phys_base + i * 8 * unit, phys_base + j * 8 * unit, True)
            continue
        for bit in range(8):
            if bitmap[i] >> bit & 1:
                start = phys_base + (i * 8 + bit) * unit
                out.set(start, start + unit, True)
    return out


def check_stub_handoff(report: BootReport, td: Td, machine: EfiMachine, rsi: int) -> None:
    read = _reader(td)
    problems = report.handoff_problems
    try:
        bp = parse_boot_params(read(rsi, 4096), rsi, read)
    except InputError as exc:
        problems.append(f"boot_params at {rsi:#x} unreadable: {exc}")
        return
    report.boot_params = bp
    tdx = td.tdx
    pending: RangeMap[bool] = RangeMap(False)
    table_addr = next((p for g, p in machine.config_tables if g == guids.LINUX_UNACCEPTED_MEM_TABLE), None)
    if table_addr is not None:
        try:
            hdr = EFI_UNACCEPTED_MEMORY.unpack(read(table_addr, EFI_UNACCEPTED_MEMORY.size), 0)
            if hdr["version"] != 1 or hdr["unit_size"] == 0 or hdr["unit_size"] & (hdr["unit_size"] - 1):
                raise InputError(f"unaccepted table version {hdr['version']}, unit {hdr['unit_size']:#x}")
            if hdr["size"] > MAX_BITMAP_BYTES:
                raise InputError(f"unaccepted bitmap of {hdr['size']} bytes is implausibly large")
            bitmap = read(table_addr + EFI_UNACCEPTED_MEMORY.size, hdr["size"])
        except InputError as exc:
            problems.append(f"unaccepted-memory table at {table_addr:#x}: {exc}")
            return
        pending = bitmap_ranges(bitmap, hdr["phys_base"], hdr["unit_size"])
        set_bytes = pending.total(0, pending.limit, bool)
        report.unaccepted_table = dict(
            address=table_addr,
            version=hdr["version"],
            unit_size=hdr["unit_size"],
            phys_base=hdr["phys_base"],
            bitmap_bytes=hdr["size"],
            set_bytes=set_bytes,
        )
        for s, e, v in pending.runs():
            if v and tdx.pages.total(s, e, lambda p: p.state == PageState.ACCEPTED):
                problems.append(
                    f"bitmap marks [{s:#x}, {e:#x}) unaccepted but part of it is accepted: "
                    "the kernel would accept it again"
                )
    for entry in bp.ram():
        for s, e, covered in pending.runs(entry.start, entry.end):
            if covered:
                continue
            bad = tdx.pages.total(s, e, lambda p: p.state != PageState.ACCEPTED)
            if bad:
                first = next(rs for rs, _re, p in tdx.pages.runs(s, e) if p.state != PageState.ACCEPTED)
                problems.append(
                    f"E820 RAM [{s:#x}, {e:#x}) has {human_size(bad)} neither accepted nor in the "
                    f"bitmap (first at {first:#x}): the kernel would touch pending memory"
                )
    in_e820: RangeMap[bool] = RangeMap(False)
    for entry in bp.e820:
        in_e820.set(entry.start, entry.end, True)
    report.lost_ram_bytes = sum(in_e820.total(e.start, e.end, lambda v: not v) for e in td.ram_entries)
