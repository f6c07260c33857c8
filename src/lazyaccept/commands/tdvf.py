"""`lazyaccept tdvf`: edk2's own TDVF image from the reset vector on the TDX module, with its report."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from lazyaccept import cli
from lazyaccept.binaries import BinaryStore
from lazyaccept.commands import common
from lazyaccept.cpu.unicorn.td_snapshot import TdvfSnapshot
from lazyaccept.errors import ConfigError
from lazyaccept.guest.acpi_check import acpi_summary, format_acpi
from lazyaccept.json_keys import acpi_json
from lazyaccept.spec.efi import memory_type_name
from lazyaccept.tdvf_run import (
    TDX_GUEST_LINE,
    KernelHandoff,
    KernelRun,
    TdvfReport,
    TdvfRun,
    kernel_accepts_outside_table,
    run_tdvf,
)
from lazyaccept.units import GiB, format_ns, format_size, human_size
from lazyaccept.vmm.tdvf import read_firmware

NAME = "tdvf"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")  # the firmware's terminal control, not text
RELEASES = {  # the pinned Debian builds, by the name a user gives
    "2025.02": BinaryStore.ovmf_fd,
    "2026.08": BinaryStore.ovmf_2026_fd,
    "inteltdx-2026.08": BinaryStore.ovmf_inteltdx_fd,
}


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="run edk2's own TDVF (an OVMF image) from the reset vector on the TDX module",
        description="Build a TD as QEMU does for the image, start its vCPU at the reset vector as the TDX module "
        "does, answer every TDCALL with the TDX module and every TDVMCALL with a q35 VMM, and report how far the "
        "firmware got (today: to the UEFI shell; no payload yet), what it accepted, its TDCALLs, its console and "
        "the TD's measurements. Runs on unicorn; with -smp N the vCPUs take turns on one host thread.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("image", nargs="?", metavar="IMAGE", help="an OVMF/TDVF image (default: Debian's 2025.02)")
    src.add_argument("-bios", "--firmware", dest="bios", metavar="IMAGE", help="the same image, in QEMU's spelling")
    src.add_argument("--release", choices=sorted(RELEASES), help="one of the pinned Debian builds instead of a file")
    common.add_ram_option(p, 2 * GiB)
    common.add_smp_option(p, 1, dest="vcpus", extra=": the APs run the firmware's own mailbox loop, on one host thread")
    p.add_argument(
        "--max-wall", type=cli.positive_float_arg, default=300.0, metavar="S",
        help="stop after S seconds of wall time (default 300): a dead loop or a halted exception handler",
    )  # fmt: skip
    p.add_argument(
        "--kernel", "-kernel", metavar="VMLINUZ",
        help="QEMU direct boot of this kernel through fw_cfg; the run ends when the kernel's own code runs",
    )  # fmt: skip
    p.add_argument(
        "--run-kernel", action="store_true",
        help="with --kernel: do not stop at the kernel's first instruction but go on running it on the same vCPU "
        "(TDCALLs to the TDX module, #VE for port I/O and HLT through its IDT) until it stops or --max-wall ends",
    )  # fmt: skip
    p.add_argument(
        "--initrd", "-initrd", metavar="FILE", help="QEMU's -initrd with --kernel: the stub loads it through LoadFile2"
    )
    p.add_argument(
        "--shim", "-shim", metavar="FILE",
        help="QEMU 10's -shim with --kernel: fw_cfg's etc/boot/shim; the firmware starts it and it loads the kernel "
        "(Secure Boot: a Microsoft-signed shim and a kernel signed by its vendor)",
    )  # fmt: skip
    p.add_argument("--append", "-append", default=TdvfRun.cmdline, metavar="CMDLINE", help="the kernel command line")
    snap = p.add_mutually_exclusive_group()
    snap.add_argument(
        "--snapshot-save", metavar="FILE",
        help="write a snapshot of the TD at the firmware's first look at the payload (its first fw_cfg selection "
        "of a direct-boot item), then go on",
    )  # fmt: skip
    snap.add_argument(
        "--from-snapshot", metavar="FILE",
        help="start from a snapshot --snapshot-save wrote (same image, -m and -smp) instead of the reset vector, "
        "with this run's --kernel/--initrd/--append; load only snapshots you made",
    )  # fmt: skip
    p.add_argument("--console", action="store_true", help="print the whole firmware console, not only its end")
    cli.add_json_flag(p)
    return NAME


def firmware_path(args: argparse.Namespace) -> Path:
    image = args.image or getattr(args, "bios", None)
    if image:
        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"IMAGE {image!r}: no such file")
        return path
    return RELEASES[args.release or "2025.02"](BinaryStore())


def report_dict(rep: TdvfReport) -> dict[str, Any]:
    return {
        "firmware": str(rep.run.firmware),
        "ram_bytes": rep.run.ram,
        "vcpus": rep.run.vcpus,
        "outcome": str(rep.outcome),
        "exit_code": rep.exit_code,
        "detail": rep.detail,
        "rip": rep.rip,
        "module": rep.module,
        "wall_s": round(rep.wall_s, 3),
        "virtual_ns": rep.virtual_ns,
        "tdcalls": rep.tdcalls,
        "tdvmcalls": rep.tdvmcalls,
        "accepted_bytes": rep.accepted_bytes,
        "accepted_ranges": [[s, e] for s, e in rep.accepted_ranges],
        "accepted_by_actor": rep.accepted_by_actor,
        "shared_ranges": [[s, e] for s, e in rep.shared_ranges],
        "fatal": rep.fatal,
        "measurement": rep.measurement,
        "fw_cfg_dma": rep.run.fw_cfg_dma,
        "kernel": str(rep.run.kernel) if rep.run.kernel else None,
        "initrd": str(rep.run.initrd) if rep.run.initrd else None,
        "shim": str(rep.run.shim) if rep.run.shim else None,
        "handoff": handoff_dict(rep.kernel) if rep.kernel is not None else None,
        "kernel_run": kernel_run_dict(rep) if rep.kernel_run is not None else None,
        "console": rep.console,
        "phases": rep.phases,
        "instructions": rep.instructions,
        "instructions_by_module": rep.instructions_by_module,
        "guest_instruction_ps": rep.guest_instruction_ps,
        "notes": rep.notes,
    }


def handoff_dict(k: KernelHandoff) -> dict[str, Any]:
    """What the stub left for the kernel (docs/JSON.md, "tdvf"): the same reading as `boot`'s."""
    bp, h = k.boot_params, k.handoff
    table = h.table if h is not None else None
    return {
        "boot_params": k.boot_params_gpa,
        "kernel_load": k.kernel_load,
        "cmdline": bp.cmdline if bp else None,
        "initrd": [bp.ramdisk_image, bp.ramdisk_size] if bp and bp.ramdisk_size else None,
        "e820": [[e.start, e.size, e.type] for e in bp.e820] if bp else [],
        "memory_map": [[d.type, d.physical_start, d.number_of_pages, d.attribute] for d in k.memory_map],
        "unaccepted_table": None if table is None else {
            "address": h.table_address if h else None,
            "unit_bytes": table.unit_size,
            "phys_base": table.phys_base,
            "bitmap_bytes": table.bitmap_bytes,
            "set_bytes": table.set_bytes(),
        },
        "acpi": acpi_json(acpi_summary(h.acpi, h.memory_map)) if h is not None else None,
        "problems": list(k.check.problems),
        "lost_bytes": k.check.lost_bytes,
    }


def kernel_run_dict(rep: TdvfReport) -> dict[str, Any]:
    """The kernel's own run after the handoff (docs/JSON.md, "tdvf"): --run-kernel."""
    assert rep.kernel_run is not None
    return kernel_run_fields(rep.kernel_run, kernel_accepts_outside_table(rep))


def kernel_run_fields(k: KernelRun, outside: list[tuple[int, int]]) -> dict[str, Any]:
    """A kernel run's JSON (either firmware's: `tdvf` and `boot --run-kernel`); `outside`: its accepts outside
    the stub's unaccepted table."""
    return {
        "stop": k.stop_kind,
        "detail": k.detail,
        "rip": k.rip,
        "tdx_guest_detected": k.tdx_guest_detected,
        "panic": k.panic,
        "last_reported_rip": k.last_reported_rip,
        "msr": k.msr,
        "accepted_bytes": k.accepted_bytes,
        "accept_tdcalls": k.accept_tdcalls,
        "accepts": [[gpa, size] for gpa, size in k.accepts],
        "accepts_outside_table": [[gpa, size] for gpa, size in outside],
        "accepts_after": [{"line": line, "accepted_bytes": n, "tdcalls": c} for line, n, c in k.accepts_after],
        "tdcalls": k.tdcalls,
        "tdvmcalls": k.tdvmcalls,
        "ve": k.ve,
        "exceptions": k.exceptions,
        "io_sites": k.io_sites,
        "wall_s": round(k.wall_s, 3),
        "instructions": k.instructions,
        "virtual_ns": k.virtual_ns,
        "shared_by_kernel": [[s, e - s] for s, e in k.shared_by_kernel],
        "progress": k.progress.as_dict() if k.progress is not None else None,
        "meminfo_before": k.meminfo_before,
        "meminfo_after": k.meminfo_after,
        "fill_accepts": [[gpa, size] for gpa, size in k.fill_accepts] if k.fill_accepts is not None else None,
        "fill_accepted_bytes": k.fill_accepted_bytes,
        "console": k.console,
    }


def format_kernel_run(rep: TdvfReport) -> list[str]:
    assert rep.kernel_run is not None
    return kernel_run_lines(rep.kernel_run, kernel_accepts_outside_table(rep))


def kernel_run_lines(k: KernelRun, outside: list[tuple[int, int]]) -> list[str]:
    """A kernel run in the text report (either firmware's)."""
    counted = f", {k.instructions:,} guest instructions" if k.instructions is not None else ""
    return [
        "",
        f"kernel:    ran on after the handoff for {k.wall_s:.1f} s wall{counted}; stopped ({k.stop_kind}) at RIP "
        f"{k.rip:#x}: {k.detail}",
        f"  '{TDX_GUEST_LINE}' on its console: {'yes' if k.tdx_guest_detected else 'no'}"
        + (f"; its last oops RIP: {k.last_reported_rip}" if k.last_reported_rip else ""),
        f"  accepted by the kernel: {human_size(k.accepted_bytes)} in {len(k.accepts)} TDG.MEM.PAGE.ACCEPT "
        f"({k.accept_tdcalls} issued); "
        + ("all within the stub's unaccepted table" if not outside else f"{len(outside)} OUTSIDE the table"),
        *[f"    {human_size(n):>10} in {c:>4} after: {line[:100]}" for line, n, c in k.accepts_after],
        *(k.progress.lines() if k.progress is not None else []),
        "  TDCALLs:   " + (", ".join(f"{n} {c}" for n, c in sorted(k.tdcalls.items())) or "none"),
        "  TDVMCALLs: " + (", ".join(f"{n} {c}" for n, c in sorted(k.tdvmcalls.items())) or "none"),
        "  #VE:       " + (", ".join(f"{n} {c}" for n, c in sorted(k.ve.items())) or "none")
        + f" ({k.io_sites} port I/O sites)",
        "  exceptions: " + (", ".join(f"{n} {c}" for n, c in sorted(k.exceptions.items())) or "none"),
        *_format_fill(k),
    ]


def _format_fill(k: KernelRun) -> list[str]:
    """/init's Unaccepted before and after its fill, and what the kernel accepted meanwhile."""
    before, after = k.meminfo_before.get("Unaccepted"), k.meminfo_after.get("Unaccepted")
    if before is None or after is None or k.fill_accepted_bytes is None:
        return []
    return [f"  /init's fill: Unaccepted {before:,} kB before, {after:,} kB after; the kernel accepted "
            f"{human_size(k.fill_accepted_bytes)} in {len(k.fill_accepts or [])} TDG.MEM.PAGE.ACCEPT meanwhile"]


def format_handoff(k: KernelHandoff) -> list[str]:
    bp, h = k.boot_params, k.handoff
    lines = [f"handoff:   boot_params at {k.boot_params_gpa:#x}"
             + (f", kernel decompressed to {k.kernel_load:#x}" if k.kernel_load is not None else "")]
    if bp is not None:
        ram = sum(e.size for e in bp.ram())
        lines.append(f"  e820:    {len(bp.e820)} entries, {human_size(ram)} RAM")
        if bp.ramdisk_size:
            lines.append(f"  initrd:  {human_size(bp.ramdisk_size)} at {bp.ramdisk_image:#x}")
    if k.memory_map:
        by_type: dict[str, int] = {}
        for d in k.memory_map:
            name = memory_type_name(d.type)
            by_type[name] = by_type.get(name, 0) + d.size
        lines.append(f"  UEFI memory map at ExitBootServices: {len(k.memory_map)} descriptors")
        lines += [f"    {name:<28} {human_size(n)}" for name, n in sorted(by_type.items(), key=lambda kv: -kv[1])]
    if h is not None and h.table is not None:
        t = h.table
        lines.append(f"  unaccepted table at {h.table_address:#x}: {human_size(t.set_bytes())} unaccepted in "
                     f"{human_size(t.unit_size)} units from {t.phys_base:#x}")
    elif h is not None:
        lines.append("  unaccepted table: none installed")
    if h is not None:
        lines += format_acpi(acpi_summary(h.acpi, h.memory_map))
    if k.check.problems:
        lines += [f"  PROBLEM: {p}" for p in k.check.problems]
    elif k.check.lost_bytes:
        lines.append(f"  LOST: {human_size(k.check.lost_bytes)} of RAM is unaccepted and out of e820")
    else:
        lines.append("  check:   the handoff agrees with the TDX module (every e820 RAM byte accepted or in the table)"
                     " and its ACPI tables are sound")
    return lines


def format_report(rep: TdvfReport, whole_console: bool = False) -> str:
    lines = [
        f"firmware:  {rep.run.firmware} ({format_size(rep.run.ram)}, {rep.run.vcpus} vCPU, unicorn)",
        f"outcome:   {str(rep.outcome).upper()}: {rep.detail}",
        f"stopped:   RIP {rep.rip:#x}" + (f" in {rep.module}" if rep.module else ""),
        f"time:      {rep.wall_s:.1f} s wall, {format_ns(rep.virtual_ns)} virtual on vCPU 0",
        "TDCALLs:   " + ", ".join(f"{k} {v}" for k, v in sorted(rep.tdcalls.items())),
        "TDVMCALLs: " + (", ".join(f"{k} {v}" for k, v in sorted(rep.tdvmcalls.items())) or "none"),
        f"accepted:  {human_size(rep.accepted_bytes)} in {len(rep.accepted_ranges)} ranges, by "
        + ", ".join(f"{a} {human_size(n)}" for a, n in sorted(rep.accepted_by_actor.items())),
        f"shared:    {human_size(sum(e - s for s, e in rep.shared_ranges))} converted through MapGPA",
        f"MRTD:      {rep.measurement.get('mrtd')}",
    ]
    if rep.fatal:
        lines.append(f"fatal:     {rep.fatal}")
    lines += _firmware_work_lines(rep)
    lines += [f"note:      {note}" for note in rep.notes]
    if rep.kernel is not None:
        lines += format_handoff(rep.kernel)
    if rep.kernel_run is not None:
        lines += format_kernel_run(rep)
    console = ANSI_ESCAPE.sub("", rep.console).splitlines()
    shown = console if whole_console else console[-12:]
    lines += ["", f"console ({len(console)} lines{'' if whole_console else ', the last 12'}):"]
    lines += [f"  | {line}" for line in shown]
    return "\n".join(lines)


def _firmware_work_lines(rep: TdvfReport) -> list[str]:
    """The phases table and the rate the firmware's instructions were charged at."""
    if rep.instructions is None:
        head = "phases (virtual time from TDCALLs only):"
    else:
        head = f"phases ({rep.instructions:,} guest instructions at {rep.guest_instruction_ps} ps each):"
    lines = ["", head, f"  {'phase':<13}{'virtual':>12}{'instructions':>16}{'accepted':>12}{'wall':>9}"]
    for p in rep.phases:
        lines.append(
            f"  {p['name']:<13}{format_ns(p['virtual_ns']):>12}{p['instructions']:>16,}"
            f"{human_size(p['accepted_bytes']):>12}{p['wall_s']:>8.1f}s"
        )
    top = list(rep.instructions_by_module.items())[:6]
    if top:
        lines.append("  most instructions: " + ", ".join(f"{m} {n / 1e6:.0f}M" for m, n in top))
    lines += [f"  note: {note}" for note in rep.notes]
    return lines


def run(args: argparse.Namespace) -> int:
    image = firmware_path(args)
    read_firmware(str(image))  # QEMU's checks first: an image that fails them is refused before it runs
    kernel, initrd = _payload_file(args.kernel, "--kernel"), _payload_file(args.initrd, "--initrd")
    shim = _payload_file(args.shim, "--shim")
    if initrd is not None and kernel is None:
        raise ConfigError("--initrd needs --kernel (QEMU's -initrd goes with -kernel)")
    if shim is not None and kernel is None:
        raise ConfigError("--shim needs --kernel (QEMU's -shim goes with -kernel)")
    if args.run_kernel and kernel is None:
        raise ConfigError("--run-kernel needs --kernel")
    snapshot = TdvfSnapshot.load(Path(args.from_snapshot)) if args.from_snapshot else None
    rep = run_tdvf(
        TdvfRun(
            image, ram=args.ram, vcpus=args.vcpus, max_wall_s=args.max_wall, kernel=kernel, initrd=initrd, shim=shim,
            cmdline=args.append, snapshot=snapshot,
            snapshot_save=Path(args.snapshot_save) if args.snapshot_save else None, run_kernel=args.run_kernel,
        )
    )
    if args.json:
        cli.print_json(NAME, report_dict(rep))
    else:
        print(format_report(rep, args.console))
    return rep.exit_code


def _payload_file(name: str | None, flag: str) -> Path | None:
    if name is None:
        return None
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{flag} {name!r}: no such file")
    return path
