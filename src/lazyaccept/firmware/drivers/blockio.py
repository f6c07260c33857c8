"""Block devices as a UEFI firmware offers them: EFI_BLOCK_IO_PROTOCOL and EFI_DISK_IO_PROTOCOL on a disk handle,
a child handle per GPT partition with an HD() device path node (what edk2's PartitionDxe creates), and a small
FAT reader that the boot manager uses to load a file named by a device path.

Layouts per UEFI 2.10 (13.9 Block I/O, 13.7 Disk I/O, 10.3.5.1 Hard Drive media device path) and edk2
(MdePkg/Include/Protocol/BlockIo.h, DiskIo.h; MdeModulePkg/Universal/Disk/PartitionDxe/Gpt.c for how the GPT
is validated and children are made; DiskIoDxe installs Disk I/O on every Block I/O handle, children included).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazyaccept.binlayout import Layout
from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.base import END_NODE, FW, ProtocolBase, pointers
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.gpt import EFI_PARTITION_ENTRY, EFI_PARTITION_TABLE_HEADER, GPT_HEADER_SIZE, GPT_SIGNATURE

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

BLOCK_IO, DISK_IO, PART_TYPE_SYSTEM_PART = guids.BLOCK_IO, guids.DISK_IO, guids.PART_TYPE_SYSTEM_PART
BLOCK_IO_REVISION3 = 0x0002001F  # EFI_BLOCK_IO_PROTOCOL_REVISION3 = (2 << 16) | 31
DISK_IO_REVISION = 0x00010000
EFI_BLOCK_IO_MEDIA = Layout(
    "EFI_BLOCK_IO_MEDIA",
    [
        ("MediaId", "I"),
        ("RemovableMedia", "B"),
        ("MediaPresent", "B"),
        ("LogicalPartition", "B"),
        ("ReadOnly", "B"),
        ("WriteCaching", "B"),
        ("Pad0", "3s"),
        ("BlockSize", "I"),
        ("IoAlign", "I"),
        ("Pad1", "4s"),
        ("LastBlock", "Q"),
        ("LowestAlignedLba", "Q"),
        ("LogicalBlocksPerPhysicalBlock", "I"),
        ("OptimalTransferLengthGranularity", "I"),
    ],
)
# Costs of a disk request (assumptions, no published figure for a TD): a virtqueue notification is an exit to
# the VMM, and the data lands in a shared bounce buffer that the firmware copies into private memory.
DISK_REQUEST_NS = 10_000
MAX_GPT_ENTRIES = 1024


def acpi_pci_root(uid: int = 0) -> bytes:
    """PciRoot(uid): ACPI_DEVICE_PATH (2), ACPI_DP (1), HID PNP0A03."""
    return bytes([2, 1, 12, 0]) + (0x0A0341D0).to_bytes(4, "little") + uid.to_bytes(4, "little")


def pci_node(device: int, function: int = 0) -> bytes:
    """Pci(device, function): HARDWARE_DEVICE_PATH (1), HW_PCI_DP (1)."""
    return bytes([1, 1, 6, 0, function, device])


def hard_drive_node(number: int, start_lba: int, sectors: int, signature: uuid.UUID) -> bytes:
    """HD(number, GPT, signature, start, size): MEDIA_DEVICE_PATH (4), MEDIA_HARDDRIVE_DP (1), 42 bytes, MBRType
    2 (GPT), SignatureType 2 (GUID)."""
    return (
        bytes([4, 1, 42, 0])
        + number.to_bytes(4, "little")
        + start_lba.to_bytes(8, "little")
        + sectors.to_bytes(8, "little")
        + signature.bytes_le
        + bytes([2, 2])
    )


def file_path_node(path: str) -> bytes:
    """File(path): MEDIA_DEVICE_PATH (4), MEDIA_FILEPATH_DP (4), a NUL-terminated UCS-2 path."""
    name = (path + "\0").encode("utf-16-le")
    return bytes([4, 4]) + (4 + len(name)).to_bytes(2, "little") + name


def split_nodes(path: bytes) -> list[bytes]:
    """The nodes of a device path without its End node."""
    out, pos = [], 0
    while pos + 4 <= len(path):
        length = int.from_bytes(path[pos + 2 : pos + 4], "little")
        if path[pos] == 0x7F or length < 4:
            break
        out.append(path[pos : pos + length])
        pos += length
    return out


@dataclass
class BlockDeviceInfo:
    handle: int
    device_path: bytes  # including the End node
    block_size: int
    last_block: int
    logical_partition: bool
    partition_number: int = 0
    type_guid: uuid.UUID | None = None
    reads: int = 0
    bytes_read: int = 0


class BlockDevice(ProtocolBase):
    """One handle with Device Path, Block I/O and Disk I/O over `read(offset, length)` / `write(offset, data)`
    of its bytes (a whole disk, or a partition's window onto it)."""

    def __init__(
        self,
        machine: UefiCore,
        device_path: bytes,
        size: int,
        read: Callable[[int, int], bytes],
        write: Callable[[int, bytes], None] | None,
        *,
        logical_partition: bool = False,
        media_id: int = 1,
        block_size: int = 512,
    ):
        super().__init__(machine)
        self.read_bytes = read
        self.write_bytes = write
        self.size = size
        self.media_id = media_id
        self.block_size = block_size
        self.info = BlockDeviceInfo(0, device_path, block_size, size // block_size - 1, logical_partition)
        # (offset, length) of each guest read that succeeded, in this device's bytes: how a loader's file-system
        # driver walked the disk (loaders/grub.py maps them to the FAT volume's folders and files).
        self.read_observers: list[Callable[[int, int], None]] = []
        media = EFI_BLOCK_IO_MEDIA.pack(
            MediaId=media_id,
            MediaPresent=1,
            LogicalPartition=int(logical_partition),
            ReadOnly=int(write is None),
            BlockSize=block_size,
            IoAlign=0,
            LastBlock=self.info.last_block,
            LowestAlignedLba=0,
            LogicalBlocksPerPhysicalBlock=1,
        )
        self.media = self.m.fw_alloc(len(media))
        self.m.mem.write(self.media, media, actor=FW)
        methods: list[tuple[str, Callable[..., int | None], int]] = [
            ("Reset", self._reset, 2),
            ("ReadBlocks", self.read_blocks, 5),
            ("WriteBlocks", self.write_blocks, 5),
            ("FlushBlocks", self._flush, 1),
        ]
        thunks = [self.m.thunk(f"BlockIo.{n}", fn, nargs) for n, fn, nargs in methods]
        self.block_io = self.m.fw_alloc(8 * (2 + len(thunks)))
        self.m.mem.write(self.block_io, pointers(BLOCK_IO_REVISION3, self.media, *thunks), actor=FW)
        disk_thunks = [
            self.m.thunk("DiskIo.ReadDisk", self.read_disk, 5),
            self.m.thunk("DiskIo.WriteDisk", self.write_disk, 5),
        ]
        self.disk_io = self.m.fw_alloc(8 * 3)
        self.m.mem.write(self.disk_io, pointers(DISK_IO_REVISION, *disk_thunks), actor=FW)
        self.device_path = self.m.fw_alloc(len(device_path))
        self.m.mem.write(self.device_path, device_path, actor=FW)
        self.handle = self.m.new_handle()
        self.info.handle = self.handle
        self.m.install(self.handle, guids.DEVICE_PATH, self.device_path)
        self.m.install(self.handle, BLOCK_IO, self.block_io, self)
        self.m.install(self.handle, DISK_IO, self.disk_io, self)

    def _reset(self, this: int, extended: int) -> int:
        return S.SUCCESS

    def _flush(self, this: int) -> int:
        return S.SUCCESS

    def _charge(self, size: int) -> None:
        profile = self.m.tdx.profile
        self.m.tdx.charge(0, DISK_REQUEST_NS + profile.bytes_ns(size, profile.copy_bytes_per_s))

    def _check(self, media_id: int, lba: int, size: int, buffer: int) -> int | None:
        """The argument checks of edk2's block drivers, in their order."""
        if media_id & 0xFFFFFFFF != self.media_id:
            return S.MEDIA_CHANGED
        if not buffer:
            return S.INVALID_PARAMETER
        if size % self.block_size:
            return S.BAD_BUFFER_SIZE
        if lba > self.info.last_block or lba + size // self.block_size > self.info.last_block + 1:
            return S.INVALID_PARAMETER
        return None

    def read_blocks(self, this: int, media_id: int, lba: int, size: int, buffer: int) -> int:
        if size == 0:
            return S.SUCCESS
        bad = self._check(media_id, lba, size, buffer)
        if bad is not None:
            self.m.log("BlockIo.ReadBlocks", f"LBA {lba:#x}, {size:#x} bytes", bad)
            return bad
        self.m.write(buffer, self.read_bytes(lba * self.block_size, size))
        self._count_read(lba * self.block_size, size)
        return S.SUCCESS

    def _count_read(self, offset: int, size: int) -> None:
        self.info.reads += 1
        self.info.bytes_read += size
        self._charge(size)
        for observe in self.read_observers:
            observe(offset, size)

    def write_blocks(self, this: int, media_id: int, lba: int, size: int, buffer: int) -> int:
        if self.write_bytes is None:
            return S.WRITE_PROTECTED
        if size == 0:
            return S.SUCCESS
        bad = self._check(media_id, lba, size, buffer)
        if bad is not None:
            return bad
        self.write_bytes(lba * self.block_size, self.m.read(buffer, size))
        self._charge(size)
        self.m.log("BlockIo.WriteBlocks", f"LBA {lba:#x}, {size:#x} bytes", S.SUCCESS)
        return S.SUCCESS

    def read_disk(self, this: int, media_id: int, offset: int, size: int, buffer: int) -> int:
        if media_id & 0xFFFFFFFF != self.media_id:
            return S.MEDIA_CHANGED
        if size == 0:
            return S.SUCCESS
        if not buffer or offset + size > self.size:
            return S.INVALID_PARAMETER
        self.m.write(buffer, self.read_bytes(offset, size))
        self._count_read(offset, size)
        return S.SUCCESS

    def write_disk(self, this: int, media_id: int, offset: int, size: int, buffer: int) -> int:
        if self.write_bytes is None:
            return S.WRITE_PROTECTED
        if media_id & 0xFFFFFFFF != self.media_id:
            return S.MEDIA_CHANGED
        if size == 0:
            return S.SUCCESS
        if not buffer or offset + size > self.size:
            return S.INVALID_PARAMETER
        # Disk I/O allows any offset: read-modify-write whole blocks, as DiskIoDxe does.
        first = offset - offset % self.block_size
        last = -(-(offset + size) // self.block_size) * self.block_size
        blocks = bytearray(self.read_bytes(first, last - first))
        blocks[offset - first : offset - first + size] = self.m.read(buffer, size)
        self.write_bytes(first, bytes(blocks))
        self._charge(size)
        return S.SUCCESS


# ================================================================================================= partitions
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


def connect_partitions(machine: UefiCore, disk: BlockDevice) -> list[BlockDevice]:
    """PartitionDxe on a disk: a child handle per GPT entry, its device path the disk's plus HD(...)."""
    entries = read_gpt(disk.read_bytes, disk.block_size, disk.info.last_block)
    children = []
    parent_nodes = disk.info.device_path[:-4]
    for e in entries:
        start, sectors = e.first_lba, e.last_lba - e.first_lba + 1
        path = parent_nodes + hard_drive_node(e.number, start, sectors, e.unique_guid) + END_NODE
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


# ================================================================================================= FAT, read only
class FatReader:
    """Reads files of a FAT12/16/32 volume through `read(offset, length)`: what the firmware's FAT driver does
    when the boot manager loads \\EFI\\BOOT\\BOOTX64.EFI."""

    def __init__(self, read: Callable[[int, int], bytes]):
        self.read = read
        bpb = read(0, 512)
        if bpb[510:512] != b"\x55\xaa":
            raise InputError("no FAT boot sector (signature 0x55AA missing)", field="Signature", offset=510)
        self.bytes_per_sector = int.from_bytes(bpb[11:13], "little")
        self.spc = bpb[13]
        reserved = int.from_bytes(bpb[14:16], "little")
        fats = bpb[16]
        root_entries = int.from_bytes(bpb[17:19], "little")
        total = int.from_bytes(bpb[19:21], "little") or int.from_bytes(bpb[32:36], "little")
        fat_size = int.from_bytes(bpb[22:24], "little") or int.from_bytes(bpb[36:40], "little")
        if self.bytes_per_sector not in (512, 1024, 2048, 4096) or not self.spc or self.spc & (self.spc - 1):
            raise InputError("FAT boot sector has an invalid sector or cluster size", field="BPB_BytsPerSec", offset=11)
        self.root_dir_sectors = (root_entries * 32 + self.bytes_per_sector - 1) // self.bytes_per_sector
        self.fat_start = reserved
        self.root_start = reserved + fats * fat_size
        self.data_start = self.root_start + self.root_dir_sectors
        clusters = (total - self.data_start) // self.spc
        self.fat_bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = int.from_bytes(bpb[44:48], "little") if self.fat_bits == 32 else 0
        self.cluster_bytes = self.spc * self.bytes_per_sector

    def _next(self, cluster: int) -> int:
        if self.fat_bits == 32:
            return int.from_bytes(self.read(self.fat_start * self.bytes_per_sector + 4 * cluster, 4), "little") & (
                0x0FFFFFFF
            )
        if self.fat_bits == 16:
            return int.from_bytes(self.read(self.fat_start * self.bytes_per_sector + 2 * cluster, 2), "little")
        raw = int.from_bytes(self.read(self.fat_start * self.bytes_per_sector + cluster * 3 // 2, 2), "little")
        return raw >> 4 if cluster & 1 else raw & 0xFFF

    def _eoc(self, cluster: int) -> bool:
        return cluster >= {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.fat_bits] or cluster < 2

    def _chain(self, first: int, size: int | None = None) -> bytes:
        out = bytearray()
        cluster, seen = first, 0
        limit = None if size is None else -(-size // self.cluster_bytes)
        while not self._eoc(cluster) and (limit is None or seen < limit):
            # Coalesce contiguous clusters into one read.
            run = 1
            while (limit is None or seen + run < limit) and self._next(cluster + run - 1) == cluster + run:
                run += 1
            off = (self.data_start + (cluster - 2) * self.spc) * self.bytes_per_sector
            out += self.read(off, run * self.cluster_bytes)
            seen += run
            cluster = self._next(cluster + run - 1)
            if seen > 1 << 22:
                raise InputError("FAT cluster chain does not end")
        return bytes(out if size is None else out[:size])

    def _entries(self, cluster: int) -> list[tuple[str, int, int, int]]:
        """(name, attributes, first cluster, size) of a directory; cluster 0 is the root."""
        if cluster == 0 and self.fat_bits != 32:
            raw = self.read(self.root_start * self.bytes_per_sector, self.root_dir_sectors * self.bytes_per_sector)
        else:
            raw = self._chain(cluster or self.root_cluster)
        out, lfn = [], ""
        for i in range(0, len(raw) - 31, 32):
            e = raw[i : i + 32]
            if e[0] == 0:
                break
            if e[0] == 0xE5:
                lfn = ""
                continue
            if e[11] == 0x0F:
                part = (e[1:11] + e[14:26] + e[28:32]).decode("utf-16-le", "replace").split("\0")[0]
                lfn = part + lfn if not e[0] & 0x40 else part
                continue
            if e[11] & 0x08:
                lfn = ""
                continue
            base, ext = e[0:8].decode("latin-1").rstrip(), e[8:11].decode("latin-1").rstrip()
            name = lfn or (base + ("." + ext if ext else ""))
            first = int.from_bytes(e[20:22], "little") << 16 | int.from_bytes(e[26:28], "little")
            out.append((name, e[11], first, int.from_bytes(e[28:32], "little")))
            lfn = ""
        return out

    def read_file(self, path: str) -> bytes | None:
        """A file's bytes by its path (separators '\\' or '/', any case), or None."""
        cluster = 0
        parts = [p for p in path.replace("\\", "/").split("/") if p]
        for i, part in enumerate(parts):
            match = next((e for e in self._entries(cluster) if e[0].upper() == part.upper()), None)
            if match is None:
                return None
            name, attr, first, size = match
            if i == len(parts) - 1:
                return None if attr & 0x10 else (self._chain(first, size) if size else b"")
            if not attr & 0x10:
                return None
            cluster = first
        return None

    def list_dir(self, path: str = "") -> list[str]:
        cluster = 0
        for part in [p for p in path.replace("\\", "/").split("/") if p]:
            match = next((e for e in self._entries(cluster) if e[0].upper() == part.upper() and e[1] & 0x10), None)
            if match is None:
                return []
            cluster = match[2]
        return [e[0] for e in self._entries(cluster) if e[0] not in (".", "..")]


# ================================================================================================= boot manager
def load_from_device_path(machine: UefiCore, devices: list[BlockDevice], path_addr: int):
    """LoadImage from a device path: the partition whose path is the longest prefix, then File() nodes read
    through the FAT reader (the Simple File System of edk2's FAT driver). None if no device matches."""
    wanted = machine.read_device_path(path_addr)
    best: BlockDevice | None = None
    for dev in devices:
        prefix = dev.info.device_path[:-4]
        if dev.info.logical_partition and wanted.startswith(prefix):
            if best is None or len(prefix) > len(best.info.device_path) - 4:
                best = dev
    if best is None:
        return None
    rest = wanted[len(best.info.device_path) - 4 :]
    names = []
    for node in split_nodes(rest):
        if node[0] != 4 or node[1] != 4:
            return S.NOT_FOUND
        names.append(node[4:].decode("utf-16-le", "replace").split("\0")[0].strip("\\"))
    file_name = "\\".join(n for n in names if n)
    try:
        data = FatReader(best.read_bytes).read_file(file_name)
    except InputError as exc:
        machine.log("LoadImage", f"{file_name}: {exc}", S.VOLUME_CORRUPTED)
        return S.VOLUME_CORRUPTED
    if data is None:
        return S.NOT_FOUND
    remaining = rest + END_NODE if not rest.endswith(END_NODE) else rest
    file_path = machine.fw_alloc(len(remaining))
    machine.mem.write(file_path, remaining, actor=FW)
    return data, file_name.split("\\")[-1], best.handle, file_path
