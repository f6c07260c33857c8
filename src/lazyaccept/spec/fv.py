"""PI firmware volumes, firmware files and file sections: the structures and codes the parser (firmware/pi/fv.py)
reads.

PI specification 1.8, Volume 3 (Shared Architectural Elements): section 3.2.1 EFI_FIRMWARE_VOLUME_HEADER and
3.2.2 EFI_FIRMWARE_VOLUME_EXT_HEADER; 2.2.3 EFI_FFS_FILE_HEADER / EFI_FFS_FILE_HEADER2 and the file types; 2.2.4
EFI_COMMON_SECTION_HEADER(2) and the section types; 2.2.4.x EFI_COMPRESSION_SECTION, EFI_GUID_DEFINED_SECTION,
EFI_USER_INTERFACE_SECTION. As edk2 declares them in MdePkg/Include/Pi/PiFirmwareVolume.h and PiFirmwareFile.h
(edk2-stable202502); the GUIDs from MdePkg/Include/Guid/FirmwareFileSystem2.h, FirmwareFileSystem3.h and
MdeModulePkg/Include/Guid/LzmaDecompress.h, Crc32GuidedSectionExtraction.h.
"""

from __future__ import annotations

from enum import IntEnum

from lazyaccept.binlayout import Layout, guid

EFI_FIRMWARE_VOLUME_HEADER = Layout(
    "EFI_FIRMWARE_VOLUME_HEADER",
    [
        ("ZeroVector", "16s"),
        ("FileSystemGuid", "16s"),
        ("FvLength", "Q"),
        ("Signature", "I"),
        ("Attributes", "I"),
        ("HeaderLength", "H"),
        ("Checksum", "H"),
        ("ExtHeaderOffset", "H"),
        ("Reserved", "B"),
        ("Revision", "B"),
    ],
)  # followed by EFI_FV_BLOCK_MAP_ENTRY BlockMap[], ended by a {0, 0} entry
EFI_FV_BLOCK_MAP_ENTRY = Layout("EFI_FV_BLOCK_MAP_ENTRY", [("NumBlocks", "I"), ("Length", "I")])
EFI_FIRMWARE_VOLUME_EXT_HEADER = Layout("EFI_FIRMWARE_VOLUME_EXT_HEADER", [("FvName", "16s"), ("ExtHeaderSize", "I")])
EFI_FFS_FILE_HEADER = Layout(
    "EFI_FFS_FILE_HEADER",
    [
        ("Name", "16s"),
        ("IntegrityCheck", "H"),
        ("Type", "B"),
        ("Attributes", "B"),
        ("Size", "3s"),  # UINT8[3], little-endian; 0 with FFS_ATTRIB_LARGE_FILE
        ("State", "B"),
    ],
)
EFI_FFS_FILE_HEADER2_EXTENDED_SIZE = Layout("EFI_FFS_FILE_HEADER2", [("ExtendedSize", "Q")])  # after the above
EFI_COMMON_SECTION_HEADER = Layout("EFI_COMMON_SECTION_HEADER", [("Size", "3s"), ("Type", "B")])
EFI_COMMON_SECTION_HEADER2_EXTENDED_SIZE = Layout("EFI_COMMON_SECTION_HEADER2", [("ExtendedSize", "I")])
EFI_COMPRESSION_SECTION_FIELDS = Layout(
    "EFI_COMPRESSION_SECTION", [("UncompressedLength", "I"), ("CompressionType", "B")]
)  # after the common header
EFI_GUID_DEFINED_SECTION_FIELDS = Layout(
    "EFI_GUID_DEFINED_SECTION", [("SectionDefinitionGuid", "16s"), ("DataOffset", "H"), ("Attributes", "H")]
)  # after the common header; DataOffset counts from the section's start

EFI_FVH_SIGNATURE = int.from_bytes(b"_FVH", "little")
EFI_FVB2_ERASE_POLARITY = 0x00000800
FFS_ATTRIB_LARGE_FILE = 0x01
EFI_FILE_DATA_VALID = 0x04
EFI_FILE_DELETED = 0x10
SIZE_EXTENDED = 0xFFFFFF  # a 24-bit Size of all ones: the 32-bit ExtendedSize follows (section headers)
FFS_FILE_ALIGNMENT = 8
SECTION_ALIGNMENT = 4

EFI_FIRMWARE_FILE_SYSTEM2_GUID = guid("8c8ce578-8a3d-4f1c-9935-896185c32dd3")
EFI_FIRMWARE_FILE_SYSTEM3_GUID = guid("5473c07a-3dcb-4dca-bd6f-1e9689e7349a")
LZMA_CUSTOM_DECOMPRESS_GUID = guid("ee4e5898-3914-4259-9d6e-dc7bd79403cf")
LZMAF86_CUSTOM_DECOMPRESS_GUID = guid("d42ae6bd-1352-4bfb-909a-ca72a6eae889")
EFI_CRC32_GUIDED_SECTION_EXTRACTION_GUID = guid("fc1bcdb0-7d31-49aa-936a-a4600d9dd083")
EFI_NOT_COMPRESSED = 0x00


class FileType(IntEnum):
    """EFI_FV_FILETYPE_<member>."""

    RAW = 0x01
    FREEFORM = 0x02
    SECURITY_CORE = 0x03
    PEI_CORE = 0x04
    DXE_CORE = 0x05
    PEIM = 0x06
    DRIVER = 0x07
    COMBINED_PEIM_DRIVER = 0x08
    APPLICATION = 0x09
    MM = 0x0A
    FIRMWARE_VOLUME_IMAGE = 0x0B
    COMBINED_MM_DXE = 0x0C
    MM_CORE = 0x0D
    MM_STANDALONE = 0x0E
    MM_CORE_STANDALONE = 0x0F
    FFS_PAD = 0xF0


class SectionType(IntEnum):
    """EFI_SECTION_<member>."""

    COMPRESSION = 0x01
    GUID_DEFINED = 0x02
    DISPOSABLE = 0x03
    PE32 = 0x10
    PIC = 0x11
    TE = 0x12
    DXE_DEPEX = 0x13
    VERSION = 0x14
    USER_INTERFACE = 0x15
    COMPATIBILITY16 = 0x16
    FIRMWARE_VOLUME_IMAGE = 0x17
    FREEFORM_SUBTYPE_GUID = 0x18
    RAW = 0x19
    PEI_DEPEX = 0x1B
    MM_DEPEX = 0x1C


ENCAPSULATION_SECTIONS = frozenset({SectionType.COMPRESSION, SectionType.GUID_DEFINED, SectionType.DISPOSABLE})
