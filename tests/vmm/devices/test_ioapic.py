"""The q35 I/O APIC (vmm/devices/ioapic.py) as QEMU's hw/intc/ioapic.c behaves, and the UART's IRQ 4 through it
to the local APIC (vmm/platform.py)."""

from __future__ import annotations

from lazyaccept.units import GiB
from lazyaccept.vmm.devices.ioapic import IOREGSEL, IOWIN, LVT_MASKED, REMOTE_IRR, VERSION, IoApic
from lazyaccept.vmm.platform import Q35Platform


def _ioapic() -> tuple[IoApic, list[tuple[int, int, bool]]]:
    got: list[tuple[int, int, bool]] = []

    def deliver(apic_id: int, vector: int, level: bool) -> bool:
        got.append((apic_id, vector, level))
        return apic_id == 0

    return IoApic(deliver), got


def _write(io: IoApic, index: int, value: int) -> None:
    io.mmio_write(IOREGSEL, 4, index)
    io.mmio_write(IOWIN, 4, value)


def _read(io: IoApic, index: int) -> int:
    io.mmio_write(IOREGSEL, 4, index)
    return io.mmio_read(IOWIN, 4)


def test_registers_at_reset() -> None:
    io, _ = _ioapic()
    assert _read(io, 1) == VERSION == 0x170020  # version 0x20, 24 pins
    assert _read(io, 0) == 0 and _read(io, 0x10) == LVT_MASKED and _read(io, 0x11) == 0
    _write(io, 0, 0x0F000000)
    assert _read(io, 0) == 0x0F000000
    assert io.mmio_read(IOREGSEL, 4) == 0


def test_edge_pin_latches_rising_edges_and_waits_for_unmasking() -> None:
    io, got = _ioapic()
    io.set_irq(4, True)  # masked: latched, not delivered
    assert got == []
    _write(io, 0x10 + 2 * 4, 0x34)  # unmask, fixed, edge, vector 0x34 to APIC 0
    assert got == [(0, 0x34, False)]
    io.set_irq(4, True)  # no new edge
    assert len(got) == 1
    io.set_irq(4, False)
    io.set_irq(4, True)
    assert got[-1] == (0, 0x34, False) and len(got) == 2


def test_level_pin_waits_for_the_eoi_with_remote_irr() -> None:
    io, got = _ioapic()
    _write(io, 0x10 + 2 * 9, 0x8000 | 0x41)  # level, vector 0x41
    io.set_irq(9, True)
    assert got == [(0, 0x41, True)] and _read(io, 0x10 + 2 * 9) & REMOTE_IRR
    _write(io, 0x10 + 2 * 9, 0x8000 | 0x41)  # remote IRR is read-only
    assert _read(io, 0x10 + 2 * 9) & REMOTE_IRR and len(got) == 1
    io.eoi(0x41)  # the line is still high: delivered again
    assert len(got) == 2
    io.set_irq(9, False)
    io.eoi(0x41)
    assert len(got) == 2 and not _read(io, 0x10 + 2 * 9) & REMOTE_IRR


def test_the_uart_thre_interrupt_reaches_the_local_apic_through_pin_4() -> None:
    platform = Q35Platform(1 * GiB, 1, lambda: 0)
    base = 0xFEC00000
    platform.mmio_write(base + IOREGSEL, 4, 0x10 + 2 * 4)
    platform.mmio_write(base + IOWIN, 4, 0x24)  # IRQ 4 -> vector 0x24, edge, APIC 0
    apic = platform.apics[0]
    apic.svr |= 1 << 8
    platform.io_write(0x3F9, 1, 0x02)  # IER: THRE interrupt on, THR empty: the line rises
    assert platform.pending_interrupt(0) == 0x24
    assert platform.io_read(0x3FA, 1) & 0x0F == 0x02  # IIR names THRE, and reading it clears it
    assert platform.io_read(0x3FA, 1) & 0x0F == 0x01 and not platform.uart.irq_level
