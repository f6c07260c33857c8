"""The 16550A UART at 0x3F8 (COM1), the TD's console: output collected, input queued.

Behaviour mirrored (QEMU 9.2 / 10.x hw/char/serial.c): the transmitter is always ready (LSR THRE|TEMT), so
every THR write is a character out; RBR pops queued input and LSR.DR says whether there is more; IIR reads 0x01
(nothing pending) or 0x02 once after a write while IER's THRE interrupt is on, with 0xC0 while the FIFOs are on;
MSR reads DCD|DSR|CTS, or the MCR outputs in loopback (where THR goes to RBR); the scratch register keeps what
was written (edk2's SerialPortLib probes it to find the UART). DLAB (LCR bit 7) maps the divisor at +0/+1.
The interrupt line (ISA IRQ 4, `irq`) follows serial_update_irq: high while IER enables a pending cause, received
data (RDI) before the transmitter's THRE; IIR names it, and reading IIR while it names THRE clears that.
Left out: FIFO trigger levels and timeouts, line-status and modem-status interrupts, break, baud-rate timing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from lazyaccept import progress
from lazyaccept.vmm.devices.base import check_size

COM1 = 0x3F8
RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
IER_RDI, IER_THRI = 0x01, 0x02
IIR_NO_INT, IIR_THRI, IIR_RDI, IIR_FIFO = 0x01, 0x02, 0x04, 0xC0
FCR_FIFO_ENABLE = 0x01
MCR_LOOP = 0x10
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80


class Uart16550:
    def __init__(self, base: int = COM1):
        self.base = base
        self.output = bytearray()
        self.input: deque[int] = deque()
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.divisor = 12  # 9600 baud at reset
        self.thr_pending = False  # the THRE interrupt, cleared by reading IIR
        self.irq: Callable[[bool], None] | None = None  # the line to the interrupt controller (IRQ 4)
        self.irq_level = False

    def _cause(self) -> int:
        if self.ier & IER_RDI and self.input:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_pending:
            return IIR_THRI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._cause() != IIR_NO_INT
        if level != self.irq_level:
            self.irq_level = level
            if self.irq is not None:
                self.irq(level)

    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")

    def feed(self, data: bytes) -> None:
        """Queue bytes for the guest to read."""
        self.input.extend(data)
        self._update_irq()

    def read(self, offset: int) -> int:
        value = self._read(offset)
        self._update_irq()
        return value

    def _read(self, offset: int) -> int:
        if offset == RBR_THR:
            if self.lcr & LCR_DLAB:
                return self.divisor & 0xFF
            return self.input.popleft() if self.input else 0
        if offset == IER:
            return (self.divisor >> 8) if self.lcr & LCR_DLAB else self.ier
        if offset == IIR_FCR:
            iir = self._cause()
            if iir == IIR_THRI:
                self.thr_pending = False
            return iir | (IIR_FIFO if self.fcr & FCR_FIFO_ENABLE else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.input else 0)
        if offset == MSR:
            if self.mcr & MCR_LOOP:  # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            return MSR_DCD | MSR_DSR | MSR_CTS
        return self.scr

    def write(self, offset: int, value: int) -> None:
        self._write(offset, value)
        self._update_irq()

    def _write(self, offset: int, value: int) -> None:
        value &= 0xFF
        if offset == RBR_THR:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF00) | value
            elif self.mcr & MCR_LOOP:
                self.input.append(value)
            else:
                self.output.append(value)
                progress.serial(value)  # the guest's console as it arrives, on a terminal (progress.py)
                self.thr_pending = True
        elif offset == IER:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
            else:
                self.ier = value & 0x0F
                self.thr_pending = bool(value & IER_THRI)  # enabling THRI with an empty THR raises it
        elif offset == IIR_FCR:
            self.fcr = value & 0xC9
            if value & 0x02:
                self.input.clear()  # FCR bit 1 clears the receive FIFO
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only

    def io_read(self, port: int, size: int) -> int:
        check_size(size, (1,), "UART access size")
        return self.read(port - self.base)

    def io_write(self, port: int, size: int, value: int) -> None:
        check_size(size, (1,), "UART access size")
        self.write(port - self.base, value)
