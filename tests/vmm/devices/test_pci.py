"""q35 PCI: mechanism #1, MCH and LPC ids and registers, PCIEXBAR and the ECAM window, BAR sizing."""

from __future__ import annotations

import pytest

from lazyaccept.vmm.devices.base import GuestInputError
from lazyaccept.vmm.devices.pci import PciHost


def cfg_read(pci: PciHost, dev: int, fn: int, reg: int, size: int = 4) -> int:
    pci.io_write(0xCF8, 4, 0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xFC))
    return pci.io_read(0xCFC + (reg & 3), size)


def cfg_write(pci: PciHost, dev: int, fn: int, reg: int, value: int, size: int = 4) -> None:
    pci.io_write(0xCF8, 4, 0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xFC))
    pci.io_write(0xCFC + (reg & 3), size, value)


def test_ids_and_absent_functions() -> None:
    pci = PciHost()
    assert cfg_read(pci, 0, 0, 0) == 0x29C08086
    assert cfg_read(pci, 0x1F, 0, 0) == 0x29188086
    assert cfg_read(pci, 0x1F, 0, 2, 2) == 0x2918  # word at 0xCFE
    assert cfg_read(pci, 0x1F, 0, 0x0A, 2) == 0x0601  # ISA bridge
    assert cfg_read(pci, 0x1F, 0, 0x0E, 1) == 0x80  # multifunction
    assert cfg_read(pci, 0, 0, 0x0B, 1) == 0x06
    assert cfg_read(pci, 3, 0, 0) == 0xFFFFFFFF
    assert cfg_read(pci, 0x1F, 5, 0, 2) == 0xFFFF
    pci.io_write(0xCF8, 4, 0)  # enable bit clear: data port reads all ones
    assert pci.io_read(0xCFC, 4) == 0xFFFFFFFF
    assert pci.io_read(0xCF8, 4) == 0


def test_bar_sizing_on_functions_without_bars() -> None:
    pci = PciHost()
    for dev in (0, 0x1F):
        cfg_write(pci, dev, 0, 0x10, 0xFFFFFFFF)
        assert cfg_read(pci, dev, 0, 0x10) == 0  # no BAR implemented
    cfg_write(pci, 0, 0, 0x04, 0x0007, 2)
    assert cfg_read(pci, 0, 0, 0x04, 2) == 0x0007
    cfg_write(pci, 0, 0, 0x00, 0x12345678)  # ids are read-only
    assert cfg_read(pci, 0, 0, 0) == 0x29C08086


def test_pciexbar_opens_ecam() -> None:
    pci = PciHost()
    assert pci.ecam_window() is None
    assert cfg_read(pci, 0, 0, 0x60) == 0xB0000000  # reset value, disabled
    cfg_write(pci, 0, 0, 0x64, 0)
    cfg_write(pci, 0, 0, 0x60, 0xE0000001)  # what OVMF programs
    assert pci.ecam_window() == (0xE0000000, 256 << 20)
    assert pci.ecam_read(0, 4) == 0x29C08086
    assert pci.ecam_read((0x1F << 15) | 0x40, 4) == 0x1  # PMBASE's I/O indicator
    pci.ecam_write((0x1F << 15) | 0x40, 4, 0x601)
    assert cfg_read(pci, 0x1F, 0, 0x40) == 0x601
    assert pci.ecam_read(1 << 20, 4) == 0xFFFFFFFF  # bus 1: nothing
    assert pci.ecam_read(0x100, 4) == 0xFFFFFFFF  # beyond a conventional function's 256 bytes
    cfg_write(pci, 0, 0, 0x60, 0xE0000005)  # length 64 MiB
    assert pci.ecam_window() == (0xE0000000, 64 << 20)
    with pytest.raises(GuestInputError, match="ECAM offset"):
        pci.ecam_read(2, 4)


def test_lpc_registers() -> None:
    pci = PciHost()
    assert pci.lpc.pm_base is None
    cfg_write(pci, 0x1F, 0, 0x40, 0x600)
    assert cfg_read(pci, 0x1F, 0, 0x40) == 0x601
    assert pci.lpc.pm_base is None  # not until ACPI_EN
    cfg_write(pci, 0x1F, 0, 0x44, 0x80, 1)
    assert pci.lpc.pm_base == 0x600
    assert cfg_read(pci, 0x1F, 0, 0x60) == 0x80808080
    cfg_write(pci, 0x1F, 0, 0x60, 0x0A, 1)
    cfg_write(pci, 0x1F, 0, 0x6B, 0xFB, 1)
    assert cfg_read(pci, 0x1F, 0, 0x60) == 0x8080800A
    assert cfg_read(pci, 0x1F, 0, 0x68) == 0x8B808080  # reserved bits 6:4 stay 0
    cfg_write(pci, 0x1F, 0, 0xF0, 0xFED1C001)
    assert cfg_read(pci, 0x1F, 0, 0xF0) == 0xFED1C001


def test_reset_control() -> None:
    pci = PciHost()
    pci.io_write(0xCF9, 1, 0x02)
    assert pci.reset_requests == 0 and pci.io_read(0xCF9, 1) == 0x02
    pci.io_write(0xCF9, 1, 0x06)
    assert pci.reset_requests == 1
    with pytest.raises(GuestInputError, match="PCI config port access size"):
        pci.io_read(0xCFC, 3)
