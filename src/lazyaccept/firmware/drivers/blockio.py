"""Block devices as a UEFI firmware offers them: EFI_BLOCK_IO_PROTOCOL and EFI_DISK_IO_PROTOCOL on a disk handle,
with the device path nodes of a disk (partition.py makes the children per GPT partition, fat.py reads files).

Layouts per UEFI 2.10 (13.9 Block I/O, 13.7 Disk I/O, 10.3.5.1 Hard Drive media device path) and edk2
(MdePkg/Include/Protocol/BlockIo.h, DiskIo.h; MdeModulePkg/Universal/Disk/PartitionDxe/Gpt.c for how the GPT
is validated and children are made; DiskIoDxe installs Disk I/O on every Block I/O handle, children included).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lazyaccept.binlayout import Layout
from lazyaccept.firmware.drivers.base import FW, ProtocolBase, pointers
from lazyaccept.spec import guids
from lazyaccept.spec.device_path import split_nodes as split_nodes  # re-exported: the one parser
from lazyaccept.spec.efi import EfiStatus as S

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


def mbr_hard_drive_node(number: int, start_lba: int, sectors: int, disk_signature: int) -> bytes:
    """HD(number, MBR, signature, start, size): MBRType 1 (PC-AT MBR), SignatureType 1 (the 32-bit disk signature
    at MBR offset 440)."""
    return (
        bytes([4, 1, 42, 0])
        + number.to_bytes(4, "little")
        + start_lba.to_bytes(8, "little")
        + sectors.to_bytes(8, "little")
        + disk_signature.to_bytes(4, "little")
        + bytes(12)
        + bytes([1, 1])
    )


def file_path_node(path: str) -> bytes:
    """File(path): MEDIA_DEVICE_PATH (4), MEDIA_FILEPATH_DP (4), a NUL-terminated UCS-2 path."""
    name = (path + "\0").encode("utf-16-le")
    return bytes([4, 4]) + (4 + len(name)).to_bytes(2, "little") + name


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
