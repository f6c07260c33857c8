"""The handoff a real stub produced, read back from guest memory after its jump into the kernel, as the guest
model's `Handoff` record: boot_params' E820 table, the EFI unaccepted-memory table from the configuration
tables, the UEFI memory map the stub passed on, where the stub put the kernel and the initrd, and the ACPI tables
(guest/acpi_check.py). Everything is
read from guest memory as Linux reads it (boot_params.efi_info -> EFI_SYSTEM_TABLE -> its configuration tables),
so the Python firmware's handoff and edk2's own are read by the same code. The checks against the TDX module's
truth are the guest model's (guest/handoff.py check_handoff), so a real run and a modeled one are judged alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyaccept.errors import InputError
from lazyaccept.guest.acpi_check import read_acpi
from lazyaccept.guest.boot_params import BootParams, parse_boot_params
from lazyaccept.guest.handoff import Handoff, HandoffCheck, LoadedRange, check_handoff, side_effect_free_reader
from lazyaccept.guest.unaccepted import parse_unaccepted_table
from lazyaccept.spec import guids
from lazyaccept.spec.efi import MemoryDescriptor, unpack_memory_map
from lazyaccept.spec.efi_tables import EFI_CONFIGURATION_TABLE, EFI_SYSTEM_TABLE, SYSTEM_TABLE_SIGNATURE
from lazyaccept.spec.linux_efi import UNACCEPTED_TABLE_HEADER

if TYPE_CHECKING:
    from lazyaccept.tdx.module import TdxModule

MAX_BITMAP_BYTES = 64 << 20  # a 64 TiB TD at 2 MiB units needs 4 MiB
MAX_CONFIG_TABLES = 1024  # edk2 grows its table by 0x20 entries; OVMF installs about 15
MAX_MEMORY_MAP_BYTES = 16 << 20  # ~350k descriptors: far beyond any firmware's map

Reader = Callable[[int, int], bytes]


def configuration_tables(read: Reader, systab: int) -> list[tuple[uuid.UUID, int]]:
    """The EFI configuration tables of the system table at `systab` (UEFI 2.10 section 4.3, 4.6)."""
    if not systab:
        raise InputError("boot_params.efi_info names no EFI system table", field="efi_systab")
    st = EFI_SYSTEM_TABLE.unpack(read(systab, EFI_SYSTEM_TABLE.size))
    signature = int.from_bytes(st["Hdr"][:8], "little")
    if signature != SYSTEM_TABLE_SIGNATURE:
        raise InputError(f"no EFI system table at {systab:#x} (signature {signature:#x})", field="Hdr.Signature",
                         offset=systab)
    count = st["NumberOfTableEntries"]
    if count > MAX_CONFIG_TABLES:
        raise InputError(f"{count} configuration tables is implausible", field="NumberOfTableEntries", offset=systab)
    size = EFI_CONFIGURATION_TABLE.size
    raw = read(st["ConfigurationTable"], count * size) if count else b""
    out = []
    for i in range(count):
        entry = EFI_CONFIGURATION_TABLE.unpack(raw, i * size)
        out.append((uuid.UUID(bytes_le=bytes(entry["VendorGuid"])), entry["VendorTable"]))
    return out


def handed_over_memory_map(read: Reader, bp: BootParams) -> list[MemoryDescriptor]:
    """The UEFI memory map as the firmware returned it for ExitBootServices, from boot_params.efi_info (the
    stub's exit_boot_func stores the map it exited with there; Linux 6.12 drivers/firmware/efi/libstub/x86-stub.c)."""
    if not bp.efi_memmap or not bp.efi_memmap_size:
        return []
    if bp.efi_memmap_size > MAX_MEMORY_MAP_BYTES:
        raise InputError(f"a memory map of {bp.efi_memmap_size} bytes is implausible", field="efi_memmap_size")
    return unpack_memory_map(read(bp.efi_memmap, bp.efi_memmap_size), bp.efi_memmap_size, bp.efi_memdesc_size)


def stub_handoff(tdx: TdxModule, boot_params_gpa: int) -> tuple[Handoff, BootParams]:
    """The Handoff record of a real stub run (producer "stub"), whichever firmware ran it."""
    read = side_effect_free_reader(tdx)
    bp = parse_boot_params(read(boot_params_gpa, 4096), boot_params_gpa, read)
    table, table_address = None, None
    config = configuration_tables(read, bp.efi_systab)
    for g, address in config:
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
    memory_map = handed_over_memory_map(read, bp)
    handoff = Handoff(bp.e820, table, table_address, loaded=loaded, memory_map=memory_map, producer="stub")
    try:
        handoff.acpi = read_acpi(read, config)
    except InputError as exc:
        handoff.acpi_error = str(exc)
    return handoff, bp


def check_stub_handoff(tdx: TdxModule, boot_params_gpa: int
                       ) -> tuple[Handoff | None, BootParams | None, HandoffCheck]:
    try:
        handoff, bp = stub_handoff(tdx, boot_params_gpa)
    except InputError as exc:
        return None, None, HandoffCheck(problems=[f"the stub's handoff is unreadable: {exc}"])
    return handoff, bp, check_handoff(tdx, handoff)
