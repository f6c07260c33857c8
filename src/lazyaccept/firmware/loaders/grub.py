"""Booting from a disk through GRUB, as OVMF's Boot Manager does with no boot options set: the default boot
path of removable media, \\EFI\\BOOT\\BOOTX64.EFI on the EFI system partition (UEFI 2.10 3.5.1.1; edk2
BmBoot.c BmExpandMediaDevicePath), loaded with LoadImage from that device path and started.

The disk is a virtio-blk-like device at PciRoot(0x0)/Pci(0x4,0x0) holding a GPT image that lazyaccept builds
from a folder (vmm/disk.py), with Block I/O and Disk I/O on the disk and on a child per partition
(cpu/blockio.py). GRUB then does everything itself: finds its root from the LoadedImage DeviceHandle, reads
grub.cfg with its own FAT and GPT drivers (config_search below tells where it looked), loads the kernel and
starts its EFI stub with LoadImage/StartImage, and serves the initrd through its own LoadFile2
(grub-core/loader/efi/linux.c).
"""

from __future__ import annotations

import bisect
import mmap
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lazyaccept.files import atomic_open
from lazyaccept.firmware.drivers.base import END_NODE, FW
from lazyaccept.firmware.drivers.blockio import (
    PART_TYPE_SYSTEM_PART,
    BlockDevice,
    BlockDeviceInfo,
    acpi_pci_root,
    file_path_node,
    pci_node,
)
from lazyaccept.firmware.drivers.partition import connect_partitions
from lazyaccept.firmware.drivers.sfs import FatFileSystems, load_from_file_path
from lazyaccept.firmware.dxe.core import UefiCore
from lazyaccept.firmware.dxe.image import boot_buffer_failed, placed_key
from lazyaccept.firmware.dxe.pe import PeImage, parse_pe
from lazyaccept.firmware.dxe.runtime import set_boot_option
from lazyaccept.firmware.loaders.direct_boot import (
    SYNTHETIC_INITRD_MARKER,
    InitrdSource,
    LoaderEvent,
    SetupHeader,
    parse_setup_header,
)
from lazyaccept.records import ServiceCall, StopReason
from lazyaccept.spec.device_path import device_path_text
from lazyaccept.spec.efi import EfiAllocateType
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.linux_boot import SETUP_HEADER, SETUP_HEADER_OFFSET, has_setup_header
from lazyaccept.vmm.disk import (
    GRUB_PREFIX,
    GRUB_REMOVABLE_PATH,
    SECTOR,
    BytesSource,
    FatVolume,
    GptDisk,
    HostFile,
    Source,
    build_esp_disk,
    esp_files,
    grub_cfg_text,
)
from lazyaccept.vmm.disk_image import DiskImage

DISK_PCI_DEVICE = 4  # where QEMU's q35 puts the first virtio-blk disk without an explicit addr
KERNEL_NAME, INITRD_NAME = "vmlinuz", "initrd.img"
SHIM_NAME = "shimx64.efi"  # the name shim's image gets in the call log
DISK_LOADER_NAME = "BOOTX64.EFI"  # boot --disk: the image's own loader, whatever it is, by its file's name
SHIM_SECOND_STAGE = "EFI/BOOT/grubx64.efi"  # shim's DEFAULT_LOADER (\\grubx64.efi), in the folder shim ran from
ALLOCATION_SERVICES = ("AllocatePages", "AllocatePool")


@dataclass
class GrubBootConfig:
    grub_efi: Source
    files: dict[str, Source]  # the ESP's files, before GRUB is added at the removable-media path
    fat_bits: int = 32
    cluster_bytes: int = 32 * 1024
    keys: list[tuple[str, str]] = field(default_factory=list)  # (text to wait for, or "", keys to type)
    fast_paths: bool = True  # run GRUB's byte-loop memmove/memset natively (cpu/fastpaths.py)
    shim: Source | None = None  # shim as BOOTX64.EFI, GRUB beside it as grubx64.efi: shim starts GRUB
    image: DiskImage | None = None  # boot --disk: the user's image instead of a disk built from `files`


@dataclass
class GrubBootResult:
    stop: StopReason | None
    failed: str | None = None
    events: list[LoaderEvent] = field(default_factory=list)
    disk: GptDisk | None = None
    volume: FatVolume | None = None
    devices: list[BlockDeviceInfo] = field(default_factory=list)
    grub_handle: int = 0
    setup: SetupHeader | None = None  # of the kernel GRUB started
    kernel_image: str = ""  # its image name in the call log
    esp_reads: EspReads | None = None  # which folders and files of the ESP GRUB read
    modules: GrubImageModules | None = None  # what grub-mkimage put in GRUB's image
    image: DiskImage | None = None  # boot --disk: the user's image (then disk and volume are None)


def synthetic_esp(
    kernel: Source, initrd: Source | None, cmdline: str, *, timeout: int = 0, cfg: str | None = None
) -> dict[str, Source]:
    """The ESP of `lazyaccept boot --grub` without --disk-from: kernel, initrd and a grub.cfg booting them
    (`cfg` replaces the generated one; "" leaves it out, so that GRUB ends at its prompt)."""
    files: dict[str, Source] = {KERNEL_NAME: kernel}
    if initrd is not None:
        files[INITRD_NAME] = initrd
    if cfg is None:
        cfg = grub_cfg_text(KERNEL_NAME, INITRD_NAME if initrd is not None else None, cmdline, timeout=timeout)
    if cfg:
        files["grub.cfg"] = BytesSource(cfg.encode())
    return files


def write_disk_dir(folder: Path, kernel: Path, initrd_size: int, cmdline: str, *, timeout: int = 0) -> list[Path]:
    """A folder for --disk-from: a copy of the kernel, a sparse synthetic initrd of initrd_size bytes (the
    same marker-then-zeros content as --initrd-size) and a grub.cfg with linux, initrd and boot."""
    folder.mkdir(parents=True, exist_ok=True)
    # Each file whole or not at all (a later --disk-from trusts the folder), grub.cfg last.
    with atomic_open(folder / KERNEL_NAME) as f, open(kernel, "rb") as src:
        shutil.copyfileobj(src, f)
    with atomic_open(folder / INITRD_NAME) as f:
        f.write(SYNTHETIC_INITRD_MARKER[:initrd_size])
        f.truncate(initrd_size)  # sparse: a 1 GiB initrd costs no disk space
    with atomic_open(folder / "grub.cfg") as f:
        f.write(grub_cfg_text(KERNEL_NAME, INITRD_NAME if initrd_size else None, cmdline, timeout=timeout).encode())
    return [folder / KERNEL_NAME, folder / INITRD_NAME, folder / "grub.cfg"]


def initrd_source(size: int) -> Source:
    return InitrdSource(size)


class GrubBoot:
    def __init__(self, machine: UefiCore, config: GrubBootConfig):
        self.m = machine
        self.config = config
        self.events: list[LoaderEvent] = []
        self.devices: list[BlockDevice] = []
        self.fast_paths: list[str] = []
        self.esp_reads: EspReads | None = None
        self.file_systems: FatFileSystems | None = None

    def attach_image(self, image: DiskImage) -> BlockDevice:
        """boot --disk: the user's image as the disk, read only, its partitions found by PartitionDxe."""
        path = acpi_pci_root() + pci_node(DISK_PCI_DEVICE) + END_NODE
        dev = BlockDevice(self.m, path, image.size - image.size % SECTOR, image.read_padded, None)
        self.devices = [dev, *connect_partitions(self.m, dev)]
        fs = self.file_systems = FatFileSystems(self.m)
        for child in self.devices[1:]:
            fs.attach(child)
        self.m.protocols.path_loaders.append(lambda p: load_from_file_path(self.m, fs, p))
        set_boot_option(self.m.config.variables, 0, "UEFI Misc Device", path)
        return dev

    def attach_disk(self) -> tuple[GptDisk, FatVolume, BlockDevice]:
        files = dict(self.config.files)
        if self.config.shim is not None:  # shim's DEFAULT_LOADER, read from shim's own folder
            upper = {k.upper() for k in files}
            if SHIM_SECOND_STAGE.upper() not in upper:
                files[SHIM_SECOND_STAGE] = self.config.grub_efi
        files = esp_files(files, self.config.shim or self.config.grub_efi)
        esp = attach_esp_disk(self.m, files, self.config.fat_bits, self.config.cluster_bytes)
        self.devices, self.esp_reads, self.file_systems = esp.devices, esp.reads, esp.file_systems
        return esp.disk, esp.volume, esp.devices[0]

    def run(self) -> GrubBootResult:
        image = self.config.image
        if image is not None:
            self.attach_image(image)
            result = GrubBootResult(None, None, self.events, devices=[d.info for d in self.devices], image=image)
        else:
            disk, volume, _dev = self.attach_disk()
            result = GrubBootResult(None, None, self.events, disk, volume, [d.info for d in self.devices])
        result.esp_reads = self.esp_reads
        shim = self.config.shim is not None
        first = SHIM_NAME if shim else DISK_LOADER_NAME if image is not None and image.has_removable_path else \
            "grubx64.efi"
        # An image with no loader at the removable-media path: lazyaccept's GRUB, started as if from there.
        fallback = self.config.grub_efi.read(0, self.config.grub_efi.size) if image is not None else None
        handle = boot_removable_media(self.m, self.devices, self.events, result, first, fallback=fallback)
        if not handle:
            return result
        if shim:
            # shim places GRUB in its own pages and jumps in: the machine names it by its headers, which it copies
            grub = self.config.grub_efi.read(0, self.config.grub_efi.size)
            self.m.placed_names[placed_key(grub[:0x1000])] = "grubx64.efi"
            result.modules = grub_image_modules(parse_pe(bytes(grub), "grubx64.efi"))
        else:
            result.modules = grub_image_modules(self.m.images[handle].pe)
        if self.config.fast_paths and not shim:  # GRUB's functions are found in its loaded image only
            self.fast_paths = install_grub_fast_paths(self.m, handle)
        console = self.m.protocols.console
        for expected, text in self.config.keys:
            if expected:
                console.when(expected, text)
            else:
                console.type_text(text)
        result.grub_handle = handle

        def started(image) -> None:  # noqa: ANN001 - machine.Image
            if has_setup_header(image.pe.data):
                result.setup = parse_setup_header(image.pe.data)
                result.kernel_image = image.name

        self.m.on_start_image.append(started)

        def placed(name: str, base: int, size: int) -> None:
            head = self.m.mem.read(base, SETUP_HEADER_OFFSET + SETUP_HEADER.size, actor=FW)
            if has_setup_header(head):
                result.setup = parse_setup_header(head)
                result.kernel_image = name

        self.m.on_placed_image.append(placed)
        result.stop = self.m.start_image(handle)
        return result


@dataclass
class EspDisk:
    disk: GptDisk
    volume: FatVolume
    devices: list[BlockDevice]  # the disk, then a child per partition
    reads: EspReads
    file_systems: FatFileSystems


def attach_esp_disk(machine: UefiCore, files: dict[str, Source], fat_bits: int = 32,
                    cluster_bytes: int = 32 * 1024) -> EspDisk:
    """What OVMF's drivers make of the boot disk (every disk-booting chain shares it): the GPT disk with the ESP
    built from `files` at PciRoot(0x0)/Pci(0x4,0x0), Block I/O and Disk I/O on it and on a child per partition,
    FatPkg's Simple File System on each FAT partition, LoadImage from a File() path through it, and the Boot####
    option BDS makes for the disk (BootOrder, and BootCurrent as it starts)."""
    disk, volume = build_esp_disk(files, fat_bits=fat_bits, cluster_bytes=cluster_bytes)
    path = acpi_pci_root() + pci_node(DISK_PCI_DEVICE) + END_NODE
    dev = BlockDevice(machine, path, disk.size, disk.read, disk.write)
    devices = [dev, *connect_partitions(machine, dev)]
    reads = EspReads(volume)
    base = disk.partitions[0].first_lba * SECTOR  # build_esp_disk: the volume is partition 1
    dev.read_observers.append(lambda off, n: reads.observe(off - base, n))
    for child in devices[1:]:
        if child.info.partition_number == 1:
            child.read_observers.append(reads.observe)
    fs = FatFileSystems(machine)
    for child in devices[1:]:
        fs.attach(child)
    machine.protocols.path_loaders.append(lambda p: load_from_file_path(machine, fs, p))
    # BmEnumerateBootOptions: a short-form option for the disk, expanded to the removable-media path at boot
    set_boot_option(machine.config.variables, 0, "UEFI Misc Device", path)
    return EspDisk(disk, volume, devices, reads, fs)


def boot_removable_media(machine: UefiCore, devices: list[BlockDevice], events: list[LoaderEvent], result,  # noqa: ANN001
                         name: str, fallback: bytes | None = None) -> int:
    """The Boot Manager's LoadImage of \\EFI\\BOOT\\BOOTX64.EFI on the ESP (UEFI 2.10 3.5.1.1, BmBoot.c
    BmExpandMediaDevicePath): the image handle, or 0 with result.failed set. `fallback`: the image to start as if
    read from there when the ESP has none (boot --disk of an image without a loader)."""
    children = devices[1:]
    esp = next((d for d in children if d.info.type_guid == PART_TYPE_SYSTEM_PART), None)
    esp = esp or next((d for d in children if d.info.type_guid is not None), None)
    if esp is None:
        result.failed = "Boot Manager: the disk has no partition with a file system"
        return 0
    option = esp.info.device_path[:-4] + file_path_node("\\" + GRUB_REMOVABLE_PATH.replace("/", "\\")) + END_NODE
    option_addr = machine.fw_alloc(len(option))
    machine.mem.write(option_addr, option, actor=FW)
    found = machine.protocols.load_image_from_path(option_addr)
    if fallback is not None and found == S.NOT_FOUND:
        events.append(LoaderEvent("\\EFI\\BOOT\\BOOTX64.EFI not on the image: lazyaccept's GRUB instead", S.NOT_FOUND))
        file_path = machine.fw_alloc(len(option) - len(esp.info.device_path) + 4)
        machine.mem.write(file_path, option[len(esp.info.device_path) - 4 :], actor=FW)
        found = fallback, name, esp.handle, file_path
    if not isinstance(found, tuple):
        status = S(found) if isinstance(found, int) else S.NOT_FOUND
        events.append(LoaderEvent("LoadImage of \\EFI\\BOOT\\BOOTX64.EFI", status))
        result.failed = f"Boot Manager: LoadImage of {device_path_text(option)} failed ({status.name})"
        return 0
    data, _name, device, file_path = found
    loaded, handle, buffered = machine.load_boot_option(data, name, device_handle=device, file_path=file_path,
                                                        device_path=option_addr)
    status = S(loaded)
    if not buffered:
        events.append(LoaderEvent("the Boot Manager's buffer of \\EFI\\BOOT\\BOOTX64.EFI", status, len(data)))
        result.failed = boot_buffer_failed(name, len(data), status)
        return 0
    events.append(LoaderEvent("LoadImage of \\EFI\\BOOT\\BOOTX64.EFI", status, len(data)))
    if status != S.SUCCESS:
        result.failed = f"Boot Manager: LoadImage of {name} failed ({status.name})"
        return 0
    return handle


def grub_exported_functions(
    image: bytes | mmap.mmap, names: tuple[str, ...] = ("memmove", "memset")
) -> dict[str, int]:
    """RVAs of functions in GRUB's kernel symbol table, the {name, address, isfunc} records that
    grub_register_exported_symbols registers for modules (the table gensymlist.sh generates): a record is the
    RVA of the NUL-terminated name followed by the RVA of the function (the image is linked at base 0)."""
    out = {}
    for name in names:
        at = image.find(f"grub_{name}\0".encode())
        while at >= 0:
            record = image.find(at.to_bytes(8, "little"))
            if record >= 0 and record % 8 == 0:
                out[name] = int.from_bytes(image[record + 8 : record + 16], "little")
                break
            at = image.find(f"grub_{name}\0".encode(), at + 1)
    return out


def install_grub_fast_paths(machine: UefiCore, handle: int) -> list[str]:
    image = machine.images[handle]
    rvas = grub_exported_functions(image.pe.data)
    return machine.install_fast_paths({k: image.base + v for k, v in rvas.items() if 0 < v < image.pe.size_of_image})


# ======================================================================================= where GRUB looks for grub.cfg
MODULE_INFO_MAGIC = b"mimg"
OBJ_TYPE_ELF, OBJ_TYPE_MEMDISK, OBJ_TYPE_CONFIG, OBJ_TYPE_PREFIX = 0, 1, 2, 3


@dataclass
class GrubImageModules:
    """What grub-mkimage put into a GRUB image besides its kernel."""

    prefix: str | None = None  # -p
    config: str | None = None  # -c, run before normal mode
    memdisk_bytes: int = 0  # -m
    elf_modules: int = 0
    source: str = ""


def grub_image_modules(pe: PeImage) -> GrubImageModules:
    """The records of the image's "mods" section, as include/grub/kernel.h lays them out: a grub_module_info64
    header (magic "mimg", padding, offset of the first record, size of all), then grub_module_header records
    {type, size including the header} of type OBJ_TYPE_ELF, _MEMDISK, _CONFIG, _PREFIX, ..."""
    out = GrubImageModules()
    section = next((x for x in pe.sections if x.name.rstrip("\0") == "mods"), None)
    if section is None:
        out.source = "the image has no mods section"
        return out
    data = pe.data[section.raw_offset : section.raw_offset + section.raw_size]
    if data[:4] != MODULE_INFO_MAGIC:
        out.source = "the mods section does not start with a module info header"
        return out
    pos, end = int.from_bytes(data[8:16], "little"), min(len(data), int.from_bytes(data[16:24], "little"))
    while pos + 8 <= end:
        kind, size = int.from_bytes(data[pos : pos + 4], "little"), int.from_bytes(data[pos + 4 : pos + 8], "little")
        if size < 8:
            break
        body = data[pos + 8 : pos + size]
        if kind == OBJ_TYPE_ELF:
            out.elf_modules += 1
        elif kind == OBJ_TYPE_MEMDISK:
            out.memdisk_bytes += len(body)
        elif kind == OBJ_TYPE_CONFIG:
            out.config = body.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == OBJ_TYPE_PREFIX:
            out.prefix = body.split(b"\0", 1)[0].decode("utf-8", "replace")
        pos += size
    out.source = f"prefix module in the mods section of {pe.source or 'the GRUB image'} (grub-mkimage -p)"
    return out


class EspReads:
    """Which folders and files of the ESP GRUB read, from the guest's Block I/O and Disk I/O requests mapped onto
    the volume that vmm/disk.py laid out. GRUB reads through its disk cache (kern/disk.c), in 32 KiB blocks that
    the volume's cluster-aligned data region keeps within one cluster of the default size. A folder counts as
    read when a request covers its entries (fs/fat.c reads them from the start to the end-of-folder entry), a
    file when one covers its first sector. A name GRUB looks up and does not find leaves no read of its own: the
    folder it was looked up in is the trace; and a lookup served from the cache leaves none at all."""

    def __init__(self, volume: FatVolume):
        self.volume = volume
        extents: list[tuple[int, int, str]] = []
        for path, node in _walk(volume):
            if node.is_dir:
                if node is volume.root and volume.fat_bits == 16:
                    start = volume.root_dir_start * SECTOR
                else:
                    start = _cluster_offset(volume, node.first_cluster)
                extents.append((start, start + len(node.entries), path))
            elif node.source is not None and node.source.size:
                # GRUB reads a file from its start: its first sector, not a neighbour's cache block, is the trace.
                start = _cluster_offset(volume, node.first_cluster)
                extents.append((start, start + min(SECTOR, node.source.size), path))
        extents.sort()
        self.extents = extents
        self.starts = [e[0] for e in extents]
        self.read: dict[str, int] = {}  # path -> bytes of its entries or first sector read, in the order first read

    def observe(self, offset: int, size: int) -> None:
        end = min(offset + size, self.volume.size)
        offset = max(offset, 0)
        k = max(0, bisect.bisect_right(self.starts, offset) - 1)
        while k < len(self.extents) and self.extents[k][0] < end:
            start, stop, path = self.extents[k]
            if stop > offset:
                self.read[path] = self.read.get(path, 0) + min(stop, end) - max(start, offset)
            k += 1

    def dirs_read(self) -> list[str]:
        return [p for p in self.read if self._node(p).is_dir]

    def files_read(self) -> list[str]:
        return [p for p in self.read if (node := self._node(p)) is not None and not node.is_dir]

    def _node(self, path: str):  # noqa: ANN202 - the volume's private node type
        node = self.volume.root
        for part in [p for p in path.split("/") if p]:
            child = node.children.get(part.upper())
            if child is None:
                return None
            node = child
        return node


def _cluster_offset(volume: FatVolume, cluster: int) -> int:
    return (volume.data_start + (cluster - 2) * volume.spc) * SECTOR


def _walk(volume: FatVolume):  # noqa: ANN202 - (path, node) of every folder and file, "/" first
    def walk(node, path: str):  # noqa: ANN001, ANN202
        yield path or "/", node
        for child in node.children.values():
            yield from walk(child, f"{path}/{child.name}")

    yield from walk(volume.root, "")


def _lookup(volume: FatVolume, path: str) -> tuple[str, str | None, str]:
    """GRUB's walk of `path` on FAT (names compared without case, fs/fat.c): (the path as the volume spells it,
    None if it exists else the first missing name, the deepest folder reached)."""
    node, here = volume.root, ""
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        child = node.children.get(part.upper()) if node.is_dir else None
        if child is None or (i < len(parts) - 1 and not child.is_dir):
            return "/".join([here, *parts[i:]]), part, here or "/"
        node, here = child, f"{here}/{child.name}"
    return here, None, "/".join(here.split("/")[:-1]) or "/"


def _split_device(path: str) -> tuple[str | None, str]:
    """'(dev)/p' -> ('dev', '/p'); '/p' -> (None, '/p'), as kern/main.c grub_set_prefix_and_root splits $prefix."""
    if path.startswith("(") and ")" in path:
        device, rest = path[1:].split(")", 1)
        return device, rest or "/"
    return None, path


def config_search(esp_reads: EspReads, modules: GrubImageModules, image_path: str = GRUB_REMOVABLE_PATH) -> dict:
    """Where GRUB looked for its config on the ESP, which grub.cfg files the ESP holds, and how to make it find one.

    Debian's GRUB enters normal mode (normal/main.c grub_cmd_normal) with $fw_path/grub.cfg if that file exists,
    fw_path being the folder of its own image (kern/main.c, from the loaded image's file path), else with
    $prefix/grub.cfg; $prefix is the prefix module of the image, on the boot partition unless it names a device.
    A candidate counts as tried only if this run read the folder where its walk ends; a config counts as used
    only if its bytes were read."""
    volume = esp_reads.volume
    reads = esp_reads.read
    dirs_read = esp_reads.dirs_read()
    fw_path = "/" + "/".join(image_path.split("/")[:-1])
    candidates = [(f"{fw_path}/grub.cfg", "fw_path: the folder of GRUB's image")]
    prefix_path = None
    notes = []
    if modules.prefix is not None:
        device, prefix_path = _split_device(modules.prefix)
        if device is None or device in (",gpt1", ",1"):
            candidates.append((f"{prefix_path.rstrip('/')}/grub.cfg", "$prefix/grub.cfg"))
        else:
            notes.append(f"$prefix names device ({device}), not the ESP")
            prefix_path = None
    if modules.config is not None:
        notes.append("the image's embedded config runs first: " + " ".join(modules.config.split())[:200])
    lookups: list[dict] = []
    used = None
    for wanted, why in candidates:
        if any(x["path"].upper() == wanted.upper() for x in lookups):
            continue
        spelled, missing, reached = _lookup(volume, wanted)
        if reached not in reads:
            continue  # GRUB never listed the folder this walk ends in: it did not look here
        entry = dict(path=spelled, why=why, found=missing is None, read=missing is None and spelled in reads)
        entry["result"] = (
            "read" if entry["read"] else "found, not read" if entry["found"] else f"{reached} has no {missing}"
        )
        lookups.append(entry)
        if entry["read"]:
            used = spelled
            break
    on_disk = [p for p, node in _walk(volume) if not node.is_dir and node.name.lower() == "grub.cfg"]
    out = dict(
        config_paths_tried=[x["path"] for x in lookups],
        config_read=used,
        grub_cfg_on_disk=on_disk,
        config_search=dict(
            prefix=modules.prefix,
            prefix_source=modules.source,
            fw_path=fw_path,
            embedded_config=modules.config,
            memdisk_bytes=modules.memdisk_bytes,
            lookups=lookups,
            dirs_read=dirs_read,
            files_read=esp_reads.files_read(),
            notes=notes,
        ),
        hint=None,
        hint_file=None,
    )
    if used is None:
        target = f"{(prefix_path or fw_path).rstrip('/')}/grub.cfg"
        also = " or DIR/grub.cfg, which lazyaccept also puts there" if target == f"/{GRUB_PREFIX}/grub.cfg" else ""
        where = f"{target} on the ESP (with --disk-from DIR: DIR{target}{also})"
        if on_disk:
            out["hint"] = f"put a grub.cfg at {where} that reads `configfile {on_disk[0]}`, or move {on_disk[0]} there"
            out["hint_file"] = dict(path=target, text=f"configfile {on_disk[0]}\n")
        else:
            out["hint"] = f"put a grub.cfg at {where}; `lazyaccept boot --grub --write-disk-dir DIR` writes one"
            out["hint_file"] = dict(path=target, text=None)
    return out


def explain_no_config(search: dict) -> str:
    """Why GRUB ended at its prompt, when it found no config."""
    looked = [f"{x['path']} ({x['result']})" for x in search["config_search"]["lookups"]]
    tried = "it looked up " + " and ".join(looked) if looked else "it read no folder of the ESP"
    held = search["grub_cfg_on_disk"]
    disk = "the disk's grub.cfg: " + ", ".join(held) if held else "the disk holds no grub.cfg"
    return f"GRUB found no config and stopped at its prompt, as real GRUB does: {tried}; {disk}"


def add_config_search(report, result: GrubBootResult) -> None:  # noqa: ANN001 - boot.BootReport
    """The config search of a GRUB run into report.grub, and why GRUB stopped at its prompt when it found none."""
    if result.esp_reads is None or result.modules is None or report.grub is None:
        return
    search = config_search(result.esp_reads, result.modules)
    report.grub.update(search)
    if search["config_read"] is None and report.outcome in ("waiting-for-input", "loader-failed"):
        report.explanation = "; ".join(x for x in (explain_no_config(search), report.explanation) if x)


# ================================================================================================= reading a run
def grub_errors(console: str) -> list[str]:
    """GRUB's error lines as it prints them (grub_print_error: 'error: <message>.')."""
    return [line.strip() for line in console.splitlines() if line.strip().startswith("error:")]


def failed_allocations(machine: UefiCore) -> list[dict[str, str | int]]:
    """Each failed AllocatePages/AllocatePool: the call, whose it was (`loader`: shim or GRUB, the image says which;
    `stub`; `firmware`) and how many bytes it asked for, as systemd-boot's report gives them."""
    return [
        dict(image=c.image, service=c.name, detail=c.detail, status=_name(c.status), owner=_owner(machine, c.image),
             size_bytes=_bytes_asked(c))
        for c in _failed_allocation_calls(machine)
    ]


def is_stub(machine: UefiCore, image: str) -> bool:
    """Whether a call's image is the kernel's EFI stub: named so by a loader's own PE loader, loaded from a buffer
    with no name of its own (image@...: a loader's LoadImage of the kernel it read), or a loaded image with a Linux
    setup header, or a unified kernel image (systemd-stub, its .linux section inside)."""
    if image.startswith(("linux EFI stub", "image@")):
        return True
    return any(img.name == image and (has_setup_header(img.pe.data) or any(s.name == ".linux" for s in img.pe.sections))
               for img in machine.images.values())


def _owner(machine: UefiCore, image: str) -> str:
    if is_stub(machine, image):
        return "stub"
    loaded = {img.name for img in machine.images.values()}
    if image.split(" (started by ")[0] in ("grubx64.efi", SHIM_NAME) or image in loaded:
        return "loader"
    return "firmware"


def _failed_allocation_calls(machine: UefiCore) -> list[ServiceCall]:
    return [c for c in machine.calls if c.name in ALLOCATION_SERVICES and c.status not in (None, S.SUCCESS)]


def _bytes_asked(call: ServiceCall) -> int:
    """AllocatePages(Type, MemoryType, Pages, Memory) or AllocatePool(PoolType, Size, Buffer), from the call's
    arguments as the binary passed them."""
    if call.name == "AllocatePages" and len(call.args) >= 3:
        return call.args[2] * 4096
    if call.name == "AllocatePool" and len(call.args) >= 2:
        return call.args[1]
    return 0


def explain_failure(machine: UefiCore, grub_handle: int) -> str:
    """Which allocation failed, whose it was, and what GRUB made of it."""
    first = machine.images.get(grub_handle)
    fails = _failed_allocation_calls(machine)
    if not fails:
        return ""
    call = fails[-1]
    size = _bytes_asked(call)
    what = f"{call.name}({call.detail}) -> {_name(call.status)}"
    if call.image == SHIM_NAME:
        return f"shim's allocation failed: {what}"
    if call.image == DISK_LOADER_NAME:
        return f"the disk's own loader (its EFI/BOOT/BOOTX64.EFI) made the failed allocation: {what}, {size} bytes"
    # GRUB is the Boot Manager's image, or one shim placed itself ("grubx64.efi (started by shimx64.efi itself)")
    if call.image.split(" (started by ")[0] in {"grubx64.efi", first.name if first else "grubx64.efi"}:
        if call.name == "AllocatePages" and call.args and call.args[0] & 0xFFFFFFFF == EfiAllocateType.AllocateAddress:
            return (
                f"GRUB's heap could not grow: {what}. GRUB 2.12 grows its heap only inside EfiConventionalMemory "
                "descriptors of GetMemoryMap (grub_efi_mm_add_regions), never asks for unaccepted memory, so the "
                "allocator-level option 1 is never triggered; the request that needed it was GRUB's own copy of "
                "a file (its TPM verifier reads each file whole, kern/verifiers.c)"
            )
        return f"GRUB's allocation failed: {what}"
    if is_stub(machine, call.image) and first is not None and first.name == DISK_LOADER_NAME:
        return f"the stub's allocation failed: {what} ({size / (1 << 20):.0f} MiB)"
    if is_stub(machine, call.image):
        return (
            f"the stub's allocation failed: {what} ({size / (1 << 20):.0f} MiB, the initrd buffer it asks for after "
            "GRUB's LoadFile2 size probe); the stub exits with the status, which Debian's GRUB (its own PE loader, "
            "peimage) prints as 'Application failed, r = N' and 'error: image not loaded.' (Debian's GRUB 2.14, and "
            "upstream GRUB 2.12 which uses StartImage, as 'start_image() returned 0x...')"
        )
    return f"{call.image}: {what}"


def _name(status: int | None) -> str:
    try:
        return S(status).name if status is not None else "-"
    except ValueError:
        return f"{status:#x}"


def disk_summary(result: GrubBootResult) -> dict:
    """report.grub.esp: the disk lazyaccept built, or the user's image (boot --disk)."""
    if result.image is not None:
        devices = [dict(path=device_path_text(d.device_path), reads=d.reads, bytes_read=d.bytes_read)
                   for d in result.devices]
        return {**result.image.summary(), "devices": devices}
    assert result.disk is not None and result.volume is not None
    return esp_summary(result.disk, result.volume, result.devices)


def esp_summary(disk: GptDisk, volume: FatVolume, devices: list[BlockDeviceInfo]) -> dict:
    return {
        "disk_bytes": disk.size,
        "fat": f"FAT{volume.fat_bits}",
        "cluster_bytes": volume.cluster_bytes,
        "files": {path: extent[1] for path in _all_files(volume) if (extent := volume.file_extent(path))},
        "devices": [
            {
                "path": device_path_text(d.device_path),
                "reads": d.reads,
                "bytes_read": d.bytes_read,
            }
            for d in devices
        ],
        "grub_cfg": f"/{GRUB_PREFIX}/grub.cfg",
    }


def _all_files(volume: FatVolume) -> list[str]:
    out = []

    def walk(node, prefix: str) -> None:  # noqa: ANN001 - the volume's private node type
        for child in node.children.values():
            path = f"{prefix}{child.name}"
            if child.is_dir:
                walk(child, path + "/")
            else:
                out.append(path)

    walk(volume.root, "")
    return out


__all__ = ["GrubBoot", "GrubBootConfig", "GrubBootResult", "HostFile", "synthetic_esp", "write_disk_dir"]
