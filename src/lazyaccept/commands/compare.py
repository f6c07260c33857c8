"""`lazyaccept compare`: a matrix of policies over TD sizes, vCPU counts and host profiles, with plots and an
HTML report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from lazyaccept import cli, progress
from lazyaccept.compare import DEFAULT_POLICIES, DEFAULT_SIZES, DEFAULT_VCPUS, compare, table, write_outputs
from lazyaccept.errors import ConfigError
from lazyaccept.tdx.costs import resolve_profile
from lazyaccept.units import format_size

NAME = "compare"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="compare up-front/on-demand policies over TD sizes, vCPUs and host profiles (tables, plots, HTML)",
        description="Run the model (firmware, QEMU direct boot of the Linux 6.12 stub, then Linux to a ready "
        "userspace on the same TD) for every policy x TD size x vCPU count x host profile; a cell whose firmware "
        "phase fails has no OS figures. Print the comparison and write JSON, PNG/SVG plots "
        "of boot time and accepted memory against TD size, the address-space picture and an HTML report.",
    )
    p.add_argument(
        "--sizes",
        default=",".join(format_size(s) for s in DEFAULT_SIZES),
        metavar="LIST",
        help="TD sizes, comma separated (default 4G..4T)",
    )
    p.add_argument("--vcpus", default=",".join(map(str, DEFAULT_VCPUS)), metavar="LIST", help="default 1,8,64")
    p.add_argument("--profiles", default="kvm-2m", metavar="LIST", help="host profiles (default kvm-2m)")
    p.add_argument(
        "--policies",
        default=",".join(p.name for p in DEFAULT_POLICIES),
        metavar="LIST",
        help="subset of: " + ", ".join(p.name for p in DEFAULT_POLICIES),
    )
    p.add_argument("--initrd-size", type=cli.size_arg, default=cli.size_arg("64M"), metavar="SIZE")
    p.add_argument(
        "--resident",
        type=cli.size_arg,
        default=cli.size_arg("512M"),
        metavar="SIZE",
        help="the ready userspace's resident set (default 512M)",
    )
    p.add_argument("--out", metavar="DIR", help="write comparison.json, plots (PNG and SVG) and report.html here")
    cli.add_json_flag(p)
    return NAME


def _list(text: str, parse, what: str) -> list:
    try:
        return [parse(x.strip()) for x in text.split(",") if x.strip()]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"invalid {what} list {text!r}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    sizes = _list(args.sizes, cli.size_arg, "size")
    vcpus = _list(args.vcpus, cli.positive_int_arg, "vCPU")
    profiles = _list(args.profiles, str, "profile")
    for prof in profiles:
        resolve_profile(prof)
    wanted = set(_list(args.policies, str, "policy"))
    unknown = wanted - {p.name for p in DEFAULT_POLICIES}
    if unknown:
        raise ConfigError(
            f"unknown policy {sorted(unknown)[0]!r}: choose from " + ", ".join(p.name for p in DEFAULT_POLICIES)
        )
    policies = [p for p in DEFAULT_POLICIES if p.name in wanted]
    t0 = time.perf_counter()
    total = len(policies) * len(sizes) * len(vcpus) * len(profiles)
    with progress.task("compare", total, "cells") as cells:  # a bar on a terminal (progress.py)
        result = compare(
            policies, sizes, vcpus, profiles, initrd_bytes=args.initrd_size, resident_bytes=args.resident,
            progress=lambda done, _total: cells.update(done),
        )
    written = write_outputs(result, Path(args.out), profiles, vcpus) if args.out else []
    if args.json:
        from dataclasses import asdict

        cli.print_json(
            "compare",
            {
                "cells": [dict(asdict(c), firmware_ns=c.firmware_ns, total_ns=c.total_ns) for c in result.cells],
                "written": [str(p) for p in written],
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        )
        return 0
    for prof in profiles:
        for n in vcpus:
            print(table(result, n, prof))
            print()
    if written:
        print("wrote " + ", ".join(str(p) for p in written))
    print(f"{len(result.cells)} runs in {time.perf_counter() - t0:.1f} s")
    return 0
