"""`lazyaccept boot --firmware-exec`: the same boot as the Python firmware's (QEMU direct boot of the kernel's EFI
stub) with edk2's own TDVF instead, from the reset vector (tdvf_run.py), reported in the same BootReport: the
outcome, the console, what was accepted by whom, the stub's handoff read back from guest memory and checked against
the TDX module, and the Linux model from that handoff on (boot_report.py).

What the Python firmware lets a user choose, the real one decides itself: its build accepts what it accepts up
front (upstream: all RAM below 4 GiB) and has none of the on-demand options, so those flags are refused here rather
than silently ignored.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot_report import BootReport, BootScenario, Outcome, Phase, check_handoff_and_boot_os, record_tdx
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.tdvf_run import TdvfOutcome, TdvfReport, TdvfRun, run_tdvf
from lazyaccept.vmm.tdvf import read_firmware

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")  # the firmware's terminal control, not text
KERNEL_HEADER_BYTES = 64 << 10  # as boot.py reads it: the setup header and the version string
# The Python firmware's choices, which the real firmware's build makes for itself: (field, flag, default).
PYTHON_FIRMWARE_ONLY = (
    ("upfront", "--upfront", "below-4g"),
    ("option1", "--option 1", False),
    ("option2", "--option 2", False),
    ("option3", "--option 3", False),
    ("accept_all_at_exit", "--accept-all-at-exit", False),
    ("memory_acceptance_protocol", "--allow-unaccepted-protocol", False),
    ("stream_initrd", "--stream-initrd", False),
    ("tcg2", "--tcg2", False),
    ("grub", "--grub", False),
    ("efi_app", "--efi-app", None),
)
TDVF_OUTCOMES = {
    TdvfOutcome.KERNEL: Outcome.KERNEL_ENTRY,
    TdvfOutcome.TERMINATED: Outcome.TERMINATED,
    TdvfOutcome.BUDGET: Outcome.BUDGET,
    TdvfOutcome.FATAL: Outcome.ERROR,
    TdvfOutcome.ERROR: Outcome.ERROR,
    # With a kernel given, BDS reaching the shell means QEMU's direct boot failed and BDS went on to the next option.
    TdvfOutcome.SHELL: Outcome.LOADER_FAILED,
    TdvfOutcome.NO_BOOT_OPTION: Outcome.LOADER_FAILED,  # e.g. Secure Boot refused the kernel
    TdvfOutcome.REFUSED: Outcome.LOADER_FAILED,  # shim refused the kernel
}


def check_scenario(sc: BootScenario) -> None:
    for name, flag, default in PYTHON_FIRMWARE_ONLY:
        if getattr(sc, name) != default:
            raise ConfigError(
                f"{flag} chooses the Python firmware's behaviour; edk2's own TDVF (--firmware-exec) does what its "
                "build does"
            )
    if sc.cpu == "kvm":
        raise ConfigError("--cpu kvm: edk2's own TDVF runs on the unicorn TD vCPU (its reset vector needs it)")
    if sc.initrd is not None and sc.initrd_size is not None:
        raise ConfigError("give --initrd FILE or --initrd-size SIZE, not both")


def run_tdvf_boot(sc: BootScenario) -> BootReport:
    t0 = time.perf_counter()
    check_scenario(sc)
    store = BinaryStore()
    image = Path(sc.firmware) if sc.firmware else store.ovmf_fd()
    read_firmware(str(image))  # QEMU's checks first: an image that fails them is refused before it runs
    kernel = Path(sc.kernel) if sc.kernel else store.linux_vmlinuz()
    try:
        with kernel.open("rb") as f:
            header = f.read(KERNEL_HEADER_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {kernel}: {exc.strerror or exc}") from None
    initrd = Path(sc.initrd) if sc.initrd else None
    if initrd is not None and not initrd.is_file():
        raise InputError(f"cannot read initrd {sc.initrd}")
    shim = Path(sc.shim) if sc.shim else None
    if shim is not None and not shim.is_file():
        raise InputError(f"cannot read shim {sc.shim}")
    run = TdvfRun(
        image,
        ram=sc.ram,
        vcpus=sc.smp,
        max_wall_s=sc.timeout_s,
        kernel=kernel,
        initrd=initrd,
        initrd_size=sc.initrd_size or 0,
        shim=shim,
        cmdline=sc.cmdline,
        profile=sc.profile,
    )
    rep = run_tdvf(run)
    td = rep.td
    assert td is not None  # run_tdvf always leaves it
    report = _boot_report(sc, rep)
    report.td = td
    if rep.kernel is not None:
        k = rep.kernel
        report.kernel_entry = k.kernel_load
        check_handoff_and_boot_os(report, td, k.handoff, k.boot_params, k.check, header, kernel)
    record_tdx(report, td.tdx)
    report.wall_s = time.perf_counter() - t0
    return report


def _boot_report(sc: BootScenario, rep: TdvfReport) -> BootReport:
    outcome = TDVF_OUTCOMES[rep.outcome]
    reason = rep.detail
    if rep.outcome == TdvfOutcome.KERNEL and rep.kernel is not None and rep.kernel.kernel_load is not None:
        reason = f"the stub jumped into the kernel at {rep.kernel.kernel_load:#x} ({rep.detail})"
    elif rep.outcome in (TdvfOutcome.NO_BOOT_OPTION, TdvfOutcome.REFUSED):
        reason = f"the firmware did not boot the kernel: {rep.detail}"
    elif rep.outcome == TdvfOutcome.SHELL:
        reason = "BDS started the UEFI shell: the firmware did not boot the kernel it was given"
    elif rep.module:
        reason += f" (RIP {rep.rip:#x} in {rep.module})"
    counts = {f"TDCALL {k}": v for k, v in rep.tdcalls.items()}
    counts.update({f"TDVMCALL {k}": v for k, v in rep.tdvmcalls.items()})
    accepted = sum(rep.accepted_by_actor.values())
    report = BootReport(
        scenario=sc,
        outcome=outcome,
        reason=reason,
        console=ANSI_ESCAPE.sub("", rep.console),
        calls=[],  # the real firmware's boot services are its own code: no service-call trace
        call_counts=counts,
        phases=_phases(rep, accepted),
        accepted_by_actor=dict(rep.accepted_by_actor),
        loader_events=[],
        termination=rep.detail if rep.outcome == TdvfOutcome.TERMINATED else None,
        rng_seed=sc.rng_seed,
    )
    report.cpu, report.cpu_reason = "unicorn", "firmware-exec"
    report.cpu_why = f"cpu: unicorn (edk2's own TDVF {rep.run.firmware.name} from the reset vector on a TD vCPU)"
    return report


def _phases(rep: TdvfReport, accepted: int) -> list[Phase]:
    """The firmware's phases on the BSP (td_phases: reset vector, SEC, PEI, DXE, BDS, loader, stub), or the whole run
    as one when the guest's instructions were not counted."""
    if not rep.phases:
        return [Phase("edk2 TDVF: reset vector to kernel entry", rep.virtual_ns, accepted)]
    return [Phase(f"edk2 TDVF: {ph['name']}", ph["virtual_ns"], ph["accepted_bytes"]) for ph in rep.phases]
