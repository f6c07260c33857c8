"""`lazyaccept workload`: the guest side on the model: boot to a ready userspace, then fill memory."""

from __future__ import annotations

import argparse
from typing import Any

from lazyaccept import cli
from lazyaccept.commands import common
from lazyaccept.guest.handoff import GuestCrash
from lazyaccept.guest.linux import LinuxConfig
from lazyaccept.guest.workload import DEFAULT_RESIDENT_BYTES, boot_to_ready, fill_memory
from lazyaccept.units import format_ns, format_size, human_size

NAME = "workload"


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="Linux 6.12's acceptance after the handoff: boot to ready, then fill memory (model)",
        description="Build the TD, run SEC with an up-front policy, hand over as the 6.12 EFI stub does, boot the "
        "Linux acceptance model to a ready userspace, then allocate and write --fill bytes on --workers vCPUs. "
        "Prints each phase's virtual time and what was accepted by whom.",
    )
    common.add_ram_option(p, cli.size_arg("64G"))
    common.add_smp_option(p, 8)
    p.add_argument("--profile", default="kvm-2m", metavar="NAME|FILE")
    p.add_argument("--upfront", type=cli.upfront_arg, default="below-4g", metavar="POLICY")
    p.add_argument(
        "--resident",
        type=cli.size_arg,
        default=DEFAULT_RESIDENT_BYTES,
        metavar="SIZE",
        help="the ready userspace's resident set (default 512M)",
    )
    p.add_argument("--fill", type=cli.size_arg, default=0, metavar="SIZE", help="then allocate and write SIZE")
    p.add_argument("--workers", type=cli.positive_int_arg, default=1, metavar="N", help="vCPUs filling (default 1)")
    p.add_argument(
        "--accept-memory",
        choices=["lazy", "eager"],
        default="lazy",
        help="the kernel's accept_memory= parameter (default lazy)",
    )
    p.add_argument(
        "--no-unaccepted-support",
        action="store_true",
        help="a kernel without CONFIG_UNACCEPTED_MEMORY (before 6.5): type-15 memory is lost",
    )
    cli.add_json_flag(p)
    return NAME


def run(args: argparse.Namespace) -> int:
    kernel = LinuxConfig(accept_memory=args.accept_memory, unaccepted_memory=not args.no_unaccepted_support)
    out: dict[str, Any] = {"ram_bytes": args.ram, "vcpus": args.smp, "upfront": args.upfront}
    try:
        ready, run_ = boot_to_ready(
            args.ram, args.smp, resident_bytes=args.resident, profile=args.profile, upfront=args.upfront, kernel=kernel
        )
        out["sec_ns"] = run_.sec.phase_ns
        out["phases"] = [
            {"name": p.name, "virtual_ns": p.ns, "accepted_by_actor": p.accepted} for p in ready.phases
        ]
        out["lost_bytes"] = ready.lost_bytes
        if args.fill:
            fill = fill_memory(run_.linux, args.fill, args.workers)
            out["fill"] = {
                "size_bytes": fill.bytes,
                "workers": fill.workers,
                "virtual_ns": fill.ns,
                "accepted_bytes": fill.accepted_bytes,
                "accepted_by_actor": fill.accepted_by_actor,
            }
        out["outcome"] = "ok"
    except GuestCrash as exc:
        out["outcome"], out["detail"] = "crash", str(exc)
    if args.json:
        cli.print_json("workload", out)
        return 0 if out["outcome"] == "ok" else 1
    print(
        f"{format_size(args.ram)} TD, {args.smp} vCPUs, {args.profile}, up-front {args.upfront}, "
        f"accept_memory={args.accept_memory}"
    )
    if "sec_ns" in out:
        print(f"  {'SEC (firmware)':32} {format_ns(out['sec_ns']):>12}")
    for p in out.get("phases", []):
        acc = ", ".join(f"{a} {human_size(n)}" for a, n in p["accepted_by_actor"].items() if n)
        print(f"  {p['name']:32} {format_ns(p['virtual_ns']):>12}  {acc}")
    if out.get("lost_bytes"):
        print(f"  RAM lost to this kernel: {human_size(out['lost_bytes'])}")
    if "fill" in out:
        f = out["fill"]
        print(
            f"  fill {human_size(f['size_bytes'])} on {f['workers']} worker(s): {format_ns(f['virtual_ns'])} "
            f"({f['virtual_ns'] / 1e9 / max(f['size_bytes'] / 2**30, 1e-9):.2f} s per GiB), newly accepted "
            f"{human_size(f['accepted_bytes'])}"
        )
    print(f"outcome: {out['outcome']}" + (f": {out['detail']}" if "detail" in out else ""))
    return 0 if out["outcome"] == "ok" else 1
