"""`lazyaccept differential`: the Python firmware and edk2's own TDVF on the same TD and payload, compared field by
field (differential.py); with --linux, the Linux model and the real kernel after the same Python firmware handoff
(linux_differential.py)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from lazyaccept import cli, junit
from lazyaccept.commands import common
from lazyaccept.differential import DEFAULT_INITRD_SIZE, Differential, run_differential
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.linux_differential import format_table as format_linux_table
from lazyaccept.linux_differential import run_linux_differential
from lazyaccept.units import format_size, human_size

NAME = "differential"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="boot the Python firmware and the real TDVF on the same TD and payload and compare them field by field",
        description="Boot the same TD (below-4g up front, QEMU direct boot of Debian's 6.12 kernel with an initrd) "
        "once on the Python firmware with the image's edk2 profile and once on the image itself from the reset "
        "vector, and compare SEC's accepts, the UEFI memory map at ExitBootServices, the kernel and initrd, the "
        "unaccepted table and the handoff. With --linux: boot the Python firmware twice on a 1-vCPU TD, once "
        "followed by the Linux model and once by the real kernel (--run-kernel), and compare what Linux accepts "
        "in each of its phases up to /init, the memmap, SWIOTLB's buffer and meminfo's Unaccepted at /init. Exit 0 "
        "when every field is equal or within its documented bound.",
    )
    p.add_argument(
        "--linux", action="store_true",
        help="the Linux model against the real kernel after the Python firmware's handoff (1 vCPU; a run takes "
        "minutes)",
    )  # fmt: skip
    p.add_argument(
        "--initrd", "-initrd", metavar="FILE",
        help="with --linux: an initramfs whose /init prints /proc/meminfo (default: `lazyaccept initramfs`'s, built "
        "in a temporary directory)",
    )  # fmt: skip
    common.add_ram_option(p, 4 << 30)
    common.add_smp_option(p, 1)
    common.add_firmware_option(p, "the OVMF image (default: Debian's OVMF.fd 2025.02)")
    cli.add_edk2_profile_flag(p)
    p.add_argument(
        "--kernel", "-kernel", metavar="VMLINUZ",
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
        help=f"a synthetic initrd of SIZE (default {format_size(DEFAULT_INITRD_SIZE)})",
    )  # fmt: skip
    p.add_argument(
        "--timeout", type=cli.positive_float_arg, metavar="S",
        help="wall budget per boot (default 300; 900 with --linux, whose real kernel runs under emulation)"
    )
    cli.add_json_flag(p)
    junit.add_flag(p)
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


def run_linux(args: argparse.Namespace) -> int:
    if args.smp != 1:
        raise ConfigError(f"--linux runs the real kernel after the Python firmware, which needs 1 vCPU, not {args.smp}")
    for flag, given in (("--firmware", args.firmware), ("--kernel", args.kernel), ("--shim", args.shim),
                        ("--edk2-profile", args.edk2_profile)):
        if given is not None:
            raise ConfigError(f"--linux compares Debian's 6.12 with its model after the default firmware: {flag} "
                              "is not for it")
    if args.initrd is not None and not Path(args.initrd).is_file():
        raise ConfigError(f"--initrd {args.initrd!r}: no such file")
    with tempfile.TemporaryDirectory(prefix="lazyaccept-initrd-") as tmp:
        initrd = args.initrd
        if initrd is None:
            from lazyaccept.binaries import BinaryStore
            from lazyaccept.guest.initramfs import write_initramfs

            initrd = str(write_initramfs(Path(tmp) / "initramfs.cpio.gz", BinaryStore().busybox(), compress=True).path)
        d = run_linux_differential(args.ram, initrd, timeout_s=args.timeout or 900.0)
    if args.junit:
        cases = junit.differential_cases(d.fields, classname="lazyaccept.differential.linux", left="model")
        junit.write(args.junit, "lazyaccept differential --linux", cases, time_s=sum(d.wall_s.values()))
    if args.json:
        cli.print_json(NAME, {"linux": True, **d.as_dict()})
    else:
        print(format_linux_table(d))
    return EXIT_BOOTED if d.ok else EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    if args.linux:
        return run_linux(args)
    if args.initrd is not None:
        raise ConfigError("--initrd is for --linux (the firmware differential boots a synthetic --initrd-size)")
    for flag, name in (("--kernel", args.kernel), ("--shim", args.shim)):
        if name is not None and not Path(name).is_file():
            raise ConfigError(f"{flag} {name!r}: no such file")
    if args.firmware is not None and not Path(args.firmware).is_file():
        raise ConfigError(f"--firmware {args.firmware!r}: no such file")
    d = run_differential(args.ram, args.smp, args.firmware, args.edk2_profile, args.initrd_size, args.timeout or 300.0,
                         kernel=args.kernel, shim=args.shim)
    if args.junit:
        cases = junit.differential_cases(d.fields, classname="lazyaccept.differential")
        junit.write(args.junit, "lazyaccept differential", cases, time_s=sum(d.wall_s.values()))
    if args.json:
        cli.print_json(NAME, {
            "linux": False, "ram_bytes": d.ram, "vcpus": d.vcpus, "edk2_profile": d.edk2_profile, "ok": d.ok,
            "wall_s": d.wall_s, "kernel": d.kernel, "shim": d.shim, "notes": d.notes,
            "fields": [f.as_dict() for f in d.fields],
        })  # fmt: skip
    else:
        print(format_table(d))
    return EXIT_BOOTED if d.ok else EXIT_FAILED
