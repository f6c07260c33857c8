"""PartitionDxe on a disk: the GPT validated as edk2 does (MdeModulePkg/Universal/Disk/PartitionDxe/Gpt.c, UEFI
2.10 5.3) and a child Block I/O handle per partition with an HD() device path node; ESPs marked."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import END_NODE
from lazyaccept.firmware.drivers.blockio import (
    PART_TYPE_SYSTEM_PART,
    BlockDevice,
    hard_drive_node,
    mbr_hard_drive_node,
)
from lazyaccept.spec.gpt import EFI_PARTITION_ENTRY, EFI_PARTITION_TABLE_HEADER, GPT_HEADER_SIZE, GPT_SIGNATURE

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

MAX_GPT_ENTRIES = 1024


@dataclass(frozen=True)
class GptEntry:
    number: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str


def _valid_header(header: bytes, lba: int) -> dict | None:
    """The header's fields if it is a GPT header at `lba` with a good CRC (PartitionValidGptTable), else None."""
    if len(header) < GPT_HEADER_SIZE:
        return None
    h = EFI_PARTITION_TABLE_HEADER.unpack(header)
    size = h["HeaderSize"]
    if h["Signature"] != GPT_SIGNATURE or size < GPT_HEADER_SIZE or size > len(header):
        return None
    crc_at = EFI_PARTITION_TABLE_HEADER.offset_of("HeaderCRC32")
    if zlib.crc32(header[:crc_at] + bytes(4) + header[crc_at + 4 : size]) != h["HeaderCRC32"]:
        return None
    return h if h["MyLBA"] == lba else None


def read_gpt(read: Callable[[int, int], bytes], block_size: int, last_block: int) -> list[GptEntry]:
    """The used entries of a disk's GPT, validated as PartitionDxe's PartitionValidGptTable does: header
    signature, CRC and MyLBA, entry-array CRC; the backup header when the primary is damaged. [] if no GPT."""
    for header_lba in (1, last_block):
        h = _valid_header(read(header_lba * block_size, block_size), header_lba)
        if h is None:
            continue
        count, entry_size = h["NumberOfPartitionEntries"], h["SizeOfPartitionEntry"]
        if not 0 < count <= MAX_GPT_ENTRIES or entry_size < EFI_PARTITION_ENTRY.size or entry_size % 8:
            continue
        table = read(h["PartitionEntryLBA"] * block_size, count * entry_size)
        if len(table) < count * entry_size or zlib.crc32(table) != h["PartitionEntryArrayCRC32"]:
            continue
        out = []
        for i in range(count):
            e = EFI_PARTITION_ENTRY.unpack(table, i * entry_size)
            type_guid = uuid.UUID(bytes_le=e["PartitionTypeGUID"])
            if type_guid.int == 0:
                continue
            first, last = e["StartingLBA"], e["EndingLBA"]
            if first > last or last > last_block:
                continue
            name = e["PartitionName"].decode("utf-16-le", "replace").split("\0")[0]
            out.append(GptEntry(i + 1, type_guid, uuid.UUID(bytes_le=e["UniquePartitionGUID"]), first, last, name))
        return out
    return []


def read_mbr(read: Callable[[int, int], bytes], last_block: int) -> tuple[int, list[GptEntry]]:
    """The disk signature and partitions of a PC-AT MBR as PartitionDxe's Mbr.c takes them (primary entries
    inside the disk; type 0xEF an ESP), or (0, []) when the disk has none or a protective MBR (then it is GPT's)."""
    mbr = read(0, 512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return 0, []
    entries = [mbr[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    if any(e[4] == 0xEE for e in entries) or any(e[0] not in (0, 0x80) for e in entries):
        return 0, []
    out = []
    for i, e in enumerate(entries):
        first, count = int.from_bytes(e[8:12], "little"), int.from_bytes(e[12:16], "little")
        if e[4] == 0 or count == 0 or first == 0 or first + count - 1 > last_block:
            continue
        kind = PART_TYPE_SYSTEM_PART if e[4] == 0xEF else uuid.UUID(int=e[4])  # 0xEF: gEfiPartTypeSystemPartGuid
        out.append(GptEntry(i + 1, kind, uuid.UUID(int=0), first, first + count - 1, f"MBR type {e[4]:#04x}"))
    return int.from_bytes(mbr[440:444], "little"), out


def connect_partitions(machine: UefiCore, disk: BlockDevice) -> list[BlockDevice]:
    """PartitionDxe on a disk: a child handle per GPT entry (or MBR entry, on a disk without GPT), its device path
    the disk's plus HD(...)."""
    entries = read_gpt(disk.read_bytes, disk.block_size, disk.info.last_block)
    signature, mbr_entries = (0, []) if entries else read_mbr(disk.read_bytes, disk.info.last_block)
    children = []
    parent_nodes = disk.info.device_path[:-4]
    for e in entries or mbr_entries:
        start, sectors = e.first_lba, e.last_lba - e.first_lba + 1
        if entries:
            node = hard_drive_node(e.number, start, sectors, e.unique_guid)
        else:
            node = mbr_hard_drive_node(e.number, start, sectors, signature)
        path = parent_nodes + node + END_NODE
        base = start * disk.block_size

        def read(offset: int, length: int, base: int = base) -> bytes:
            return disk.read_bytes(base + offset, length)

        write: Callable[[int, bytes], None] | None = None
        if disk.write_bytes is not None:
            disk_write = disk.write_bytes

            def write_child(offset: int, data: bytes, base: int = base, disk_write=disk_write) -> None:
                disk_write(base + offset, data)

            write = write_child

        child = BlockDevice(
            machine, path, sectors * disk.block_size, read, write, logical_partition=True, media_id=disk.media_id
        )
        child.info.partition_number = e.number
        child.info.type_guid = e.type_guid
        if e.type_guid == PART_TYPE_SYSTEM_PART:  # PartitionDxe marks ESPs (a NULL interface)
            machine.install(child.handle, PART_TYPE_SYSTEM_PART, 0)
        children.append(child)
    return children
