"""The GUID Partition Table (UEFI 2.10 section 5.3: EFI_PARTITION_TABLE_HEADER, EFI_PARTITION_ENTRY)."""

from __future__ import annotations

from lazyaccept.binlayout import Layout

GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
GPT_HEADER_SIZE = 92  # HeaderSize of revision 1.0; the rest of the sector is zero

EFI_PARTITION_TABLE_HEADER = Layout(
    "EFI_PARTITION_TABLE_HEADER",
    [
        ("Signature", "8s"),
        ("Revision", "I"),
        ("HeaderSize", "I"),
        ("HeaderCRC32", "I"),
        ("Reserved", "I"),
        ("MyLBA", "Q"),
        ("AlternateLBA", "Q"),
        ("FirstUsableLBA", "Q"),
        ("LastUsableLBA", "Q"),
        ("DiskGUID", "16s"),
        ("PartitionEntryLBA", "Q"),
        ("NumberOfPartitionEntries", "I"),
        ("SizeOfPartitionEntry", "I"),
        ("PartitionEntryArrayCRC32", "I"),
    ],
)

EFI_PARTITION_ENTRY = Layout(
    "EFI_PARTITION_ENTRY",
    [
        ("PartitionTypeGUID", "16s"),
        ("UniquePartitionGUID", "16s"),
        ("StartingLBA", "Q"),
        ("EndingLBA", "Q"),
        ("Attributes", "Q"),
        ("PartitionName", "72s"),  # CHAR16[36], UTF-16LE, NUL padded
    ],
)

assert EFI_PARTITION_TABLE_HEADER.size == GPT_HEADER_SIZE and EFI_PARTITION_ENTRY.size == 128
