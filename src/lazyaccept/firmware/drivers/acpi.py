"""The ACPI tables of a q35 TD as OVMF installs them: QEMU's fw_cfg files run through the linker/loader script
(OvmfPkg/Library/AcpiPlatformLib/QemuFwCfgAcpi.c), each table installed through EFI_ACPI_TABLE_PROTOCOL
(MdeModulePkg/Universal/Acpi/AcpiTableDxe/AcpiTableProtocol.c), then the MADT rewritten with the multiprocessor
wakeup structure by OvmfPkg/TdxDxe/TdxAcpiTable.c AlterAcpiTable. All edk2-stable202502; the wakeup structure's
version follows the profile (Edk2Profile.madt_wakeup_version: 1 from 406f42cb74, edk2-stable202508).

What each does, as modelled:
- AcpiTableDxe's constructor: one page of EfiACPIReclaimMemory below 4 GiB for the ACPI 1.0 RSDP (20 bytes)
  followed by the 2.0 one (36), one for RSDT 1.0, RSDT 3.0 and XSDT with room for 32 entries each (OVMF keeps
  PcdAcpiExposedTableVersions at 0x3E: 1.0b included, so everything lies below 4 GiB); entry 0 of each is kept for
  the FADT; headers from the PcdAcpiDefault* values;
- InstallAcpiTable: the table copied into pages of its own, EfiACPIMemoryNVS for the FACS, EfiACPIReclaimMemory
  for the rest; the FADT gets the FACS and DSDT addresses (FIRMWARE_CTRL, DSDT and X_DSDT) and lends its OEM
  fields to the RSDPs, RSDTs and XSDT; FACS and DSDT are not listed, every other table is appended; checksums are
  made again and both RSDPs (re)installed as configuration tables (ACPI 1.0 and ACPI 2.0 GUIDs);
- QemuFwCfgAcpi: each ALLOCATE is AllocatePages(AllocateMaxAddress, EfiACPIMemoryNVS), below 4 GiB when a pointer
  narrower than 8 bytes points into the file; after the install the blobs that held only tables are freed;
- TdxDxe: the relocated AP mailbox in AllocatePages(AllocateAnyPages, EfiACPIMemoryNVS) of the AP loop's size plus
  one page (ApRunLoop.nasm's code is under 4 KiB: 2 pages), the mailbox first, Command Noop and ApicId invalid;
  a copy of the MADT with the wakeup structure (version 0: 16 bytes, the mailbox's address; version 1: 24 bytes,
  and the reset vector inside the relocated loop) installed and the old MADT uninstalled. The APs are not moved
  into the relocated loop: the Python firmware runs no AP after SEC, so the page after the mailbox is left zero
  where edk2 copies its AP loop, and version 1's reset vector is that page's start (edk2's is an offset into the
  loop's code, which is not modelled).
The tables come from the VMM's builder (vmm/acpi.py) for what OVMF programs before it reads them: PMBASE 0x600
(PcdAcpiPmBaseAddress, set by PlatformInitLib) with ACPI enabled and PCIEXBAR at 0xE0000000 (256 MiB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lazyaccept.errors import InputError
from lazyaccept.records import Actor
from lazyaccept.spec import guids
from lazyaccept.spec.acpi import (
    FACS,
    FADT,
    HEADER_SIZE,
    MADT_ENTRIES,
    MP_WAKEUP_APICID_INVALID,
    MP_WAKEUP_COMMAND_NOOP,
    MP_WAKEUP_MAILBOX,
    MP_WAKEUP_V1,
    RSDP,
    RSDP_SIGNATURE,
    RSDP_V1_SIZE,
    TABLE_HEADER,
    MadtType,
    set_checksum,
    table_header,
)
from lazyaccept.spec.efi import EfiAllocateType as A
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import PAGE_4K, align_up
from lazyaccept.vmm.acpi import AcpiMachine, build_acpi, run_loader

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

FW = Actor.DXE
BELOW_4G = 0xFFFFFFFF
MAX_ADDRESS = (1 << 64) - 1
MAX_NUM_TABLES = 32  # EFI_ACPI_MAX_NUM_TABLES
# MdeModulePkg.dec defaults (OVMF keeps them)
DEFAULT_OEM_ID = b"INTEL "
DEFAULT_OEM_TABLE_ID = (0x20202020324B4445).to_bytes(8, "little")  # "EDK2    "
DEFAULT_OEM_REVISION = 2
DEFAULT_CREATOR_ID = b"    "
DEFAULT_CREATOR_REVISION = 0x01000013
OVMF_PM_BASE = 0x600  # OvmfPkg.dec PcdAcpiPmBaseAddress
OVMF_MMCONFIG = (0xE0000000, 256 << 20)  # PcdPciExpressBaseAddress, the 256 MiB window PlatformInitLib programs
AP_LOOP_PAGES = 1  # EFI_SIZE_TO_PAGES (RelocateApLoopFuncSize): ApRunLoop.nasm's code is under 4 KiB


def _pages(size: int) -> int:
    return align_up(size, PAGE_4K) // PAGE_4K


@dataclass
class InstalledTable:
    handle: int
    address: int
    signature: bytes
    length: int


@dataclass
class AcpiTables:
    """AcpiTableDxe's state: where the RSDPs and the RSDT/XSDT page are, the tables by handle."""

    m: UefiCore
    rsdp: int = 0
    rsdt1: int = 0
    rsdt3: int = 0
    xsdt: int = 0
    tables: list[InstalledTable] = field(default_factory=list)
    next_handle: int = 1
    wakeup_mailbox: int | None = None
    blobs: dict[str, tuple[int, int]] = field(default_factory=dict)  # the QEMU blobs' (address, pages), freed

    # --- AcpiTableDxe ----------------------------------------------------------------------------------

    def _allocate(self, memory_type: int, pages: int, max_address: int = BELOW_4G,
                  allocate_type: int = A.AllocateMaxAddress) -> int:
        status, address = self.m.dxe.allocate_pages(allocate_type, memory_type, pages, max_address)
        if status != S.SUCCESS:
            raise InputError(f"ACPI: no {pages} pages of {M(memory_type).name} below {max_address:#x}: "
                             f"{S(status).name}")
        self.m.mem.write(address, bytes(pages * PAGE_4K), actor=FW)
        return address

    def construct(self) -> None:
        """AcpiTableAcpiTableConstructor."""
        self.rsdp = self._allocate(M.EfiACPIReclaimMemory, _pages(RSDP_V1_SIZE + RSDP.size))
        sdt_pages = _pages(3 * HEADER_SIZE + MAX_NUM_TABLES * (4 + 4 + 8))
        self.rsdt1 = self._allocate(M.EfiACPIReclaimMemory, sdt_pages)
        self.rsdt3 = self.rsdt1 + HEADER_SIZE + MAX_NUM_TABLES * 4
        self.xsdt = self.rsdt3 + HEADER_SIZE + MAX_NUM_TABLES * 4
        for at, signature, entry in ((self.rsdt1, b"RSDT", 4), (self.rsdt3, b"RSDT", 4), (self.xsdt, b"XSDT", 8)):
            # one entry from the start: the FADT's, filled when a FADT is installed
            self.m.write(at, table_header(signature, HEADER_SIZE + entry, 1, oem_id=DEFAULT_OEM_ID,
                                          oem_table_id=DEFAULT_OEM_TABLE_ID, oem_revision=DEFAULT_OEM_REVISION,
                                          creator_id=DEFAULT_CREATOR_ID,
                                          creator_revision=DEFAULT_CREATOR_REVISION))
        rsdp1 = RSDP.pack(Signature=RSDP_SIGNATURE, OemId=DEFAULT_OEM_ID, Revision=0, RsdtAddress=self.rsdt1)
        rsdp3 = RSDP.pack(Signature=RSDP_SIGNATURE, OemId=DEFAULT_OEM_ID, Revision=2, RsdtAddress=self.rsdt3,
                          Length=RSDP.size, XsdtAddress=self.xsdt)
        self.m.write(self.rsdp, rsdp1[:RSDP_V1_SIZE] + rsdp3)
        self._checksum_common()

    @property
    def rsdp3(self) -> int:
        return self.rsdp + RSDP_V1_SIZE

    def _find(self, signature: bytes) -> InstalledTable | None:
        return next((t for t in self.tables if t.signature == signature), None)

    def _sdt_entries(self, at: int, width: int) -> list[int]:
        length = int.from_bytes(self.m.read(at + 4, 4), "little")
        raw = self.m.read(at + HEADER_SIZE, length - HEADER_SIZE)
        return [int.from_bytes(raw[i : i + width], "little") for i in range(0, len(raw), width)]

    def _set_sdt_entries(self, at: int, width: int, entries: list[int]) -> None:
        self.m.write(at + HEADER_SIZE, b"".join(e.to_bytes(width, "little") for e in entries))
        self.m.write(at + 4, (HEADER_SIZE + width * len(entries)).to_bytes(4, "little"))

    def _checksum(self, at: int, length: int, offset: int) -> None:
        buf = bytearray(self.m.read(at, length))
        set_checksum(buf, offset, 0, length)
        self.m.write(at + offset, buf[offset : offset + 1])

    def _checksum_table(self, at: int) -> None:
        self._checksum(at, int.from_bytes(self.m.read(at + 4, 4), "little"), TABLE_HEADER.offset_of("Checksum"))

    def _checksum_common(self) -> None:
        """ChecksumCommonTables: both RSDPs (the 2.0 one twice: its first 20 bytes, then all 36), RSDTs, XSDT."""
        self._checksum(self.rsdp, RSDP_V1_SIZE, RSDP.offset_of("Checksum"))
        self._checksum(self.rsdp3, RSDP_V1_SIZE, RSDP.offset_of("Checksum"))
        self._checksum(self.rsdp3, RSDP.size, RSDP.offset_of("ExtendedChecksum"))
        for at in (self.rsdt1, self.rsdt3, self.xsdt):
            self._checksum_table(at)

    def _link_fadt(self) -> None:
        """The FADT's FACS and DSDT fields (AddTableToList for FADT, FACS or DSDT) and its OEM fields lent."""
        fadt = self._find(b"FACP")
        if fadt is None:
            return
        facs, dsdt = self._find(b"FACS"), self._find(b"DSDT")
        facs_address = facs.address if facs else 0
        dsdt_address = dsdt.address if dsdt else 0
        self.m.w32(fadt.address + FADT.offset_of("FIRMWARE_CTRL"), facs_address)  # below 4 GiB: X_ stays 0
        self.m.w64(fadt.address + FADT.offset_of("X_FIRMWARE_CTRL"), 0)
        self.m.w32(fadt.address + FADT.offset_of("DSDT"), dsdt_address)
        self.m.w64(fadt.address + FADT.offset_of("X_DSDT"), dsdt_address)  # both set, as edk2 always does
        self._checksum_table(fadt.address)
        header = TABLE_HEADER.unpack(self.m.read(fadt.address, HEADER_SIZE))
        for rsdp in (self.rsdp, self.rsdp3):
            self.m.write(rsdp + RSDP.offset_of("OemId"), header["OemId"])
        for sdt in (self.rsdt1, self.rsdt3, self.xsdt):
            self.m.write(sdt + TABLE_HEADER.offset_of("OemId"), header["OemId"] + header["OemTableId"])
            self.m.w32(sdt + TABLE_HEADER.offset_of("OemRevision"), header["OemRevision"])

    def _publish(self) -> None:
        """PublishTables: entry 0 is the FADT, checksums again, both RSDPs in the configuration table."""
        fadt = self._find(b"FACP")
        if fadt is not None:
            for at, width in ((self.rsdt1, 4), (self.rsdt3, 4), (self.xsdt, 8)):
                self.m.write(at + HEADER_SIZE, fadt.address.to_bytes(width, "little"))
        self._checksum_common()
        for guid, address in ((guids.ACPI_10_TABLE, self.rsdp), (guids.ACPI_20_TABLE, self.rsdp3)):
            self.m.install_configuration_table(guid, address)

    def install(self, data: bytes) -> int:
        """InstallAcpiTable: the table's key."""
        signature, length = data[:4], int.from_bytes(data[4:8], "little")
        if length != len(data) or length < (FACS.size if signature == b"FACS" else HEADER_SIZE):
            raise InputError(f"ACPI table {signature!r}: length {length} for {len(data)} bytes", field="Length")
        if signature in (b"FACP", b"FACS", b"DSDT") and self._find(signature) is not None:
            raise InputError(f"a second {signature.decode()} (edk2: EFI_ACCESS_DENIED)", field="Signature")
        kind = M.EfiACPIMemoryNVS if signature == b"FACS" else M.EfiACPIReclaimMemory
        address = self._allocate(kind, _pages(length))
        self.m.write(address, data)
        table = InstalledTable(self.next_handle, address, signature, length)
        self.next_handle += 1
        self.tables.append(table)
        if signature in (b"FACP", b"FACS", b"DSDT"):
            if signature == b"DSDT":
                self._checksum_table(address)
            self._link_fadt()
        else:
            self._checksum_table(address)
            for at, width in ((self.rsdt1, 4), (self.rsdt3, 4), (self.xsdt, 8)):
                entries = self._sdt_entries(at, width)
                if len(entries) >= MAX_NUM_TABLES:
                    raise InputError(f"more than {MAX_NUM_TABLES} ACPI tables (ReallocateAcpiTableBuffer is not "
                                     "modelled)", field="NumberOfTableEntries")
                self._set_sdt_entries(at, width, [*entries, address])
        self._publish()
        self.m.log("AcpiTable.InstallAcpiTable", f"{signature.decode()} {length:#x} bytes at {address:#x}",
                   S.SUCCESS)
        return table.handle

    def uninstall(self, handle: int) -> None:
        """UninstallAcpiTable of a listed table (the only kind TdxDxe uninstalls)."""
        table = next(t for t in self.tables if t.handle == handle)
        self.tables.remove(table)
        for at, width in ((self.rsdt1, 4), (self.rsdt3, 4), (self.xsdt, 8)):
            self._set_sdt_entries(at, width, [e for e in self._sdt_entries(at, width) if e != table.address])
        self.m.dxe.free_pages(table.address, _pages(table.length))
        self._publish()
        self.m.log("AcpiTable.UninstallAcpiTable", f"{table.signature.decode()} at {table.address:#x}", S.SUCCESS)

    # --- QemuFwCfgAcpi ---------------------------------------------------------------------------------

    def install_qemu_tables(self, files: dict[str, bytes], loader: bytes) -> int:
        """InstallQemuFwCfgTables: the blobs placed and patched, each table installed; the number installed."""

        def allocate(name: str, size: int, below_4g: bool) -> int:
            pages = _pages(size)
            address = self._allocate(M.EfiACPIMemoryNVS, pages, BELOW_4G if below_4g else MAX_ADDRESS)
            self.blobs[name] = (address, pages)
            return address

        run = run_loader(loader, files, allocate)
        for blob in run.blobs.values():
            self.m.write(blob.address, blob.data)
        for _, data in run.tables:
            self.install(data)
        for blob in run.blobs.values():
            if blob.only_tables:
                self.m.dxe.free_pages(blob.address, _pages(len(blob.data)))
        return len(run.tables)

    # --- TdxDxe ----------------------------------------------------------------------------------------

    def alter_madt(self, wakeup_version: int = 0) -> None:
        """AlterAcpiTable: the relocated mailbox, then the MADT again with the wakeup structure at its end."""
        pages = AP_LOOP_PAGES + 1
        mailbox = self._allocate(M.EfiACPIMemoryNVS, pages, 0, A.AllocateAnyPages)
        self.m.write(mailbox, MP_WAKEUP_MAILBOX.pack(Command=MP_WAKEUP_COMMAND_NOOP, ApicId=MP_WAKEUP_APICID_INVALID,
                                                     WakeupVector=0))
        self.wakeup_mailbox = mailbox
        madt = self._find(b"APIC")
        if madt is None:
            return
        old = bytearray(self.m.read(madt.address, madt.length))
        if wakeup_version >= 1:
            structure = MP_WAKEUP_V1.pack(Type=MadtType.MULTIPROCESSOR_WAKEUP, Length=MP_WAKEUP_V1.size,
                                          MailBoxVersion=1, MailBoxAddress=mailbox, ResetVector=mailbox + PAGE_4K)
        else:
            wakeup = MADT_ENTRIES[MadtType.MULTIPROCESSOR_WAKEUP]
            structure = wakeup.pack(Type=MadtType.MULTIPROCESSOR_WAKEUP, Length=wakeup.size, MailBoxVersion=0,
                                    MailBoxAddress=mailbox)
        new = old + structure
        new[4:8] = len(new).to_bytes(4, "little")
        self.install(bytes(new))
        self.uninstall(madt.handle)


def install_acpi_tables(machine: UefiCore, vcpus: int,
                        acpi_machine: Callable[[int], AcpiMachine] | None = None, *,
                        wakeup_version: int = 0) -> AcpiTables:
    """AcpiTableDxe's constructor, then AcpiPlatformDxe's install from QEMU's files for a TD of `vcpus` vCPUs and
    TdxDxe's MADT rewrite (its wakeup structure of `wakeup_version`: Edk2Profile.madt_wakeup_version), in the
    order OVMF runs them."""
    tables = AcpiTables(machine)
    tables.construct()
    make = acpi_machine or (lambda n: AcpiMachine(n, OVMF_PM_BASE, OVMF_MMCONFIG))
    build = build_acpi(make(vcpus))
    tables.install_qemu_tables(build.files(), build.loader)
    tables.alter_madt(wakeup_version)
    return tables
