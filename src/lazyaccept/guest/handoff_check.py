"""The handoff a real stub produced, read back from guest memory after its jump into the kernel, as the guest
model's `Handoff` record: boot_params' E820 table, the EFI unaccepted-memory table from the configuration
tables, and where the stub put the kernel and the initrd. The checks against the TDX module's truth are the
guest model's (guest/handoff.py check_handoff), so a real run and a modeled one are judged alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazyaccept.errors import InputError
from lazyaccept.guest.boot_params import BootParams, parse_boot_params
from lazyaccept.guest.handoff import Handoff, HandoffCheck, LoadedRange, check_handoff
from lazyaccept.guest.unaccepted import parse_unaccepted_table
from lazyaccept.spec import guids
from lazyaccept.spec.linux_efi import UNACCEPTED_TABLE_HEADER
from lazyaccept.units import PAGE_4K, align_down, align_up

if TYPE_CHECKING:
    from lazyaccept.cpu.machine import EfiMachine
    from lazyaccept.tdx.module import TdxModule

MAX_BITMAP_BYTES = 64 << 20  # a 64 TiB TD at 2 MiB units needs 4 MiB


def side_effect_free_reader(tdx: TdxModule):
    """Read guest memory for a report: a pointer into memory that is not accepted is an error in the handoff,
    not a guest access that terminates the TD."""

    def read(gpa: int, n: int) -> bytes:
        lo, hi = align_down(gpa, PAGE_4K), align_up(gpa + n, PAGE_4K)
        if gpa < 0 or not tdx.is_accepted(lo, hi - lo):
            raise InputError(f"the handoff points at {gpa:#x}, which is not accepted memory")
        return tdx.memory.backing.read(gpa, n)

    return read


def stub_handoff(tdx: TdxModule, machine: EfiMachine, boot_params_gpa: int) -> tuple[Handoff, BootParams]:
    """The Handoff record of a real stub run (producer "stub")."""
    read = side_effect_free_reader(tdx)
    bp = parse_boot_params(read(boot_params_gpa, 4096), boot_params_gpa, read)
    table, table_address = None, None
    for g, address in machine.config_tables:
        if g == guids.LINUX_UNACCEPTED_MEM_TABLE:
            header = read(address, UNACCEPTED_TABLE_HEADER.size)
            size = int.from_bytes(header[16:24], "little")
            if size > MAX_BITMAP_BYTES:
                raise InputError(f"unaccepted bitmap of {size} bytes is implausibly large", field="size",
                                 offset=address + 16)
            table = parse_unaccepted_table(read(address, UNACCEPTED_TABLE_HEADER.size + size), base_offset=address)
            table_address = address
    loaded = []
    if bp.ramdisk_size:
        loaded.append(LoadedRange("initrd", bp.ramdisk_image, bp.ramdisk_image + bp.ramdisk_size))
    handoff = Handoff(bp.e820, table, table_address, loaded=loaded, producer="stub")
    return handoff, bp


def check_stub_handoff(tdx: TdxModule, machine: EfiMachine, boot_params_gpa: int
                       ) -> tuple[Handoff | None, BootParams | None, HandoffCheck]:
    try:
        handoff, bp = stub_handoff(tdx, machine, boot_params_gpa)
    except InputError as exc:
        return None, None, HandoffCheck(problems=[f"the stub's handoff is unreadable: {exc}"])
    return handoff, bp, check_handoff(tdx, handoff)
