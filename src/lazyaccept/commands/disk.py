"""`lazyaccept disk --out FILE --from DIR`: a folder as a raw GPT disk image with a FAT ESP, for `boot --disk`
or any VMM (QEMU's -drive file=FILE,format=raw), written sparse by the same writer `--disk-from` boots from."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lazyaccept import cli
from lazyaccept.units import human_size

NAME = "disk"


def register(subparsers: Any) -> str:
    parser = subparsers.add_parser(
        NAME,
        help="write a folder as a raw GPT disk image with a FAT EFI system partition",
        description="Write a raw disk image: a protective MBR, GPT headers and entry arrays, and one EFI system "
        "partition holding the folder's files in a FAT16 or FAT32 volume (vmm/disk.py). The file is sparse: "
        "runs of zeros are skipped. `lazyaccept boot --disk FILE` boots it; so does QEMU.",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the image")
    parser.add_argument("--from", dest="folder", required=True, metavar="DIR", help="the ESP's files")
    parser.add_argument("--fat", type=int, choices=(16, 32), default=32, help="the ESP's FAT (default 32)")
    cli.add_json_flag(parser)
    return NAME


def run(args: argparse.Namespace) -> int:
    from lazyaccept.vmm.disk import build_esp_disk, sources_from_folder

    files = sources_from_folder(Path(args.folder))
    cluster = 32 * 1024 if args.fat == 32 else 2048  # FAT16's 65524 clusters of 2 KiB: up to 128 MiB of files
    disk, volume = build_esp_disk(files, fat_bits=args.fat, cluster_bytes=cluster)
    disk.write_image(Path(args.out))
    used = Path(args.out).stat().st_blocks * 512
    if args.json:
        sizes = {path: extent[1] for path in files if (extent := volume.file_extent(path))}
        cli.print_json(NAME, {
            "path": str(args.out),
            "disk_bytes": disk.size,
            "host_bytes": used,
            "partition_table": "gpt",
            "fat": f"FAT{volume.fat_bits}",
            "cluster_bytes": volume.cluster_bytes,
            "files": sizes,
        })  # fmt: skip
        return 0
    print(f"disk: {args.out}, {human_size(disk.size)} GPT ({human_size(used)} on the host), ESP partition 1 "
          f"FAT{volume.fat_bits} ({volume.cluster_bytes} B clusters), {len(files)} files")
    return 0
