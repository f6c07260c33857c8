"""A validating parser of PI firmware volumes (layouts in spec/fv.py): the volumes of a flash image, their FFS
files with type, GUID and user-interface name, and their sections, through LZMA-compressed GUID-defined sections
and volumes nested in volume-image sections (as OVMF's FVMAIN_COMPACT holds PEIFV and DXEFV).

Its use: `module_index` names every PE32/TE image of a build by a fingerprint that survives loading and
relocation, so an address in an image the firmware loaded into RAM (a DXE driver) is named as its firmware file
("TdxDxe", type DRIVER). Damaged input raises InputError naming the structure's field and its offset.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lazyaccept.binlayout import Buffer, guid_from_bytes
from lazyaccept.errors import InputError
from lazyaccept.spec import fv as S
from lazyaccept.spec.fv import FileType, SectionType

FV_SCAN_STEP = 0x1000  # volumes in a flash device start on 4 KiB boundaries
MAX_NESTING = 8  # encapsulation depth, a bound against hostile images


@dataclass(frozen=True)
class FvModule:
    """The firmware file an executable image came from."""

    name: str  # its USER_INTERFACE section, else the file GUID
    file_type: int  # EFI_FV_FILETYPE_*
    guid: uuid.UUID

    @property
    def type_name(self) -> str:
        try:
            return FileType(self.file_type).name
        except ValueError:
            return f"{self.file_type:#x}"


@dataclass
class FfsFile:
    guid: uuid.UUID
    file_type: int
    offset: int  # of its header, in the volume
    size: int
    ui_name: str | None = None
    images: list[tuple[SectionType, bytes]] = field(default_factory=list)  # PE32 and TE section contents

    @property
    def name(self) -> str:
        return self.ui_name or str(self.guid)


@dataclass
class FirmwareVolume:
    where: str  # e.g. "image+0x84000" or "image+0x84000/file 9e21fd93.../section+0x18"
    file_system: uuid.UUID
    length: int
    name: uuid.UUID | None
    files: list[FfsFile] = field(default_factory=list)
    undecoded: list[str] = field(default_factory=list)  # encapsulations this parser does not open, by GUID/type


def volumes_in_image(image: Buffer) -> list[FirmwareVolume]:
    """Every firmware volume of a flash image, nested ones included (depth-first, outer first)."""
    found: list[FirmwareVolume] = []
    pos = 0
    while pos + S.EFI_FIRMWARE_VOLUME_HEADER.size <= len(image):
        if int.from_bytes(image[pos + 40 : pos + 44], "little") == S.EFI_FVH_SIGNATURE:
            found.extend(parse_volume(image, pos, where=f"image+{pos:#x}"))
            pos += int.from_bytes(image[pos + 32 : pos + 40], "little")
        else:
            pos += FV_SCAN_STEP
    if not found:
        raise InputError("no firmware volume (no _FVH signature on a 4 KiB boundary)", field="Signature", offset=40)
    return found


def parse_volume(data: Buffer, offset: int = 0, *, where: str = "FV", depth: int = 0) -> list[FirmwareVolume]:
    """The volume at `offset` of `data` and the volumes nested in its files."""
    hdr = S.EFI_FIRMWARE_VOLUME_HEADER.unpack(data, offset)

    def bad(message: str, fieldname: str, at: int) -> InputError:
        return InputError(f"{where}: {message}", field=f"EFI_FIRMWARE_VOLUME_HEADER.{fieldname}", offset=at)

    if hdr["Signature"] != S.EFI_FVH_SIGNATURE:
        raise bad(f"signature {hdr['Signature']:#x} is not '_FVH'", "Signature", offset + 40)
    length, header_length = hdr["FvLength"], hdr["HeaderLength"]
    if length < S.EFI_FIRMWARE_VOLUME_HEADER.size or offset + length > len(data):
        raise bad(f"FvLength {length:#x} runs past the {len(data) - offset:#x} bytes there", "FvLength", offset + 32)
    if header_length < S.EFI_FIRMWARE_VOLUME_HEADER.size + S.EFI_FV_BLOCK_MAP_ENTRY.size or header_length > length:
        raise bad(f"HeaderLength {header_length:#x} does not fit the volume", "HeaderLength", offset + 48)
    volume = FirmwareVolume(where, guid_from_bytes(hdr["FileSystemGuid"]), length, None)
    nested: list[FirmwareVolume] = []
    if volume.file_system not in (S.EFI_FIRMWARE_FILE_SYSTEM2_GUID, S.EFI_FIRMWARE_FILE_SYSTEM3_GUID):
        return [volume]  # e.g. the variable store: no FFS inside
    files_at = header_length
    if hdr["ExtHeaderOffset"]:
        ext_at = hdr["ExtHeaderOffset"]
        if ext_at + S.EFI_FIRMWARE_VOLUME_EXT_HEADER.size > length:
            raise bad(f"ExtHeaderOffset {ext_at:#x} lies outside the volume", "ExtHeaderOffset", offset + 52)
        ext = S.EFI_FIRMWARE_VOLUME_EXT_HEADER.unpack(data, offset + ext_at)
        volume.name = guid_from_bytes(ext["FvName"])
        files_at = max(files_at, ext_at + ext["ExtHeaderSize"])
    erase = 0xFF if hdr["Attributes"] & S.EFI_FVB2_ERASE_POLARITY else 0x00
    pos = _align(files_at, S.FFS_FILE_ALIGNMENT)
    while pos + S.EFI_FFS_FILE_HEADER.size <= length:
        at = offset + pos
        raw = bytes(data[at : at + S.EFI_FFS_FILE_HEADER.size])
        if raw == bytes([erase]) * len(raw):
            break  # free space
        ffs = S.EFI_FFS_FILE_HEADER.unpack(data, at)
        size = int.from_bytes(ffs["Size"], "little")
        header_size = S.EFI_FFS_FILE_HEADER.size
        if ffs["Attributes"] & S.FFS_ATTRIB_LARGE_FILE:
            size = S.EFI_FFS_FILE_HEADER2_EXTENDED_SIZE.unpack(data, at + header_size)["ExtendedSize"]
            header_size += S.EFI_FFS_FILE_HEADER2_EXTENDED_SIZE.size
        if size < header_size or pos + size > length:
            raise InputError(
                f"{where}: file size {size:#x} at volume offset {pos:#x} runs past the {length:#x}-byte volume",
                field="EFI_FFS_FILE_HEADER.Size",
                offset=at + 20,
            )
        state = ffs["State"] ^ erase
        if state & S.EFI_FILE_DATA_VALID and not state & S.EFI_FILE_DELETED and ffs["Type"] != FileType.FFS_PAD:
            file = FfsFile(guid_from_bytes(ffs["Name"]), ffs["Type"], pos, size)
            body = bytes(data[at + header_size : at + size])
            if ffs["Type"] not in (FileType.RAW,):  # a RAW file's data is not sections (the reset vector's VTF)
                inner = f"{where}/file {file.guid}"
                nested += _sections(body, file, volume, inner, depth)
            volume.files.append(file)
        pos = _align(pos + size, S.FFS_FILE_ALIGNMENT)
    return [volume, *nested]


def _sections(data: bytes, file: FfsFile, volume: FirmwareVolume, where: str, depth: int) -> list[FirmwareVolume]:
    if depth > MAX_NESTING:
        raise InputError(f"{where}: sections nested deeper than {MAX_NESTING}", field="EFI_COMMON_SECTION_HEADER")
    nested: list[FirmwareVolume] = []
    pos = 0
    while pos + S.EFI_COMMON_SECTION_HEADER.size <= len(data):
        sec = S.EFI_COMMON_SECTION_HEADER.unpack(data, pos)
        size, kind = int.from_bytes(sec["Size"], "little"), sec["Type"]
        header = S.EFI_COMMON_SECTION_HEADER.size
        if size == S.SIZE_EXTENDED:
            size = S.EFI_COMMON_SECTION_HEADER2_EXTENDED_SIZE.unpack(data, pos + header)["ExtendedSize"]
            header += S.EFI_COMMON_SECTION_HEADER2_EXTENDED_SIZE.size
        if size < header or pos + size > len(data):
            raise InputError(
                f"{where}: section size {size:#x} at {pos:#x} runs past the {len(data):#x} bytes of its container",
                field="EFI_COMMON_SECTION_HEADER.Size",
                offset=pos,
            )
        body = data[pos + header : pos + size]
        here = f"{where}/section+{pos:#x}"
        if kind in (SectionType.PE32, SectionType.TE):
            file.images.append((SectionType(kind), body))
        elif kind == SectionType.USER_INTERFACE:
            file.ui_name = body.decode("utf-16-le", "replace").split("\0", 1)[0]
        elif kind == SectionType.FIRMWARE_VOLUME_IMAGE:
            nested += parse_volume(body, 0, where=here, depth=depth + 1)
        elif kind == SectionType.COMPRESSION:
            comp = S.EFI_COMPRESSION_SECTION_FIELDS.unpack(body, 0)
            if comp["CompressionType"] == S.EFI_NOT_COMPRESSED:
                inner = body[S.EFI_COMPRESSION_SECTION_FIELDS.size :]
                nested += _sections(inner, file, volume, here, depth + 1)
            else:
                volume.undecoded.append(f"{here}: compression type {comp['CompressionType']}")
        elif kind == SectionType.GUID_DEFINED:
            nested += _guid_defined(data[pos : pos + size], header, file, volume, here, depth)
        elif kind == SectionType.DISPOSABLE:
            pass
        pos = _align(pos + size, S.SECTION_ALIGNMENT)
    return nested


def _guid_defined(
    section: bytes, header: int, file: FfsFile, volume: FirmwareVolume, where: str, depth: int
) -> list[FirmwareVolume]:
    fields = S.EFI_GUID_DEFINED_SECTION_FIELDS.unpack(section, header)
    kind = guid_from_bytes(fields["SectionDefinitionGuid"])
    start = fields["DataOffset"]
    if start < header + S.EFI_GUID_DEFINED_SECTION_FIELDS.size or start > len(section):
        raise InputError(
            f"{where}: DataOffset {start:#x} lies outside the {len(section):#x}-byte section",
            field="EFI_GUID_DEFINED_SECTION.DataOffset",
            offset=header + 16,
        )
    payload = section[start:]
    if kind == S.LZMA_CUSTOM_DECOMPRESS_GUID:
        try:
            # edk2's LzmaCompress output: the LZMA "alone" header (properties, dictionary, 64-bit size) and data
            payload = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        except lzma.LZMAError as exc:
            raise InputError(f"{where}: LZMA data does not decompress: {exc}", field="LZMA", offset=start) from None
    elif kind != S.EFI_CRC32_GUIDED_SECTION_EXTRACTION_GUID:  # CRC32: the sections follow as they are
        volume.undecoded.append(f"{where}: GUID-defined section {kind}")
        return []
    return _sections(payload, file, volume, where, depth + 1)


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) & ~(alignment - 1)


# ------------------------------------------------------------------ images and their fingerprints
Reader = Callable[[int, int], bytes | None]
TE_HEADER_SIZE = 40  # EFI_TE_IMAGE_HEADER (MdePkg/Include/IndustryStandard/PeImage.h)
SECTION_HEADER_SIZE = 40  # EFI_IMAGE_SECTION_HEADER
MAX_SECTIONS = 96  # PE/COFF's own limit


def image_fingerprint(read: Reader, base: int) -> tuple[bytes, int] | None:
    """(fingerprint, SizeOfImage) of the PE32/PE32+ ("MZ") or TE ("VZ") image whose header is at `base`, or None.

    The fingerprint is what loading and relocation leave alone: the COFF machine and section count, the entry
    point, image and code sizes, and the section table (edk2's PeCoffLoaderLoadImage copies the headers; its
    relocation rewrites only OptionalHeader.ImageBase, left out here)."""
    tag = read(base, 2)
    if tag == b"MZ":
        dos = read(base, 0x40)
        if dos is None:
            return None
        pe_at = base + int.from_bytes(dos[0x3C:0x40], "little")
        head = read(pe_at, 24 + 64)
        if head is None or head[:4] != b"PE\0\0":
            return None
        sections = int.from_bytes(head[6:8], "little")
        optional_size = int.from_bytes(head[20:22], "little")
        magic = int.from_bytes(head[24:26], "little")
        if magic not in (0x10B, 0x20B) or sections > MAX_SECTIONS:
            return None
        opt = head[24:]
        size_of_image = int.from_bytes(opt[56:60], "little")
        kept = head[4:8] + head[20:22] + opt[4:8] + opt[16:20] + opt[56:64]  # sizes of code, entry, image, headers
        table = read(pe_at + 24 + optional_size, sections * SECTION_HEADER_SIZE)
    elif tag == b"VZ":
        head = read(base, TE_HEADER_SIZE)
        if head is None:
            return None
        sections = head[4]
        if int.from_bytes(head[2:4], "little") not in (0x8664, 0x14C) or sections > MAX_SECTIONS:
            return None
        kept = head[:16] + head[24:40]  # all but ImageBase
        table = read(base + TE_HEADER_SIZE, sections * SECTION_HEADER_SIZE)
        if table is None:
            return None
        # A TE image's size: the end of its last section, in the PE image's RVAs it keeps.
        size_of_image = (
            max(
                (
                    int.from_bytes(table[i + 12 : i + 16], "little") + int.from_bytes(table[i + 8 : i + 12], "little")
                    for i in range(0, len(table), SECTION_HEADER_SIZE)
                ),
                default=0,
            )
            - int.from_bytes(head[6:8], "little")
            + TE_HEADER_SIZE
        )
    else:
        return None
    if table is None:
        return None
    return hashlib.sha256(tag + kept + table).digest()[:16], size_of_image


def module_index(volumes: list[FirmwareVolume]) -> dict[bytes, FvModule]:
    """Fingerprint of every PE32/TE image in the volumes -> the firmware file it came from."""
    index: dict[bytes, FvModule] = {}
    for volume in volumes:
        for file in volume.files:
            for _kind, data in file.images:

                def read(at: int, size: int, data: bytes = data) -> bytes | None:
                    return data[at : at + size] if 0 <= at and at + size <= len(data) else None

                found = image_fingerprint(read, 0)
                if found is not None:
                    index.setdefault(found[0], FvModule(file.name, file.file_type, file.guid))
    return index


@functools.lru_cache(maxsize=4)
def _index_of(path: str, _mtime_ns: int, _size: int) -> dict[bytes, FvModule]:
    return module_index(volumes_in_image(Path(path).read_bytes()))


def module_index_of(path: str | os.PathLike[str]) -> dict[bytes, FvModule]:
    """module_index of a flash image file, parsed once per file version in a process."""
    st = os.stat(path)
    return _index_of(str(path), st.st_mtime_ns, st.st_size)
