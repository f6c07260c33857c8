"""`lazyaccept initramfs --out FILE`: the initramfs that measures Unaccepted: around a fill under the real kernel."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lazyaccept import cli
from lazyaccept.binaries import BinaryStore
from lazyaccept.errors import InputError
from lazyaccept.guest.initramfs import (
    DEFAULT_FILL_MIB,
    DEFAULT_MARKER,
    FILL_PARAM,
    InitOptions,
    kernel_config_problems,
    parse_fill_mib,
    write_initramfs,
)

NAME = "initramfs"


def register(subparsers: Any) -> str:
    parser = subparsers.add_parser(
        NAME,
        help="write the initramfs (busybox + /init) that reads Unaccepted: before and after a fill",
        description="Write a newc cpio initramfs holding Debian's static busybox and an /init that prints "
        "MemTotal, MemFree, Shmem and Unaccepted from /proc/meminfo, writes N MiB to a tmpfs, prints them "
        f"again and powers off. The kernel command line's {FILL_PARAM}=N overrides --fill-mib at boot, so one "
        "image serves every size. The image is reproducible: its SHA256 is printed.",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the image")
    parser.add_argument(
        "--fill-mib", default=str(DEFAULT_FILL_MIB), metavar="N",
        help=f"MiB /init writes when the command line has no {FILL_PARAM}= (default {DEFAULT_FILL_MIB}; 0: none)",
    )  # fmt: skip
    parser.add_argument("--gzip", action="store_true", help="gzip the archive (the kernel needs CONFIG_RD_GZIP)")
    parser.add_argument(
        "--marker", default=DEFAULT_MARKER, metavar="WORD",
        help=f"the word starting every line /init prints (default {DEFAULT_MARKER})",
    )  # fmt: skip
    parser.add_argument(
        "--busybox", metavar="FILE",
        help="a static x86-64 busybox (default: Debian's busybox-static 1.37, from the pinned package)",
    )  # fmt: skip
    parser.add_argument(
        "--kernel-config", metavar="FILE",
        help="check that this kernel .config can unpack and run the image (refuse it otherwise)",
    )  # fmt: skip
    cli.add_json_flag(parser)
    return NAME


def run(args: argparse.Namespace) -> int:
    options = InitOptions(fill_mib=parse_fill_mib(args.fill_mib), marker=args.marker)
    if args.kernel_config:
        try:
            text = Path(args.kernel_config).read_text(errors="replace")
        except OSError as exc:
            raise InputError(f"--kernel-config {args.kernel_config}: {exc.strerror or exc}") from None
        problems = kernel_config_problems(text, compress=args.gzip)
        if problems:
            raise InputError(f"--kernel-config {args.kernel_config}: " + "; ".join(problems))
    busybox = Path(args.busybox) if args.busybox else BinaryStore().busybox()
    image = write_initramfs(args.out, busybox, options, compress=args.gzip)
    if args.json:
        cli.print_json(NAME, {
            "path": str(image.path),
            "size_bytes": image.size,
            "sha256": image.sha256,
            "compression": image.compression,
            "cpio_size_bytes": image.cpio_size,
            "cpio_sha256": image.cpio_sha256,
            "fill_mib": options.fill_mib,
            "fill_param": FILL_PARAM,
            "marker": options.marker,
            "busybox": str(image.busybox),
            "entries": [entry.name for entry in image.entries],
        })  # fmt: skip
        return 0
    kind = "gzip-compressed" if image.compression == "gzip" else "uncompressed"
    print(f"initramfs: {image.path} (newc cpio, {kind})")
    print(f"size:      {image.size} bytes")
    print(f"sha256:    {image.sha256}")
    if image.compression != "none":
        print(f"cpio:      {image.cpio_size} bytes, sha256 {image.cpio_sha256}")
    print(f"entries:   {len(image.entries)} ({', '.join('/' + e.name for e in image.entries[:4])}, ...)")
    print(f"busybox:   {image.busybox}")
    print(f"/init:     fills {options.fill_mib} MiB unless the kernel command line has {FILL_PARAM}=N; "
          f"its lines start with '{options.marker}'")  # fmt: skip
    return 0
