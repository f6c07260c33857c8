"""`lazyaccept differential`: the Python firmware and edk2's own TDVF on the same TD and payload, compared field by
field (differential.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lazyaccept import cli
from lazyaccept.differential import DEFAULT_INITRD_SIZE, Differential, run_differential
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.units import format_size, human_size

NAME = "differential"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="boot the Python firmware and the real TDVF on the same TD and payload and compare them field by field",
        description="Boot the same TD (below-4g up front, QEMU direct boot of Debian's 6.12 kernel with an initrd) "
        "once on the Python firmware with the image's edk2 profile and once on the image itself from the reset "
        "vector, and compare SEC's accepts, the UEFI memory map at ExitBootServices, the kernel and initrd, the "
        "unaccepted table and the handoff. Exit 0 when every field is equal or within its documented bound.",
    )
    p.add_argument("-m", dest="ram", type=cli.size_arg, default=4 << 30, metavar="SIZE", help="guest RAM (default 4G)")
    p.add_argument("-smp", dest="smp", type=cli.positive_int_arg, default=1, metavar="N", help="vCPUs (default 1)")
    p.add_argument("--firmware", metavar="IMAGE", help="the OVMF image (default: Debian's OVMF.fd 2025.02)")
    cli.add_edk2_profile_flag(p)
    p.add_argument(
        "--kernel", metavar="VMLINUZ",
        help="the kernel both sides boot (default: Debian's 6.12 cloud kernel; its Debian-signed build with an image "
        "that has Secure Boot on)",
    )  # fmt: skip
    p.add_argument(
        "--shim", "-shim", metavar="FILE",
        help="the real side boots through this shim (QEMU 10's -shim), which loads the kernel; the Python side boots "
        "the kernel directly (default: Debian's Microsoft-signed shim with an image that has Secure Boot on)",
    )  # fmt: skip
    p.add_argument(
        "--initrd-size", type=cli.size_arg, default=DEFAULT_INITRD_SIZE, metavar="SIZE",
        help=f"a synthetic initrd of SIZE bytes (default {format_size(DEFAULT_INITRD_SIZE)})",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=cli.positive_float_arg, default=300.0, metavar="S", help="wall budget per boot (default 300)"
    )
    cli.add_json_flag(p)
    return NAME


def format_table(d: Differential) -> str:
    lines = [
        f"TD {format_size(d.ram)}, {d.vcpus} vCPU(s), below-4g; Python firmware as {d.edk2_profile} vs the real image "
        f"(wall: Python {d.wall_s.get('python', 0):.1f} s, real {d.wall_s.get('real', 0):.1f} s)",
        f"kernel: {d.kernel or 'Debian linux 6.12 cloud (unsigned)'}"
        + (f"; real side through shim {d.shim}" if d.shim else ""),
        *(f"note: {n}" for n in d.notes),
        "",
        f"{'field':34} verdict",
    ]
    for f in d.fields:
        lines.append(f"{f.name:34} {f.verdict}")
        if not f.equal:
            lines.append(f"{'':36}python: {f.python}")
            lines.append(f"{'':36}real:   {f.real}")
            if f.bound is not None:
                lines.append(f"{'':36}bound {human_size(f.bound.max_bytes)}: {f.bound.reason}")
    lines += ["", "result: " + ("PASS (every field equal or within its bound)" if d.ok else "FAIL")]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for flag, name in (("--kernel", args.kernel), ("--shim", args.shim)):
        if name is not None and not Path(name).is_file():
            raise ConfigError(f"{flag} {name!r}: no such file")
    if args.firmware is not None and not Path(args.firmware).is_file():
        raise ConfigError(f"--firmware {args.firmware!r}: no such file")
    d = run_differential(args.ram, args.smp, args.firmware, args.edk2_profile, args.initrd_size, args.timeout,
                         kernel=args.kernel, shim=args.shim)
    if args.json:
        cli.print_json(NAME, {
            "ram_bytes": d.ram, "vcpus": d.vcpus, "edk2_profile": d.edk2_profile, "ok": d.ok, "wall_s": d.wall_s,
            "kernel": d.kernel, "shim": d.shim, "notes": d.notes,
            "fields": [f.as_dict() for f in d.fields],
        })  # fmt: skip
    else:
        print(format_table(d))
    return EXIT_BOOTED if d.ok else EXIT_FAILED
