"""x2APIC through MSRs: ids, SVR, TPR/EOI, and the timer on the virtual clock."""

from __future__ import annotations

from lazyaccept.units import GiB
from lazyaccept.vmm.devices.apic import X2Apic, divisor_of, ipi_targets
from lazyaccept.vmm.platform import Q35Platform


def test_registers_at_reset() -> None:
    bsp, ap = X2Apic(0, bsp=True), X2Apic(3, bsp=False)
    assert bsp.rdmsr(0x1B, 0) == 0xFEE00D00 and ap.rdmsr(0x1B, 0) == 0xFEE00C00
    assert ap.rdmsr(0x802, 0) == 3 and ap.rdmsr(0x803, 0) == 0x50014
    assert bsp.rdmsr(0x80F, 0) == 0xFF and bsp.rdmsr(0x832, 0) == 0x10000
    assert ap.rdmsr(0x80D, 0) == 1 << 3
    assert bsp.rdmsr(0x80B, 0) is None and not bsp.wrmsr(0x802, 1, 0)  # EOI write-only, ID read-only
    assert bsp.wrmsr(0x1B, 0, 0) and bsp.rdmsr(0x1B, 0) == 0xFEE00D00  # the mode cannot be left


def test_divide_encoding() -> None:
    assert [divisor_of(v) for v in (0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB)] == [2, 4, 8, 16, 32, 64, 128, 1]


def test_periodic_timer_deadlines() -> None:
    a = X2Apic(0, bsp=True, bus_cycle_ns=40)
    a.wrmsr(0x80F, 0x1FF, 0)
    a.wrmsr(0x83E, 0xB, 0)  # divide by 1
    a.wrmsr(0x832, (1 << 17) | 0x20, 0)  # periodic, vector 0x20
    a.wrmsr(0x838, 1000, 100)  # 1000 ticks of 40 ns
    assert a.next_deadline() == 100 + 40_000
    assert a.pending_interrupt(40_099) is None
    assert a.rdmsr(0x839, 20_100) == 500
    assert a.pending_interrupt(40_100) == 0x20
    assert a.next_deadline() == 80_100
    assert a.acknowledge() == 0x20 and a.pending_interrupt(40_200) is None
    assert a.rdmsr(0x810 + 1, 40_200) == 1  # ISR bit 32
    a.wrmsr(0x80B, 0, 40_300)
    assert a.rdmsr(0x811, 40_300) == 0
    assert a.pending_interrupt(10 * 40_000 + 150) == 0x20  # late: periods coalesce into one request
    assert a.next_deadline() == 11 * 40_000 + 100
    a.wrmsr(0x838, 0, 500_000)  # stop
    assert a.next_deadline() is None


def test_one_shot_mask_and_priority() -> None:
    a = X2Apic(0, bsp=True, bus_cycle_ns=1)
    a.wrmsr(0x83E, 0x0, 0)  # divide by 2
    a.wrmsr(0x832, 0x30, 0)
    a.wrmsr(0x838, 100, 0)
    assert a.next_deadline() == 200
    assert a.pending_interrupt(300) is None  # software-disabled APIC delivers nothing
    a.wrmsr(0x80F, 0x100, 300)
    assert a.pending_interrupt(300) == 0x30
    assert a.next_deadline() is None and a.rdmsr(0x839, 300) == 0
    a.wrmsr(0x808, 0x40, 300)  # TPR class 4 blocks vector 0x30
    assert a.pending_interrupt(300) is None
    a.wrmsr(0x808, 0, 300)
    a.wrmsr(0x832, 0x10031, 300)
    a.wrmsr(0x838, 5, 300)
    assert a.next_deadline() is None  # masked: no wake-up
    a.wrmsr(0x830, (1 << 18) | 0x41, 300)  # self IPI
    assert a.pending_interrupt(300) == 0x41
    a.wrmsr(0x830, (5 << 32) | 0x500, 300)  # INIT to APIC 5: recorded
    assert a.ipis == [((5 << 32) | 0x500, 5)]


def test_ipi_destinations() -> None:
    ids = [0, 1, 2, 17]
    assert ipi_targets(0x40, 2, 0, ids) == [2]  # physical
    assert ipi_targets(0x40, 5, 0, ids) == []
    assert ipi_targets((1 << 11) | 0x40, (1 << 16) | 0b10, 0, ids) == [3]  # logical: cluster 1, member 1 = APIC 17
    assert ipi_targets((1 << 11) | 0x40, 0b110, 0, ids) == [1, 2]  # cluster 0, members 1 and 2
    assert ipi_targets((3 << 18) | 0x40, 0, 1, ids) == [0, 2, 3]  # all excluding self
    assert ipi_targets((2 << 18) | 0x40, 0, 1, ids) == [0, 1, 2, 3]
    assert ipi_targets(0x40, 0xFFFFFFFF, 0, ids) == [0, 1, 2, 3]  # broadcast


def test_the_platform_routes_ipis_between_vcpus() -> None:
    platform = Q35Platform(1 * GiB, 2, lambda: 0)
    for v in (0, 1):
        assert platform.wrmsr(v, 0x80F, 0x1FF)  # software-enabled
    assert platform.wrmsr(0, 0x830, (1 << 32) | 0xFB)  # fixed, physical, to APIC 1
    assert platform.pending_interrupt(1) == 0xFB and platform.pending_interrupt(0) is None
    assert platform.wrmsr(1, 0x830, (3 << 18) | 0xFC)  # all excluding self
    assert platform.pending_interrupt(0) == 0xFC
    assert platform.wrmsr(0, 0x830, (1 << 32) | 0x500)  # INIT: not modelled, not delivered
    assert platform.apics[1].irr == 1 << 0xFB and platform.apics[0].ipis == []
