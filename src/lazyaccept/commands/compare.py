"""`lazyaccept compare`: a matrix of policies over TD sizes, vCPU counts and host profiles, with plots and an
HTML report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from lazyaccept import cli, junit, progress
from lazyaccept.compare import (
    DEFAULT_POLICIES,
    DEFAULT_SIZES,
    DEFAULT_VCPUS,
    Comparison,
    Policy,
    compare,
    comparison_record,
)
from lazyaccept.compare_report import table, write_outputs
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
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
        help="comma separated UPFRONT[+OPTION...]: UPFRONT is eager, all, below-4g or a size (128M); each OPTION "
        "an on-demand option, allocator|option1, loader|option2, accept-service|option3; e.g. 128M+option1, "
        "below-4g+loader+accept-service (default: " + ", ".join(p.name for p in DEFAULT_POLICIES) + ")",
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
    junit.add_flag(p)
    return NAME


def _list(text: str, parse, what: str) -> list:
    try:
        return [parse(x.strip()) for x in text.split(",") if x.strip()]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"invalid {what} list {text!r}: {exc}") from None


def _command_line(args: argparse.Namespace) -> str:
    """The command with every option's effective value, for the report's provenance: it reruns the same matrix
    whatever the defaults become (and main(argv) called from Python has no sys.argv of its own)."""
    words = ["lazyaccept", NAME, "--sizes", args.sizes, "--vcpus", args.vcpus, "--profiles", args.profiles,
             "--policies", args.policies, "--initrd-size", format_size(args.initrd_size),
             "--resident", format_size(args.resident), "--out", args.out]
    return shlex.join(words)


def run_matrix(args: argparse.Namespace) -> tuple[Comparison, dict[str, Any], list[str], list[int]]:
    """The matrix `compare` runs for these options (the Python API's compare() too): the result, its JSON record
    (header included; comparison.json and the plots written when args.out is set), the profiles by name, the vCPUs."""
    sizes = _list(args.sizes, cli.size_arg, "size")
    vcpus = _list(args.vcpus, cli.positive_int_arg, "vCPU")
    profiles = _list(args.profiles, str, "profile")
    for prof in profiles:
        resolve_profile(prof)  # bad input before any run
    names = list(dict.fromkeys(x.strip() for x in args.policies.split(",") if x.strip()))
    if not names:
        raise ConfigError(f"invalid policy list {args.policies!r}: no policy")
    parsed = [Policy.parse(n, bare_unit=cli.CLI_BARE_UNIT) for n in names]
    policies = list({p.name: p for p in parsed}.values())  # 128+option1 and 128M+option1 are one
    t0 = time.perf_counter()
    total = len(policies) * len(sizes) * len(vcpus) * len(profiles)
    with progress.task("compare", total, "cells") as cells:  # a bar on a terminal (progress.py)
        result = compare(
            policies, sizes, vcpus, profiles, initrd_bytes=args.initrd_size, resident_bytes=args.resident,
            progress=lambda done, _total: cells.update(done),
        )
    profiles = list(result.profile_sources)  # by name from here on: a profile file is named by its name key or stem
    written = (
        write_outputs(result, Path(args.out), profiles, vcpus, policies=policies, command_line=_command_line(args))
        if args.out
        else []
    )
    if getattr(args, "junit", None):
        junit.write(args.junit, "lazyaccept compare", junit.compare_cases(result), time_s=time.perf_counter() - t0)
    if args.out:
        written.append(Path(args.out) / "comparison.json")  # written last, listing itself
    record = cli.json_record(
        NAME, comparison_record(result, written=written, wall_s=round(time.perf_counter() - t0, 2))
    )
    if args.out:
        written[-1].write_text(cli.json_text(record))
    return result, record, profiles, vcpus


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    result, record, profiles, vcpus = run_matrix(args)
    written = record["written"]
    failed = EXIT_FAILED if record["failed_cell_count"] else EXIT_BOOTED  # README, "Exit codes"
    if args.json:
        sys.stdout.write(cli.json_text(record))
        return failed
    for prof in profiles:
        for n in vcpus:
            print(table(result, n, prof))
            print()
    if written:
        print("wrote " + ", ".join(written))
    print(f"{len(result.cells)} runs in {time.perf_counter() - t0:.1f} s")
    if failed:
        print(f"{record['failed_cell_count']} of {len(result.cells)} runs do not boot", file=sys.stderr)
    return failed
