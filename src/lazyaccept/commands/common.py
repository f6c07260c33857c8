"""Options shared by commands that build a TD (QEMU's spelling where the concept is the same)."""

from __future__ import annotations

import argparse

from lazyaccept import cli
from lazyaccept.tdx.costs import PROFILES
from lazyaccept.vmm.td import HobConvention, TdConfig


def add_td_options(parser: argparse.ArgumentParser, *, default_ram: str = "64G", default_smp: int = 8) -> None:
    group = parser.add_argument_group("the TD")
    group.add_argument(
        "-m",
        dest="ram",
        type=cli.size_arg,
        default=cli.size_arg(default_ram),
        metavar="SIZE",
        help=f"guest RAM, e.g. 64G, 67000M, 4T (default {default_ram})",
    )
    group.add_argument(
        "-smp",
        dest="smp",
        type=cli.positive_int_arg,
        default=default_smp,
        metavar="N",
        help=f"vCPUs (default {default_smp})",
    )
    group.add_argument(
        "--firmware",
        metavar="IMAGE",
        default=None,
        help="OVMF/TDVF image to take the TDVF metadata from (default: built-in OVMF.fd layout)",
    )
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
