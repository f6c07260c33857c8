"""q35's PCI: configuration mechanism #1 at 0xCF8/0xCFC, the MCH host bridge with its PCIEXBAR-enabled ECAM
window, the ICH9 LPC bridge, and the reset control register at 0xCF9.

Behaviour mirrored (QEMU 9.2 / 10.x): hw/pci/pci_host.c (address register only on 32-bit accesses at 0xCF8,
bit 31 enables the data port, absent functions read all ones); hw/pci-host/q35.c (MCH 8086:29c0, PCIEXBAR at
0x60 with enable bit 0 and length bits 2:1, reset value 0xb0000000 disabled); hw/isa/lpc_ich9.c (LPC 8086:2918
revision 2, multifunction; PMBASE 0x40 with bit 0 hard-wired, ACPI_CNTL 0x44, PIRQ routing 0x60-0x63 and
0x68-0x6B reset to 0x80, RCBA 0xF0, RCR at 0xCF9); hw/pci/pci.c (subsystem 1af4:1100, writable masks).
Left out: the other q35 functions (VGA 00:01.0, AHCI 00:1f.2 8086:2922, SMBus 00:1f.3 8086:2930, NICs; add them
with PciHost.add), PAM/SMRAM effects, TSEG size query, capabilities, bridges and buses other than 0.
"""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept.vmm.devices.base import EventLog, GuestInputError, check_size, ones

CONFIG_ADDRESS = 0xCF8
RESET_CONTROL = 0xCF9
CONFIG_DATA = 0xCFC
CONFIG_SPACE = 256  # conventional functions: offsets 256..4095 through ECAM read all ones

PCI_VENDOR_INTEL = 0x8086
SUBSYSTEM_VENDOR = 0x1AF4  # PCI_SUBVENDOR_ID_REDHAT_QUMRANET, set on every QEMU device
SUBSYSTEM_ID = 0x1100

MCH_DEVICE_ID = 0x29C0
MCH_PCIEXBAR = 0x60
PCIEXBAR_RESET = 0xB0000000  # MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT, disabled until firmware sets bit 0
PCIEXBAR_LENGTHS = {0: 256 << 20, 1: 128 << 20, 2: 64 << 20}  # bits 2:1; 3 is reserved (QEMU: treated as 256M)

LPC_DEVICE_ID = 0x2918
LPC_REVISION = 0x02
LPC_PMBASE = 0x40
LPC_ACPI_CNTL = 0x44
ACPI_EN = 0x80
LPC_PIRQ_A_D = 0x60
LPC_PIRQ_E_H = 0x68
PIRQ_DEFAULT = 0x80  # routing disabled
LPC_RCBA = 0xF0

RCR_SYS_RST = 0x02
RCR_RST_CPU = 0x04


class PciFunction:
    """One function's 256-byte configuration space with QEMU-style write masks (and write-1-to-clear status)."""

    def __init__(
        self, name: str, vendor: int, device: int, class_code: int, *, revision: int = 0, header_type: int = 0
    ):
        self.name = name
        self.config = bytearray(CONFIG_SPACE)
        self.wmask = bytearray(CONFIG_SPACE)
        self.w1cmask = bytearray(CONFIG_SPACE)
        self.set(0x00, vendor, 2)
        self.set(0x02, device, 2)
        self.set(0x08, revision | (class_code << 8), 4)  # revision, prog-if, subclass, class
        self.set(0x0E, header_type, 1)
        self.set(0x2C, SUBSYSTEM_VENDOR, 2)
        self.set(0x2E, SUBSYSTEM_ID, 2)
        # pci_init_wmask: command (I/O, memory, bus master, parity, SERR, INTx disable), cache line, latency,
        # interrupt line; status error bits are write-1-to-clear. No BARs, so BAR sizing reads back 0.
        self.set_mask(0x04, 0x0547, 2)
        self.set_mask(0x0C, 0xFF, 1)
        self.set_mask(0x0D, 0xFF, 1)
        self.set_mask(0x3C, 0xFF, 1)
        self.w1cmask[0x07] = 0xF9
        self.on_write: Callable[[int, int], None] | None = None  # (offset, size) after a write

    def set(self, offset: int, value: int, size: int) -> None:
        self.config[offset : offset + size] = value.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.config[offset : offset + size], "little")

    def set_mask(self, offset: int, mask: int, size: int) -> None:
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def read(self, offset: int, size: int) -> int:
        if offset + size > CONFIG_SPACE:
            return ones(size)
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset + size > CONFIG_SPACE:
            return
        for i in range(size):  # at most 4 bytes
            b = (value >> (8 * i)) & 0xFF
            at = offset + i
            w, c = self.wmask[at], self.w1cmask[at]
            self.config[at] = (self.config[at] & ~w & ~(b & c)) | (b & w)
        if self.on_write:
            self.on_write(offset, size)


class Mch(PciFunction):
    """00:00.0, the Q35 host bridge; PCIEXBAR opens the MMCONFIG (ECAM) window."""

    def __init__(self) -> None:
        super().__init__("mch", PCI_VENDOR_INTEL, MCH_DEVICE_ID, 0x060000)
        self.set(MCH_PCIEXBAR, PCIEXBAR_RESET, 8)
        # base bits 35:26 (the length decides which are used), length bits 2:1, enable bit 0
        self.set_mask(MCH_PCIEXBAR, 0x0000000F_FC000007, 8)
        self.set_mask(0x90, (1 << 56) - 1, 7)  # PAM0-6: stored, no effect modelled
        self.set_mask(0x9D, 0xFF, 2)  # SMRAM, ESMRAMC: stored

    def ecam(self) -> tuple[int, int] | None:
        """(base, length) of the MMCONFIG window, or None while disabled."""
        bar = self.get(MCH_PCIEXBAR, 8)
        if not bar & 1:
            return None
        length = PCIEXBAR_LENGTHS.get((bar >> 1) & 3, 256 << 20)
        base = bar & ((1 << 36) - 1) & ~(length - 1)
        return base, length


class Lpc(PciFunction):
    """00:1f.0, the ICH9 LPC/ISA bridge: where the ACPI PM I/O block is placed and enabled."""

    def __init__(self) -> None:
        super().__init__("lpc", PCI_VENDOR_INTEL, LPC_DEVICE_ID, 0x060100, revision=LPC_REVISION, header_type=0x80)
        self.set(LPC_PMBASE, 0x1, 4)  # bit 0: I/O space indicator, read-only
        self.set_mask(LPC_PMBASE, 0xFF80, 4)  # 128-byte aligned base in bits 15:7
        self.set_mask(LPC_ACPI_CNTL, ACPI_EN | 0x07, 1)  # ACPI_EN, SCI_IRQ_SEL
        for base in (LPC_PIRQ_A_D, LPC_PIRQ_E_H):
            self.set(base, PIRQ_DEFAULT * 0x01010101, 4)
            self.set_mask(base, 0x8F8F8F8F, 4)
        self.set_mask(LPC_RCBA, 0xFFFFC001, 4)
        self.set_mask(0xA0, 0xFFFF, 2)  # GEN_PMCON_1: stored

    @property
    def pm_base(self) -> int | None:
        """The ACPI PM I/O base while ACPI_EN is set (ich9_lpc_pmbase_sci_update), else None."""
        if not self.get(LPC_ACPI_CNTL, 1) & ACPI_EN:
            return None
        return self.get(LPC_PMBASE, 4) & 0xFF80


class PciHost:
    """Bus 0 of the q35 root complex, reached through 0xCF8/0xCFC and through ECAM."""

    def __init__(self, events: EventLog | None = None):
        self.events = events or EventLog()
        self.mch = Mch()
        self.lpc = Lpc()
        self.functions: dict[tuple[int, int, int], PciFunction] = {}
        self.add(0, 0, 0, self.mch)
        self.add(0, 0x1F, 0, self.lpc)
        self.address = 0
        self.reset_control = 0
        self.reset_requests = 0

    def add(self, bus: int, dev: int, fn: int, function: PciFunction) -> None:
        self.functions[(bus, dev, fn)] = function

    def config_read(self, bus: int, dev: int, fn: int, offset: int, size: int) -> int:
        function = self.functions.get((bus, dev, fn))
        self.events.count(f"pci.cfg read {function.name if function else 'absent'}")
        return ones(size) if function is None else function.read(offset, size)

    def config_write(self, bus: int, dev: int, fn: int, offset: int, size: int, value: int) -> None:
        function = self.functions.get((bus, dev, fn))
        self.events.count(f"pci.cfg write {function.name if function else 'absent'}")
        if function is not None:
            function.write(offset, size, value)

    # --- mechanism #1 ---------------------------------------------------------------------------------

    def _decode(self) -> tuple[int, int, int, int] | None:
        a = self.address
        if not a >> 31:
            return None
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 7, a & 0xFC

    def io_read(self, port: int, size: int) -> int:
        check_size(size, (1, 2, 4), "PCI config port access size")
        if port == CONFIG_ADDRESS and size == 4:
            return self.address
        if port == RESET_CONTROL and size == 1:
            return self.reset_control
        if CONFIG_DATA <= port < CONFIG_DATA + 4 and (port & 3) + size <= 4:
            where = self._decode()
            if where is None:
                return ones(size)
            bus, dev, fn, reg = where
            return self.config_read(bus, dev, fn, reg | (port & 3), size)
        return ones(size)

    def io_write(self, port: int, size: int, value: int) -> None:
        check_size(size, (1, 2, 4), "PCI config port access size")
        if port == CONFIG_ADDRESS and size == 4:
            self.address = value & 0xFFFFFFFF  # kept whole, as pci_host_config_write does
        elif port == RESET_CONTROL and size == 1:
            self.reset_control = value & RCR_SYS_RST
            if value & RCR_RST_CPU:
                self.reset_requests += 1
                self.events.note("platform.reset", f"RCR write {value:#x}: reset requested")
        elif CONFIG_DATA <= port < CONFIG_DATA + 4 and (port & 3) + size <= 4:
            where = self._decode()
            if where is not None:
                bus, dev, fn, reg = where
                self.config_write(bus, dev, fn, reg | (port & 3), size, value)

    # --- ECAM -------------------------------------------------------------------------------------------

    def ecam_window(self) -> tuple[int, int] | None:
        return self.mch.ecam()

    def ecam_read(self, offset: int, size: int) -> int:
        check_size(size, (1, 2, 4), "ECAM access size")
        bus, dev, fn, reg = offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7, offset & 0xFFF
        if reg & (size - 1):
            raise GuestInputError(f"unaligned ECAM access at {offset:#x}", field="ECAM offset")
        return self.config_read(bus, dev, fn, reg, size)

    def ecam_write(self, offset: int, size: int, value: int) -> None:
        check_size(size, (1, 2, 4), "ECAM access size")
        bus, dev, fn, reg = offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 7, offset & 0xFFF
        if reg & (size - 1):
            raise GuestInputError(f"unaligned ECAM access at {offset:#x}", field="ECAM offset")
        self.config_write(bus, dev, fn, reg, size, value)
