"""Booting from a disk through GRUB, as OVMF's Boot Manager does with no boot options set: the default boot
path of removable media, \\EFI\\BOOT\\BOOTX64.EFI on the EFI system partition (UEFI 2.10 3.5.1.1; edk2
BmBoot.c BmExpandMediaDevicePath), loaded with LoadImage from that device path and started.

The disk is a virtio-blk-like device at PciRoot(0x0)/Pci(0x4,0x0) holding a GPT image that lazyaccept builds
from a folder (vmm/disk.py), with Block I/O and Disk I/O on the disk and on a child per partition
(cpu/blockio.py). GRUB then does everything itself: finds its root from the LoadedImage DeviceHandle, reads
$prefix/grub.cfg with its own FAT and GPT drivers, loads the kernel and starts its EFI stub with
LoadImage/StartImage, and serves the initrd through its own LoadFile2 (grub-core/loader/efi/linux.c).
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lazyaccept.cpu.backend import StopReason
from lazyaccept.cpu.blockio import (
    BlockDevice,
    BlockDeviceInfo,
    acpi_pci_root,
    connect_partitions,
    file_path_node,
    load_from_device_path,
    pci_node,
    split_nodes,
)
from lazyaccept.cpu.machine import EfiMachine
from lazyaccept.cpu.protocols import END_NODE, FW
from lazyaccept.firmware.efi import EfiStatus as S
from lazyaccept.firmware.loaders.direct_boot import (
    SYNTHETIC_INITRD_MARKER,
    InitrdSource,
    LoaderEvent,
    SetupHeader,
    parse_setup_header,
)
from lazyaccept.vmm.disk import (
    GRUB_PREFIX,
    GRUB_REMOVABLE_PATH,
    BytesSource,
    FatVolume,
    GptDisk,
    HostFile,
    Source,
    build_esp_disk,
    esp_files,
    grub_cfg_text,
)

DISK_PCI_DEVICE = 4  # where QEMU's q35 puts the first virtio-blk disk without an explicit addr
KERNEL_NAME, INITRD_NAME = "vmlinuz", "initrd.img"
ALLOCATION_SERVICES = ("AllocatePages", "AllocatePool")


@dataclass
class GrubBootConfig:
    grub_efi: Source
    files: dict[str, Source]  # the ESP's files, before GRUB is added at the removable-media path
    fat_bits: int = 32
    cluster_bytes: int = 32 * 1024
    keys: list[tuple[str, str]] = field(default_factory=list)  # (text to wait for, or "", keys to type)
    fast_paths: bool = True  # run GRUB's byte-loop memmove/memset natively (cpu/unicorn_io.py)


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
    shutil.copyfile(kernel, folder / KERNEL_NAME)
    with open(folder / INITRD_NAME, "wb") as f:
        f.write(SYNTHETIC_INITRD_MARKER[:initrd_size])
        f.truncate(initrd_size)  # sparse: a 1 GiB initrd costs no disk space
    (folder / "grub.cfg").write_text(
        grub_cfg_text(KERNEL_NAME, INITRD_NAME if initrd_size else None, cmdline, timeout=timeout)
    )
    return [folder / KERNEL_NAME, folder / INITRD_NAME, folder / "grub.cfg"]


def initrd_source(size: int) -> Source:
    return InitrdSource(size)


class GrubBoot:
    def __init__(self, machine: EfiMachine, config: GrubBootConfig):
        self.m = machine
        self.config = config
        self.events: list[LoaderEvent] = []
        self.devices: list[BlockDevice] = []
        self.fast_paths: list[str] = []

    def attach_disk(self) -> tuple[GptDisk, FatVolume, BlockDevice]:
        files = esp_files(self.config.files, self.config.grub_efi)
        disk, volume = build_esp_disk(files, fat_bits=self.config.fat_bits, cluster_bytes=self.config.cluster_bytes)
        path = acpi_pci_root() + pci_node(DISK_PCI_DEVICE) + END_NODE
        dev = BlockDevice(self.m, path, disk.size, disk.read, disk.write)
        self.devices = [dev, *connect_partitions(self.m, dev)]
        self.m.protocols.path_loaders.append(lambda p: load_from_device_path(self.m, self.devices, p))
        return disk, volume, dev

    def run(self) -> GrubBootResult:
        disk, volume, _dev = self.attach_disk()
        result = GrubBootResult(None, None, self.events, disk, volume, [d.info for d in self.devices])
        esp = next((d for d in self.devices[1:] if d.info.type_guid is not None), None)
        if esp is None:
            result.failed = "Boot Manager: the disk has no partition with a file system"
            return result
        # The boot option of removable media: the ESP's device path and File(\EFI\BOOT\BOOTX64.EFI).
        option = esp.info.device_path[:-4] + file_path_node("\\" + GRUB_REMOVABLE_PATH.replace("/", "\\")) + END_NODE
        option_addr = self.m.fw_alloc(len(option))
        self.m.mem.write(option_addr, option, actor=FW)
        found = self.m.protocols.load_image_from_path(option_addr)
        if not isinstance(found, tuple):
            status = S(found) if isinstance(found, int) else S.NOT_FOUND
            self.events.append(LoaderEvent("LoadImage of \\EFI\\BOOT\\BOOTX64.EFI", status))
            result.failed = f"Boot Manager: LoadImage of {device_path_text(option)} failed ({status.name})"
            return result
        data, name, device, file_path = found
        status, handle = self.m.load_image(
            data, "grubx64.efi", device_handle=device, file_path=file_path, device_path=option_addr
        )
        self.events.append(LoaderEvent("LoadImage of \\EFI\\BOOT\\BOOTX64.EFI", status, len(data)))
        if status != S.SUCCESS:
            result.failed = f"Boot Manager: LoadImage of {name} failed ({S(status).name})"
            return result
        if self.config.fast_paths:
            self.fast_paths = install_grub_fast_paths(self.m, handle)
        console = self.m.protocols.console
        for expected, text in self.config.keys:
            if expected:
                console.when(expected, text)
            else:
                console.type_text(text)
        result.grub_handle = handle

        def started(image) -> None:  # noqa: ANN001 - machine.Image
            if image.pe.data[0x202:0x206] == b"HdrS":
                result.setup = parse_setup_header(image.pe.data)
                result.kernel_image = image.name

        self.m.on_start_image.append(started)

        def placed(name: str, base: int, size: int) -> None:
            head = self.m.mem.read(base, 0x268, actor=FW)
            if head[0x202:0x206] == b"HdrS":
                result.setup = parse_setup_header(head)
                result.kernel_image = name

        self.m.on_placed_image.append(placed)
        result.stop = self.m.start_image(handle)
        return result


def grub_exported_functions(image: bytes, names: tuple[str, ...] = ("memmove", "memset")) -> dict[str, int]:
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


def install_grub_fast_paths(machine: EfiMachine, handle: int) -> list[str]:
    from lazyaccept.cpu.unicorn_io import install_fast_paths

    image = machine.images[handle]
    rvas = grub_exported_functions(image.pe.data)
    return install_fast_paths(machine, {k: image.base + v for k, v in rvas.items() if 0 < v < image.pe.size_of_image})


# ================================================================================================= reading a run
def grub_errors(console: str) -> list[str]:
    """GRUB's error lines as it prints them (grub_print_error: 'error: <message>.')."""
    return [line.strip() for line in console.splitlines() if line.strip().startswith("error:")]


def failed_allocations(machine: EfiMachine) -> list[dict[str, str]]:
    out = []
    for c in machine.calls:
        if c.name in ALLOCATION_SERVICES and c.status not in (None, S.SUCCESS):
            out.append(dict(image=c.image, service=c.name, detail=c.detail, status=_name(c.status)))
    return out


def _pages_of(detail: str) -> int:
    m = re.search(r"(0x[0-9a-f]+) pages", detail)
    return int(m.group(1), 16) * 4096 if m else 0


def explain_failure(machine: EfiMachine, grub_handle: int) -> str:
    """Which allocation failed, whose it was, and what GRUB made of it."""
    grub = machine.images.get(grub_handle)
    grub_name = grub.name if grub else "grubx64.efi"
    fails = failed_allocations(machine)
    if not fails:
        return ""
    f = fails[-1]
    size = _pages_of(f["detail"])
    what = f"{f['service']}({f['detail']}) -> {f['status']}"
    if f["image"] == grub_name:
        if f["service"] == "AllocatePages" and "Address," in f["detail"] and not f["detail"].startswith("Max"):
            return (
                f"GRUB's heap could not grow: {what}. GRUB 2.12 grows its heap only inside EfiConventionalMemory "
                "descriptors of GetMemoryMap (grub_efi_mm_add_regions), never asks for unaccepted memory, so the "
                "allocator-level option 1 is never triggered; the request that needed it was GRUB's own copy of "
                "a file (its TPM verifier reads each file whole, kern/verifiers.c)"
            )
        return f"GRUB's allocation failed: {what}"
    if f["image"].startswith(("image@", "linux")):
        return (
            f"the stub's allocation failed: {what} ({size / (1 << 20):.0f} MiB, the initrd buffer it asks for after "
            "GRUB's LoadFile2 size probe); the stub exits with the status, which Debian's GRUB (its own PE loader, "
            "peimage) prints as 'Application failed, r = N' and 'error: image not loaded.' (upstream GRUB 2.12, "
            "which uses StartImage, as 'start_image() returned 0x...')"
        )
    return f"{f['image']}: {what}"


def _name(status: int | None) -> str:
    try:
        return S(status).name if status is not None else "-"
    except ValueError:
        return f"{status:#x}"


def device_path_text(path: bytes) -> str:
    """A device path in the UEFI text form, for the node types lazyaccept creates."""
    out = []
    for node in split_nodes(path):
        t, st = node[0], node[1]
        if (t, st) == (2, 1):
            out.append(f"PciRoot({int.from_bytes(node[8:12], 'little'):#x})")
        elif (t, st) == (1, 1):
            out.append(f"Pci({node[5]:#x},{node[4]:#x})")
        elif (t, st) == (4, 1):
            num = int.from_bytes(node[4:8], "little")
            start, size = int.from_bytes(node[8:16], "little"), int.from_bytes(node[16:24], "little")
            sig = uuid.UUID(bytes_le=node[24:40])
            kind = "GPT" if node[40] == 2 else "MBR"
            out.append(f"HD({num},{kind},{str(sig).upper()},{start:#x},{size:#x})")
        elif (t, st) == (4, 4):
            out.append(node[4:].decode("utf-16-le", "replace").rstrip("\0"))
        elif (t, st) == (4, 3):
            out.append(f"VenMedia({uuid.UUID(bytes_le=node[4:20])})")
        elif (t, st) == (1, 3):
            kind, start, end = (int.from_bytes(node[a:b], "little") for a, b in ((4, 8), (8, 16), (16, 24)))
            out.append(f"MemoryMapped({kind:#x},{start:#x},{end:#x})")
        else:
            out.append(f"Path({t},{st})")
    return "/".join(out)


def esp_summary(disk: GptDisk, volume: FatVolume, devices: list[BlockDeviceInfo]) -> dict:
    return {
        "disk_bytes": disk.size,
        "fat": f"FAT{volume.fat_bits}",
        "cluster_bytes": volume.cluster_bytes,
        "files": {path: volume.file_extent(path)[1] for path in _all_files(volume) if volume.file_extent(path)},
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
