"""`lazyaccept sec`: build a TD as QEMU does and run TDVF's SEC up-front accept on it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lazyaccept import cli
from lazyaccept.commands.common import add_td_options, td_config
from lazyaccept.exitcodes import EXIT_TERMINATED
from lazyaccept.firmware.pi.hob import MemoryAllocationHob, ResourceHob
from lazyaccept.firmware.profiles import resolve
from lazyaccept.firmware.sec import SecResult, parse_policy, run_sec, verify_against_truth
from lazyaccept.json_keys import tdx_stats_json
from lazyaccept.tdx.module import TdTerminated
from lazyaccept.units import format_ns, format_size, human_size
from lazyaccept.vmm.layout import describe_split
from lazyaccept.vmm.td import Td, build_td

NAME = "sec"


def register(subparsers: Any) -> str:
    parser = subparsers.add_parser(
        NAME,
        help="lay out a TD and run SEC's parallel up-front accept",
        description="Build a TD as QEMU's q35 machine does (RAM, TDVF sections, TD HOB), run TDVF SEC's up-front "
        "accept on all vCPUs with edk2's 32 MiB striping, and show the TDX module's truth and the HOB list DXE "
        "receives.",
    )
    add_td_options(parser)
    parser.add_argument(
        "--upfront",
        type=cli.upfront_arg,
        default="below-4g",
        metavar="POLICY",
        help="below-4g (upstream edk2), all (eager), or a size such as 512M (default below-4g)",
    )
    cli.add_edk2_profile_flag(parser)
    cli.add_json_flag(parser)
    return NAME


def result_dict(td: Td, sec: SecResult) -> dict[str, Any]:
    return {
        "td": {
            "ram_bytes": td.ram_size,
            "vcpus": td.config.vcpus,
            "profile": td.tdx.profile.name,
            "firmware": td.firmware.source,
            "below_4g_bytes": td.split.below_4g,
            "above_4g_bytes": td.split.above_4g,
            "ram_entries": [{"start": e.start, "size_bytes": e.size, "kind": e.kind.value} for e in td.ram_entries],
            "td_hob": {"base": td.hob_base, "size_bytes": len(td.hob_bytes)},
            "vmm_build_ns": td.vmm_build_ns,
        },
        "sec": {
            "policy": sec.policy.name,
            "hob_convention": sec.convention,
            "accepted_bytes": sec.accepted_bytes,
            "sec_accepted_bytes": sec.sec_accepted_bytes,
            "phase_ns": sec.phase_ns,
            "vcpu_ns": sec.vcpu_ns,
            "ap_stack": list(sec.ap_stack) if sec.ap_stack else None,
            "tdx_stats": tdx_stats_json(sec.stats.as_dict()),
            "notes": sec.notes,
            "dropped_tail_bytes": sec.dropped_tail_bytes,
        },
        "edk2_profile": sec.edk2_profile.name,
        "edk2_profile_why": sec.edk2_profile_why,
        "dxe_hob_list": {
            "base": sec.dxe_hob_base,
            "size_bytes": len(sec.dxe_hob_bytes),
            "resources": [
                {"type": h.resource_type.name, "start": h.start, "length_bytes": h.length}
                for h in sec.dxe_hobs.hobs
                if isinstance(h, ResourceHob)
            ],
            "allocations": [
                {"base": h.base, "length_bytes": h.length, "memory_type": h.memory_type}
                for h in sec.dxe_hobs.hobs
                if isinstance(h, MemoryAllocationHob)
            ],
        },
        "truth_check": verify_against_truth(td, sec),
    }


def format_result(td: Td, sec: SecResult) -> str:
    lines = [
        f"TD: {format_size(td.ram_size)} RAM ({describe_split(td.split)}), {td.config.vcpus} vCPUs, "
        f"host profile {td.tdx.profile.name}, firmware {td.firmware.source}",
        f"VMM build: {len(td.ram_entries)} RAM entries, TD HOB {len(td.hob_bytes)} bytes at {td.hob_base:#x}, "
        f"{format_ns(td.vmm_build_ns)} of ADD/MR.EXTEND",
        "",
        f"{'start':>18} {'end':>18} {'size':>12}  state",
    ]
    runs: list[list] = []
    for rs, re_ in sec.ram:
        for s, e, v in sec.accepted.runs(rs, re_):
            if runs and runs[-1][1] == s and runs[-1][2] == v:
                runs[-1][1] = e
            else:
                runs.append([s, e, v])
    for s, e, v in runs:
        lines.append(f"{s:#18x} {e:#18x} {human_size(e - s):>12}  {'accepted' if v else 'unaccepted'}")
    st = sec.stats
    lines += [
        "",
        f"edk2 profile {sec.edk2_profile.name}: {sec.edk2_profile_why}",
        f"SEC up-front policy {sec.policy.name}: {human_size(sec.accepted_bytes)} accepted in all "
        f"({human_size(sec.sec_accepted_bytes)} by SEC), phase {format_ns(sec.phase_ns)} (slowest vCPU)",
        f"  TDCALLs {st.tdcalls:,}, exits {st.exits:,}, 2M pages {st.accepted_2m:,}, 4K pages {st.accepted_4k:,}, "
        f"size mismatches {st.mismatches:,}",
        f"  per vCPU: {', '.join(format_ns(ns) for ns in sec.vcpu_ns[:8])}{' ...' if len(sec.vcpu_ns) > 8 else ''}",
    ]
    if sec.ap_stack:
        lines.append(f"  AP stacks at [{sec.ap_stack[0]:#x}, {sec.ap_stack[1]:#x}), accepted first by the BSP")
    lines += [f"  note: {n}" for n in sec.notes]
    problems = verify_against_truth(td, sec)
    lines.append(f"SEC's record vs the TDX module: {'agree' if not problems else '; '.join(problems)}")
    lines.append(
        f"HOB list for DXE: {len(sec.dxe_hobs.hobs)} HOBs, {len(sec.dxe_hob_bytes)} bytes at {sec.dxe_hob_base:#x}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    policy = parse_policy(args.upfront)
    td = build_td(td_config(args))
    try:
        sec = run_sec(td, policy, resolve(args.edk2_profile, td.firmware))
    except TdTerminated as exc:  # the TDX module ended the TD (e.g. an access to memory never accepted)
        print(f"lazyaccept sec: TD terminated in SEC: {exc.termination}", file=sys.stderr)
        return EXIT_TERMINATED
    if args.json:
        cli.print_json("sec", result_dict(td, sec))
    else:
        print(format_result(td, sec))
    return 0
