"""`lazyaccept uki --out FILE`: a unified kernel image, systemd-stub with the kernel, initrd and command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from lazyaccept import cli
from lazyaccept.binaries import BinaryStore
from lazyaccept.guest import uki
from lazyaccept.units import human_size

NAME = "uki"


def register(subparsers: Any) -> str:
    parser = subparsers.add_parser(
        NAME,
        help="build a unified kernel image (systemd-stub + kernel, initrd, command line, os-release)",
        description="Append .osrel, .cmdline, .uname, .initrd and .linux sections to systemd-stub (262, "
        "linuxx64.efi.stub) the way systemd's ukify lays them out, leaving the stub's own sections byte for byte. "
        "The file is written sparse: a synthetic --initrd-size is a hole, a real initrd is copied in chunks. "
        "Boot it with `lazyaccept boot --efi-app FILE`, or let `boot --uki` build one from its own payload.",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the image")
    parser.add_argument("--kernel", "-kernel", metavar="VMLINUZ",
                        help="the kernel (default: Debian's 6.12 cloud kernel)")  # fmt: skip
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--initrd", "-initrd", metavar="FILE", help="initrd file for the .initrd section")
    src.add_argument("--initrd-size", type=cli.size_arg, metavar="SIZE",
                     help="a synthetic initrd of SIZE zero bytes (a hole in the file)")  # fmt: skip
    parser.add_argument("--append", "-append", default="", metavar="CMDLINE", help="the .cmdline section")
    parser.add_argument("--osrel", metavar="FILE",
                        help="the .osrel section (default: a fixed os-release naming lazyaccept, where ukify "
                        "takes the build host's)")  # fmt: skip
    parser.add_argument("--stub", metavar="FILE",
                        help="another systemd-stub (default: linuxx64.efi.stub of systemd-boot-efi 262)")  # fmt: skip
    cli.add_json_flag(parser)
    return NAME


def record(image: uki.UkiImage) -> dict[str, Any]:
    return {
        "path": str(image.path),
        "size_bytes": image.size,
        "stub": str(image.stub),
        "stub_sha256": image.stub_sha256,
        "stub_section_count": image.stub_sections,
        "size_of_image_bytes": image.size_of_image,
        "size_of_initialized_data_bytes": image.size_of_initialized_data,
        "section_alignment_bytes": image.section_alignment,
        "file_alignment_bytes": image.file_alignment,
        "sections": [
            {
                "name": s.name, "virtual_address": s.virtual_address, "virtual_size_bytes": s.virtual_size,
                "raw_offset": s.raw_offset, "raw_size_bytes": s.raw_size, "characteristics": s.characteristics,
                "origin": s.origin,
            }
            for s in image.sections
        ],
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    store = BinaryStore()
    kernel = Path(args.kernel) if args.kernel else store.linux_vmlinuz()
    stub = Path(args.stub) if args.stub else store.systemd_stub()
    parts = uki.payloads(kernel, initrd=args.initrd, initrd_size=args.initrd_size, cmdline=args.append,
                         osrel=args.osrel)  # fmt: skip
    image = uki.build_uki(args.out, stub, parts)
    if args.json:
        cli.print_json(NAME, record(image))
        return 0
    on_disk = os.stat(image.path).st_blocks * 512
    print(f"uki:      {image.path} ({image.size} bytes, {human_size(on_disk)} on disk)")
    print(f"stub:     {image.stub} ({image.stub_sections} sections kept, sha256 {image.stub_sha256[:16]}...)")
    print(f"image:    SizeOfImage {image.size_of_image:#x}, SectionAlignment {image.section_alignment:#x}, "
          f"FileAlignment {image.file_alignment:#x}, CheckSum 0")  # fmt: skip
    print(f"{'section':<9} {'address':>10} {'size':>10} {'offset':>10}  from")
    for s in image.sections:
        origin = "the stub" if s.origin == "stub" else Path(s.origin).name if "/" in s.origin else s.origin
        print(f"{s.name:<9} {s.virtual_address:#10x} {s.virtual_size:#10x} {s.raw_offset:#10x}  {origin}")
    return 0
