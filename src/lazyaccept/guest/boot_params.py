"""struct boot_params as the x86 EFI stub leaves it for the kernel (Documentation/arch/x86/zero-page.rst,
arch/x86/include/uapi/asm/bootparam.h): the E820 table, efi_info and the setup_data chain, read back from guest
memory after the jump into the kernel, with validation (a hostile or broken stub must not crash the reader).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyaccept.errors import InputError
from lazyaccept.guest.handoff import E820Entry
from lazyaccept.spec.linux_boot import (
    BOOT_E820_ENTRY,
    BOOT_PARAMS_EXT,
    BOOT_PARAMS_OFFSETS,
    BOOT_PARAMS_SIZE,
    E820_MAX_ENTRIES_ZEROPAGE,
    E820_TYPE_RAM,
    E820_TYPES,
    EFI_INFO,
    SETUP_DATA,
    SETUP_HEADER,
    SETUP_HEADER_OFFSET,
    SETUP_TYPES,
)

__all__ = [
    "BOOT_E820_ENTRY",
    "BOOT_PARAMS_SIZE",
    "E820_MAX_ENTRIES_ZEROPAGE",
    "E820_TYPES",
    "EFI_INFO",
    "SETUP_DATA",
    "SETUP_TYPES",
    "BootParams",
    "e820_type_name",
    "parse_boot_params",
]

E820_ENTRIES_OFFSET = BOOT_PARAMS_OFFSETS["e820_entries"]
E820_TABLE_OFFSET = BOOT_PARAMS_OFFSETS["e820_table"]
EFI_INFO_OFFSET = BOOT_PARAMS_OFFSETS["efi_info"]
MAX_SETUP_DATA = 64


def e820_type_name(kind: int) -> str:
    return E820_TYPES.get(kind, f"type {kind}")


@dataclass
class BootParams:
    address: int
    e820: list[E820Entry]
    loader_signature: bytes
    efi_systab: int
    efi_memmap: int
    efi_memmap_size: int
    efi_memdesc_size: int
    cmdline: str
    ramdisk_image: int = 0
    ramdisk_size: int = 0
    setup_data: list[tuple[int, str, int]] = field(default_factory=list)  # (address, type, length)

    def ram(self) -> list[E820Entry]:  # noqa: D102
        return [e for e in self.e820 if e.type == E820_TYPE_RAM]


def parse_boot_params(raw: bytes, address: int, read=None) -> BootParams:
    """Parse a 4 KiB zero page; `read(gpa, n)` follows the command line and setup_data pointers if given."""
    if len(raw) < BOOT_PARAMS_SIZE:
        raise InputError(f"boot_params needs {BOOT_PARAMS_SIZE} bytes, got {len(raw)}", field="boot_params", offset=0)
    count = raw[E820_ENTRIES_OFFSET]
    if count > E820_MAX_ENTRIES_ZEROPAGE:
        raise InputError(
            f"{count} E820 entries (at most {E820_MAX_ENTRIES_ZEROPAGE} fit the zero page)",
            field="boot_params.e820_entries",
            offset=E820_ENTRIES_OFFSET,
        )
    e820 = []
    for i in range(count):
        d = BOOT_E820_ENTRY.unpack(raw, E820_TABLE_OFFSET + BOOT_E820_ENTRY.size * i)
        if d["addr"] + d["size"] > 1 << 64:
            raise InputError(
                f"E820 entry {i} wraps past 2^64",
                field=f"e820_table[{i}].size",
                offset=E820_TABLE_OFFSET + BOOT_E820_ENTRY.size * i + BOOT_E820_ENTRY.offset_of("size"),
            )
        e820.append(E820Entry(d["addr"], d["size"], d["type"]))
    efi = EFI_INFO.unpack(raw, EFI_INFO_OFFSET)
    hdr = SETUP_HEADER.unpack(raw, SETUP_HEADER_OFFSET)
    ext = BOOT_PARAMS_EXT.unpack(raw, BOOT_PARAMS_OFFSETS["ext_ramdisk_image"])
    cmd_ptr = hdr["cmd_line_ptr"] | (ext["ext_cmd_line_ptr"] << 32)
    cmdline = ""
    setup: list[tuple[int, str, int]] = []
    if read is not None:
        if cmd_ptr:
            cmdline = read(cmd_ptr, 2048).split(b"\0")[0].decode("ascii", "replace")
        ptr = hdr["setup_data"]
        while ptr and len(setup) < MAX_SETUP_DATA:
            sd = SETUP_DATA.unpack(read(ptr, SETUP_DATA.size), 0)
            setup.append((ptr, SETUP_TYPES.get(sd["type"], f"type {sd['type']}"), sd["len"]))
            ptr = sd["next"]
    return BootParams(
        address,
        e820,
        efi["efi_loader_signature"],
        efi["efi_systab"] | (efi["efi_systab_hi"] << 32),
        efi["efi_memmap"] | (efi["efi_memmap_hi"] << 32),
        efi["efi_memmap_size"],
        efi["efi_memdesc_size"],
        cmdline,
        ramdisk_image=hdr["ramdisk_image"] | (ext["ext_ramdisk_image"] << 32),
        ramdisk_size=hdr["ramdisk_size"] | (ext["ext_ramdisk_size"] << 32),
        setup_data=setup,
    )

