"""The x86 Linux boot protocol's setup header (Documentation/arch/x86/boot.rst, struct setup_header in
arch/x86/include/uapi/asm/bootparam.h), at offset 0x1F1 of a bzImage and of boot_params alike."""

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
