"""CMOS/RTC, the ACPI PM timer and the 16550 UART."""

from __future__ import annotations

from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.devices.acpi_pm import PM_TIMER_HZ, AcpiPm, pm_timer_ticks
from lazyaccept.vmm.devices.base import EventLog
from lazyaccept.vmm.devices.cmos import Cmos, pc_cmos_memory
from lazyaccept.vmm.devices.uart import Uart16550

from .conftest import Clock


def cmos_read(c: Cmos, index: int) -> int:
    c.io_write(0x70, 1, index | 0x80)  # NMI mask bit is ignored
    return c.io_read(0x71, 1)


def test_cmos_memory_bytes_as_pc_cmos_init() -> None:
    m = pc_cmos_memory(2 * GiB, 6 * GiB, 4)
    assert (m[0x34] | m[0x35] << 8) == (2 * GiB - 16 * MiB) // (64 << 10)
    assert (m[0x5B] | m[0x5C] << 8 | m[0x5D] << 16) == 6 * GiB // (64 << 10)
    assert (m[0x30] | m[0x31] << 8) == 0xFFFF  # saturated
    assert m[0x5F] == 3
    small = pc_cmos_memory(8 * MiB, 0, 1)
    assert (small[0x34], small[0x35], small[0x5B]) == (0, 0, 0)
    assert (small[0x30] | small[0x31] << 8) == 7 * 1024


def test_rtc_on_virtual_clock(clock: Clock) -> None:
    c = Cmos(clock, ram_below_4g=2 * GiB, ram_above_4g=0, vcpus=1)
    assert [cmos_read(c, r) for r in (0x09, 0x08, 0x07, 0x04, 0x02, 0x00, 0x32)] == [0x25, 1, 1, 0, 0, 0, 0x20]
    clock.ns = (3600 * 13 + 61) * 10**9
    assert [cmos_read(c, r) for r in (0x04, 0x02, 0x00)] == [0x13, 0x01, 0x01]  # BCD
    assert cmos_read(c, 0x0A) & 0x80 == 0 and cmos_read(c, 0x0B) == 0x02 and cmos_read(c, 0x0D) == 0x80
    c.io_write(0x70, 1, 0x04)
    c.io_write(0x71, 1, 0x20)  # the guest sets the hour
    assert cmos_read(c, 0x04) == 0x20 and cmos_read(c, 0x02) == 0x01
    c.io_write(0x70, 1, 0x40)
    c.io_write(0x71, 1, 0x5A)
    assert cmos_read(c, 0x40) == 0x5A


def cmos_write(c: Cmos, index: int, value: int) -> None:
    c.io_write(0x70, 1, index)
    c.io_write(0x71, 1, value)


def test_rtc_set_bit_holds_the_time_registers(clock: Clock) -> None:
    """As Linux's mc146818_set_time: SET in register B, the fields written, SET cleared: the clock moves then."""
    c = Cmos(clock, ram_below_4g=2 * GiB, ram_above_4g=0, vcpus=1)
    cmos_write(c, 0x0B, 0x82)
    for reg, value in ((0x09, 0x26), (0x08, 0x12), (0x07, 0x31), (0x04, 0x23), (0x02, 0x59), (0x00, 0x58)):
        cmos_write(c, reg, value)
    clock.ns = 5 * 10**9
    assert cmos_read(c, 0x00) == 0x58 and cmos_read(c, 0x09) == 0x26  # held: neither the clock nor the writes
    cmos_write(c, 0x0B, 0x02)
    assert c.time().isoformat() == "2026-12-31T23:59:58+00:00"
    clock.ns = 7 * 10**9
    assert [cmos_read(c, r) for r in (0x09, 0x08, 0x07, 0x04, 0x02, 0x00, 0x32)] == [0x27, 1, 1, 0, 0, 0, 0x20]
    cmos_write(c, 0x0B, 0x06)  # binary mode: the same time, read without BCD
    assert cmos_read(c, 0x00) == 0 and cmos_read(c, 0x09) == 27


def test_rtc_read_only_bits_and_interrupt_requests(clock: Clock) -> None:
    events = EventLog()
    c = Cmos(clock, ram_below_4g=2 * GiB, ram_above_4g=0, vcpus=1, events=events)
    cmos_write(c, 0x0A, 0xA6)  # UIP is the chip's
    assert cmos_read(c, 0x0A) == 0x26
    cmos_write(c, 0x0D, 0)
    assert cmos_read(c, 0x0D) == 0x80  # VRT: the battery is good
    assert not events.counts
    cmos_write(c, 0x0B, 0x42)  # PIE: periodic interrupts are not delivered, so the request is on record
    assert events.counts["cmos.irq enable"] == 1 and "0x42" in events.lines[-1]


def test_pm_timer_rate(clock: Clock) -> None:
    pm = AcpiPm(clock)
    assert pm.read(8, 4) == 0
    clock.ns = 10**9
    assert pm.read(8, 4) == PM_TIMER_HZ & 0xFFFFFF
    clock.ns = 10**9 + 1_000_000
    assert pm.read(8, 4) - PM_TIMER_HZ == 3579  # 1 ms
    assert pm_timer_ticks((1 << 24) * 10**9 // PM_TIMER_HZ + 1000) < 10  # wraps at 24 bits
    assert pm.read(8, 2) == 0xFFFF  # the timer takes dword reads only
    pm.write(0x02, 2, 0x0121)
    assert pm.read(0x02, 2) == 0x0121
    pm.regs[0] = 0x31
    pm.write(0x00, 2, 0x0001)  # write 1 to clear
    assert pm.read(0x00, 2) == 0x30
    pm.write(0x04, 2, 0x2001)  # SLP_EN, SLP_TYP 0: power off
    assert pm.poweroff_requests == 1 and pm.read(0x04, 2) == 0x0001


def test_uart_scratch_output_and_input() -> None:
    u = Uart16550()
    u.io_write(0x3FF, 1, 0x5A)
    assert u.io_read(0x3FF, 1) == 0x5A  # SerialPortLib's probe
    assert u.io_read(0x3FD, 1) == 0x60  # THRE | TEMT
    for ch in b"Hi\n":
        u.io_write(0x3F8, 1, ch)
    assert u.text() == "Hi\n"
    u.io_write(0x3FB, 1, 0x83)  # DLAB
    u.io_write(0x3F8, 1, 0x01)
    u.io_write(0x3F9, 1, 0x00)
    u.io_write(0x3FB, 1, 0x03)
    assert u.divisor == 1 and u.text() == "Hi\n"
    assert u.io_read(0x3FA, 1) == 0x01
    u.io_write(0x3FA, 1, 0x07)
    assert u.io_read(0x3FA, 1) == 0xC1
    u.feed(b"k")
    assert u.io_read(0x3FD, 1) & 1 and u.io_read(0x3F8, 1) == ord("k") and not u.io_read(0x3FD, 1) & 1
    assert u.io_read(0x3FE, 1) == 0xB0
    u.io_write(0x3FC, 1, 0x1F)  # loopback: THR goes to RBR, MSR follows MCR
    assert u.io_read(0x3FE, 1) == 0xF0
    u.io_write(0x3F8, 1, 0x41)
    assert u.io_read(0x3F8, 1) == 0x41 and u.text() == "Hi\n"
