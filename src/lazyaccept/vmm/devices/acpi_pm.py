"""ICH9's ACPI power-management I/O block at PMBASE (placed and enabled through the LPC bridge).

Behaviour mirrored (QEMU 9.2 / 10.x hw/acpi/ich9.c, hw/acpi/core.c): PM1 status (write 1 to clear) at +0,
enable at +2, control at +4 (SLP_EN with SLP_TYP 0 = S5 is a power-off request), the PM timer at +8 (32-bit
reads only; 3.579545 MHz, 24 bits, from the virtual clock: acpi_pm_tmr_get), GPE0 at +0x20, SMI_EN at +0x30.
Left out: SCI delivery, sleep states other than the power-off request, TCO, SMI.
"""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept.vmm.devices.base import EventLog, ones

PM_SIZE = 0x80
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x00, 0x02, 0x04, 0x08
PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFFFFFF
SLP_EN = 1 << 13


def pm_timer_ticks(now_ns: int) -> int:
    """The PM timer's value at now_ns: ticks since virtual time 0, modulo 2**24."""
    return (now_ns * PM_TIMER_HZ // 1_000_000_000) & PM_TIMER_MASK


class AcpiPm:
    def __init__(self, now_ns: Callable[[], int], events: EventLog | None = None):
        self.now_ns = now_ns
        self.events = events or EventLog()
        self.regs = bytearray(PM_SIZE)
        self.poweroff_requests = 0

    def read(self, offset: int, size: int) -> int:
        if offset == PM_TMR:
            if size != 4:
                return ones(size)  # the timer region takes 4-byte accesses only
            return pm_timer_ticks(self.now_ns())
        if offset + size > PM_SIZE or PM_TMR < offset + size and offset < PM_TMR + 4:
            return ones(size)
        return int.from_bytes(self.regs[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset + size > PM_SIZE or PM_TMR < offset + size and offset < PM_TMR + 4:
            return
        data = value.to_bytes(size, "little")
        for i, b in enumerate(data):  # at most 4 bytes
            at = offset + i
            if at < PM1_EN:
                self.regs[at] &= ~b & 0xFF  # PM1_STS: write 1 to clear
            else:
                self.regs[at] = b
        cnt = int.from_bytes(self.regs[PM1_CNT : PM1_CNT + 2], "little")
        if cnt & SLP_EN:
            self.regs[PM1_CNT + 1] &= ~(SLP_EN >> 8) & 0xFF  # SLP_EN reads back 0
            if (cnt >> 10) & 7 == 0:
                self.poweroff_requests += 1
                self.events.note("platform.poweroff", f"PM1_CNT write {cnt:#x}: S5 requested")
