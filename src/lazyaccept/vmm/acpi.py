"""The ACPI tables QEMU's builder gives a q35 TD, and the linker/loader script that tells the firmware how to
place and patch them (fw_cfg files etc/acpi/tables, etc/acpi/rsdp, etc/table-loader).

What QEMU does (hw/i386/acpi-build.c acpi_build, hw/i386/acpi-common.c acpi_build_madt, hw/acpi/aml-build.c
build_fadt/build_rsdt/build_rsdp/build_mcfg/build_waet, hw/acpi/bios-linker-loader.c; v7.2 to v10.1 alike in what
is used here), and how this builder follows it:
- one blob etc/acpi/tables (ALLOCATE, 64-byte aligned, zone HIGH) holding FACS first (its alignment), then DSDT,
  FADT, MADT, MCFG, WAET and the RSDT; padded to ACPI_BUILD_TABLE_SIZE (128 KiB) so its size stays put;
- etc/acpi/rsdp: a revision-0 RSDP (20 bytes) pointing at the RSDT. x86 QEMU builds no XSDT: the RSDP revision 2
  and the XSDT an OS sees under UEFI are edk2's AcpiTableDxe's, which installs each table QEMU's script points at
  and builds its own RSDP/RSDT/XSDT (OvmfPkg/Library/AcpiPlatformLib/QemuFwCfgAcpi.c skips QEMU's RSDT);
- the FADT is QEMU's ICH9 one, revision 3 and not hardware-reduced: x86 QEMU builds a hardware-reduced FADT only
  for microvm (acpi-microvm.c); q35, TD or not, gets init_common_fadt_data's fixed-hardware model with PM1a event,
  PM1a control and the PM timer at PMBASE (+0, +4, +8), GPE0 at PMBASE+0x20. So power-off is SLP_TYP 0 with SLP_EN
  in PM1a_CNT, which vmm/devices/acpi_pm.py implements (ICH9's PM block). No SMM in a TD (tdx.c turns it off), so
  SMI_CMD, ACPI_ENABLE and ACPI_DISABLE are 0: the platform is in ACPI mode from reset;
- PMBASE and the MMCONFIG window are read when the firmware first selects a file (QEMU rebuilds the tables in the
  select callback, acpi_build_update), so the FADT shows what the firmware programmed into the LPC bridge;
- MADT: one processor structure per vCPU as pc_madt_cpu_entry writes it: a Local APIC structure (type 0) for APIC
  IDs below 255, a Local x2APIC structure (type 9) from 255 up; the IOAPIC at 0xFEC00000 (q35 always has one; a
  TD's IOAPIC is QEMU's, kernel_irqchip=split), the IRQ0->GSI2 override and level/high overrides for the PCI
  IRQs 5, 9, 10, 11, one LAPIC NMI (x2APIC NMI when an APIC ID is above 254); PCAT_COMPAT clear (no PIC in a TD).
  The TDX series' edge-triggered overrides for TDs (x86ms->eoi_intercept_unsupported, posted for review) are
  not followed: that is not in what this builder could confirm as merged. The multiprocessor wakeup structure
  is not QEMU's: edk2's TdxDxe adds it when it rewrites the MADT (firmware/drivers/acpi.py models that);
- the DSDT is minimal: \\_S5 and the RTC (QEMU's also has the PCI and other ISA devices, CPU hotplug, ...); no
  HPET table (TDs are started with hpet=off: this VMM has no HPET), no SRAT (no NUMA), no TPM tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.spec.acpi import (
    AML_NAME_OP,
    AML_PACKAGE_OP,
    AML_ZERO,
    FACS,
    FADT,
    FADT_REV3_SIZE,
    HEADER_SIZE,
    IAPC_BOOT_ARCH_8042,
    LOADER_ENTRY_SIZE,
    MADT_ENTRIES,
    MADT_HEADER,
    MCFG_ALLOCATION,
    MCFG_RESERVED_SIZE,
    RSDP,
    RSDP_SIGNATURE,
    RSDP_V1_SIZE,
    SPACE_IO,
    TABLE_HEADER,
    WAET_PM_TIMER_GOOD,
    AllocZone,
    FadtFlag,
    LoaderCommand,
    MadtType,
    aml_device,
    aml_int,
    aml_name,
    aml_pkg_length,
    aml_resource_template,
    aml_scope,
    checksum8,
    eisa_id,
    gas,
    pack_loader_entry,
    res_io,
    res_irq_no_flags,
    table_header,
    unpack_loader,
)
from lazyaccept.units import PAGE_4K, MiB, align_up
from lazyaccept.vmm.devices.cmos import CMOS_INDEX, RTC_IO_LENGTH, RTC_ISA_IRQ

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"
ACPI_BUILD_TABLE_SIZE = 0x20000  # acpi_align_size(tables_blob, ACPI_BUILD_TABLE_SIZE)
LOADER_ALIGN = 0x1000  # acpi_align_size(linker->cmd_blob, ACPI_BUILD_ALIGN_SIZE)
# include/hw/acpi/aml-build.h ACPI_BUILD_APPNAME6/8; build_header's OEM and creator revisions are 1.
OEM_ID, OEM_TABLE_ID, CREATOR_ID = b"BOCHS ", b"BXPC    ", b"BXPC"
APIC_DEFAULT_ADDRESS = 0xFEE00000
IO_APIC_DEFAULT_ADDRESS = 0xFEC00000
ACPI_BUILD_IOAPIC_ID = 0
ACPI_BUILD_PCI_IRQS = (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11)  # pc.h: x86ms->pci_irq_mask
ICH9_SCI_IRQ = 9
ICH9_GPE0_OFFSET, ICH9_GPE0_LEN = 0x20, 0x10  # ICH9_PMIO_GPE0_STS, ICH9_PMIO_GPE0_LEN
ICH9_RST_CNT_IOPORT = 0xCF9
RTC_CENTURY = 0x32
MADT_REVISION = 3  # acpi_build_madt's AcpiTable .rev (the structures written are those of revision 3)
MAX_VCPUS = 4096  # beyond which the tables outgrow ACPI_BUILD_TABLE_SIZE


@dataclass(frozen=True)
class AcpiMachine:
    """What the builder reads from the machine when the firmware asks: the vCPU count (APIC IDs 0..n-1, a flat
    topology), ICH9's PMBASE (0 while the LPC bridge has ACPI disabled, as ich9_lpc_pmbase_sci_update leaves
    it) and the MMCONFIG window (None while PCIEXBAR is disabled: no MCFG, as acpi_get_mcfg)."""

    vcpus: int
    pm_base: int
    mcfg: tuple[int, int] | None = None


class Linker:
    """QEMU's BIOSLinker: the command script, 128 bytes a command, padded to 4 KiB when done."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []

    def allocate(self, file: str, align: int, zone: AllocZone) -> None:
        self.entries.append(pack_loader_entry(LoaderCommand.ALLOCATE, File=file.encode(), Alignment=align,
                                              Zone=int(zone)))

    def add_pointer(self, dest_file: str, offset: int, size: int, src_file: str) -> None:
        """The `size`-byte field at dest_file+offset holds an offset into src_file; the loader adds src_file's
        address to it."""
        self.entries.append(pack_loader_entry(LoaderCommand.ADD_POINTER, PointerFile=dest_file.encode(),
                                              PointeeFile=src_file.encode(), PointerOffset=offset,
                                              PointerSize=size))

    def add_checksum(self, file: str, start: int, length: int, at: int) -> None:
        self.entries.append(pack_loader_entry(LoaderCommand.ADD_CHECKSUM, File=file.encode(), ResultOffset=at,
                                              Start=start, Length=length))

    def script(self) -> bytes:
        blob = b"".join(self.entries)
        return blob.ljust(align_up(len(blob), LOADER_ALIGN), b"\0")


@dataclass
class AcpiBuild:
    """The three fw_cfg files and, for reports and tests, where each table sits in etc/acpi/tables."""

    tables: bytes
    rsdp: bytes
    loader: bytes
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # signature -> (offset, length)

    def files(self) -> dict[str, bytes]:
        return {TABLES_FILE: self.tables, RSDP_FILE: self.rsdp, LOADER_FILE: self.loader}

    def table(self, signature: str) -> bytes:
        offset, length = self.offsets[signature]
        return self.tables[offset : offset + length]


class _Blob:
    """etc/acpi/tables while it is being built: tables appended, each closed with its header and checksum."""

    def __init__(self, linker: Linker):
        self.data = bytearray()
        self.linker = linker
        self.offsets: dict[str, tuple[int, int]] = {}

    def begin(self) -> int:
        start = len(self.data)
        self.data += bytes(HEADER_SIZE)
        return start

    def end(self, start: int, signature: bytes, revision: int) -> None:
        """acpi_table_end: the header with the final length, and the loader's checksum command over it."""
        length = len(self.data) - start
        self.data[start : start + HEADER_SIZE] = table_header(
            signature, length, revision, oem_id=OEM_ID, oem_table_id=OEM_TABLE_ID, oem_revision=1,
            creator_id=CREATOR_ID, creator_revision=1)
        # The checksum byte stays 0: the loader's ADD_CHECKSUM sums the range with it (edk2 does not clear it
        # first), so a byte set here would come out wrong.
        self.linker.add_checksum(TABLES_FILE, start, length, start + TABLE_HEADER.offset_of("Checksum"))
        self.offsets[signature.decode()] = (start, length)


def rtc_aml() -> bytes:
    """The MC146818's device as QEMU's rtc_build_aml writes it (hw/rtc/mc146818rtc.c, v10.1; the same since 7.0):
    Device (RTC) {Name (_HID, EisaId ("PNP0B00")), Name (_CRS, ResourceTemplate () {IO (Decode16, 0x70, 0x70,
    0x01, 0x08), IRQNoFlags () {8}})}: eight ports reserved as on hardware, though only 0x70/0x71 answer. Linux's
    rtc_cmos binds to it through PNP; without it its platform probe fails with -22 and the TD has no rtc0."""
    crs = aml_resource_template(res_io(CMOS_INDEX, RTC_IO_LENGTH) + res_irq_no_flags(RTC_ISA_IRQ))
    return aml_device("RTC", aml_name("_HID", aml_int(eisa_id("PNP0B00"))) + aml_name("_CRS", crs))


def dsdt_aml() -> bytes:
    """The DSDT body: Name (_S5, Package (4) {Zero, Zero, Zero, Zero}), as QEMU's build_dsdt declares \\_S5
    (aml_name_decl at the DSDT's root; SLP_TYP 0 for PM1a, PM1b unused, two reserved), then Scope (_SB) with the
    RTC. The _S5 package byte by byte:
      0x08            NameOp
      '_S5_'          NameSeg (4 characters, '_'-padded)
      0x12            PackageOp
      PkgLength       one byte here: its own byte + NumElements + the four elements = 6
      0x04            NumElements
      0x00 x4         ZeroOp: PM1a_CNT.SLP_TYP = 0 (ICH9's S5), PM1b_CNT.SLP_TYP, reserved, reserved
    QEMU places the RTC under \\_SB.PCI0.ISA (the LPC bridge's scope, build_q35_isa_bridge); this DSDT has no PCI0
    (Linux finds the host bridge by probing, as without ACPI), so the RTC sits in \\_SB: PNP enumerates devices
    wherever they are in the namespace, and a PCI0 without its _CRS/_PRT would change how Linux sets up PCI."""
    elements = bytes([4]) + bytes([AML_ZERO]) * 4
    s5 = bytes([AML_NAME_OP]) + b"_S5_" + bytes([AML_PACKAGE_OP]) + aml_pkg_length(len(elements)) + elements
    return s5 + aml_scope("_SB", rtc_aml())


def _fadt(blob: _Blob, machine: AcpiMachine, facs: int, dsdt: int) -> None:
    """build_fadt at revision 3 with init_common_fadt_data's and acpi_get_pm_info's (ICH9) values."""
    start = blob.begin()
    io = machine.pm_base
    flags = (1 << FadtFlag.WBINVD) | (1 << FadtFlag.PROC_C1) | (1 << FadtFlag.SLP_BUTTON) | (1 << FadtFlag.RTC_S4)
    flags |= (1 << FadtFlag.USE_PLATFORM_CLOCK) | (1 << FadtFlag.RESET_REG_SUP)
    if machine.vcpus > 8:  # "Flat Logical" APIC mode stops at 8 CPUs
        flags |= 1 << FadtFlag.FORCE_APIC_CLUSTER_MODEL
    fields = dict(
        INT_MODEL=1, SCI_INT=ICH9_SCI_IRQ, SMI_CMD=0, ACPI_ENABLE=0, ACPI_DISABLE=0,
        PM1A_EVT_BLK=io, PM1A_CNT_BLK=io + 4, PM_TMR_BLK=io + 8, GPE0_BLK=io + ICH9_GPE0_OFFSET,
        PM1_EVT_LEN=4, PM1_CNT_LEN=2, PM_TMR_LEN=4, GPE0_BLK_LEN=ICH9_GPE0_LEN,
        P_LVL2_LAT=0xFFF, P_LVL3_LAT=0xFFF, CENTURY=RTC_CENTURY, IAPC_BOOT_ARCH=IAPC_BOOT_ARCH_8042, Flags=flags,
        RESET_REG=gas(SPACE_IO, 8, ICH9_RST_CNT_IOPORT), RESET_VALUE=0xF,
        FIRMWARE_CTRL=facs, DSDT=dsdt, X_DSDT=dsdt,  # offsets into the blob: the loader adds its address
        X_PM1A_EVT_BLK=gas(SPACE_IO, 32, io), X_PM1A_CNT_BLK=gas(SPACE_IO, 16, io + 4),
        X_PM_TMR_BLK=gas(SPACE_IO, 32, io + 8), X_GPE0_BLK=gas(SPACE_IO, 8 * ICH9_GPE0_LEN, io + ICH9_GPE0_OFFSET),
    )
    body = FADT.pack(fields)[HEADER_SIZE:FADT_REV3_SIZE]
    blob.data += body
    for name, size in (("FIRMWARE_CTRL", 4), ("DSDT", 4), ("X_DSDT", 8)):
        blob.linker.add_pointer(TABLES_FILE, start + FADT.offset_of(name), size, TABLES_FILE)
    blob.end(start, b"FACP", 3)


def madt_body(vcpus: int) -> bytes:
    """The MADT after its description header, as acpi_build_madt writes it for `vcpus` present vCPUs."""
    # Flags: PCAT_COMPAT clear. QEMU sets it from x86ms->pic (acpi-common.c since v9.0) and a TD has no 8259
    # (target/i386/kvm/tdx.c tdx_kvm_init turns pic=auto off); Linux then uses the null legacy PIC.
    entries = [MADT_HEADER.pack(LocalApicAddress=APIC_DEFAULT_ADDRESS, Flags=0)[HEADER_SIZE:]]
    for uid in range(vcpus):
        apic_id = uid
        if apic_id < 255:
            layout = MADT_ENTRIES[MadtType.LOCAL_APIC]
            entries.append(layout.pack(Type=MadtType.LOCAL_APIC, Length=layout.size, AcpiProcessorUid=uid,
                                       ApicId=apic_id, Flags=1))
        else:
            layout = MADT_ENTRIES[MadtType.LOCAL_X2APIC]
            entries.append(layout.pack(Type=MadtType.LOCAL_X2APIC, Length=layout.size, X2ApicId=apic_id, Flags=1,
                                       AcpiProcessorUid=uid))
    io_apic = MADT_ENTRIES[MadtType.IO_APIC]
    entries.append(io_apic.pack(Type=MadtType.IO_APIC, Length=io_apic.size, IoApicId=ACPI_BUILD_IOAPIC_ID,
                                IoApicAddress=IO_APIC_DEFAULT_ADDRESS, GlobalSystemInterruptBase=0))
    iso = MADT_ENTRIES[MadtType.INTERRUPT_SOURCE_OVERRIDE]
    entries.append(iso.pack(Type=MadtType.INTERRUPT_SOURCE_OVERRIDE, Length=iso.size, Source=0,
                            GlobalSystemInterrupt=2, Flags=0))  # apic_xrupt_override: IRQ0 is GSI 2
    for irq in range(1, 16):
        if ACPI_BUILD_PCI_IRQS & (1 << irq):
            entries.append(iso.pack(Type=MadtType.INTERRUPT_SOURCE_OVERRIDE, Length=iso.size, Source=irq,
                                    GlobalSystemInterrupt=irq, Flags=0xD))  # active high, level triggered
    if vcpus - 1 > 254:
        nmi = MADT_ENTRIES[MadtType.LOCAL_X2APIC_NMI]
        entries.append(nmi.pack(Type=MadtType.LOCAL_X2APIC_NMI, Length=nmi.size, Flags=0,
                                AcpiProcessorUid=0xFFFFFFFF, LocalX2ApicLint=1))
    else:
        nmi = MADT_ENTRIES[MadtType.LOCAL_APIC_NMI]
        entries.append(nmi.pack(Type=MadtType.LOCAL_APIC_NMI, Length=nmi.size, AcpiProcessorUid=0xFF, Flags=0,
                                LocalApicLint=1))
    return b"".join(entries)


def build_acpi(machine: AcpiMachine) -> AcpiBuild:
    """QEMU's acpi_build for a q35 TD: the tables blob, the RSDP blob and the loader script."""
    if not 1 <= machine.vcpus <= MAX_VCPUS:
        raise ConfigError(f"ACPI tables for {machine.vcpus} vCPUs: 1..{MAX_VCPUS} supported")
    if not 0 <= machine.pm_base <= 0xFF80 or machine.pm_base % 0x80:
        raise ConfigError(f"PMBASE {machine.pm_base:#x} is not a 128-byte aligned I/O port")
    linker = Linker()
    linker.allocate(TABLES_FILE, 64, AllocZone.HIGH)
    blob = _Blob(linker)

    facs = len(blob.data)  # first: the only table with an alignment requirement (64 bytes)
    blob.data += FACS.pack(Signature=b"FACS", Length=FACS.size)
    blob.offsets["FACS"] = (facs, FACS.size)

    dsdt = blob.begin()
    blob.data += dsdt_aml()
    blob.end(dsdt, b"DSDT", 1)

    listed = [len(blob.data)]
    _fadt(blob, machine, facs, dsdt)

    listed.append(len(blob.data))
    start = blob.begin()
    blob.data += madt_body(machine.vcpus)
    blob.end(start, b"APIC", MADT_REVISION)

    if machine.mcfg is not None:
        base, size = machine.mcfg
        if size < MiB or size % MiB or size > 256 * MiB:
            raise ConfigError(f"MMCONFIG window of {size:#x} bytes is not 1..256 buses")
        listed.append(len(blob.data))
        start = blob.begin()
        blob.data += bytes(MCFG_RESERVED_SIZE)
        blob.data += MCFG_ALLOCATION.pack(BaseAddress=base, PciSegmentGroupNumber=0, StartBusNumber=0,
                                          EndBusNumber=size // MiB - 1)
        blob.end(start, b"MCFG", 1)

    listed.append(len(blob.data))
    start = blob.begin()
    blob.data += WAET_PM_TIMER_GOOD.to_bytes(4, "little")
    blob.end(start, b"WAET", 1)

    rsdt = blob.begin()
    for offset in listed:
        linker.add_pointer(TABLES_FILE, len(blob.data), 4, TABLES_FILE)
        blob.data += offset.to_bytes(4, "little")
    blob.end(rsdt, b"RSDT", 1)

    if len(blob.data) > ACPI_BUILD_TABLE_SIZE:
        raise ConfigError(f"ACPI tables of {len(blob.data)} bytes exceed {ACPI_BUILD_TABLE_SIZE:#x}")
    tables = bytes(blob.data).ljust(ACPI_BUILD_TABLE_SIZE, b"\0")

    rsdp = RSDP.pack(Signature=RSDP_SIGNATURE, OemId=OEM_ID, Revision=0, RsdtAddress=rsdt)[:RSDP_V1_SIZE]
    linker.allocate(RSDP_FILE, 16, AllocZone.FSEG)
    linker.add_pointer(RSDP_FILE, RSDP.offset_of("RsdtAddress"), 4, TABLES_FILE)
    linker.add_checksum(RSDP_FILE, 0, RSDP_V1_SIZE, RSDP.offset_of("Checksum"))
    return AcpiBuild(tables, rsdp, linker.script(), dict(blob.offsets))


# --- the firmware side: what OVMF's QemuFwCfgAcpi.c does with the script ------------------------------------


@dataclass
class LoadedBlob:
    """A fw_cfg file the script allocated: its guest address and its (patched) bytes."""

    name: str
    address: int
    data: bytearray
    restricted_32bit: bool
    only_tables: bool = True  # HostsOnlyTableData: freed after the tables were installed


@dataclass
class LoaderRun:
    blobs: dict[str, LoadedBlob]
    tables: list[tuple[int, bytes]]  # (address in its blob, bytes) of each table to install, in script order


def run_loader(script: bytes, files: Mapping[str, bytes], allocate: Callable[[str, int, bool], int]) -> LoaderRun:
    """Run a linker/loader script as edk2's InstallQemuFwCfgTables does (OvmfPkg/Library/AcpiPlatformLib/
    QemuFwCfgAcpi.c, edk2-stable202502): files named by a pointer narrower than 8 bytes are allocated below 4 GiB;
    first pass ALLOCATE (allocate(name, size, below_4g) gives the address), ADD_POINTER, ADD_CHECKSUM in order;
    second pass over ADD_POINTER targets: a FACS (by signature and length) or a table whose header length fits and
    whose checksum is right is to be installed, once per address, except RSDT and XSDT; a target that is neither
    marks its blob as not only table data (kept). Bad commands: an InputError naming the command."""
    commands = unpack_loader(script)
    restricted = {f["PointeeFile"] for c, f in commands if c == LoaderCommand.ADD_POINTER and f["PointerSize"] < 8}
    blobs: dict[str, LoadedBlob] = {}

    def blob(name: str, index: int, what: str) -> LoadedBlob:
        found = blobs.get(name)
        if found is None:
            raise InputError(f"loader command {index} ({what}) names {name!r}, which no ALLOCATE placed",
                             field="File", offset=index * LOADER_ENTRY_SIZE)
        return found

    for index, (command, f) in enumerate(commands):
        where = index * LOADER_ENTRY_SIZE
        if command == LoaderCommand.ALLOCATE:
            if f["Alignment"] > PAGE_4K:
                raise InputError(f"ALLOCATE {f['File']!r}: alignment {f['Alignment']:#x} beyond a page",
                                 field="Alignment", offset=where)
            data = files.get(f["File"])
            if data is None:
                raise InputError(f"ALLOCATE names fw_cfg file {f['File']!r}, which does not exist", field="File",
                                 offset=where)
            if f["File"] in blobs:
                raise InputError(f"ALLOCATE {f['File']!r} twice", field="File", offset=where)
            below = f["File"] in restricted
            address = allocate(f["File"], len(data), below)
            blobs[f["File"]] = LoadedBlob(f["File"], address, bytearray(data), below)
        elif command == LoaderCommand.ADD_POINTER:
            src, dst = blob(f["PointerFile"], index, "ADD_POINTER"), blob(f["PointeeFile"], index, "ADD_POINTER")
            size, at = f["PointerSize"], f["PointerOffset"]
            if size not in (1, 2, 4, 8) or at + size > len(src.data):
                raise InputError(f"ADD_POINTER of {size} bytes at {at:#x} does not fit {src.name!r}",
                                 field="PointerOffset", offset=where)
            value = int.from_bytes(src.data[at : at + size], "little")
            if value >= len(dst.data):
                raise InputError(f"ADD_POINTER value {value:#x} is beyond {dst.name!r}", field="PointerOffset",
                                 offset=where)
            value += dst.address
            if value >> (8 * size):
                raise InputError(f"ADD_POINTER: {dst.name!r} at {dst.address:#x} does not fit {size} bytes",
                                 field="PointerSize", offset=where)
            src.data[at : at + size] = value.to_bytes(size, "little")
        elif command == LoaderCommand.ADD_CHECKSUM:
            b = blob(f["File"], index, "ADD_CHECKSUM")
            if f["ResultOffset"] >= len(b.data) or f["Start"] + f["Length"] > len(b.data):
                raise InputError(f"ADD_CHECKSUM range does not fit {b.name!r}", field="Length", offset=where)
            # CalculateCheckSum8 over the range as it is, the result byte included (QEMU leaves it 0)
            b.data[f["ResultOffset"]] = (-checksum8(b.data[f["Start"] : f["Start"] + f["Length"]])) & 0xFF
        elif command == LoaderCommand.WRITE_POINTER:
            raise InputError("WRITE_POINTER (a guest address written back to QEMU) is not modelled",
                             field="Command", offset=where)

    tables: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    for command, f in commands:
        if command != LoaderCommand.ADD_POINTER:
            continue
        src, dst = blobs[f["PointerFile"]], blobs[f["PointeeFile"]]
        at, size = f["PointerOffset"], f["PointerSize"]
        pointer = int.from_bytes(src.data[at : at + size], "little")
        if pointer in seen:
            continue
        seen.add(pointer)
        offset = pointer - dst.address
        remaining = len(dst.data) - offset
        table_size = 0
        if remaining >= FACS.size:
            length = int.from_bytes(dst.data[offset + 4 : offset + 8], "little")
            if dst.data[offset : offset + 4] == b"FACS" and FACS.size <= length <= remaining:
                table_size = length
        if not table_size and remaining >= HEADER_SIZE:
            length = int.from_bytes(dst.data[offset + 4 : offset + 8], "little")
            if HEADER_SIZE <= length <= remaining and checksum8(dst.data[offset : offset + length]) == 0:
                if bytes(dst.data[offset : offset + 4]) in (b"RSDT", b"XSDT"):
                    continue
                table_size = length
        if not table_size:
            dst.only_tables = False
            continue
        tables.append((pointer, bytes(dst.data[offset : offset + table_size])))
    return LoaderRun(blobs, tables)
