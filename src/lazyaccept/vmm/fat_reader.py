"""The firmware's FAT file system, read only (edk2 FatPkg's job: FAT12/16/32 per Microsoft's FAT specification,
layouts in spec/fat.py); sfs.py offers it to loaders as Simple File System, vmm/disk_image.py checks a user's
image with it."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from lazyaccept.errors import InputError
from lazyaccept.spec.fat import (
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_VOLUME_ID,
    BOOT_SIGNATURE,
    BOOT_SIGNATURE_OFFSET,
    DIR_ENTRY,
    FAT16_BOOT_SECTOR,
    FAT32_BOOT_SECTOR,
    LAST_LONG_ENTRY,
    LDIR_ENTRY,
)

MAX_DEPTH = 32  # folders deeper than this are not walked (a loop of folders would never end)
FAT_CACHE_SECTORS = 256
MAX_DIR_BYTES = 65536 * DIR_ENTRY.size  # the FAT specification's limit of a folder


class FatChainError(InputError):
    """A cluster chain that loops, runs into a free, bad or out-of-range cluster, or ends before the file does:
    FatPkg's FatOFilePosition/FatFreeClusters answer EFI_VOLUME_CORRUPTED (FatPkg/EnhancedFatDxe/FileSpace.c)."""


@dataclass(frozen=True)
class FatEntry:
    """One 8.3 directory entry with its long name (if any)."""

    name: str
    attr: int
    first_cluster: int
    size: int
    created: tuple[int, int] = (0, 0)  # (DIR_CrtDate, DIR_CrtTime)
    accessed: int = 0  # DIR_LstAccDate
    written: tuple[int, int] = (0, 0)  # (DIR_WrtDate, DIR_WrtTime)

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIRECTORY)


class FatReader:
    """Reads files of a FAT12/16/32 volume through `read(offset, length)`: what the firmware's FAT driver does
    when the boot manager loads \\EFI\\BOOT\\BOOTX64.EFI. A damaged volume (a BPB that does not fit its partition,
    a FAT too small for the clusters, a cluster chain that loops, leaves the volume or ends early) is an InputError
    naming the structure and its offset; `base` is the volume's offset in the disk, for those messages, and `size`
    its partition's size when known. Files are read by cluster chain, only the bytes asked for (a 1 GiB initrd is
    never held whole)."""

    def __init__(self, read: Callable[[int, int], bytes], size: int | None = None, *, base: int = 0):
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
        self.total_sectors = total
        ext = FAT32_BOOT_SECTOR if self.fat_bits == 32 else FAT16_BOOT_SECTOR
        fields = ext.unpack(sector)
        self.boot_label = fields["BS_VolLab"].decode("latin-1").rstrip() if fields["BS_BootSig"] == 0x29 else ""
        self._fat_cache: dict[int, bytes] = {}
        self._runs: dict[tuple[int, int | None], list[tuple[int, int]]] = {}

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
        chain. A loop, a cluster outside the volume, or a chain ending before `size` is a FatChainError. Cached."""
        cached = self._runs.get((first, size))
        if cached is not None:
            return cached
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
                raise FatChainError(f"cluster chain from cluster {first} ends after {count} clusters{need} (FAT entry "
                                 f"{cluster:#x})", field="FAT entry", offset=where(previous))
            if not 2 <= cluster < self.clusters + 2:
                raise FatChainError(f"cluster chain from cluster {first} leads to cluster {cluster}, outside the "
                                    f"volume's {self.clusters}", field="FAT entry", offset=where(previous))
            if cluster in seen:
                raise FatChainError(f"loop in a cluster chain: cluster {cluster} comes back after {count} clusters "
                                 f"from cluster {first}", field="FAT entry", offset=where(previous))
            seen.add(cluster)
            if out and out[-1][0] + out[-1][1] == cluster:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((cluster, 1))
            count += 1
            previous, cluster = cluster, self._next(cluster)
        if len(self._runs) > 4096:
            self._runs.clear()
        self._runs[(first, size)] = out
        return out

    def cluster_offset(self, cluster: int) -> int:
        return (self.data_start + (cluster - 2) * self.spc) * self.bytes_per_sector

    def read_range(self, first: int, size: int, offset: int, length: int, what: str = "a file") -> bytes:
        """Bytes [offset, offset + length) of a file of `size` bytes starting at cluster `first`, read only
        where they lie on the volume."""
        length = max(0, min(length, size - offset))
        if length == 0:
            return b""
        runs = self.runs(first, size)  # cluster 0 with a size is a chain that ends at once: FatChainError
        starts, at = [], 0
        for _cluster, count in runs:
            starts.append(at)
            at += count * self.cluster_bytes
        k = bisect.bisect_right(starts, offset) - 1
        parts = []
        while length > 0 and k < len(runs):
            cluster, count = runs[k]
            within = offset - starts[k]
            n = min(length, count * self.cluster_bytes - within)
            parts.append(self._read(self.cluster_offset(cluster) + within, n, "FAT data cluster"))
            offset, length, k = offset + n, length - n, k + 1
        return b"".join(parts)

    def _chain(self, first: int, size: int | None = None) -> bytes:
        if size is not None:
            return self.read_range(first, size, 0, size)
        return b"".join(self._read(self.cluster_offset(c), n * self.cluster_bytes, "FAT data cluster")
                        for c, n in self.runs(first))

    # ------------------------------------------------------------------------------------------ directories
    def _dir_bytes(self, cluster: int) -> bytes:
        if cluster == 0 and self.fat_bits != 32:
            return self._read(self.root_start * self.bytes_per_sector, self.root_dir_sectors * self.bytes_per_sector,
                              "FAT root folder")
        first = cluster or self.root_cluster
        clusters = sum(n for _, n in self.runs(first))
        if clusters * self.cluster_bytes > MAX_DIR_BYTES:
            raise FatChainError(f"folder at cluster {first} is {clusters} clusters long, beyond FAT's 65536 entries",
                                field="FAT entry", offset=self.base + self._fat_entry_offset(first))
        return self._chain(first)

    def entries(self, cluster: int) -> list[FatEntry]:
        """The entries of a directory ("." and ".." included); cluster 0 is the root."""
        raw = self._dir_bytes(cluster)
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
            if base.startswith("\x05"):
                base = "\xe5" + base[1:]
            name = lfn or (base + ("." + ext if ext else ""))
            first = e["DIR_FstClusHI"] << 16 | e["DIR_FstClusLO"] if self.fat_bits == 32 else e["DIR_FstClusLO"]
            out.append(FatEntry(name, e["DIR_Attr"], first, e["DIR_FileSize"], (e["DIR_CrtDate"], e["DIR_CrtTime"]),
                                e["DIR_LstAccDate"], (e["DIR_WrtDate"], e["DIR_WrtTime"])))
            lfn = ""
        return out

    def volume_label(self) -> str:
        """The root's volume-label entry (what FatPkg reports), else the boot sector's BS_VolLab."""
        raw = self._dir_bytes(0)
        for i in range(0, len(raw) - DIR_ENTRY.size + 1, DIR_ENTRY.size):
            if raw[i] == 0:
                break
            attr = raw[i + 11]
            if raw[i] != 0xE5 and attr & 0x3F != ATTR_LONG_NAME and attr & ATTR_VOLUME_ID:
                return raw[i : i + 11].decode("latin-1").rstrip()
        return "" if self.boot_label == "NO NAME" else self.boot_label

    def lookup(self, path: str) -> FatEntry | None:
        """The entry of a path (separators '\\' or '/', any case); the root is a FatEntry of cluster 0."""
        node = FatEntry("\\", ATTR_DIRECTORY, 0, 0)
        for part in [p for p in path.replace("\\", "/").split("/") if p]:
            if not node.is_dir:
                return None
            match = next((e for e in self.entries(node.first_cluster) if e.name.upper() == part.upper()), None)
            if match is None:
                return None
            node = match
        return node

    def read_file(self, path: str) -> bytes | None:
        """A file's bytes by its path (separators '\\' or '/', any case), or None."""
        e = self.lookup(path)
        if e is None or e.is_dir or not [p for p in path.replace("\\", "/").split("/") if p]:
            return None
        return self.read_range(e.first_cluster, e.size, 0, e.size, path) if e.size else b""

    def walk(self) -> list[tuple[str, int, int]]:
        """(path, first cluster, size) of every file, folders walked to MAX_DEPTH; each folder's chain checked."""
        out: list[tuple[str, int, int]] = []
        seen: set[int] = set()

        def visit(cluster: int, prefix: str, depth: int) -> None:
            if depth > MAX_DEPTH or cluster in seen:
                return
            seen.add(cluster)
            for e in self.entries(cluster):
                if e.name in (".", ".."):
                    continue
                if e.is_dir:
                    if e.first_cluster:  # 0 would be the root again
                        visit(e.first_cluster, f"{prefix}{e.name}/", depth + 1)
                else:
                    out.append((prefix + e.name, e.first_cluster, e.size))

        visit(0, "", 0)
        return out

    def list_dir(self, path: str = "") -> list[str]:
        e = self.lookup(path)
        if e is None or not e.is_dir:
            return []
        return [x.name for x in self.entries(e.first_cluster) if x.name not in (".", "..")]
