"""`lazyaccept boot`'s text report: E820 as Linux sanitises it (arch/x86/kernel/e820.c e820__update_table,
v6.12), a totals line, tables in aligned columns."""

from __future__ import annotations

import pytest

from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.boot_text import aligned, format_report, sanitize_e820, totals_line
from lazyaccept.units import GiB, MiB, format_ns, human_size

RAM, NVS, RESERVED, ACPI, PRAM = 1, 4, 2, 3, 12


def test_sanitize_sorts_and_merges_neighbours_of_one_type() -> None:
    # the order Debian's 6.12 stub writes on a 64 GiB TD: the unaccepted tail's entries after the 4 GiB one
    raw = [(0, 8 * MiB, RAM), (0x10000000, 0x42000000, RAM), (4 * GiB, GiB, RAM), (0x52000000, 0x2E000000, RAM),
           (0xE0000000, 0x10000000, RESERVED), (5 * GiB, 61 * GiB, RAM)]
    assert sanitize_e820(raw) == [(0, 8 * MiB, RAM), (0x10000000, 0x70000000, RAM),
                                  (0xE0000000, 0x10000000, RESERVED), (4 * GiB, 62 * GiB, RAM)]


def test_sanitize_overlaps_take_the_highest_type_and_keep_gaps() -> None:
    raw = [(0, 16 * MiB, RAM), (4 * MiB, 4 * MiB, NVS), (6 * MiB, 4 * MiB, ACPI), (32 * MiB, 0, RESERVED),
           (20 * MiB, 4 * MiB, RAM)]
    assert sanitize_e820(raw) == [(0, 4 * MiB, RAM), (4 * MiB, 4 * MiB, NVS), (8 * MiB, 2 * MiB, ACPI),
                                  (10 * MiB, 6 * MiB, RAM), (20 * MiB, 4 * MiB, RAM)]


def test_sanitize_keeps_pram_apart_and_leaves_what_linux_leaves() -> None:
    assert sanitize_e820([(0, MiB, PRAM), (MiB, MiB, PRAM), (2 * MiB, MiB, RAM), (3 * MiB, MiB, RAM)]) == [
        (0, MiB, PRAM), (MiB, MiB, PRAM), (2 * MiB, 2 * MiB, RAM)]
    assert sanitize_e820([(GiB, GiB, RAM)]) == [(GiB, GiB, RAM)]  # one entry: "don't bother"
    wraps = [(2 * MiB, MiB, RAM), (0, MiB, RAM), ((1 << 64) - MiB, MiB, RAM)]  # its end wraps to 0
    assert sanitize_e820(wraps) == wraps  # Linux bails out on an entry past 2^64


def test_aligned_columns() -> None:
    lines = aligned([["start", "size", "type"], ["0x0", "8.00 MiB", "RAM"], ["0x800000", "24.00 KiB", "NVS"]],
                    (False, True, False))
    assert lines == ["  start          size  type", "  0x0        8.00 MiB  RAM", "  0x800000  24.00 KiB  NVS"]


@pytest.mark.real_binary
def test_report_has_totals_a_sorted_merged_e820_and_aligned_tables() -> None:
    rep = run_boot(BootScenario(ram=64 * GiB, smp=8, upfront="256M", initrd_size=GiB, option1=True))
    text = format_report(rep)
    lines = text.splitlines()
    head = lines.index(next(line for line in lines if line.startswith("E820 handed to the kernel")))
    assert lines[head].endswith(": 12 entries (14 as handed over)"), lines[head]  # out of order, split
    rows = []
    for line in lines[head + 2 :]:
        if not line.startswith("  0x"):
            break
        start, end, size, unit, kind = line.split()
        rows.append((int(start, 16), int(end, 16), kind))
        assert line.index(unit) + len(unit) == len(lines[head + 1].split("size")[0]) + len("size")  # right-aligned
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and len(rows) == 12
    assert all(not (a[1] == b[0] and a[2] == b[2]) for a, b in zip(rows, rows[1:], strict=False)), "merged"
    assert (0x10000000, 0x80000000, "RAM") in rows and (4 * GiB, 66 * GiB, "RAM") in rows
    # the phase table: every figure ends in the same column as its heading
    top = lines.index(next(line for line in lines if line.startswith("phase ")))
    time_end = lines[top].index("virtual time") + len("virtual time")
    for ph, line in zip(rep.phases, lines[top + 1 :], strict=False):
        assert line.startswith(ph.name) and line[:time_end].endswith(" " + format_ns(ph.virtual_ns)), line
        assert len(line) == len(lines[top]) and line.endswith(" " + human_size(ph.accepted_bytes)), line
    firmware = sum(p.virtual_ns for p in rep.phases[1:6])  # SEC to the stub's ExitBootServices
    assert lines[top + 1 + len(rep.phases)] == totals_line(rep)
    assert totals_line(rep).startswith(f"totals: firmware {firmware / 1e9:.2f} s, OS ")


@pytest.mark.real_binary
def test_totals_line_time_to_ready_is_every_phase_to_a_ready_userspace() -> None:
    rep = run_boot(BootScenario(ram=8 * GiB, smp=2))
    assert rep.os_outcome == "ready"
    total = sum(p.virtual_ns for p in rep.phases)
    assert totals_line(rep).endswith(f"time to ready {total / 1e9:.2f} s (from the VMM build to a ready userspace)")
    assert totals_line(rep) in format_report(rep).splitlines()


@pytest.mark.real_binary
def test_header_names_the_on_demand_options_by_name_and_number() -> None:
    rep = run_boot(BootScenario(ram=4 * GiB, smp=1, upfront="256M", option1=True, option3=True, initrd_size=16 * MiB))
    head = format_report(rep).splitlines()[0]
    assert head.endswith("up-front 256M, on-demand allocator (option1), accept-service (option3)"), head
    rep = run_boot(BootScenario(ram=4 * GiB, smp=1, initrd_size=16 * MiB))
    assert format_report(rep).splitlines()[0].endswith("on-demand none")
