"""The firmware's FAT file system, read only (edk2 FatPkg's job: FAT12/16/32 per Microsoft's FAT specification,
layouts in spec/fat.py), and the boot manager's LoadImage from a device path through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.base import END_NODE, FW
from lazyaccept.firmware.drivers.blockio import BlockDevice, split_nodes
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.fat import (
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_VOLUME_ID,
    BOOT_SIGNATURE,
    BOOT_SIGNATURE_OFFSET,
    DIR_ENTRY,
    FAT32_BOOT_SECTOR,
    LAST_LONG_ENTRY,
    LDIR_ENTRY,
)

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


class FatReader:
    """Reads files of a FAT12/16/32 volume through `read(offset, length)`: what the firmware's FAT driver does
    when the boot manager loads \\EFI\\BOOT\\BOOTX64.EFI."""

    def __init__(self, read: Callable[[int, int], bytes]):
        self.read = read
        sector = read(0, 512)
        if sector[BOOT_SIGNATURE_OFFSET : BOOT_SIGNATURE_OFFSET + 2] != BOOT_SIGNATURE:
            raise InputError(
                "no FAT boot sector (signature 0x55AA missing)", field="Signature", offset=BOOT_SIGNATURE_OFFSET
            )
        bpb = FAT32_BOOT_SECTOR.unpack(sector)  # its first fields are the FAT12/16 BPB's
        self.bytes_per_sector = bpb["BPB_BytsPerSec"]
        self.spc = bpb["BPB_SecPerClus"]
        reserved = bpb["BPB_RsvdSecCnt"]
        fats = bpb["BPB_NumFATs"]
        root_entries = bpb["BPB_RootEntCnt"]
        total = bpb["BPB_TotSec16"] or bpb["BPB_TotSec32"]
        fat_size = bpb["BPB_FATSz16"] or bpb["BPB_FATSz32"]
        if self.bytes_per_sector not in (512, 1024, 2048, 4096) or not self.spc or self.spc & (self.spc - 1):
            raise InputError(
                "FAT boot sector has an invalid sector or cluster size",
                field="BPB_BytsPerSec",
                offset=FAT32_BOOT_SECTOR.offset_of("BPB_BytsPerSec"),
            )
        self.root_dir_sectors = (root_entries * DIR_ENTRY.size + self.bytes_per_sector - 1) // self.bytes_per_sector
        self.fat_start = reserved
        self.root_start = reserved + fats * fat_size
        self.data_start = self.root_start + self.root_dir_sectors
        clusters = (total - self.data_start) // self.spc
        self.fat_bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.root_cluster = bpb["BPB_RootClus"] if self.fat_bits == 32 else 0
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
        for i in range(0, len(raw) - DIR_ENTRY.size + 1, DIR_ENTRY.size):
            first_byte = raw[i]
            if first_byte == 0:  # no entries follow
                break
            if first_byte == 0xE5:  # a free (deleted) entry
                lfn = ""
                continue
            e = DIR_ENTRY.unpack(raw, i)
            if e["DIR_Attr"] & 0x3F == ATTR_LONG_NAME:
                ld = LDIR_ENTRY.unpack(raw, i)
                chars = ld["LDIR_Name1"] + ld["LDIR_Name2"] + ld["LDIR_Name3"]
                part = chars.decode("utf-16-le", "replace").split("\0")[0]
                lfn = part + lfn if not ld["LDIR_Ord"] & LAST_LONG_ENTRY else part
                continue
            if e["DIR_Attr"] & ATTR_VOLUME_ID:
                lfn = ""
                continue
            base, ext = e["DIR_Name"][:8].decode("latin-1").rstrip(), e["DIR_Name"][8:].decode("latin-1").rstrip()
            name = lfn or (base + ("." + ext if ext else ""))
            first = e["DIR_FstClusHI"] << 16 | e["DIR_FstClusLO"]
            out.append((name, e["DIR_Attr"], first, e["DIR_FileSize"]))
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
                return None if attr & ATTR_DIRECTORY else (self._chain(first, size) if size else b"")
            if not attr & ATTR_DIRECTORY:
                return None
            cluster = first
        return None

    def list_dir(self, path: str = "") -> list[str]:
        cluster = 0
        for part in [p for p in path.replace("\\", "/").split("/") if p]:
            match = next(
                (e for e in self._entries(cluster) if e[0].upper() == part.upper() and e[1] & ATTR_DIRECTORY), None
            )
            if match is None:
                return []
            cluster = match[2]
        return [e[0] for e in self._entries(cluster) if e[0] not in (".", "..")]


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
