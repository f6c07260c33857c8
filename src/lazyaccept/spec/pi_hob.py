"""PI Hand-Off Blocks: the HOB types, resource types and attributes, boot modes and the HOB structures.

Values and layouts from the PI specification (Volume 3, "HOB Code Definitions") as edk2 declares them in
MdePkg/Include/Pi/PiHob.h and MdePkg/Include/Pi/PiBootMode.h (tianocore/edk2 master, 2026). Nested members are named
by their C access path (Header.HobLength, AllocDescriptor.MemoryLength) so that an error names the field as edk2
code spells it. The parser and writer live in firmware/pi/hob.py; the VMM writes the TD HOB with these layouts.
"""

from __future__ import annotations

import functools
import operator
from enum import IntEnum, IntFlag

from lazyaccept.binlayout import Layout


class HobType(IntEnum):
    """EFI_HOB_GENERIC_HEADER.HobType; C names are EFI_HOB_TYPE_<member>."""

    HANDOFF = 0x0001
    MEMORY_ALLOCATION = 0x0002
    RESOURCE_DESCRIPTOR = 0x0003
    GUID_EXTENSION = 0x0004
    FV = 0x0005
    CPU = 0x0006
    MEMORY_POOL = 0x0007
    FV2 = 0x0009
    LOAD_PEIM_UNUSED = 0x000A
    UEFI_CAPSULE = 0x000B
    FV3 = 0x000C
    UNUSED = 0xFFFE
    END_OF_HOB_LIST = 0xFFFF


class ResourceType(IntEnum):
    """EFI_RESOURCE_TYPE; C names are EFI_RESOURCE_<member>. MEMORY_UNACCEPTED arrived with PI 1.8."""

    SYSTEM_MEMORY = 0x00000000
    MEMORY_MAPPED_IO = 0x00000001
    IO = 0x00000002
    FIRMWARE_DEVICE = 0x00000003
    MEMORY_MAPPED_IO_PORT = 0x00000004
    MEMORY_RESERVED = 0x00000005
    IO_RESERVED = 0x00000006
    MEMORY_UNACCEPTED = 0x00000007


EFI_RESOURCE_MAX_MEMORY_TYPE = 0x00000008

# Resource types that live in the I/O port space; every other type describes the memory address space.
IO_RESOURCE_TYPES = frozenset({ResourceType.IO, ResourceType.IO_RESERVED})
MEMORY_RESOURCE_TYPES = frozenset(set(ResourceType) - IO_RESOURCE_TYPES)


class ResourceAttribute(IntFlag):
    """EFI_RESOURCE_ATTRIBUTE_TYPE bits; C names are EFI_RESOURCE_ATTRIBUTE_<member> (the full PiHob.h set)."""

    PRESENT = 0x00000001
    INITIALIZED = 0x00000002
    TESTED = 0x00000004
    SINGLE_BIT_ECC = 0x00000008
    MULTIPLE_BIT_ECC = 0x00000010
    ECC_RESERVED_1 = 0x00000020
    ECC_RESERVED_2 = 0x00000040
    READ_PROTECTED = 0x00000080
    WRITE_PROTECTED = 0x00000100
    EXECUTION_PROTECTED = 0x00000200
    UNCACHEABLE = 0x00000400
    WRITE_COMBINEABLE = 0x00000800
    WRITE_THROUGH_CACHEABLE = 0x00001000
    WRITE_BACK_CACHEABLE = 0x00002000
    BIT_16_IO = 0x00004000  # EFI_RESOURCE_ATTRIBUTE_16_BIT_IO (a name cannot start with a digit)
    BIT_32_IO = 0x00008000  # EFI_RESOURCE_ATTRIBUTE_32_BIT_IO
    BIT_64_IO = 0x00010000  # EFI_RESOURCE_ATTRIBUTE_64_BIT_IO
    UNCACHED_EXPORTED = 0x00020000
    READ_ONLY_PROTECTED = 0x00040000
    READ_ONLY_PROTECTABLE = 0x00080000
    READ_PROTECTABLE = 0x00100000
    WRITE_PROTECTABLE = 0x00200000
    EXECUTION_PROTECTABLE = 0x00400000
    PERSISTENT = 0x00800000
    PERSISTABLE = 0x01000000
    MORE_RELIABLE = 0x02000000
    ENCRYPTED = 0x04000000
    SPECIAL_PURPOSE = 0x08000000
    HOT_PLUGGABLE = 0x10000000


RESOURCE_ATTRIBUTE_ALL = functools.reduce(operator.or_, (int(a) for a in ResourceAttribute))

# What QEMU (hw/i386/tdvf-hob.h) puts on every TD HOB RAM descriptor, added or unaccepted alike.
TDVF_RAM_ATTRIBUTES = ResourceAttribute.PRESENT | ResourceAttribute.INITIALIZED | ResourceAttribute.TESTED


class BootMode(IntEnum):
    """EFI_BOOT_MODE values (PiBootMode.h); 0x21 and up are reserved, and edk2's TD HOB check rejects them."""

    BOOT_WITH_FULL_CONFIGURATION = 0x00
    BOOT_WITH_MINIMAL_CONFIGURATION = 0x01
    BOOT_ASSUMING_NO_CONFIGURATION_CHANGES = 0x02
    BOOT_WITH_FULL_CONFIGURATION_PLUS_DIAGNOSTICS = 0x03
    BOOT_WITH_DEFAULT_SETTINGS = 0x04
    BOOT_ON_S4_RESUME = 0x05
    BOOT_ON_S5_RESUME = 0x06
    BOOT_WITH_MFG_MODE_SETTINGS = 0x07
    BOOT_ON_S2_RESUME = 0x10
    BOOT_ON_S3_RESUME = 0x11
    BOOT_ON_FLASH_UPDATE = 0x12
    BOOT_IN_RECOVERY_MODE = 0x20


# edk2 (and so QEMU, which writes edk2's value) still declares 9; the PI 1.9 specification text says 0x000A.
EFI_HOB_HANDOFF_TABLE_VERSION = 0x0009

# The PI construction rules make every HOB a multiple of 8 bytes and start the PHIT on an 8-byte boundary.
HOB_ALIGNMENT = 8
MAX_HOB_LENGTH = 0xFFF8  # the largest multiple of 8 that fits the UINT16 HobLength

# EFI_MEMORY_TYPE (Uefi/UefiMultiPhase.h): 0..15 defined (15 = EfiUnacceptedMemoryType), 16..0x6FFFFFFF
# reserved, 0x70000000.. OEM, 0x80000000.. OS loader.
EFI_MAX_MEMORY_TYPE = 16
EFI_OEM_MEMORY_TYPE_FIRST = 0x70000000

# ---------------------------------------------------------------------------------------------------------------
# Structures, one each, with the C names.
# ---------------------------------------------------------------------------------------------------------------

_GENERIC_HEADER_FIELDS = [("HobType", "H"), ("HobLength", "H"), ("Reserved", "I")]
_HEADER = [("Header." + name, fmt) for name, fmt in _GENERIC_HEADER_FIELDS]

EFI_HOB_GENERIC_HEADER = Layout("EFI_HOB_GENERIC_HEADER", _GENERIC_HEADER_FIELDS)
END_OF_HOB_LIST = EFI_HOB_GENERIC_HEADER  # the END HOB is a bare generic header of type 0xFFFF

EFI_HOB_HANDOFF_INFO_TABLE = Layout(
    "EFI_HOB_HANDOFF_INFO_TABLE",
    _HEADER
    + [
        ("Version", "I"),
        ("BootMode", "I"),
        ("EfiMemoryTop", "Q"),
        ("EfiMemoryBottom", "Q"),
        ("EfiFreeMemoryTop", "Q"),
        ("EfiFreeMemoryBottom", "Q"),
        ("EfiEndOfHobList", "Q"),
    ],
)

_MEMORY_ALLOCATION_HEADER_FIELDS = [
    ("Name", "16s"),
    ("MemoryBaseAddress", "Q"),
    ("MemoryLength", "Q"),
    ("MemoryType", "I"),
    ("Reserved", "4s"),
]
EFI_HOB_MEMORY_ALLOCATION_HEADER = Layout("EFI_HOB_MEMORY_ALLOCATION_HEADER", _MEMORY_ALLOCATION_HEADER_FIELDS)
EFI_HOB_MEMORY_ALLOCATION = Layout(
    "EFI_HOB_MEMORY_ALLOCATION",
    _HEADER + [("AllocDescriptor." + name, fmt) for name, fmt in _MEMORY_ALLOCATION_HEADER_FIELDS],
)

EFI_HOB_RESOURCE_DESCRIPTOR = Layout(
    "EFI_HOB_RESOURCE_DESCRIPTOR",
    _HEADER
    + [
        ("Owner", "16s"),
        ("ResourceType", "I"),
        ("ResourceAttribute", "I"),
        ("PhysicalStart", "Q"),
        ("ResourceLength", "Q"),
    ],
)

EFI_HOB_GUID_TYPE = Layout("EFI_HOB_GUID_TYPE", _HEADER + [("Name", "16s")])

EFI_HOB_FIRMWARE_VOLUME = Layout("EFI_HOB_FIRMWARE_VOLUME", _HEADER + [("BaseAddress", "Q"), ("Length", "Q")])

EFI_HOB_FIRMWARE_VOLUME2 = Layout(
    "EFI_HOB_FIRMWARE_VOLUME2",
    _HEADER + [("BaseAddress", "Q"), ("Length", "Q"), ("FvName", "16s"), ("FileName", "16s")],
)

EFI_HOB_FIRMWARE_VOLUME3 = Layout(
    "EFI_HOB_FIRMWARE_VOLUME3",
    _HEADER
    + [
        ("BaseAddress", "Q"),
        ("Length", "Q"),
        ("AuthenticationStatus", "I"),
        ("ExtractedFv", "B"),
        ("Padding", "3s"),  # implicit in C: EFI_GUID is 4-byte aligned, so FvName starts at offset 32
        ("FvName", "16s"),
        ("FileName", "16s"),
    ],
)

EFI_HOB_CPU = Layout("EFI_HOB_CPU", _HEADER + [("SizeOfMemorySpace", "B"), ("SizeOfIoSpace", "B"), ("Reserved", "6s")])

EFI_HOB_UEFI_CAPSULE = Layout("EFI_HOB_UEFI_CAPSULE", _HEADER + [("BaseAddress", "Q"), ("Length", "Q")])


def hob_header(hob_type: int, length: int) -> dict[str, int]:
    """The Header.* fields of a HOB of this type and HobLength, for Layout.pack."""
    if length > MAX_HOB_LENGTH:
        raise ValueError(f"HOB of type {hob_type:#06x} needs {length} bytes; HobLength holds at most {MAX_HOB_LENGTH}")
    return {"Header.HobType": hob_type, "Header.HobLength": length, "Header.Reserved": 0}


# sizeof() of each structure as x86-64 compilers lay it out.
assert EFI_HOB_GENERIC_HEADER.size == 8 and EFI_HOB_HANDOFF_INFO_TABLE.size == 56
assert EFI_HOB_MEMORY_ALLOCATION.size == 48 and EFI_HOB_RESOURCE_DESCRIPTOR.size == 48
assert EFI_HOB_GUID_TYPE.size == 24 and EFI_HOB_CPU.size == 16 and EFI_HOB_FIRMWARE_VOLUME3.size == 64
