"""`lazyaccept firmware-info IMAGE | --builtin`: the TDVF sections of a firmware image, as QEMU would use them."""

from __future__ import annotations

import argparse
from typing import Any

from lazyaccept import cli
from lazyaccept.vmm.tdvf import TdvfMetadata, attribute_names, builtin_ovmf_metadata, read_firmware

NAME = "firmware-info"


def register(subparsers: Any) -> str:
    parser = subparsers.add_parser(
        NAME,
        help="show the TDVF metadata sections of a firmware image",
        description="Read the TDVF metadata of an OVMF/TDVF image as QEMU does for a TD and list its sections. "
        "A malformed image is refused with the offending field and byte offset.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("image", nargs="?", metavar="IMAGE", help="firmware image, e.g. OVMF.fd")
    source.add_argument("--builtin", action="store_true", help="the built-in layout (Debian's OVMF.fd)")
    cli.add_json_flag(parser)
    return NAME


def metadata_dict(meta: TdvfMetadata) -> dict[str, Any]:
    """The JSON form: integers as numbers, names as strings."""
    return {
        "source": meta.source,
        "image_bytes": meta.image_size,
        "rom_base": meta.rom_base,
        "descriptor_offset": meta.descriptor_offset,
        "sections": [
            {
                "index": s.index,
                "type": s.type.name,
                "type_value": int(s.type),
                "raw_offset": s.raw_offset,
                "raw_size_bytes": s.raw_size,
                "memory_base": s.memory_base,
                "memory_size_bytes": s.memory_size,
                "attributes": attribute_names(s.attributes),
                "attributes_value": int(s.attributes),
                "qemu_add": s.qemu_add,
                "content": "image" if s.from_image else "zero",
                "region": meta.region_of(s),
            }
            for s in meta.sections
        ],
    }


def format_table(meta: TdvfMetadata) -> str:
    header = ("#", "type", "raw offset", "raw size", "memory base", "memory size", "attributes", "QEMU", "content",
              "region")
    rows = [header] + [
        (
            str(s.index),
            s.type.name,
            f"{s.raw_offset:#x}",
            f"{s.raw_size:#x}",
            f"{s.memory_base:#x}",
            f"{s.memory_size:#x}",
            "|".join(attribute_names(s.attributes)) or "-",
            s.qemu_add,
            "image" if s.from_image else "zero",
            meta.region_of(s),
        )
        for s in meta.sections
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        f"firmware:   {meta.source}",
        f"image size: {meta.image_size:#x} ({meta.image_size} bytes)",
        f"ROM base:   {meta.rom_base:#x} (QEMU maps a TD's firmware at 4 GiB - image size)",
        f"TDVF descriptor at image offset {meta.descriptor_offset:#x}, {len(meta.sections)} sections",
        "",
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [
        "",
        "QEMU ADDs every section before the TD runs (already accepted); ADD+MR.EXTEND also measures it into MRTD.",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    meta = builtin_ovmf_metadata() if args.builtin else read_firmware(args.image)
    if args.json:
        cli.print_json("firmware-info", metadata_dict(meta))
    else:
        print(format_table(meta))
    return 0
