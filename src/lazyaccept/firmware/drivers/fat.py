"""The firmware's FAT file system, read only (edk2 FatPkg's job: FAT12/16/32 per Microsoft's FAT specification,
layouts in spec/fat.py); sfs.py offers it to loaders as Simple File System."""

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

FAT_BLOCK = 4096  # the FAT is read in cached blocks this size (as FatPkg/EnhancedFatDxe/DiskCache.c does)
FAT_CACHE_BLOCKS = 256


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
    when the boot manager loads \\EFI\\BOOT\\BOOTX64.EFI. Files are read by cluster chain, only the bytes asked for
    (a 1 GiB initrd is never held whole); a hostile chain raises FatChainError."""

    def __init__(self, read: Callable[[int, int], bytes], volume_bytes: int | None = None):
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
        if not reserved or not fats or not fat_size:
            raise InputError(
                "FAT boot sector has no reserved sectors, FATs or FAT size",
                field="BPB_FATSz32" if not fat_size else "BPB_NumFATs" if not fats else "BPB_RsvdSecCnt",
                offset=FAT32_BOOT_SECTOR.offset_of("BPB_RsvdSecCnt"),
            )
        self.root_dir_sectors = (root_entries * DIR_ENTRY.size + self.bytes_per_sector - 1) // self.bytes_per_sector
        self.fat_start = reserved
        self.fat_sectors = fat_size
        self.root_start = reserved + fats * fat_size
        self.data_start = self.root_start + self.root_dir_sectors
        if total <= self.data_start:
            raise InputError(
                f"FAT volume of {total} sectors ends before its data region (sector {self.data_start})",
                field="BPB_TotSec32",
                offset=FAT32_BOOT_SECTOR.offset_of("BPB_TotSec32"),
            )
        if volume_bytes is not None and total * self.bytes_per_sector > volume_bytes:
            raise InputError(
                f"FAT volume of {total} sectors is larger than its partition ({volume_bytes} bytes): truncated",
                field="BPB_TotSec32",
                offset=FAT32_BOOT_SECTOR.offset_of("BPB_TotSec32"),
            )
        self.total_sectors = total
        self.clusters = (total - self.data_start) // self.spc
        self.fat_bits = 12 if self.clusters < 4085 else 16 if self.clusters < 65525 else 32
        if self.clusters * self.fat_bits // 8 + 8 > fat_size * self.bytes_per_sector:
            raise InputError(
                f"FAT of {fat_size} sectors is too small for {self.clusters} clusters: truncated FAT",
                field="BPB_FATSz32" if self.fat_bits == 32 else "BPB_FATSz16",
                offset=FAT32_BOOT_SECTOR.offset_of("BPB_FATSz32" if self.fat_bits == 32 else "BPB_FATSz16"),
            )
        self.root_cluster = bpb["BPB_RootClus"] if self.fat_bits == 32 else 0
        self.cluster_bytes = self.spc * self.bytes_per_sector
        ext = FAT32_BOOT_SECTOR if self.fat_bits == 32 else FAT16_BOOT_SECTOR
        fields = ext.unpack(sector)
        self.boot_label = fields["BS_VolLab"].decode("latin-1").rstrip() if fields["BS_BootSig"] == 0x29 else ""
        self._fat_cache: dict[int, bytes] = {}
        self._runs: dict[int, list[tuple[int, int, int]]] = {}  # first cluster -> [(file offset, cluster, count)]

    # ---------------------------------------------------------------------------------------------- the FAT
    def _fat_bytes(self, offset: int, length: int) -> bytes:
        out = b""
        while length > 0:
            block, within = divmod(offset, FAT_BLOCK)
            data = self._fat_cache.get(block)
            if data is None:
                if len(self._fat_cache) >= FAT_CACHE_BLOCKS:
                    self._fat_cache.clear()
                data = self._fat_cache[block] = self.read(self.fat_start * self.bytes_per_sector + block * FAT_BLOCK,
                                                          FAT_BLOCK)
            n = min(length, FAT_BLOCK - within)
            out += data[within : within + n]
            offset, length = offset + n, length - n
        return out

    def _next(self, cluster: int) -> int:
        if self.fat_bits == 32:
            return int.from_bytes(self._fat_bytes(4 * cluster, 4), "little") & 0x0FFFFFFF
        if self.fat_bits == 16:
            return int.from_bytes(self._fat_bytes(2 * cluster, 2), "little")
        raw = int.from_bytes(self._fat_bytes(cluster * 3 // 2, 2), "little")
        return raw >> 4 if cluster & 1 else raw & 0xFFF

    def _eoc(self, cluster: int) -> bool:
        return cluster >= {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[self.fat_bits]

    def _fat_offset(self, cluster: int) -> int:
        return self.fat_start * self.bytes_per_sector + cluster * self.fat_bits // 8

    def _check_cluster(self, cluster: int, what: str) -> None:
        if not 2 <= cluster < self.clusters + 2:
            kind = "a free cluster (0)" if cluster == 0 else f"cluster {cluster:#x}, not one of its {self.clusters}"
            raise FatChainError(f"FAT cluster chain of {what} runs into {kind}", field="FAT",
                                offset=self._fat_offset(cluster) if cluster < self.clusters + 2 else None)

    def cluster_offset(self, cluster: int) -> int:
        return (self.data_start + (cluster - 2) * self.spc) * self.bytes_per_sector

    def runs(self, first: int, size: int | None, what: str = "a file") -> list[tuple[int, int, int]]:
        """The chain from `first` as runs of contiguous clusters (file offset, first cluster, count), covering
        `size` bytes (a directory: up to end of chain). Cached per first cluster."""
        cached = self._runs.get(first)
        if cached is not None:
            return cached
        limit = self.clusters if size is None else -(-size // self.cluster_bytes)
        if limit > self.clusters:
            raise FatChainError(f"{what} of {size} bytes is larger than the volume's {self.clusters} clusters",
                                field="DIR_FileSize")
        out: list[tuple[int, int, int]] = []
        cluster, seen = first, 0
        visited = bytearray((self.clusters + 2 + 7) // 8)  # a cluster met twice is a loop
        while seen < limit:
            self._check_cluster(cluster, what)
            run = 1
            nxt = self._next(cluster)
            while nxt == cluster + run and seen + run < limit:
                run += 1
                nxt = self._next(nxt)
            for c in range(cluster, cluster + run):
                if visited[c >> 3] & 1 << (c & 7):
                    raise FatChainError(f"FAT cluster chain of {what} comes back to cluster {c} (a loop)",
                                        field="FAT", offset=self._fat_offset(c))
                visited[c >> 3] |= 1 << (c & 7)
            out.append((seen * self.cluster_bytes, cluster, run))
            seen += run
            if self._eoc(nxt):
                break
            if seen >= limit and size is not None:
                break
            cluster = nxt
            if size is None and seen >= self.clusters:  # more clusters than the volume has: a loop
                raise FatChainError(f"FAT cluster chain of {what} does not end (a loop)", field="FAT",
                                    offset=self._fat_offset(cluster))
        if size is not None and seen < limit:
            raise FatChainError(
                f"FAT cluster chain of {what} ends after {seen} clusters, its size {size} needs {limit}",
                field="FAT", offset=self._fat_offset(out[-1][1] + out[-1][2] - 1) if out else None,
            )
        if len(self._runs) > 4096:
            self._runs.clear()
        self._runs[first] = out
        return out

    def read_range(self, first: int, size: int, offset: int, length: int, what: str = "a file") -> bytes:
        """Bytes [offset, offset + length) of a file of `size` bytes starting at cluster `first`, read only
        where they lie on the volume."""
        length = max(0, min(length, size - offset))
        if length == 0 or first == 0:
            return bytes(length) if first == 0 and length else b""
        runs = self.runs(first, size, what)
        k = bisect.bisect_right([r[0] for r in runs], offset) - 1
        parts = []
        while length > 0 and k < len(runs):
            start, cluster, count = runs[k]
            within = offset - start
            n = min(length, count * self.cluster_bytes - within)
            parts.append(self.read(self.cluster_offset(cluster) + within, n))
            offset, length, k = offset + n, length - n, k + 1
        return b"".join(parts)

    def _chain(self, first: int, size: int | None = None) -> bytes:
        if size is not None:
            return self.read_range(first, size, 0, size)
        return b"".join(self.read(self.cluster_offset(c), n * self.cluster_bytes)
                        for _, c, n in self.runs(first, None, "a directory"))

    # ------------------------------------------------------------------------------------------ directories
    def entries(self, cluster: int) -> list[FatEntry]:
        """The entries of a directory ("." and ".." included); cluster 0 is the root."""
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
            if e["DIR_NTRes"] & 0x08:  # lower-case base and extension flags, as Windows NT writes them
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
        if self.fat_bits != 32:
            raw = self.read(self.root_start * self.bytes_per_sector, self.root_dir_sectors * self.bytes_per_sector)
        else:
            raw = self._chain(self.root_cluster)
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

    def list_dir(self, path: str = "") -> list[str]:
        e = self.lookup(path)
        if e is None or not e.is_dir:
            return []
        return [x.name for x in self.entries(e.first_cluster) if x.name not in (".", "..")]
