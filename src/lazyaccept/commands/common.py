"""Options shared by commands that build a TD, in QEMU's spelling where the concept is QEMU's: -m, -smp, -bios,
-accel, -kernel, -initrd, -append. One definition each, so every command reads them the same way."""

from __future__ import annotations

import argparse
from typing import Any

from lazyaccept import cli
from lazyaccept.tdx.costs import PROFILES
from lazyaccept.units import format_size
from lazyaccept.vmm.td import HobConvention, TdConfig

# QEMU's -accel names and the CPU backend each stands for (lazyaccept.cpu.select.CPU_CHOICES).
ACCEL_BACKENDS = {"kvm": "kvm", "tcg": "unicorn"}


def smp_arg(text: str) -> int:
    """-smp N, -smp cpus=N, or QEMU's -smp N,cpus=N: the vCPU count. A TD here has no sockets, cores or threads to
    lay out, so QEMU's other -smp keys are refused by name rather than ignored."""
    count: int | None = None
    for i, item in enumerate(text.split(",")):
        key, eq, value = item.partition("=")
        if not eq and i == 0:
            value = key
        elif key.strip() != "cpus":
            raise argparse.ArgumentTypeError(
                f"invalid -smp {text!r}: {key.strip() or item!r} is not offered (a TD here is a flat list of vCPUs: "
                "give -smp N or -smp cpus=N)"
            )
        n = cli.positive_int_arg(value.strip())
        if count is not None and n != count:
            raise argparse.ArgumentTypeError(f"invalid -smp {text!r}: {count} and cpus={n} disagree")
        count = n
    assert count is not None  # split() gives at least one item
    return count


def accel_arg(text: str) -> str:
    backend = ACCEL_BACKENDS.get(text.strip())
    if backend is None:
        raise argparse.ArgumentTypeError(
            f"invalid -accel {text!r}: choose kvm or tcg (tcg runs the binaries on unicorn, CPU emulation)"
        )
    return backend


def add_ram_option(group: Any, default: int, what: str = "guest RAM") -> None:
    group.add_argument(
        "-m", dest="ram", type=cli.size_arg, default=default, metavar="SIZE",
        help=f"{what} (QEMU's -m): 4G, 67000M, 4T; a bare number is MiB, 4096B is bytes (default "
        f"{format_size(default)})",
    )  # fmt: skip


def add_smp_option(group: Any, default: int, *, dest: str = "smp", extra: str = "") -> None:
    group.add_argument(
        "-smp", "--smp", dest=dest, type=smp_arg, default=default, metavar="N",
        help=f"vCPUs, QEMU's -smp N or -smp cpus=N (default {default}){extra}",
    )  # fmt: skip


def add_firmware_option(group: Any, help: str) -> None:
    group.add_argument("--firmware", "-bios", dest="firmware", metavar="IMAGE", help=f"{help}; QEMU's -bios")


def add_cpu_options(group: Any, default: str = "auto") -> None:
    """--cpu auto|unicorn|kvm, and QEMU's -accel kvm|tcg writing the same setting."""
    from lazyaccept.cpu.select import CPU_CHOICES

    group.add_argument(
        "--cpu", choices=CPU_CHOICES, default=default,
        help="CPU backend running the real binaries: auto (KVM where it gives the same result), unicorn (CPU "
        f"emulation), kvm (default {default})",
    )  # fmt: skip
    group.add_argument(
        "-accel", dest="cpu", type=accel_arg, default=argparse.SUPPRESS, metavar="kvm|tcg",
        help="QEMU's spelling of --cpu: kvm, or tcg for unicorn (CPU emulation, as QEMU's TCG)",
    )  # fmt: skip


def add_td_options(parser: argparse.ArgumentParser, *, default_ram: str = "64G", default_smp: int = 8) -> None:
    group = parser.add_argument_group("the TD")
    add_ram_option(group, cli.size_arg(default_ram))
    add_smp_option(group, default_smp)
    add_firmware_option(group, "OVMF/TDVF image to take the TDVF metadata from (default: built-in OVMF.fd layout)")
    group.add_argument(
        "--profile",
        default="kvm-2m",
        metavar="NAME|FILE",
        help=f"host cost profile: {', '.join(PROFILES)} or a .toml file (default kvm-2m)",
    )
    group.add_argument(
        "--hob-convention",
        choices=[c.value for c in HobConvention],
        default="qemu",
        help="how the VMM marks pending RAM in the TD HOB (default qemu: type 7)",
    )


def td_config(args: argparse.Namespace) -> TdConfig:
    return TdConfig(
        ram_size=args.ram,
        vcpus=args.smp,
        firmware_path=args.firmware,
        profile=args.profile,
        hob_convention=HobConvention(args.hob_convention),
    )
