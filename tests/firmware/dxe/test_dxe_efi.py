"""Architectural values of spec/efi.py against edk2's headers."""

from __future__ import annotations

import pytest

from lazyaccept.errors import InputError
from lazyaccept.spec.efi import (
    EFI_GCD_MEMORY_SPACE_DESCRIPTOR,
    EFI_MEMORY_DESCRIPTOR,
    EFI_MEMORY_DESCRIPTOR_SIZE,
    EFI_MEMORY_DESCRIPTOR_VERSION,
    EFI_MEMORY_RUNTIME,
    EFI_MEMORY_SP,
    EFI_MEMORY_UC,
    EFI_MEMORY_WB,
    EFI_MEMORY_XP,
    EfiAllocateType,
    EfiGcdMemoryType,
    EfiMemoryType,
    EfiStatus,
    MemoryDescriptor,
    efi_error,
    memory_type_name,
    pack_memory_map,
    status_name,
    unpack_memory_map,
)


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (EfiStatus.SUCCESS, 0),
        (EfiStatus.LOAD_ERROR, 0x8000000000000001),
        (EfiStatus.INVALID_PARAMETER, 0x8000000000000002),
        (EfiStatus.UNSUPPORTED, 0x8000000000000003),
        (EfiStatus.BUFFER_TOO_SMALL, 0x8000000000000005),
        (EfiStatus.OUT_OF_RESOURCES, 0x8000000000000009),
        (EfiStatus.NOT_FOUND, 0x800000000000000E),
        (EfiStatus.ACCESS_DENIED, 0x800000000000000F),
        (EfiStatus.ABORTED, 0x8000000000000015),
        (EfiStatus.END_OF_FILE, 0x800000000000001F),
        (EfiStatus.HTTP_ERROR, 0x8000000000000023),
        (EfiStatus.NOT_AVAILABLE_YET, 0xA000000000000002),
        (EfiStatus.WARN_BUFFER_TOO_SMALL, 4),
    ],
)
def test_status_values(status: EfiStatus, value: int) -> None:
    assert status == value


def test_error_bit() -> None:
    assert efi_error(EfiStatus.NOT_FOUND) and EfiStatus.NOT_FOUND.is_error
    assert not efi_error(EfiStatus.SUCCESS) and not efi_error(EfiStatus.WARN_STALE_DATA)
    assert str(EfiStatus.OUT_OF_RESOURCES) == "EFI_OUT_OF_RESOURCES"
    assert status_name(0x8000000000000042) == "EFI_STATUS 0x8000000000000042"


def test_memory_and_gcd_types() -> None:
    assert EfiMemoryType.EfiPersistentMemory == 14
    assert EfiMemoryType.EfiUnacceptedMemoryType == 15
    assert EfiMemoryType.EfiMaxMemoryType == 16
    assert EfiGcdMemoryType.EfiGcdMemoryTypeUnaccepted == 6
    assert EfiGcdMemoryType.EfiGcdMemoryTypeMaximum == 7
    assert EfiAllocateType.AllocateAddress == 2
    assert memory_type_name(0x70000001) == "OEM(0x70000001)"
    assert memory_type_name(0x80000000) == "OS(0x80000000)"
    assert memory_type_name(0x20) == "invalid(0x20)"


def test_attribute_bits() -> None:
    assert EFI_MEMORY_UC == 1 and EFI_MEMORY_WB == 8 and EFI_MEMORY_XP == 0x4000
    assert EFI_MEMORY_SP == 0x40000 and EFI_MEMORY_RUNTIME == 1 << 63


def test_descriptor_layouts() -> None:
    assert EFI_MEMORY_DESCRIPTOR.size == 40
    assert EFI_MEMORY_DESCRIPTOR.offset_of("PhysicalStart") == 8
    # Page.c CoreGetMemoryMap pads to 48 so that callers must use DescriptorSize.
    assert EFI_MEMORY_DESCRIPTOR_SIZE == 48
    assert EFI_MEMORY_DESCRIPTOR_VERSION == 1
    assert EFI_GCD_MEMORY_SPACE_DESCRIPTOR.size == 56


def test_memory_map_roundtrip() -> None:
    descs = [MemoryDescriptor(7, 0x1000, 3, EFI_MEMORY_WB), MemoryDescriptor(15, 0x100000000, 0x40000)]
    raw = pack_memory_map(descs)
    assert len(raw) == 96
    assert unpack_memory_map(raw, len(raw)) == descs
    with pytest.raises(InputError, match="not a multiple"):
        unpack_memory_map(raw, 50)
