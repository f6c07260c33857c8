"""The x86 Linux boot protocol (Documentation/arch/x86/boot.rst and zero-page.rst, arch/x86/include/uapi/asm/
bootparam.h): struct setup_header, at offset 0x1F1 of a bzImage and of boot_params alike, and the parts of struct
boot_params lazyaccept reads (ext_* high halves, efi_info, e820_entries, e820_table) with boot_e820_entry and
setup_data."""

from __future__ import annotations

from lazyaccept.binlayout import Buffer, Layout

SETUP_HEADER_OFFSET = 0x1F1
SETUP_HEADER_MAGIC = b"HdrS"

SETUP_HEADER = Layout(
    "setup_header",
    [
        ("setup_sects", "B"),
        ("root_flags", "H"),
        ("syssize", "I"),
        ("ram_size", "H"),
        ("vid_mode", "H"),
        ("root_dev", "H"),
        ("boot_flag", "H"),
        ("jump", "H"),
        ("header", "4s"),
        ("version", "H"),
        ("realmode_swtch", "I"),
        ("start_sys_seg", "H"),
        ("kernel_version", "H"),  # offset of the version string, from 0x200
        ("type_of_loader", "B"),
        ("loadflags", "B"),
        ("setup_move_size", "H"),
        ("code32_start", "I"),
        ("ramdisk_image", "I"),
        ("ramdisk_size", "I"),
        ("bootsect_kludge", "I"),
        ("heap_end_ptr", "H"),
        ("ext_loader_ver", "B"),
        ("ext_loader_type", "B"),
        ("cmd_line_ptr", "I"),
        ("initrd_addr_max", "I"),
        ("kernel_alignment", "I"),
        ("relocatable_kernel", "B"),
        ("min_alignment", "B"),
        ("xloadflags", "H"),
        ("cmdline_size", "I"),
        ("hardware_subarch", "I"),
        ("hardware_subarch_data", "Q"),
        ("payload_offset", "I"),
        ("payload_length", "I"),
        ("setup_data", "Q"),
        ("pref_address", "Q"),
        ("init_size", "I"),
        ("handover_offset", "I"),
        ("kernel_info_offset", "I"),
    ],
)


# struct boot_params (the zero page): the offsets of the members read, from zero-page.rst.
BOOT_PARAMS_SIZE = 4096
BOOT_PARAMS_OFFSETS = {
    "ext_ramdisk_image": 0x0C0,  # the high halves of hdr's 32-bit fields live in boot_params itself
    "ext_ramdisk_size": 0x0C4,
    "ext_cmd_line_ptr": 0x0C8,
    "efi_info": 0x1C0,
    "e820_entries": 0x1E8,  # __u8
    "hdr": SETUP_HEADER_OFFSET,
    "e820_table": 0x2D0,  # struct boot_e820_entry e820_table[E820_MAX_ENTRIES_ZEROPAGE]
}
E820_MAX_ENTRIES_ZEROPAGE = 128

BOOT_PARAMS_EXT = Layout(
    "boot_params.ext_*", [("ext_ramdisk_image", "I"), ("ext_ramdisk_size", "I"), ("ext_cmd_line_ptr", "I")]
)
BOOT_E820_ENTRY = Layout("boot_e820_entry", [("addr", "Q"), ("size", "Q"), ("type", "I")])  # packed: 20 bytes
EFI_INFO = Layout(
    "efi_info",
    [
        ("efi_loader_signature", "4s"),
        ("efi_systab", "I"),
        ("efi_memdesc_size", "I"),
        ("efi_memdesc_version", "I"),
        ("efi_memmap", "I"),
        ("efi_memmap_size", "I"),
        ("efi_systab_hi", "I"),
        ("efi_memmap_hi", "I"),
    ],
)
SETUP_DATA = Layout("setup_data", [("next", "Q"), ("type", "I"), ("len", "I")])  # data[] follows

# E820_TYPE_* (arch/x86/include/asm/e820/types.h) and SETUP_* (bootparam.h), with the names lazyaccept prints.
E820_TYPES = {
    1: "RAM",
    2: "reserved",
    3: "ACPI",
    4: "NVS",
    5: "unusable",
    7: "PMEM",
    12: "PRAM",
    0xEFFFFFFF: "soft-reserved",
}
E820_TYPE_RAM = 1
SETUP_TYPES = {
    1: "E820_EXT",
    2: "DTB",
    3: "PCI",
    4: "EFI",
    5: "APPLE_PROPERTIES",
    6: "JAILHOUSE",
    7: "CC_BLOB",
    8: "IMA",
    9: "RNG_SEED",
}


def field_offset(name: str) -> int:
    """The offset of a setup_header field from the start of the image (or of boot_params)."""
    return SETUP_HEADER_OFFSET + SETUP_HEADER.offset_of(name)


def has_setup_header(data: Buffer) -> bool:
    at = field_offset("header")
    return bytes(data[at : at + 4]) == SETUP_HEADER_MAGIC


def read_setup_header(data: Buffer) -> dict | None:
    """The setup header's fields, or None when the image has none (or is too short for one)."""
    if len(data) < SETUP_HEADER_OFFSET + SETUP_HEADER.size or not has_setup_header(data):
        return None
    return SETUP_HEADER.unpack(data, SETUP_HEADER_OFFSET)


assert field_offset("header") == 0x202 and field_offset("kernel_version") == 0x20E
assert field_offset("ramdisk_image") == 0x218 and field_offset("setup_data") == 0x250
assert field_offset("init_size") == 0x260 and SETUP_HEADER_OFFSET + SETUP_HEADER.size == 0x26C
assert BOOT_E820_ENTRY.size == 20 and EFI_INFO.size == 32 and SETUP_DATA.size == 16
assert BOOT_PARAMS_OFFSETS["efi_info"] + EFI_INFO.size == BOOT_PARAMS_OFFSETS["e820_entries"] - 8  # alt_mem_k etc.
assert BOOT_PARAMS_OFFSETS["e820_table"] + E820_MAX_ENTRIES_ZEROPAGE * BOOT_E820_ENTRY.size == 0xCD0
