"""UEFI and PI architectural values the DXE memory services use: statuses, memory types, attributes, layouts.

Values from edk2 MdePkg/Include: Base.h (RETURN_* / ENCODE_ERROR), Uefi/UefiBaseType.h (EFI_* statuses),
Pi/PiMultiPhase.h (DXE_ERROR), Uefi/UefiMultiPhase.h (EFI_MEMORY_TYPE), Uefi/UefiSpec.h (EFI_ALLOCATE_TYPE,
EFI_MEMORY_* attributes, EFI_MEMORY_DESCRIPTOR), Pi/PiDxeCis.h (GCD types and descriptor), and
MdeModulePkg/Core/Dxe/DxeMain.h (the DXE core's internal PRESENT/INITIALIZED/TESTED capability bits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from lazyaccept.binlayout import Layout, guid
from lazyaccept.errors import InputError

MAX_BIT = 1 << 63
MAX_UINT64 = (1 << 64) - 1
MAX_UINT32 = (1 << 32) - 1
# X64 MAX_ADDRESS and MAX_ALLOC_ADDRESS (MdePkg/Include/X64/ProcessorBind.h).
MAX_ADDRESS = MAX_UINT64
MAX_ALLOC_ADDRESS = MAX_ADDRESS

EFI_PAGE_SIZE = 0x1000
EFI_PAGE_SHIFT = 12
EFI_PAGE_MASK = 0xFFF
# Both are one page on X64 (ProcessorBind.h); AArch64 uses 64 KiB for runtime types.
DEFAULT_PAGE_ALLOCATION_GRANULARITY = 0x1000
RUNTIME_PAGE_ALLOCATION_GRANULARITY = 0x1000


def _err(code: int) -> int:
    return MAX_BIT | code


def _dxe_err(code: int) -> int:
    # Pi/PiMultiPhase.h DXE_ERROR / PI_ENCODE_ERROR: MAX_BIT | (MAX_BIT >> 2) | code.
    return MAX_BIT | (MAX_BIT >> 2) | code


class EfiStatus(IntEnum):
    """EFI_STATUS as a 64-bit UINTN on X64; errors have bit 63 set."""

    SUCCESS = 0
    # Errors (Base.h ENCODE_ERROR)
    LOAD_ERROR = _err(1)
    INVALID_PARAMETER = _err(2)
    UNSUPPORTED = _err(3)
    BAD_BUFFER_SIZE = _err(4)
    BUFFER_TOO_SMALL = _err(5)
    NOT_READY = _err(6)
    DEVICE_ERROR = _err(7)
    WRITE_PROTECTED = _err(8)
    OUT_OF_RESOURCES = _err(9)
    VOLUME_CORRUPTED = _err(10)
    VOLUME_FULL = _err(11)
    NO_MEDIA = _err(12)
    MEDIA_CHANGED = _err(13)
    NOT_FOUND = _err(14)
    ACCESS_DENIED = _err(15)
    NO_RESPONSE = _err(16)
    NO_MAPPING = _err(17)
    TIMEOUT = _err(18)
    NOT_STARTED = _err(19)
    ALREADY_STARTED = _err(20)
    ABORTED = _err(21)
    ICMP_ERROR = _err(22)
    TFTP_ERROR = _err(23)
    PROTOCOL_ERROR = _err(24)
    INCOMPATIBLE_VERSION = _err(25)
    SECURITY_VIOLATION = _err(26)
    CRC_ERROR = _err(27)
    END_OF_MEDIA = _err(28)
    END_OF_FILE = _err(31)
    INVALID_LANGUAGE = _err(32)
    COMPROMISED_DATA = _err(33)
    IP_ADDRESS_CONFLICT = _err(34)
    HTTP_ERROR = _err(35)
    # UefiBaseType.h network errors
    NETWORK_UNREACHABLE = _err(100)
    HOST_UNREACHABLE = _err(101)
    PROTOCOL_UNREACHABLE = _err(102)
    PORT_UNREACHABLE = _err(103)
    CONNECTION_FIN = _err(104)
    CONNECTION_RESET = _err(105)
    CONNECTION_REFUSED = _err(106)
    # PI (PiMultiPhase.h)
    INTERRUPT_PENDING = _dxe_err(0)
    REQUEST_UNLOAD_IMAGE = _dxe_err(1)
    NOT_AVAILABLE_YET = _dxe_err(2)
    # Warnings (Base.h ENCODE_WARNING)
    WARN_UNKNOWN_GLYPH = 1
    WARN_DELETE_FAILURE = 2
    WARN_WRITE_FAILURE = 3
    WARN_BUFFER_TOO_SMALL = 4
    WARN_STALE_DATA = 5
    WARN_FILE_SYSTEM = 6
    WARN_RESET_REQUIRED = 7

    @property
    def is_error(self) -> bool:
        return efi_error(self)

    def __str__(self) -> str:
        return f"EFI_{self.name}"


def efi_error(status: int) -> bool:
    """EFI_ERROR(): bit 63 set."""
    return bool(status & MAX_BIT)


def status_name(status: int) -> str:
    try:
        return str(EfiStatus(status))
    except ValueError:
        return f"EFI_STATUS {status:#x}"


class EfiMemoryType(IntEnum):
    """EFI_MEMORY_TYPE (Uefi/UefiMultiPhase.h). OEM (0x70000000..) and OS (0x80000000..) values are plain ints."""

    EfiReservedMemoryType = 0
    EfiLoaderCode = 1
    EfiLoaderData = 2
    EfiBootServicesCode = 3
    EfiBootServicesData = 4
    EfiRuntimeServicesCode = 5
    EfiRuntimeServicesData = 6
    EfiConventionalMemory = 7
    EfiUnusableMemory = 8
    EfiACPIReclaimMemory = 9
    EfiACPIMemoryNVS = 10
    EfiMemoryMappedIO = 11
    EfiMemoryMappedIOPortSpace = 12
    EfiPalCode = 13
    EfiPersistentMemory = 14
    EfiUnacceptedMemoryType = 15
    EfiMaxMemoryType = 16


MEMORY_TYPE_OEM_RESERVED_MIN = 0x70000000
MEMORY_TYPE_OEM_RESERVED_MAX = 0x7FFFFFFF
MEMORY_TYPE_OS_RESERVED_MIN = 0x80000000
MEMORY_TYPE_OS_RESERVED_MAX = 0xFFFFFFFF


def memory_type_name(memory_type: int) -> str:
    if 0 <= memory_type < EfiMemoryType.EfiMaxMemoryType:
        return EfiMemoryType(memory_type).name
    if MEMORY_TYPE_OEM_RESERVED_MIN <= memory_type <= MEMORY_TYPE_OEM_RESERVED_MAX:
        return f"OEM({memory_type:#x})"
    if MEMORY_TYPE_OS_RESERVED_MIN <= memory_type <= MEMORY_TYPE_OS_RESERVED_MAX:
        return f"OS({memory_type:#x})"
    return f"invalid({memory_type:#x})"


class EfiAllocateType(IntEnum):
    AllocateAnyPages = 0
    AllocateMaxAddress = 1
    AllocateAddress = 2
    MaxAllocateType = 3


# Memory attributes / capabilities (Uefi/UefiSpec.h).
EFI_MEMORY_UC = 0x0000000000000001
EFI_MEMORY_WC = 0x0000000000000002
EFI_MEMORY_WT = 0x0000000000000004
EFI_MEMORY_WB = 0x0000000000000008
EFI_MEMORY_UCE = 0x0000000000000010
EFI_MEMORY_WP = 0x0000000000001000
EFI_MEMORY_RP = 0x0000000000002000
EFI_MEMORY_XP = 0x0000000000004000
EFI_MEMORY_NV = 0x0000000000008000
EFI_MEMORY_MORE_RELIABLE = 0x0000000000010000
EFI_MEMORY_RO = 0x0000000000020000
EFI_MEMORY_SP = 0x0000000000040000
EFI_MEMORY_CPU_CRYPTO = 0x0000000000080000
EFI_MEMORY_HOT_PLUGGABLE = 0x0000000000100000
EFI_MEMORY_ISA_MASK = 0x0FFFF00000000000
EFI_MEMORY_ISA_VALID = 0x4000000000000000
EFI_MEMORY_RUNTIME = 0x8000000000000000
EFI_CACHE_ATTRIBUTE_MASK = (
    EFI_MEMORY_UC | EFI_MEMORY_WC | EFI_MEMORY_WT | EFI_MEMORY_WB | EFI_MEMORY_UCE | EFI_MEMORY_WP
)
EFI_MEMORY_ACCESS_MASK = EFI_MEMORY_RP | EFI_MEMORY_XP | EFI_MEMORY_RO
EFI_MEMORY_ATTRIBUTE_MASK = EFI_MEMORY_ACCESS_MASK | EFI_MEMORY_SP | EFI_MEMORY_CPU_CRYPTO
# DXE core internal capability bits (MdeModulePkg/Core/Dxe/DxeMain.h); never reported in the UEFI memory map.
EFI_MEMORY_PRESENT = 0x0100000000000000
EFI_MEMORY_INITIALIZED = 0x0200000000000000
EFI_MEMORY_TESTED = 0x0400000000000000
EFI_MEMORY_PORT_IO = 0x4000000000000000
# OvmfPkg/AmdSevDxe/AmdSevDxe.c EFI_MEMORY_INTERNAL_MASK: the three bits above.
EFI_MEMORY_INTERNAL_MASK = EFI_MEMORY_PRESENT | EFI_MEMORY_INITIALIZED | EFI_MEMORY_TESTED

EFI_MEMORY_DESCRIPTOR = Layout(
    "EFI_MEMORY_DESCRIPTOR",
    [
        ("Type", "I"),
        ("Pad", "I"),  # natural alignment of PhysicalStart
        ("PhysicalStart", "Q"),
        ("VirtualStart", "Q"),
        ("NumberOfPages", "Q"),
        ("Attribute", "Q"),
    ],
)
# Page.c CoreGetMemoryMap: Size = sizeof (EFI_MEMORY_DESCRIPTOR) + sizeof (UINT64) - (Size % sizeof (UINT64));
# 40 % 8 == 0, so edk2 adds a full 8 bytes: 48, "to prevent people from having pointer math bugs".
EFI_MEMORY_DESCRIPTOR_SIZE = EFI_MEMORY_DESCRIPTOR.size + 8 - EFI_MEMORY_DESCRIPTOR.size % 8
EFI_MEMORY_DESCRIPTOR_VERSION = 1


@dataclass(frozen=True)
class MemoryDescriptor:
    """One EFI_MEMORY_DESCRIPTOR as GetMemoryMap returns it."""

    type: int
    physical_start: int
    number_of_pages: int
    attribute: int = 0
    virtual_start: int = 0

    @property
    def end(self) -> int:
        return self.physical_start + self.number_of_pages * EFI_PAGE_SIZE

    @property
    def size(self) -> int:
        return self.number_of_pages * EFI_PAGE_SIZE

    def pack(self, descriptor_size: int = EFI_MEMORY_DESCRIPTOR_SIZE) -> bytes:
        raw = EFI_MEMORY_DESCRIPTOR.pack(
            Type=self.type,
            PhysicalStart=self.physical_start,
            VirtualStart=self.virtual_start,
            NumberOfPages=self.number_of_pages,
            Attribute=self.attribute,
        )
        return raw + bytes(descriptor_size - len(raw))

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> MemoryDescriptor:
        d = EFI_MEMORY_DESCRIPTOR.unpack(buf, offset)
        return cls(d["Type"], d["PhysicalStart"], d["NumberOfPages"], d["Attribute"], d["VirtualStart"])

    def __str__(self) -> str:
        return (
            f"{memory_type_name(self.type):<26} {self.physical_start:#014x}-{self.end - 1:#014x} "
            f"{self.number_of_pages:#x} pages attr {self.attribute:#x}"
        )


def pack_memory_map(
    descriptors: Iterable[MemoryDescriptor], descriptor_size: int = EFI_MEMORY_DESCRIPTOR_SIZE
) -> bytes:
    return b"".join(d.pack(descriptor_size) for d in descriptors)


def unpack_memory_map(
    buf: bytes | bytearray | memoryview, map_size: int, descriptor_size: int = EFI_MEMORY_DESCRIPTOR_SIZE
) -> list[MemoryDescriptor]:
    if descriptor_size < EFI_MEMORY_DESCRIPTOR.size:
        raise InputError(
            f"descriptor size {descriptor_size} is smaller than EFI_MEMORY_DESCRIPTOR", field="DescriptorSize"
        )
    if map_size % descriptor_size:
        raise InputError(f"memory map size {map_size} is not a multiple of {descriptor_size}", field="MemoryMapSize")
    return [MemoryDescriptor.unpack(buf, off) for off in range(0, map_size, descriptor_size)]


class EfiGcdMemoryType(IntEnum):
    """EFI_GCD_MEMORY_TYPE (Pi/PiDxeCis.h, PI 1.8)."""

    EfiGcdMemoryTypeNonExistent = 0
    EfiGcdMemoryTypeReserved = 1
    EfiGcdMemoryTypeSystemMemory = 2
    EfiGcdMemoryTypeMemoryMappedIo = 3
    EfiGcdMemoryTypePersistent = 4
    EfiGcdMemoryTypeMoreReliable = 5
    EfiGcdMemoryTypeUnaccepted = 6
    EfiGcdMemoryTypeMaximum = 7


class EfiGcdAllocateType(IntEnum):
    EfiGcdAllocateAnySearchBottomUp = 0
    EfiGcdAllocateMaxAddressSearchBottomUp = 1
    EfiGcdAllocateAddress = 2
    EfiGcdAllocateAnySearchTopDown = 3
    EfiGcdAllocateMaxAddressSearchTopDown = 4
    EfiGcdMaxAllocateType = 5


EFI_GCD_MEMORY_SPACE_DESCRIPTOR = Layout(
    "EFI_GCD_MEMORY_SPACE_DESCRIPTOR",
    [
        ("BaseAddress", "Q"),
        ("Length", "Q"),
        ("Capabilities", "Q"),
        ("Attributes", "Q"),
        ("GcdMemoryType", "I"),
        ("Pad", "I"),  # natural alignment of ImageHandle
        ("ImageHandle", "Q"),
        ("DeviceHandle", "Q"),
    ],
)

# GUIDs (MdePkg.dec, MdeModulePkg.dec, OvmfPkg.dec).
EDKII_MEMORY_ACCEPT_PROTOCOL_GUID = guid("38c74800-5590-4db4-a0f3-675d9b8e8026")
OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID = guid("c5a010fe-38a7-4531-8a4a-0500d2fd1649")
EFI_EVENT_BEFORE_EXIT_BOOT_SERVICES_GUID = guid("8be0e274-3970-4b44-80c5-1ab9502f3bfc")
EFI_EVENT_EXIT_BOOT_SERVICES_GUID = guid("27abf055-b1b8-4c26-8048-748f37baa2df")
EFI_EVENT_MEMORY_MAP_CHANGE_GUID = guid("78bee926-692f-48fd-9edb-01422ef0d7ab")
EVENT_EXIT_BOOT_SERVICES_FAILED_GUID = guid("4f6c5507-232f-4787-b95e-72f862490cb1")
EFI_DXE_SERVICES_TABLE_GUID = guid("05ad34ba-6f02-4214-952e-4da0398e2bb9")
LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID = guid("d5d1de3c-105c-44f9-9ea9-bcef98120031")
LINUX_EFI_INITRD_MEDIA_GUID = guid("5568e427-68fc-4f3d-ac74-ca555231cc68")
