"""The Linux EFI configuration table for unaccepted memory (include/linux/efi.h, Linux 6.12 and 7.2: struct
efi_unaccepted_memory {u32 version; u32 unit_size; u64 phys_base; u64 size; unsigned long bitmap[];}). Its GUID is
spec/efi.py's LINUX_EFI_UNACCEPTED_MEM_TABLE_GUID; its operations live with their users (guest/unaccepted.py)."""

from __future__ import annotations

from lazyaccept.binlayout import Layout
from lazyaccept.units import PAGE_2M

UNACCEPTED_TABLE_HEADER = Layout(
    "struct efi_unaccepted_memory",
    [("version", "I"), ("unit_size", "I"), ("phys_base", "Q"), ("size", "Q")],
)
UNACCEPTED_TABLE_VERSION = 1
EFI_UNACCEPTED_UNIT_SIZE = PAGE_2M  # the stub's unit (PMD_SIZE, libstub unaccepted_memory.c)
