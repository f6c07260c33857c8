"""The Python firmware's ACPI install (firmware/drivers/acpi.py: AcpiTableDxe, QemuFwCfgAcpi, TdxDxe) on a small
fake core, read back and checked as a handoff's tables are (guest/acpi_check.py)."""

from __future__ import annotations

import uuid

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.acpi import AcpiTables, install_acpi_tables
from lazyaccept.guest.acpi_check import acpi_differences, acpi_summary, check_acpi, format_acpi, read_acpi
from lazyaccept.spec import guids
from lazyaccept.spec.acpi import HEADER_SIZE, MadtType, checksum8
from lazyaccept.spec.efi import EfiAllocateType as A
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi import MemoryDescriptor
from lazyaccept.units import PAGE_4K

BASE, TOP = 0x7000000, 0x8000000  # the fake's free memory: 16 MiB below 4 GiB, allocated top-down


class FakeMemory:
    def __init__(self) -> None:
        self.data = bytearray(TOP)

    def write(self, addr: int, data: bytes | bytearray, actor: str = "") -> None:
        self.data[addr : addr + len(data)] = data

    def read(self, addr: int, size: int, actor: str = "") -> bytes:
        return bytes(self.data[addr : addr + size])


class FakeDxe:
    """Top-down page allocation with a type per page, as far as the install needs it."""

    def __init__(self) -> None:
        self.next = TOP
        self.pages: dict[int, int] = {}  # page address -> memory type
        self.calls: list[tuple[int, int, int, int]] = []

    def allocate_pages(self, allocate_type: int, memory_type: int, pages: int, memory: int | None = 0):
        self.calls.append((allocate_type, memory_type, pages, memory or 0))
        self.next -= pages * PAGE_4K
        if allocate_type == A.AllocateMaxAddress and self.next + pages * PAGE_4K - 1 > (memory or 0):
            return S.OUT_OF_RESOURCES, 0
        for i in range(pages):
            self.pages[self.next + i * PAGE_4K] = memory_type
        return S.SUCCESS, self.next

    def free_pages(self, memory: int, pages: int):
        for i in range(pages):
            del self.pages[memory + i * PAGE_4K]
        return S.SUCCESS

    def memory_map(self) -> list[MemoryDescriptor]:
        return [MemoryDescriptor(t, a, 1) for a, t in sorted(self.pages.items())]


class FakeCore:
    def __init__(self) -> None:
        self.mem = FakeMemory()
        self.dxe = FakeDxe()
        self.config_tables: list[tuple[uuid.UUID, int]] = []
        self.logged: list[str] = []

    def read(self, addr: int, size: int) -> bytes:
        return self.mem.read(addr, size)

    def write(self, addr: int, data: bytes | bytearray) -> None:
        self.mem.write(addr, data)

    def w32(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(4, "little"))

    def w64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))

    def log(self, name: str, detail: str, status: int | None) -> None:
        self.logged.append(f"{name} {detail}")

    def install_configuration_table(self, guid: uuid.UUID, table: int) -> int:
        if any(g == guid for g, _ in self.config_tables):
            self.config_tables = [(g, table if g == guid else p) for g, p in self.config_tables]
        else:
            self.config_tables.append((guid, table))
        return S.SUCCESS


@pytest.fixture
def installed():
    core = FakeCore()
    tables = install_acpi_tables(core, 4)  # type: ignore[arg-type]
    return core, tables


def test_the_tables_read_back_as_linux_finds_them(installed):
    core, tables = installed
    view = read_acpi(core.read, core.config_tables)
    assert view is not None
    assert [g for g, _ in core.config_tables] == [guids.ACPI_10_TABLE, guids.ACPI_20_TABLE]
    assert view.rsdp["Revision"] == 2 and view.rsdp1 is not None and view.rsdp1["Revision"] == 0
    # the FADT lent its OEM fields; the FADT is entry 0; the old MADT is gone, the new one last
    assert view.rsdp["OemId"] == b"BOCHS " and view.xsdt.data[10:16] == b"BOCHS "
    assert [t.signature for t in view.tables] == ["FACP", "MCFG", "WAET", "APIC"]
    assert view.dsdt is not None and view.facs is not None and view.facs.address % 64 == 0
    assert check_acpi(view, core.dxe.memory_map(), 4, core.read) == []
    processors = [e for e in view.madt() if e["Type"] == MadtType.LOCAL_APIC]
    assert [e["ApicId"] for e in processors] == [0, 1, 2, 3]
    wakeup = view.wakeup()
    assert wakeup == {"Type": 0x10, "Length": 16, "MailBoxVersion": 0, "Reserved": 0,
                      "MailBoxAddress": tables.wakeup_mailbox}
    assert core.dxe.pages[tables.wakeup_mailbox] == M.EfiACPIMemoryNVS
    assert core.read(tables.wakeup_mailbox, 8) == bytes(4) + b"\xff" * 4  # Noop, APIC ID invalid
    rsdt = view.rsdp1["RsdtAddress"]
    raw = core.read(rsdt, int.from_bytes(core.read(rsdt + 4, 4), "little"))
    assert checksum8(raw) == 0 and len(raw) == HEADER_SIZE + 4 * 4


def test_wakeup_structure_version_1_from_406f42cb74() -> None:
    core = FakeCore()
    tables = install_acpi_tables(core, 2, wakeup_version=1)  # type: ignore[arg-type]
    madt = read_acpi(core.read, core.config_tables).find("APIC")
    assert madt is not None
    raw = madt.data[-24:]
    assert raw[:4] == b"\x10\x18\x01\x00"  # type 0x10, 24 bytes, MailBoxVersion 1
    assert int.from_bytes(raw[8:16], "little") == tables.wakeup_mailbox
    assert int.from_bytes(raw[16:24], "little") == tables.wakeup_mailbox + PAGE_4K  # the relocated loop's page


def test_memory_types_as_edk2_allocates_them(installed):
    core, tables = installed
    kinds = {t.signature: core.dxe.pages[t.address] for t in tables.tables}
    assert kinds.pop(b"FACS") == M.EfiACPIMemoryNVS
    assert set(kinds.values()) == {M.EfiACPIReclaimMemory}
    # QEMU's blobs: NVS, the tables blob below 4 GiB, both freed once the tables were installed
    blob_calls = [c for c in core.dxe.calls if c[1] == M.EfiACPIMemoryNVS and c[2] == 32]
    assert blob_calls == [(A.AllocateMaxAddress, M.EfiACPIMemoryNVS, 32, 0xFFFFFFFF)]
    for address, _pages in tables.blobs.values():
        assert address not in core.dxe.pages
    # the mailbox: AllocateAnyPages, the AP loop's page after it
    assert (A.AllocateAnyPages, M.EfiACPIMemoryNVS, 2, 0) in core.dxe.calls
    assert core.dxe.pages[tables.wakeup_mailbox + PAGE_4K] == M.EfiACPIMemoryNVS


def test_report_lines_and_summary(installed):
    core, _ = installed
    view = read_acpi(core.read, core.config_tables)
    summary = acpi_summary(view, core.dxe.memory_map())
    assert summary is not None and summary["wakeup_mailbox"] is not None
    assert summary["fadt"]["PM1A_CNT_BLK"] == 0x604
    lines = format_acpi(summary)
    assert "tables: FACP MCFG WAET APIC" in lines[0] and "checksums ok" in lines[1]
    assert "4 processors" in lines[2] and "wakeup mailbox" in lines[2]
    assert format_acpi(None) == ["  ACPI:    no tables installed"]


def test_problems_are_named():
    assert check_acpi(None, [], 1) == [
        "no ACPI tables: the configuration table has no ACPI 2.0 entry (Linux in a TD needs the MADT)"]
    core = FakeCore()
    tables = AcpiTables(core)  # type: ignore[arg-type]
    tables.construct()
    from lazyaccept.vmm.acpi import AcpiMachine, build_acpi

    build = build_acpi(AcpiMachine(2, 0x600, None))
    tables.install_qemu_tables(build.files(), build.loader)  # no TdxDxe: no wakeup structure
    view = read_acpi(core.read, core.config_tables)
    problems = check_acpi(view, core.dxe.memory_map(), 3, core.read)
    assert "the MADT has 2 enabled processors for 3 vCPUs" in problems
    assert any("no multiprocessor wakeup structure" in p for p in problems)
    # a corrupted table's checksum
    fadt = view.find("FACP")
    core.write(fadt.address + 40, b"\x01")
    view = read_acpi(core.read, core.config_tables)
    assert any(p.startswith("FACP at") and "bad checksum" in p for p in check_acpi(view, [], None))
    with pytest.raises(InputError, match="second DSDT"):
        tables.install(view.dsdt.data)


def test_two_installs_compare_equal_but_for_what_differs():
    a, b = FakeCore(), FakeCore()
    install_acpi_tables(a, 2)  # type: ignore[arg-type]
    install_acpi_tables(b, 3)  # type: ignore[arg-type]
    va, vb = read_acpi(a.read, a.config_tables), read_acpi(b.read, b.config_tables)
    assert acpi_differences(va, va) == []
    diffs = acpi_differences(va, vb)
    assert any(d.startswith("MADT structures differ") for d in diffs)
    assert acpi_differences(va, None) == ["only one handoff has ACPI tables"]


def test_a_malformed_madt_is_one_error_at_reading(installed):
    core, _ = installed
    view = read_acpi(core.read, core.config_tables)
    madt = view.find("APIC")
    core.write(madt.address + 44 + 1, b"\x00")  # the first structure's Length: 0
    with pytest.raises(InputError, match="MADT entry of type 0x0 has length 0"):
        read_acpi(core.read, core.config_tables)
