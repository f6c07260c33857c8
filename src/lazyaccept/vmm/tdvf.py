"""TDVF metadata of a firmware image, read the way QEMU reads it for a TD.

The chain QEMU follows (QEMU 10.1):
  1. hw/i386/x86-common.c x86_bios_rom_init: a TD's firmware is loaded with -bios, never as pflash, into a
     region mapped at 4 GiB minus the image size; the image size must be a positive multiple of 64 KiB.
  2. hw/i386/pc_sysfw_ovmf.c pc_system_parse_ovmf_flash / pc_system_ovmf_table_find: OVMF's GUIDed table
     ends at image end - 0x30 with the footer GUID; the u16 in front of it is the table length including
     that GUID and itself; entries are walked backwards, each being (data, u16 entry length, GUID).
  3. hw/i386/tdvf.c tdvf_get_metadata / tdvf_parse_metadata: the TDX metadata offset entry holds a u32,
     image size minus the offset of the TDVF_DESCRIPTOR, followed by 32-byte TDVF_SECTION entries.
  4. target/i386/kvm/tdx.c: every section is TDH.MEM.PAGE.ADDed (KVM_TDX_INIT_MEM_REGION), BFV/CFV from
     the image, TD_HOB/TEMP_MEM as zeroed RAM; MR_EXTEND adds the measurement; the first TD_HOB section
     is where the TD HOB goes, and a metadata without one is fatal.

Checks QEMU (or KVM, when QEMU hands it the section) applies are marked "QEMU"/"KVM" below; the others are
lazyaccept's own, against hostile images, and say so. Every rejection is an InputError naming the field and
its byte offset in the image.
"""

from __future__ import annotations

import mmap
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

from lazyaccept.binlayout import Layout, guid, guid_bytes, guid_from_bytes
from lazyaccept.errors import InputError
from lazyaccept.units import GiB, KiB

OVMF_TABLE_FOOTER_GUID = guid("96b582de-1fb2-45f7-baea-a366c55a082d")
TDX_METADATA_OFFSET_GUID = guid("e47a6535-984a-4798-865e-4685a7bf8ec2")
# OVMF puts this GUID right in front of the descriptor (OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm);
# QEMU never reads it, and neither do we: it is only written by synthesize_image.
TDX_METADATA_GUID = guid("e9eaf9f3-168e-44d5-a8eb-7f4d8738f6ae")

TDVF_SIGNATURE = b"TDVF"
TDVF_VERSION = 1
TDVF_ALIGNMENT = 4 * KiB
FOUR_GIB = 4 * GiB
# Distance from the image end to the footer GUID; the 0x20 bytes after the GUID are the reset vector area.
OVMF_FOOTER_GUID_FROM_END = 0x30
# x86_bios_rom_init refuses a firmware image whose size is not a multiple of this.
BIOS_SIZE_GRANULE = 64 * KiB
# Ours: td-shim's metadata tooling refuses 0x10000 sections or more; no real TDVF has more than a dozen.
MAX_SECTIONS = 0xFFFF

OVMF_TABLE_FOOTER = Layout("OVMF_TABLE_FOOTER", [("TableLength", "H"), ("Guid", "16s")])
OVMF_TABLE_ENTRY_TAIL = Layout("OVMF_TABLE_ENTRY_TAIL", [("Length", "H"), ("Guid", "16s")])
TDX_METADATA_OFFSET = Layout("TDX_METADATA_OFFSET", [("Offset", "I")])
TDVF_DESCRIPTOR = Layout(
    "TDVF_DESCRIPTOR", [("Signature", "4s"), ("Length", "I"), ("Version", "I"), ("NumberOfSectionEntries", "I")]
)
TDVF_SECTION = Layout(
    "TDVF_SECTION",
    [
        ("DataOffset", "I"),
        ("RawDataSize", "I"),
        ("MemoryAddress", "Q"),
        ("MemoryDataSize", "Q"),
        ("Type", "I"),
        ("Attributes", "I"),
    ],
)


class TdvfSectionType(IntEnum):
    """TDVF_SECTION.Type: 0-3 from the TDVF design guide (QEMU include/hw/i386/tdvf.h), 4-8 from td-shim
    (td-shim-interface/src/metadata.rs). QEMU rejects every type above TEMP_MEM."""

    BFV = 0
    CFV = 1
    TD_HOB = 2
    TEMP_MEM = 3
    PERM_MEM = 4
    PAYLOAD = 5
    PAYLOAD_PARAM = 6
    TD_INFO = 7
    TD_PARAMS = 8


class TdvfAttributes(IntFlag):
    """TDVF_SECTION.Attributes. QEMU acts on MR_EXTEND only; PAGE_AUG is a td-shim PermMem attribute."""

    MR_EXTEND = 1 << 0
    PAGE_AUG = 1 << 1


# The types QEMU knows (hw/i386/tdvf.c tdvf_parse_and_check_section_entry rejects the rest).
QEMU_SECTION_TYPES = frozenset({TdvfSectionType.BFV, TdvfSectionType.CFV, TdvfSectionType.TD_HOB,
                                TdvfSectionType.TEMP_MEM})
IMAGE_SECTION_TYPES = frozenset({TdvfSectionType.BFV, TdvfSectionType.CFV})


def type_name(value: int) -> str:
    try:
        return TdvfSectionType(value).name
    except ValueError:
        return f"unknown type {value}"


def attribute_names(value: int) -> list[str]:
    """['MR_EXTEND'], [] for 0, unknown bits as a hex mask."""
    names = [flag.name for flag in TdvfAttributes if value & flag and flag.name]
    unknown = value & ~sum(TdvfAttributes)
    if unknown:
        names.append(f"{unknown:#x}")
    return names


@dataclass(frozen=True)
class TdvfSection:
    """One TDVF_SECTION, in metadata order."""

    index: int
    type: TdvfSectionType
    attributes: TdvfAttributes
    raw_offset: int
    raw_size: int
    memory_base: int
    memory_size: int

    @property
    def memory_end(self) -> int:
        return self.memory_base + self.memory_size

    @property
    def measured(self) -> bool:
        """QEMU passes KVM_TDX_MEASURE_MEMORY_REGION (TDH.MR.EXTEND after the ADD) for MR_EXTEND only."""
        return bool(self.attributes & TdvfAttributes.MR_EXTEND)

    @property
    def from_image(self) -> bool:
        """BFV/CFV pages are copied from the image; TD_HOB/TEMP_MEM pages are added zeroed."""
        return self.type in IMAGE_SECTION_TYPES

    @property
    def qemu_add(self) -> str:
        """How QEMU hands the section to the TD: every section is ADDed (already accepted), some measured."""
        return "ADD+MR.EXTEND" if self.measured else "ADD"


@dataclass(frozen=True)
class TdvfMetadata:
    """The sections QEMU would use, and where the image sits in guest-physical memory."""

    sections: tuple[TdvfSection, ...]
    image_size: int
    descriptor_offset: int
    source: str = field(default="", compare=False)

    @property
    def rom_base(self) -> int:
        """GPA of the image's first byte: QEMU maps a TD's firmware at 4 GiB minus its size.

        QEMU does not check that BFV/CFV MemoryAddress fall in [rom_base, 4 GiB), and neither do we; a section
        outside guest-private memory fails later, when KVM_TDX_INIT_MEM_REGION is refused.
        """
        return FOUR_GIB - self.image_size

    def of_type(self, kind: TdvfSectionType) -> tuple[TdvfSection, ...]:
        return tuple(s for s in self.sections if s.type == kind)

    @property
    def td_hob(self) -> TdvfSection:
        """The section QEMU writes the TD HOB into (target/i386/kvm/tdx.c tdx_get_hob_entry: the first)."""
        return self.of_type(TdvfSectionType.TD_HOB)[0]

    @property
    def ram_sections(self) -> tuple[TdvfSection, ...]:
        """TD_HOB and TEMP_MEM: the pieces of RAM QEMU adds before the TD runs, in metadata order."""
        return tuple(s for s in self.sections if not s.from_image)

    def region_of(self, section: TdvfSection) -> str:
        """'ROM' if the section lies in the range the image is mapped at, else 'RAM'."""
        return "ROM" if self.rom_base <= section.memory_base and section.memory_end <= FOUR_GIB else "RAM"


# ---------------------------------------------------------------------------------------------------------
# Reading


Buffer = bytes | bytearray | memoryview | mmap.mmap


def check_image_size(size: int) -> None:
    """QEMU x86_bios_rom_init: a positive multiple of 64 KiB; tdvf_get_metadata: fits in 32 bits."""
    if size <= 0 or size % BIOS_SIZE_GRANULE:
        raise InputError(
            f"firmware image size {size:#x} is not a positive multiple of 64 KiB, so QEMU would not load it",
            field="image size",
        )
    if size >= FOUR_GIB:
        raise InputError(f"firmware image size {size:#x} does not fit below 4 GiB", field="image size")


def ovmf_table_find(image: Buffer, entry_guid: uuid.UUID) -> tuple[int, int] | None:
    """(offset, length) of the data of the first footer-table entry with this GUID, walking backwards as QEMU.

    None if the image has no footer GUID or no such entry. A corrupt table length, or an entry length met
    before the wanted entry is found, is an InputError (QEMU gives up at the same point, silently).
    """
    size = len(image)
    footer_guid_at = size - OVMF_FOOTER_GUID_FROM_END
    footer_at = footer_guid_at - OVMF_TABLE_FOOTER.offset_of("Guid")
    if footer_at < 0:
        raise InputError(
            f"image of {size} bytes is too short for the OVMF table footer", field="OVMF_TABLE_FOOTER", offset=0
        )
    footer = OVMF_TABLE_FOOTER.unpack(image, footer_at)
    if uuid.UUID(bytes_le=footer["Guid"]) != OVMF_TABLE_FOOTER_GUID:
        return None
    table_length = footer["TableLength"]
    # The table length counts the footer's own GUID and length field; the entries lie in front of it.
    entries_length = table_length - OVMF_TABLE_FOOTER.size
    if entries_length < 0 or entries_length > footer_at:
        raise InputError(
            f"OVMF footer table length {table_length} is out of range (at least {OVMF_TABLE_FOOTER.size}, at most "
            f"{footer_at + OVMF_TABLE_FOOTER.size})",
            field="OVMF_TABLE_FOOTER.TableLength",
            offset=footer_at,
        )
    end = footer_at  # one past the last byte of the entry being looked at
    remaining = entries_length
    index = 0
    while remaining >= OVMF_TABLE_ENTRY_TAIL.size:
        tail_at = end - OVMF_TABLE_ENTRY_TAIL.size
        tail = OVMF_TABLE_ENTRY_TAIL.unpack(image, tail_at)
        length = tail["Length"]
        if length < OVMF_TABLE_ENTRY_TAIL.size or length > remaining:
            raise InputError(
                f"OVMF footer table entry {index} has length {length}, outside [{OVMF_TABLE_ENTRY_TAIL.size}, "
                f"{remaining}]",
                field=f"OVMF_TABLE_ENTRY[{index}].Length",
                offset=tail_at,
            )
        if uuid.UUID(bytes_le=tail["Guid"]) == entry_guid:
            return end - length, length - OVMF_TABLE_ENTRY_TAIL.size
        end -= length
        remaining -= length
        index += 1
    return None


def _section_error(index: int, field_name: str, base: int, message: str) -> InputError:
    return InputError(
        f"TDVF section {index}: {message}",
        field=f"TDVF_SECTION[{index}].{field_name}",
        offset=base + TDVF_SECTION.offset_of(field_name),
    )


def _parse_section(image_size: int, index: int, at: int, raw: dict[str, Any]) -> TdvfSection:
    def fail(field_name: str, message: str) -> InputError:
        return _section_error(index, field_name, at, message)

    data_offset, raw_size = raw["DataOffset"], raw["RawDataSize"]
    base, size, kind = raw["MemoryAddress"], raw["MemoryDataSize"], raw["Type"]
    # QEMU tdvf_parse_and_check_section_entry, in its order.
    if size < raw_size:
        raise fail("RawDataSize", f"RawDataSize {raw_size:#x} exceeds MemoryDataSize {size:#x}")
    if base % TDVF_ALIGNMENT:
        raise fail("MemoryAddress", f"MemoryAddress {base:#x} is not 4 KiB aligned")
    if size % TDVF_ALIGNMENT:
        raise fail("MemoryDataSize", f"MemoryDataSize {size:#x} is not 4 KiB aligned")
    if kind not in QEMU_SECTION_TYPES:
        # td-shim's types (PermMem, Payload, ...) have no QEMU implementation: QEMU refuses the image.
        raise fail("Type", f"section type {type_name(kind)} is not supported by QEMU (BFV, CFV, TD_HOB, TEMP_MEM)")
    section_type = TdvfSectionType(kind)
    if section_type in IMAGE_SECTION_TYPES and raw_size == 0:
        raise fail("RawDataSize", f"{section_type.name} section has RawDataSize 0")
    if section_type not in IMAGE_SECTION_TYPES and raw_size != 0:
        raise fail("RawDataSize", f"{section_type.name} section has RawDataSize {raw_size:#x}, must be 0")
    # KVM tdx_vcpu_init_mem_region refuses an empty or wrapping range and an unaligned source.
    if size == 0:
        raise fail("MemoryDataSize", "MemoryDataSize is 0")
    if base + size > 1 << 64:
        raise fail("MemoryDataSize", f"memory range {base:#x}+{size:#x} wraps past 2^64")
    if section_type in IMAGE_SECTION_TYPES:
        if data_offset % TDVF_ALIGNMENT:
            raise fail("DataOffset", f"DataOffset {data_offset:#x} is not 4 KiB aligned")
        # Ours: QEMU takes the pages at image + DataOffset without a bound check; a careful reader must not.
        if data_offset >= image_size:
            raise fail("DataOffset", f"DataOffset {data_offset:#x} is beyond the end of the {image_size:#x}-byte image")
        if data_offset + raw_size > image_size:
            raise fail(
                "RawDataSize",
                f"{section_type.name} raw data [{data_offset:#x}, {data_offset + raw_size:#x}) runs past the end of "
                f"the {image_size:#x}-byte image",
            )
        # QEMU hands KVM MemoryDataSize / 4K pages starting at the raw data (tdx.c tdx_init_fw_mem_region).
        if data_offset + size > image_size:
            raise fail(
                "MemoryDataSize",
                f"QEMU copies MemoryDataSize {size:#x} bytes from DataOffset {data_offset:#x}, past the end of the "
                f"{image_size:#x}-byte image",
            )
    return TdvfSection(
        index=index,
        type=section_type,
        attributes=TdvfAttributes(raw["Attributes"]),
        raw_offset=data_offset,
        raw_size=raw_size,
        memory_base=base,
        memory_size=size,
    )


def _check_layout(sections: Iterable[TdvfSection], table_at: int, descriptor_at: int) -> None:
    """Checks across sections: exactly one TD_HOB, no two sections sharing memory."""
    sections = list(sections)
    hobs = [s for s in sections if s.type == TdvfSectionType.TD_HOB]
    if not hobs:
        # QEMU tdx_get_hob_entry exits: "TDVF metadata doesn't specify TD_HOB location".
        raise InputError(
            "TDVF metadata has no TD_HOB section",
            field="TDVF_DESCRIPTOR.NumberOfSectionEntries",
            offset=descriptor_at + TDVF_DESCRIPTOR.offset_of("NumberOfSectionEntries"),
        )
    if len(hobs) > 1:
        # Ours: QEMU silently uses the first; the TDVF design guide and td-shim allow one.
        second = hobs[1]
        raise _section_error(
            second.index, "Type", table_at + second.index * TDVF_SECTION.size,
            f"second TD_HOB section (section {hobs[0].index} is the first)",
        )
    # Ours: overlapping sections would be ADDed twice, which KVM and the TDX module refuse later on.
    ordered = sorted(sections, key=lambda s: (s.memory_base, s.index))
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.memory_base < before.memory_end:
            later = max(before, after, key=lambda s: s.index)
            other = before if later is after else after
            raise _section_error(
                later.index, "MemoryAddress", table_at + later.index * TDVF_SECTION.size,
                f"memory [{later.memory_base:#x}, {later.memory_end:#x}) overlaps section {other.index} "
                f"[{other.memory_base:#x}, {other.memory_end:#x})",
            )


def parse_tdvf_metadata(image: Buffer, *, source: str = "") -> TdvfMetadata:
    """The TDVF metadata of a firmware image, checked as QEMU checks it plus the hostile-image checks above."""
    size = len(image)
    found = ovmf_table_find(image, TDX_METADATA_OFFSET_GUID)
    if found is None:
        if guid_from_bytes(image, size - OVMF_FOOTER_GUID_FROM_END) != OVMF_TABLE_FOOTER_GUID:
            raise InputError(
                f"no OVMF table footer GUID {OVMF_TABLE_FOOTER_GUID} at image end - 0x30: not an OVMF/TDVF image",
                field="OVMF_TABLE_FOOTER.Guid",
                offset=size - OVMF_FOOTER_GUID_FROM_END,
            )
        raise InputError(
            f"the OVMF footer table has no TDX metadata offset entry {TDX_METADATA_OFFSET_GUID}: not a TDVF image",
            field="OVMF_TABLE_FOOTER",
            offset=size - OVMF_FOOTER_GUID_FROM_END - OVMF_TABLE_FOOTER.offset_of("Guid"),
        )
    data_at, data_len = found
    # Ours: QEMU reads four bytes whatever the entry's data length.
    if data_len < TDX_METADATA_OFFSET.size:
        raise InputError(
            f"TDX metadata offset entry holds {data_len} bytes of data, needs {TDX_METADATA_OFFSET.size}",
            field="TDX_METADATA_OFFSET.Offset",
            offset=data_at,
        )
    distance = TDX_METADATA_OFFSET.unpack(image, data_at)["Offset"]
    descriptor_at = size - distance
    # QEMU: the descriptor header must lie inside the image (the distance counts back from the end).
    if distance > size or descriptor_at + TDVF_DESCRIPTOR.size > size:
        raise InputError(
            f"TDX metadata offset {distance:#x} puts the TDVF descriptor outside the {size:#x}-byte image",
            field="TDX_METADATA_OFFSET.Offset",
            offset=data_at,
        )
    desc = TDVF_DESCRIPTOR.unpack(image, descriptor_at)

    def desc_error(field_name: str, message: str) -> InputError:
        return InputError(
            message, field=f"TDVF_DESCRIPTOR.{field_name}", offset=descriptor_at + TDVF_DESCRIPTOR.offset_of(field_name)
        )

    if desc["Signature"] != TDVF_SIGNATURE:
        raise desc_error("Signature", f"TDVF descriptor signature is {desc['Signature']!r}, expected b'TDVF'")
    length, count = desc["Length"], desc["NumberOfSectionEntries"]
    if descriptor_at + length > size:
        raise desc_error("Length", f"TDVF descriptor Length {length:#x} runs past the end of the image")
    if desc["Version"] != TDVF_VERSION:
        raise desc_error("Version", f"TDVF descriptor version {desc['Version']}, only version 1 is defined")
    if count < 2:
        raise desc_error("NumberOfSectionEntries", f"TDVF descriptor has {count} sections, QEMU needs at least 2")
    if count > MAX_SECTIONS:
        raise desc_error("NumberOfSectionEntries", f"TDVF descriptor claims {count} sections, at most {MAX_SECTIONS}")
    expected = TDVF_DESCRIPTOR.size + count * TDVF_SECTION.size
    if length != expected:
        raise desc_error(
            "Length", f"TDVF descriptor Length {length:#x} does not match {count} sections ({expected:#x} bytes)"
        )
    # Length is inside the image (checked above), so every entry is too.
    table_at = descriptor_at + TDVF_DESCRIPTOR.size
    entries = [table_at + i * TDVF_SECTION.size for i in range(count)]
    sections = tuple(_parse_section(size, i, at, TDVF_SECTION.unpack(image, at)) for i, at in enumerate(entries))
    _check_layout(sections, table_at, descriptor_at)
    # QEMU refuses an image of the wrong size at load time, before it reads any metadata; we check it last so
    # that an image that is also inconsistent (OVMF_CODE_4M.fd, 0x37c000 bytes, is both) gets the more telling
    # message about its sections.
    check_image_size(size)
    return TdvfMetadata(sections=sections, image_size=size, descriptor_offset=descriptor_at, source=source)


def read_firmware(path: str | os.PathLike[str]) -> TdvfMetadata:
    """Parse the TDVF metadata of the image at path; an unreadable file is an InputError naming it."""
    path = Path(path)
    try:
        # stat first: opening a FIFO would block, and a directory is no image.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"cannot read firmware image {path}: not a regular file")
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return _parse_named(path, b"")
            # Mapped rather than read: only the footer, the descriptor and the section table are touched.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
                return _parse_named(path, image)
    except OSError as exc:
        raise InputError(f"cannot read firmware image {path}: {exc.strerror or exc}") from None


def _parse_named(path: Path, image: Buffer) -> TdvfMetadata:
    """parse_tdvf_metadata, with the file name in front of any error message (field and offset kept)."""
    try:
        return parse_tdvf_metadata(image, source=str(path))
    except InputError as exc:
        wrapped = InputError(f"{path}: {exc}")
        wrapped.field, wrapped.offset = exc.field, exc.offset
        raise wrapped from None


def load_firmware(path: str | os.PathLike[str] | None) -> TdvfMetadata:
    """The metadata of the image at path, or the built-in copy of Debian's OVMF.fd layout when path is None."""
    return builtin_ovmf_metadata() if path is None else read_firmware(path)


# ---------------------------------------------------------------------------------------------------------
# The built-in layout: Debian ovmf 2025.02-8+deb13u1, usr/share/ovmf/OVMF.fd, section for section in file
# order (tests compare it with the real file field by field).

OVMF_FD_SIZE = 0x400000
OVMF_FD_DESCRIPTOR_OFFSET = 0x3FF640  # image end - 0x9c0, the value of the TDX metadata offset entry

_T = TdvfSectionType
_OVMF_FD_SECTIONS = (
    # type, attributes, DataOffset, RawDataSize, MemoryAddress, MemoryDataSize
    (_T.BFV, TdvfAttributes.MR_EXTEND, 0x84000, 0x37C000, 0xFFC84000, 0x37C000),
    (_T.CFV, TdvfAttributes(0), 0x0, 0x84000, 0xFFC00000, 0x84000),
    (_T.TEMP_MEM, TdvfAttributes(0), 0x0, 0x0, 0x811000, 0xF000),
    (_T.TEMP_MEM, TdvfAttributes(0), 0x0, 0x0, 0x80B000, 0x2000),
    (_T.TD_HOB, TdvfAttributes(0), 0x0, 0x0, 0x809000, 0x2000),
    (_T.TEMP_MEM, TdvfAttributes(0), 0x0, 0x0, 0x800000, 0x6000),
)


def builtin_ovmf_metadata() -> TdvfMetadata:
    """The TDVF metadata Debian's OVMF.fd declares, for runs without a firmware image."""
    sections = tuple(
        TdvfSection(index=i, type=t, attributes=a, raw_offset=o, raw_size=r, memory_base=b, memory_size=s)
        for i, (t, a, o, r, b, s) in enumerate(_OVMF_FD_SECTIONS)
    )
    return TdvfMetadata(
        sections=sections, image_size=OVMF_FD_SIZE, descriptor_offset=OVMF_FD_DESCRIPTOR_OFFSET, source="builtin"
    )


# ---------------------------------------------------------------------------------------------------------
# Writing: a minimal image (zeros, the descriptor, the footer table) that parses to the given metadata.


def synthesize_image(
    sections: Iterable[TdvfSection], image_size: int, *, descriptor_offset: int | None = None
) -> bytes:
    """An image of image_size bytes carrying these sections' metadata, laid out as OVMF lays it out.

    Meant for tests and experiments: raw section data are zeros. The sections are written as given, with no
    checks, so that a test can build a hostile image and watch the reader refuse it.
    """
    sections = list(sections)
    image = bytearray(image_size)
    footer_guid_at = image_size - OVMF_FOOTER_GUID_FROM_END
    footer_at = footer_guid_at - OVMF_TABLE_FOOTER.offset_of("Guid")
    entry = TDX_METADATA_OFFSET.size + OVMF_TABLE_ENTRY_TAIL.size
    entry_at = footer_at - entry
    desc_len = TDVF_DESCRIPTOR.size + len(sections) * TDVF_SECTION.size
    if descriptor_offset is None:
        descriptor_offset = (entry_at - desc_len) // 16 * 16
    image[footer_at:footer_guid_at + 16] = OVMF_TABLE_FOOTER.pack(
        TableLength=OVMF_TABLE_FOOTER.size + entry, Guid=guid_bytes(OVMF_TABLE_FOOTER_GUID)
    )
    image[entry_at:footer_at] = TDX_METADATA_OFFSET.pack(
        Offset=image_size - descriptor_offset
    ) + OVMF_TABLE_ENTRY_TAIL.pack(Length=entry, Guid=guid_bytes(TDX_METADATA_OFFSET_GUID))
    if descriptor_offset >= 16:
        image[descriptor_offset - 16 : descriptor_offset] = guid_bytes(TDX_METADATA_GUID)
    blob = TDVF_DESCRIPTOR.pack(
        Signature=TDVF_SIGNATURE, Length=desc_len, Version=TDVF_VERSION, NumberOfSectionEntries=len(sections)
    ) + b"".join(
        TDVF_SECTION.pack(
            DataOffset=s.raw_offset,
            RawDataSize=s.raw_size,
            MemoryAddress=s.memory_base,
            MemoryDataSize=s.memory_size,
            Type=int(s.type),
            Attributes=int(s.attributes),
        )
        for s in sections
    )
    image[descriptor_offset : descriptor_offset + len(blob)] = blob
    return bytes(image[:image_size])
