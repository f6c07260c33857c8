"""EFI_SIMPLE_FILE_SYSTEM_PROTOCOL and EFI_FILE_PROTOCOL on a FAT partition, as OVMF's FAT driver offers them
(edk2-stable202605 FatPkg/EnhancedFatDxe: Open.c, ReadWrite.c, Info.c, DirectoryManage.c, Flush.c, Delete.c;
UEFI 2.10 13.4 and 13.5). The volume is read only: the model serves loaders, it keeps no writes, so every
writing call answers as FatPkg does on a read-only medium (EFI_WRITE_PROTECTED).

Files are read through the partition's Block I/O by cluster chain, only the bytes asked for (fat.py FatReader):
a 1 GiB initrd is never held whole. A broken chain answers EFI_VOLUME_CORRUPTED, as FatPkg's FileSpace.c does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lazyaccept.binlayout import Layout
from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.base import FW, ProtocolBase, pointers
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import EFI_TIME
from lazyaccept.spec.fat import ATTR_DIRECTORY
from lazyaccept.vmm.fat_reader import FatChainError, FatEntry, FatReader

if TYPE_CHECKING:
    from lazyaccept.firmware.drivers.blockio import BlockDevice
    from lazyaccept.firmware.dxe.core import UefiCore

SFS_REVISION = 0x00010000  # EFI_SIMPLE_FILE_SYSTEM_PROTOCOL_REVISION
FILE_REVISION = 0x00010000  # EFI_FILE_PROTOCOL_REVISION: no OpenEx/ReadEx/WriteEx/FlushEx (no Disk I/O 2 here)
MODE_READ, MODE_WRITE, MODE_CREATE = 1, 2, 1 << 63
VALID_MODES = (MODE_READ, MODE_READ | MODE_WRITE, MODE_READ | MODE_WRITE | MODE_CREATE)
FILE_VALID_ATTR = 0x37
UNSPECIFIED_TIMEZONE = 0x7FF
PATH_STRING_LENGTH = 260  # EFI_PATH_STRING_LENGTH: FatLocateOFile's limit on X:\full\path<NUL>
READ_CHUNK = 16 << 20  # a Read copies into guest memory in pieces this size

EFI_FILE_INFO = Layout(
    "EFI_FILE_INFO",
    [
        ("Size", "Q"),
        ("FileSize", "Q"),
        ("PhysicalSize", "Q"),
        ("CreateTime", "16s"),
        ("LastAccessTime", "16s"),
        ("ModificationTime", "16s"),
        ("Attribute", "Q"),
    ],
)  # then FileName, CHAR16[]: SIZE_OF_EFI_FILE_INFO is 80
EFI_FILE_SYSTEM_INFO = Layout(
    "EFI_FILE_SYSTEM_INFO",
    [("Size", "Q"), ("ReadOnly", "B"), ("Pad", "7s"), ("VolumeSize", "Q"), ("FreeSpace", "Q"), ("BlockSize", "I")],
)  # then VolumeLabel, CHAR16[]: SIZE_OF_EFI_FILE_SYSTEM_INFO is 36
assert EFI_FILE_INFO.size == 80 and EFI_FILE_SYSTEM_INFO.size == 36
FILE_METHODS = (
    ("Open", 5), ("Close", 1), ("Delete", 1), ("Read", 3), ("Write", 3), ("GetPosition", 2), ("SetPosition", 2),
    ("GetInfo", 4), ("SetInfo", 4), ("Flush", 1),
)


def fat_time(date: int, time: int = 0) -> bytes:
    """EFI_TIME of a FAT date and time (FatPkg Misc.c FatFatTimeToEfiTime); a zero date stays all zero."""
    if not date:
        return bytes(EFI_TIME.size)
    return EFI_TIME.pack(
        Year=1980 + (date >> 9), Month=date >> 5 & 0xF, Day=date & 0x1F,
        Hour=time >> 11, Minute=time >> 5 & 0x3F, Second=(time & 0x1F) * 2, TimeZone=UNSPECIFIED_TIMEZONE,
    )


@dataclass
class OpenFile:
    """An EFI_FILE_PROTOCOL instance (FatPkg's IFile): the entry, the path of entries from the root, position."""

    volume: FatVolumeFs
    address: int
    path: list[FatEntry]  # from the root's child down to this entry; [] is the root
    position: int = 0
    dir_cursor: int = 0
    read_only: bool = True

    @property
    def entry(self) -> FatEntry:
        return self.path[-1] if self.path else self.volume.root

    @property
    def is_dir(self) -> bool:
        return self.entry.is_dir


@dataclass
class FatVolumeFs:
    """One partition's FAT volume as the SFS driver sees it."""

    device: BlockDevice
    reader: FatReader
    interface: int = 0
    root: FatEntry = field(default_factory=lambda: FatEntry("", ATTR_DIRECTORY, 0, 0))


class FatFileSystems(ProtocolBase):
    """FatPkg's driver: Simple File System on every partition holding a FAT volume, and the file protocol
    instances its OpenVolume and Open hand out (one set of thunks, one guest structure per open file)."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.volumes: dict[int, FatVolumeFs] = {}  # SFS interface -> volume
        self.by_handle: dict[int, FatVolumeFs] = {}
        self.files: dict[int, OpenFile] = {}
        self.firmware_reading = False  # the Boot Manager's own LoadImage reads (not the guest's, not in its trace)
        self.thunks = [self.m.thunk(f"File.{n}", getattr(self, "file_" + n), k) for n, k in FILE_METHODS]
        self.open_volume_thunk = self.m.thunk("SimpleFileSystem.OpenVolume", self.open_volume, 2)

    def attach(self, dev: BlockDevice) -> FatVolumeFs | None:
        """Install Simple File System on a partition if it holds a FAT volume (FatPkg's Supported/Start: a volume
        that FatOpenDevice refuses gets no protocol); None, with the reason logged, otherwise."""

        def read(offset: int, length: int) -> bytes:
            data = dev.read_bytes(offset, length)
            if not self.firmware_reading:  # a loader's request, counted and observed as its Block I/O reads are
                dev._count_read(offset, length)
            return data

        try:
            reader = FatReader(read, dev.size)
        except InputError as exc:
            self.m.log("FatDriver.Start", f"{dev.handle:#x}: {exc}", S.UNSUPPORTED)
            return None
        vol = FatVolumeFs(dev, reader)
        vol.interface = self.m.fw_alloc(16)
        self.m.mem.write(vol.interface, pointers(SFS_REVISION, self.open_volume_thunk), actor=FW)
        self.m.install(dev.handle, guids.SIMPLE_FILE_SYSTEM, vol.interface, self)
        self.volumes[vol.interface] = vol
        self.by_handle[dev.handle] = vol
        return vol

    # ------------------------------------------------------------------------------------------ helpers
    def _new_file(self, volume: FatVolumeFs, path: list[FatEntry], read_only: bool = True) -> OpenFile:
        status, addr = self.m.dxe.allocate_pool(M.EfiBootServicesData, 8 * (1 + len(self.thunks)))
        if status != S.SUCCESS:
            raise _Refused(status)
        self.m.mem.write(addr, pointers(FILE_REVISION, *self.thunks), actor=FW)
        f = OpenFile(volume, addr, path, read_only=read_only)
        self.files[addr] = f
        return f

    def open_path(self, volume: FatVolumeFs, path: list[FatEntry], name: str) -> list[FatEntry] | int:
        """FatLocateOFile: the entries down to `name` from the directory at `path`, or an EFI status."""
        if not name:
            return S.INVALID_PARAMETER
        dir_intended = name.endswith("\\")
        if name.startswith("\\"):
            path, name = [], name[1:]
        if 2 + sum(len(e.name) + 1 for e in path) + 1 + len(name) + 1 > PATH_STRING_LENGTH:
            return S.INVALID_PARAMETER
        path = list(path)
        for part in name.split("\\"):
            if not part or part == ".":
                continue
            if part == "..":
                if not path:
                    return S.INVALID_PARAMETER
                path.pop()
                continue
            if len(part) > 255 or any(c in part for c in '"*/:<>?|') or any(ord(c) < 0x20 for c in part):
                return S.INVALID_PARAMETER
            here = path[-1] if path else volume.root
            if not here.is_dir:
                return S.NOT_FOUND
            entries = volume.reader.entries(here.first_cluster)
            match = next((e for e in entries if e.name.upper() == part.upper() and e.name not in (".", "..")), None)
            if match is None:
                return S.NOT_FOUND  # FatPkg: NOT_FOUND unless creating, which a read-only volume refuses first
            path.append(match)
        if dir_intended and path and not path[-1].is_dir:
            return S.NOT_FOUND
        return path

    def _file(self, this: int) -> OpenFile | None:
        return self.files.get(this)

    def _info(self, volume: FatVolumeFs, entry: FatEntry) -> bytes:
        """EFI_FILE_INFO of an entry (FatGetDirEntInfo): a folder's size is its cluster chain's."""
        r = volume.reader
        if entry.is_dir:
            if entry.first_cluster == 0 and r.fat_bits != 32:
                size = r.root_dir_sectors * r.bytes_per_sector
            else:
                first = entry.first_cluster or r.root_cluster
                size = sum(n for _, n in r.runs(first)) * r.cluster_bytes
            physical = size
        else:
            size = entry.size
            physical = -(-size // r.cluster_bytes) * r.cluster_bytes
        name = (entry.name + "\0").encode("utf-16-le")
        return EFI_FILE_INFO.pack(
            Size=EFI_FILE_INFO.size + len(name), FileSize=size, PhysicalSize=physical,
            CreateTime=fat_time(*entry.created), LastAccessTime=fat_time(entry.accessed),
            ModificationTime=fat_time(*entry.written), Attribute=entry.attr & FILE_VALID_ATTR,
        ) + name

    def _answer(self, size_ptr: int, buffer: int, data: bytes) -> int:
        """Copy `data` if the caller's buffer holds it, else BUFFER_TOO_SMALL; the size needed either way."""
        have = self.m.r64(size_ptr)
        self.m.w64(size_ptr, len(data))
        if have < len(data):
            return S.BUFFER_TOO_SMALL
        if not buffer:
            return S.INVALID_PARAMETER
        self.m.write(buffer, data)
        return S.SUCCESS

    def _log(self, name: str, f: OpenFile | None, detail: str, status: int) -> int:
        where = "\\" + "\\".join(e.name for e in f.path) if f is not None else "?"
        self.m.log(f"File.{name}", f"{where}{': ' + detail if detail else ''}", status)
        return status

    # ----------------------------------------------------------------------------------- the protocols
    def open_volume(self, this: int, root_ptr: int) -> int:
        volume = self.volumes.get(this)
        if volume is None or not root_ptr:
            return S.INVALID_PARAMETER
        try:
            f = self._new_file(volume, [])
            volume.reader.entries(0)  # FatOpenVolume reads the root directory
        except _Refused as exc:
            return exc.status
        except FatChainError as exc:
            self.m.log("SimpleFileSystem.OpenVolume", str(exc), S.VOLUME_CORRUPTED)
            return S.VOLUME_CORRUPTED
        self.m.w64(root_ptr, f.address)
        self.m.log("SimpleFileSystem.OpenVolume", f"{volume.device.handle:#x}", S.SUCCESS)
        return S.SUCCESS

    def file_Open(self, this: int, new_ptr: int, name_ptr: int, mode: int, attributes: int) -> int:
        f = self._file(this)
        if f is None or not new_ptr or not name_ptr:
            return S.INVALID_PARAMETER
        name = self.m.read_str16(name_ptr, PATH_STRING_LENGTH + 1)
        if mode not in VALID_MODES:
            return self._log("Open", f, f"{name}, mode {mode:#x}", S.INVALID_PARAMETER)
        if mode & MODE_CREATE and attributes & (1 | ~FILE_VALID_ATTR & (1 << 64) - 1):
            return self._log("Open", f, f"{name}, attributes {attributes:#x}", S.INVALID_PARAMETER)
        if mode & MODE_WRITE:  # FatOFileOpen: a read-only volume refuses write opens before any lookup
            return self._log("Open", f, f"{name} for writing", S.WRITE_PROTECTED)
        try:
            found = self.open_path(f.volume, f.path, name)
            if isinstance(found, int):
                return self._log("Open", f, name, found)
            new = self._new_file(f.volume, found)
        except FatChainError as exc:
            return self._log("Open", f, f"{name}: {exc}", S.VOLUME_CORRUPTED)
        except _Refused as exc:
            return self._log("Open", f, name, exc.status)
        self.m.w64(new_ptr, new.address)
        return self._log("Open", f, name, S.SUCCESS)

    def file_Close(self, this: int) -> int:
        f = self.files.pop(this, None)
        if f is None:
            return S.INVALID_PARAMETER
        self.m.dxe.free_pool(this)
        return S.SUCCESS

    def file_Delete(self, this: int) -> int:
        f = self._file(this)
        if f is None:
            return S.INVALID_PARAMETER
        self.file_Close(this)  # Delete closes the handle whether or not the file goes (FatDelete)
        return self._log("Delete", f, "read-only volume", S.WARN_DELETE_FAILURE)

    def file_Read(self, this: int, size_ptr: int, buffer: int) -> int:
        f = self._file(this)
        if f is None or not size_ptr:
            return S.INVALID_PARAMETER
        want = self.m.r64(size_ptr)
        try:
            if f.is_dir:
                return self._read_dir(f, size_ptr, buffer, want)
            if f.position > f.entry.size:
                return self._log("Read", f, f"position {f.position:#x} past the end", S.DEVICE_ERROR)
            n = min(want, f.entry.size - f.position)
            if n and not buffer:
                return S.INVALID_PARAMETER
            r = f.volume.reader
            for off in range(0, n, READ_CHUNK):
                k = min(READ_CHUNK, n - off)
                data = r.read_range(f.entry.first_cluster, f.entry.size, f.position + off, k, f.entry.name)
                self.m.write(buffer + off, data)
        except FatChainError as exc:
            self.m.w64(size_ptr, 0)
            return self._log("Read", f, str(exc), S.VOLUME_CORRUPTED)
        f.position += n
        self.m.w64(size_ptr, n)
        return self._log("Read", f, f"{n:#x} bytes", S.SUCCESS) if n > (1 << 20) else S.SUCCESS

    def _read_dir(self, f: OpenFile, size_ptr: int, buffer: int, want: int) -> int:
        """The next entry as EFI_FILE_INFO (FatIFileReadDir); BUFFER_TOO_SMALL leaves the cursor; 0 at the end."""
        entries = f.volume.reader.entries(f.entry.first_cluster)
        if f.dir_cursor >= len(entries):
            self.m.w64(size_ptr, 0)
            return S.SUCCESS
        info = self._info(f.volume, entries[f.dir_cursor])
        status = self._answer(size_ptr, buffer, info)
        if status == S.SUCCESS:
            f.dir_cursor += 1
        return status

    def file_Write(self, this: int, size_ptr: int, buffer: int) -> int:
        f = self._file(this)
        if f is None:
            return S.INVALID_PARAMETER
        if f.is_dir:  # FatIFileAccess: writing a directory is unsupported, before the read-only check
            return self._log("Write", f, "a directory", S.UNSUPPORTED)
        if size_ptr:
            self.m.w64(size_ptr, 0)
        return self._log("Write", f, "read-only volume", S.WRITE_PROTECTED)

    def file_GetPosition(self, this: int, pos_ptr: int) -> int:
        f = self._file(this)
        if f is None or not pos_ptr:
            return S.INVALID_PARAMETER
        if f.is_dir:
            return S.UNSUPPORTED
        self.m.w64(pos_ptr, f.position)
        return S.SUCCESS

    def file_SetPosition(self, this: int, position: int) -> int:
        f = self._file(this)
        if f is None:
            return S.INVALID_PARAMETER
        if f.is_dir:  # a directory can only go back to its start
            if position != 0:
                return S.UNSUPPORTED
            f.dir_cursor = 0
            return S.SUCCESS
        f.position = f.entry.size if position == (1 << 64) - 1 else position
        return S.SUCCESS

    def file_GetInfo(self, this: int, guid_ptr: int, size_ptr: int, buffer: int) -> int:
        f = self._file(this)
        if f is None or not guid_ptr or not size_ptr:
            return S.INVALID_PARAMETER
        kind = self.m.read_guid(guid_ptr)
        r = f.volume.reader
        try:
            if kind == guids.FILE_INFO:
                data = self._info(f.volume, f.entry)
            elif kind == guids.FILE_SYSTEM_INFO:
                name = (r.volume_label() + "\0").encode("utf-16-le")
                data = EFI_FILE_SYSTEM_INFO.pack(
                    Size=EFI_FILE_SYSTEM_INFO.size + len(name), ReadOnly=1, VolumeSize=r.clusters * r.cluster_bytes,
                    FreeSpace=self._free_clusters(r) * r.cluster_bytes, BlockSize=r.cluster_bytes,
                ) + name
            elif kind == guids.FILE_SYSTEM_VOLUME_LABEL:
                data = (r.volume_label() + "\0").encode("utf-16-le")
            else:
                return self._log("GetInfo", f, guids.name_of(kind), S.UNSUPPORTED)
        except FatChainError as exc:
            return self._log("GetInfo", f, str(exc), S.VOLUME_CORRUPTED)
        return self._log("GetInfo", f, guids.name_of(kind), self._answer(size_ptr, buffer, data))

    def _free_clusters(self, r: FatReader) -> int:
        """Free clusters: FSInfo's count on FAT32 when it is plausible (FatPkg trusts it), else counted in the FAT."""
        if r.fat_bits == 32:
            fsinfo = r.read(r.bytes_per_sector, 512)
            count = int.from_bytes(fsinfo[488:492], "little")
            if int.from_bytes(fsinfo[484:488], "little") == 0x61417272 and count <= r.clusters:
                return count
        return sum(1 for c in range(2, r.clusters + 2) if r._next(c) == 0)

    def file_SetInfo(self, this: int, guid_ptr: int, size: int, buffer: int) -> int:
        f = self._file(this)
        if f is None or not guid_ptr:
            return S.INVALID_PARAMETER
        kind = self.m.read_guid(guid_ptr)
        known = (guids.FILE_INFO, guids.FILE_SYSTEM_INFO, guids.FILE_SYSTEM_VOLUME_LABEL)
        return self._log("SetInfo", f, guids.name_of(kind), S.WRITE_PROTECTED if kind in known else S.UNSUPPORTED)

    def file_Flush(self, this: int) -> int:
        f = self._file(this)
        if f is None:
            return S.INVALID_PARAMETER
        return S.WRITE_PROTECTED  # FatFlushEx on a read-only volume

    # ------------------------------------------------------------------ the firmware's own reads (LoadImage)
    def read_whole(self, volume: FatVolumeFs, name: str) -> bytes | int:
        """A file's bytes for LoadImage (CoreLoadImageCommon -> GetFileBufferByFilePath: Open, GetInfo, Read),
        or an EFI status."""
        self.firmware_reading = True
        try:
            found = self.open_path(volume, [], name if name.startswith("\\") else "\\" + name)
            if isinstance(found, int):
                return found
            if not found or found[-1].is_dir:
                return S.NOT_FOUND  # GetFileBufferByFilePath: a directory is no image
            e = found[-1]
            return volume.reader.read_range(e.first_cluster, e.size, 0, e.size, e.name)
        except FatChainError as exc:
            self.m.log("LoadImage", f"{name}: {exc}", S.VOLUME_CORRUPTED)
            return S.VOLUME_CORRUPTED
        finally:
            self.firmware_reading = False


class _Refused(Exception):
    def __init__(self, status: int):
        self.status = status


def load_from_file_path(machine: UefiCore, fs: FatFileSystems, path_addr: int):  # noqa: ANN201 - a path loader
    """LoadImage(DevicePath) for a file on a FAT volume, as CoreLoadImageCommon does through
    GetFileBufferByFilePath (edk2-stable202605 MdeModulePkg/Core/Dxe/Image/Image.c): the handle with Simple File
    System whose device path is the longest prefix of the path, then the File() nodes that follow, opened one
    after the other. None if no volume's path is a prefix (another loader's, or LoadFile2/LoadFile); an EFI
    status; or (data, name, device handle, address of the remaining file path)."""
    from lazyaccept.firmware.drivers.base import END_NODE
    from lazyaccept.firmware.drivers.blockio import split_nodes

    wanted = machine.read_device_path(path_addr)
    best: FatVolumeFs | None = None
    for vol in fs.volumes.values():
        prefix = vol.device.info.device_path[:-4]
        if wanted.startswith(prefix) and (best is None or len(prefix) > len(best.device.info.device_path) - 4):
            best = vol
    if best is None:
        return None
    rest = wanted[len(best.device.info.device_path) - 4 :]
    parts = []
    for node in split_nodes(rest):
        if node[0] != 4 or node[1] != 4:  # a node that is no File(): not a file on this volume
            return S.NOT_FOUND
        parts.append(node[4:].decode("utf-16-le", "replace").split("\0")[0])
    name = "\\".join(p.strip("\\") for p in parts if p.strip("\\"))
    if not name:
        return S.NOT_FOUND
    data = fs.read_whole(best, name)
    if isinstance(data, int):
        machine.log("LoadImage", f"\\{name}", data)
        return data
    remaining = rest if rest.endswith(END_NODE) else rest + END_NODE
    file_path = machine.fw_alloc(len(remaining))
    machine.mem.write(file_path, remaining, actor=FW)
    return data, name.split("\\")[-1], best.device.handle, file_path
