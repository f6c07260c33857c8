"""The q35 I/O APIC at 0xFEC00000, as a TD reaches it: MMIO by instruction, a #VE the guest turns into
TDG.VP.VMCALL<#VE.RequestMMIO>, which the VMM answers here.

Behaviour mirrored (QEMU 9.2 / 10.x hw/intc/ioapic.c and ioapic_internal.h): version 0x20 with 24 pins;
IOREGSEL at +0x00 and IOWIN at +0x10 (32-bit accesses), the EOI register at +0x40; ID (bits 27:24), VERSION
(0x20 | 23 << 16) and ARB registers; a redirection entry per pin, 64 bits at index 0x10 + 2 * pin, masked at
reset, with delivery status and remote IRR read-only. A pin's input goes through `set_irq`: an edge-triggered pin
latches a rising edge, a level-triggered one follows the line and, once delivered, waits with remote IRR set for
the EOI of its vector (the local APIC's broadcast EOI, or a write of the vector to the EOI register).
Delivery is fixed or lowest-priority to the physical APIC ID in bits 63:56 (the 8-bit destination a TD without
interrupt remapping uses), by raising the vector in that local APIC's IRR.
Left out: logical destination mode, NMI/INIT/ExtINT delivery modes, the KVM split-irqchip details.
"""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept.vmm.devices.base import EventLog

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
IOREGSEL, IOWIN, IOEOI = 0x00, 0x10, 0x40
REG_ID, REG_VER, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
NUM_PINS = 24
VERSION = 0x20 | ((NUM_PINS - 1) << 16)
ID_SHIFT, ID_MASK = 24, 0xF
LVT_MASKED = 1 << 16
TRIGGER_LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
DELIVERY_STATUS = 1 << 12
DEST_LOGICAL = 1 << 11
DELIVERY_MODE_SHIFT = 8
RO_BITS = REMOTE_IRR | DELIVERY_STATUS
FIXED, LOWEST_PRIORITY = 0, 1


class IoApic:
    """`deliver(apic_id, vector, level)` raises a vector in a local APIC (level: its EOI is to come back to
    `eoi`); it returns False for an ID no vCPU has."""

    def __init__(self, deliver: Callable[[int, int, bool], bool], events: EventLog | None = None, ioapic_id: int = 0):
        self.deliver = deliver
        self.events = events or EventLog()
        self.id = ioapic_id
        self.ioregsel = 0
        self.redtbl = [LVT_MASKED] * NUM_PINS
        self.irr = 0  # pins with an interrupt to deliver
        self.lines = 0  # input levels, by pin

    # --- MMIO -----------------------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        """ioapic_mem_read: IOREGSEL reads back; IOWIN reads the selected register (32 bits)."""
        if offset == IOREGSEL:
            return self.ioregsel
        if offset != IOWIN or size != 4:
            return 0
        index = self.ioregsel
        if index == REG_ID:
            return (self.id & ID_MASK) << ID_SHIFT
        if index in (REG_VER, REG_ARB):
            return VERSION if index == REG_VER else 0
        pin = (index - REG_REDTBL) >> 1
        if 0 <= pin < NUM_PINS:
            entry = self.redtbl[pin]
            return entry >> 32 & 0xFFFFFFFF if index & 1 else entry & 0xFFFFFFFF
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        """ioapic_mem_write: IOREGSEL selects; IOWIN writes the register; the EOI register takes a vector."""
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
            return
        if offset == IOEOI:
            self.eoi(value & 0xFF)
            return
        if offset != IOWIN or size != 4:
            return
        index = self.ioregsel
        if index == REG_ID:
            self.id = (value >> ID_SHIFT) & ID_MASK
            return
        pin = (index - REG_REDTBL) >> 1
        if not 0 <= pin < NUM_PINS:
            return
        entry = self.redtbl[pin]
        ro = entry & RO_BITS
        if index & 1:
            entry = (entry & 0xFFFFFFFF) | ((value & 0xFFFFFFFF) << 32)
        else:
            entry = (entry & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)
        entry = (entry & ~RO_BITS) | ro
        if not entry & TRIGGER_LEVEL:
            entry &= ~REMOTE_IRR  # ioapic_mem_write: an edge-triggered entry has no remote IRR
        self.redtbl[pin] = entry
        self.events.count("ioapic.redtbl write")
        self._service()

    # --- the pins -------------------------------------------------------------------------------------

    def set_irq(self, pin: int, level: bool) -> None:
        """ioapic_set_irq: a device's line. Edge: a rising edge latches; level: IRR follows the line."""
        if not 0 <= pin < NUM_PINS:
            return
        bit = 1 << pin
        was = bool(self.lines & bit)
        self.lines = (self.lines | bit) if level else (self.lines & ~bit)
        if self.redtbl[pin] & TRIGGER_LEVEL:
            self.irr = (self.irr | bit) if level else (self.irr & ~bit)
        elif level and not was:
            self.irr |= bit
        self._service()

    def eoi(self, vector: int) -> None:
        """ioapic_eoi_broadcast: remote IRR clears on the pins of `vector`; a line still high delivers again."""
        for pin, entry in enumerate(self.redtbl):
            if entry & REMOTE_IRR and entry & 0xFF == vector:
                self.redtbl[pin] = entry & ~REMOTE_IRR
        self._service()

    def _service(self) -> None:
        """ioapic_service: deliver each pending, unmasked pin; a level pin then waits for its EOI."""
        for pin in range(NUM_PINS):
            bit = 1 << pin
            entry = self.redtbl[pin]
            if not self.irr & bit or entry & LVT_MASKED:
                continue
            level = bool(entry & TRIGGER_LEVEL)
            if level and entry & REMOTE_IRR:
                continue
            mode = (entry >> DELIVERY_MODE_SHIFT) & 7
            if mode not in (FIXED, LOWEST_PRIORITY) or entry & DEST_LOGICAL:
                self.events.note("ioapic.unsupported", f"pin {pin}: entry {entry:#x}")
                self.irr &= ~bit
                continue
            if not level:
                self.irr &= ~bit
            else:
                self.redtbl[pin] = entry | REMOTE_IRR
            self.events.count(f"ioapic.irq {pin}")
            if not self.deliver(entry >> 56, entry & 0xFF, level):
                self.events.note("ioapic.undelivered", f"pin {pin}: no APIC ID {entry >> 56}")
