"""What a boot is asked to do and what it reports, whichever firmware ran it: the scenario (`BootScenario`, the
CLI's flags), the outcome, the phases and the report (`BootReport`), and the common end of every boot that reached
the kernel: the stub's handoff checked against the TDX module, then the Linux model from that handoff to a ready
userspace. boot.py runs the Python firmware, tdvf_boot.py edk2's own TDVF; both end here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from lazyaccept.errors import ConfigError
from lazyaccept.exitcodes import EXIT_BOOTED, EXIT_FAILED, EXIT_MEMORY_LOST, EXIT_TERMINATED
from lazyaccept.firmware.dxe.exit import DxePolicy
from lazyaccept.guest.boot_params import BootParams
from lazyaccept.guest.handoff import Handoff, HandoffCheck
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.units import SizeError, format_size, parse_size

# What to change when the kernel cannot use the memory left unaccepted.
MEMORY_LOST_HINT = (
    "accept all memory at ExitBootServices (--accept-all-at-exit, or --upfront all), or boot a kernel >= 6.5 built "
    "with CONFIG_UNACCEPTED_MEMORY=y"
)


class Outcome(StrEnum):
    """How a boot ends (README, "Exit codes"); the JSON carries the value."""

    KERNEL_ENTRY = "kernel-entry"  # the stub jumped into the kernel with a sound handoff
    MEMORY_LOST = "memory-lost"  # entered, but RAM of the TD is lost to the OS
    LOADER_FAILED = "loader-failed"  # the firmware's loader, GRUB or the Boot Manager failed
    STUB_EXITED = "stub-exited"  # the stub returned to the firmware (it prints why)
    APP_EXITED = "app-exited"  # an EFI application returned
    WAITING_FOR_INPUT = "waiting-for-input"  # a loader waits at its prompt
    INPUT = "input"  # waiting for a key, before the loader's report refines it
    TERMINATED = "terminated"  # the TDX module terminated the TD
    BUDGET = "budget"  # a time or exit budget ran out
    ERROR = "error"  # the binary faulted or misused a service


@dataclass
class BootScenario:
    ram: int = 64 << 30  # the defaults are the CLI's (`lazyaccept boot` with no flags)
    smp: int = 8
    profile: str = "kvm-2m"
    firmware: str | None = None
    # Run `firmware` (default: Debian's OVMF.fd 2025.02) itself from the reset vector (tdvf_boot.py) instead of the
    # Python firmware, which then only lends the image's metadata.
    firmware_exec: bool = False
    # QEMU >= 10.0's -shim with firmware_exec: the real firmware starts this first-stage loader (fw_cfg's
    # etc/boot/shim), which loads the kernel. The Python firmware models neither Secure Boot nor shim.
    shim: str | None = None
    # The edk2 build and release the Python firmware behaves as (firmware/profiles.py); None: read from the image.
    edk2_profile: str | None = None
    upfront: str = "below-4g"
    option1: bool = False
    option2: bool = False
    option3: bool = False
    accept_all_at_exit: bool = False
    memory_acceptance_protocol: bool = False
    kernel: str | None = None  # None: Debian's 6.12 cloud kernel from the pinned package
    initrd: str | None = None
    initrd_size: int | None = None
    cmdline: str = "console=ttyS0 nokaslr"
    stream_initrd: bool = False
    rng_seed: int = 0
    cc_measurement: bool = True
    log_calls: bool = True
    hob_convention: str = "qemu"
    timeout_s: float = 600.0
    efi_app: str | None = None  # run this EFI application instead of QEMU direct boot of a kernel
    # Build a unified kernel image (systemd-stub + kernel, initrd, cmdline; guest/uki.py) and start it as the first
    # image, as the Boot Manager starts a boot option
    uki: bool = False
    # Boot through GRUB from a GPT disk instead of QEMU direct boot (firmware/loaders/grub.py)
    grub: bool = False
    disk_from: str | None = None  # the ESP's files; None: kernel, initrd and a generated grub.cfg
    disk: str | None = None  # a raw disk image (GPT or MBR) whose ESP is booted, read only (vmm/disk_image.py)
    grub_efi: str | None = None  # None: Debian's monolithic grubx64.efi from the pinned package
    grub_timeout: int = 0  # of the generated grub.cfg
    grub_cfg: str | None = None  # its text instead of the generated one; "" for none (GRUB ends at its prompt)
    keys: list[tuple[str, str]] = field(default_factory=list)  # scripted keys: (text to wait for or "", keys)
    interactive: bool = False  # keys from this terminal, console output to it as it comes
    tcg2: bool = False  # offer EFI_TCG2_PROTOCOL (a vTPM) too
    fat_bits: int = 32
    cpu: str = "auto"  # auto | unicorn | kvm
    grub_fast_paths: bool = True  # GRUB's byte-loop memmove/memset run natively under unicorn
    # Boot through systemd-boot from a GPT disk laid out as `bootctl install` does (firmware/loaders/systemd_boot.py)
    systemd_boot: bool = False
    os_ready_bytes: int = 512 << 20  # after the handoff, the Linux model boots to a ready userspace this large
    # After the handoff the real kernel runs on a TD vCPU instead of the Linux model (kernel_run.py; 1 vCPU).
    run_kernel: bool = False

    def __post_init__(self) -> None:
        # The Python API and scenario files give sizes as "8G" or bytes; the fields hold bytes (and upfront a
        # policy name or a size string), so that a scenario built either way compares equal to the CLI's.
        for name in ("ram", "initrd_size", "os_ready_bytes"):
            value = getattr(self, name)
            if value is None and name == "initrd_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigError(f"{name}: expected a size such as '8G' or a number of bytes, got {value!r}")
            try:
                setattr(self, name, parse_size(value, what=name))
            except SizeError as exc:
                raise ConfigError(str(exc)) from None
        if isinstance(self.upfront, int) and not isinstance(self.upfront, bool):
            if self.upfront < 0:
                raise ConfigError(f"upfront: size {self.upfront} must not be negative")
            self.upfront = format_size(self.upfront)

    def dxe_policy(self) -> DxePolicy:
        return DxePolicy(
            option1=self.option1,
            option3=self.option3,
            accept_all_at_exit=self.accept_all_at_exit,
            memory_acceptance_protocol=self.memory_acceptance_protocol,
        )

    @property
    def disk_boot(self) -> bool:
        """A chain from a disk the Boot Manager starts (GRUB or systemd-boot), not QEMU direct boot."""
        return self.grub or self.systemd_boot

    @property
    def loader_name(self) -> str:
        return "systemd-boot" if self.systemd_boot else "grub" if self.grub else "qemu-direct-boot"

    @property
    def options_name(self) -> str:
        return "+".join(self.option_names) or "none"

    @property
    def option_names(self) -> list[str]:
        """The on-demand options on, in order (--json's `options`: a list, empty for none)."""
        return [n for n, on in (("option1", self.option1), ("option2", self.option2), ("option3", self.option3)) if on]


@dataclass
class Phase:
    name: str
    virtual_ns: int
    accepted_bytes: int = 0


@dataclass
class BootReport:
    scenario: BootScenario
    outcome: Outcome
    reason: str
    console: str
    calls: list[dict[str, Any]]
    call_counts: dict[str, int]
    phases: list[Phase]
    accepted_by_actor: dict[str, int]
    loader_events: list[dict[str, Any]]
    termination: str | None
    # The physical address of the kernel's _text, where the EFI stub put the decompressed kernel (both firmwares).
    kernel_entry: int | None = None
    # The stub's jump target (startup_64), physical: the Python firmware sees the jump; the real run stops later, at
    # the kernel's text mapping, and leaves it None.
    kernel_jump: int | None = None
    boot_params: BootParams | None = None
    unaccepted_table: dict[str, Any] | None = None
    handoff_problems: list[str] = field(default_factory=list)
    lost_ram_bytes: int = 0
    measurements: list[dict[str, Any]] = field(default_factory=list)
    rng_seed: int = 0
    wall_s: float = 0.0
    explanation: str = ""
    tdcalls_by_stub: int = 0
    grub: dict[str, Any] | None = None  # the disk, GRUB's errors, the failed allocation (GRUB boots only)
    uki: dict[str, Any] | None = None  # the image built and the allocations that load it (--uki boots only)
    systemd_boot: dict[str, Any] | None = None  # the disk, the variables set, the failed allocation
    kernel_init_size: int = 0
    memory_map: list[MemoryDescriptor] = field(default_factory=list)  # the UEFI map the stub exited with
    acpi: dict[str, Any] | None = None  # the ACPI tables handed over (guest/acpi_check.py acpi_summary)
    acpi_view: Any = field(default=None, repr=False, compare=False)  # their AcpiView (differential.py compares it)
    os_outcome: str = ""  # the Linux model after the handoff: "ready" or "crash: ..."
    incidents: list[dict[str, Any]] = field(default_factory=list)  # double accepts the TDX module saw
    tdx_stats: dict[str, int] = field(default_factory=dict)  # the TDX module's accept counters
    cpu: str = ""  # the CPU backend that ran: "kvm" | "unicorn"
    cpu_why: str = ""
    cpu_reason: str = "not-run"  # cpu.select.CHOICE_REASONS; "not-run": the TD ended before a vCPU ran a binary
    cpu_notes: list[str] = field(default_factory=list)
    kernel_release: str = ""  # from the image's setup header
    kernel_profile: str = ""  # the OS model that followed the handoff (guest/kernel_image.py)
    kernel_profile_why: list[str] = field(default_factory=list)
    hint: str = ""  # one line: what to change when the outcome is not a boot
    edk2_profile: str = ""  # the edk2 build and release the firmware is (firmware/profiles.py), and why
    edk2_profile_why: str = ""
    td: Any = field(default=None, repr=False, compare=False)  # the TD as the run left it (differential.py reads it)
    # run_kernel: the real kernel's run after the handoff (kernel_run.PythonFirmwareKernel)
    kernel: Any = field(default=None, repr=False, compare=False)
    linux: Any = field(default=None, repr=False, compare=False)  # the Linux model as it ended (linux_differential.py)

    @property
    def reached_kernel(self) -> bool:
        return self.outcome in (Outcome.KERNEL_ENTRY, Outcome.MEMORY_LOST)

    @property
    def exit_code(self) -> int:
        """The documented exit code of this outcome (README, "Exit codes"); a kernel run that stopped short of a
        power-off fails the boot, as `tdvf --run-kernel` does."""
        if self.kernel is not None and self.outcome != Outcome.TERMINATED and self.kernel.outcome != "powered-off":
            return EXIT_FAILED
        if self.outcome == Outcome.KERNEL_ENTRY and self.handoff_ok:
            return EXIT_BOOTED
        if self.outcome == Outcome.MEMORY_LOST and self.handoff_ok:
            return EXIT_MEMORY_LOST
        if self.outcome == Outcome.TERMINATED:
            return EXIT_TERMINATED
        return EXIT_FAILED

    @property
    def handoff_ok(self) -> bool:
        return self.reached_kernel and not self.handoff_problems


def record_tdx(report: BootReport, tdx) -> None:
    report.incidents = [dict(kind=i.kind, start=i.start, end=i.end, actor=i.actor) for i in tdx.incidents]
    report.tdx_stats = tdx.stats.as_dict()
    report.accepted_by_actor = dict(tdx.accepted_by_actor)


def check_handoff_and_boot_os(
    report: BootReport,
    td,
    handoff: Handoff | None,
    bp: BootParams | None,
    check: HandoffCheck,
    kernel_header: bytes,
    kernel_path: Path | None,
) -> None:
    """The stub's handoff against the truth, then Linux's acceptance to a ready userspace (the guest model).
    `kernel_header` is the start of the image that ran (its setup header and version string); `kernel_path` the
    file it came from, whose config-RELEASE may lie beside it."""
    from lazyaccept.guest.acpi_check import acpi_summary
    from lazyaccept.guest.handoff import GuestCrash, LoadedRange
    from lazyaccept.guest.kernel_image import kernel_profile, read_kernel_image
    from lazyaccept.guest.linux import Linux

    report.boot_params = bp
    report.memory_map = handoff.memory_map if handoff is not None else []
    if handoff is not None:
        report.acpi_view = handoff.acpi
        report.acpi = acpi_summary(handoff.acpi, handoff.memory_map)
    report.handoff_problems = list(check.problems)
    report.lost_ram_bytes = check.lost_bytes
    if handoff is None:
        return
    image = read_kernel_image(kernel_header, _config_path(kernel_path, kernel_header))
    evidence = handoff.table is not None if check.would_lose_without_support_bytes or handoff.table else None
    profile = kernel_profile(image, table_installed=evidence)
    report.kernel_release, report.kernel_profile = image.release, profile.summary
    report.kernel_profile_why = profile.why
    if check.lost_bytes and not check.problems:
        report.outcome = Outcome.MEMORY_LOST
        report.reason = (
            f"the kernel was entered, but {_human(check.lost_bytes)} of the TD's RAM is lost to the OS: it is "
            f"unaccepted and left out of e820 ({profile.summary})"
        )
        report.hint = MEMORY_LOST_HINT
    if handoff.table is not None:
        t = handoff.table
        report.unaccepted_table = dict(
            address=handoff.table_address,
            version=t.version,
            unit_size=t.unit_size,
            phys_base=t.phys_base,
            bitmap_bytes=t.bitmap_bytes,
            set_bytes=t.set_bytes(),
        )
    if report.kernel_entry is not None and report.kernel_init_size and not handoff.loaded_named("kernel"):
        base = report.kernel_entry
        handoff.loaded.append(LoadedRange("kernel", base, base + report.kernel_init_size))
    if report.handoff_problems or not report.scenario.os_ready_bytes or report.scenario.run_kernel:
        return  # the real kernel, not the model, goes on from this handoff (kernel_run.py)
    tdx = td.tdx
    t0 = max(tdx.clocks_ns)
    for v, clk in enumerate(tdx.clocks_ns):
        tdx.charge(v, t0 - clk)  # from ExitBootServices only the BSP has run; Linux starts all vCPUs
    linux = report.linux = Linux(tdx, handoff, profile.config)
    try:
        linux.boot()
        with linux.phase("linux-ready"):
            linux.alloc(report.scenario.os_ready_bytes, workers=1, touch_passes=1)
        report.os_outcome = "ready"
    except GuestCrash as exc:
        report.os_outcome = f"crash: {exc}"
    for ph in linux.phases:
        report.phases.append(Phase(f"OS: {ph.name}", ph.ns, sum(ph.accepted.values())))
    record_tdx(report, tdx)


def _config_path(path: Path | None, header: bytes) -> Path | None:
    """The kernel file whose config-RELEASE may lie beside it: the one the run was given, if it is the image that
    ran (GRUB may have started another)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return path if f.read(len(header)) == header else None
    except OSError:
        return None


def _human(n: int) -> str:
    from lazyaccept.units import human_size

    return human_size(n)


# -- what a report says about the boot's memory -----------------------------------------------------------------

def failed_allocation(rep: BootReport) -> dict[str, Any] | None:
    """The last failed allocation a chain's report names: who made it (loader, stub, firmware), its size; for QEMU
    direct boot, the firmware's copy of the kernel or initrd (a failure of the stub's own is in its exit status and
    the call log)."""
    for part in (rep.grub, rep.systemd_boot):
        if part and part.get("failed_allocations"):
            f = part["failed_allocations"][-1]
            what = f"{f['image']}: {f['service']}({f['detail']})"
            return dict(owner=f["owner"], size_bytes=f["size_bytes"], what=what)
    if rep.uki:
        bad = [a for a in rep.uki["allocations"] if a["status"] not in ("SUCCESS", "not reached")]
        if bad:
            return dict(owner=bad[-1]["who"], size_bytes=bad[-1]["size_bytes"], what=bad[-1]["what"])
    sc = rep.scenario
    if not (sc.grub or sc.systemd_boot or sc.uki or sc.efi_app):  # QEMU direct boot: the firmware's own copies
        bad = [e for e in rep.loader_events if e["status"] != "SUCCESS" and e.get("size")]
        if bad:
            return dict(owner="firmware", size_bytes=bad[-1]["size"], what=f"QemuKernelLoaderFsDxe: {bad[-1]['what']}")
    return None


def chain_of(sc: BootScenario) -> str:
    """The scenario's boot chain as `advise --chain` names it."""
    if sc.uki and not sc.systemd_boot:
        return "uki"
    if sc.systemd_boot:
        return "systemd-boot"
    if sc.grub:
        return "shim-grub" if sc.shim else "grub"
    return "direct"


def outcome_hint(rep: BootReport) -> str:
    """One line for a boot that ran out of accepted memory: what to change. The stub's kernel slot comes from the
    memory map (efi_random_alloc never calls AllocatePages when no EfiConventionalMemory slot fits), so only more up
    front helps it; an allocation that failed can be helped by the allocator's on-demand accept (option 1)."""
    if rep.outcome not in ("stub-exited", "loader-failed") or rep.scenario.efi_app or rep.scenario.disk:
        return ""
    sc, chain = rep.scenario, chain_of(rep.scenario)
    search = "`lazyaccept advise" + ("" if chain == "direct" else f" --chain {chain}") + "` with the same TD finds the "
    if "Failed to decompress kernel" in rep.console:
        return (f"accept more up front (--upfront): the stub picks its kernel slot from the memory map and never asks "
                f"the allocator; {search}smallest size")
    if failed_allocation(rep) is None and "Failed to load initrd" not in rep.console:
        return ""  # not a failure for memory
    if sc.option1:
        return f"accept more up front (--upfront); {search}smallest size"
    return f"let the allocator accept on demand (--on-demand allocator) or accept more up front; {search}smallest size"
