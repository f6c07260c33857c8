"""The real kernel runs on after the real firmware's handoff (--run-kernel): Debian's 6.12 on a 4 GiB, 1-vCPU TD
booted by OVMF 2025.02 with lazyaccept's busybox initramfs detects the TD, accepts memory itself through
TDG.MEM.PAGE.ACCEPT (only what the stub's unaccepted table left pending), handles its port I/O, MSR and MMIO #VEs,
finds the MADT in the VMM's ACPI tables (x2APIC routing, the I/O APIC), runs its initcalls on the virtual TSC, runs
/init in user mode, which prints /proc/meminfo before and after its fill, and powers off through ACPI S5: a named
outcome, never a traceback."""

from __future__ import annotations

import json

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.cli import main
from lazyaccept.commands.tdvf import format_report, kernel_run_dict
from lazyaccept.cpu.unicorn.td_vcpu import KERNEL_TEXT_MAPPING
from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED, EXIT_MEMORY_LOST
from lazyaccept.guest.initramfs import parse_meminfo_blocks, write_initramfs
from lazyaccept.records import Actor
from lazyaccept.tdvf_run import TdvfOutcome, TdvfReport, TdvfRun, kernel_accepts_outside_table, run_tdvf
from lazyaccept.units import GiB, MiB

pytestmark = pytest.mark.real_binary

MAX_WALL_S = 400  # a bound, not a figure: a run that needs more is stuck


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> TdvfReport:
    store = BinaryStore()
    initrd = write_initramfs(tmp_path_factory.mktemp("initrd") / "initramfs.cpio.gz", store.busybox(), compress=True)
    return run_tdvf(TdvfRun(store.ovmf_fd(), ram=4 * GiB, kernel=store.linux_vmlinuz(), initrd=initrd.path,
                            run_kernel=True, max_wall_s=MAX_WALL_S))


def test_the_kernel_runs_past_the_handoff_and_detects_the_td(report: TdvfReport) -> None:
    k = report.kernel_run
    assert k is not None and report.kernel is not None and not report.kernel.check.problems, report.detail
    assert k.tdx_guest_detected, k.console[:2000]
    assert "Linux version 6.12" in k.console
    # The TDCALLs of tdx_early_init/tdx_setup, answered by the TDX module model with real statuses.
    assert k.tdcalls["VP_INFO"] >= 1 and k.tdcalls["VM_WR"] >= 1 and k.tdcalls["VM_RD"] >= 1
    # Port I/O (the serial console) and MSRs went through the kernel's own #VE handler and TDG.VP.VMCALL.
    # (the run may stop at the TDVMCALL of the last #VE: the panic watch stops before each TDCALL)
    assert k.tdvmcalls["EXIT_REASON_IO_INSTRUCTION"] > 1000
    assert k.ve["exit 30"] - k.tdvmcalls["EXIT_REASON_IO_INSTRUCTION"] in (0, 1)
    assert k.tdcalls["VP_VEINFO_GET"] >= k.ve["exit 30"]
    assert k.msr.get("rdmsr 0x1b ve", 0) >= 1  # IA32_APIC_BASE: not in the module's MSR table, so #VE
    assert k.rip >= KERNEL_TEXT_MAPPING


def test_the_kernel_accepts_only_what_the_stub_left_unaccepted(report: TdvfReport) -> None:
    k = report.kernel_run
    assert k is not None
    assert k.accepted_bytes >= 64 * MiB and k.accept_tdcalls == len(k.accepts)
    assert report.accepted_by_actor[Actor.LINUX] == k.accepted_bytes
    assert kernel_accepts_outside_table(report) == []
    # By the kernel's own progress: most of it after the SWIOTLB lines (the bounce buffer placed top-down).
    assert sum(n for _, n, _ in k.accepts_after) == k.accepted_bytes
    assert any("software IO TLB" in line for line, _, _ in k.accepts_after)
    linux = [p for p in report.phases if p["name"] == "linux"]
    assert linux and linux[0]["accepted_bytes"] == k.accepted_bytes and linux[0]["instructions"] == k.instructions
    table = report.kernel.handoff.table if report.kernel and report.kernel.handoff else None
    assert table is not None and all(gpa >= table.phys_base for gpa, _ in k.accepts)


def test_the_kernel_phases_and_who_accepted(report: TdvfReport) -> None:
    """From the kernel's own symbols (its kallsyms): the phases it went through, in order, and each accept by the
    kernel function that wanted the memory, found on its stack at the TDCALL."""
    k = report.kernel_run
    assert k is not None and k.progress is not None, k and k.progress
    p = k.progress
    assert [ph.name for ph in p.phases] == ["early boot", "start_kernel", "mm init", "kernel_init", "initcalls",
                                            "/init"], p.notes
    starts = [ph.start_ns for ph in p.phases]
    assert all(s is not None for s in starts), p.as_dict()
    assert starts == sorted(starts) and starts[0] == 0  # type: ignore[type-var]
    # the phases split the kernel's run: its accepts, accept TDCALLs and TDCALLs add up
    assert sum(ph.accepted_bytes for ph in p.phases) == k.accepted_bytes
    assert sum(ph.accept_tdcalls for ph in p.phases) == k.accept_tdcalls
    assert sum(ph.tdcalls for ph in p.phases) == sum(k.tdcalls.values())
    assert sum(c.accepted_bytes for c in p.by_function) == k.accepted_bytes
    assert sum(c.tdcalls for c in p.by_function) == len(k.accepts)
    # the SWIOTLB bounce buffer: memblock memory, accepted for swiotlb's own allocation (mm init is before it
    # takes memblock's free memory over)
    swiotlb = [c for c in p.by_function if c.function.startswith("swiotlb")]
    assert swiotlb and swiotlb[0].path.startswith("memblock"), [c.as_dict() for c in p.by_function]
    assert "(no caller found on the stack)" not in {c.function for c in p.by_function}
    assert not any("KASLR" in n for n in p.notes)  # nokaslr: the kernel runs at its link address
    data = json.loads(json.dumps(kernel_run_dict(report)))["progress"]
    assert [ph["name"] for ph in data["phases"]][1] == "start_kernel"
    assert sum(c["accepted_bytes"] for c in data["accepts_by_function"]) == k.accepted_bytes
    text = format_report(report)
    assert "kernel phases" in text and "accepted by kernel function" in text and p.by_function[0].function in text


def test_the_kernel_runs_init_which_powers_off(report: TdvfReport) -> None:
    k = report.kernel_run
    assert k is not None and report.kernel is not None
    assert report.outcome == TdvfOutcome.POWERED_OFF, (report.detail, k.console[-3000:])
    lost = report.kernel.check.lost_bytes
    assert report.exit_code == (EXIT_MEMORY_LOST if lost else EXIT_BOOTED)
    # past the APIC set-up that panicked without a MADT (native_apic_mem_read): the MADT came from the VMM's ACPI
    assert "Switched APIC routing to: physical x2apic" in k.console, k.console[-3000:]
    assert "native_apic_mem_read" not in k.console
    # identify_cpu (KVM's machine-check MSRs), the I/O APIC read back through MMIO #VEs, the initcalls (PCI on the
    # q35 host bridge, the 16550 on IRQ 4), the virtual TSC (no RCU stall), user mode and the S5 request.
    for marker in ("smpboot: Total of 1 processors activated", "IOAPIC[0]: apic_id 0, version 32",
                   "GSI 0-23", "pci 0000:00:00.0: [8086:29c0]", "serial8250: ttyS0 at I/O 0x3f8 (irq = 4",
                   "software IO TLB: mapped", "Freeing unused kernel image", "Run /init as init process",
                   "ACPI: PM: Preparing to enter system sleep state S5", "reboot: Power down",
                   # the DSDT's PNP0B00 and the CMOS model: the time from the fixed epoch on the virtual clock
                   "rtc_cmos 00:00: registered as rtc0", "rtc_cmos 00:00: setting system clock to 2025-01-01T00:00:0"):
        assert marker in k.console, marker
    for bad in ("MCA architectural violation", "rcu_preempt self-detected stall", "VFS: Unable to mount root"):
        assert bad not in k.console, bad
    assert k.ve["exit 48"] > 0  # the I/O APIC's registers: MMIO by instruction
    # /init's own lines, through the tty (the UART's THRE interrupt via the I/O APIC). A 64 MiB fill on a 4 GiB TD
    # is served from memory already accepted (6.12 accepts only when a zone runs short): Unaccepted stays put.
    meminfo = parse_meminfo_blocks(k.console)
    assert meminfo.end_seen and meminfo.fill_done, k.console[-3000:]
    assert 0 < meminfo.after["Unaccepted"] <= meminfo.before["Unaccepted"]
    assert meminfo.after["Shmem"] - meminfo.before["Shmem"] >= 63 * 1024  # the 64 MiB fill (kB), give or take
    text = format_report(report)
    assert "accepted by the kernel" in text and "all within the stub's unaccepted table" in text
    data = json.loads(json.dumps(kernel_run_dict(report)))
    assert data["accepted_bytes"] == k.accepted_bytes and data["tdx_guest_detected"] is True
    assert data["accepts_outside_table"] == [] and data["console"] == k.console


def test_run_kernel_needs_a_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tdvf", "--run-kernel"]) == EXIT_BAD_INPUT
    assert "--run-kernel needs --kernel" in capsys.readouterr().err
