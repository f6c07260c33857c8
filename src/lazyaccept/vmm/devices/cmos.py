"""The MC146818 RTC/CMOS at 0x70 (index, bit 7 = NMI mask) and 0x71 (data), as q35 presents it.

Behaviour mirrored (QEMU 9.2 / 10.x): hw/rtc/mc146818rtc.c (BCD, 24-hour after reset: register B = 0x02;
register A divider 0x26 with UIP never seen set; register C cleared by reading; register D = VRT; the time read
from the clock plus an offset a guest write moves) and hw/i386/pc.c pc_cmos_init (memory sizes, CPU count,
equipment byte). The clock here is the TD's virtual clock, so runs repeat exactly.
Register B's SET bit holds the time registers as QEMU does (reads see the held values, writes change them, clearing
SET sets the clock from them) and register A's UIP bit is read-only. The DSDT describes the device (PNP0B00, ports
0x70-0x77, IRQ 8: vmm/acpi.py rtc_aml), so Linux's rtc_cmos binds to it and reads the time at boot.
Left out: alarms, periodic/update interrupts (Linux 6.12 and 7.2 request IRQ 8 but enable none of PIE/AIE/UIE on
the way to /init; a guest that does is noted in the event log, and no interrupt comes), the 12-hour mode's
writes, the checksum at 0x2E/0x2F, floppy/disk and boot-device bytes (SeaBIOS-only), the century byte's writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from lazyaccept.units import KiB, MiB
from lazyaccept.vmm.devices.base import EventLog, check_size

CMOS_INDEX = 0x70
CMOS_DATA = 0x71
CMOS_SIZE = 128
RTC_IO_LENGTH = 8  # ports the DSDT reserves (0x70-0x77), as QEMU's rtc_build_aml
RTC_ISA_IRQ = 8

SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32  # RTC_REG_IBM_CENTURY_BYTE
REG_A_UIP = 0x80
REG_B_SET = 0x80
REG_B_IRQ_ENABLES = 0x70  # PIE, AIE, UIE
REG_B_BINARY = 0x04  # DM: binary instead of BCD
REG_B_24H = 0x02
TIME_REGS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY, MONTH, YEAR, CENTURY)

DEFAULT_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # the RTC's time at virtual time 0


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0xF)


def pc_cmos_memory(ram_below_4g: int, ram_above_4g: int, vcpus: int) -> dict[int, int]:
    """The bytes pc_cmos_init writes for the RAM split and CPU count."""
    out: dict[int, int] = {}
    out[0x15], out[0x16] = 640 & 0xFF, 640 >> 8  # base memory: 640 KiB
    ext_k = min(max(ram_below_4g // KiB - 1024, 0), 0xFFFF)  # KiB above 1 MiB, saturated
    out[0x17], out[0x18] = ext_k & 0xFF, ext_k >> 8
    out[0x30], out[0x31] = ext_k & 0xFF, ext_k >> 8
    above_16m = min(max((ram_below_4g - 16 * MiB) // (64 * KiB), 0), 0xFFFF)  # 64 KiB units
    out[0x34], out[0x35] = above_16m & 0xFF, above_16m >> 8
    high = ram_above_4g // (64 * KiB)  # 64 KiB units above 4 GiB, three bytes
    out[0x5B], out[0x5C], out[0x5D] = high & 0xFF, (high >> 8) & 0xFF, (high >> 16) & 0xFF
    out[0x5F] = vcpus - 1
    out[0x14] = 0x06  # equipment: FPU present, PS/2 mouse
    return out


class Cmos:
    # class-level defaults: a snapshot's Cmos may predate these attributes
    held: dict[int, int] | None = None  # the time registers while SET holds them
    events: EventLog | None = None

    def __init__(
        self,
        now_ns: Callable[[], int],
        *,
        ram_below_4g: int,
        ram_above_4g: int,
        vcpus: int,
        epoch: dt.datetime = DEFAULT_EPOCH,
        events: EventLog | None = None,
    ):
        self.now_ns = now_ns
        self.events = events
        self.epoch = epoch
        self.offset_s = 0  # moved by guest writes to the time registers
        self.ram = bytearray(CMOS_SIZE)
        self.index = 0
        self.ram[REG_A] = 0x26
        self.ram[REG_B] = REG_B_24H
        self.ram[REG_D] = 0x80
        for at, value in pc_cmos_memory(ram_below_4g, ram_above_4g, vcpus).items():
            self.ram[at] = value

    def time(self) -> dt.datetime:
        return self.epoch + dt.timedelta(seconds=self.now_ns() // 1_000_000_000 + self.offset_s)

    def _time_fields(self) -> dict[int, int]:
        t = self.time()
        hour = t.hour
        if not self.ram[REG_B] & REG_B_24H:
            hour = (hour % 12 or 12) | (0x80 if t.hour >= 12 else 0)  # PM flag in bit 7
        fields = {
            SECONDS: t.second,
            MINUTES: t.minute,
            HOURS: hour,
            DAY_OF_WEEK: t.isoweekday() % 7 + 1,
            DAY: t.day,
            MONTH: t.month,
            YEAR: t.year % 100,
            CENTURY: t.year // 100,
        }
        if not self.ram[REG_B] & REG_B_BINARY:
            fields = {k: (_bcd(v & 0x7F) | (v & 0x80)) for k, v in fields.items()}
        return fields

    def io_read(self, port: int, size: int) -> int:
        check_size(size, (1,), "CMOS access size")
        if port == CMOS_INDEX:
            return 0xFF  # the index register is write-only
        at = self.index
        if at in TIME_REGS:
            return (self.held or self._time_fields())[at]
        value = self.ram[at]
        if at == REG_C:
            self.ram[REG_C] = 0  # reading C acknowledges
        return value

    def io_write(self, port: int, size: int, value: int) -> None:
        check_size(size, (1,), "CMOS access size")
        value &= 0xFF
        if port == CMOS_INDEX:
            self.index = value & 0x7F
            return
        at = self.index
        held = self.held
        if at in TIME_REGS:
            if held is not None:
                held[at] = value
            else:
                self._set_time({**self._time_fields(), at: value})
        elif at == REG_A:
            self.ram[REG_A] = value & ~REG_A_UIP
        elif at == REG_B:
            if value & REG_B_SET and held is None:
                self.held = self._time_fields()
            self.ram[REG_B] = value
            if held is not None and not value & REG_B_SET:
                self.held = None
                self._set_time(held)
            if value & REG_B_IRQ_ENABLES and self.events is not None:
                self.events.note("cmos.irq enable", f"register B {value:#04x}: PIE/AIE/UIE interrupts not modelled")
        elif at in (REG_C, REG_D):
            return  # read-only
        else:
            self.ram[at] = value

    def _set_time(self, fields: dict[int, int]) -> None:
        """Move the clock to the time the registers say (in the current BCD/binary mode)."""
        raw = fields if self.ram[REG_B] & REG_B_BINARY else {k: _from_bcd(v & 0x7F) for k, v in fields.items()}
        try:
            t = dt.datetime(
                raw[CENTURY] * 100 + raw[YEAR],
                raw[MONTH],
                raw[DAY],
                raw[HOURS] & 0x7F,
                raw[MINUTES],
                raw[SECONDS],
                tzinfo=dt.UTC,
            )
        except ValueError:
            return  # an impossible date while the guest writes field by field: keep the clock
        self.offset_s += int((t - self.time()).total_seconds())
