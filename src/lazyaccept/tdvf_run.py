"""edk2's own TDVF from the reset vector: build the TD as QEMU does (vmm/td.py), give it the q35 devices a TD guest
reaches (vmm/platform.py), run its vCPU on unicorn at CPL0 (cpu/unicorn/td_vcpu.py) with every TDCALL answered by
the TDX module (tdx/tdcall.py), and report what happened: how far the firmware got, what it accepted, its TDCALLs
and TDVMCALLs, its console, and the TD's measurements.

A run ends in the kernel (with --kernel: QEMU direct boot through fw_cfg; the run stops at the kernel's first
instruction at its text mapping, and the handoff the stub left is read back and checked as for the Python firmware;
with --run-kernel the same vCPU then goes on in the kernel until it stops, `KernelRun`),
at the UEFI shell, where BDS finds nothing to boot (images without a shell, or a kernel Secure Boot refuses), at a
TD termination, at a fatal error the firmware reports, or at the wall-time budget.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from unicorn import UC_MEM_READ

from lazyaccept import progress
from lazyaccept.cpu.unicorn.td_kernel import GuestEntropy
from lazyaccept.cpu.unicorn.td_machine import TdMachine
from lazyaccept.cpu.unicorn.td_paging import PageFault, UnsupportedPaging
from lazyaccept.cpu.unicorn.td_snapshot import TdvfSnapshot, payload_look
from lazyaccept.cpu.unicorn.td_vcpu import TdRunResult
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED, EXIT_MEMORY_LOST, EXIT_TERMINATED
from lazyaccept.guest.boot_params import BootParams
from lazyaccept.guest.handoff import Handoff, HandoffCheck, LoadedRange, check_handoff
from lazyaccept.guest.handoff_check import configuration_tables, side_effect_free_reader, stub_handoff
from lazyaccept.guest.initramfs import DEFAULT_MARKER, parse_meminfo_blocks
from lazyaccept.guest.kernel_image import read_kernel_image
from lazyaccept.guest.kernel_progress import KernelProgress, kernel_progress_watch
from lazyaccept.rangemap import minus_ranges
from lazyaccept.records import StopKind
from lazyaccept.spec import guids
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.spec.linux_boot import read_setup_header
from lazyaccept.spec.pe_signing import has_sbat_section, is_signed
from lazyaccept.tdx.module import PageState, TdxModule
from lazyaccept.units import GiB
from lazyaccept.vmm.devices.fw_cfg import DirectBoot, FwCfgPayload
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td, TdConfig, build_td

SHELL_BANNER = "UEFI Interactive Shell"
SNAPSHOT_POINT = "the firmware's first look at the payload"
# __START_KERNEL (arch/x86/include/asm/page_64_types.h, Linux 6.12, CONFIG_PHYSICAL_START 0x1000000): _text, where
# startup_64, the target of the stub's jump, sits (arch/x86/kernel/vmlinux.lds.S puts .head.text first).
KERNEL_TEXT = 0xFFFFFFFF81000000
# efi_info.efi_loader_signature (boot_params 0x1c0): "EL64" from the 64-bit EFI stub (libstub x86-stub.c
# setup_efi_info). The stub's fresh boot_params has no "HdrS": since 6.8 efi_pe_entry fills only the setup-header
# fields the kernel reads.
EFI_LOADER_SIGNATURE = (0x1C0, b"EL64")
# PlatformBootManagerUnableToBoot (OvmfPkg/Library/PlatformBootManagerLib/BdsPlatform.c, edk2-stable202502 and
# later): BDS tried every boot option and then waits for a key on a console no one types on (or dead-loops).
NO_BOOT_OPTION_LINE = "No bootable option"
# X86QemuLoadImageLib (edk2 2025-10 on): LoadImage of the -kernel refused by Secure Boot, no legacy loader in a CVM.
SECURE_BOOT_REFUSED_LINE = "Secure boot image verification failed"
# shim 16.1 (pe.c handle_image): the image it was to start failed verify_buffer (Authenticode against db, MokList and
# its vendor certificate, then SBAT, which is mandatory for an image shim loads itself), shown in a console_error
# box that waits for a key no one types. The status follows in parentheses, padded by the box.
SHIM_REFUSED = re.compile(r"Verification failed: \((0x[0-9A-Fa-f]+)\) ([A-Za-z][A-Za-z ]*?)(?: {2}|[\r\n│|])")


class TdvfOutcome(StrEnum):
    SHELL = "shell"  # BDS started the UEFI shell: the firmware booted (no payload was given)
    KERNEL = "kernel"  # with a kernel: the firmware loaded its EFI stub, which ran and jumped into the kernel
    KERNEL_STOPPED = "kernel-stopped"  # --run-kernel: the kernel ran on after the handoff and stopped (KernelRun)
    KERNEL_PANIC = "kernel-panic"  # --run-kernel: the kernel panicked (its console has the reason)
    POWERED_OFF = "powered-off"  # --run-kernel: the guest asked the VMM for S5 (its /init ran and powered off)
    TERMINATED = "terminated"  # the TDX module terminated the TD (e.g. a touch of memory it never accepted)
    FATAL = "fatal"  # the firmware reported a fatal error (TDG.VP.VMCALL<ReportFatalError>)
    NO_BOOT_OPTION = "no-boot-option"  # BDS found nothing it could boot (no kernel, or one the firmware refused)
    REFUSED = "refused"  # shim refused the kernel and waits for a key at its error box (no one types)
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
    initrd: Path | None = None  # QEMU's -initrd
    shim: Path | None = None  # QEMU >= 10.0's -shim with -kernel: the firmware starts it, it loads the kernel
    initrd_size: int = 0  # without a file: a synthetic initrd of zeros this large
    profile: str = "kvm-2m"  # the TDX module's host cost profile (tdx/costs.py)
    cmdline: str = "console=ttyS0 earlyprintk=serial,ttyS0 nokaslr"
    # Start from this snapshot (td_snapshot) instead of the reset vector: the same image, RAM and vCPUs.
    snapshot: TdvfSnapshot | None = field(default=None, compare=False, repr=False)
    # Take a snapshot at the firmware's first look at the payload (TdvfReport.snapshot), write it here if set.
    snapshot_save: Path | None = None
    take_snapshot: bool = False
    # Go on in the kernel after the handoff is read (td_vcpu.TdVcpu.enter_kernel) until it stops or the budget ends.
    run_kernel: bool = False


# Linux 6.12 arch/x86/coco/tdx/tdx.c tdx_early_init (pr_fmt "tdx: "): the kernel found it runs in a TD.
TDX_GUEST_LINE = "tdx: Guest detected"
# Linux 6.12 kernel/panic.c panic(): its message, and the line it prints last before it loops for good; and an
# oops's RIP line (arch/x86/kernel/dumpstack.c show_ip: "RIP: %04x:%pS", the symbol from the kernel's kallsyms).
PANIC_LINE = "Kernel panic - not syncing: "
OOPS_RIP = "RIP: 0010:"
PANIC_END = b"---[ end Kernel panic - not syncing: "


@dataclass
class KernelRun:
    """The kernel's own run after the handoff (TdvfRun.run_kernel): where and why it stopped, its console, the
    memory it accepted itself (actor `linux`) and the #VEs it handled."""

    stop_kind: str
    detail: str
    rip: int
    registers: dict[str, int]
    console: str  # the serial output after the handoff
    accepts: list[tuple[int, int]]  # (GPA, bytes) of each successful TDG.MEM.PAGE.ACCEPT, in order
    accept_tdcalls: int  # every TDG.MEM.PAGE.ACCEPT the kernel issued, whatever its status
    tdcalls: dict[str, int]  # by leaf, after the handoff
    tdvmcalls: dict[str, int]  # by sub-function, after the handoff
    ve: dict[str, int]
    exceptions: dict[str, int]
    io_sites: int  # IN/OUT instructions met (each rolled back once, then stopped before: td_kernel.py)
    msr: dict[str, int]  # "rdmsr 0x1b ve" -> count: each RDMSR/WRMSR and what the TDX module made of it
    # The kernel's progress when it accepted: [the last console line printed before, bytes, TDCALLs], in order.
    accepts_after: list[tuple[str, int, int]]
    wall_s: float
    instructions: int | None  # guest instructions in the kernel (None: not counted)
    virtual_ns: int
    progress: KernelProgress | None = None  # phases and accepts by kernel function, from its own symbols
    # GPA ranges the kernel converted to shared (TDG.VP.VMCALL<MapGPA>) and left so: SWIOTLB, the DMA pools.
    shared_by_kernel: list[tuple[int, int]] = field(default_factory=list)
    # /init's /proc/meminfo readings (guest/initramfs.py, kB) before and after its tmpfs fill; empty if not printed.
    meminfo_before: dict[str, int] = field(default_factory=dict)
    meminfo_after: dict[str, int] = field(default_factory=dict)
    # The kernel's accepts while /init filled its tmpfs: from its "fill N MiB" line to its "after" reading (the
    # page allocator accepting on demand, mm/page_alloc.c); None if /init printed no fill.
    fill_accepts: list[tuple[int, int]] | None = None

    @property
    def fill_accepted_bytes(self) -> int | None:
        return sum(size for _, size in self.fill_accepts) if self.fill_accepts is not None else None

    @property
    def accepted_bytes(self) -> int:
        return sum(size for _, size in self.accepts)

    @property
    def tdx_guest_detected(self) -> bool:
        return TDX_GUEST_LINE in self.console

    @property
    def panic(self) -> str | None:
        """panic()'s message on the console, if the kernel panicked."""
        at = self.console.find(PANIC_LINE)
        return self.console[at + len(PANIC_LINE) :].split("\n", 1)[0].strip() if at >= 0 else None

    @property
    def last_reported_rip(self) -> str | None:
        """The last RIP the kernel printed itself (an oops: "RIP: 0010:symbol+off/size"), its own symbol."""
        at = self.console.rfind(OOPS_RIP)
        return self.console[at + len(OOPS_RIP) :].split("\n", 1)[0].strip() if at >= 0 else None


@dataclass
class KernelHandoff:
    """What the stub left for the kernel, read back at the kernel's first instruction at its text mapping."""

    boot_params_gpa: int
    kernel_load: int | None  # where the stub put the decompressed kernel (the physical address of _text)
    boot_params: BootParams | None
    handoff: Handoff | None  # its memory_map: the UEFI memory map the stub exited boot services with
    check: HandoffCheck

    @property
    def memory_map(self) -> list[MemoryDescriptor]:
        return self.handoff.memory_map if self.handoff is not None else []


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
    kernel: KernelHandoff | None = None
    snapshot: TdvfSnapshot | None = field(default=None, repr=False)  # taken by this run (TdvfRun.take_snapshot)
    # Wall seconds of this run to the snapshot point and for taking (and writing) the snapshot there.
    snapshot_wall_s: tuple[float, float] | None = None
    td: Td | None = field(default=None, repr=False)  # the TD as the run left it (for what follows the handoff)
    # The firmware's own work (cpu/unicorn/td_phases.py): phases in order [{name, virtual_ns, instructions,
    # accepted_bytes, wall_s}], guest instructions (None: not counted) and by module, the rate charged.
    phases: list[dict[str, Any]] = field(default_factory=list)
    instructions: int | None = None
    instructions_by_module: dict[str, int] = field(default_factory=dict)
    guest_instruction_ps: int = 0
    kernel_run: KernelRun | None = None

    @property
    def exit_code(self) -> int:
        if self.outcome in (TdvfOutcome.KERNEL_STOPPED, TdvfOutcome.KERNEL_PANIC):
            return EXIT_FAILED  # the kernel stopped short of a power-off
        if self.outcome in (TdvfOutcome.KERNEL, TdvfOutcome.POWERED_OFF) and self.kernel is not None:
            if self.kernel.check.problems:
                return EXIT_FAILED
            return EXIT_MEMORY_LOST if self.kernel.check.lost_bytes else EXIT_BOOTED
        if self.outcome in (TdvfOutcome.SHELL, TdvfOutcome.KERNEL):
            return EXIT_BOOTED
        return EXIT_TERMINATED if self.outcome == TdvfOutcome.TERMINATED else EXIT_FAILED


def run_tdvf(run: TdvfRun) -> TdvfReport:
    started = time.monotonic()
    config = TdConfig(ram_size=run.ram, vcpus=run.vcpus, firmware_path=str(run.firmware), profile=run.profile)
    boot = None
    if run.kernel is not None:
        # bytes(n) is calloc'd: a synthetic initrd costs host memory only where fw_cfg reads it
        initrd = run.initrd.read_bytes() if run.initrd is not None else bytes(run.initrd_size)
        boot = DirectBoot(run.kernel.read_bytes(), initrd, run.cmdline,
                          run.shim.read_bytes() if run.shim is not None else None)
    elif run.shim is not None:
        raise ConfigError("a shim needs a kernel (QEMU's -shim goes with -kernel)")
    take = run.take_snapshot or run.snapshot_save is not None
    if run.shim is not None and (take or run.snapshot is not None):
        raise ConfigError("a snapshot swaps fw_cfg's direct-boot items only, not the etc/boot/ files of a shim: "
                          "a run with a shim starts from the reset vector")
    snapshot: TdvfSnapshot | None = None
    platform: Q35Platform

    def until(leaf: int, regs: Mapping[str, int]) -> str | None:
        if take and snapshot is None and (key := payload_look(platform, leaf, regs)) is not None:
            return f"{SNAPSHOT_POINT} (fw_cfg key {key:#x})"
        console = platform.uart.text()
        if SHELL_BANNER in console:
            return "the UEFI shell started"
        if run.shim is not None and (refused := SHIM_REFUSED.search(console)):
            return f"shim refused the kernel: Verification failed ({refused.group(1)} {refused.group(2)})"
        at = console.find(NO_BOOT_OPTION_LINE)
        return "BDS found no bootable option" if at >= 0 and "\n" in console[at:] else None  # the whole line

    notes = []
    if run.snapshot is not None:
        if take:
            raise ConfigError("a run from a snapshot is past the point a snapshot is taken at")
        run.snapshot.check(config)
        machine = run.snapshot.restore(boot, until=until, stop_in_kernel=run.kernel is not None)
        restored = machine.platform
        assert restored is not None  # restore() always brings the snapshot's platform
        td, platform = machine.td, restored
        notes.append(f"started from a snapshot taken at {run.snapshot.where} ({time.monotonic() - started:.2f} s "
                     "to restore)")
    else:
        progress.phase("VMM build (TD, TD HOB, q35 devices)")
        td = build_td(config)
        payload = FwCfgPayload(direct_boot=boot) if boot is not None else None
        platform = Q35Platform.for_td(td, dma=run.fw_cfg_dma, payload=payload)
        machine = TdMachine(td, platform=platform, until=until, stop_in_kernel=run.kernel is not None)
    result = machine.run(max_wall_s=run.max_wall_s - (time.monotonic() - started))
    snapshot_wall_s = None
    if take and result.stop.kind == StopKind.REQUESTED and result.stop.detail.startswith(SNAPSHOT_POINT):
        reached = time.monotonic() - started
        snapshot = TdvfSnapshot.take(machine, result.stop.detail)
        if run.snapshot_save is not None:
            snapshot.save(run.snapshot_save)
            notes.append(f"snapshot written to {run.snapshot_save} at {result.stop.detail}")
        snapshot_wall_s = (reached, time.monotonic() - started - reached)
        result = machine.run(max_wall_s=run.max_wall_s - (time.monotonic() - started))
    elif take:
        notes.append(f"no snapshot: the run ended before {SNAPSHOT_POINT}")
    result.wall_s = time.monotonic() - started
    vmcalls = {name: n for counts in machine.dispatcher.vmcall_counts for name, n in counts.items()}
    report = _add_firmware_work(_report(run, td, platform, result, vmcalls), machine)
    report.notes += notes
    report.snapshot, report.snapshot_wall_s = snapshot, snapshot_wall_s
    report.td = td
    if result.stop.kind == StopKind.KERNEL:
        report.kernel = read_kernel_handoff(td, machine, result, run.kernel)
        if run.run_kernel:
            remaining = run.max_wall_s - (time.monotonic() - started)
            _settle_random_seed(td, report.kernel)
            report.kernel_run = run_kernel_on(machine, platform, remaining, _kernel_image(td, report.kernel),
                                            result.vcpu)
            report.wall_s = time.monotonic() - started
            _after_kernel(report, td, platform)
            report.detail += _no_tdx_guest_hint(report.kernel_run, run.kernel)
            notes = report.notes
            _add_firmware_work(report, machine)  # again: the phases now end with the kernel's (phase linux)
            report.notes = list(dict.fromkeys(notes + report.notes))
    return report


def kernel_accepts_outside_table(rep: TdvfReport) -> list[tuple[int, int]]:
    """The kernel's accepts that are not wholly within a range the stub's unaccepted table marked (all of them
    when the handoff has no table): in a sound boot, the kernel accepts only what the table says is pending."""
    k, handoff = rep.kernel_run, rep.kernel.handoff if rep.kernel is not None else None
    if k is None:
        return []
    return accepts_outside(k, handoff.table.set_ranges() if handoff is not None and handoff.table is not None else [])


def accepts_outside(k: KernelRun, table_ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The kernel's accepts not wholly within one of the [start, end) ranges the stub's unaccepted table marked."""
    return [(gpa, size) for gpa, size in k.accepts
            if not any(start <= gpa and gpa + size <= end for start, end in table_ranges)]


POWERED_OFF_DETAIL = "the guest powered off (ACPI S5: SLP_EN in PM1a_CNT)"


class _PanicWatch:
    """The kernel run's stop condition, asked before each TDCALL: panic() has printed its last line, or the guest
    has asked for S5 (vmm/devices/acpi_pm.py; QEMU then ends the VM). Only the console written since the last call
    is searched (the firmware's `until` decodes the whole console each time)."""

    def __init__(self, output: bytearray, start: int, poweroffs: Callable[[], int] = lambda: 0):
        self.output, self.scanned = output, start
        self.poweroffs = poweroffs

    def __call__(self, leaf: int, regs: Mapping[str, int]) -> str | None:
        if self.poweroffs():
            return POWERED_OFF_DETAIL
        out = self.output
        at = out.find(PANIC_END, max(self.scanned - len(PANIC_END), 0))
        if at < 0:
            self.scanned = len(out)
            return None
        self.scanned = at
        # Its " ]---" is the last thing written before the line's newline, whose own TDCALL comes after this one.
        end = out.find(b" ]---", at)
        if end < 0:
            return None
        reason = out[at + len(PANIC_END) : end].decode("utf-8", "replace").rstrip(" ]-")
        return f"the kernel panicked: {reason}"


def _accepts_by_line(output: bytearray, start: int, machine: TdMachine) -> list[tuple[str, int, int]]:
    """The kernel's accepts grouped by the last whole console line it had printed before each (its phase as it
    tells it: e.g. the SWIOTLB line before the bounce buffer is placed in unaccepted memory)."""
    groups: list[tuple[str, int, int]] = []
    for v in machine.vcpus:
        for _, size, at in v.kernel_accepts:
            head = output[start:at]
            end = head.rfind(b"\n")
            line = head[head.rfind(b"\n", 0, end) + 1 : end].decode("utf-8", "replace").strip() if end >= 0 else ""
            line = line or "(before the kernel's first line)"
            if groups and groups[-1][0] == line:
                groups[-1] = (line, groups[-1][1] + size, groups[-1][2] + 1)
            else:
                groups.append((line, size, 1))
    return groups


def _fill_accepts(output: bytearray, start: int, machine: TdMachine) -> list[tuple[int, int]] | None:
    """The kernel's accepts made between /init's fill line and its "after" reading (by the console length at each
    accept), or None when the console has no such pair of lines."""
    marker = re.escape(DEFAULT_MARKER.encode())
    fill = re.compile(rb"%s fill \d+ MiB\r?\n" % marker).search(output, start)
    after = re.compile(rb"%s after\r?\n" % marker).search(output, fill.end()) if fill else None
    if fill is None or after is None:
        return None
    return [(gpa, size) for v in machine.vcpus for gpa, size, at in v.kernel_accepts
            if fill.end() <= at <= after.start()]


# struct linux_efi_random_seed (include/linux/efi.h, 6.12): u32 size, then the seed; the stub's is 32 bytes or so.
MAX_RANDOM_SEED = 4096


def _settle_random_seed(td: Td, handoff: KernelHandoff | None) -> None:
    """The seed the EFI stub left for the kernel's CRNG (LINUX_EFI_RANDOM_SEED), from the firmware's RNG, which
    unicorn's RDRAND draws from the host: replaced by bytes of a fixed-seed generator (td_kernel.GuestEntropy, as the
    kernel's own RDRAND), so that the kernel's run repeats. Left alone when the handoff names no such table."""
    bp = handoff.boot_params if handoff is not None else None
    if bp is None:
        return
    read = side_effect_free_reader(td.tdx)
    try:
        address = next((a for g, a in configuration_tables(read, bp.efi_systab) if g == guids.LINUX_RANDOM_SEED), None)
        size = int.from_bytes(read(address, 4), "little") if address is not None else 0
        if address is None or not 0 < size <= MAX_RANDOM_SEED:
            return
        read(address, 4 + size)  # all of it accepted private memory
    except InputError:
        return
    entropy = GuestEntropy(seed=0x6566692D73656564)  # "efi-seed": a stream apart from the kernel's RDRAND
    seed = b"".join(entropy.next().to_bytes(8, "little") for _ in range(0, size, 8))[:size]
    td.tdx.memory.backing.write(address + 4, seed)


def _kernel_image(td: Td, handoff: KernelHandoff | None) -> bytes:
    """The kernel as the stub decompressed it (its init_size from the setup header), for the vCPU's MSR sites;
    empty when the handoff does not say where it is."""
    loaded = [r for r in (handoff.handoff.loaded if handoff and handoff.handoff else []) if r.name == "kernel"]
    if not loaded:
        return b""
    read = side_effect_free_reader(td.tdx)
    try:
        return bytes(read(loaded[0].start, loaded[0].end - loaded[0].start))
    except InputError:
        return b""


def run_kernel_on(machine: TdMachine, platform: Q35Platform, max_wall_s: float, image: bytes, vcpu: int,
                slide: int | None = None) -> KernelRun:
    """Go on from the kernel's first instruction at its text mapping (the handoff is read) on the same vCPUs."""
    console_at = len(platform.uart.text())
    shared_before = platform.shared_ranges()
    before = machine.dispatcher.tdcall_counts()
    vmcalls_before = [dict(c) for c in machine.dispatcher.vmcall_counts]
    instructions_before = [v.clock.instructions for v in machine.vcpus]
    clock_before = machine.tdx.clock_ns(0)
    watch, progress_note = kernel_progress_watch(machine, vcpu, image, KERNEL_TEXT, slide)
    machine.enter_kernel(vcpu, image, KERNEL_TEXT)
    if watch is not None:
        watch.arm()
    machine.until = _PanicWatch(platform.uart.output, console_at, lambda: platform.pm.poweroff_requests)
    result = machine.run(max_wall_s=max(max_wall_s, 0.001))
    progress = watch.result() if watch is not None else KernelProgress([], [], [progress_note])
    tdcalls: dict[str, int] = {}
    for now, then in zip(machine.dispatcher.tdcall_counts(), before, strict=True):
        for name, n in now.items():
            if n - then.get(name, 0):
                tdcalls[name] = tdcalls.get(name, 0) + n - then.get(name, 0)
    vmcalls: dict[str, int] = {}
    for counts, then in zip(machine.dispatcher.vmcall_counts, vmcalls_before, strict=True):
        for name, n in counts.items():
            if n - then.get(name, 0):
                vmcalls[name] = vmcalls.get(name, 0) + n - then.get(name, 0)
    counted = [v.clock.instructions for v in machine.vcpus]
    instructions = None
    if all(n is not None for n in counted + instructions_before):
        instructions = sum(n or 0 for n in counted) - sum(n or 0 for n in instructions_before)
    accept_tdcalls = sum(n for (actor, _), n in machine.tdx.accept_tdcalls.items() if actor.startswith("linux"))
    meminfo = parse_meminfo_blocks(platform.uart.text()[console_at:])
    return KernelRun(
        stop_kind=str(result.stop.kind),
        detail=result.stop.detail,
        rip=result.rip,
        registers=result.registers,
        console=platform.uart.text()[console_at:],
        accepts=[(gpa, size) for v in machine.vcpus for gpa, size, _ in v.kernel_accepts],
        accepts_after=_accepts_by_line(platform.uart.output, console_at, machine),
        accept_tdcalls=accept_tdcalls,
        tdcalls=tdcalls,
        tdvmcalls=vmcalls,
        ve=dict(result.progress.ve),
        exceptions=dict(result.progress.exceptions),
        io_sites=sum(v.io_sites.io_count() for v in machine.vcpus if v.io_sites is not None),
        msr=dict(sum((v.msr_events for v in machine.vcpus), Counter())),
        wall_s=result.wall_s,
        instructions=instructions,
        virtual_ns=machine.tdx.clock_ns(0) - clock_before,
        shared_by_kernel=minus_ranges(platform.shared_ranges(), shared_before),
        progress=progress,
        meminfo_before=dict(meminfo.before),
        meminfo_after=dict(meminfo.after),
        fill_accepts=_fill_accepts(platform.uart.output, console_at, machine),
    )


def kernel_outcome(k: KernelRun, tdx: TdxModule) -> tuple[TdvfOutcome, str]:
    """How the kernel's run ended, and why (both firmwares' runs: tdvf_run and kernel_run)."""
    if k.stop_kind == StopKind.TERMINATED or tdx.termination is not None:
        return TdvfOutcome.TERMINATED, k.detail or str(tdx.termination)
    if k.stop_kind == StopKind.REQUESTED and k.detail == POWERED_OFF_DETAIL:
        return TdvfOutcome.POWERED_OFF, k.detail
    if (panic := k.panic) is not None:
        detail = f"the kernel panicked: {panic}"
        if not k.detail.startswith("the kernel panicked"):
            detail += f" (then {k.stop_kind}: {k.detail})"
        return TdvfOutcome.KERNEL_PANIC, detail
    return TdvfOutcome.KERNEL_STOPPED, f"the kernel stopped ({k.stop_kind}): {k.detail}"


def _no_tdx_guest_hint(k: KernelRun, kernel: Path | None) -> str:
    """Why a kernel that never detected the TD stopped, when its build says: without CONFIG_INTEL_TDX_GUEST it has
    no #VE handler (arch/x86/coco/tdx/tdx.c), so its first port I/O or #VE-raising CPUID/MSR access in a TD is an
    exception nothing handles (Debian 12's 6.1 dies so at its first serial write)."""
    if k.tdx_guest_detected or kernel is None:
        return ""
    try:
        image = read_kernel_image(kernel.read_bytes(), kernel)
    except OSError:
        return ""
    if image.option("CONFIG_INTEL_TDX_GUEST") != "n":
        return ""
    return (f"; {image.release or kernel.name} is built without CONFIG_INTEL_TDX_GUEST ({image.config_source}): it "
            "has no #VE handler, so its first port I/O, MMIO or #VE-raising CPUID/MSR access in a TD is fatal")


def _after_kernel(report: TdvfReport, td: Td, platform: Q35Platform) -> None:
    """The report after the kernel's run: its outcome, and the TD's totals as the kernel left them."""
    k = report.kernel_run
    assert k is not None
    tdx = td.tdx
    report.outcome, report.detail = kernel_outcome(k, tdx)
    report.rip = k.rip
    report.module = None
    # The whole run's TDCALLs and TDVMCALLs: the firmware's and the kernel's.
    for totals, more in ((report.tdcalls, k.tdcalls), (report.tdvmcalls, k.tdvmcalls)):
        for name, n in more.items():
            totals[name] = totals.get(name, 0) + n
    report.console = platform.uart.text()
    report.virtual_ns = tdx.clock_ns(0)
    report.accepted_bytes = tdx.bytes_in_state(PageState.ACCEPTED)
    report.accepted_ranges = [(s, e) for s, e, state in tdx.state_ranges() if state == PageState.ACCEPTED]
    report.accepted_by_actor = dict(tdx.accepted_by_actor)
    report.shared_ranges = platform.shared_ranges()


def read_kernel_handoff(td: Td, machine: TdMachine, result: TdRunResult, kernel: Path | None) -> KernelHandoff:
    """The handoff, read where the kernel starts running at its text mapping. Linux >= 6.6 keeps the boot_params
    pointer the stub passed in RSI in R15 from startup_64's first instruction on (arch/x86/kernel/head_64.S, "Store
    boot_params pointer in callee save register"), and until then the kernel has written only its own page
    tables, so memory and the TDX module are as the stub left them at its jump."""
    gpa = result.registers["r15"]
    read = side_effect_free_reader(td.tdx)
    offset, signature = EFI_LOADER_SIGNATURE
    try:
        found = read(gpa + offset, len(signature))
    except InputError:
        found = b""
    if found != signature:
        problem = (f"R15 ({gpa:#x}) does not point at the EFI stub's boot_params at the kernel's text mapping: a "
                   "kernel before 6.6 keeps the pointer on its stack, where this run does not look")
        return KernelHandoff(gpa, None, None, None, HandoffCheck(problems=[problem]))
    try:
        load, _perms = machine.vcpus[result.vcpu].walker.translate(KERNEL_TEXT, UC_MEM_READ)
    except (PageFault, UnsupportedPaging):
        load = None
    try:
        handoff, bp = stub_handoff(td.tdx, gpa)
    except InputError as exc:
        unreadable = HandoffCheck(problems=[f"the stub's handoff is unreadable: {exc}"])
        return KernelHandoff(gpa, load, None, None, unreadable)
    header = None
    if kernel is not None:
        with kernel.open("rb") as f:
            header = read_setup_header(f.read(0x1000))
    if load is not None and header:
        handoff.loaded.append(LoadedRange("kernel", load, load + header["init_size"]))
    return KernelHandoff(gpa, load, bp, handoff, check_handoff(td.tdx, handoff))


def _no_boot_detail(run: TdvfRun, console: str) -> str:
    if run.kernel is None:
        return "BDS found no bootable option (no kernel given, and this image has no UEFI shell)"
    if run.shim is not None:
        # X86QemuLoadImageLib: a shim that fails LoadImage ends direct boot with no console line of its own.
        if not is_signed(run.shim):
            return "BDS found no bootable option: Secure Boot refused the shim (it is unsigned)"
        return ("BDS found no bootable option: the shim chain did not start the kernel (Secure Boot refused the shim, "
                "or shim failed and said so on the console)")
    if SECURE_BOOT_REFUSED_LINE in console:
        return "BDS found no bootable option: Secure Boot refused the kernel (an unsigned image needs a -shim chain)"
    return "BDS found no bootable option: the firmware did not boot the kernel given"


def _add_firmware_work(report: TdvfReport, machine: TdMachine) -> TdvfReport:
    """Phases (the BSP's), instructions of all vCPUs and the rate charged for them (td_phases), and why a part is
    missing."""
    bsp = machine.vcpus[0]
    report.phases = [phase.as_dict() for phase in bsp.clock.reached()]
    counted = [v.clock.instructions for v in machine.vcpus]
    report.instructions = None if any(n is None for n in counted) else sum(n or 0 for n in counted)
    by_module: dict[str, int] = {}
    for v in machine.vcpus:
        for name, n in v.clock.by_module.items():
            by_module[name] = by_module.get(name, 0) + n
    report.instructions_by_module = dict(sorted(by_module.items(), key=lambda kv: -kv[1]))
    report.guest_instruction_ps = bsp.tdx.profile.guest_instruction_ps
    report.notes += [note for note in (bsp.vtime_note, bsp.modules_note) if note]
    return report


def _report(run: TdvfRun, td: Td, platform: Q35Platform, result: TdRunResult, vmcalls: dict[str, int]) -> TdvfReport:
    tdx = td.tdx
    fatal = None
    if platform.fatal is not None:
        message = platform.fatal.message.decode("latin-1").rstrip("\0")
        fatal = f"error code {platform.fatal.error_code:#x}" + (f" {message!r}" if message else "")
    stop = result.stop
    if stop.kind in (StopKind.REQUESTED, StopKind.BUDGET) and NO_BOOT_OPTION_LINE in result.serial:
        outcome, detail = TdvfOutcome.NO_BOOT_OPTION, _no_boot_detail(run, result.serial)
    elif stop.kind == StopKind.REQUESTED and stop.detail.startswith("shim refused"):
        outcome, detail = TdvfOutcome.REFUSED, stop.detail + (
            "; the kernel has no .sbat section, which shim requires of an image it loads itself"
            if run.kernel is not None and not has_sbat_section(run.kernel) else "")
    elif stop.kind == StopKind.REQUESTED:
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
