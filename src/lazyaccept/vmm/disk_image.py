"""A user's raw disk image (`boot --disk FILE`), as QEMU's -drive file=FILE,format=raw,readonly=on offers it: read
through the file at offsets (a 100 GiB sparse image costs what the guest reads), never written.

Opening it checks what the firmware will need, on the host, so that a damaged image is one clear line naming the
structure and its byte offset instead of a VOLUME_CORRUPTED deep in a boot: the partition table (a protective MBR
and GPT, UEFI 2.10 5.2.3 and 5.3, or a PC-AT MBR with an EFI System Partition of type 0xEF, 5.2.1), the ESP's
FAT boot sector and FATs, and the cluster chain of every file and folder on it (vmm/fat_reader.py).
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lazyaccept.errors import InputError
from lazyaccept.spec.gpt import EFI_PARTITION_ENTRY, EFI_PARTITION_TABLE_HEADER, GPT_HEADER_SIZE, GPT_SIGNATURE
from lazyaccept.spec.guids import PART_TYPE_SYSTEM_PART

SECTOR = 512
MBR_ENTRIES_OFFSET = 446  # four 16-byte entries
MBR_SIGNATURE_OFFSET = 510
MBR_DISK_SIGNATURE_OFFSET = 440
MBR_TYPE_PROTECTIVE, MBR_TYPE_ESP = 0xEE, 0xEF
MAX_GPT_ENTRIES = 1024  # as many as PartitionDxe reads; real tables have 128
REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"


@dataclass(frozen=True)
class DiskPartition:
    number: int  # 1-based, as HD() nodes and Linux name them
    first_lba: int
    sectors: int
    esp: bool
    type: str  # the GPT type GUID, or the MBR type byte as 0xNN
    entry_offset: int  # of its table entry in the image, for messages


@dataclass
class PartitionTable:
    kind: str  # "gpt" or "mbr"
    partitions: list[DiskPartition]
    notes: list[str] = field(default_factory=list)

    @property
    def esp(self) -> DiskPartition | None:
        return next((p for p in self.partitions if p.esp), None)


def _gpt_header(read: Callable[[int, int], bytes], lba: int, size: int) -> dict:
    """The header at `lba`, checked (signature, size, CRC, MyLBA, entry array inside the image); InputError else."""
    at = lba * SECTOR
    raw = read(at, SECTOR)
    if len(raw) < SECTOR:
        raise InputError(f"GPT header at LBA {lba} is past the end of the {size}-byte image", field="GPT header",
                         offset=at)
    h = EFI_PARTITION_TABLE_HEADER.unpack(raw)
    off = EFI_PARTITION_TABLE_HEADER.offset_of
    if h["Signature"] != GPT_SIGNATURE:
        raise InputError(f"no GPT header at LBA {lba} (signature {h['Signature']!r}, not 'EFI PART')",
                         field="Signature", offset=at)
    if not GPT_HEADER_SIZE <= h["HeaderSize"] <= SECTOR:
        raise InputError(f"GPT header size {h['HeaderSize']} is not {GPT_HEADER_SIZE} to {SECTOR}", field="HeaderSize",
                         offset=at + off("HeaderSize"))
    crc_at = off("HeaderCRC32")
    crc = zlib.crc32(raw[:crc_at] + bytes(4) + raw[crc_at + 4 : h["HeaderSize"]])
    if crc != h["HeaderCRC32"]:
        raise InputError(f"GPT header CRC is {h['HeaderCRC32']:#010x}, its bytes give {crc:#010x}",
                         field="HeaderCRC32", offset=at + crc_at)
    if h["MyLBA"] != lba:
        raise InputError(f"GPT header at LBA {lba} says it is at LBA {h['MyLBA']}", field="MyLBA",
                         offset=at + off("MyLBA"))
    count, entry_size = h["NumberOfPartitionEntries"], h["SizeOfPartitionEntry"]
    if not 0 < count <= MAX_GPT_ENTRIES:
        raise InputError(f"GPT has {count} partition entries, not 1 to {MAX_GPT_ENTRIES}",
                         field="NumberOfPartitionEntries", offset=at + off("NumberOfPartitionEntries"))
    if entry_size < EFI_PARTITION_ENTRY.size or entry_size % 8 or entry_size > 4096:
        raise InputError(f"GPT partition entry size {entry_size} is not a multiple of 8 from 128",
                         field="SizeOfPartitionEntry", offset=at + off("SizeOfPartitionEntry"))
    start, end = h["PartitionEntryLBA"] * SECTOR, h["PartitionEntryLBA"] * SECTOR + count * entry_size
    if h["PartitionEntryLBA"] < 2 or end > size:
        raise InputError(f"GPT partition entry array at LBA {h['PartitionEntryLBA']} ({start}..{end}) is out of the "
                         f"{size}-byte image", field="PartitionEntryLBA", offset=at + off("PartitionEntryLBA"))
    return h


def read_partition_table(read: Callable[[int, int], bytes], size: int) -> PartitionTable:
    """The partition table of an image of `size` bytes read through `read`, checked; InputError naming the
    structure and offset when it has none or a damaged one, or no EFI System Partition."""
    mbr = read(0, SECTOR)
    if size < SECTOR or len(mbr) < SECTOR or mbr[MBR_SIGNATURE_OFFSET : MBR_SIGNATURE_OFFSET + 2] != b"\x55\xaa":
        raise InputError("no partition table: no MBR boot signature 0x55AA (neither GPT nor MBR)",
                         field="MBR signature", offset=MBR_SIGNATURE_OFFSET)
    entries = [mbr[MBR_ENTRIES_OFFSET + 16 * i : MBR_ENTRIES_OFFSET + 16 * (i + 1)] for i in range(4)]
    for i, e in enumerate(entries):
        if e[0] not in (0, 0x80):  # boot code or a BPB: a file system's boot sector, not a partitioned disk
            raise InputError(f"no partition table: MBR entry {i + 1} has boot indicator {e[0]:#04x}, not 0x00 or "
                             "0x80 (a bare file system without a partition table?)", field="MBR partition entry",
                             offset=MBR_ENTRIES_OFFSET + 16 * i)
    if any(e[4] == MBR_TYPE_PROTECTIVE for e in entries):
        return _read_gpt(read, size)
    partitions, sectors = [], size // SECTOR
    for i, e in enumerate(entries):
        at = MBR_ENTRIES_OFFSET + 16 * i
        kind, first, count = e[4], int.from_bytes(e[8:12], "little"), int.from_bytes(e[12:16], "little")
        if kind == 0 or count == 0:
            continue
        if first + count > sectors:
            raise InputError(f"the image is shorter than the partition table says: MBR partition {i + 1} ends at "
                             f"byte {(first + count) * SECTOR}, the file has {size}", field="MBR partition entry",
                             offset=at)
        partitions.append(DiskPartition(i + 1, first, count, kind == MBR_TYPE_ESP, f"{kind:#04x}", at))
    table = PartitionTable("mbr", partitions)
    if not partitions:
        bare = mbr[0] in (0xEB, 0xE9) and (mbr[0x36:0x39] == b"FAT" or mbr[0x52:0x55] == b"FAT")
        what = ("the image is a bare FAT file system (its boot sector at byte 0), not a partitioned disk" if bare
                else "the MBR's four partition entries are empty")
        raise InputError(f"no partition table: {what}", field="MBR partition entry", offset=MBR_ENTRIES_OFFSET)
    if table.esp is None:
        types = ", ".join(p.type for p in partitions) or "none"
        raise InputError(f"MBR has no EFI System Partition (type 0xEF; its partition types: {types})",
                         field="MBR partition type", offset=MBR_ENTRIES_OFFSET + 4)
    return table


def _read_gpt(read: Callable[[int, int], bytes], size: int) -> PartitionTable:
    notes = []
    try:
        h = _gpt_header(read, 1, size)
    except InputError as primary:
        # PartitionDxe falls back to the backup header at the last LBA (edk2 Gpt.c); so does lazyaccept.
        try:
            h = _gpt_header(read, size // SECTOR - 1, size)
        except InputError:
            raise primary from None
        notes.append(f"primary GPT header damaged ({primary}); the backup header at the last LBA is used, as edk2 does")
    at = h["MyLBA"] * SECTOR
    count, entry_size = h["NumberOfPartitionEntries"], h["SizeOfPartitionEntry"]
    array_at = h["PartitionEntryLBA"] * SECTOR
    table = read(array_at, count * entry_size)
    crc = zlib.crc32(table)
    if crc != h["PartitionEntryArrayCRC32"]:
        raise InputError(f"GPT partition entry array CRC is {h['PartitionEntryArrayCRC32']:#010x}, its bytes give "
                         f"{crc:#010x}", field="PartitionEntryArrayCRC32",
                         offset=at + EFI_PARTITION_TABLE_HEADER.offset_of("PartitionEntryArrayCRC32"))
    partitions = []
    for i in range(count):
        e = EFI_PARTITION_ENTRY.unpack(table, i * entry_size)
        type_guid = uuid.UUID(bytes_le=e["PartitionTypeGUID"])
        if type_guid.int == 0:
            continue
        first, last, entry_at = e["StartingLBA"], e["EndingLBA"], array_at + i * entry_size
        if first > last or first < h["FirstUsableLBA"] or last > h["LastUsableLBA"]:
            raise InputError(f"GPT partition {i + 1} spans LBA {first}..{last}, outside the usable "
                             f"{h['FirstUsableLBA']}..{h['LastUsableLBA']}", field="StartingLBA", offset=entry_at + 32)
        if (last + 1) * SECTOR > size:
            raise InputError(f"the image is shorter than the partition table says: GPT partition {i + 1} ends at "
                             f"byte {(last + 1) * SECTOR}, the file has {size}", field="EndingLBA",
                             offset=entry_at + 40)
        esp = type_guid == PART_TYPE_SYSTEM_PART
        partitions.append(DiskPartition(i + 1, first, last - first + 1, esp, str(type_guid), entry_at))
    out = PartitionTable("gpt", partitions, notes)
    if out.esp is None:
        raise InputError(f"GPT has no EFI System Partition (type {PART_TYPE_SYSTEM_PART}) among its "
                         f"{len(partitions)} partitions", field="PartitionTypeGUID", offset=array_at)
    return out


class DiskImage:
    """A raw disk image file, read only, read at offsets with pread (never whole)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise IsADirectoryError(errno.EISDIR, "not a file or a block device")
            self.size = os.lseek(self._fd, 0, os.SEEK_END)  # a block device's size too (its st_size is 0)
        except OSError as exc:
            self.close()
            raise InputError(f"--disk {self.path}: cannot read it: {exc.strerror or exc}", field="disk") from None
        self.bytes_read = 0
        try:
            self.table = read_partition_table(self.read, self.size)
            self.esp = self.table.esp
            assert self.esp is not None
            self.esp_files, self.fat_bits, self.has_removable_path = self._check_esp()
        except InputError as exc:
            self.close()
            named = InputError(f"--disk {self.path}: {exc}")  # exc's text already ends in its field and offset
            named.field, named.offset = exc.field, exc.offset
            raise named from None

    def read(self, offset: int, length: int) -> bytes:
        """Bytes at offset; short past the end of the file (callers check)."""
        if self._fd is None:
            raise InputError(f"--disk {self.path} is closed", field="disk")
        if offset < 0 or length < 0:
            return b""
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:  # an I/O error of the host's disk, reported like a damaged image
            raise InputError(f"--disk {self.path}: cannot read {length} bytes: {exc.strerror or exc}", field="disk",
                             offset=offset) from None
        self.bytes_read += len(data)
        return data

    def read_padded(self, offset: int, length: int) -> bytes:
        """What the guest's Block I/O reads: the firmware checked the range against the disk's size."""
        data = self.read(offset, length)
        return data + bytes(length - len(data))

    def esp_read(self) -> Callable[[int, int], bytes]:
        assert self.esp is not None
        base = self.esp.first_lba * SECTOR
        return lambda off, n: self.read(base + off, n)

    def _fat(self):  # noqa: ANN202 - vmm.fat_reader.FatReader
        from lazyaccept.vmm.fat_reader import FatReader

        assert self.esp is not None
        return FatReader(self.esp_read(), base=self.esp.first_lba * SECTOR, size=self.esp.sectors * SECTOR)

    def removable_loader(self) -> bytes | None:
        """The ESP's EFI/BOOT/BOOTX64.EFI, which the Boot Manager starts (and Secure Boot would check); None when
        the image has none (checked already when the image was opened)."""
        return self._fat().read_file(REMOVABLE_PATH) if self.has_removable_path else None

    def _check_esp(self) -> tuple[dict[str, int], int, bool]:
        fat = self._fat()
        files = {}
        for path, first, size in fat.walk():
            if size:
                fat.runs(first, size)  # a loop or a short chain: named now, not when the firmware reads it
            files[path] = size
        removable = any(p.upper() == REMOVABLE_PATH for p in files)
        return files, fat.fat_bits, removable

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def summary(self) -> dict:
        """For the boot report (report.grub.esp)."""
        assert self.esp is not None
        return {
            "source": str(self.path),
            "disk_bytes": self.size,
            "partition_table": self.table.kind,
            "esp_partition": self.esp.number,
            "fat": f"FAT{self.fat_bits}",
            "files": dict(self.esp_files),
            "notes": list(self.table.notes),
        }
