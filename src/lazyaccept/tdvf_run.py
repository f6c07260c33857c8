"""edk2's own TDVF from the reset vector: build the TD as QEMU does (vmm/td.py), give it the q35 devices a TD guest
reaches (vmm/platform.py), run its vCPU on unicorn at CPL0 (cpu/unicorn/td_vcpu.py) with every TDCALL answered by
the TDX module (tdx/tdcall.py), and report what happened: how far the firmware got, what it accepted, its TDCALLs
and TDVMCALLs, its console, and the TD's measurements.

Today a run ends at the UEFI shell (no payload yet: QEMU direct boot of a kernel under the real firmware is the
next step of issue 14), at a TD termination, at a fatal error the firmware reports, or at the wall-time budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from lazyaccept.cpu.unicorn.td_vcpu import TdRunResult, TdVcpu
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED, EXIT_TERMINATED
from lazyaccept.records import StopKind
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB
from lazyaccept.vmm.devices.fw_cfg import DirectBoot, FwCfgPayload
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td, TdConfig, build_td

SHELL_BANNER = "UEFI Interactive Shell"


class TdvfOutcome(StrEnum):
    SHELL = "shell"  # BDS started the UEFI shell: the firmware booted (no payload was given)
    KERNEL = "kernel"  # with a kernel: the firmware loaded its EFI stub, which ran and jumped into the kernel
    TERMINATED = "terminated"  # the TDX module terminated the TD (e.g. a touch of memory it never accepted)
    FATAL = "fatal"  # the firmware reported a fatal error (TDG.VP.VMCALL<ReportFatalError>)
    BUDGET = "budget"  # the wall-time budget ran out (a dead loop, an exception handler's halt, or too slow)
    ERROR = "error"  # the vCPU could not go on (an exception the model cannot deliver, a missing VMM answer)


@dataclass(frozen=True)
class TdvfRun:
    firmware: Path
    ram: int = 2 * GiB
    vcpus: int = 1
    max_wall_s: float = 300.0
    # fw_cfg's DMA interface, as QEMU offers it: OVMF's bounce buffers are TD-shared pages, which the TD vCPU
    # walks in Python (cpu/unicorn/td_paging.py); without it OVMF reads fw_cfg a byte per TDVMCALL.
    fw_cfg_dma: bool = True
    # QEMU's -kernel/-append (direct boot through fw_cfg); the run then ends when the kernel's own code runs.
    kernel: Path | None = None
    cmdline: str = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr"


@dataclass
class TdvfReport:
    run: TdvfRun
    outcome: TdvfOutcome
    detail: str
    rip: int
    module: str | None
    wall_s: float
    virtual_ns: int
    tdcalls: dict[str, int]
    tdvmcalls: dict[str, int]
    accepted_bytes: int
    accepted_ranges: list[tuple[int, int]]
    accepted_by_actor: dict[str, int]
    shared_ranges: list[tuple[int, int]]
    console: str
    measurement: dict[str, object]
    fatal: str | None = None
    notes: list[str] = field(default_factory=list)
    # The firmware's own work (cpu/unicorn/td_phases.py): phases in order [{name, virtual_ns, instructions,
    # accepted_bytes, wall_s}], guest instructions (None: not counted) and by module, the rate charged.
    phases: list[dict[str, Any]] = field(default_factory=list)
    instructions: int | None = None
    instructions_by_module: dict[str, int] = field(default_factory=dict)
    guest_instruction_ps: int = 0

    @property
    def exit_code(self) -> int:
        if self.outcome in (TdvfOutcome.SHELL, TdvfOutcome.KERNEL):
            return EXIT_BOOTED
        return EXIT_TERMINATED if self.outcome == TdvfOutcome.TERMINATED else EXIT_FAILED


def run_tdvf(run: TdvfRun) -> TdvfReport:
    if run.vcpus != 1:
        # TDVF's APs wait in the mailbox loop and join SEC's parallel accept: not modelled on this vCPU yet.
        raise NotImplementedError("the real firmware runs on 1 vCPU today (-smp 1)")
    td = build_td(TdConfig(ram_size=run.ram, vcpus=run.vcpus, firmware_path=str(run.firmware)))
    payload = None
    if run.kernel is not None:
        payload = FwCfgPayload(direct_boot=DirectBoot(kernel=run.kernel.read_bytes(), cmdline=run.cmdline))
    platform = Q35Platform.for_td(td, dma=run.fw_cfg_dma, payload=payload)

    def at_the_shell(_leaf: int, _regs: Mapping[str, int]) -> str | None:
        return "the UEFI shell started" if SHELL_BANNER in platform.uart.text() else None

    vcpu = TdVcpu(td, platform=platform, until=at_the_shell, stop_in_kernel=run.kernel is not None)
    result = vcpu.run(max_wall_s=run.max_wall_s)
    vmcalls = {name: n for counts in vcpu.dispatcher.vmcall_counts for name, n in counts.items()}
    return _add_firmware_work(_report(run, td, platform, result, vmcalls), vcpu)


def _add_firmware_work(report: TdvfReport, vcpu: TdVcpu) -> TdvfReport:
    """Phases, instructions and the rate charged for them (td_phases), and why a part is missing."""
    report.phases = [phase.as_dict() for phase in vcpu.clock.reached()]
    report.instructions = vcpu.clock.instructions
    report.instructions_by_module = dict(sorted(vcpu.clock.by_module.items(), key=lambda kv: -kv[1]))
    report.guest_instruction_ps = vcpu.tdx.profile.guest_instruction_ps
    report.notes += [note for note in (vcpu.vtime_note, vcpu.modules_note) if note]
    return report


def _report(run: TdvfRun, td: Td, platform: Q35Platform, result: TdRunResult, vmcalls: dict[str, int]) -> TdvfReport:
    tdx = td.tdx
    fatal = None
    if platform.fatal is not None:
        message = platform.fatal.message.decode("latin-1").rstrip("\0")
        fatal = f"error code {platform.fatal.error_code:#x}" + (f" {message!r}" if message else "")
    stop = result.stop
    if stop.kind == StopKind.REQUESTED:
        outcome, detail = TdvfOutcome.SHELL, stop.detail
    elif stop.kind == StopKind.KERNEL:
        outcome, detail = TdvfOutcome.KERNEL, stop.detail
    elif stop.kind == StopKind.TERMINATED or tdx.termination is not None:
        outcome, detail = TdvfOutcome.TERMINATED, stop.detail or str(tdx.termination)
    elif fatal:
        outcome, detail = TdvfOutcome.FATAL, f"the firmware reported a fatal error: {fatal}"
    elif stop.kind == StopKind.BUDGET:
        outcome, detail = TdvfOutcome.BUDGET, f"{stop.detail} ({run.max_wall_s:g} s)"
    else:
        outcome, detail = TdvfOutcome.ERROR, stop.detail
    accepted = [(s, e) for s, e, state in tdx.state_ranges() if state == PageState.ACCEPTED]
    return TdvfReport(
        run=run,
        outcome=outcome,
        detail=detail,
        rip=result.rip,
        module=result.module,
        wall_s=result.wall_s,
        virtual_ns=tdx.clock_ns(0),
        tdcalls=dict(result.progress.tdcalls),
        tdvmcalls=vmcalls,
        accepted_bytes=tdx.bytes_in_state(PageState.ACCEPTED),
        accepted_ranges=accepted,
        accepted_by_actor=dict(tdx.accepted_by_actor),
        shared_ranges=platform.shared_ranges(),
        console=result.serial,
        measurement=tdx.measurement.as_dict(),
        fatal=fatal,
    )
