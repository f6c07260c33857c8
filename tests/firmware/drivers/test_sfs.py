"""Simple File System and EFI_FILE_PROTOCOL on a disk built by vmm/disk.py, called as a loader calls them (the
interface pointers in guest memory, arguments and buffers there), and the LoadImage path through them."""

from __future__ import annotations

import pytest

from lazyaccept.cpu.machine import EfiMachine, MachineConfig
from lazyaccept.firmware.drivers.base import END_NODE, FW
from lazyaccept.firmware.drivers.blockio import BlockDevice, acpi_pci_root, file_path_node, pci_node
from lazyaccept.firmware.drivers.partition import connect_partitions
from lazyaccept.firmware.drivers.sfs import (
    EFI_FILE_INFO,
    EFI_FILE_SYSTEM_INFO,
    MODE_CREATE,
    MODE_READ,
    MODE_WRITE,
    FatFileSystems,
    load_from_file_path,
)
from lazyaccept.firmware.loaders.direct_boot import InitrdSource
from lazyaccept.firmware.platform import start_dxe
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.disk import SECTOR, BytesSource, GptDisk, build_esp_disk
from lazyaccept.vmm.td import TdConfig, build_td

KERNEL = bytes(range(256)) * 400 + b"tail"
FILES = {
    "vmlinuz": BytesSource(KERNEL),
    "initrd.img": InitrdSource(3 * MiB + 17),
    "loader/loader.conf": BytesSource(b"timeout 0\ndefault lazyaccept.conf\n"),
    "loader/entries/A long entry name.conf": BytesSource(b"title long names use LFN entries\n"),
    "EFI/BOOT/BOOTX64.EFI": BytesSource(b"MZ" + bytes(70_000)),
}


def new_machine() -> EfiMachine:
    td = build_td(TdConfig(ram_size=1 * GiB, vcpus=1))
    return EfiMachine(td.tdx, start_dxe(td, run_sec(td, parse_policy("256M"))), MachineConfig(log_calls=True))


@pytest.fixture(scope="module")
def machine() -> EfiMachine:
    return new_machine()


class Fs:
    """One volume's SFS as a loader reaches it: interface pointers followed in guest memory."""

    def __init__(self, machine: EfiMachine, disk: GptDisk):
        self.m = machine
        dev = BlockDevice(machine, acpi_pci_root() + pci_node(4) + END_NODE, disk.size, disk.read, disk.write)
        self.disk_dev = dev
        self.parts = connect_partitions(machine, dev)
        self.fs = FatFileSystems(machine)
        self.vol = self.fs.attach(self.parts[0])
        self.scratch = machine.fw_alloc(4 << 20)

    def call(self, interface: int, index: int, *args: int) -> int:
        """Method `index` (after Revision) of the interface, through its function pointer and thunk."""
        thunk = self.m.r64(interface + 8 * (1 + index))
        name, fn, _nargs = self.m._services[(thunk - self.m.thunk_base) // self.m.thunk_size]
        return fn(interface, *args)

    def ptr(self, value: int = 0, at: int = 0) -> int:
        addr = self.scratch + (3 << 20) + 8 * at
        self.m.w64(addr, value)
        return addr

    def root(self) -> int:
        sfs = self.m.handles[self.parts[0].handle][guids.SIMPLE_FILE_SYSTEM]
        out = self.ptr()
        assert self.call(sfs, 0, out) == S.SUCCESS
        return self.m.r64(out)

    def open(self, parent: int, name: str, mode: int = MODE_READ) -> tuple[int, int]:
        text = self.scratch + (2 << 20)
        self.m.mem.write(text, (name + "\0").encode("utf-16-le"), actor=FW)
        out = self.ptr(0, 1)
        status = self.call(parent, 0, out, text, mode, 0)
        return status, self.m.r64(out)

    def read(self, f: int, size: int) -> tuple[int, bytes]:
        size_ptr = self.ptr(size, 2)
        status = self.call(f, 3, size_ptr, self.scratch)
        n = self.m.r64(size_ptr)
        return status, self.m.mem.read(self.scratch, min(n, 2 << 20), actor=FW) if status == S.SUCCESS else b""

    def info(self, f: int, guid, size: int = 4096) -> tuple[int, int, bytes]:  # noqa: ANN001
        g = self.scratch + (2 << 20) + 4096
        self.m.mem.write(g, guid.bytes_le, actor=FW)
        size_ptr = self.ptr(size, 3)
        status = self.call(f, 7, g, size_ptr, self.scratch)
        n = self.m.r64(size_ptr)
        return status, n, self.m.mem.read(self.scratch, n, actor=FW) if status == S.SUCCESS else b""


@pytest.fixture(params=[(32, 4096), (16, 2048)], ids=["fat32", "fat16"])
def fs(machine: EfiMachine, request: pytest.FixtureRequest) -> Fs:
    bits, cluster = request.param
    disk, _volume = build_esp_disk(dict(FILES), fat_bits=bits, cluster_bytes=cluster)
    return Fs(machine, disk)


def test_open_read_getposition_setposition(fs: Fs) -> None:
    root = fs.root()
    status, f = fs.open(root, "\\VMLINUZ")  # any case
    assert status == S.SUCCESS
    status, data = fs.read(f, 1000)
    assert status == S.SUCCESS and data == KERNEL[:1000]
    pos = fs.ptr(0, 4)
    assert fs.call(f, 5, pos) == S.SUCCESS and fs.m.r64(pos) == 1000
    assert fs.call(f, 6, len(KERNEL) - 4) == S.SUCCESS
    assert fs.read(f, 100) == (S.SUCCESS, b"tail")  # short read at the end
    assert fs.read(f, 100) == (S.SUCCESS, b"")
    assert fs.call(f, 6, (1 << 64) - 1) == S.SUCCESS and fs.call(f, 5, pos) == S.SUCCESS
    assert fs.m.r64(pos) == len(KERNEL)  # -1 is the end of the file
    assert fs.call(f, 6, len(KERNEL) + 1) == S.SUCCESS
    assert fs.read(f, 1)[0] == S.DEVICE_ERROR  # FatIFileAccess: a position past the end
    assert fs.call(f, 1) == S.SUCCESS


def test_paths_dot_dotdot_relative_and_long_names(fs: Fs) -> None:
    root = fs.root()
    status, loader = fs.open(root, "loader")
    assert status == S.SUCCESS
    status, conf = fs.open(loader, "entries\\..\\.\\loader.conf")
    assert status == S.SUCCESS and fs.read(conf, 100)[1] == b"timeout 0\ndefault lazyaccept.conf\n"
    status, long = fs.open(loader, "\\LOADER\\ENTRIES\\a long ENTRY name.conf")
    assert status == S.SUCCESS and fs.read(long, 100)[1].startswith(b"title long names")
    assert fs.open(root, "..")[0] == S.INVALID_PARAMETER  # FatLocateOFile: the root has no parent
    assert fs.open(root, "")[0] == S.INVALID_PARAMETER
    assert fs.open(root, "nothing")[0] == S.NOT_FOUND
    assert fs.open(root, "vmlinuz\\x")[0] == S.NOT_FOUND  # a file is no folder
    assert fs.open(root, "vmlinuz\\")[0] == S.NOT_FOUND  # a trailing separator asks for a folder
    assert fs.open(root, "a*b")[0] == S.INVALID_PARAMETER


def test_write_calls_are_refused_as_on_a_read_only_medium(fs: Fs) -> None:
    root = fs.root()
    assert fs.open(root, "vmlinuz", MODE_READ | MODE_WRITE)[0] == S.WRITE_PROTECTED
    assert fs.open(root, "new", MODE_READ | MODE_WRITE | MODE_CREATE)[0] == S.WRITE_PROTECTED
    assert fs.open(root, "vmlinuz", MODE_WRITE)[0] == S.INVALID_PARAMETER  # not a valid mode
    _, f = fs.open(root, "vmlinuz")
    size_ptr = fs.ptr(10, 2)
    assert fs.call(f, 4, size_ptr, fs.scratch) == S.WRITE_PROTECTED and fs.m.r64(size_ptr) == 0
    assert fs.call(root, 4, size_ptr, fs.scratch) == S.UNSUPPORTED  # writing a folder
    assert fs.call(f, 9) == S.WRITE_PROTECTED  # Flush
    assert fs.call(f, 2) == S.WARN_DELETE_FAILURE  # Delete closes the handle anyway
    assert fs.call(f, 1) == S.INVALID_PARAMETER


def test_getinfo_file_and_buffer_too_small(fs: Fs) -> None:
    _, f = fs.open(fs.root(), "EFI\\BOOT\\BOOTX64.EFI")
    status, need, _ = fs.info(f, guids.FILE_INFO, 10)
    name = "BOOTX64.EFI"
    assert status == S.BUFFER_TOO_SMALL and need == EFI_FILE_INFO.size + 2 * (len(name) + 1)
    status, n, raw = fs.info(f, guids.FILE_INFO, need)
    info = EFI_FILE_INFO.unpack(raw)
    assert status == S.SUCCESS and info["Size"] == need and info["FileSize"] == 70_002
    cluster = fs.vol.reader.cluster_bytes
    assert info["PhysicalSize"] == -(-70_002 // cluster) * cluster and info["Attribute"] & 0x10 == 0
    assert raw[EFI_FILE_INFO.size :].decode("utf-16-le") == name + "\0"
    assert fs.info(f, guids.LOADED_IMAGE)[0] == S.UNSUPPORTED


def test_getinfo_volume_and_label(fs: Fs) -> None:
    root = fs.root()
    status, n, raw = fs.info(root, guids.FILE_SYSTEM_INFO)
    info = EFI_FILE_SYSTEM_INFO.unpack(raw)
    r = fs.vol.reader
    assert status == S.SUCCESS and info["ReadOnly"] == 1 and info["BlockSize"] == r.cluster_bytes
    assert info["VolumeSize"] == r.clusters * r.cluster_bytes and 0 < info["FreeSpace"] < info["VolumeSize"]
    label = raw[EFI_FILE_SYSTEM_INFO.size :].decode("utf-16-le").rstrip("\0")
    status, n, raw = fs.info(root, guids.FILE_SYSTEM_VOLUME_LABEL)
    assert status == S.SUCCESS and raw.decode("utf-16-le") == label + "\0" and n == 2 * (len(label) + 1)
    assert fs.info(root, guids.FILE_SYSTEM_VOLUME_LABEL, 1)[:2] == (S.BUFFER_TOO_SMALL, n)


def test_directory_listing_returns_file_info_then_zero(fs: Fs) -> None:
    root = fs.root()
    _, loader = fs.open(root, "loader")
    names = []
    while True:
        status, data = fs.read(loader, 4096)
        assert status == S.SUCCESS
        if not data:
            break
        info = EFI_FILE_INFO.unpack(data)
        names.append((data[EFI_FILE_INFO.size : info["Size"]].decode("utf-16-le").rstrip("\0"), info["Attribute"]))
    assert [n for n, _ in names] == [".", "..", "loader.conf", "entries"]
    assert dict(names)["entries"] & 0x10 and not dict(names)["loader.conf"] & 0x10
    assert fs.call(loader, 6, 1) == S.UNSUPPORTED  # a folder goes back to its start only
    assert fs.call(loader, 6, 0) == S.SUCCESS
    status, data = fs.read(loader, 8)
    assert status == S.BUFFER_TOO_SMALL and fs.m.r64(fs.scratch + (3 << 20) + 16) > 80  # the size needed
    assert fs.read(loader, 4096)[1][EFI_FILE_INFO.size :].decode("utf-16-le").rstrip("\0") == "."  # not skipped
    assert fs.call(loader, 5, fs.ptr()) == S.UNSUPPORTED  # GetPosition of a folder
    root_listing = []
    while (data := fs.read(root, 4096)[1]):
        root_listing.append(data[EFI_FILE_INFO.size :].decode("utf-16-le").rstrip("\0"))
    assert sorted(root_listing) == sorted(["vmlinuz", "initrd.img", "loader", "EFI"])


def test_reads_are_sparse_and_through_block_io(machine: EfiMachine) -> None:
    big = InitrdSource(1 * GiB)
    disk, _ = build_esp_disk({"initrd.img": big}, fat_bits=32, cluster_bytes=32 * 1024)
    fs = Fs(machine, disk)
    _, f = fs.open(fs.root(), "initrd.img")
    before = fs.parts[0].info.bytes_read
    assert fs.call(f, 6, 512 * MiB) == S.SUCCESS
    status, data = fs.read(f, 4096)
    assert status == S.SUCCESS and data == big.read(512 * MiB, 4096)
    assert fs.parts[0].info.bytes_read - before < 1 * MiB  # the FAT blocks walked and 4 KiB of data


def test_load_image_from_a_file_path(fs: Fs) -> None:
    path = fs.parts[0].info.device_path[:-4] + file_path_node("\\EFI\\BOOT") + file_path_node("BOOTX64.EFI") + END_NODE
    addr = fs.m.fw_alloc(len(path))
    fs.m.mem.write(addr, path, actor=FW)
    data, name, device, remaining = load_from_file_path(fs.m, fs.fs, addr)
    assert data == b"MZ" + bytes(70_000) and name == "BOOTX64.EFI" and device == fs.parts[0].handle
    assert fs.m.read_device_path(remaining) == file_path_node("\\EFI\\BOOT") + file_path_node("BOOTX64.EFI") + END_NODE
    missing = fs.parts[0].info.device_path[:-4] + file_path_node("\\nothing.efi") + END_NODE
    fs.m.mem.write(addr, missing, actor=FW)
    assert load_from_file_path(fs.m, fs.fs, addr) == S.NOT_FOUND
    other = acpi_pci_root() + pci_node(9) + END_NODE  # no volume's path is a prefix: another loader's
    fs.m.mem.write(addr, other, actor=FW)
    assert load_from_file_path(fs.m, fs.fs, addr) is None


# ================================================================================================ hostile volumes
def _poke_fat(disk: GptDisk, reader, cluster: int, value: int) -> None:  # noqa: ANN001
    base = disk.partitions[0].first_lba * SECTOR
    off = base + reader.fat_start * reader.bytes_per_sector + 4 * cluster
    sector = bytearray(disk.read(off - off % SECTOR, SECTOR))
    sector[off % SECTOR : off % SECTOR + 4] = value.to_bytes(4, "little")
    disk.write(off - off % SECTOR, bytes(sector))


def test_a_loop_in_a_cluster_chain_is_volume_corrupted(machine: EfiMachine) -> None:
    disk, volume = build_esp_disk({"vmlinuz": BytesSource(KERNEL)}, fat_bits=32, cluster_bytes=4096)
    first = volume.root.children["VMLINUZ"].first_cluster
    fs0 = Fs(machine, disk)
    _poke_fat(disk, fs0.vol.reader, first + 3, first)  # cluster 4 of the file points back to its first
    fs = Fs(machine, disk)
    status, f = fs.open(fs.root(), "vmlinuz")
    assert status == S.SUCCESS
    assert fs.read(f, 4096)[0] == S.VOLUME_CORRUPTED  # the chain is walked (FAT only) before the first read
    assert any("cluster chain" in c.detail for c in machine.calls if c.name == "File.Read")


def test_a_chain_into_a_free_cluster_is_volume_corrupted(machine: EfiMachine) -> None:
    disk, volume = build_esp_disk({"vmlinuz": BytesSource(KERNEL)}, fat_bits=32, cluster_bytes=4096)
    first = volume.root.children["VMLINUZ"].first_cluster
    _poke_fat(disk, Fs(machine, disk).vol.reader, first + 1, 0)
    fs = Fs(machine, disk)
    _, f = fs.open(fs.root(), "vmlinuz")
    assert fs.read(f, len(KERNEL))[0] == S.VOLUME_CORRUPTED


def test_a_truncated_fat_gets_no_file_system(machine: EfiMachine) -> None:
    disk, _ = build_esp_disk({"vmlinuz": BytesSource(KERNEL)}, fat_bits=32, cluster_bytes=4096)
    base = disk.partitions[0].first_lba * SECTOR
    boot = bytearray(disk.read(base, SECTOR))
    boot[36:40] = (1).to_bytes(4, "little")  # BPB_FATSz32: one sector for thousands of clusters
    disk.write(base, bytes(boot))
    fs = Fs(machine, disk)
    assert fs.vol is None and guids.SIMPLE_FILE_SYSTEM not in machine.handles[fs.parts[0].handle]
    assert any("truncated FAT" in c.detail for c in machine.calls if c.name == "FatDriver.Start")


@pytest.mark.real_binary
def test_boot_service_load_image_from_a_partition_and_file_path() -> None:
    """LoadImage(FALSE, parent, HD(...)/File(\\EFI\\systemd\\systemd-bootx64.efi), NULL, 0), as a loader calls it:
    the image comes through the Simple File System of the partition the path reaches, its LoadedImage names that
    partition's handle and the file path that follows it."""
    from lazyaccept.binaries import BinaryStore
    from lazyaccept.spec.efi_tables import EFI_LOADED_IMAGE_PROTOCOL

    machine = new_machine()  # one disk: the others' partitions have the same device paths
    efi = BinaryStore().systemd_boot_efi().read_bytes()
    disk, _ = build_esp_disk({"EFI/systemd/systemd-bootx64.efi": BytesSource(efi)}, fat_bits=32)
    fs = Fs(machine, disk)
    machine.protocols.path_loaders.append(lambda p: load_from_file_path(machine, fs.fs, p))
    status, parent = machine.load_image(efi, "parent.efi")
    assert status == S.SUCCESS
    file_node = file_path_node("\\EFI\\systemd\\systemd-bootx64.efi")
    path = fs.parts[0].info.device_path[:-4] + file_node + END_NODE
    addr = machine.fw_alloc(len(path) + 8)
    machine.mem.write(addr, path, actor=FW)
    out = addr + len(path)
    before = len(machine.calls)
    assert machine.bs_LoadImage(0, parent, addr, 0, 0, out) == S.SUCCESS
    image = machine.images[machine.r64(out)]
    assert image.name == "systemd-bootx64.efi" and image.pe.data == efi
    # CoreLoadImageCommon's GetFileBufferByFilePath: a pool buffer of the DXE core's, the file's size, freed after
    pool, free, load = [(c.image, c.name, c.detail) for c in machine.calls[before:]]
    assert pool[:2] == ("dxe", "AllocatePool") and pool[2].startswith(f"type 4, {len(efi):#x} bytes")
    assert free == ("dxe", "FreePool", pool[2].rsplit("-> ", 1)[1]) and load[1] == "LoadImage"
    li = EFI_LOADED_IMAGE_PROTOCOL.unpack(machine.mem.read(image.loaded_image, EFI_LOADED_IMAGE_PROTOCOL.size,
                                                           actor=FW))
    assert li["DeviceHandle"] == fs.parts[0].handle and li["ParentHandle"] == parent
    assert machine.read_device_path(li["FilePath"]) == file_node + END_NODE
    missing = fs.parts[0].info.device_path[:-4] + file_path_node("\\EFI\\none.efi") + END_NODE
    machine.mem.write(addr, missing, actor=FW)
    assert machine.bs_LoadImage(0, parent, addr, 0, 0, out) == S.NOT_FOUND
    # From a buffer with the same path (systemd-boot loads the kernel so): DeviceHandle and FilePath as from the file
    buffer = machine.fw_alloc(len(efi))
    machine.mem.write(buffer, efi, actor=FW)
    machine.mem.write(addr, path, actor=FW)
    assert machine.bs_LoadImage(0, parent, addr, buffer, len(efi), out) == S.SUCCESS
    image = machine.images[machine.r64(out)]
    li = EFI_LOADED_IMAGE_PROTOCOL.unpack(machine.mem.read(image.loaded_image, EFI_LOADED_IMAGE_PROTOCOL.size,
                                                           actor=FW))
    assert li["DeviceHandle"] == fs.parts[0].handle
    assert machine.read_device_path(li["FilePath"]) == file_node + END_NODE


def test_random_damage_to_the_fat_and_folders_gives_statuses_never_exceptions(machine: EfiMachine) -> None:
    import random

    rng = random.Random(18)
    for _ in range(25):
        disk, volume = build_esp_disk(dict(FILES), fat_bits=rng.choice((16, 32)), cluster_bytes=2048)
        base = disk.partitions[0].first_lba * SECTOR
        metadata_end = (volume.data_start + 64) * SECTOR  # the FATs, a FAT16 root and the first folders
        for _ in range(rng.randrange(1, 40)):
            at = base + rng.randrange(SECTOR, metadata_end)
            sector = bytearray(disk.read(at - at % SECTOR, SECTOR))
            sector[at % SECTOR] = rng.randrange(256)
            disk.write(at - at % SECTOR, bytes(sector))
        fs = Fs(machine, disk)
        if fs.vol is None:
            continue
        sfs = machine.handles[fs.parts[0].handle][guids.SIMPLE_FILE_SYSTEM]
        out = fs.ptr()
        if fs.call(sfs, 0, out) != S.SUCCESS:
            continue
        root = machine.r64(out)
        for name in (*FILES, "loader", "loader\\entries", "EFI\\BOOT"):
            status, f = fs.open(root, name.replace("/", "\\"))
            if status != S.SUCCESS:
                assert status in (S.NOT_FOUND, S.VOLUME_CORRUPTED, S.INVALID_PARAMETER), (name, S(status))
                continue
            for _ in range(8):
                status, data = fs.read(f, 1 << 20)
                assert status in (S.SUCCESS, S.VOLUME_CORRUPTED, S.BUFFER_TOO_SMALL), (name, S(status))
                if status != S.SUCCESS or not data:
                    break
            assert fs.info(f, guids.FILE_INFO)[0] in (S.SUCCESS, S.VOLUME_CORRUPTED)
            fs.call(f, 1)
