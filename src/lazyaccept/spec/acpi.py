"""ACPI structures as firmware hands them to an OS, and QEMU's linker/loader command format: declared once, used to
build (vmm/acpi.py), to install (the Python firmware) and to read back what a firmware installed (guest/acpi_check.py).

Layouts per the ACPI 6.5 specification (5.2.5 RSDP, 5.2.6 table header, 5.2.9 FADT, 5.2.10 FACS, 5.2.12 MADT and
its interrupt controller structures, 5.2.3.2 Generic Address Structure), the PCI Firmware spec 3.3 (MCFG) and
Microsoft's WAET; the loader commands per QEMU hw/acpi/bios-linker-loader.c (v10.1) and edk2
OvmfPkg/Include/IndustryStandard/QemuLoader.h. AML: ACPI 6.5 chapter 20 (only what a \\_S5 package and a device
with _HID and a resource-template _CRS need) and 6.4 (small resource descriptors: IO, IRQ, End Tag).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from lazyaccept.binlayout import Buffer, Layout
from lazyaccept.errors import InputError

TABLE_HEADER = Layout(
    "EFI_ACPI_DESCRIPTION_HEADER",
    [
        ("Signature", "4s"),
        ("Length", "I"),
        ("Revision", "B"),
        ("Checksum", "B"),
        ("OemId", "6s"),
        ("OemTableId", "8s"),
        ("OemRevision", "I"),
        ("CreatorId", "4s"),
        ("CreatorRevision", "I"),
    ],
)
HEADER_SIZE = TABLE_HEADER.size  # 36
RSDP_SIGNATURE = b"RSD PTR "
RSDP = Layout(
    "EFI_ACPI_2_0_ROOT_SYSTEM_DESCRIPTION_POINTER",
    [
        ("Signature", "8s"),
        ("Checksum", "B"),  # over the first 20 bytes (the ACPI 1.0 structure)
        ("OemId", "6s"),
        ("Revision", "B"),  # 0: ACPI 1.0 (20 bytes, RSDT only); 2: ACPI 2.0+ (36 bytes, XSDT)
        ("RsdtAddress", "I"),
        ("Length", "I"),
        ("XsdtAddress", "Q"),
        ("ExtendedChecksum", "B"),  # over all Length bytes
        ("Reserved", "3s"),
    ],
)
RSDP_V1_SIZE = 20
FACS = Layout(
    "EFI_ACPI_FIRMWARE_ACPI_CONTROL_STRUCTURE",
    [
        ("Signature", "4s"),
        ("Length", "I"),
        ("HardwareSignature", "I"),
        ("FirmwareWakingVector", "I"),
        ("GlobalLock", "I"),
        ("Flags", "I"),
        ("XFirmwareWakingVector", "Q"),
        ("Version", "B"),
        ("Reserved", "3s"),
        ("OspmFlags", "I"),
        ("Reserved1", "24s"),
    ],
)
GAS = Layout(
    "EFI_ACPI_GENERIC_ADDRESS_STRUCTURE",
    [("AddressSpaceId", "B"), ("RegisterBitWidth", "B"), ("RegisterBitOffset", "B"), ("AccessSize", "B"),
     ("Address", "Q")],
)
SPACE_MEMORY, SPACE_IO = 0, 1

# The FADT body after the header, ACPI 6.5 Table 5.9; a revision-3 FADT ends after X_GPE1_BLK (244 bytes), a
# revision-5 one after SLEEP_STATUS_REG (268), revision 6 after the hypervisor vendor identity (276).
FADT_FIELDS: list[tuple[str, str]] = [
    ("FIRMWARE_CTRL", "I"), ("DSDT", "I"), ("INT_MODEL", "B"), ("PREFERRED_PM_PROFILE", "B"), ("SCI_INT", "H"),
    ("SMI_CMD", "I"), ("ACPI_ENABLE", "B"), ("ACPI_DISABLE", "B"), ("S4BIOS_REQ", "B"), ("PSTATE_CNT", "B"),
    ("PM1A_EVT_BLK", "I"), ("PM1B_EVT_BLK", "I"), ("PM1A_CNT_BLK", "I"), ("PM1B_CNT_BLK", "I"),
    ("PM2_CNT_BLK", "I"), ("PM_TMR_BLK", "I"), ("GPE0_BLK", "I"), ("GPE1_BLK", "I"), ("PM1_EVT_LEN", "B"),
    ("PM1_CNT_LEN", "B"), ("PM2_CNT_LEN", "B"), ("PM_TMR_LEN", "B"), ("GPE0_BLK_LEN", "B"), ("GPE1_BLK_LEN", "B"),
    ("GPE1_BASE", "B"), ("CST_CNT", "B"), ("P_LVL2_LAT", "H"), ("P_LVL3_LAT", "H"), ("FLUSH_SIZE", "H"),
    ("FLUSH_STRIDE", "H"), ("DUTY_OFFSET", "B"), ("DUTY_WIDTH", "B"), ("DAY_ALRM", "B"), ("MON_ALRM", "B"),
    ("CENTURY", "B"), ("IAPC_BOOT_ARCH", "H"), ("Reserved", "B"), ("Flags", "I"), ("RESET_REG", "12s"),
    ("RESET_VALUE", "B"), ("ARM_BOOT_ARCH", "H"), ("MINOR_VERSION", "B"), ("X_FIRMWARE_CTRL", "Q"),
    ("X_DSDT", "Q"), ("X_PM1A_EVT_BLK", "12s"), ("X_PM1B_EVT_BLK", "12s"), ("X_PM1A_CNT_BLK", "12s"),
    ("X_PM1B_CNT_BLK", "12s"), ("X_PM2_CNT_BLK", "12s"), ("X_PM_TMR_BLK", "12s"), ("X_GPE0_BLK", "12s"),
    ("X_GPE1_BLK", "12s"), ("SLEEP_CONTROL_REG", "12s"), ("SLEEP_STATUS_REG", "12s"),
    ("HYPERVISOR_VENDOR_IDENTITY", "Q"),
]
FADT = Layout("EFI_ACPI_FIXED_ACPI_DESCRIPTION_TABLE", [("Header", f"{HEADER_SIZE}s"), *FADT_FIELDS])
FADT_REV3_SIZE = FADT.offset_of("SLEEP_CONTROL_REG")  # 244
FADT_REV5_SIZE = FADT.offset_of("HYPERVISOR_VENDOR_IDENTITY")  # 268


class FadtFlag(IntEnum):
    """FADT Flags bits (ACPI 6.5 Table 5.10)."""

    WBINVD = 0
    PROC_C1 = 2
    SLP_BUTTON = 5
    RTC_S4 = 7
    RESET_REG_SUP = 10
    USE_PLATFORM_CLOCK = 15
    FORCE_APIC_CLUSTER_MODEL = 18
    HW_REDUCED_ACPI = 20


IAPC_BOOT_ARCH_8042 = 1 << 1
MADT_HEADER = Layout("EFI_ACPI_MULTIPLE_APIC_DESCRIPTION_TABLE_HEADER",
                     [("Header", f"{HEADER_SIZE}s"), ("LocalApicAddress", "I"), ("Flags", "I")])
MADT_PCAT_COMPAT = 1


class MadtType(IntEnum):
    """Interrupt controller structure types (ACPI 6.5 Table 5.21)."""

    LOCAL_APIC = 0
    IO_APIC = 1
    INTERRUPT_SOURCE_OVERRIDE = 2
    LOCAL_APIC_NMI = 4
    LOCAL_X2APIC = 9
    LOCAL_X2APIC_NMI = 0xA
    MULTIPROCESSOR_WAKEUP = 0x10


MADT_ENTRIES: dict[int, Layout] = {
    MadtType.LOCAL_APIC: Layout("EFI_ACPI_PROCESSOR_LOCAL_APIC_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("AcpiProcessorUid", "B"), ("ApicId", "B"), ("Flags", "I")]),
    MadtType.IO_APIC: Layout("EFI_ACPI_IO_APIC_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("IoApicId", "B"), ("Reserved", "B"), ("IoApicAddress", "I"),
        ("GlobalSystemInterruptBase", "I")]),
    MadtType.INTERRUPT_SOURCE_OVERRIDE: Layout("EFI_ACPI_INTERRUPT_SOURCE_OVERRIDE_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("Bus", "B"), ("Source", "B"), ("GlobalSystemInterrupt", "I"),
        ("Flags", "H")]),
    MadtType.LOCAL_APIC_NMI: Layout("EFI_ACPI_LOCAL_APIC_NMI_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("AcpiProcessorUid", "B"), ("Flags", "H"), ("LocalApicLint", "B")]),
    MadtType.LOCAL_X2APIC: Layout("EFI_ACPI_PROCESSOR_LOCAL_X2APIC_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("Reserved", "H"), ("X2ApicId", "I"), ("Flags", "I"),
        ("AcpiProcessorUid", "I")]),
    MadtType.LOCAL_X2APIC_NMI: Layout("EFI_ACPI_LOCAL_X2APIC_NMI_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("Flags", "H"), ("AcpiProcessorUid", "I"), ("LocalX2ApicLint", "B"),
        ("Reserved", "3s")]),
    # ACPI 6.4 5.2.12.19, version 0 (16 bytes): what edk2's TdxDxe adds. Version 1 (ACPI 6.6) appends a 64-bit
    # reset vector; Linux 6.12 madt_wakeup.c accepts 16 bytes (ACPI_MADT_MP_WAKEUP_SIZE_V0) and up.
    MadtType.MULTIPROCESSOR_WAKEUP: Layout("EFI_ACPI_6_4_MULTIPROCESSOR_WAKEUP_STRUCTURE", [
        ("Type", "B"), ("Length", "B"), ("MailBoxVersion", "H"), ("Reserved", "I"), ("MailBoxAddress", "Q")]),
}
# ACPI 6.6 5.2.12.19, version 1 (24 bytes): version 0 and the 64-bit reset vector an AP goes to when the OS
# offlines it (edk2 406f42cb74; Linux 6.12 madt_wakeup.c takes it from version 1 on).
MP_WAKEUP_V1 = Layout("EFI_ACPI_6_6_MULTIPROCESSOR_WAKEUP_STRUCTURE", [
    ("Type", "B"), ("Length", "B"), ("MailBoxVersion", "H"), ("Reserved", "I"), ("MailBoxAddress", "Q"),
    ("ResetVector", "Q")])
# The mailbox the wakeup structure points at (ACPI 6.5 Table 5.44): 4 KiB, 4 KiB aligned; the OS half first.
MP_WAKEUP_MAILBOX = Layout("EFI_ACPI_6_4_MULTIPROCESSOR_WAKEUP_MAILBOX_STRUCTURE",
                           [("Command", "H"), ("Reserved", "H"), ("ApicId", "I"), ("WakeupVector", "Q")])
MP_WAKEUP_MAILBOX_SIZE = 4096
MP_WAKEUP_COMMAND_NOOP = 0
MP_WAKEUP_APICID_INVALID = 0xFFFFFFFF  # edk2 TdxMailboxLib MP_CPU_PROTECTED_MODE_MAILBOX_APICID_INVALID

MCFG_ALLOCATION = Layout("EFI_ACPI_MEMORY_MAPPED_ENHANCED_CONFIGURATION_SPACE_BASE_ADDRESS_ALLOCATION_STRUCTURE",
                         [("BaseAddress", "Q"), ("PciSegmentGroupNumber", "H"), ("StartBusNumber", "B"),
                          ("EndBusNumber", "B"), ("Reserved", "I")])
MCFG_RESERVED_SIZE = 8  # after the header, before the allocations
WAET_PM_TIMER_GOOD = 1 << 1  # "ACPI PM timer reliable": one read gives a consistent value


# --- checksums -------------------------------------------------------------------------------------------


def checksum8(data: Buffer) -> int:
    """The byte sum modulo 256; a table is valid when its sum over Length bytes is 0."""
    return sum(bytes(data)) & 0xFF


def set_checksum(buf: bytearray, at: int, start: int, length: int) -> None:
    """Make buf[start:start+length] sum to zero by the byte at `at` (inside that range), as edk2's
    AcpiPlatformChecksum does (the byte zeroed first). QEMU's ADD_CHECKSUM differs: edk2 sums the range with the
    byte as it is, so QEMU leaves it 0 (vmm/acpi.py run_loader)."""
    buf[at] = 0
    buf[at] = (-checksum8(buf[start : start + length])) & 0xFF


def table_header(signature: bytes, length: int, revision: int, *, oem_id: bytes, oem_table_id: bytes,
                 oem_revision: int, creator_id: bytes, creator_revision: int) -> bytes:
    """A description header with checksum 0 (the caller or the loader fixes it)."""
    return TABLE_HEADER.pack(Signature=signature, Length=length, Revision=revision, OemId=oem_id,
                             OemTableId=oem_table_id, OemRevision=oem_revision, CreatorId=creator_id,
                             CreatorRevision=creator_revision)


def gas(space: int, bit_width: int, address: int, *, bit_offset: int = 0, access_size: int = 0) -> bytes:
    return GAS.pack(AddressSpaceId=space, RegisterBitWidth=bit_width, RegisterBitOffset=bit_offset,
                    AccessSize=access_size, Address=address)


# --- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One ACPI table's bytes (Length of them) and where it was found."""

    address: int
    data: bytes

    @property
    def signature(self) -> str:
        return self.data[:4].decode("latin-1")

    @property
    def header(self) -> dict:
        return TABLE_HEADER.unpack(self.data, what=f"{self.signature} header")

    @property
    def checksum_ok(self) -> bool:
        return checksum8(self.data) == 0


def table_length(header: Buffer, *, where: str) -> int:
    """The Length of the description header in `header` (36 bytes or more); a length below 36 is an InputError."""
    h = TABLE_HEADER.unpack(header, what=where)
    if h["Length"] < HEADER_SIZE:
        raise InputError(f"{where}: table length {h['Length']} is shorter than its header", field="Length")
    return h["Length"]


def unpack_fadt(data: Buffer) -> dict:
    """The FADT's fields present in its Length (a revision-3 table stops after X_GPE1_BLK); GAS fields decoded."""
    out: dict = {}
    full = bytes(data) + bytes(max(0, FADT.size - len(data)))
    values = FADT.unpack(full)
    for name, fmt in FADT_FIELDS:
        if FADT.offset_of(name) + struct.calcsize("<" + fmt) > len(data):
            break
        value = values[name]
        out[name] = GAS.unpack(value) if fmt == "12s" else value
    return out


def madt_entries(data: Buffer) -> list[dict]:
    """The MADT's interrupt controller structures, decoded where the type is known (else Type and Length)."""
    MADT_HEADER.unpack(data, what="MADT")
    out, at = [], MADT_HEADER.size
    while at < len(data):
        if at + 2 > len(data):
            raise InputError("MADT entry header runs past the table", field="Length", offset=at)
        kind, length = data[at], data[at + 1]
        if length < 2 or at + length > len(data):
            raise InputError(f"MADT entry of type {kind:#x} has length {length}", field="Length", offset=at)
        layout = MADT_ENTRIES.get(kind)
        if layout is not None and length >= layout.size:
            entry = layout.unpack(data, at)
        else:
            entry = {"Type": kind, "Length": length}
        out.append(entry)
        at += length
    return out


# --- AML -------------------------------------------------------------------------------------------------

AML_ZERO, AML_ONE, AML_ONES = 0x00, 0x01, 0xFF
AML_BYTE_PREFIX, AML_WORD_PREFIX, AML_DWORD_PREFIX, AML_QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0E
AML_NAME_OP, AML_SCOPE_OP, AML_PACKAGE_OP, AML_METHOD_OP = 0x08, 0x10, 0x12, 0x14
AML_EXT_PREFIX = 0x5B  # ExtOpPrefix: DeviceOp (0x82), ProcessorOp (0x83), ... each followed by a PkgLength
ROOT_CHAR = 0x5C  # '\'


def aml_pkg_length(n: int) -> bytes:
    """PkgLength (ACPI 6.5 20.2.4) of a package whose body (without the PkgLength) is n bytes: the encoding
    counts itself. One byte holds up to 63; two to four bytes carry 4 + 8k bits."""
    for extra in range(4):
        total = n + 1 + extra
        if extra == 0 and total <= 0x3F:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            return bytes([(extra << 6) | (total & 0xF)]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {n} bytes is too long for a PkgLength")


AML_BUFFER_OP = 0x11
AML_DEVICE_OP = 0x82  # after AML_EXT_PREFIX
RES_IRQ_NO_FLAGS, RES_IO, RES_END_TAG = 0x22, 0x47, 0x79  # small descriptor tags with their lengths (6.4.2)
IO_DECODE16 = 1


def aml_name_seg(name: str) -> bytes:
    """A NameSeg: up to four characters, '_'-padded (QEMU's build_append_nameseg)."""
    if not 1 <= len(name) <= 4 or not (name[0].isupper() or name[0] == "_"):
        raise ValueError(f"AML NameSeg {name!r}")
    return name.ljust(4, "_").encode("ascii")


def aml_int(value: int) -> bytes:
    """An integer as QEMU's build_append_int encodes it: ZeroOp, OneOp, else the narrowest prefixed constant."""
    if value in (AML_ZERO, AML_ONE):
        return bytes([value])
    for prefix, width in ((AML_BYTE_PREFIX, 1), (AML_WORD_PREFIX, 2), (AML_DWORD_PREFIX, 4), (AML_QWORD_PREFIX, 8)):
        if value < 1 << (8 * width):
            return bytes([prefix]) + value.to_bytes(width, "little")
    raise ValueError(f"AML integer {value:#x} wider than 64 bits")


def eisa_id(text: str) -> int:
    """A compressed EISA ID ('PNP0B00') as the 32-bit integer _HID holds: three letters of 5 bits and four hex
    digits, stored byte-swapped (ACPI 6.5 19.6.44 EISAID; QEMU's aml_eisaid, always a DWordConst)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"EISA ID {text!r}")
    raw = (ord(text[0]) - 0x40) << 26 | (ord(text[1]) - 0x40) << 21 | (ord(text[2]) - 0x40) << 16 | int(text[3:], 16)
    return int.from_bytes(raw.to_bytes(4, "big"), "little")


def eisa_id_text(value: int) -> str:
    raw = int.from_bytes(value.to_bytes(4, "little"), "big")
    return "".join(chr(((raw >> s) & 0x1F) + 0x40) for s in (26, 21, 16)) + f"{raw & 0xFFFF:04X}"


def aml_name(name: str, data: bytes) -> bytes:
    return bytes([AML_NAME_OP]) + aml_name_seg(name) + data


def aml_scope(name: str, body: bytes) -> bytes:
    """Scope (name) {body}; name a NameSeg at the root (QEMU writes aml_scope("_SB") without the root prefix)."""
    inner = aml_name_seg(name) + body
    return bytes([AML_SCOPE_OP]) + aml_pkg_length(len(inner)) + inner


def aml_device(name: str, body: bytes) -> bytes:
    inner = aml_name_seg(name) + body
    return bytes([AML_EXT_PREFIX, AML_DEVICE_OP]) + aml_pkg_length(len(inner)) + inner


def aml_resource_template(descriptors: bytes) -> bytes:
    """ResourceTemplate () {...}: a Buffer of the descriptors and an End Tag with checksum 0 (QEMU's aml_append of
    an AML_RES_TEMPLATE; a zero checksum counts as valid)."""
    data = descriptors + bytes([RES_END_TAG, 0])
    inner = aml_int(len(data)) + data
    return bytes([AML_BUFFER_OP]) + aml_pkg_length(len(inner)) + inner


def res_io(base: int, length: int, align: int = 1) -> bytes:
    """IO (Decode16, base, base, align, length): a fixed range (min == max), as QEMU's aml_io."""
    return bytes([RES_IO, IO_DECODE16]) + base.to_bytes(2, "little") * 2 + bytes([align, length])


def res_irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags () {irq}: the 2-byte IRQ descriptor (edge, active high, exclusive by definition)."""
    return bytes([RES_IRQ_NO_FLAGS]) + (1 << irq).to_bytes(2, "little")


def parse_resources(data: Buffer) -> list[dict]:
    """The small resource descriptors of a _CRS buffer up to its End Tag: IO and IRQ decoded; others and large
    descriptors an InputError (a DSDT from this VMM has no other)."""
    out: list[dict] = []
    at = 0
    while at < len(data):
        tag = data[at]
        if tag & 0x80:
            raise InputError(f"large resource descriptor {tag:#x} is not modelled", field="_CRS", offset=at)
        kind, length = tag >> 3, tag & 7
        body = bytes(data[at + 1 : at + 1 + length])
        if len(body) < length:
            raise InputError("resource descriptor runs past its buffer", field="_CRS", offset=at)
        if tag == RES_END_TAG:
            return out
        if tag == RES_IO:
            out.append({"type": "io", "decode16": bool(body[0] & 1), "min": int.from_bytes(body[1:3], "little"),
                        "max": int.from_bytes(body[3:5], "little"), "align": body[5], "length": body[6]})
        elif kind == RES_IRQ_NO_FLAGS >> 3 and length in (2, 3):
            mask = int.from_bytes(body[:2], "little")
            out.append({"type": "irq", "irqs": [i for i in range(16) if mask >> i & 1],
                        "flags": body[2] if length == 3 else None})
        else:
            raise InputError(f"resource descriptor {tag:#x} is not modelled", field="_CRS", offset=at)
        at += 1 + length
    raise InputError("resource template without an End Tag", field="_CRS", offset=at)


def _read_pkg_length(aml: Buffer, at: int) -> tuple[int, int]:
    """(PkgLength value, bytes it took) at `at`."""
    if at >= len(aml):
        raise InputError("AML PkgLength past the end", field="PkgLength", offset=at)
    lead = aml[at]
    extra = lead >> 6
    if extra == 0:
        return lead & 0x3F, 1
    if at + 1 + extra > len(aml):
        raise InputError("AML PkgLength past the end", field="PkgLength", offset=at)
    value = lead & 0xF
    for i in range(extra):
        value |= aml[at + 1 + i] << (4 + 8 * i)
    return value, 1 + extra


def _read_integer(aml: Buffer, at: int) -> tuple[int, int]:
    """An AML integer constant (ZeroOp, OneOp, OnesOp or Byte/Word/DWord/QWordConst) at `at`: (value, size)."""
    if at >= len(aml):
        raise InputError("AML integer past the end", field="DataObject", offset=at)
    op = aml[at]
    if op in (AML_ZERO, AML_ONE):
        return op, 1
    if op == AML_ONES:
        return 0xFFFFFFFF, 1  # a revision-1 DSDT's integers are 32-bit
    width = {AML_BYTE_PREFIX: 1, AML_WORD_PREFIX: 2, AML_DWORD_PREFIX: 4, AML_QWORD_PREFIX: 8}.get(op)
    if width is None or at + 1 + width > len(aml):
        raise InputError(f"AML opcode {op:#x} is not an integer constant", field="DataObject", offset=at)
    return int.from_bytes(bytes(aml[at + 1 : at + 1 + width]), "little"), 1 + width


def _read_package(aml: Buffer, at: int, name: str, base: int) -> tuple[list[int], int]:
    """A Package of integer constants at `at` (its PackageOp): (elements, offset after it)."""
    length, size = _read_pkg_length(aml, at + 1)
    body = at + 1 + size
    end = at + 1 + length
    if end > len(aml) or body >= end:
        raise InputError(f"AML package {name} runs past the table", field="PkgLength", offset=base + at)
    count = aml[body]
    elements, pos = [], body + 1
    for _ in range(count):
        value, size = _read_integer(aml, pos)
        elements.append(value)
        pos += size
    if pos > end:
        raise InputError(f"AML package {name} elements run past its length", field="PkgLength", offset=base + at)
    return elements, end


def aml_named_packages(aml: Buffer, base: int = 0) -> dict[str, list[int]]:
    """Name(XXXX, Package(){integers...}) objects at the top level of an AML byte stream (a DSDT's body), by
    root-relative name; Scope, Method, Device and Processor terms are stepped over by their PkgLength. What
    Linux's \\_S5 lookup (acpi_get_sleep_type_data) reads from a minimal DSDT; other terms are an InputError."""
    out: dict[str, list[int]] = {}
    at = 0
    while at < len(aml):
        op = aml[at]
        if op == AML_NAME_OP:
            at += 1
            if at < len(aml) and aml[at] == ROOT_CHAR:
                at += 1
            name = bytes(aml[at : at + 4]).decode("latin-1")
            at += 4
            if at >= len(aml) or aml[at] != AML_PACKAGE_OP:
                value, size = _read_integer(aml, at)
                at += size
                continue
            out[name], at = _read_package(aml, at, name, base)
        elif op in (AML_SCOPE_OP, AML_METHOD_OP):
            length, _ = _read_pkg_length(aml, at + 1)
            at += 1 + length
        elif op == AML_EXT_PREFIX and at + 1 < len(aml) and aml[at + 1] in (0x82, 0x83, 0x84, 0x85):
            length, _ = _read_pkg_length(aml, at + 2)
            at += 2 + length
        else:
            raise InputError(f"AML opcode {op:#x} at the DSDT's top level is not modelled", field="TermObj",
                             offset=base + at)
    return out


def aml_names(aml: Buffer, base: int = 0, scope: str = "\\") -> dict[str, int | bytes | list[int]]:
    """Every Name(...) object of a DSDT body by absolute path ('\\_SB_.RTC_._HID'), walking into Scope and Device
    terms: integers, Buffers (their bytes) and Packages of integers. Methods and Processor/PowerResource/Thermal
    terms are stepped over; any other term is an InputError naming its offset (a DSDT from this VMM has none)."""
    out: dict[str, int | bytes | list[int]] = {}

    def path(name: str) -> str:
        return name if name.startswith("\\") else scope.rstrip(".") + ("" if scope == "\\" else ".") + name

    def seg(at: int) -> tuple[str, int]:
        root = at < len(aml) and aml[at] == ROOT_CHAR
        start = at + 1 if root else at
        if start + 4 > len(aml):
            raise InputError("AML NameSeg past the end", field="NameString", offset=base + at)
        name = bytes(aml[start : start + 4]).decode("latin-1")
        return ("\\" + name if root else name), start + 4

    at = 0
    while at < len(aml):
        op = aml[at]
        if op == AML_NAME_OP:
            name, at = seg(at + 1)
            if at < len(aml) and aml[at] == AML_PACKAGE_OP:
                out[path(name)], at = _read_package(aml, at, name, base)
            elif at < len(aml) and aml[at] == AML_BUFFER_OP:
                length, size = _read_pkg_length(aml, at + 1)
                end = at + 1 + length
                count, isize = _read_integer(aml, at + 1 + size)
                data = bytes(aml[at + 1 + size + isize : end])
                if end > len(aml) or len(data) < count:
                    raise InputError(f"AML buffer {name} runs past its package", field="PkgLength", offset=base + at)
                out[path(name)] = data[:count]
                at = end
            else:
                value, size = _read_integer(aml, at)
                out[path(name)] = value
                at += size
        elif op == AML_SCOPE_OP or (op == AML_EXT_PREFIX and at + 1 < len(aml) and aml[at + 1] == AML_DEVICE_OP):
            head = at + (1 if op == AML_SCOPE_OP else 2)
            length, size = _read_pkg_length(aml, head)
            end = head + length
            if end > len(aml):
                raise InputError("AML Scope/Device runs past the table", field="PkgLength", offset=base + at)
            name, body = seg(head + size)
            out.update(aml_names(aml[body:end], base + body, path(name)))
            at = end
        elif op == AML_METHOD_OP:
            length, _ = _read_pkg_length(aml, at + 1)
            at += 1 + length
        elif op == AML_EXT_PREFIX and at + 1 < len(aml) and aml[at + 1] in (0x83, 0x84, 0x85):
            length, _ = _read_pkg_length(aml, at + 2)
            at += 2 + length
        else:
            raise InputError(f"AML opcode {op:#x} is not modelled", field="TermObj", offset=base + at)
    return out


# --- QEMU's linker/loader script (etc/table-loader) --------------------------------------------------------


class LoaderCommand(IntEnum):
    """BiosLinkerLoaderEntry.command (QEMU hw/acpi/bios-linker-loader.c v10.1; edk2 QemuLoader.h)."""

    ALLOCATE = 1
    ADD_POINTER = 2
    ADD_CHECKSUM = 3
    WRITE_POINTER = 4


class AllocZone(IntEnum):
    HIGH = 1  # anywhere in RAM (below 4 GiB for SeaBIOS)
    FSEG = 2  # the 0xF0000 segment, where a BIOS looks for the RSDP


LOADER_FNAME_SIZE = 56
LOADER_ENTRY_SIZE = 128
LOADER_ALLOCATE = Layout("QEMU_LOADER_ALLOCATE", [("File", "56s"), ("Alignment", "I"), ("Zone", "B")])
LOADER_ADD_POINTER = Layout("QEMU_LOADER_ADD_POINTER", [("PointerFile", "56s"), ("PointeeFile", "56s"),
                                                        ("PointerOffset", "I"), ("PointerSize", "B")])
LOADER_ADD_CHECKSUM = Layout("QEMU_LOADER_ADD_CHECKSUM", [("File", "56s"), ("ResultOffset", "I"),
                                                          ("Start", "I"), ("Length", "I")])
LOADER_WRITE_POINTER = Layout("QEMU_LOADER_WRITE_POINTER", [("PointerFile", "56s"), ("PointeeFile", "56s"),
                                                            ("PointerOffset", "I"), ("PointeeOffset", "I"),
                                                            ("PointerSize", "B")])
LOADER_LAYOUTS = {
    LoaderCommand.ALLOCATE: LOADER_ALLOCATE,
    LoaderCommand.ADD_POINTER: LOADER_ADD_POINTER,
    LoaderCommand.ADD_CHECKSUM: LOADER_ADD_CHECKSUM,
    LoaderCommand.WRITE_POINTER: LOADER_WRITE_POINTER,
}


def loader_file_name(raw: bytes, *, offset: int) -> str:
    """A NUL-terminated fw_cfg file name field; one without its NUL is malformed (edk2: EFI_PROTOCOL_ERROR)."""
    if raw[-1:] != b"\0":
        raise InputError("linker/loader file name is not NUL-terminated", field="File", offset=offset)
    return raw.split(b"\0", 1)[0].decode("latin-1")


def pack_loader_entry(command: LoaderCommand, **fields: object) -> bytes:
    body = LOADER_LAYOUTS[command].pack(fields)
    return int(command).to_bytes(4, "little") + body.ljust(LOADER_ENTRY_SIZE - 4, b"\0")


def unpack_loader(script: Buffer) -> list[tuple[int, dict]]:
    """The (command, fields) of each 128-byte entry; file names decoded. Command 0 entries (the padding QEMU
    leaves up to 4 KiB) and unknown commands are returned with empty fields, as edk2 skips them."""
    if len(script) % LOADER_ENTRY_SIZE:
        raise InputError(f"linker/loader script of {len(script)} bytes is not a whole number of 128-byte entries",
                         field="etc/table-loader")
    out: list[tuple[int, dict]] = []
    for at in range(0, len(script), LOADER_ENTRY_SIZE):
        command = int.from_bytes(bytes(script[at : at + 4]), "little")
        layout = LOADER_LAYOUTS.get(command)  # type: ignore[call-overload]
        if layout is None:
            out.append((command, {}))
            continue
        fields = layout.unpack(script, at + 4)
        for key in ("File", "PointerFile", "PointeeFile"):
            if key in fields:
                fields[key] = loader_file_name(fields[key], offset=at + 4)
        out.append((command, fields))
    return out
