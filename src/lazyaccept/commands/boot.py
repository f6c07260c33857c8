"""`lazyaccept boot`: QEMU direct boot of a real Linux EFI stub on a lazily accepted TD, with its report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lazyaccept import cli, progress, scenario
from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.cpu.select import CPU_CHOICES
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.guest.acpi_check import format_acpi
from lazyaccept.guest.boot_params import e820_type_name
from lazyaccept.scenario import unescape_keys
from lazyaccept.spec.efi import memory_type_name
from lazyaccept.units import format_ns, format_size, human_size

NAME = "boot"
DEFAULTS = BootScenario()  # the flags' defaults are the API's


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="boot the real Linux EFI stub on a lazily accepted TD (QEMU direct boot) and check the handoff",
        description="Build a TD as QEMU does, run SEC's up-front accept and the DXE memory services, load the "
        "kernel as OVMF's QEMU direct boot does, run the unmodified EFI stub under CPU emulation until it jumps "
        "into the kernel, and check what it hands over against the TDX module's truth.",
    )
    scenario.track_given_flags(p)  # so that flags given with --scenario can win over the file
    p.add_argument(
        "--scenario",
        metavar="FILE",
        help="read the TD, firmware, loader and payload from a TOML scenario; flags given here override it",
    )
    g = p.add_argument_group("the TD")
    g.add_argument(
        "-m", dest="ram", type=cli.size_arg, default=DEFAULTS.ram, metavar="SIZE",
        help=f"guest RAM (default {format_size(DEFAULTS.ram)})",
    )
    g.add_argument(
        "-smp", dest="smp", type=cli.positive_int_arg, default=DEFAULTS.smp, metavar="N",
        help=f"vCPUs (default {DEFAULTS.smp})",
    )
    g.add_argument("--profile", default="kvm-2m", metavar="NAME|FILE", help="host cost profile (default kvm-2m)")
    g.add_argument("--firmware", metavar="IMAGE", help="OVMF image for the TDVF metadata (default built-in)")
    g.add_argument(
        "--firmware-exec", action="store_true",
        help="run the --firmware image itself (default: Debian's OVMF.fd 2025.02), edk2's own TDVF from the reset "
        "vector, instead of the Python firmware; it accepts what its build accepts (no --upfront/--option)",
    )  # fmt: skip
    g.add_argument(
        "--shim", "-shim", metavar="FILE",
        help="with --firmware-exec: QEMU 10's -shim, a first-stage loader the firmware starts and that loads the "
        "kernel (Secure Boot: a Microsoft-signed shim and a kernel its vendor signed)",
    )  # fmt: skip
    cli.add_edk2_profile_flag(g)
    f = p.add_argument_group("firmware policy")
    f.add_argument(
        "--upfront",
        default="below-4g",
        metavar="POLICY",
        help="SEC up-front accept: below-4g, all, or a size such as 256M (default below-4g)",
    )
    f.add_argument(
        "--option",
        dest="options",
        action="append",
        type=int,
        choices=[1, 2, 3],
        default=[],
        help="on-demand accept: 1 allocator, 2 loader, 3 AcceptMemory boot service (repeatable)",
    )
    f.add_argument(
        "--accept-all-at-exit", action="store_true", help="accept all memory at ExitBootServices unless the OS opts in"
    )
    f.add_argument(
        "--allow-unaccepted-protocol",
        action="store_true",
        help="install OVMF's memory-acceptance protocol (the OS's opt-in)",
    )
    f.add_argument("--no-cc-measurement", action="store_true", help="do not offer EFI_CC_MEASUREMENT_PROTOCOL")
    k = p.add_argument_group("the payload (QEMU's -kernel/-initrd/-append)")
    k.add_argument("--kernel", metavar="VMLINUZ", help="kernel with an EFI stub (default: Debian's 6.12 kernel)")
    k.add_argument("--efi-app", metavar="APP.efi", help="run this EFI application instead of booting a kernel")
    src = k.add_mutually_exclusive_group()
    src.add_argument("--initrd", metavar="FILE", help="initrd file")
    src.add_argument("--initrd-size", type=cli.size_arg, metavar="SIZE", help="a synthetic initrd of SIZE bytes")
    k.add_argument(
        "--append",
        default="console=ttyS0 nokaslr",
        metavar="CMDLINE",
        help="kernel command line (default 'console=ttyS0 nokaslr')",
    )
    k.add_argument(
        "--stream-initrd",
        action="store_true",
        help="keep no firmware copy of the initrd: LoadFile2 streams it from the host",
    )
    gr = p.add_argument_group("booting through GRUB from a disk")
    gr.add_argument(
        "--grub",
        action="store_true",
        help="boot Debian's GRUB 2.12 from a GPT disk's EFI system partition; GRUB loads the kernel and initrd",
    )
    gr.add_argument(
        "--disk-from",
        metavar="DIR",
        help="the EFI system partition's files (kernel, initrd, grub.cfg; a top-level grub.cfg is also put where "
        "GRUB looks, /EFI/debian/grub.cfg); default: the kernel, the initrd and a generated grub.cfg",
    )
    gr.add_argument(
        "--write-disk-dir",
        metavar="DIR",
        help="write such a folder (the kernel, a sparse synthetic initrd of --initrd-size, grub.cfg) and boot from it",
    )
    gr.add_argument("--grub-efi", metavar="FILE", help="another grubx64.efi (default: Debian's monolithic image)")
    gr.add_argument("--grub-timeout", type=int, default=0, metavar="S", help="menu timeout of the generated grub.cfg")
    gr.add_argument(
        "--type",
        dest="type_now",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys typed from the start (\\n is Enter; {up} {down} {esc} name keys); repeatable",
    )
    gr.add_argument(
        "--type-at-prompt",
        action="append",
        default=[],
        metavar="KEYS",
        help="keys typed each time GRUB shows its 'grub>' prompt, in order; repeatable",
    )
    gr.add_argument("--interactive", action="store_true", help="this terminal is the console: type at GRUB yourself")
    gr.add_argument("--tcg2", action="store_true", help="also offer EFI_TCG2_PROTOCOL (a vTPM)")
    gr.add_argument("--fat", type=int, choices=[16, 32], default=32, help="FAT type of the partition (default 32)")
    r = p.add_argument_group("the run")
    r.add_argument(
        "--cpu",
        choices=CPU_CHOICES,
        default="auto",
        help="CPU backend: auto (KVM where it gives the same result), unicorn, kvm (default auto)",
    )
    r.add_argument("--rng-seed", type=int, default=0, help="seed of EFI_RNG_PROTOCOL (default 0)")
    r.add_argument("--no-log", action="store_true", help="do not record each service call")
    r.add_argument(
        "--timeout", type=cli.positive_float_arg, default=600.0, metavar="S", help="wall-time budget (default 600)"
    )
    r.add_argument("--calls", action="store_true", help="print the service-call sequence")
    r.add_argument(
        "--run-kernel",
        action="store_true",
        help="after the handoff, run the real kernel on a TD vCPU (unicorn) instead of the Linux model, until it "
        "powers off, panics or stops (1 vCPU; the budget is --timeout)",
    )
    cli.add_json_flag(p)
    return NAME


def scenario_from_args(args: argparse.Namespace) -> BootScenario:
    if getattr(args, "scenario", None):  # the file, then the flags given on the command line over it
        return scenario.scenario_with_flags(args, scenario_from_args)
    try:
        args.append.encode("utf-16-le")  # LoadOptions are UTF-16
    except UnicodeEncodeError:
        raise ConfigError(f"--append {args.append!r} is not valid Unicode text") from None
    disk_from = args.disk_from
    if args.write_disk_dir:
        from pathlib import Path

        from lazyaccept.binaries import BinaryStore
        from lazyaccept.firmware.loaders.grub import write_disk_dir

        kernel = Path(args.kernel) if args.kernel else BinaryStore().linux_vmlinuz()
        write_disk_dir(Path(args.write_disk_dir), kernel, args.initrd_size or 0, args.append, timeout=args.grub_timeout)
        disk_from = args.write_disk_dir
    keys = [("", unescape_keys(k)) for k in args.type_now]
    keys += [("grub>", unescape_keys(k)) for k in args.type_at_prompt]
    return BootScenario(
        ram=args.ram,
        smp=args.smp,
        profile=args.profile,
        firmware=args.firmware,
        firmware_exec=args.firmware_exec,
        shim=args.shim,
        edk2_profile=args.edk2_profile,
        upfront=args.upfront,
        option1=1 in args.options,
        option2=2 in args.options,
        option3=3 in args.options,
        accept_all_at_exit=args.accept_all_at_exit,
        memory_acceptance_protocol=args.allow_unaccepted_protocol,
        kernel=args.kernel,
        initrd=args.initrd,
        initrd_size=args.initrd_size,
        cmdline=args.append,
        stream_initrd=args.stream_initrd,
        rng_seed=args.rng_seed,
        cpu=args.cpu,
        cc_measurement=not args.no_cc_measurement,
        log_calls=not args.no_log,
        timeout_s=args.timeout,
        efi_app=args.efi_app,
        grub=args.grub or bool(disk_from),
        disk_from=disk_from,
        grub_efi=args.grub_efi,
        grub_timeout=args.grub_timeout,
        keys=keys,
        interactive=args.interactive,
        tcg2=args.tcg2,
        fat_bits=args.fat,
        run_kernel=args.run_kernel,
    )


def report_dict(rep: BootReport) -> dict[str, Any]:
    sc = rep.scenario
    bp = rep.boot_params
    return {
        "scenario": {
            "ram_bytes": sc.ram,
            "vcpus": sc.smp,
            "profile": sc.profile,
            "firmware": sc.firmware,
            "firmware_exec": sc.firmware_exec,
            "shim": sc.shim,
            "edk2_profile": sc.edk2_profile,
            "upfront": sc.upfront,
            "options": sc.options_name,
            "accept_all_at_exit": sc.accept_all_at_exit,
            "memory_acceptance_protocol": sc.memory_acceptance_protocol,
            "kernel": sc.kernel or "debian-6.12-cloud",
            "initrd": sc.initrd,
            "initrd_size": sc.initrd_size,
            "cmdline": sc.cmdline,
            "stream_initrd": sc.stream_initrd,
            "cc_measurement": sc.cc_measurement,
            "tcg2": sc.tcg2,
            "loader": "grub" if sc.grub else "qemu-direct-boot",
            "disk_from": sc.disk_from,
            "rng_seed": rep.rng_seed,
        },
        "grub": rep.grub,
        "outcome": rep.outcome,
        "exit_code": exit_code(rep),
        "hint": rep.hint,
        "edk2_profile": {"name": rep.edk2_profile, "why": rep.edk2_profile_why},
        "kernel": {"release": rep.kernel_release, "profile": rep.kernel_profile, "why": rep.kernel_profile_why},
        "cpu": {"backend": rep.cpu, "why": rep.cpu_why, "notes": rep.cpu_notes},
        "reason": rep.reason,
        "explanation": rep.explanation,
        "console": rep.console,
        "phases": [
            {"name": p.name, "virtual_ns": p.virtual_ns, "accepted_bytes": p.accepted_bytes} for p in rep.phases
        ],
        "accepted_by_actor": rep.accepted_by_actor,
        "loader_events": rep.loader_events,
        "termination": rep.termination,
        "incidents": rep.incidents,
        "tdx_stats": rep.tdx_stats,
        "kernel_entry": rep.kernel_entry,
        "kernel_jump": rep.kernel_jump,
        "stub_tdcalls": rep.tdcalls_by_stub,
        "os_outcome": rep.os_outcome,
        "kernel_run": _kernel_run_dict(rep),
        "handoff": {
            "ok": rep.handoff_ok,
            "problems": rep.handoff_problems,
            "lost_ram_bytes": rep.lost_ram_bytes,
            "unaccepted_table": rep.unaccepted_table,
            "e820": [{"start": e.start, "size": e.size, "type": e820_type_name(e.type)} for e in bp.e820] if bp else [],
            "memory_map": [
                {"type": memory_type_name(d.type), "start": d.physical_start, "pages": d.number_of_pages,
                 "attribute": d.attribute}
                for d in rep.memory_map
            ],
            "cmdline": bp.cmdline if bp else None,
            "acpi": rep.acpi,
        },
        "measurements": rep.measurements,
        "call_counts": rep.call_counts,
        "calls": rep.calls,
        "wall_s": round(rep.wall_s, 3),
    }


def format_report(rep: BootReport, show_calls: bool = False) -> str:
    sc = rep.scenario
    firmware = (
        f"edk2's own TDVF {sc.firmware or 'Debian OVMF.fd 2025.02'} from the reset vector"
        + (f", shim {sc.shim}" if sc.shim else "")
        if sc.firmware_exec
        else f"up-front {sc.upfront}, on-demand {sc.options_name}"
        + (", accept-all at exit" if sc.accept_all_at_exit else "")
    )
    lines = [
        f"TD {format_size(sc.ram)}, {sc.smp} vCPUs, {sc.profile}; {firmware}",
        f"EFI application {sc.efi_app}, RNG seed {rep.rng_seed}"
        if sc.efi_app
        else f"payload: {sc.kernel or 'Debian linux 6.12 cloud kernel'}, initrd "
        + (sc.initrd or (human_size(sc.initrd_size) + " synthetic" if sc.initrd_size else "none"))
        + (" (streamed)" if sc.stream_initrd else "")
        + f", cmdline '{sc.cmdline}', RNG seed {rep.rng_seed}",
    ]
    if sc.grub:
        lines[1] = (
            f"loader: GRUB from a GPT disk ({'folder ' + sc.disk_from if sc.disk_from else lines[1][9:]}); "
            f"measurement protocols: {(rep.grub or {}).get('measurement', '?')}"
        )
    lines += [
        f"edk2 profile {rep.edk2_profile}: {rep.edk2_profile_why}",
        "",
        f"outcome: {rep.outcome.upper()}: {rep.reason}",
        rep.cpu_why + "".join(f"; {n}" for n in rep.cpu_notes),
    ]
    if rep.explanation:
        lines.append(f"why: {rep.explanation}")
    if rep.hint and progress.hints():  # -q: no hints
        lines.append(f"hint: {rep.hint}")
    if rep.termination:
        lines.append(f"TD terminated: {rep.termination}")
    for inc in rep.incidents:
        lines.append(
            f"double accept ({inc['kind']}): [{inc['start']:#x}, {inc['end']:#x}) by {inc['actor']}"
            + (" -- the guest silently got a zeroed page" if inc["kind"] == "reaccept-after-remove" else "")
        )
    lines += ["", "console:"] + [f"  {line}" for line in rep.console.splitlines() if line.strip()]
    if rep.grub:
        esp = rep.grub["esp"]
        lines += [
            "",
            f"disk: {human_size(esp['disk_bytes'])} GPT, ESP {esp['fat']} ({esp['cluster_bytes']} B clusters)",
        ]
        lines += [f"  {d['path']}: {d['reads']} reads, {human_size(d['bytes_read'])}" for d in esp["devices"]]
        lines += [f"  file {name}: {human_size(size)}" for name, size in esp["files"].items()]
        search = rep.grub.get("config_search")
        if search:
            lines.append(
                f"grub.cfg search: prefix {search['prefix']} from the {search['prefix_source']}, fw_path "
                f"{search['fw_path']}; "
                + ", ".join([f"looked up {x['path']} ({x['result']})" for x in search["lookups"]] or ["no lookup seen"])
            )
            lines.append("  grub.cfg on the disk: " + (", ".join(rep.grub["grub_cfg_on_disk"]) or "none"))
            if rep.grub.get("hint"):
                lines.append(f"  fix: {rep.grub['hint']}")
        lines += [
            f"failed allocation: [{f['image']}] {f['service']}({f['detail']}) -> {f['status']}"
            for f in rep.grub["failed_allocations"]
        ]
    lines += ["", f"{'phase':50} {'virtual time':>14} {'accepted':>12}"]
    for ph in rep.phases:
        lines.append(f"{ph.name:50} {format_ns(ph.virtual_ns):>14} {human_size(ph.accepted_bytes):>12}")
    lines += ["", "accepted by actor: " + ", ".join(f"{a} {human_size(n)}" for a, n in rep.accepted_by_actor.items())]
    for ev in rep.loader_events:
        extra = f", accepted {human_size(ev['accepted_bytes'])}" if ev["accepted_bytes"] else ""
        lines.append(f"loader: {ev['what']}: {ev['status']} ({human_size(ev['size'])}{extra})")
    if rep.reached_kernel:
        lines.append("")
        t = rep.unaccepted_table
        if t:
            lines.append(
                f"unaccepted-memory table: unit {human_size(t['unit_size'])}, base {t['phys_base']:#x}, "
                f"{t['bitmap_bytes']} bitmap bytes, {human_size(t['set_bytes'])} marked unaccepted"
            )
        lines.append(f"stub TDCALLs after ExitBootServices: {rep.tdcalls_by_stub}")
        lines.append(
            f"handoff check: {'PASS' if rep.handoff_ok else 'FAIL'}"
            + (f", {human_size(rep.lost_ram_bytes)} of RAM lost to the OS" if rep.lost_ram_bytes else "")
        )
        lines += [f"  problem: {p}" for p in rep.handoff_problems]
        lines += format_acpi(rep.acpi)
        if rep.kernel_profile:
            lines.append(f"kernel {rep.kernel_release or '(no version string)'}: {rep.kernel_profile}")
            lines += [f"  {why}" for why in rep.kernel_profile_why]
        if rep.os_outcome:
            lines.append(f"Linux after the handoff (model: {rep.kernel_profile or 'linux'}): {rep.os_outcome}")
        if rep.kernel is not None:
            lines += _kernel_run_lines(rep)
        if rep.boot_params:
            lines.append("E820 handed to the kernel:")
            for e in rep.boot_params.e820:
                lines.append(f"  {e.start:#014x}-{e.end:#014x} {e820_type_name(e.type)}")
        if rep.memory_map:
            lines.append(f"UEFI memory map at ExitBootServices ({len(rep.memory_map)} descriptors), by type:")
            by_type: dict[str, int] = {}
            for d in rep.memory_map:
                by_type[memory_type_name(d.type)] = by_type.get(memory_type_name(d.type), 0) + d.size
            lines += [f"  {name:<28} {human_size(n)}" for name, n in sorted(by_type.items(), key=lambda kv: -kv[1])]
    if show_calls:
        lines += ["", "service calls:"]
        lines += [f"  [{c['image']}] {c['name']}({c['detail']}) -> {c['status']}" for c in rep.calls]
    lines.append(f"\nwall time {rep.wall_s:.1f} s")
    return "\n".join(lines)


def _kernel_run_dict(rep: BootReport) -> dict[str, Any] | None:
    """--run-kernel: the real kernel's run after the handoff (docs/JSON.md), as `tdvf --run-kernel` reports it."""
    from lazyaccept.commands.tdvf import kernel_run_fields

    k = rep.kernel
    if k is None:
        return None
    return {"outcome": str(k.outcome), "detail": k.detail, "page_tables": k.page_tables,
            "firmware_runtime_calls": k.runtime_calls, **kernel_run_fields(k.run, k.outside_table)}


def _kernel_run_lines(rep: BootReport) -> list[str]:
    from lazyaccept.commands.tdvf import ANSI_ESCAPE, kernel_run_lines

    k = rep.kernel
    console = ANSI_ESCAPE.sub("", k.console).splitlines()
    return [
        f"the real kernel after the handoff: {str(k.outcome).upper()}: {k.detail}",
        f"  entered at the stub's jump {rep.kernel_jump:#x} in long mode, CR3 {k.page_tables:#x} (identity tables "
        "where the TDX reset vector builds its own)",
        "  the firmware's runtime services (Python, unreachable from the TD vCPU) answered EFI_UNSUPPORTED to: "
        + (", ".join(k.runtime_calls) or "none called"),
        *kernel_run_lines(k.run, k.outside_table)[1:],
        f"  serial console ({len(console)} lines, the last 12):",
        *[f"  | {line}" for line in console[-12:]],
    ]


def run(args: argparse.Namespace) -> int:
    rep = run_boot(scenario_from_args(args))
    if args.json:
        cli.print_json("boot", report_dict(rep))
    else:
        print(format_report(rep, args.calls))
    sys.stdout.flush()
    return exit_code(rep)


def exit_code(rep: BootReport) -> int:
    """0 booted, 1 boot failed, 3 memory lost to the OS, 4 TD terminated (2, bad input, is cli.main's)."""
    if rep.scenario.efi_app and rep.outcome == "app-exited":
        return EXIT_BOOTED if "SUCCESS" in rep.reason else EXIT_FAILED
    return rep.exit_code
