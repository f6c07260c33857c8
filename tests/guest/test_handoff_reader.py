"""Reading a stub's handoff from guest memory as Linux does (guest/handoff_check.py): boot_params.efi_info -> the
EFI system table -> its configuration tables, and the UEFI memory map the stub exited with. Bad pointers and
implausible sizes are one clear error naming the field, never a traceback."""

from __future__ import annotations

import uuid

import pytest

from lazyaccept.errors import InputError
from lazyaccept.guest.boot_params import BootParams
from lazyaccept.guest.handoff_check import configuration_tables, handed_over_memory_map
from lazyaccept.spec.efi import EfiMemoryType, MemoryDescriptor, pack_memory_map
from lazyaccept.spec.efi_tables import EFI_CONFIGURATION_TABLE, EFI_SYSTEM_TABLE, SYSTEM_TABLE_SIGNATURE

SYSTAB, CONFIG, MEMMAP = 0x1000, 0x2000, 0x3000
UNACCEPTED = uuid.UUID("d5d1de3c-105c-44f9-9ea9-bc7ca3a2e4d0")


class Memory:
    def __init__(self) -> None:
        self.bytes = bytearray(0x10000)

    def write(self, gpa: int, data: bytes) -> None:
        self.bytes[gpa : gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        if gpa < 0 or gpa + n > len(self.bytes):
            raise InputError(f"the handoff points at {gpa:#x}, which is not accepted memory")
        return bytes(self.bytes[gpa : gpa + n])


def system_table(count: int, signature: int = SYSTEM_TABLE_SIGNATURE) -> bytes:
    hdr = signature.to_bytes(8, "little") + bytes(16)
    return EFI_SYSTEM_TABLE.pack(Hdr=hdr, NumberOfTableEntries=count, ConfigurationTable=CONFIG)


def boot_params(memmap_size: int, desc_size: int = 48) -> BootParams:
    return BootParams(0x7000, [], 0x34364C45, SYSTAB, MEMMAP, memmap_size, desc_size, "")


def test_configuration_tables_are_read_from_the_system_table() -> None:
    mem = Memory()
    mem.write(SYSTAB, system_table(2))
    other = uuid.uuid4()
    for i, (g, p) in enumerate(((other, 0x5000), (UNACCEPTED, 0x6000))):
        mem.write(CONFIG + i * 24, EFI_CONFIGURATION_TABLE.pack(VendorGuid=g.bytes_le, VendorTable=p))
    assert configuration_tables(mem.read, SYSTAB) == [(other, 0x5000), (UNACCEPTED, 0x6000)]


@pytest.mark.parametrize(
    ("systab", "table", "field"),
    [
        (0, b"", "efi_systab"),
        (SYSTAB, system_table(1, signature=0x1234), "Hdr.Signature"),
        (SYSTAB, system_table(1 << 40), "NumberOfTableEntries"),
    ],
)
def test_a_bad_system_table_is_an_error_naming_the_field(systab: int, table: bytes, field: str) -> None:
    mem = Memory()
    mem.write(SYSTAB, table)
    with pytest.raises(InputError) as err:
        configuration_tables(mem.read, systab)
    assert err.value.field == field


def test_the_memory_map_the_stub_exited_with_is_read_back() -> None:
    mem = Memory()
    descriptors = [
        MemoryDescriptor(EfiMemoryType.EfiConventionalMemory, 0, 0x9F),
        MemoryDescriptor(EfiMemoryType.EfiUnacceptedMemoryType, 0x100000000, 0x40000),
    ]
    raw = pack_memory_map(descriptors)
    mem.write(MEMMAP, raw)
    assert handed_over_memory_map(mem.read, boot_params(len(raw))) == descriptors
    assert handed_over_memory_map(mem.read, boot_params(0)) == []
    with pytest.raises(InputError) as err:
        handed_over_memory_map(mem.read, boot_params(1 << 30))
    assert err.value.field == "efi_memmap_size"
    with pytest.raises(InputError):
        handed_over_memory_map(mem.read, boot_params(len(raw) - 1))
