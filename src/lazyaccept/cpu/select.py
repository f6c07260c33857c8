"""Which CPU backend runs the binaries: what the machine offers, and `--cpu auto|unicorn|kvm`.

`auto` takes KVM only where it gives the same result as unicorn, and otherwise says in one line why it fell
back: no usable /dev/kvm, a run bounded by an instruction count (KVM cannot count), a binary that must see
CPUID leaf 0x21 while boot services run on a KVM that cannot route CPUID at CPL3 (kvm-pvm: CPUID runs
natively there and returns the host's values), a virtual TSC this KVM cannot give, or XMM registers the backend
cannot set (every EFI run needs them: the firmware restores the callee-saved xmm6-15 when an image exits).
`--cpu kvm` is honoured in the last three cases, with the loss named as a fidelity limit in the report.

Linux's EFI stub reads leaf 0x21 only after ExitBootServices, when it accepts memory itself: unaccepted
ranges whose ends are not 2 MiB aligned or that are shorter than two 2 MiB units
(drivers/firmware/efi/libstub/unaccepted_memory.c, process_unaccepted_memory -> arch_accept_memory ->
early_is_tdx_guest, called from setup_e820 after efi_exit_boot_services). `prepare_machine` covers that on
KVM: at ExitBootServices, if the memory map the stub holds has such ranges, the rest of the run goes to CPL0,
where KVM answers CPUID from its table (which carries the firmware's leaf 0x21). kvm-pvm emulates CPL0, which
is slow, so this happens only when needed; the stub's few remaining instructions cost milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazyaccept.cpu.backend import CpuBackend, CpuClient
from lazyaccept.errors import ConfigError

if TYPE_CHECKING:
    from lazyaccept.cpu.machine import EfiMachine
    from lazyaccept.firmware.dxe.exit import DxeCore

CPU_CHOICES = ("auto", "unicorn", "kvm")
KVM_DEVICE = "/dev/kvm"
REQUIRE_KVM_ENV = "LAZYACCEPT_REQUIRE_KVM"  # "1": this machine must offer KVM; its absence is an error

BackendFactory = Callable[[CpuClient], CpuBackend]


@dataclass(frozen=True)
class KvmInfo:
    usable: bool
    kind: str  # "kvm-pvm" (CPL0 emulated, CPL3 native) | "hardware" | "unknown" | "none"
    detail: str  # one line: what it is, or why it cannot be used
    # Fields named as CpuBackend's capabilities hold what KvmBackend declared here after its self-tests.
    routes_cpuid: bool = False  # CPUID at CPL3 reaches CpuClient.on_cpuid
    routes_rdtsc: bool = False  # RDTSC can reach the client (the machine's virtual TSC)
    expected: bool = False  # the machine is supposed to have KVM: REQUIRE_KVM_ENV, or the device exists
    xmm_state_ok: bool = True  # the backend's self-test set and read XMM registers of the guest
    native_la57: bool = False  # CPUID runs natively at CPL3 and the host offers LA57 (5-level paging)
    counts_instructions: bool = False  # runs can be bounded by an instruction count


@dataclass(frozen=True)
class RunNeeds:
    """What a run needs from the CPU beyond executing instructions."""

    tdx_cpuid_in_boot_services: bool = False  # the binary reads CPUID leaf 0x21 before ExitBootServices
    instruction_budget: bool = False  # the run is bounded by an instruction count
    virtual_tsc: bool = False  # RDTSC must read the virtual clock (MachineConfig.virtual_tsc: loaders with timeouts)
    xmm_state: bool = True  # XMM registers are saved and restored (EfiMachine does around StartImage: every run)
    four_level_paging: bool = True  # the binary must not see LA57 (Linux's stub would switch to 5-level paging)


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "kvm" | "unicorn": what the report records as the backend that ran
    factory: BackendFactory
    why: str  # one line for the report
    fidelity: str = ""  # a known difference from unicorn for this run, empty when there is none
    reason: str = "requested"  # machine-readable `why` for --json: one of CHOICE_REASONS


# Codes for BackendChoice.reason (docs/JSON.md, boot's `cpu.reason`): what decided the backend.
CHOICE_REASONS = (
    "requested",  # --cpu unicorn or --cpu kvm
    "kvm-available",  # auto: KVM is usable and covers the run's needs
    "kvm-unavailable",  # auto: no usable KVM
    "needs-instruction-count",  # auto: the run is bounded by instructions, KVM cannot count them
    "needs-tdx-cpuid",  # auto: CPUID leaf 0x21 in boot services, KVM cannot route CPUID at CPL3
    "needs-virtual-tsc",  # auto: RDTSC must read the virtual clock, KVM cannot make it fault
    "needs-xmm-state",  # auto: KVM's backend cannot set the guest's XMM registers
    "host-la57",  # auto: native CPUID at CPL3 would show LA57 to the stub
    "firmware-exec",  # edk2's own TDVF from the reset vector, which only unicorn runs
)


# ================================================================================================ detection
def kvm_kind(sys_module: Path = Path("/sys/module")) -> str:
    """kvm-pvm, hardware (kvm_intel/kvm_amd) or unknown, from the loaded modules."""
    if (sys_module / "kvm_pvm").exists():
        return "kvm-pvm"
    if (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists():
        return "hardware"
    return "unknown"


def kvm_expected(device: str = KVM_DEVICE) -> bool:
    """Should this machine offer a working KVM? Then its absence or failure is a fault, not a fallback. Yes where
    REQUIRE_KVM_ENV is 1 or the device exists (a device that fails is broken, not absent)."""
    return os.environ.get(REQUIRE_KVM_ENV) == "1" or os.path.exists(device)


def detect_kvm(device: str = KVM_DEVICE) -> KvmInfo:
    """Probe /dev/kvm by making the backend's VM (tens of ms): usable, what kind, and the capabilities the backend
    declares on this host (CpuBackend: routes_cpuid, routes_rdtsc, xmm_state_ok, counts_instructions)."""
    expected = kvm_expected(device)
    if not os.path.exists(device):
        return KvmInfo(False, "none", f"no {device}", expected=expected)
    kind = kvm_kind()
    from lazyaccept.cpu.kvm.backend import KvmBackend
    from lazyaccept.cpu.kvm.ioctl import KvmError

    try:
        backend = KvmBackend(_ProbeClient(), device=device)
    except (KvmError, OSError) as exc:
        return KvmInfo(False, kind, f"{device} is not usable: {exc}", expected=expected)
    try:
        routed = backend.routes_cpuid
        backend.route_io(virtual_tsc=True)  # routes_rdtsc is known once it has been tried
        rdtsc = backend.routes_rdtsc
        tsc = "RDTSC can be routed" if rdtsc else "RDTSC native"
        if not rdtsc and backend.rdtsc_problem:
            tsc += f" ({backend.rdtsc_problem})"
        xmm_ok = backend.xmm_state_ok
        xmm = f"XMM via {backend.xmm_interface}" if xmm_ok else backend.xmm_state_problem
    finally:
        backend.close()
    cpl0 = "CPL0 emulated, EFI code runs at CPL3" if kind == "kvm-pvm" else "EFI code runs at CPL3"
    la57 = not routed and host_has_la57()
    cpuid = "CPUID routed to the firmware" if routed else "CPUID native at CPL3" + (", host LA57" if la57 else "")
    detail = f"{device}: {kind} ({cpl0}; {cpuid}; {tsc}; {xmm})"
    return KvmInfo(
        True, kind, detail, routed, rdtsc, expected, xmm_ok, la57, counts_instructions=backend.counts_instructions
    )


def host_has_la57(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Does native CPUID (leaf 7 ECX bit 16) show LA57 here? The host kernel lists it among the flags."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return "la57" in line.split(":", 1)[-1].split()
    return False


class _ProbeClient:
    """A client for a backend that never runs firmware code."""

    def on_service(self, index: int) -> None:
        return None

    def on_unmapped(self, gpa: int, size: int, access: str) -> bool:
        return False

    def on_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
        return None

    def on_tdcall(self) -> None:
        return None

    def on_block_outside(self, rip: int) -> bool:
        return True

    def on_rdtsc(self) -> int:
        return 0

    def on_port_in(self, port: int, size: int) -> int:
        return 0

    def on_port_out(self, port: int, size: int, value: int) -> None:
        return None


# ================================================================================================ choice
def unicorn_factory(client: CpuClient) -> CpuBackend:
    from lazyaccept.cpu.unicorn.backend import UnicornBackend

    return UnicornBackend(client)


def kvm_factory(client: CpuClient) -> CpuBackend:
    from lazyaccept.cpu.kvm.backend import KvmBackend

    return KvmBackend(client)


RDTSC_LIMIT = "the run needs a virtual TSC and this KVM cannot make RDTSC fault"
TDX_CPUID_LIMIT = "the binary reads CPUID leaf 0x21 while boot services run, and this KVM cannot route CPUID at CPL3"
XMM_LIMIT = "the firmware saves and restores XMM registers and this KVM's backend cannot set them"
LA57_LIMIT = (
    "CPUID runs natively at CPL3 and this host offers LA57: Linux's EFI stub would switch to 5-level paging "
    "(libstub x86-5lvl.c), which the backend's own page tables do not allow"
)


def choose_backend(requested: str, needs: RunNeeds = RunNeeds(), kvm: KvmInfo | None = None) -> BackendChoice:
    """The backend for a run. `kvm` is detected when not given (only when KVM is in question). Unicorn declares
    every capability a run can need; KVM is taken when the capabilities it declared here cover the run's needs."""
    if requested not in CPU_CHOICES:
        raise ConfigError(f"--cpu must be one of {', '.join(CPU_CHOICES)}, got '{requested}'")
    if requested == "unicorn":
        return BackendChoice("unicorn", unicorn_factory, "cpu: unicorn (requested)")
    info = kvm if kvm is not None else detect_kvm()
    count_lost = needs.instruction_budget and not info.counts_instructions
    cpuid_lost = needs.tdx_cpuid_in_boot_services and not info.routes_cpuid
    tsc_lost = needs.virtual_tsc and not info.routes_rdtsc
    xmm_lost = needs.xmm_state and not info.xmm_state_ok
    la57_seen = needs.four_level_paging and info.native_la57
    if requested == "kvm":
        if not info.usable:
            raise ConfigError(f"--cpu kvm: {info.detail}")
        if count_lost:
            raise ConfigError("--cpu kvm: KVM cannot bound a run by instruction count; use a time budget")
        limits = (
            (TDX_CPUID_LIMIT, cpuid_lost), (RDTSC_LIMIT, tsc_lost), (XMM_LIMIT, xmm_lost), (LA57_LIMIT, la57_seen)
        )
        lost = [text for text, hit in limits if hit]
        fidelity = "; ".join(f"fidelity limit: {text}" for text in lost)
        return BackendChoice("kvm", kvm_factory, f"cpu: kvm (requested; {info.detail})", fidelity)
    if not info.usable:
        why = f"cpu: unicorn (auto: {info.detail})"
        return BackendChoice("unicorn", unicorn_factory, why, reason="kvm-unavailable")
    if count_lost:
        return BackendChoice(
            "unicorn", unicorn_factory, "cpu: unicorn (auto: the run is bounded by instructions, KVM cannot count)",
            reason="needs-instruction-count",
        )  # fmt: skip
    for text, hit, reason in (
        (TDX_CPUID_LIMIT, cpuid_lost, "needs-tdx-cpuid"), (RDTSC_LIMIT, tsc_lost, "needs-virtual-tsc"),
        (XMM_LIMIT, xmm_lost, "needs-xmm-state"), (LA57_LIMIT, la57_seen, "host-la57"),
    ):  # fmt: skip
        if hit:
            return BackendChoice("unicorn", unicorn_factory, f"cpu: unicorn (auto: {text})", reason=reason)
    return BackendChoice("kvm", kvm_factory, f"cpu: kvm (auto; {info.detail})", reason="kvm-available")


# ============================================================================================ the firmware's memory map
def unaccepted_descriptors(dxe: DxeCore) -> list[tuple[int, int]]:
    """The EfiUnacceptedMemoryType ranges GetMemoryMap reports now: GCD runs merged as CoreGetMemoryMap merges
    them (equal capabilities and attributes), read without calling a boot service."""
    from lazyaccept.firmware.dxe.gcd import GcdType

    out: list[list] = []
    for start, end, entry in dxe.gcd.runs():
        if entry.gcd_type != GcdType.EfiGcdMemoryTypeUnaccepted:
            continue
        key = (entry.capabilities, entry.attributes)
        if out and out[-1][1] == start and out[-1][2] == key:
            out[-1][1] = end
        else:
            out.append([start, end, key])
    return [(s, e) for s, e, _ in out]


def run_needs(machine_config: object, *, max_instructions: int = 0) -> RunNeeds:
    """What a run with this MachineConfig needs from the CPU (fields read if present)."""
    return RunNeeds(
        instruction_budget=bool(max_instructions or getattr(machine_config, "max_instructions", 0)),
        virtual_tsc=bool(getattr(machine_config, "virtual_tsc", False)),
    )


def prepare_machine(machine: EfiMachine, cpl0_after_exit: Callable[[], bool] | None = None) -> list[str]:
    """Hooks the chosen backend needs in the firmware; call once, right after EfiMachine(...). Returns the list
    in which the run's CPU notes (for the report) appear.

    Port I/O and RDTSC were routed by EfiMachine (MachineConfig.port_io, virtual_tsc: CpuBackend.route_io); a
    virtual TSC the backend could not route is noted. When CPUID is not routed, the backend can enter CPL0 and
    `cpl0_after_exit()` says so at ExitBootServices (the payload accepts memory itself and checks leaf 0x21
    first: the caller knows its payload), the rest runs at CPL0."""
    notes: list[str] = []
    backend = machine.backend
    if machine.config.virtual_tsc and not backend.routes_rdtsc:
        notes.append(f"{backend.name}: fidelity limit: {RDTSC_LIMIT}: RDTSC reads the host's TSC")
    if backend.routes_cpuid or not backend.enters_supervisor or cpl0_after_exit is None:
        return notes

    def at_exit_boot_services() -> None:
        if cpl0_after_exit():
            backend.enter_supervisor()
            notes.append(
                f"{backend.name}: the stub accepts memory itself after ExitBootServices and checks CPUID leaf 0x21 "
                "first: its last steps ran at CPL0, where KVM answers CPUID"
            )

    machine.on_after_exit.append(at_exit_boot_services)
    return notes
