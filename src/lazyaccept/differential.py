"""The Python firmware held to the real one: the same TD, up-front policy (below-4g) and payload (QEMU direct boot
of a kernel's EFI stub with an initrd) booted once by the Python firmware with the image's edk2 profile and once by
edk2's own TDVF from the reset vector, then compared field by field (issue 15, "Differential tests").

What the profile must know is compared exactly: SEC's accepted ranges and its accept TDCALLs per vCPU, what was
accepted after SEC before the kernel, the unaccepted and conventional memory the image's fixed layout decides
(below the firmware's top-down pool), the kernel's address, the initrd's size, the unaccepted table's bytes and
the handoff verdict. What a profile cannot know, because it comes from the DXE drivers the Python firmware does not
load (their images, pools and runtime allocations, and so where top-down allocations land), is compared within a
bound stated in BOUNDS with its reason. Every field is a FieldDiff; a run passes when each is equal or within its
bound.

An image with Secure Boot on (the IntelTdxX64 image with Microsoft's keys) refuses the unsigned kernel, so for it
the real side boots as QEMU 10 does with -shim: the Microsoft-signed shim from fw_cfg, which is to verify and start
the kernel Debian signed. The Python side boots that same signed kernel by QEMU direct boot without shim (it
models neither Secure Boot nor shim's loader). When one side does not reach the kernel (shim 16.1 refuses Debian's
kernels, which carry no .sbat section), only what precedes the payload is compared and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import run_boot
from lazyaccept.boot_report import BootReport, BootScenario
from lazyaccept.errors import InputError
from lazyaccept.firmware.profiles import detect
from lazyaccept.guest.acpi_check import AcpiView, acpi_differences
from lazyaccept.guest.handoff_check import side_effect_free_reader
from lazyaccept.rangemap import intersect_ranges, minus_ranges
from lazyaccept.records import Actor
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.spec.linux_efi import UNACCEPTED_TABLE_HEADER
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, KiB, MiB, human_size
from lazyaccept.vmm.tdvf import load_firmware

PYTHON, REAL = "python", "real"
KERNEL_ENTRY = "kernel-entry"
# The accept actors of SEC: the Python firmware's role name, the real firmware's module (" vCPU n" with -smp > 1).
SEC_ACTORS = {PYTHON: (Actor.SEC.value,), REAL: ("SecMain",)}
FIRMWARE_REGION_TYPES = (
    M.EfiBootServicesCode,
    M.EfiBootServicesData,
    M.EfiRuntimeServicesCode,
    M.EfiRuntimeServicesData,
    M.EfiACPIReclaimMemory,
    M.EfiACPIMemoryNVS,
    M.EfiReservedMemoryType,
    M.EfiLoaderCode,
    M.EfiLoaderData,
    M.EfiConventionalMemory,
)
DEFAULT_INITRD_SIZE = 16 * MiB
ACPI_NOT_MODELLED = ("CCEL",)  # TdTcg2Dxe's CC event log table: the Python firmware's measurement keeps no log
MMCONFIG = (0xE0000000, 0xF0000000)  # Q35's PCIe MMCONFIG (PcdPciExpressBaseAddress, 256 MiB)


@dataclass(frozen=True)
class Bound:
    """How far a field may differ, in bytes, and why the Python profile cannot know it exactly."""

    max_bytes: int
    reason: str


# The top-down pool is the RAM between the lowest allocation made from the top of low memory (in either map) and
# the end of low memory: DXE's driver images, pools and bins, the stub's image, initrd and tables.
_DRIVERS = "the real DXE phase loads ~90 driver images and their pools; the Python firmware models no driver"
BOUNDS: dict[str, Bound] = {
    "accepted_after_sec.reaccepted": Bound(8 * MiB, "the real firmware's DMA buffers (fw_cfg, IoMmuDxe) are "
                                       "converted to shared and back, then accepted again; the Python firmware "
                                       "models no shared buffers"),
    f"pool.{M.EfiBootServicesCode.name}": Bound(8 * MiB, _DRIVERS + " (their code)"),
    f"pool.{M.EfiBootServicesData.name}": Bound(32 * MiB, _DRIVERS + " (their pools, page tables, HOB copy)"),
    # With no runtime driver in it, the Python firmware's free runtime code bin merges with the free memory beside
    # it and so is conventional (Page.c CoreGetMemoryMap, edk2-stable202502: a free entry takes its bin's type only
    # when it lies wholly in the bin); the real drivers' images fill part of it and the rest is typed.
    f"pool.{M.EfiRuntimeServicesCode.name}": Bound(2 * MiB, "runtime drivers' images in and beyond the bin"),
    f"pool.{M.EfiRuntimeServicesData.name}": Bound(4 * MiB, "runtime drivers' data beyond the bin (variables)"),
    # Both install QEMU's tables through AcpiTableDxe's model (a page each, RSDPs and RSDT/XSDT pages); the real
    # firmware adds TdTcg2Dxe's CCEL table, and its longer memory map takes the stub's LINUX_EFI_BOOT_MEMMAP copy
    # (an EfiACPIReclaimMemory pool) a page further.
    f"pool.{M.EfiACPIReclaimMemory.name}": Bound(16 * KiB, "TdTcg2Dxe's CCEL table; the stub's copy of a longer "
                                                 "memory map"),
    f"pool.{M.EfiACPIMemoryNVS.name}": Bound(1 * MiB, "ACPI NVS beyond the bin (S3, the CC event log)"),
    f"pool.{M.EfiLoaderCode.name}": Bound(0, "the kernel image LoadImage copies: its size is the file's"),
    f"pool.{M.EfiLoaderData.name}": Bound(1 * MiB, "the stub's pools (boot_params, cmdline, tables)"),
    f"pool.{M.EfiConventionalMemory.name}": Bound(64 * MiB, "what the firmware's own regions leave free"),
    "pool.start": Bound(64 * MiB, "the firmware's own regions decide where the first top-down allocation lands"),
    "initrd.address": Bound(64 * MiB, "top-down below the firmware's own regions (pool.start's bound)"),
    "unaccepted_table.address": Bound(64 * MiB, "a stub pool allocation inside the firmware's pool region"),
}


@dataclass
class FieldDiff:
    name: str
    python: str
    real: str
    equal: bool
    bound: Bound | None = None
    delta: int | None = None  # |python - real| in bytes, for a bounded field

    @property
    def ok(self) -> bool:
        if self.equal:
            return True
        return self.bound is not None and self.delta is not None and self.delta <= self.bound.max_bytes

    @property
    def verdict(self) -> str:
        if self.equal:
            return "equal"
        if self.bound is None:
            return "DIFFERENT"
        size = human_size(self.delta) if self.delta is not None else "?"
        return f"{'within' if self.ok else 'OUTSIDE'} bound ({size} of {human_size(self.bound.max_bytes)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.name,
            "python": self.python,
            "real": self.real,
            "equal": self.equal,
            "ok": self.ok,
            "delta_bytes": self.delta,
            "bound_bytes": self.bound.max_bytes if self.bound else None,
            "bound_reason": self.bound.reason if self.bound else None,
        }


@dataclass
class Differential:
    ram: int
    vcpus: int
    edk2_profile: str
    fields: list[FieldDiff] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    kernel: str | None = None  # None: Debian's unsigned 6.12 cloud kernel
    shim: str | None = None  # the real side's -shim, if any
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.fields)

    def differences(self) -> list[FieldDiff]:
        return [f for f in self.fields if not f.equal]

    def get(self, name: str) -> FieldDiff:
        return next(f for f in self.fields if f.name == name)


@dataclass(frozen=True)
class Facts:
    """What one boot is compared on, read from its report and the TD it left."""

    outcome: str
    sec_accepted: list[tuple[int, int]]
    sec_tdcalls: list[int]  # per vCPU
    later_accepted: list[tuple[int, int]]  # by the firmware and the stub after SEC (not the VMM, not Linux)
    memory_map: list[MemoryDescriptor]
    low_ram_end: int
    kernel: int | None  # the physical address of the kernel's _text (BootReport.kernel_entry)
    initrd: tuple[int, int]  # boot_params ramdisk_image, ramdisk_size
    table_address: int | None
    table_bytes: bytes
    handoff_ok: bool
    handoff_problems: list[str]
    lost_bytes: int
    reason: str = ""  # the report's reason for its outcome
    acpi: AcpiView | None = None


def scenarios(ram: int, vcpus: int, image: str | None, edk2_profile: str | None, initrd_size: int, timeout_s: float,
              kernel: str | None = None, shim: str | None = None) -> tuple[BootScenario, BootScenario]:
    # os_ready_bytes=0: the comparison ends at the handoff (the Linux model after it is the same code for both).
    base = BootScenario(ram=ram, smp=vcpus, firmware=image, upfront="below-4g", initrd_size=initrd_size,
                        os_ready_bytes=0, timeout_s=timeout_s, log_calls=False, kernel=kernel)
    return replace(base, edk2_profile=edk2_profile), replace(base, firmware_exec=True, shim=shim)


def payload(image: str | None, kernel: str | None, shim: str | None, *, signed: bool | None = None,
            store: BinaryStore | None = None) -> tuple[str | None, str | None, list[str]]:
    """(kernel, shim, notes) of a differential run. signed=None: Debian's signed shim and kernel when the image has
    Secure Boot on and neither was named (an unsigned kernel would be refused), else what was named."""
    secure_boot = detect(load_firmware(image)).profile.secure_boot
    if signed is None:
        signed = secure_boot and kernel is None and shim is None
    notes = []
    if signed:
        store = store or BinaryStore()
        kernel = kernel or str(store.linux_signed_vmlinuz())
        shim = shim or str(store.shim_signed_efi())
        notes.append("the real side boots through shim (QEMU 10's -shim): Secure Boot checks Debian's "
                     "Microsoft-signed shim against db, shim checks the Debian-signed kernel; the Python side boots "
                     "that kernel directly")
    elif secure_boot and shim is None:
        notes.append("WARNING: this image has Secure Boot on and no shim is given: the real firmware boots only what "
                     "its db vouches for and refuses this kernel, which the Python firmware (no Secure Boot "
                     "modelled) boots")
    return kernel, shim, notes


def run_differential(
    ram: int = 4 * GiB,
    vcpus: int = 1,
    image: str | None = None,
    edk2_profile: str | None = None,
    initrd_size: int = DEFAULT_INITRD_SIZE,
    timeout_s: float = 300.0,
    kernel: str | None = None,
    shim: str | None = None,
    signed: bool | None = None,
) -> Differential:
    """Boot both firmwares on the same TD and payload and compare them. The Python firmware's profile is the
    image's (or `edk2_profile`); the real firmware is the image itself, started with `shim` if given (see
    payload() for the signed pair an image with Secure Boot gets by default)."""
    kernel, shim, notes = payload(image, kernel, shim, signed=signed)
    py_sc, real_sc = scenarios(ram, vcpus, image, edk2_profile, initrd_size, timeout_s, kernel, shim)
    py = run_boot(py_sc)
    real = run_boot(real_sc)
    result = compare(facts(py, PYTHON), facts(real, REAL))
    result.ram, result.vcpus, result.edk2_profile = ram, vcpus, py.edk2_profile
    result.wall_s = {PYTHON: round(py.wall_s, 2), REAL: round(real.wall_s, 2)}
    result.kernel, result.shim, result.notes = kernel, shim, notes + result.notes
    return result


def facts(rep: BootReport, side: str) -> Facts:
    td = rep.td
    if td is None:
        raise InputError(f"the {side} firmware's boot left no TD to compare ({rep.outcome}: {rep.reason})")
    tdx = td.tdx
    sec_actors = SEC_ACTORS[side]

    def is_sec(actor: str) -> bool:
        return actor.split(" vCPU ")[0] in sec_actors

    # What SEC accepted: its pages at the handoff and those the firmware converted to shared since (DMA buffers).
    runs = [(s, e, p.actor) for s, e, p in tdx.pages.runs() if p.state == PageState.ACCEPTED]
    sec = _merge((s, e) for s, e, actor in runs + tdx.removed_accepted if is_sec(actor))
    later = _merge((s, e) for s, e, actor in runs if not is_sec(actor) and actor != Actor.VMM and
                   not actor.startswith("linux-"))
    tdcalls = [0] * td.config.vcpus
    for (actor, vcpu), n in tdx.accept_tdcalls.items():
        if is_sec(actor):
            tdcalls[vcpu] += n
    bp = rep.boot_params
    table = rep.unaccepted_table
    table_bytes = b""
    if table is not None:
        read = side_effect_free_reader(tdx)
        header = UNACCEPTED_TABLE_HEADER.size
        table_bytes = read(table["address"], header + table["bitmap_bytes"])
    return Facts(
        outcome=str(rep.outcome),
        sec_accepted=sec,
        sec_tdcalls=tdcalls,
        later_accepted=later,
        memory_map=list(rep.memory_map),
        low_ram_end=tdx.ram.run_at(0)[1],  # QEMU's RAM below 4 GiB starts at 0
        kernel=rep.kernel_entry,  # the physical _text on both firmwares
        initrd=(bp.ramdisk_image, bp.ramdisk_size) if bp else (0, 0),
        table_address=table["address"] if table else None,
        table_bytes=table_bytes,
        handoff_ok=rep.handoff_ok,
        handoff_problems=list(rep.handoff_problems),
        lost_bytes=rep.lost_ram_bytes,
        reason=rep.reason,
        acpi=rep.acpi_view,
    )


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def _append_merged(out: list[tuple[int, int]], s: int, e: int) -> None:
    if out and out[-1][1] == s:
        out[-1] = (out[-1][0], e)
    else:
        out.append((s, e))


def ranges_of(memory_map: Iterable[MemoryDescriptor], types: Iterable[int], lo: int = 0,
              hi: int = 1 << 64) -> list[tuple[int, int]]:
    """The merged ranges of descriptors of `types`, clipped to [lo, hi)."""
    wanted = set(types)
    out: list[tuple[int, int]] = []
    for d in sorted(memory_map, key=lambda d: d.physical_start):
        if d.type in wanted:
            s, e = max(d.physical_start, lo), min(d.end, hi)
            if s < e:
                _append_merged(out, s, e)
    return out


def pool_start(f: Facts) -> int:
    """The lowest top-down allocation: the start of the first non-conventional descriptor above the highest
    conventional block below the end of low RAM that follows the kernel."""
    above = f.kernel or 0
    conventional = [r for r in ranges_of(f.memory_map, [M.EfiConventionalMemory], above, f.low_ram_end)]
    return conventional[0][1] if conventional else f.low_ram_end


def compare(py: Facts, real: Facts) -> Differential:
    out = Differential(0, len(py.sec_tdcalls), "")
    add = out.fields.append

    def exact(name: str, a: Any, b: Any, show: Callable[[Any], str] = str) -> None:
        add(FieldDiff(name, show(a), show(b), a == b))

    def bounded(name: str, a: int, b: int, show: Callable[[int], str] = hex) -> None:
        add(FieldDiff(name, show(a), show(b), a == b, BOUNDS[name], abs(a - b)))

    exact("outcome", py.outcome, real.outcome)
    exact("sec.accepted_ranges", py.sec_accepted, real.sec_accepted, _show_ranges)
    exact("sec.accept_tdcalls_per_vcpu", py.sec_tdcalls, real.sec_tdcalls)
    # After SEC: memory no one had accepted (exact), and SEC's pages accepted again after a conversion to shared.
    exact("accepted_after_sec.new", minus_ranges(py.later_accepted, py.sec_accepted),
          minus_ranges(real.later_accepted, real.sec_accepted), _show_ranges)
    bounded("accepted_after_sec.reaccepted", _total(intersect_ranges(py.later_accepted, py.sec_accepted)),
            _total(intersect_ranges(real.later_accepted, real.sec_accepted)), human_size)
    exact("map.low_ram_end", py.low_ram_end, real.low_ram_end, hex)
    if not py.outcome == real.outcome == KERNEL_ENTRY:
        # No handoff on one side: its memory map, kernel, initrd and table do not exist to compare.
        for side, f in ((PYTHON, py), (REAL, real)):
            if f.outcome != KERNEL_ENTRY:
                out.notes.append(f"the {side} firmware did not reach the kernel ({f.outcome}: {f.reason}); only "
                                 "what precedes the payload is compared")
        return out
    unaccepted = [M.EfiUnacceptedMemoryType]
    exact("map.unaccepted", ranges_of(py.memory_map, unaccepted), ranges_of(real.memory_map, unaccepted),
          _show_ranges)
    # Below the top-down pool the image's layout, SEC, PEI's reservations and the kernel's placement decide.
    fixed_end = min(pool_start(py), pool_start(real))
    for t in FIRMWARE_REGION_TYPES:
        exact(f"fixed.{t.name}", ranges_of(py.memory_map, [t], 0, fixed_end),
              ranges_of(real.memory_map, [t], 0, fixed_end), _show_ranges)
    bounded("pool.start", pool_start(py), pool_start(real))
    for t in FIRMWARE_REGION_TYPES:
        a = _total(ranges_of(py.memory_map, [t], fixed_end, py.low_ram_end))
        b = _total(ranges_of(real.memory_map, [t], fixed_end, real.low_ram_end))
        if f"pool.{t.name}" in BOUNDS:
            bounded(f"pool.{t.name}", a, b, human_size)
        else:  # the reserved bin: no driver allocates from it, free in both and typed alike
            exact(f"pool.{t.name}", a, b, human_size)
    others = [t for t in range(M.EfiMaxMemoryType) if t not in FIRMWARE_REGION_TYPES and t != M.EfiUnacceptedMemoryType]
    exact("map.other_types", ranges_of(py.memory_map, others), ranges_of(real.memory_map, others), _show_ranges)
    above = [minus_ranges(ranges_of(f.memory_map, FIRMWARE_REGION_TYPES, f.low_ram_end), [MMCONFIG])
             for f in (py, real)]
    exact("map.above_low_ram", above[0], above[1], _show_ranges)
    # PlatformInitLib/Platform.c reserves it in every profile (firmware/profiles.py PCIE_MMCONFIG).
    mmconfig = [intersect_ranges(ranges_of(f.memory_map, [M.EfiReservedMemoryType]), [MMCONFIG]) for f in (py, real)]
    exact("map.mmconfig", mmconfig[0], mmconfig[1], _show_ranges)
    exact("kernel.address", py.kernel, real.kernel, lambda v: "none" if v is None else hex(v))
    exact("initrd.size", py.initrd[1], real.initrd[1], human_size)
    bounded("initrd.address", py.initrd[0], real.initrd[0])
    exact("unaccepted_table.bytes", py.table_bytes, real.table_bytes, _show_table)
    bounded("unaccepted_table.address", py.table_address or 0, real.table_address or 0)
    # What the OS acts on in the ACPI tables: the same tables listed, MADT structures (the wakeup structure and its
    # version included), FADT fields and \_S5. CCEL is TdTcg2Dxe's, which the Python firmware does not install.
    acpi = acpi_differences(py.acpi, real.acpi, ignore=ACPI_NOT_MODELLED)
    add(FieldDiff("acpi.tables", _show_acpi(py.acpi), _show_acpi(real.acpi), not acpi))
    if acpi:
        out.fields[-1] = replace(out.fields[-1], real=_show_acpi(real.acpi) + "; " + "; ".join(acpi))
    exact("handoff.verdict", (py.handoff_ok, py.handoff_problems, py.lost_bytes),
          (real.handoff_ok, real.handoff_problems, real.lost_bytes), _show_verdict)
    return out


def _total(ranges: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in ranges)


def _show_ranges(ranges: list[tuple[int, int]]) -> str:
    if not ranges:
        return "none"
    shown = ", ".join(f"[{s:#x}, {e:#x})" for s, e in ranges[:6])
    more = f" and {len(ranges) - 6} more" if len(ranges) > 6 else ""
    return f"{shown}{more} ({human_size(_total(ranges))})"


def _show_table(raw: bytes) -> str:
    if not raw:
        return "none"
    h = UNACCEPTED_TABLE_HEADER.unpack(raw[: UNACCEPTED_TABLE_HEADER.size])
    bits = sum(bin(b).count("1") for b in raw[UNACCEPTED_TABLE_HEADER.size :])
    return (f"v{h['version']} unit {human_size(h['unit_size'])} base {h['phys_base']:#x} size {h['size']} "
            f"bytes, {bits} bits set")


def _show_acpi(view: AcpiView | None) -> str:
    if view is None:
        return "none"
    madt = view.madt()
    return (" ".join(t.signature for t in view.tables) + f", MADT {len(madt)} structures"
            + (", wakeup" if view.wakeup() is not None else ""))


def _show_verdict(v: tuple[bool, list[str], int]) -> str:
    ok, problems, lost = v
    text = "PASS" if ok else "FAIL: " + "; ".join(problems)
    return text + (f", {human_size(lost)} lost" if lost else "")
