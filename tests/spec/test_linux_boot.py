"""boot_params layouts of lazyaccept.spec.linux_boot: the zero-page offsets and an E820 round trip."""

from __future__ import annotations

from lazyaccept.guest.boot_params import parse_boot_params
from lazyaccept.spec import linux_boot as S


def test_zero_page_offsets() -> None:
    assert S.BOOT_PARAMS_OFFSETS["hdr"] + S.SETUP_HEADER.offset_of("cmd_line_ptr") == 0x228
    assert S.BOOT_E820_ENTRY.size == 20 and S.SETUP_DATA.size == 16 and S.EFI_INFO.size == 32


def test_written_with_the_layouts_read_back_by_the_parser() -> None:
    zp = bytearray(S.BOOT_PARAMS_SIZE)
    entries = [(0, 0xA0000, 1), (0x100000, 0x7FF00000, 1), (0x80000000, 0x1000, 2)]
    zp[S.BOOT_PARAMS_OFFSETS["e820_entries"]] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        at = S.BOOT_PARAMS_OFFSETS["e820_table"] + i * S.BOOT_E820_ENTRY.size
        zp[at : at + S.BOOT_E820_ENTRY.size] = S.BOOT_E820_ENTRY.pack(addr=addr, size=size, type=kind)
    ext_at = S.BOOT_PARAMS_OFFSETS["ext_ramdisk_image"]
    zp[ext_at : ext_at + S.BOOT_PARAMS_EXT.size] = S.BOOT_PARAMS_EXT.pack(ext_ramdisk_image=1)
    rd_at = S.field_offset("ramdisk_image")
    zp[rd_at : rd_at + 4] = (0x7000_0000).to_bytes(4, "little")
    bp = parse_boot_params(bytes(zp), 0x10000)
    assert [(e.start, e.size, e.type) for e in bp.e820] == entries
    assert bp.ramdisk_image == 0x1_7000_0000 and len(bp.ram()) == 2
