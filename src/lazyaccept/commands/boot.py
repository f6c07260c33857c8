"""`lazyaccept boot`: QEMU direct boot of a real Linux EFI stub on a lazily accepted TD, with its report."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from lazyaccept import cli, junit, scenario
from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.boot_text import format_report
from lazyaccept.commands import common
from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.guest.boot_params import e820_type_name
from lazyaccept.json_keys import acpi_json, grub_json, renamed, tdx_stats_json
from lazyaccept.on_demand import parse_on_demand
from lazyaccept.scenario import unescape_keys
from lazyaccept.spec.efi import memory_type_name

NAME = "boot"
# What runs as a Python model and what is a real binary on the CPU backend (--cpu / -accel); README "Command line".
MODELLED_AND_REAL = """\
modelled in Python:
  the TDX module (page states, TDCALLs, costs), the VMM (QEMU's TD layout, TD HOB, fw_cfg),
  the firmware (TDVF SEC's up-front accept, DXE's memory services, the on-demand options,
  QEMU direct boot's loader), and Linux after the handoff (its acceptance up to a ready userspace)
real binaries, run on unicorn or KVM:
  the Linux EFI stub (Debian's 6.12 kernel, or --kernel), GRUB (--grub), shim (--shim),
  an EFI application (--efi-app); OVMF's own TDVF from the reset vector with --firmware-exec
  (instead of the Python firmware); the kernel itself after the handoff with --run-kernel
  (instead of the Linux model)"""
DEFAULTS = BootScenario()  # the flags' defaults are the API's


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="boot the real Linux EFI stub on a lazily accepted TD (QEMU direct boot) and check the handoff",
        description=textwrap.fill(
            "Build a TD as QEMU does, run SEC's up-front accept and the DXE memory services, load the kernel as "
            "OVMF's QEMU direct boot does, run the unmodified EFI stub on the CPU backend until it jumps into the "
            "kernel, and check what it hands over against the TDX module's truth.", 100
        ) + "\n\n" + MODELLED_AND_REAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scenario.track_given_flags(p)  # so that flags given with --scenario can win over the file
    p.add_argument(
        "--scenario",
        metavar="FILE",
        help="read the TD, firmware, loader and payload from a TOML scenario; flags given here override it",
    )
    g = p.add_argument_group("the TD")
    common.add_ram_option(g, DEFAULTS.ram)
    common.add_smp_option(g, DEFAULTS.smp)
    g.add_argument("--profile", default="kvm-2m", metavar="NAME|FILE", help="host cost profile (default kvm-2m)")
    common.add_firmware_option(g, "OVMF image for the TDVF metadata (default built-in)")
    g.add_argument(
        "--firmware-exec", action="store_true",
        help="run the --firmware image itself (default: Debian's OVMF.fd 2025.02), edk2's own TDVF from the reset "
        "vector, instead of the Python firmware; it accepts what its build accepts (no --upfront/--option)",
    )  # fmt: skip
    g.add_argument(
        "--shim", "-shim", metavar="FILE",
        help="a first-stage loader: with --firmware-exec QEMU 10's -shim, which the firmware starts and which loads "
        "the kernel (Secure Boot: a Microsoft-signed shim and a kernel its vendor signed); with --grub the ESP's "
        "BOOTX64.EFI, which starts GRUB as grubx64.efi beside it (Secure Boot off); "
        f"{pinned_names('shim')}",
    )  # fmt: skip
    cli.add_edk2_profile_flag(g)
    f = p.add_argument_group("firmware policy")
    f.add_argument(
        "--upfront",
        type=cli.upfront_arg,
        default="below-4g",
        metavar="POLICY",
        help="SEC up-front accept: below-4g, all, or a size such as 256M (default below-4g)",
    )
    f.add_argument(
        "--on-demand",
        dest="options",
        action="extend",
        type=on_demand_arg,
        default=[],
        metavar="LIST",
        help="on-demand accept, comma separated: allocator (DXE's allocator accepts what it hands out), loader (QEMU's "
        "loader accepts ahead of its copies), accept-service (the AcceptMemory boot service for a loader-aware "
        "stub), or none (default none)",
    )
    f.add_argument(
        "--option",
        dest="options",
        action="append",
        type=int,
        choices=[1, 2, 3],
        help="the RFC's numbers for --on-demand: 1 allocator, 2 loader, 3 accept-service (repeatable)",
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
    k.add_argument(
        "--kernel", "-kernel", metavar="VMLINUZ",
        help=f"kernel with an EFI stub (default: Debian's 6.12 kernel); {pinned_names('kernel')}",
    )
    k.add_argument(
        "--efi-app", metavar="APP.efi",
        help=f"run this EFI application instead of booting a kernel; {pinned_names('efi_app')}",
    )  # fmt: skip
    k.add_argument(
        "--uki", action="store_true",
        help="build a unified kernel image (systemd-stub 262 + kernel, initrd, cmdline: `lazyaccept uki`) and start "
        "it as the first image instead of QEMU direct boot",
    )  # fmt: skip
    src = k.add_mutually_exclusive_group()
    src.add_argument("--initrd", "-initrd", metavar="FILE", help="initrd file")
    src.add_argument("--initrd-size", type=cli.size_arg, metavar="SIZE", help="a synthetic initrd of SIZE")
    k.add_argument(
        "--append", "-append",
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
        "--disk",
        metavar="FILE",
        help="a raw disk image (GPT, or MBR with an ESP of type 0xEF), read only: the firmware boots its ESP's "
        "EFI/BOOT/BOOTX64.EFI (else GRUB, which reads the image's grub.cfg)",
    )
    gr.add_argument(
        "--write-disk-dir",
        metavar="DIR",
        help="write such a folder (the kernel, a sparse synthetic initrd of --initrd-size, grub.cfg; with "
        "--systemd-boot the ESP it boots: systemd-boot, loader.conf, the entry or the --uki) and boot from it",
    )
    gr.add_argument(
        "--systemd-boot",
        action="store_true",
        help="boot systemd-boot 262 instead, from an ESP laid out as `bootctl install` does (loader/loader.conf, a "
        "Type #1 entry with linux, initrd, options); it loads the kernel through the firmware's Simple File System",
    )
    gr.add_argument(
        "--grub-efi", metavar="FILE",
        help=f"another grubx64.efi (default: Debian's 2.12 monolithic image); {pinned_names('grub_efi')}",
    )  # fmt: skip
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
    common.add_cpu_options(r, DEFAULTS.cpu)
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
    junit.add_flag(p)
    return NAME


def on_demand_arg(text: str) -> list[int]:
    try:
        return parse_on_demand(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


PINNED_FLAGS = ("kernel", "grub_efi", "efi_app", "shim")  # the file flags that also take debian:NAME


def pinned_names(kind: str) -> str:
    """The pinned Debian binaries a flag also takes by name, for its help (the names scenario files use)."""
    return "or a pinned Debian build: " + ", ".join(scenario.DEBIAN_FILES[kind])


def pinned(args: argparse.Namespace, dest: str) -> str | None:
    """The flag's file, with a pinned Debian name (debian:linux-7.2) resolved to its extracted path."""
    value = getattr(args, dest)
    if value is None or not str(value).startswith("debian:"):
        return value
    try:
        return scenario.debian_file(str(value), scenario.DEBIAN_FILES[dest])
    except ConfigError as exc:
        raise ConfigError(f"--{dest.replace('_', '-')}: {exc}") from None


def scenario_from_args(args: argparse.Namespace) -> BootScenario:
    if getattr(args, "scenario", None):  # the file, then the flags given on the command line over it
        return scenario.scenario_with_flags(args, scenario_from_args)
    args = argparse.Namespace(**{**vars(args), **{d: pinned(args, d) for d in PINNED_FLAGS}})
    try:
        args.append.encode("utf-16-le")  # LoadOptions are UTF-16
    except UnicodeEncodeError:
        raise ConfigError(f"--append {args.append!r} is not valid Unicode text") from None
    disk_from = args.disk_from
    disk = getattr(args, "disk", None)
    if disk and (disk_from or args.write_disk_dir):
        raise ConfigError("give --disk FILE, --disk-from DIR or --write-disk-dir DIR, not two of them")
    keys = [("", unescape_keys(k)) for k in args.type_now]
    keys += [("grub>", unescape_keys(k)) for k in args.type_at_prompt]
    sc = BootScenario(
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
        uki=args.uki,
        grub=not args.systemd_boot and (args.grub or bool(disk_from) or bool(disk)),
        systemd_boot=args.systemd_boot,
        disk_from=disk_from,
        disk=disk,
        grub_efi=args.grub_efi,
        grub_timeout=args.grub_timeout,
        keys=keys,
        interactive=args.interactive,
        tcg2=args.tcg2,
        fat_bits=args.fat,
        run_kernel=args.run_kernel,
    )
    if args.write_disk_dir:  # the folder the chain boots from, written as its run lays it out
        from pathlib import Path

        from lazyaccept.boot import write_disk_folder

        return write_disk_folder(sc, Path(args.write_disk_dir))
    return sc


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
            "options": sc.option_names,
            "accept_all_at_exit": sc.accept_all_at_exit,
            "memory_acceptance_protocol": sc.memory_acceptance_protocol,
            "kernel": sc.kernel or "debian-6.12-cloud",
            "initrd": sc.initrd,
            "initrd_size_bytes": sc.initrd_size,
            "cmdline": sc.cmdline,
            "stream_initrd": sc.stream_initrd,
            "cc_measurement": sc.cc_measurement,
            "tcg2": sc.tcg2,
            "loader": sc.loader_name,
            "disk_from": sc.disk_from,
            "disk": sc.disk,
            "rng_seed": rep.rng_seed,
        },
        "grub": grub_json(rep.grub),
        "uki": rep.uki,
        "systemd_boot": grub_json(rep.systemd_boot),
        "outcome": rep.outcome,
        "exit_code": exit_code(rep),
        "hint": rep.hint,
        "edk2_profile": {"name": rep.edk2_profile, "why": rep.edk2_profile_why},
        "kernel": {"release": rep.kernel_release, "profile": rep.kernel_profile, "why": rep.kernel_profile_why},
        "cpu": {"backend": rep.cpu, "reason": rep.cpu_reason, "explanation": rep.cpu_why, "notes": rep.cpu_notes},
        "reason": rep.reason,
        "explanation": rep.explanation,
        "console": rep.console,
        "phases": [
            {"name": p.name, "virtual_ns": p.virtual_ns, "accepted_bytes": p.accepted_bytes} for p in rep.phases
        ],
        "accepted_by_actor": rep.accepted_by_actor,
        "loader_events": [renamed(e, size="size_bytes") for e in rep.loader_events],
        "termination": rep.termination,
        "incidents": rep.incidents,
        "tdx_stats": tdx_stats_json(rep.tdx_stats),
        "kernel_entry": rep.kernel_entry,
        "kernel_jump": rep.kernel_jump,
        "stub_tdcalls": rep.tdcalls_by_stub,
        "os_outcome": rep.os_outcome,
        "kernel_run": _kernel_run_dict(rep),
        "handoff": {
            "ok": rep.handoff_ok,
            "problems": rep.handoff_problems,
            "lost_ram_bytes": rep.lost_ram_bytes,
            "unaccepted_table": None
            if rep.unaccepted_table is None
            else renamed(rep.unaccepted_table, unit_size="unit_bytes"),
            "e820": [{"start": e.start, "size_bytes": e.size, "type": e820_type_name(e.type)} for e in bp.e820]
            if bp
            else [],
            "memory_map": [
                {"type": memory_type_name(d.type), "start": d.physical_start, "pages": d.number_of_pages,
                 "attribute": d.attribute}
                for d in rep.memory_map
            ],
            "cmdline": bp.cmdline if bp else None,
            "acpi": acpi_json(rep.acpi),
        },
        "measurements": [renamed(m, size="size_bytes") for m in rep.measurements],
        "call_counts": rep.call_counts,
        "calls": rep.calls,
        "wall_s": round(rep.wall_s, 3),
    }


def _kernel_run_dict(rep: BootReport) -> dict[str, Any] | None:
    """--run-kernel: the real kernel's run after the handoff (docs/JSON.md), as `tdvf --run-kernel` reports it."""
    from lazyaccept.commands.tdvf import kernel_run_fields

    k = rep.kernel
    if k is None:
        return None
    return {"outcome": str(k.outcome), "detail": k.detail, "page_tables": k.page_tables,
            "firmware_runtime_calls": k.runtime_calls, **kernel_run_fields(k.run, k.outside_table)}


def run(args: argparse.Namespace) -> int:
    rep = run_boot(scenario_from_args(args))
    if args.json:
        cli.print_json("boot", report_dict(rep))
    else:
        print(format_report(rep, args.calls))
    sys.stdout.flush()
    if args.junit:
        junit.write(args.junit, "lazyaccept boot", [junit.boot_case(rep, exit_code(rep))], time_s=rep.wall_s)
    return exit_code(rep)


def exit_code(rep: BootReport) -> int:
    """0 booted, 1 boot failed, 3 memory lost to the OS, 4 TD terminated (2, bad input, is cli.main's)."""
    if rep.scenario.efi_app and rep.outcome == "app-exited":
        return EXIT_BOOTED if "SUCCESS" in rep.reason else EXIT_FAILED
    return rep.exit_code
