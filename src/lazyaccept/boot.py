"""A whole boot of a real EFI binary on a lazily accepted TD: VMM, SEC, DXE, the loader, the binary, and the
check of what it hands the kernel. `run_boot(BootScenario)` returns a BootReport that the CLI prints or writes
as JSON.
"""

from __future__ import annotations

import mmap
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lazyaccept import progress
from lazyaccept.binaries import BinaryStore
from lazyaccept.boot_report import MEMORY_LOST_HINT as MEMORY_LOST_HINT  # re-exported (the API's names)
from lazyaccept.boot_report import BootReport as BootReport
from lazyaccept.boot_report import BootScenario as BootScenario
from lazyaccept.boot_report import Outcome as Outcome
from lazyaccept.boot_report import Phase, check_handoff_and_boot_os, outcome_hint, record_tdx
from lazyaccept.cpu.machine import EfiMachine, MachineConfig
from lazyaccept.cpu.select import choose_backend, prepare_machine, run_needs
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.firmware.dxe.image import BOOT_MANAGER, boot_buffer_failed, image_pages
from lazyaccept.firmware.loaders.direct_boot import (
    DirectBootConfig,
    DirectBootResult,
    InitrdSource,
    QemuDirectBoot,
)
from lazyaccept.firmware.loaders.services import MachineLoaderServices
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.profiles import Edk2Profile, ProfileChoice, resolve
from lazyaccept.firmware.sec import parse_policy, run_sec, verify_against_truth
from lazyaccept.guest import uki
from lazyaccept.guest.handoff import Handoff
from lazyaccept.guest.handoff_check import check_stub_handoff
from lazyaccept.guest.uki import UkiImage
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.linux_boot import has_setup_header, read_setup_header
from lazyaccept.spec.pe_signing import is_signed
from lazyaccept.tdx.module import TdTerminated
from lazyaccept.units import PAGE_4K, human_size
from lazyaccept.vmm.td import HobConvention, TdConfig, build_td
from lazyaccept.vmm.tdvf import load_firmware

# What the stub prints, and why, when the firmware cannot give it what it needs (libstub's messages).
STUB_EXPLANATIONS = {
    "Failed to load initrd": "the stub's AllocatePages(MaxAddress) for the initrd found no accepted memory large "
    "enough; it exits to the firmware without retrying",
    "Failed to decompress kernel": "efi_random_alloc found no 2 MiB aligned EfiConventionalMemory slot for the "
    "decompressed kernel (max(output_len, kernel_total_size), about init_size) at or above 16 MiB; it never calls "
    "AllocatePages, so no allocator-level option can help: "
    "the up-front accept (or option 2's accept ahead) must leave that slot",
}
# efi_random_alloc found a slot, but AllocatePages(AllocateAddress, EfiLoaderCode) refused it: edk2 refuses an
# address range inside another type's memory-type bin (Page.c CoreInternalAllocatePages), and 2025.02's
# GetMemoryMap reports free bins sharing a free entry with their neighbours as EfiConventionalMemory.
KERNEL_SLOT_REFUSED = (
    "efi_random_alloc's AllocatePages({detail}) returned {status}: the kernel slot "
    "GetMemoryMap offered as EfiConventionalMemory overlaps a free memory-type bin of another type"
)


KERNEL_HEADER_BYTES = 64 << 10  # setup header and the setup code holding the version string (setup_sects <= 127)

def _read_initrd(sc: BootScenario) -> InitrdSource | None:
    if sc.initrd is not None:
        path = Path(sc.initrd)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read initrd {sc.initrd}: {exc.strerror or exc}") from None
        return InitrdSource(len(data), data, path.name)
    if sc.initrd_size:
        return InitrdSource(sc.initrd_size)
    return None


def run_boot(sc: BootScenario) -> BootReport:
    """QEMU direct boot of the kernel's EFI stub on a TD built and booted per the scenario."""
    check_combination(sc)
    _check_payload(sc)
    choice = resolve(sc.edk2_profile, load_firmware(sc.firmware))
    if sc.firmware_exec:
        from lazyaccept.tdvf_boot import run_tdvf_boot

        report = run_tdvf_boot(sc)
    else:
        report = _run_python_firmware(sc, choice)
    report.edk2_profile, report.edk2_profile_why = choice.profile.name, choice.why
    if not report.hint:
        report.hint = outcome_hint(report)
    if not sc.firmware_exec and choice.profile.secure_boot and not is_signed(_first_image(sc)):
        report.edk2_profile_why += (f"; WARNING: {choice.profile.name}'s image has Secure Boot on, which the Python "
                                    "firmware does not model: it boots this unsigned image, which the real one refuses")
    return report


def check_combination(sc: BootScenario) -> None:
    """ConfigError for a combination of settings no boot runs (the flags contradict each other), before anything
    runs; `lazyaccept matrix` skips such a cell with this message."""
    if sc.firmware_exec:
        chain = [flag for flag, on in (("--disk", sc.disk is not None), ("--disk-from", sc.disk_from is not None),
                                       ("--systemd-boot", sc.systemd_boot), ("--uki", sc.uki), ("--grub", sc.grub))
                 if on]
        if chain:
            raise ConfigError(f"{chain[0]} with --firmware-exec: edk2's own TDVF boots here only by QEMU's direct boot "
                              "(-kernel) and -shim; the other chains run on the Python firmware (drop --firmware-exec)")
    if sc.uki and (sc.efi_app or sc.grub or sc.firmware_exec or sc.stream_initrd or sc.disk_from):
        raise ConfigError("--uki builds the UKI from --kernel/--initrd/--append: not with --efi-app, --grub, "
                          "--disk-from, --firmware-exec or --stream-initrd (with --systemd-boot it is a Type #2 entry)")
    if sc.disk is not None and (sc.systemd_boot or sc.shim is not None or sc.uki):
        raise ConfigError("--disk boots the image's own EFI/BOOT/BOOTX64.EFI (lazyaccept's GRUB when it has none): "
                          "not with --systemd-boot, --shim or --uki")
    if sc.shim is not None and not sc.firmware_exec and (not sc.grub or sc.systemd_boot):
        raise ConfigError("--shim needs --firmware-exec (QEMU 10's -shim) or --grub (shim as the ESP's BOOTX64.EFI, "
                          "starting GRUB beside it; the Python firmware has Secure Boot off)")
    if sc.run_kernel:
        if sc.firmware_exec:
            raise ConfigError("--run-kernel with --firmware-exec: run edk2's own TDVF with `lazyaccept tdvf "
                              "--kernel VMLINUZ --run-kernel`")
        from lazyaccept.kernel_run import check_scenario

        check_scenario(sc.smp)
    if sc.firmware_exec:
        from lazyaccept.tdvf_boot import check_scenario as check_tdvf_scenario

        check_tdvf_scenario(sc)


PAYLOAD_HEAD_BYTES = 64 << 10  # the setup header, and the PE header e_lfanew points at in any real image


def _check_payload(sc: BootScenario) -> None:
    """A file given as the EFI application or the kernel that is none is bad input, named before anything runs. An
    unreadable file is left to the boot's own read, which names it."""
    from lazyaccept.spec.linux_boot import SETUP_HEADER_MAGIC, field_offset
    from lazyaccept.spec.pe import is_pe

    def head(path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read(PAYLOAD_HEAD_BYTES)
        except OSError:
            return None

    if sc.efi_app is not None:
        data = head(sc.efi_app)
        if data is not None and not is_pe(data):
            raise InputError(f"--efi-app {sc.efi_app}: not an EFI application (no PE image: no MZ header pointing at "
                             "a PE signature)")
    if sc.kernel is not None and not (sc.disk_boot and (sc.disk_from or sc.disk)):
        data = head(sc.kernel)
        magic = field_offset("header")
        if data is not None and data[magic : magic + 4] != SETUP_HEADER_MAGIC:
            hint = ("; it is a PE image without a Linux setup header: an EFI application? run it with --efi-app"
                    if is_pe(data) else "")
            raise InputError(f"--kernel {sc.kernel}: not a Linux kernel (no x86 boot protocol setup header, 'HdrS' at "
                             f"{magic:#x}){hint}")
    if sc.disk is not None:  # a damaged image is named before the TD is built
        from lazyaccept.vmm.disk_image import DiskImage

        DiskImage(sc.disk).close()


def _first_image(sc: BootScenario) -> Path | bytes:
    """The image the firmware itself loads (and Secure Boot would check): a disk image's own EFI/BOOT/BOOTX64.EFI,
    GRUB, the EFI application or the kernel."""
    if sc.disk is not None:
        from lazyaccept.vmm.disk_image import DiskImage

        image = DiskImage(sc.disk)
        try:
            own = image.removable_loader()
        finally:
            image.close()
        if own is not None:
            return own
    if sc.systemd_boot:
        return BinaryStore().systemd_boot_efi()
    if sc.grub:
        return Path(sc.grub_efi) if sc.grub_efi else BinaryStore().grub_efi()
    if sc.efi_app is not None:
        return Path(sc.efi_app)
    if sc.uki:
        return BinaryStore().systemd_stub()  # the UKI is the stub with sections appended: signed or not as it is
    return Path(sc.kernel) if sc.kernel else BinaryStore().linux_vmlinuz()


def _run_python_firmware(sc: BootScenario, edk2: ProfileChoice) -> BootReport:
    t0 = time.perf_counter()
    if sc.initrd is not None and sc.initrd_size is not None:
        raise ConfigError("give --initrd FILE or --initrd-size SIZE, not both")
    if sc.efi_app is not None:
        kernel_path = Path(sc.efi_app)
    else:
        kernel_path = Path(sc.kernel) if sc.kernel else BinaryStore().linux_vmlinuz()
    try:
        kernel = b"" if sc.disk_boot and (sc.disk_from or sc.disk) else kernel_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {kernel_path}: {exc.strerror or exc}") from None
    initrd = None if sc.disk_boot or sc.uki else _read_initrd(sc)
    uki_image = _build_uki(sc, kernel_path) if sc.uki else None
    policy = parse_policy(sc.upfront)
    progress.phase("VMM build (TD, TD HOB)")
    td = build_td(
        TdConfig(
            sc.ram,
            sc.smp,
            firmware_path=sc.firmware,
            profile=sc.profile,
            hob_convention=HobConvention(sc.hob_convention),
        )
    )
    tdx = td.tdx
    phases = [Phase("VMM build", td.vmm_build_ns, tdx.accepted_by_actor.get("vmm", 0))]
    progress.phase("SEC (Python firmware)", tdx.clock_ns(0))
    try:
        sec = run_sec(td, policy, edk2)
    except TdTerminated as exc:  # e.g. a TD HOB declaring RAM the VMM does not back
        return _terminated_before_dxe(sc, td, phases, exc, t0)
    problems = verify_against_truth(td, sec)
    if problems:
        raise AssertionError("SEC's record disagrees with the TDX module: " + "; ".join(problems))
    phases.append(Phase("SEC (slowest vCPU)", sec.phase_ns, sec.sec_accepted_bytes))
    clock0 = tdx.clock_ns(0)
    accepted0 = sum(tdx.accepted_by_actor.values())

    def mark(name: str) -> None:
        nonlocal clock0, accepted0
        now, acc = tdx.clock_ns(0), sum(tdx.accepted_by_actor.values())
        phases.append(Phase(name, now - clock0, acc - accepted0))
        clock0, accepted0 = now, acc

    progress.phase("DXE core and platform protocols", tdx.clock_ns(0))
    try:
        dxe = start_dxe(td, sec, sc.dxe_policy())
    except TdTerminated as exc:  # PEI's permanent memory over a tail SEC left pending (edk2 before b15f98e68f)
        return _terminated_before_dxe(sc, td, phases, exc, t0, "PEI")
    config = MachineConfig(
        rng_seed=sc.rng_seed,
        log_calls=sc.log_calls,
        timeout_s=sc.timeout_s,
        cc_measurement=sc.cc_measurement,
        virtual_tsc=sc.disk_boot,
        port_io=sc.disk_boot,
        tcg2=sc.tcg2,
    )
    choice = choose_backend(sc.cpu, run_needs(config))
    machine = EfiMachine(tdx, dxe, config, backend_factory=choice.factory)
    cpu_notes = prepare_machine(machine, stub_accepts_itself_after_exit(machine))  # filled during the run
    if choice.fidelity:
        cpu_notes.insert(0, choice.fidelity)

    def record_cpu(report: BootReport) -> BootReport:
        report.cpu, report.cpu_why, report.cpu_notes = choice.name, choice.why, cpu_notes
        report.cpu_reason = choice.reason
        return report

    def at_exit_boot_services() -> None:
        # The stub's own computation is modeled, not measured (the same on every CPU backend): decompressing
        # the kernel, init_size bytes of output at the profile's decompression rate. The kernel is the image
        # that called ExitBootServices (under GRUB it came from the disk).
        # (systemd-stub runs the kernel from .linux inside its own image: the UKI's header is not the kernel's)
        image = machine.running_image_header(KERNEL_HEADER_BYTES) if machine.frames and not sc.uki else kernel
        started_kernel[:] = [bytes(image[:KERNEL_HEADER_BYTES])]
        header = read_setup_header(image)
        init_size = header["init_size"] if header else 0
        tdx.charge(0, tdx.profile.bytes_ns(init_size, tdx.profile.decompress_bytes_per_s))
        mark("stub until ExitBootServices (decompression modeled)")
        progress.phase("stub after ExitBootServices", tdx.clock_ns(0))

    started_kernel: list[bytes] = []  # the image that called ExitBootServices (its header at least)
    machine.started_kernel = started_kernel  # type: ignore[attr-defined]
    machine.kernel_path = (  # type: ignore[attr-defined]
        None if sc.disk_boot and (sc.disk_from or sc.disk) else kernel_path
    )
    machine.on_after_exit.append(at_exit_boot_services)
    mark("DXE core and platform protocols")
    progress.phase("Boot Manager" if sc.disk_boot or sc.efi_app or sc.uki else "QEMU direct-boot loader",
                   tdx.clock_ns(0))
    if sc.disk_boot:
        report = _run_disk_chain(sc, td, machine, kernel_path, mark, phases, t0, edk2.profile, uki_image)
        if uki_image is not None:
            _report_uki(report, machine, uki_image[0], kernel)
        return record_cpu(report)
    loader = QemuDirectBoot(
        MachineLoaderServices(machine),
        DirectBootConfig(
            kernel, kernel_path.name, initrd, sc.cmdline, option2=sc.option2, stream_initrd=sc.stream_initrd,
            edk2_profile=edk2.profile,
        ),
    )
    original_start = machine.start_image

    def start_image(handle: int) -> StopReason:
        mark("Boot Manager (LoadImage)" if sc.efi_app or sc.uki else "QEMU direct-boot loader (blob copies, LoadImage)")
        progress.phase("EFI application" if sc.efi_app else "systemd-stub, then the kernel's EFI stub" if sc.uki
                       else "the kernel's EFI stub", td.tdx.clock_ns(0))
        return original_start(handle)

    machine.start_image = start_image  # type: ignore[method-assign]
    result: DirectBootResult | None = None
    stop: StopReason | None
    try:
        if uki_image is not None:
            result = _run_app(machine, uki_image[1], uki_image[0].path.name)
        else:
            result = loader.run() if sc.efi_app is None else _run_app(machine, kernel, kernel_path.name)
        stop = result.stop
    except TdTerminated as exc:
        stop = StopReason(StopKind.TERMINATED, str(exc.termination))
    if result is not None and result.failed:
        mark("Boot Manager (failed)" if sc.efi_app or sc.uki else "QEMU direct-boot loader (failed)")
    else:
        mark("stub after ExitBootServices" if dxe.exited else "stub")
    report = _report(sc, td, machine, stop, result, phases, edk2.profile, t0)
    if uki_image is not None:
        _report_uki(report, machine, uki_image[0], kernel)
        if machine.protocols.tcg2 is not None:  # systemd-stub measures its sections into PCR 11 through TCG2
            report.measurements += [
                dict(pcr=x.mr_index, sha256=x.digest, size=x.size) for x in machine.protocols.tcg2.extends
            ]
    report.wall_s = time.perf_counter() - t0
    return record_cpu(report)


class MappedFile:
    """A file on the generated ESP read from a map of it (the UKI: its name is gone, its initrd may be a hole)."""

    def __init__(self, data: mmap.mmap):
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length] + bytes(max(0, offset + length - len(self.data)))


def _build_uki(sc: BootScenario, kernel_path: Path) -> tuple[UkiImage, mmap.mmap]:
    """--uki: the UKI of the scenario's kernel, initrd and command line, written sparse to a temporary file and
    mapped (never read whole: a 1 GiB initrd stays a hole, or the page cache's)."""
    with tempfile.TemporaryDirectory(prefix="lazyaccept-uki-") as tmp:
        out = Path(tmp) / f"{kernel_path.name}.efi"
        parts = uki.payloads(kernel_path, initrd=sc.initrd, initrd_size=sc.initrd_size, cmdline=sc.cmdline)
        image = uki.build_uki(out, BinaryStore().systemd_stub(), parts)
        with open(out, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # outlives the file's name
    return image, data


def _report_uki(report: BootReport, machine: EfiMachine, image: UkiImage, kernel: bytes) -> None:
    """What the UKI was, and the allocations that loaded it: the buffer of the whole file (the Boot Manager's when
    it is the boot option, systemd-boot's under systemd-boot), the firmware's LoadImage of the whole image, then
    systemd-stub's and the kernel's EFI stub's own (their calls all come from the UKI's image, in this order)."""
    align = max(image.section_alignment, PAGE_4K)
    pages = image_pages(image.size_of_image, image.section_alignment)
    loaded = [img.name for img in machine.images.values() if img.pe.size_of_image == image.size_of_image]
    name = loaded[0] if loaded else image.path.name
    allocations: list[dict[str, Any]] = []
    load_status: str | None = "SUCCESS" if loaded else None
    for c in machine.calls:  # the UKI read whole into a buffer, then LoadImage(SourceBuffer) copies it again
        if len(c.args) < 2 or not (c.image == BOOT_MANAGER or "systemd-boot" in c.image):
            continue
        size = c.args[1] if c.name == "AllocatePool" else c.args[2] * PAGE_4K if c.name == "AllocatePages" else 0
        if size >= image.size:
            who, what = ("firmware", f"the Boot Manager's buffer of {image.path.name}: the file read whole "
                         "(AllocatePool EfiBootServicesData), the SourceBuffer of its LoadImage, freed after it") \
                if c.image == BOOT_MANAGER else ("systemd-boot", "the UKI file read whole, the SourceBuffer of its "
                                                 "LoadImage")  # fmt: skip
            allocations.append(dict(who=who, what=what, size_bytes=size, status=_status(c.status) or "SUCCESS"))
        if c.name == "LoadImage" and f"{image.size:#x} bytes" in c.detail:
            load_status = _status(c.status) or "SUCCESS"
    if load_status is None and report.reason.startswith("LoadImage of"):  # a run without its call log
        load_status = report.reason.rsplit("(", 1)[-1].rstrip(")")
    if not (allocations and allocations[-1]["status"] != "SUCCESS"):
        allocations.append(dict(
            who="firmware", what=f"LoadImage of the whole UKI (SizeOfImage {image.size_of_image:#x}, aligned to "
            f"{align:#x}): EfiLoaderCode, AllocateAnyPages", size_bytes=pages * PAGE_4K,
            status=load_status or "not reached",
        ))  # fmt: skip
    linux = image.section(".linux")
    kernel_pages = 0
    try:
        from lazyaccept.firmware.dxe.pe import parse_pe

        kernel_pages = image_pages(parse_pe(kernel).size_of_image, PAGE_4K)
    except InputError:
        pass
    # In call order: systemd-stub copies the initrd (below 4 GiB first), lays out .linux itself and jumps to the
    # kernel's EFI entry, whose stub then allocates the kernel's slot and reads the initrd through LoadFile2.
    in_stub, after_load_file2 = True, False
    for c in machine.calls:
        if c.image != name:
            continue
        if c.name == "HandleProtocol" and "LOAD_FILE2" in c.detail:
            after_load_file2 = True
        if c.name != "AllocatePages" or len(c.args) < 3:
            continue
        kind, memtype, n = c.args[0], c.args[1], c.args[2]
        if in_stub and memtype == 2 and n >= 16:
            where = "below 4 GiB" if kind == 1 and re.search(r"in 0xffffffff\b", c.detail) else "anywhere"
            who, what = "systemd-stub", f"the initrd's copy {where} (.initrd combined with any others)"
        elif in_stub and kind == 0 and memtype == 1 and n == kernel_pages:
            who, what = "systemd-stub", "the kernel's PE image (.linux), laid out by the stub's own PE loader"
            in_stub = False
        elif kind == 1 and memtype == 2 and after_load_file2:
            who, what = "linux EFI stub", "the initrd, read through systemd-stub's LoadFile2 (LINUX_EFI_INITRD_MEDIA)"
            after_load_file2 = False
        elif kind == 2 and memtype == 1:
            who, what = "linux EFI stub", "the decompressed kernel's slot (init_size, efi_random_alloc)"
        elif n >= 16:
            who, what = "systemd-stub" if in_stub else "linux EFI stub", f"AllocatePages({c.detail})"
        else:
            continue
        allocations.append(dict(who=who, what=what, size_bytes=n * PAGE_4K, status=_status(c.status) or "SUCCESS"))
    report.uki = dict(
        size_of_image_bytes=image.size_of_image,
        file_bytes=image.size,
        sections=[dict(name=s.name, virtual_address=s.virtual_address, virtual_size_bytes=s.virtual_size,
                       origin=s.origin) for s in image.sections[image.stub_sections :]],  # fmt: skip
        kernel_in_section_bytes=linux.virtual_size if linux else 0,
        allocations=allocations,
    )
    bad = next((a for a in allocations[::-1] if a["status"] not in ("SUCCESS", "not reached")), None)
    if bad is not None and report.outcome != Outcome.KERNEL_ENTRY:
        who = "the firmware" if bad["who"] == "firmware" else bad["who"]
        why = f"{who}'s allocation failed ({bad['status']}): {bad['what']}, {human_size(bad['size_bytes'])}"
        if bad["who"] == "firmware":
            why += (": the Boot Manager reads the UKI whole into a pool buffer, its initrd inside, and LoadImage "
                    "copies it into the image's pages while it holds that buffer, all before systemd-stub runs; only "
                    "the allocator option (1) accepts inside those allocations: option 2 acts in QEMU's direct-boot "
                    "loader, which a UKI does not go through, and option 3's AcceptMemory is called by no one here")
        if bad["who"] == "systemd-boot":  # (the Type #1 story of initrds read whole does not apply to a UKI)
            report.explanation = why + (": systemd-boot reads a Type #2 entry's UKI whole into pool memory and "
                                        "starts it with LoadImage from that buffer; when the pool allocation fails "
                                        "its xmalloc assertion halts the machine. It never asks for unaccepted "
                                        "memory: only an allocator that accepts on demand (option 1) helps")
        else:
            report.explanation = "; ".join(x for x in (why, report.explanation) if x)
    elif bad is not None:
        report.explanation = "; ".join(x for x in (
            f"{bad['who']}: {bad['what']} failed ({bad['status']}), then retried", report.explanation) if x)


def _run_disk_chain(sc: BootScenario, td, machine: EfiMachine, kernel_path: Path, mark, phases: list[Phase], t0: float,
                    edk2: Edk2Profile, uki_image: tuple[UkiImage, mmap.mmap] | None = None):
    """Boot Manager -> GRUB or systemd-boot from the disk -> the kernel's EFI stub, started by that loader."""
    from lazyaccept.firmware.loaders import grub as g
    from lazyaccept.vmm.disk import BytesSource, HostFile, sources_from_folder

    image = None
    own_loader: bytes | None = None  # boot --disk: the image's own EFI/BOOT/BOOTX64.EFI
    if sc.systemd_boot:
        loader, first = _systemd_boot_loader(sc, machine, kernel_path, uki_image), "systemd-boot"
    else:
        files: dict = {}
        if sc.disk is not None:
            from lazyaccept.vmm.disk_image import DiskImage

            image = DiskImage(sc.disk)
            own_loader = image.removable_loader()
        elif sc.disk_from is not None:
            files = sources_from_folder(Path(sc.disk_from))
        else:
            if sc.initrd is not None and not Path(sc.initrd).is_file():
                raise InputError(f"cannot read initrd {sc.initrd}")
            initrd = (HostFile(Path(sc.initrd)) if sc.initrd else g.initrd_source(sc.initrd_size) if sc.initrd_size
                      else None)
            files = g.synthetic_esp(HostFile(kernel_path), initrd, sc.cmdline, timeout=sc.grub_timeout,
                                    cfg=sc.grub_cfg)
        grub_path = Path(sc.grub_efi) if sc.grub_efi else BinaryStore().grub_efi()
        try:
            grub_efi = BytesSource(grub_path.read_bytes())
        except OSError as exc:
            raise InputError(f"cannot read {grub_path}: {exc.strerror or exc}") from None
        shim = None
        if sc.shim is not None:
            try:
                shim = BytesSource(Path(sc.shim).read_bytes())
            except OSError as exc:
                raise InputError(f"cannot read shim {sc.shim}: {exc.strerror or exc}") from None
        loader, first = g.GrubBoot(
            machine,
            g.GrubBootConfig(grub_efi, files, fat_bits=sc.fat_bits, keys=list(sc.keys), fast_paths=sc.grub_fast_paths,
                             shim=shim, image=image),
        ), "shim" if shim else _loader_name(own_loader) if own_loader is not None else "GRUB"
    # GRUB 2.12 upstream starts the stub with LoadImage/StartImage; Debian's build runs it with its own PE
    # loader (peimage), which the machine notices from the first service call made from the stub's code.
    started: list[bool] = []

    def grub_starts_stub(*_args: object) -> None:
        if not started:
            started.append(True)
            mark(f"{'GRUB' if sc.shim else first} until it starts the kernel's EFI stub")
            progress.phase(f"the kernel's EFI stub (started by {first})", td.tdx.clock_ns(0))

    def shim_starts_grub() -> None:
        if not grub_started:
            grub_started.append(True)
            mark("shim until it starts GRUB")
            progress.phase("GRUB (started by shim)", td.tdx.clock_ns(0))

    grub_started: list[bool] = []

    # Under shim the first image started after the Boot Manager's is GRUB; the stub is the one with a setup header.
    machine.on_start_image.append(lambda image: grub_starts_stub() if not sc.shim or has_setup_header(image.pe.data)
                                  else shim_starts_grub())
    machine.on_placed_image.append(lambda name, _base, _size: grub_starts_stub()
                                   if not sc.shim or name.startswith("linux EFI stub") else shim_starts_grub())
    original_start = machine.start_image

    def start_image(handle: int) -> StopReason:
        mark(f"Boot Manager (disk, LoadImage of {first})")
        progress.phase(first, td.tdx.clock_ns(0))
        return original_start(handle)

    machine.start_image = start_image  # type: ignore[method-assign]
    terminal = None
    if sc.interactive:
        from lazyaccept.firmware.drivers.terminal import HostTerminal

        terminal = HostTerminal()
        machine.protocols.console.terminal = terminal
    try:
        result = loader.run()
        stop = result.stop
    except TdTerminated as exc:
        result = None
        stop = StopReason(StopKind.TERMINATED, str(exc.termination))
    finally:
        if terminal is not None:
            terminal.close()
        if image is not None:
            image.close()
    if result is not None and result.failed:
        mark("Boot Manager (failed)")
    elif dxe_exited(machine):
        mark("stub after ExitBootServices")
    else:
        mark(first if len(phases) < 5 else f"stub, then {first} again")
    report = _report(sc, td, machine, stop, result, phases, edk2, t0)
    if sc.systemd_boot and result is not None and result.disk is not None and result.volume is not None:
        _report_systemd_boot(report, machine, result)
    elif result is not None and (result.image is not None or result.disk is not None and result.volume is not None):
        errors = g.grub_errors(report.console)
        report.grub = dict(
            image=_loader_name(own_loader if own_loader is not None else grub_path),
            **({"shim": _loader_name(Path(sc.shim))} if sc.shim else {}),
            esp=g.disk_summary(result),
            errors=errors,
            failed_allocations=g.failed_allocations(machine),
            measurement=" ".join(n for n, on in (("cc", sc.cc_measurement), ("tcg2", sc.tcg2)) if on) or "none",
        )
        if report.outcome in (Outcome.INPUT, Outcome.APP_EXITED, Outcome.STUB_EXITED) and errors:
            report.outcome = Outcome.LOADER_FAILED
            report.reason = "GRUB: " + " ".join(errors)
        elif own_loader is not None and not result.kernel_image and report.outcome in (Outcome.APP_EXITED,
                                                                                        Outcome.STUB_EXITED):
            # the disk's own loader (not GRUB: no 'error:' lines) stopped before it started a kernel: its last line
            said = [x.strip() for x in report.console.splitlines() if x.strip()]
            report.outcome = Outcome.LOADER_FAILED
            report.reason = f"{first} (the disk's EFI/BOOT/BOOTX64.EFI): {said[-1] if said else report.reason}"
        elif report.outcome == Outcome.INPUT:
            report.outcome = Outcome.WAITING_FOR_INPUT
        g.add_config_search(report, result)  # where GRUB looked for grub.cfg, and the fix when it found none
        if report.outcome == Outcome.LOADER_FAILED or report.outcome == Outcome.KERNEL_ENTRY and errors:
            why = g.explain_failure(machine, result.grub_handle)
            report.explanation = "; ".join(x for x in (why, report.explanation) if x)
    if machine.protocols.tcg2 is not None:
        report.measurements += [
            dict(pcr=x.mr_index, sha256=x.digest, size=x.size) for x in machine.protocols.tcg2.extends
        ]
    report.wall_s = time.perf_counter() - t0
    return report


def _loader_name(path: Path | bytes) -> str:
    """"grub2 2.14-4": the package and version a loader's SBAT records give, else its file name (a disk image's
    own loader: its path on the ESP)."""
    from lazyaccept.spec.pe_signing import sbat_product

    return sbat_product(path) or (path.name if isinstance(path, Path) else "EFI/BOOT/BOOTX64.EFI")


def _systemd_boot_loader(sc: BootScenario, machine: EfiMachine, kernel_path: Path,  # noqa: ANN202
                         uki_image: tuple[UkiImage, mmap.mmap] | None = None):
    from lazyaccept.firmware.loaders import systemd_boot as sb

    files = _systemd_boot_files(sc, kernel_path, uki_image)
    return sb.SystemdBoot(machine, sb.SystemdBootConfig(files, fat_bits=sc.fat_bits))


def write_disk_folder(sc: BootScenario, folder: Path, field: str = "--write-disk-dir") -> BootScenario:
    """`--write-disk-dir DIR` (`loader.write_disk_dir`, named by `field` in errors): the folder this run's chain boots
    from, written; the scenario then boots from it as `--disk-from DIR` does. GRUB's: the kernel, a sparse synthetic
    initrd and grub.cfg; systemd-boot's: the ESP its run lays out."""
    if sc.systemd_boot:
        return write_systemd_boot_dir(sc, folder, field)
    from lazyaccept.firmware.loaders.grub import write_disk_dir

    kernel = Path(sc.kernel) if sc.kernel else BinaryStore().linux_vmlinuz()
    try:
        write_disk_dir(folder, kernel, sc.initrd_size or 0, sc.cmdline, timeout=sc.grub_timeout)
    except OSError as exc:
        raise InputError(f"{field}: cannot write {str(folder)!r}: {exc.strerror or exc}") from None
    return replace(sc, grub=True, disk_from=str(folder))


def write_systemd_boot_dir(sc: BootScenario, folder: Path, field: str = "--write-disk-dir") -> BootScenario:
    """`--write-disk-dir DIR` with --systemd-boot: the ESP this run lays out (systemd-boot, loader.conf, the Type #1
    entry, kernel and initrd; with --uki the UKI as a Type #2 entry in EFI/Linux) written to DIR, sparse; the
    scenario then boots from it as `--disk-from DIR --systemd-boot` does."""
    from lazyaccept.vmm.disk import write_sources_to_folder

    kernel_path = Path(sc.kernel) if sc.kernel else BinaryStore().linux_vmlinuz()
    uki_image = _build_uki(sc, kernel_path) if sc.uki else None
    try:
        write_sources_to_folder(folder, _systemd_boot_files(sc, kernel_path, uki_image))
    except OSError as exc:
        raise InputError(f"{field}: cannot write {str(folder)!r}: {exc.strerror or exc}") from None
    finally:
        if uki_image is not None:
            uki_image[1].close()
    return replace(sc, uki=False, disk_from=str(folder))


def _systemd_boot_files(sc: BootScenario, kernel_path: Path, uki_image: tuple[UkiImage, mmap.mmap] | None) -> dict:
    """The ESP of a systemd-boot run: the Type #2 entry of --uki, the --disk-from folder, or bootctl's layout."""
    from lazyaccept.firmware.loaders import grub as g
    from lazyaccept.firmware.loaders import systemd_boot as sb
    from lazyaccept.vmm.disk import BytesSource, HostFile, sources_from_folder

    path = BinaryStore().systemd_boot_efi()
    try:
        efi = BytesSource(path.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if uki_image is not None:  # a Type #2 entry: the UKI in EFI/Linux, found without any entry file
        files = sb.systemd_boot_esp(HostFile(kernel_path), None, sc.cmdline, efi)
        files = {k: v for k, v in files.items() if not k.startswith("loader/entries") and k != sb.KERNEL_PATH}
        files["loader/loader.conf"] = BytesSource(b"timeout 0\n")
        files[f"EFI/Linux/{uki_image[0].path.name}"] = MappedFile(uki_image[1])
    elif sc.disk_from is not None:
        files = sb.esp_with_systemd_boot(sources_from_folder(Path(sc.disk_from)), efi)
    else:
        if sc.initrd is not None and not Path(sc.initrd).is_file():
            raise InputError(f"cannot read initrd {sc.initrd}")
        initrd = HostFile(Path(sc.initrd)) if sc.initrd else g.initrd_source(sc.initrd_size) if sc.initrd_size else None
        files = sb.systemd_boot_esp(HostFile(kernel_path), initrd, sc.cmdline, efi)
    return files


def _report_systemd_boot(report: BootReport, machine: EfiMachine, result) -> None:  # noqa: ANN001
    """The disk, the variables systemd-boot set, and which allocation failed, whose and how large."""
    from lazyaccept.firmware.loaders import grub as g
    from lazyaccept.firmware.loaders import systemd_boot as sb

    report.systemd_boot = dict(
        esp=g.esp_summary(result.disk, result.volume, result.devices),
        variables=sb.loader_variables(machine),
        failed_allocations=sb.failed_allocations(machine, result.grub_handle),
    )
    report.systemd_boot["esp"].pop("grub_cfg", None)
    if result.kernel_image == "" and report.outcome in (Outcome.STUB_EXITED, Outcome.APP_EXITED, Outcome.BUDGET):
        # systemd-boot stopped before it started the kernel: its own error lines say why
        said = [x.strip() for x in report.console.splitlines() if "systemd-boot" in x or "halting" in x]
        report.outcome = Outcome.LOADER_FAILED
        report.reason = "systemd-boot: " + (said[-1] if said else report.reason)
    why = sb.explain_failure(machine, result.grub_handle)
    if why and report.outcome != Outcome.KERNEL_ENTRY:
        report.explanation = "; ".join(x for x in (why, report.explanation) if x)


def stub_accepts_itself_after_exit(machine: EfiMachine):  # noqa: ANN201 - a predicate for prepare_machine
    """Will Linux's EFI stub accept part of the firmware's unaccepted memory itself after ExitBootServices (and so
    read CPUID leaf 0x21 first)? The rules are the stub model's (guest/unaccepted.py)."""
    from lazyaccept.cpu.select import unaccepted_descriptors
    from lazyaccept.guest.unaccepted import stub_accepted_ranges

    return lambda: bool(stub_accepted_ranges(unaccepted_descriptors(machine.dxe)))


def dxe_exited(machine: EfiMachine) -> bool:
    return machine.dxe.exited


def _terminated_before_dxe(
    sc: BootScenario, td, phases: list[Phase], exc: TdTerminated, t0: float, where: str = "SEC"
) -> BootReport:
    report = BootReport(
        scenario=sc,
        outcome=Outcome.TERMINATED,
        reason=f"in {where}: {exc.termination.reason}",
        console="",
        calls=[],
        call_counts={},
        phases=phases,
        accepted_by_actor=dict(td.tdx.accepted_by_actor),
        loader_events=[],
        termination=str(exc.termination),
        rng_seed=sc.rng_seed,
    )
    record_tdx(report, td.tdx)
    report.td = td
    report.wall_s = time.perf_counter() - t0
    return report


def _run_app(machine: EfiMachine, data: bytes | mmap.mmap, name: str) -> DirectBootResult:
    """Load and start an EFI application the way the Boot Manager starts a boot option: from a disk whose ESP holds
    it at the removable-media path, so that its LoadedImage DeviceHandle has Simple File System and FilePath is
    File(\\EFI\\BOOT\\BOOTX64.EFI) (a loader opens its own volume through them)."""
    from lazyaccept.firmware.drivers.base import END_NODE, FW
    from lazyaccept.firmware.drivers.blockio import file_path_node
    from lazyaccept.firmware.loaders.grub import attach_esp_disk
    from lazyaccept.vmm.disk import GRUB_REMOVABLE_PATH, BytesSource

    source = BytesSource(data) if isinstance(data, bytes) else MappedFile(data)  # a UKI: a map of its file
    esp = attach_esp_disk(machine, {GRUB_REMOVABLE_PATH: source})
    part = esp.devices[1]
    file_node = file_path_node("\\" + GRUB_REMOVABLE_PATH.replace("/", "\\")) + END_NODE
    file_path = machine.fw_alloc(len(file_node))
    whole = part.info.device_path[:-4] + file_node
    machine.mem.write(file_path, file_node, actor=FW)
    device_path = machine.fw_alloc(len(whole))
    machine.mem.write(device_path, whole, actor=FW)
    status, handle, buffered = machine.load_boot_option(data, name, device_handle=part.handle, file_path=file_path,
                                                        device_path=device_path)
    if not buffered:
        return DirectBootResult(None, boot_buffer_failed(name, len(data), status))
    if status != S.SUCCESS:
        return DirectBootResult(None, f"LoadImage of {name} failed ({S(status).name})")
    return DirectBootResult(machine.start_image(handle), None, [], None, handle)


def _report(
    sc: BootScenario, td, machine: EfiMachine, stop: StopReason | None, result, phases: list[Phase],
    edk2: Edk2Profile, t0: float,
) -> BootReport:
    tdx = td.tdx
    console = machine.protocols.console.output
    loader_events = [
        dict(what=e.what, status=S(e.status).name, size=e.size, address=e.address, accepted_bytes=e.accepted_bytes)
        for e in (getattr(result, "events", []) if result else [])
    ]
    if result is not None and getattr(result, "failed", None):
        outcome, reason = Outcome.LOADER_FAILED, result.failed
    elif stop is None:
        outcome, reason = Outcome.ERROR, "no run"
    elif stop.kind == "kernel":
        outcome, reason = Outcome.KERNEL_ENTRY, f"the stub jumped into the kernel at {stop.rip:#x}"
    elif stop.kind == "exit":
        outcome, reason = (Outcome.APP_EXITED if sc.efi_app else Outcome.STUB_EXITED), stop.detail
    elif stop.kind == "terminated":
        outcome, reason = Outcome.TERMINATED, stop.detail
    elif stop.kind == "budget":
        outcome, reason = Outcome.BUDGET, stop.detail
    elif stop.kind == "input":
        outcome, reason = Outcome.INPUT, stop.detail
    else:
        outcome, reason = Outcome.ERROR, f"{stop.detail} at RIP {stop.rip:#x}" if stop.rip is not None else stop.detail
    explained = dict(STUB_EXPLANATIONS)
    refused = next(
        (c for c in machine.calls if c.name == "AllocatePages" and list(c.args[:2]) == [2, 1] and c.status), None
    )
    if refused is not None:  # AllocateAddress (2) of EfiLoaderCode (1): the kernel slot
        explained["Failed to decompress kernel"] = KERNEL_SLOT_REFUSED.format(
            detail=refused.detail, status=_status(refused.status)
        )
    explanation = "; ".join(f"stub printed '{msg}': {why}" for msg, why in explained.items() if msg in console)
    report = BootReport(
        scenario=sc,
        outcome=outcome,
        reason=reason,
        console=console,
        calls=[
            dict(name=c.name, detail=c.detail, status=_status(c.status), image=c.image, args=[hex(a) for a in c.args])
            for c in machine.calls
        ],
        call_counts=dict(machine.call_counts),
        phases=phases,
        accepted_by_actor=dict(tdx.accepted_by_actor),
        loader_events=loader_events,
        termination=str(tdx.termination) if tdx.termination else None,
        rng_seed=sc.rng_seed,
        explanation=explanation,
        tdcalls_by_stub=machine.call_counts.get("TDCALL", 0),
    )
    report.td = td
    setup = getattr(result, "setup", None)
    report.kernel_init_size = setup.init_size if setup is not None else 0
    record_tdx(report, tdx)
    if machine.protocols.cc is not None:
        report.measurements = [
            dict(mr_index=x.mr_index, sha384=x.digest, size=x.size) for x in machine.protocols.cc.extends
        ]
    if outcome == Outcome.KERNEL_ENTRY and machine.kernel_entry is not None:
        rip, rsi = machine.kernel_entry
        header = (getattr(machine, "started_kernel", None) or [b""])[0]
        # The stub decompresses the kernel to an allocation aligned to the header's kernel_alignment
        # (CONFIG_PHYSICAL_ALIGN; libstub x86-stub.c efi_decompress_kernel, 6.12) and jumps into its head text.
        setup = read_setup_header(header) or {}
        align = setup.get("kernel_alignment") or (2 << 20)
        report.kernel_jump, report.kernel_entry = rip, rip - rip % align
        handoff, bp, check = check_stub_handoff(tdx, rsi)
        progress.phase("the handoff, read back and checked", tdx.clock_ns(0))
        check_handoff_and_boot_os(report, td, handoff, bp, check, header, getattr(machine, "kernel_path", None))
        if sc.run_kernel and handoff is not None and not report.handoff_problems:
            _run_real_kernel(report, td, machine, handoff, edk2, rip, setup.get("init_size", 0), t0)
        elif sc.run_kernel:
            report.hint = "--run-kernel: the real kernel was not run, the stub's handoff has problems"
    return report


def _run_real_kernel(
    report: BootReport, td, machine: EfiMachine, handoff: Handoff, edk2: Edk2Profile, jump: int, init_size: int,
    t0: float,
) -> None:
    """--run-kernel: the real kernel goes on from the stub's jump on a TD vCPU (kernel_run.py), in the budget left."""
    from lazyaccept.kernel_run import run_kernel_after_python_firmware
    from lazyaccept.tdvf_run import TdvfOutcome

    assert report.kernel_entry is not None
    k = run_kernel_after_python_firmware(
        td, machine, edk2, jump=jump, kernel_load=report.kernel_entry, init_size=init_size,
        memory_map=handoff.memory_map, table_ranges=handoff.table.set_ranges() if handoff.table is not None else [],
        max_wall_s=report.scenario.timeout_s - (time.perf_counter() - t0),
        # the stub picks no virtual offset with nokaslr (libstub x86-stub.c efi_decompress_kernel, 6.12)
        slide=0 if "nokaslr" in report.scenario.cmdline.split() else None,
    )
    report.kernel = k
    report.phases.append(Phase("the real kernel (linux)", k.run.virtual_ns, k.run.accepted_bytes))
    if k.outcome == TdvfOutcome.TERMINATED:
        report.outcome, report.reason = Outcome.TERMINATED, f"in the kernel: {k.detail}"
    report.termination = str(td.tdx.termination) if td.tdx.termination else None
    record_tdx(report, td.tdx)


def _status(status: int | None) -> str | None:
    if status is None:
        return None
    try:
        return S(status).name
    except ValueError:
        return f"{status:#x}"
