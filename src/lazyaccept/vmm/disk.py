"""A GPT disk with a FAT EFI system partition, built from a folder in pure Python and never held whole.

The VMM side of a disk (what QEMU's -drive file=... would be): a layout computed once from the files, whose
bytes are produced on demand. A FAT sector is computed from the cluster runs when read, a data cluster is read
from the file it belongs to (a host file through pread, or a synthetic source), so a 1 GiB initrd costs no host
memory and no disk space. Writes go to a sparse overlay. `write_image` writes the image as a sparse file for
other tools.

Layouts follow the UEFI specification (5.2 MBR with the protective 0xEE entry, 5.3 GPT header and entries) and
Microsoft's FAT specification (BPB, FSInfo, 32-byte directory entries with long-name entries, the cluster count
that decides FAT16 versus FAT32).
"""

from __future__ import annotations

import bisect
import os
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lazyaccept.errors import InputError
from lazyaccept.files import atomic_open
from lazyaccept.spec.fat import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    ATTR_VOLUME_ID,
    BOOT_SIGNATURE,
    BOOT_SIGNATURE_OFFSET,
    BS_BOOTSIG_EXTENDED,
    DIR_ENTRY,
    FAT16_BOOT_SECTOR,
    FAT32_BOOT_SECTOR,
    FSI_LEAD_SIG,
    FSI_STRUC_SIG,
    FSI_TRAIL_SIG,
    FSINFO,
    LAST_LONG_ENTRY,
    LDIR_CHARS,
    LDIR_ENTRY,
)
from lazyaccept.spec.fat import ATTR_LONG_NAME as ATTR_LFN
from lazyaccept.spec.gpt import (
    EFI_PARTITION_ENTRY,
    EFI_PARTITION_TABLE_HEADER,
    GPT_HEADER_SIZE,
    GPT_REVISION,
    GPT_SIGNATURE,
)
from lazyaccept.spec.guids import PART_TYPE_SYSTEM_PART
from lazyaccept.units import MiB, align_up

SECTOR = 512
ESP_TYPE = PART_TYPE_SYSTEM_PART  # the EFI System Partition
LINUX_DATA_TYPE = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRY_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR
FIRST_PARTITION_LBA = 2048  # 1 MiB alignment, as every partitioning tool does today
FAT32_MIN_CLUSTERS = 65525  # Microsoft: fewer clusters is FAT16 whatever the BPB says
FAT16_MIN_CLUSTERS = 4085
CLUSTER_MARGIN = 16  # stay clear of the FAT16/FAT32 boundary, as mkfs.fat does
FIXED_DATE = (2026 - 1980) << 9 | 1 << 5 | 1  # 2026-01-01: images are reproducible


class Source(Protocol):
    """File contents produced on demand."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass
class BytesSource:
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass
class HostFile:
    """A file of the host folder, read with pread when the guest reads it (a sparse 1 GiB file costs nothing)."""

    path: Path
    size: int = 0
    _fd: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.size = self.path.stat().st_size

    def read(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, length, offset)
        return data + bytes(length - len(data))  # a file that shrank under us reads as zeros, not short

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def sources_from_folder(folder: Path) -> dict[str, Source]:
    """Every regular file under folder, by its path relative to it with '/' separators."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    out: dict[str, Source] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[path.relative_to(folder).as_posix()] = HostFile(path)
    return out


WRITE_CHUNK = 8 * MiB


def write_sources_to_folder(folder: Path, files: dict[str, Source]) -> list[Path]:
    """The inverse of sources_from_folder: each file written under folder, sparse where a chunk is all zeros (a 1
    GiB synthetic initrd, a UKI's hole), each whole or not at all, in the given order."""
    written = []
    for name, source in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            for at in range(0, source.size, WRITE_CHUNK):
                chunk = source.read(at, min(WRITE_CHUNK, source.size - at))
                if chunk.count(0) == len(chunk):
                    f.seek(at + len(chunk))
                else:
                    f.seek(at)
                    f.write(chunk)
            f.truncate(source.size)
        written.append(path)
    return written


# ================================================================================================= FAT
@dataclass
class _Node:
    name: str
    source: Source | None = None  # None: a directory
    children: dict[str, _Node] = field(default_factory=dict)
    first_cluster: int = 0
    clusters: int = 0
    entries: bytes = b""  # a directory's contents

    @property
    def is_dir(self) -> bool:
        return self.source is None


def _short_names(names: Iterable[str]) -> dict[str, bytes]:
    """8.3 names for a directory's entries: the upper-cased name when it is a valid 8.3 name, else a numeric
    tail (BASIS~N.EXT) as Windows and Linux generate; a long-name entry carries the real name in every case."""
    out: dict[str, bytes] = {}
    used: set[bytes] = set()
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")
    for name in names:
        stem, dot, ext = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
        base = "".join(c for c in stem.upper() if c in allowed)
        extension = "".join(c for c in ext.upper() if c in allowed)[:3]
        plain = f"{base:<8}{extension:<3}".encode("ascii")
        if 0 < len(base) <= 8 and base == stem.upper() and extension == ext.upper() and plain not in used:
            short = plain
        else:
            n = 1
            while True:
                tail = f"~{n}"
                short = f"{(base or 'FILE')[: 8 - len(tail)]}{tail:<}".ljust(8).encode("ascii")
                short += f"{extension:<3}".encode("ascii")
                if short not in used:
                    break
                n += 1
        used.add(short)
        out[name] = short
    return out


def _lfn_checksum(short: bytes) -> int:
    s = 0
    for b in short:
        s = (((s & 1) << 7) + (s >> 1) + b) & 0xFF
    return s


def _dir_entry(short: bytes, attr: int, cluster: int, size: int) -> bytes:
    return DIR_ENTRY.pack(
        DIR_Name=short,
        DIR_Attr=attr,
        DIR_CrtDate=FIXED_DATE,  # times stay 0 (midnight)
        DIR_LstAccDate=FIXED_DATE,
        DIR_FstClusHI=cluster >> 16,
        DIR_WrtDate=FIXED_DATE,
        DIR_FstClusLO=cluster & 0xFFFF,
        DIR_FileSize=size,
    )


def _lfn_entries(name: str, short: bytes) -> bytes:
    units = list(name.encode("utf-16-le"))
    chars = [units[i] | units[i + 1] << 8 for i in range(0, len(units), 2)]
    if len(chars) > 255:
        raise InputError(f"file name {name!r} is longer than FAT's 255 characters")
    chars.append(0)
    while len(chars) % LDIR_CHARS:
        chars.append(0xFFFF)
    checksum = _lfn_checksum(short)
    pieces = [chars[i : i + LDIR_CHARS] for i in range(0, len(chars), LDIR_CHARS)]
    out = b""
    for seq in range(len(pieces), 0, -1):
        c = pieces[seq - 1]
        u = b"".join(x.to_bytes(2, "little") for x in c)
        out += LDIR_ENTRY.pack(
            LDIR_Ord=seq | (LAST_LONG_ENTRY if seq == len(pieces) else 0),
            LDIR_Name1=u[0:10],
            LDIR_Attr=ATTR_LFN,
            LDIR_Chksum=checksum,
            LDIR_Name2=u[10:22],
            LDIR_Name3=u[22:26],
        )
    return out


class FatVolume:
    """A FAT16 or FAT32 volume holding `files` ({'EFI/BOOT/BOOTX64.EFI': source, ...}), each file and directory
    in one contiguous cluster run; free clusters read as zeros."""

    def __init__(
        self,
        files: dict[str, Source],
        *,
        fat_bits: int = 32,
        cluster_bytes: int = 32 * 1024,
        free_bytes: int = 16 * MiB,
        label: str = "ESP",
        serial: int = 0x1A2C_CE55,
    ):
        if fat_bits not in (16, 32):
            raise InputError(f"FAT{fat_bits} is not supported: use 16 or 32")
        if cluster_bytes < SECTOR or cluster_bytes > 64 * 1024 or cluster_bytes & (cluster_bytes - 1):
            raise InputError(f"cluster size {cluster_bytes} is not a power of two from 512 to 65536")
        self.fat_bits = fat_bits
        self.cluster_bytes = cluster_bytes
        self.spc = cluster_bytes // SECTOR
        self.label = label
        self.serial = serial
        self.root = _Node("")
        for path, source in files.items():
            self._add(path, source)
        self.root_entries = 512 if fat_bits == 16 else 0
        self.root_dir_sectors = self.root_entries * 32 // SECTOR
        self.reserved = 32 if fat_bits == 32 else 1
        self.fats = 2
        self._layout(free_bytes)

    # ----------------------------------------------------------------------------------------- layout
    def _add(self, path: str, source: Source) -> None:
        parts = [p for p in path.replace("\\", "/").split("/") if p]
        if not parts:
            raise InputError(f"empty file path {path!r}")
        node = self.root
        for part in parts[:-1]:
            key = part.upper()
            child = node.children.setdefault(key, _Node(part))
            if not child.is_dir:
                raise InputError(f"{path}: {part} is a file and a folder")
            node = child
        key = parts[-1].upper()
        if key in node.children:
            raise InputError(f"{path}: two files with the same name (FAT names ignore case)")
        node.children[key] = _Node(parts[-1], source)

    def _walk_dirs(self, node: _Node) -> Iterable[_Node]:
        yield node
        for child in node.children.values():
            if child.is_dir:
                yield from self._walk_dirs(child)

    def _dir_size(self, node: _Node, is_root: bool) -> int:
        shorts = _short_names(c.name for c in node.children.values())
        n = 0 if is_root else 2  # "." and ".."
        n += 1 if is_root else 0  # the volume label
        for child in node.children.values():
            n += 1 + len(_lfn_entries(child.name, shorts[child.name])) // 32
        return 32 * (n + 1)  # and a free entry that ends the listing

    def _layout(self, free_bytes: int) -> None:
        dirs = list(self._walk_dirs(self.root))
        files = [c for d in dirs for c in d.children.values() if not c.is_dir]
        next_cluster = 2
        runs: list[tuple[int, int, _Node]] = []
        for d in dirs:
            size = self._dir_size(d, d is self.root)
            if d is self.root and self.fat_bits == 16:
                if size > self.root_entries * 32:
                    raise InputError(f"FAT16 root folder holds at most {self.root_entries} entries")
                continue
            d.clusters = -(-size // self.cluster_bytes)
            d.first_cluster = next_cluster
            next_cluster += d.clusters
            runs.append((d.first_cluster, d.clusters, d))
        for f in files:
            assert f.source is not None
            f.clusters = -(-f.source.size // self.cluster_bytes)
            f.first_cluster = next_cluster if f.clusters else 0
            next_cluster += f.clusters
            if f.clusters:
                runs.append((f.first_cluster, f.clusters, f))
        used = next_cluster - 2
        clusters = used + -(-free_bytes // self.cluster_bytes)
        low, high = (FAT32_MIN_CLUSTERS, 0x0FFFFFF5) if self.fat_bits == 32 else (FAT16_MIN_CLUSTERS, 65524)
        clusters = max(clusters, low + CLUSTER_MARGIN)
        if clusters > high - CLUSTER_MARGIN:
            raise InputError(
                f"{used * self.cluster_bytes} bytes need {clusters} clusters of {self.cluster_bytes} bytes: too many "
                f"for FAT{self.fat_bits} (use FAT32 or a larger cluster)"
            )
        self.clusters = clusters
        self.used_clusters = used
        self.fat_sectors = -(-(clusters + 2) * (self.fat_bits // 8) // SECTOR)
        # The data region starts on a cluster boundary, as mkfs.fat aligns it by default (extra reserved sectors):
        # on a 1 MiB-aligned partition no cluster then shares a 32 KiB block of GRUB's disk cache with another.
        self.reserved += -(self.reserved + self.fats * self.fat_sectors + self.root_dir_sectors) % self.spc
        self.fat_start = self.reserved
        self.root_dir_start = self.fat_start + self.fats * self.fat_sectors
        self.data_start = self.root_dir_start + self.root_dir_sectors
        self.total_sectors = self.data_start + clusters * self.spc
        self.size = self.total_sectors * SECTOR
        self._runs = sorted(runs, key=lambda r: r[0])
        self._run_starts = [r[0] for r in self._runs]
        for d in dirs:
            d.entries = self._dir_bytes(d, dirs)
        self._fat_cache: dict[int, bytes] = {}

    def _dir_bytes(self, node: _Node, dirs: list[_Node]) -> bytes:
        is_root = node is self.root
        out = bytearray()
        if is_root:
            out += _dir_entry(f"{self.label.upper()[:11]:<11}".encode("ascii"), ATTR_VOLUME_ID, 0, 0)
        else:
            parent = next(d for d in dirs if any(c is node for c in d.children.values()))
            # ".." of a first-level folder names the root as cluster 0, on FAT32 too (FAT spec)
            parent_cluster = 0 if parent is self.root else parent.first_cluster
            out += _dir_entry(b".          ", ATTR_DIRECTORY, node.first_cluster, 0)
            out += _dir_entry(b"..         ", ATTR_DIRECTORY, parent_cluster, 0)
        shorts = _short_names(c.name for c in node.children.values())
        for child in node.children.values():
            short = shorts[child.name]
            out += _lfn_entries(child.name, short)
            if child.is_dir:
                out += _dir_entry(short, ATTR_DIRECTORY, child.first_cluster, 0)
            else:
                assert child.source is not None
                if child.source.size >= 1 << 32:
                    raise InputError(f"{child.name}: {child.source.size} bytes is beyond FAT's 4 GiB file limit")
                out += _dir_entry(short, ATTR_ARCHIVE, child.first_cluster, child.source.size)
        return bytes(out)

    # ----------------------------------------------------------------------------------------- sectors
    def boot_sector(self) -> bytes:
        small = self.total_sectors if self.total_sectors < 0x10000 and self.fat_bits == 16 else 0
        fields = {
            "BS_jmpBoot": b"\xeb\x58\x90" if self.fat_bits == 32 else b"\xeb\x3c\x90",  # jump over the BPB
            "BS_OEMName": b"LAZYACPT",
            "BPB_BytsPerSec": SECTOR,
            "BPB_SecPerClus": self.spc,
            "BPB_RsvdSecCnt": self.reserved,
            "BPB_NumFATs": self.fats,
            "BPB_RootEntCnt": self.root_entries,
            "BPB_TotSec16": small,
            "BPB_Media": 0xF8,  # fixed disk
            "BPB_SecPerTrk": 63,
            "BPB_NumHeads": 255,
            "BPB_HiddSec": FIRST_PARTITION_LBA,
            "BPB_TotSec32": 0 if small else self.total_sectors,
            "BS_DrvNum": 0x80,
            "BS_BootSig": BS_BOOTSIG_EXTENDED,
            "BS_VolID": self.serial,
            "BS_VolLab": f"{self.label.upper()[:11]:<11}".encode("ascii"),
            "BS_FilSysType": b"FAT32   " if self.fat_bits == 32 else b"FAT16   ",
        }
        if self.fat_bits == 32:
            fields.update(BPB_FATSz32=self.fat_sectors, BPB_RootClus=self.root.first_cluster, BPB_FSInfo=1)
            fields.update(BPB_BkBootSec=6)
            head = FAT32_BOOT_SECTOR.pack(fields)
        else:
            head = FAT16_BOOT_SECTOR.pack(fields, BPB_FATSz16=self.fat_sectors)
        return head.ljust(BOOT_SIGNATURE_OFFSET, b"\0") + BOOT_SIGNATURE

    def fsinfo_sector(self) -> bytes:
        return FSINFO.pack(
            FSI_LeadSig=FSI_LEAD_SIG,
            FSI_StrucSig=FSI_STRUC_SIG,
            FSI_Free_Count=self.clusters - self.used_clusters,
            FSI_Nxt_Free=self.used_clusters + 2,
            FSI_TrailSig=FSI_TRAIL_SIG,
        )

    def _fat_sector(self, index: int) -> bytes:
        cached = self._fat_cache.get(index)
        if cached is not None:
            return cached
        width = self.fat_bits // 8
        per_sector = SECTOR // width
        first = index * per_sector
        eoc = 0x0FFFFFFF if self.fat_bits == 32 else 0xFFFF
        values = [0] * per_sector
        for i in range(per_sector):
            c = first + i
            if c == 0:
                values[i] = 0x0FFFFFF8 if self.fat_bits == 32 else 0xFFF8
            elif c == 1:
                values[i] = eoc
        # Only runs that overlap this sector's clusters: a chain c -> c+1 ending in end-of-chain.
        k = max(0, bisect.bisect_right(self._run_starts, first) - 1)
        while k < len(self._runs) and self._runs[k][0] < first + per_sector:
            start, count, _node = self._runs[k]
            lo, hi = max(start, first), min(start + count, first + per_sector)
            for c in range(lo, hi):
                values[c - first] = eoc if c == start + count - 1 else c + 1
            k += 1
        data = b"".join(v.to_bytes(width, "little") for v in values)
        if len(self._fat_cache) > 4096:
            self._fat_cache.clear()
        self._fat_cache[index] = data
        return data

    def _cluster_bytes_at(self, cluster: int, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of one data cluster."""
        k = bisect.bisect_right(self._run_starts, cluster) - 1
        if k >= 0:
            start, count, node = self._runs[k]
            if cluster < start + count:
                pos = (cluster - start) * self.cluster_bytes + offset
                if node.is_dir:
                    chunk = node.entries[pos : pos + length]
                else:
                    assert node.source is not None
                    n = max(0, min(length, node.source.size - pos))
                    chunk = node.source.read(pos, n) if n else b""
                return chunk + bytes(length - len(chunk))
        return bytes(length)

    def _read_data(self, offset: int, length: int) -> bytes:
        """Bytes of the data region; a request spanning a whole file run is one read of its source."""
        parts: list[bytes] = []
        while length > 0:
            cluster, within = divmod(offset, self.cluster_bytes)
            cluster += 2
            k = bisect.bisect_right(self._run_starts, cluster) - 1
            run_end_cluster = cluster + 1
            if k >= 0 and cluster < self._runs[k][0] + self._runs[k][1]:
                start, count, node = self._runs[k]
                run_end_cluster = start + count
                if not node.is_dir:
                    assert node.source is not None
                    span = min(length, (run_end_cluster - cluster) * self.cluster_bytes - within)
                    pos = (cluster - start) * self.cluster_bytes + within
                    n = max(0, min(span, node.source.size - pos))
                    chunk = node.source.read(pos, n) if n else b""
                    parts.append(chunk + bytes(span - len(chunk)))
                    offset += span
                    length -= span
                    continue
            else:  # free clusters up to the next run
                nxt = bisect.bisect_right(self._run_starts, cluster)
                run_end_cluster = self._runs[nxt][0] if nxt < len(self._runs) else self.clusters + 2
                span = min(length, (run_end_cluster - cluster) * self.cluster_bytes - within)
                parts.append(bytes(span))
                offset += span
                length -= span
                continue
            span = min(length, self.cluster_bytes - within)
            parts.append(self._cluster_bytes_at(cluster, within, span))
            offset += span
            length -= span
        return b"".join(parts)

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of the volume; past its end reads as zeros."""
        out: list[bytes] = []
        end = offset + length
        pos = offset
        while pos < end:
            sector, within = divmod(pos, SECTOR)
            if sector >= self.data_start:
                n = min(end, self.size) - pos
                if n <= 0:
                    out.append(bytes(end - pos))
                    break
                out.append(self._read_data(pos - self.data_start * SECTOR, n))
                pos += n
                continue
            n = min(end - pos, SECTOR - within)
            out.append(self._metadata_sector(sector)[within : within + n])
            pos += n
        return b"".join(out)

    def _metadata_sector(self, sector: int) -> bytes:
        if sector < self.reserved:
            if sector in (0, 6) and (sector == 0 or self.fat_bits == 32):
                return self.boot_sector()
            if self.fat_bits == 32 and sector in (1, 7):
                return self.fsinfo_sector()
            if self.fat_bits == 32 and sector in (2, 8):  # the third boot sector of each copy ends in a signature
                return bytes(510) + b"\x55\xaa"
            return bytes(SECTOR)
        if sector < self.root_dir_start:
            return self._fat_sector((sector - self.fat_start) % self.fat_sectors)
        root = self.root.entries
        pos = (sector - self.root_dir_start) * SECTOR
        return (root[pos : pos + SECTOR]).ljust(SECTOR, b"\0")

    def file_extent(self, path: str) -> tuple[int, int] | None:
        """(byte offset in the volume, size) of a file, for reports and tests."""
        node = self.root
        for part in [p for p in path.split("/") if p]:
            child = node.children.get(part.upper())
            if child is None:
                return None
            node = child
        if node.is_dir or node.source is None:
            return None
        return (self.data_start + (node.first_cluster - 2) * self.spc) * SECTOR, node.source.size


# ================================================================================================= GPT
@dataclass
class Partition:
    name: str
    content: Source
    type_guid: uuid.UUID = ESP_TYPE
    unique_guid: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=0))
    first_lba: int = 0
    last_lba: int = 0  # inclusive, as GPT stores it

    @property
    def sectors(self) -> int:
        return self.last_lba - self.first_lba + 1


class GptDisk:
    """A GPT disk: protective MBR, primary and backup headers and entry arrays, and partitions whose contents
    are read on demand. Writes land in a sparse overlay of 512-byte sectors."""

    def __init__(self, partitions: list[Partition], *, disk_guid: uuid.UUID, extra_bytes: int = MiB):
        if not partitions or len(partitions) > GPT_ENTRIES:
            raise InputError(f"a GPT disk holds 1 to {GPT_ENTRIES} partitions, not {len(partitions)}")
        self.disk_guid = disk_guid
        self.partitions = partitions
        lba = FIRST_PARTITION_LBA
        for i, p in enumerate(partitions):
            if p.unique_guid.int == 0:
                p.unique_guid = uuid.uuid5(disk_guid, f"partition-{i + 1}")
            sectors = max(1, -(-p.content.size // SECTOR))
            p.first_lba = lba
            p.last_lba = lba + sectors - 1
            lba = align_up(p.last_lba + 1, FIRST_PARTITION_LBA)
        self.last_lba = lba + extra_bytes // SECTOR + GPT_ENTRY_SECTORS  # the backup header's LBA
        self.sectors = self.last_lba + 1
        self.size = self.sectors * SECTOR
        self.overlay: dict[int, bytes] = {}
        entries = bytearray(GPT_ENTRIES * GPT_ENTRY_SIZE)
        for i, p in enumerate(partitions):
            entries[i * GPT_ENTRY_SIZE : (i + 1) * GPT_ENTRY_SIZE] = EFI_PARTITION_ENTRY.pack(
                PartitionTypeGUID=p.type_guid,
                UniquePartitionGUID=p.unique_guid,
                StartingLBA=p.first_lba,
                EndingLBA=p.last_lba,
                PartitionName=p.name.encode("utf-16-le")[:72],
            )
        self.entries = bytes(entries)
        self._starts = [p.first_lba * SECTOR for p in partitions]

    def _header(self, backup: bool) -> bytes:
        my_lba, alt_lba = (self.last_lba, 1) if backup else (1, self.last_lba)
        entries_lba = self.last_lba - GPT_ENTRY_SECTORS if backup else 2
        fields = dict(
            Signature=GPT_SIGNATURE,
            Revision=GPT_REVISION,
            HeaderSize=GPT_HEADER_SIZE,
            MyLBA=my_lba,
            AlternateLBA=alt_lba,
            FirstUsableLBA=2 + GPT_ENTRY_SECTORS,
            LastUsableLBA=self.last_lba - GPT_ENTRY_SECTORS - 1,
            DiskGUID=self.disk_guid,
            PartitionEntryLBA=entries_lba,
            NumberOfPartitionEntries=GPT_ENTRIES,
            SizeOfPartitionEntry=GPT_ENTRY_SIZE,
            PartitionEntryArrayCRC32=zlib.crc32(self.entries),
        )
        crc = zlib.crc32(EFI_PARTITION_TABLE_HEADER.pack(fields))  # computed with HeaderCRC32 zero
        return EFI_PARTITION_TABLE_HEADER.pack(fields, HeaderCRC32=crc).ljust(SECTOR, b"\0")

    def _protective_mbr(self) -> bytes:
        mbr = bytearray(SECTOR)
        size = min(self.sectors - 1, 0xFFFFFFFF)
        # Status 0, CHS start 0/0/2, type 0xEE, CHS end 0xFFFFFF, LBA 1, size (UEFI 2.10 table 5.4).
        entry = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + (1).to_bytes(4, "little") + size.to_bytes(4, "little")
        mbr[446:462] = entry
        mbr[510:512] = b"\x55\xaa"
        return bytes(mbr)

    def _base_sector_run(self, lba: int, count: int) -> bytes:
        """count sectors from lba, without the overlay."""
        if lba == 0:
            return self._protective_mbr() + self._base_sector_run(1, count - 1) if count > 1 else self._protective_mbr()
        if lba == 1:
            head = self._header(False)
            return head + self._base_sector_run(2, count - 1) if count > 1 else head
        parts: list[bytes] = []
        pos, end = lba * SECTOR, (lba + count) * SECTOR
        backup_entries = (self.last_lba - GPT_ENTRY_SECTORS) * SECTOR
        while pos < end:
            if pos < (2 + GPT_ENTRY_SECTORS) * SECTOR:
                n = min(end, (2 + GPT_ENTRY_SECTORS) * SECTOR) - pos
                off = pos - 2 * SECTOR
                parts.append(self.entries[off : off + n])
            elif pos >= self.last_lba * SECTOR:
                parts.append(self._header(True)[: end - pos])
                n = end - pos
            elif pos >= backup_entries:
                n = min(end, self.last_lba * SECTOR) - pos
                off = pos - backup_entries
                parts.append(self.entries[off : off + n])
            else:
                k = bisect.bisect_right(self._starts, pos) - 1
                if k >= 0 and pos < (self.partitions[k].last_lba + 1) * SECTOR:
                    p = self.partitions[k]
                    n = min(end, (p.last_lba + 1) * SECTOR) - pos
                    parts.append(p.content.read(pos - p.first_lba * SECTOR, n).ljust(n, b"\0"))
                else:
                    nxt = self._starts[k + 1] if k + 1 < len(self._starts) else backup_entries
                    n = min(end, nxt) - pos
                    parts.append(bytes(n))
            pos += n
        return b"".join(parts)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise InputError(f"read of {length} bytes at {offset} is outside the {self.size}-byte disk")
        lba, end = offset // SECTOR, -(-(offset + length) // SECTOR)
        data = self._base_sector_run(lba, end - lba)
        if self.overlay:
            buf = bytearray(data)
            for s in range(lba, end):
                if s in self.overlay:
                    buf[(s - lba) * SECTOR : (s - lba + 1) * SECTOR] = self.overlay[s]
            data = bytes(buf)
        skip = offset - lba * SECTOR
        return data[skip : skip + length]

    def write(self, offset: int, data: bytes) -> None:
        if offset % SECTOR or len(data) % SECTOR or offset < 0 or offset + len(data) > self.size:
            raise InputError(f"write of {len(data)} bytes at {offset} is not whole sectors inside the disk")
        for i in range(0, len(data), SECTOR):
            self.overlay[offset // SECTOR + i // SECTOR] = bytes(data[i : i + SECTOR])

    def write_image(self, path: Path, chunk: int = 4 * MiB) -> None:
        """The image as a sparse file: runs of zeros are skipped, not written."""
        with atomic_open(path) as f:
            f.truncate(self.size)
            for off in range(0, self.size, chunk):
                data = self.read(off, min(chunk, self.size - off))
                if data.count(0) != len(data):
                    f.seek(off)
                    f.write(data)


# ================================================================================================= the ESP for GRUB
GRUB_PREFIX = "EFI/debian"  # the prefix embedded in Debian's monolithic grubx64.efi (its PREFIX module object)
GRUB_REMOVABLE_PATH = "EFI/BOOT/BOOTX64.EFI"  # UEFI 2.10 3.5.1.1, the removable-media boot path for x64


def grub_cfg_text(kernel: str, initrd: str | None, cmdline: str, *, timeout: int = 0) -> str:
    """A grub.cfg in the shape Debian's grub-mkconfig writes: one menu entry with linux, initrd and boot."""
    lines = [f"set timeout={timeout}", "set default=0", "", "menuentry 'Debian GNU/Linux (lazyaccept)' {"]
    lines.append("\techo 'Loading Linux ...'")
    lines.append(f"\tlinux /{kernel} {cmdline}".rstrip())
    if initrd is not None:
        lines.append("\techo 'Loading initial ramdisk ...'")
        lines.append(f"\tinitrd /{initrd}")
    lines += ["\tboot", "}", ""]
    return "\n".join(lines)


def esp_files(files: dict[str, Source], grub_efi: Source) -> dict[str, Source]:
    """A folder's files as the ESP GRUB boots from: GRUB at the removable-media path, and a top-level grub.cfg
    also where this GRUB build looks for it ($prefix/grub.cfg), unless the folder has one there already."""
    out = dict(files)
    upper = {k.upper(): k for k in out}
    if GRUB_REMOVABLE_PATH.upper() not in upper:
        out[GRUB_REMOVABLE_PATH] = grub_efi
    cfg = f"{GRUB_PREFIX}/grub.cfg"
    if cfg.upper() not in upper and "GRUB.CFG" in upper:
        out[cfg] = out[upper["GRUB.CFG"]]
    return out


def build_esp_disk(
    files: dict[str, Source],
    *,
    fat_bits: int = 32,
    cluster_bytes: int = 32 * 1024,
    disk_guid: uuid.UUID | None = None,
) -> tuple[GptDisk, FatVolume]:
    volume = FatVolume(files, fat_bits=fat_bits, cluster_bytes=cluster_bytes)
    guid = disk_guid or uuid.UUID("6c617a79-6163-6365-7074-000000000001")
    disk = GptDisk([Partition("EFI system partition", volume)], disk_guid=guid)
    return disk, volume
