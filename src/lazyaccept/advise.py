"""How much must the firmware accept up front? The smallest up-front size that boots, per on-demand option.

Each probe is a model run, not an emulated one: the VMM and SEC as everywhere, the real DXE memory services,
the same QEMU direct-boot loader as real runs (firmware/loaders/direct_boot.py, on the model's boot services in
guest/model_services.py: blobs known by their sizes, StartImage runs the Linux 6.12 stub's allocations in order,
guest/stub_model.py). Tests check the model's verdict against real runs of the stub on the same firmware.
Booting is monotone in the up-front size, so a binary search finds the smallest size in a dozen probes.

With the real firmware (`check_with_real_firmware`), the answer is checked by booting the image itself from the reset
vector on the same TD and payload. edk2's own TDVF has one fixed policy: SEC accepts what the profile's "below-4g"
accepts (the differential tests hold the two to the same ranges) and its DXE core never accepts on demand (Page.c
has no accept call in edk2-stable202502 nor in c5aa7e7d), so its boot must agree with the model's "none" at
below-4g.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lazyaccept import progress
from lazyaccept.boot import run_boot
from lazyaccept.boot_report import BootReport, BootScenario, failed_allocation  # failed_allocation: re-exported
from lazyaccept.errors import InputError, LazyAcceptError
from lazyaccept.firmware.dxe.exit import DxePolicy
from lazyaccept.firmware.loaders.direct_boot import DirectBootConfig, InitrdSource, LoaderEvent, QemuDirectBoot
from lazyaccept.firmware.loaders.services import KernelSizes
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.profiles import resolve
from lazyaccept.firmware.sec import SecResult, parse_policy, run_sec
from lazyaccept.guest.model_services import ModelLoaderServices
from lazyaccept.guest.stub_model import StubConfig, StubResult
from lazyaccept.tdx.module import PageState, TdTerminated
from lazyaccept.units import MiB, format_size
from lazyaccept.vmm.td import Td, TdConfig, build_td
from lazyaccept.vmm.tdvf import load_firmware

OPTIONS = ("none", "option1", "option2", "option3")
CHAINS = ("direct", "grub", "shim-grub", "systemd-boot", "uki")  # direct: the model; the others: real boots
SEARCH_STEP = 2 * MiB
DEFAULT_KERNEL_FILE_BYTES = 11_735_552  # Debian's 6.12.117 cloud vmlinuz
DEFAULT_INIT_SIZE = 0x37DE000  # its setup header's init_size
DEFAULT_IMAGE_BYTES = 0xB97000  # its PE SizeOfImage


@dataclass(frozen=True)
class Payload:
    kernel_file_bytes: int = DEFAULT_KERNEL_FILE_BYTES
    init_size: int = DEFAULT_INIT_SIZE
    image_bytes: int = DEFAULT_IMAGE_BYTES
    initrd_bytes: int = 0
    kernel_alloc_bytes: int = 0  # the stub's allocation for the decompressed kernel; 0: init_size rounded up

    @property
    def stub_alloc_bytes(self) -> int:
        return KernelSizes(0, self.init_size, 0, alloc_bytes=self.kernel_alloc_bytes).stub_alloc_bytes


@dataclass
class ModelBoot:
    ok: bool
    failed_step: str  # "" when it boots
    message: str
    accepted_bytes: int
    clock_ns: int
    td: Td | None = field(default=None, repr=False)  # the firmware's end state: its TDX module goes on to the OS
    sec: SecResult | None = field(default=None, repr=False)
    stub: StubResult | None = field(default=None, repr=False)  # None when the run failed before the stub
    loader_events: list[LoaderEvent] = field(default_factory=list)  # QemuDirectBoot's steps, as in real runs


def model_boot(
    ram: int,
    smp: int,
    upfront: str,
    option: str,
    payload: Payload,
    *,
    profile: str = "kvm-2m",
    firmware: str | None = None,
    edk2_profile: str | None = None,
) -> ModelBoot:
    """One modeled QEMU direct boot of the stub; says which step failed if it does not boot. When it boots, `td`,
    `sec` and `stub` (with its handoff) are the state the OS starts from."""
    return _model_boot(ram, smp, upfront, option, payload, profile, firmware, edk2_profile)[0]


def model_boot_td(
    ram: int,
    smp: int,
    upfront: str,
    option: str,
    payload: Payload,
    *,
    profile: str = "kvm-2m",
    firmware: str | None = None,
    edk2_profile: str | None = None,
) -> Td:
    """The TD after a modeled boot (its TDX module holds who accepted what)."""
    return _model_boot(ram, smp, upfront, option, payload, profile, firmware, edk2_profile)[1]


def _model_boot(
    ram: int,
    smp: int,
    upfront: str,
    option: str,
    payload: Payload,
    profile: str,
    firmware: str | None,
    edk2_profile: str | None,
) -> tuple[ModelBoot, Td]:
    td = build_td(TdConfig(ram, smp, firmware_path=firmware, profile=profile))
    choice = resolve(edk2_profile, td.firmware)
    on = set(option.split("+"))  # "none", "option2" or several, e.g. "option2+option3" (compare's policies)
    try:
        sec = run_sec(td, parse_policy(upfront), choice)
        dxe = start_dxe(td, sec, DxePolicy(option1="option1" in on, option3="option3" in on))
    except (LazyAcceptError, ValueError) as exc:  # too little accepted for the firmware itself to start DXE
        return ModelBoot(False, "firmware", str(exc), 0, 0), td
    except TdTerminated as exc:  # e.g. PEI's permanent memory over a tail SEC left pending (platform.py)
        return ModelBoot(False, "firmware", str(exc), 0, td.tdx.clock_ns(0)), td
    services = ModelLoaderServices(
        dxe, StubConfig(accept_for_initrd="option3" in on, accept_for_kernel="option3" in on)
    )
    config = DirectBootConfig(
        KernelSizes(payload.kernel_file_bytes, payload.init_size, payload.image_bytes,
                    alloc_bytes=payload.kernel_alloc_bytes),
        initrd=InitrdSource(payload.initrd_bytes) if payload.initrd_bytes else None,
        option2="option2" in on,
        edk2_profile=choice.profile,
    )
    loaded = QemuDirectBoot(services, config).run()
    result = services.stub
    accepted = td.tdx.bytes_in_state(PageState.ACCEPTED)
    if result is not None and result.ok:
        return ModelBoot(True, "", result.message, accepted, td.tdx.clock_ns(0), td, sec, result, loaded.events), td
    if result is None:
        step, message = loaded.failed_step, loaded.failed or ""
    else:
        step, message = result.failed_step, result.message
    return ModelBoot(False, step, message, accepted, td.tdx.clock_ns(0), td, sec, result, loaded.events), td


@dataclass
class Advice:
    option: str
    min_upfront_bytes: int | None  # None: does not boot even with everything accepted
    limited_by: str  # what fails just below the minimum
    detail: str
    below_4g_boots: bool
    probes: int = 0
    # --chain other than direct: the failed allocation the last failing real boot names (owner, size_bytes, what)
    failed_allocation: dict[str, Any] | None = None
    wall_s: float = 0.0  # the probes' wall time


@dataclass
class AdviceReport:
    ram: int
    smp: int
    payload: Payload
    advice: list[Advice] = field(default_factory=list)
    edk2_profile: str = ""
    edk2_profile_why: str = ""
    real_check: RealCheck | None = None
    chain: str = "direct"
    wall_s: float = 0.0


@dataclass
class RealCheck:
    """The model's verdict for the real firmware's own policy against a boot of the image itself."""

    firmware: str  # the image booted from its reset vector
    model_boots: bool  # option "none" with below-4g up front
    model_detail: str  # the model's failure message, "" when it boots
    real_outcome: str
    real_reason: str
    real_boots: bool  # the stub jumped into the kernel
    wall_s: float

    @property
    def agrees(self) -> bool:
        return self.model_boots == self.real_boots


def advise(
    ram: int,
    smp: int,
    payload: Payload,
    *,
    profile: str = "kvm-2m",
    firmware: str | None = None,
    options: tuple[str, ...] = OPTIONS,
    edk2_profile: str | None = None,
) -> AdviceReport:
    choice = resolve(edk2_profile, load_firmware(firmware))
    report = AdviceReport(ram, smp, payload, edk2_profile=choice.profile.name, edk2_profile_why=choice.why)
    for option in options:
        probes = 0

        def boots(size: int, option: str = option) -> ModelBoot:
            nonlocal probes
            probes += 1
            progress.status(f"advise: {option}: does {format_size(size)} up front boot? (probe {probes})")
            return model_boot(
                ram, smp, format_size(size), option, payload, profile=profile, firmware=firmware,
                edk2_profile=choice.profile.name,
            )

        below = model_boot(
            ram, smp, "below-4g", option, payload, profile=profile, firmware=firmware, edk2_profile=choice.profile.name
        )
        top = boots(ram)
        if not top.ok:
            report.advice.append(Advice(option, None, top.failed_step, top.message, below.ok, probes))
            continue
        lo, hi = 0, ram // SEARCH_STEP  # boots at hi * step; not at lo * step (0 bytes cannot boot)
        last_failure = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            result = boots(mid * SEARCH_STEP)
            if result.ok:
                hi = mid
            else:
                lo, last_failure = mid, result
        detail = last_failure.message if last_failure else ""
        limited = last_failure.failed_step if last_failure else ""
        report.advice.append(Advice(option, hi * SEARCH_STEP, limited, detail, below.ok, probes))
    return report


def check_with_real_firmware(
    report: AdviceReport,
    kernel: str | None,
    *,
    profile: str = "kvm-2m",
    firmware: str | None = None,
    timeout_s: float = 600.0,
) -> RealCheck:
    """Boot `firmware` (default: Debian's OVMF 2025.02) itself on the report's TD with its payload (QEMU direct boot
    of `kernel`, default Debian's 6.12, and a synthetic initrd of the payload's size) and compare with the model."""
    payload = report.payload
    if kernel is None and payload.init_size != DEFAULT_INIT_SIZE:
        raise InputError("advise --check-real needs the kernel itself (--kernel VMLINUZ), not only its init_size")
    # One model probe: the firmware's own policy (advise's "none" row answers the same for its below-4g column).
    below = model_boot(report.ram, report.smp, "below-4g", "none", payload, profile=profile, firmware=firmware,
                       edk2_profile=report.edk2_profile)
    rep: BootReport = run_boot(BootScenario(
        ram=report.ram, smp=report.smp, profile=profile, firmware=firmware, firmware_exec=True, upfront="below-4g",
        kernel=kernel, initrd_size=payload.initrd_bytes or None, os_ready_bytes=0, log_calls=False,
        timeout_s=timeout_s,
    ))  # fmt: skip
    check = RealCheck(
        firmware=firmware or "Debian's OVMF.fd 2025.02", model_boots=below.ok,
        model_detail="" if below.ok else below.message,
        real_outcome=str(rep.outcome), real_reason=rep.reason, real_boots=rep.reached_kernel, wall_s=rep.wall_s,
    )  # fmt: skip
    report.real_check = check
    return check



def chain_scenario(chain: str, shim: str | None) -> dict[str, Any]:
    """BootScenario's fields that start `chain` (as `lazyaccept boot --grub/--shim/--systemd-boot/--uki` spell it);
    `shim` is the first-stage loader's path for shim-grub."""
    fields: dict[str, dict[str, Any]] = {
        "grub": dict(grub=True),
        "shim-grub": dict(grub=True, shim=shim),
        "systemd-boot": dict(systemd_boot=True),
        "uki": dict(uki=True),
    }
    return fields[chain]


def advise_chain(
    ram: int,
    smp: int,
    payload: Payload,
    chain: str,
    *,
    kernel: str | None = None,
    shim: str | None = None,
    profile: str = "kvm-2m",
    firmware: str | None = None,
    options: tuple[str, ...] = OPTIONS,
    edk2_profile: str | None = None,
    timeout_s: float = 600.0,
) -> AdviceReport:
    """advise for a boot chain with no fast model (GRUB, shim -> GRUB, systemd-boot, a UKI): every probe is a real
    boot of the chain on the Python firmware, and works when it reaches the kernel entry. Booting is assumed
    monotone in the up-front size (as the model's search assumes it); the direct-boot model's answer is the first
    guess, and the search gallops from it in 2 MiB steps before it bisects, to keep the real boots few."""
    if chain not in CHAINS or chain == "direct":
        raise InputError(f"--chain {chain!r}: choose one of {', '.join(c for c in CHAINS if c != 'direct')}")
    model = advise(ram, smp, payload, profile=profile, firmware=firmware, options=options, edk2_profile=edk2_profile)
    report = AdviceReport(ram, smp, payload, edk2_profile=model.edk2_profile, edk2_profile_why=model.edk2_profile_why,
                          chain=chain)
    t_all = time.perf_counter()
    top = ram // SEARCH_STEP  # the whole RAM up front: as everything accepted
    for guess_advice in model.advice:
        option = guess_advice.option
        probes = 0
        t0 = time.perf_counter()
        seen: dict[int, BootReport] = {}

        def boot(upfront: str, option: str = option) -> BootReport:
            on = set(option.split("+"))
            return run_boot(BootScenario(
                ram=ram, smp=smp, profile=profile, firmware=firmware, edk2_profile=edk2_profile, upfront=upfront,
                option1="option1" in on, option2="option2" in on, option3="option3" in on, kernel=kernel,
                initrd_size=payload.initrd_bytes or None, os_ready_bytes=0, timeout_s=timeout_s,  # calls: the failures
                **chain_scenario(chain, shim),
            ))  # fmt: skip

        def works(steps: int, option: str = option, seen: dict[int, BootReport] = seen) -> bool:
            nonlocal probes
            if steps not in seen:
                probes += 1
                progress.status(f"advise --chain {chain}: {option}: does {format_size(steps * SEARCH_STEP)} up "
                                f"front boot? (real boot {probes})")
                seen[steps] = boot(format_size(steps * SEARCH_STEP))
            return seen[steps].reached_kernel

        guess = (guess_advice.min_upfront_bytes or 0) // SEARCH_STEP
        lo, hi = 0, None  # fails at lo steps (0 bytes cannot boot), boots at hi
        if 0 < guess < top and works(guess):
            hi, d = guess, 1
            while hi - d > lo:  # gallop down until a size fails
                if not works(hi - d):
                    lo = hi - d
                    break
                hi, d = hi - d, d * 2
        else:
            lo, d = max(guess, 0), 1
            while lo + d < top:  # gallop up until a size boots
                if works(lo + d):
                    hi = lo + d
                    break
                lo, d = lo + d, d * 2
            if hi is None:
                hi = top if works(top) else None
        while hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            if works(mid):
                hi = mid
            else:
                lo = mid
        below = boot("below-4g")
        probes += 1
        failing = seen.get(top) if hi is None else seen.get(lo)
        alloc = failed_allocation(failing) if failing is not None else None
        limited = "" if failing is None else (f"{alloc['owner']}'s allocation" if alloc else str(failing.outcome))
        report.advice.append(Advice(
            option, None if hi is None else hi * SEARCH_STEP, limited, failing.reason if failing else "",
            below.reached_kernel, probes, alloc, time.perf_counter() - t0,
        ))  # fmt: skip
    report.wall_s = time.perf_counter() - t_all
    return report
