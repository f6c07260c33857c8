"""`lazyaccept advise`: the smallest up-front accept that boots, under each on-demand option, and why."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from lazyaccept import cli, junit, scenario
from lazyaccept.advise import (
    CHAINS,
    OPTIONS,
    AdviceReport,
    Payload,
    RealCheck,
    advise,
    advise_chain,
    check_with_real_firmware,
)
from lazyaccept.commands import common
from lazyaccept.errors import InputError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED
from lazyaccept.guest.kernel_image import kernel_sizes
from lazyaccept.json_keys import renamed
from lazyaccept.units import human_size

NAME = "advise"
CHAIN_NAMES = {
    "direct": "QEMU direct boot, Linux 6.12 EFI stub model",
    "grub": "GRUB, real boots on the Python firmware",
    "shim-grub": "shim -> GRUB, real boots on the Python firmware",
    "systemd-boot": "systemd-boot, real boots on the Python firmware",
    "uki": "a unified kernel image, real boots on the Python firmware",
}
OPTION_NAMES = {
    "none": "upstream (no on-demand accept)",
    "option1": "option 1 (DXE allocator)",
    "option2": "option 2 (QEMU loader)",
    "option3": "option 3 (AcceptMemory, loader-aware stub)",
}


def register(subparsers: Any) -> str:
    p = subparsers.add_parser(
        NAME,
        help="smallest up-front accept that boots a kernel + initrd, per on-demand option",
        description="Search, on the model of the firmware and of the Linux 6.12 EFI stub (QEMU direct boot), the "
        "smallest up-front accept size that boots under each on-demand option, and say what limits it: the "
        "kernel slot, the initrd copies, or the firmware's own use.",
    )
    common.add_ram_option(p, cli.size_arg("64G"))
    common.add_smp_option(p, 8)
    p.add_argument("--profile", default="kvm-2m", metavar="NAME|FILE")
    common.add_firmware_option(p, "OVMF image for the TDVF metadata (default built-in)")
    cli.add_edk2_profile_flag(p)
    k = p.add_mutually_exclusive_group()
    k.add_argument(
        "--kernel", "-kernel", metavar="VMLINUZ",
        help="read init_size and sizes from this kernel; or a pinned Debian build: "
        + ", ".join(scenario.DEBIAN_FILES["kernel"]),
    )  # fmt: skip
    k.add_argument(
        "--kernel-init-size",
        type=cli.size_arg,
        metavar="SIZE",
        help="the kernel's init_size (default: Debian's 6.12 cloud kernel, 57208K = 0x37de000 bytes)",
    )
    p.add_argument("--initrd-size", type=cli.size_arg, default=0, metavar="SIZE")
    p.add_argument(
        "--check-real", action="store_true",
        help="then boot the firmware image itself from its reset vector on the same TD and payload (the kernel "
        "file, a synthetic initrd) and check the model's answer for its own policy (below-4g, no on-demand "
        "accept); exit 1 when they disagree",
    )  # fmt: skip
    p.add_argument(
        "--chain", choices=CHAINS, default="direct",
        help="the boot chain: direct (QEMU direct boot, searched on the model) or grub, shim-grub, systemd-boot, uki "
        "(no model: each probe is a real boot of the chain on the Python firmware, a few seconds each; needs "
        "--kernel or the default kernel, not --kernel-init-size)",
    )  # fmt: skip
    cli.add_json_flag(p)
    junit.add_flag(p)
    return NAME


def payload_from_args(args: argparse.Namespace) -> Payload:
    if args.kernel:
        from lazyaccept.commands.boot import pinned

        args.kernel = pinned(args, "kernel")  # debian:linux-7.2, as `boot --kernel` takes it
        try:
            data = Path(args.kernel).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read kernel {args.kernel}: {exc.strerror or exc}") from None
        try:
            kernel = kernel_sizes(data, args.kernel)
        except InputError as exc:
            raise InputError(f"--kernel {args.kernel}: not a Linux kernel with an EFI stub: {exc}") from None
        return Payload(kernel.file_bytes, kernel.init_size, kernel.image_bytes, args.initrd_size,
                       kernel.stub_alloc_bytes)
    if args.kernel_init_size:
        return Payload(init_size=args.kernel_init_size, initrd_bytes=args.initrd_size)
    return Payload(initrd_bytes=args.initrd_size)


def report_dict(rep: AdviceReport) -> dict[str, Any]:
    return {
        "ram_bytes": rep.ram,
        "vcpus": rep.smp,
        "payload": renamed({**vars(rep.payload), "kernel_alloc_bytes": rep.payload.stub_alloc_bytes},
                           init_size="init_size_bytes"),
        "edk2_profile": rep.edk2_profile,
        "edk2_profile_why": rep.edk2_profile_why,
        "chain": rep.chain,
        **({} if rep.chain == "direct" else {"wall_s": round(rep.wall_s, 2)}),  # real boots only: a model's is noise
        "advice": [
            {
                "option": a.option,
                "min_upfront_bytes": a.min_upfront_bytes,
                "limited_by": a.limited_by,
                "detail": a.detail,
                "below_4g_boots": a.below_4g_boots,
                "probes": a.probes,
                **({} if rep.chain == "direct" else {"wall_s": round(a.wall_s, 2)}),
                "failed_allocation": a.failed_allocation,
            }
            for a in rep.advice
        ],
        "real_check": None if rep.real_check is None else real_check_dict(rep.real_check),
    }


def real_check_dict(c: RealCheck) -> dict[str, Any]:
    return {
        "firmware": c.firmware,
        "model_boots": c.model_boots,
        "model_detail": c.model_detail,
        "real_outcome": c.real_outcome,
        "real_reason": c.real_reason,
        "real_boots": c.real_boots,
        "agrees": c.agrees,
        "wall_s": round(c.wall_s, 2),
    }


def format_real_check(c: RealCheck) -> str:
    model = "boots" if c.model_boots else f"does not boot ({c.model_detail})"
    real = "boots" if c.real_boots else "does not boot"
    verdict = "agrees" if c.agrees else "DISAGREES"
    return (
        f"checked with the real firmware ({c.firmware}, its own policy: below-4g, no on-demand accept):\n"
        f"  model: {model}\n  real:  {real} ({c.real_outcome}: {c.real_reason}; {c.wall_s:.1f} s)\n"
        f"  the model {verdict}"
    )


def search(args: argparse.Namespace, payload: Payload) -> AdviceReport:
    """The model's search for direct boot; real boots of the chain for the others."""
    chain = getattr(args, "chain", "direct")
    if chain == "direct":
        return advise(
            args.ram, args.smp, payload, profile=args.profile, firmware=args.firmware, options=OPTIONS,
            edk2_profile=args.edk2_profile,
        )
    if args.check_real:
        raise InputError(f"--check-real checks the direct-boot model; --chain {chain} already boots for real")
    if args.kernel_init_size:
        raise InputError(f"--chain {chain} boots a real kernel: give --kernel VMLINUZ, not --kernel-init-size")
    shim = None
    if chain == "shim-grub":
        shim = scenario.debian_file("debian:shim", scenario.DEBIAN_FILES["shim"])
    return advise_chain(
        args.ram, args.smp, payload, chain, kernel=args.kernel, shim=shim, profile=args.profile,
        firmware=args.firmware, options=OPTIONS, edk2_profile=args.edk2_profile,
    )


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    payload = payload_from_args(args)
    rep = search(args, payload)
    if args.check_real:
        check_with_real_firmware(rep, args.kernel, profile=args.profile, firmware=args.firmware)
    # README, "Exit codes": 1 when an option never boots (not even with everything accepted up front) or the real
    # firmware disagrees with the model.
    never = [a.option for a in rep.advice if a.min_upfront_bytes is None]
    disagrees = rep.real_check is not None and not rep.real_check.agrees
    code = EXIT_FAILED if never or disagrees else EXIT_BOOTED
    if args.junit:
        junit.write(args.junit, "lazyaccept advise", junit.advise_cases(rep), time_s=time.perf_counter() - t0)
    if args.json:
        cli.print_json("advise", report_dict(rep))
        return code
    print(
        f"{human_size(rep.ram)} TD, {rep.smp} vCPUs; kernel init_size {human_size(payload.init_size)} (the stub "
        f"allocates {human_size(payload.stub_alloc_bytes)}), "
        f"initrd {human_size(payload.initrd_bytes)} ({CHAIN_NAMES[rep.chain]})\n"
        f"edk2 profile {rep.edk2_profile}: {rep.edk2_profile_why}\n"
    )
    print(f"{'on-demand option':44} {'smallest up-front':>18} {'below-4g boots':>15}  limited by")
    for a in rep.advice:
        size = human_size(a.min_upfront_bytes) if a.min_upfront_bytes else "never boots"
        print(f"{OPTION_NAMES[a.option]:44} {size:>18} {'yes' if a.below_4g_boots else 'no':>15}  {a.limited_by}")
    print()
    for a in rep.advice:
        if a.detail:
            print(f"{OPTION_NAMES[a.option]}: just below the minimum: {a.detail}")
        if a.failed_allocation:
            f = a.failed_allocation
            print(f"  failed allocation by the {f['owner']}: {f['what']}, {human_size(f['size_bytes'])}")
    if rep.chain != "direct":
        probes = sum(a.probes for a in rep.advice)
        print(f"\n{probes} real boots of the chain in {rep.wall_s:.1f} s (per option: "
              + ", ".join(f"{a.option} {a.probes}" for a in rep.advice) + "); the search assumes booting is monotone "
              "in the up-front size and steps by 2 MiB, starting from the direct-boot model's answer")
    if rep.real_check is not None:
        print("\n" + format_real_check(rep.real_check))
    if never:
        print(f"\nno up-front size boots under {', '.join(OPTION_NAMES[o] for o in never)}", file=sys.stderr)
    return code
