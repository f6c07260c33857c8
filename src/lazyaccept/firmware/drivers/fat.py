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


MAX_DEPTH = 32  # folders deeper than this are not walked (a loop of folders would never end)
FAT_CACHE_SECTORS = 256
MAX_DIR_BYTES = 65536 * DIR_ENTRY.size  # the FAT specification's limit of a folder


class FatReader:
    """Reads files of a FAT12/16/32 volume through `read(offset, length)`: what the firmware's FAT driver does
    when the boot manager loads \\EFI\\BOOT\\BOOTX64.EFI. A damaged volume (a BPB that does not fit its partition,
    a FAT too small for the clusters, a cluster chain that loops, leaves the volume or ends early) is an InputError
    naming the structure and its offset; `base` is the volume's offset in the disk, for those messages, and `size`
    its partition's size when known."""

    def __init__(self, read: Callable[[int, int], bytes], *, base: int = 0, size: int | None = None):
        self.read = read
        self.base = base
        sector = self._read(0, 512, "FAT boot sector")
        if sector[BOOT_SIGNATURE_OFFSET : BOOT_SIGNATURE_OFFSET + 2] != BOOT_SIGNATURE:
            raise InputError(
                "no FAT boot sector (signature 0x55AA missing)", field="Signature", offset=base + BOOT_SIGNATURE_OFFSET
            )
        bpb = FAT32_BOOT_SECTOR.unpack(sector)  # its first fields are the FAT12/16 BPB's
        self.bytes_per_sector = bpb["BPB_BytsPerSec"]
        self.spc = bpb["BPB_SecPerClus"]
        reserved = bpb["BPB_RsvdSecCnt"]
        fats = bpb["BPB_NumFATs"]
        root_entries = bpb["BPB_RootEntCnt"]
        total = bpb["BPB_TotSec16"] or bpb["BPB_TotSec32"]
        fat_field = "BPB_FATSz16" if bpb["BPB_FATSz16"] else "BPB_FATSz32"
        fat_size = bpb[fat_field]

        def bad(message: str, name: str) -> InputError:
            return InputError(message, field=name, offset=base + FAT32_BOOT_SECTOR.offset_of(name))

        if self.bytes_per_sector not in (512, 1024, 2048, 4096) or not self.spc or self.spc & (self.spc - 1):
            raise bad("FAT boot sector has an invalid sector or cluster size", "BPB_BytsPerSec")
        if not reserved or not fats:
            raise bad("FAT boot sector has no reserved sectors or no FAT", "BPB_RsvdSecCnt" if not reserved else
                      "BPB_NumFATs")
        if not fat_size:
            raise bad("FAT boot sector gives the FAT a size of 0 sectors", fat_field)
        self.root_dir_sectors = (root_entries * DIR_ENTRY.size + self.bytes_per_sector - 1) // self.bytes_per_sector
        self.fat_start = reserved
        self.fat_sectors = fat_size
        self.root_start = reserved + fats * fat_size
        self.data_start = self.root_start + self.root_dir_sectors
        if size is not None and self.root_start * self.bytes_per_sector > size:
            raise bad(f"truncated FAT: the FATs end at byte {self.root_start * self.bytes_per_sector} of a "
                      f"{size}-byte partition", fat_field)
        if total <= self.data_start:
            raise bad(f"FAT volume of {total} sectors ends before its data region (sector {self.data_start})",
                      "BPB_TotSec16" if bpb["BPB_TotSec16"] else "BPB_TotSec32")
        if size is not None and total * self.bytes_per_sector > size:
            raise bad(f"FAT volume of {total * self.bytes_per_sector} bytes is larger than its {size}-byte partition",
                      "BPB_TotSec16" if bpb["BPB_TotSec16"] else "BPB_TotSec32")
        self.clusters = (total - self.data_start) // self.spc
        # FAT32 when BPB_FATSz16 is 0, else FAT12/16 by the cluster count: how edk2's FatPkg (Init.c), GRUB and Linux
        # decide, so a FAT32 volume mkfs.fat made with fewer than 65525 clusters (it warns, and writes it) reads.
        if not bpb["BPB_FATSz16"]:
            self.fat_bits = 32
        else:
            self.fat_bits = 12 if self.clusters < 4085 else 16
        if fat_size * self.bytes_per_sector * 8 < (self.clusters + 2) * self.fat_bits:
            raise bad(f"truncated FAT: its {fat_size * self.bytes_per_sector} bytes cannot hold the entries of "
                      f"{self.clusters} clusters", fat_field)
        self.root_cluster = bpb["BPB_RootClus"] if self.fat_bits == 32 else 0
        if self.fat_bits == 32 and not 2 <= self.root_cluster < self.clusters + 2:
            raise bad(f"FAT32 root folder cluster {self.root_cluster} is outside the volume", "BPB_RootClus")
        self.cluster_bytes = self.spc * self.bytes_per_sector
        self._fat_cache: dict[int, bytes] = {}

    def _read(self, offset: int, length: int, what: str) -> bytes:
        data = self.read(offset, length)
        if len(data) < length:
            raise InputError(f"{what} runs past the end of the image ({len(data)} of {length} bytes)", field=what,
                             offset=self.base + offset)
        return data

    def _fat_entry_offset(self, cluster: int) -> int:
        """Byte offset in the volume of a cluster's FAT entry."""
        return self.fat_start * self.bytes_per_sector + cluster * self.fat_bits // 8

    def _next(self, cluster: int) -> int:
        at = self._fat_entry_offset(cluster)
        index, within = divmod(at, self.bytes_per_sector)
        sector = self._fat_cache.get(index)
        if sector is None:
            # one sector and the next: a FAT12 entry may straddle them
            sector = self._read(index * self.bytes_per_sector, 2 * self.bytes_per_sector, "FAT")
            if len(self._fat_cache) >= FAT_CACHE_SECTORS:
                self._fat_cache.clear()
            self._fat_cache[index] = sector
        if self.fat_bits == 32:
            return int.from_bytes(sector[within : within + 4], "little") & 0x0FFFFFFF
        raw = int.from_bytes(sector[within : within + 2], "little")
        if self.fat_bits == 16:
            return raw
        return raw >> 4 if cluster & 1 else raw & 0xFFF

    def _eoc(self, cluster: int) -> bool:
        return cluster >= {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.fat_bits]

    def runs(self, first: int, size: int | None = None) -> list[tuple[int, int]]:
        """The (first cluster, count) runs of a chain, from the FAT alone; `size` bytes if given, else to its end of
        chain. A loop, a cluster outside the volume, or a chain ending before `size` is an InputError."""
        out: list[tuple[int, int]] = []
        limit = None if size is None else -(-size // self.cluster_bytes)
        seen: set[int] = set()
        cluster, count, previous = first, 0, None

        def where(prev: int | None) -> int:
            return self.base + (self._fat_entry_offset(prev) if prev is not None else 0)

        while limit is None or count < limit:
            if self._eoc(cluster) or cluster in (0, 1):
                if limit is None and count and self._eoc(cluster):
                    break  # a folder's chain, ended where it should
                need = f" of the {limit} its {size}-byte file needs" if limit else ""
                raise InputError(f"cluster chain from cluster {first} ends after {count} clusters{need} (FAT entry "
                                 f"{cluster:#x})", field="FAT entry", offset=where(previous))
            if not 2 <= cluster < self.clusters + 2:
                raise InputError(f"cluster chain from cluster {first} leads to cluster {cluster}, outside the volume's "
                                 f"{self.clusters}", field="FAT entry", offset=where(previous))
            if cluster in seen:
                raise InputError(f"loop in a cluster chain: cluster {cluster} comes back after {count} clusters "
                                 f"from cluster {first}", field="FAT entry", offset=where(previous))
            seen.add(cluster)
            if out and out[-1][0] + out[-1][1] == cluster:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((cluster, 1))
            count += 1
            previous, cluster = cluster, self._next(cluster)
        return out

    def _chain(self, first: int, size: int | None = None) -> bytes:
        out = bytearray()
        for cluster, count in self.runs(first, size):
            off = (self.data_start + (cluster - 2) * self.spc) * self.bytes_per_sector
            out += self._read(off, count * self.cluster_bytes, "FAT data cluster")
        return bytes(out if size is None else out[:size])

    def _entries(self, cluster: int) -> list[tuple[str, int, int, int]]:
        """(name, attributes, first cluster, size) of a directory; cluster 0 is the root."""
        if cluster == 0 and self.fat_bits != 32:
            raw = self._read(self.root_start * self.bytes_per_sector, self.root_dir_sectors * self.bytes_per_sector,
                             "FAT root folder")
        else:
            first = cluster or self.root_cluster
            clusters = sum(n for _, n in self.runs(first))
            if clusters * self.cluster_bytes > MAX_DIR_BYTES:
                raise InputError(f"folder at cluster {first} is {clusters} clusters long, beyond FAT's 65536 entries",
                                 field="FAT entry", offset=self.base + self._fat_entry_offset(first))
            raw = self._chain(first)
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
            # Windows NT's case bits, which mtools and Linux write for a lower-case 8.3 name instead of a long name
            if e["DIR_NTRes"] & 0x08:
                base = base.lower()
            if e["DIR_NTRes"] & 0x10:
                ext = ext.lower()
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

    def walk(self) -> list[tuple[str, int, int]]:
        """(path, first cluster, size) of every file, folders walked to MAX_DEPTH; each folder's chain checked."""
        out: list[tuple[str, int, int]] = []
        seen: set[int] = set()

        def visit(cluster: int, prefix: str, depth: int) -> None:
            if depth > MAX_DEPTH or cluster in seen:
                return
            seen.add(cluster)
            for name, attr, first, size in self._entries(cluster):
                if name in (".", ".."):
                    continue
                if attr & ATTR_DIRECTORY:
                    if first:  # 0 would be the root again
                        visit(first, f"{prefix}{name}/", depth + 1)
                else:
                    out.append((prefix + name, first, size))

        visit(0, "", 0)
        return out

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
