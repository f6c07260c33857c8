"""The real kernel runs on after the Python firmware's handoff (`lazyaccept boot --run-kernel`, kernel_run.py):
Debian's 6.12 on a 4 GiB, 1-vCPU TD booted by the Python firmware (profile ovmf-x64-2025.02, read from the default
image) with lazyaccept's busybox initramfs and `console=ttyS0 nokaslr` detects the TD, accepts memory itself only
within the stub's unaccepted table, runs /init, which prints /proc/meminfo before and after its fill, and powers off.
Its own count of unaccepted memory agrees with the TDX module's books to the byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootReport, BootScenario, Outcome, run_boot
from lazyaccept.cli import main
from lazyaccept.commands.boot import format_report, report_dict
from lazyaccept.exitcodes import EXIT_BAD_INPUT, EXIT_BOOTED
from lazyaccept.guest.initramfs import parse_meminfo_blocks, write_initramfs
from lazyaccept.linux_differential import format_table as format_linux_table
from lazyaccept.linux_differential import run_linux_differential
from lazyaccept.records import Actor
from lazyaccept.scenario import scenario_from_dict
from lazyaccept.spec.efi import EfiMemoryType
from lazyaccept.tdvf_run import TdvfOutcome
from lazyaccept.units import GiB, MiB, human_size

MAX_WALL_S = 900  # a bound, not a figure: a run that needs more is stuck
# Linux 6.12 mm/page_alloc.c: unaccepted memory enters the buddy allocator (and NR_UNACCEPTED, meminfo's
# Unaccepted) a MAX_PAGE_ORDER block at a time (order 10: 4 MiB), whole when any part of it is still pending
# (page_contains_unaccepted), and leaves it whole when accepted (__accept_page).
MAX_ORDER_BLOCK = 4 * MiB


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> BootReport:
    store = BinaryStore()
    initrd = write_initramfs(tmp_path_factory.mktemp("initrd") / "initramfs.cpio.gz", store.busybox(), compress=True)
    return run_boot(BootScenario(ram=4 * GiB, smp=1, initrd=str(initrd.path), run_kernel=True, timeout_s=MAX_WALL_S))


@pytest.mark.real_binary
def test_the_kernel_runs_init_and_powers_off(report: BootReport) -> None:
    k = report.kernel
    assert report.edk2_profile == "ovmf-x64-2025.02" and report.handoff_ok, report.reason
    assert k is not None, report.reason
    assert k.outcome == TdvfOutcome.POWERED_OFF, (k.detail, k.console[-3000:])
    assert report.outcome == Outcome.KERNEL_ENTRY and report.exit_code == EXIT_BOOTED
    assert not report.os_outcome  # the real kernel ran instead of the Linux model
    assert k.run.tdx_guest_detected and "Linux version 6.12" in k.console
    for marker in ("Switched APIC routing to: physical x2apic", "Run /init as init process",
                   "ACPI: PM: Preparing to enter system sleep state S5", "reboot: Power down"):
        assert marker in k.console, marker
    meminfo = parse_meminfo_blocks(k.console)
    assert meminfo.end_seen and meminfo.fill_done, k.console[-3000:]
    assert meminfo.after["Shmem"] - meminfo.before["Shmem"] >= 63 * 1024  # the 64 MiB fill (kB), give or take


@pytest.mark.real_binary
def test_the_stub_state_is_the_reset_vectors(report: BootReport) -> None:
    """CR3 is the identity tables built where the TDX reset vector keeps its own, reserved for good in the map the
    stub exited with; the run began at the stub's jump; the firmware's services answer as its model does."""
    k = report.kernel
    assert k is not None and report.kernel_jump is not None
    assert k.page_tables == 0x800000
    assert any(d.type == EfiMemoryType.EfiACPIMemoryNVS and d.physical_start <= k.page_tables < d.end
               for d in report.memory_map)
    assert report.kernel_entry is not None and report.kernel_entry <= report.kernel_jump < 4 * GiB
    # The Python firmware's runtime services are Python: the kernel's SetVirtualAddressMap reaches its thunk, is
    # answered EFI_UNSUPPORTED (as that firmware answers it), and the kernel goes on without runtime services.
    assert k.runtime_calls == ["RT.SetVirtualAddressMap"], k.runtime_calls
    assert "Unable to switch EFI into virtual mode (status=8000000000000003)" in k.console


@pytest.mark.real_binary
def test_the_kernel_accepts_only_what_the_table_left_and_counts_it_as_the_module_does(report: BootReport) -> None:
    k = report.kernel
    table = report.unaccepted_table
    assert k is not None and table is not None
    assert k.outside_table == [] and k.run.accepted_bytes >= 64 * MiB
    assert k.run.accept_tdcalls == len(k.run.accepts)
    assert report.accepted_by_actor[Actor.LINUX] == k.run.accepted_bytes
    assert report.phases[-1].accepted_bytes == k.run.accepted_bytes
    # Every accept precedes /init's first reading (accepts_after groups them by the console line before).
    assert not any("lazyaccept-meminfo" in line for line, _, _ in k.run.accepts_after)
    unit = table["unit_size"]
    start, end = table["phys_base"], table["phys_base"] + table["bitmap_bytes"] * 8 * unit
    assert table["set_bytes"] == end - start  # the stub marked everything from phys_base pending (above 4 GiB)
    pending = set(range(start, end, unit))
    for gpa, size in k.run.accepts:
        pending -= set(range(gpa - gpa % unit, gpa + size, unit))
    blocks = {gpa // MAX_ORDER_BLOCK for gpa in pending}
    before = parse_meminfo_blocks(k.console).before
    # The kernel's Unaccepted against the TDX module's books: the table's pending units still pending, counted in
    # whole 4 MiB blocks (more than the units by 2 MiB per block the kernel half-accepted early through memblock).
    assert before["Unaccepted"] * 1024 == len(blocks) * MAX_ORDER_BLOCK
    assert len(pending) * unit <= before["Unaccepted"] * 1024


@pytest.mark.real_binary
def test_the_kernel_run_is_in_the_report_and_its_json(report: BootReport) -> None:
    k = report.kernel
    assert k is not None
    data = json.loads(json.dumps(report_dict(report)))["kernel_run"]
    assert data["outcome"] == "powered-off" and data["accepted_bytes"] == k.run.accepted_bytes
    assert data["page_tables"] == k.page_tables and data["accepts_outside_table"] == []
    assert data["console"] == k.run.console and data["tdx_guest_detected"] is True
    text = format_report(report)
    assert "the real kernel after the handoff: POWERED-OFF" in text
    assert "all within the stub's unaccepted table" in text and "reboot: Power down" in text


def test_run_kernel_needs_one_vcpu(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "-smp", "2", "--run-kernel"]) == EXIT_BAD_INPUT
    assert "needs 1 vCPU, not 2" in capsys.readouterr().err


def test_run_kernel_is_not_for_the_real_firmware_here(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "-smp", "1", "--firmware-exec", "--run-kernel"]) == EXIT_BAD_INPUT
    assert "lazyaccept tdvf --kernel VMLINUZ --run-kernel" in capsys.readouterr().err


def test_the_scenario_key(tmp_path: Path) -> None:
    sc = scenario_from_dict({"td": {"vcpus": 1}, "os": {"run_kernel": True}}, tmp_path).scenario
    assert sc.run_kernel and sc.smp == 1
    assert not scenario_from_dict({}, tmp_path).scenario.run_kernel


@pytest.mark.real_binary
def test_the_linux_model_holds_to_the_real_kernel(report: BootReport) -> None:
    """Issue 16: the Linux model after this same handoff (the Python firmware booted again, with the model)
    against this real run, field by field (linux_differential.py): what Linux accepts in start_kernel, mm init
    and the initcalls up to /init, the memmap, where SWIOTLB's buffer went and meminfo's Unaccepted at /init."""
    k = report.kernel
    assert k is not None and k.run.progress is not None
    d = run_linux_differential(4 * GiB, report.scenario.initrd, real=report)
    assert d.ok, format_linux_table(d)
    for name in ("reached_init", "handoff.unaccepted_table", "memmap", "swiotlb.size", "swiotlb.shared"):
        assert d.get(name).equal, format_linux_table(d)
    # The real side's phases hold every accept the kernel made (none after /init's first meminfo reading), and
    # each phase of the model's has real accepts to be held to.
    phases = {p.name: p.accepted_bytes for p in k.run.progress.phases}
    assert phases["/init"] == 0 and sum(phases.values()) == k.run.accepted_bytes
    assert d.get("accepted.by_init").real == human_size(k.run.accepted_bytes)
    assert all(phases[p] > 0 for p in ("start_kernel", "mm init", "initcalls"))
