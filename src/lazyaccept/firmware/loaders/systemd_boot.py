"""Booting from a disk through systemd-boot, as OVMF's Boot Manager does with no boot options set: the ESP laid
out as `bootctl install` does (systemd 262: EFI/BOOT/BOOTX64.EFI and EFI/systemd/systemd-bootx64.efi, loader/
loader.conf, a Type #1 entry in loader/entries/, the kernel and initrd it names), BOOTX64.EFI loaded from that
path and started (the disk and the Boot Manager are loaders/grub.py's attach_esp_disk and boot_removable_media).

systemd-boot then does everything through the firmware's protocols: it reads loader.conf and the entries through
Simple File System (FatPkg's, firmware/drivers/sfs.py), sets its Loader* variables, reads the kernel itself and
loads it with LoadImage of that buffer and the file's device path, and hands the initrd to the stub through its
own LoadFile2 on the LINUX_EFI_INITRD_MEDIA device path (src/boot/linux.c and initrd.c in systemd 262), after
reading it whole into pages it allocated.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lazyaccept.firmware.dxe.core import UefiCore
from lazyaccept.firmware.loaders.direct_boot import LoaderEvent, parse_setup_header
from lazyaccept.firmware.loaders.grub import (
    GrubBootResult,
    attach_esp_disk,
    boot_removable_media,
    is_stub,
)
from lazyaccept.spec.linux_boot import SETUP_HEADER, SETUP_HEADER_OFFSET, has_setup_header
from lazyaccept.vmm.disk import GRUB_REMOVABLE_PATH, BytesSource, Source

LOADER_GUID = uuid.UUID("4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")  # systemd's loader vendor GUID (BLS, boot.c)
SYSTEMD_BOOT_PATH = "EFI/systemd/systemd-bootx64.efi"
ENTRY_NAME = "lazyaccept.conf"
KERNEL_PATH, INITRD_PATH = "vmlinuz", "initrd.img"


def loader_conf_text(default: str = ENTRY_NAME, timeout: int = 0) -> str:
    return f"timeout {timeout}\ndefault {default}\n"


def entry_text(cmdline: str, initrd: bool, title: str = "Debian GNU/Linux (lazyaccept)") -> str:
    """A Type #1 entry (UAPI.1 Boot Loader Specification) in the shape kernel-install writes."""
    lines = [f"title {title}", f"linux /{KERNEL_PATH}"]
    if initrd:
        lines.append(f"initrd /{INITRD_PATH}")
    lines.append(f"options {cmdline}".rstrip())
    return "\n".join(lines) + "\n"


def systemd_boot_esp(kernel: Source, initrd: Source | None, cmdline: str, systemd_boot: Source,
                     *, timeout: int = 0) -> dict[str, Source]:
    """The ESP of `lazyaccept boot --systemd-boot`: systemd-boot where `bootctl install` puts it, loader.conf, one
    entry, the kernel and the initrd."""
    return {
        GRUB_REMOVABLE_PATH: systemd_boot,
        SYSTEMD_BOOT_PATH: systemd_boot,
        "loader/loader.conf": BytesSource(loader_conf_text(timeout=timeout).encode()),
        "loader/entries.srel": BytesSource(b"type1\n"),
        f"loader/entries/{ENTRY_NAME}": BytesSource(entry_text(cmdline, initrd is not None).encode()),
        KERNEL_PATH: kernel,
        **({INITRD_PATH: initrd} if initrd is not None else {}),
    }


def esp_with_systemd_boot(files: dict[str, Source], systemd_boot: Source) -> dict[str, Source]:
    """A folder's files (--disk-from) with systemd-boot at the removable-media path unless it has a loader there."""
    out = dict(files)
    if GRUB_REMOVABLE_PATH.upper() not in {k.upper() for k in out}:
        out[GRUB_REMOVABLE_PATH] = systemd_boot
    return out


@dataclass
class SystemdBootConfig:
    files: dict[str, Source]  # the whole ESP, systemd-boot included
    fat_bits: int = 32
    cluster_bytes: int = 32 * 1024


class SystemdBoot:
    def __init__(self, machine: UefiCore, config: SystemdBootConfig):
        self.m = machine
        self.config = config
        self.events: list[LoaderEvent] = []

    def run(self) -> GrubBootResult:
        esp = attach_esp_disk(self.m, self.config.files, self.config.fat_bits, self.config.cluster_bytes)
        result = GrubBootResult(None, None, self.events, esp.disk, esp.volume, [d.info for d in esp.devices])
        result.esp_reads = esp.reads
        handle = boot_removable_media(self.m, esp.devices, self.events, result, "systemd-bootx64.efi")
        if not handle:
            return result
        result.grub_handle = handle

        def started(image) -> None:  # noqa: ANN001 - machine.Image
            if has_setup_header(image.pe.data):
                result.setup = parse_setup_header(image.pe.data[: SETUP_HEADER_OFFSET + SETUP_HEADER.size])
                result.kernel_image = image.name

        self.m.on_start_image.append(started)
        result.stop = self.m.start_image(handle)
        return result


def loader_variables(machine: UefiCore) -> list[dict]:
    """The variables the loaders set during the run, as they stand at its end (systemd-boot's Loader* ones, UCS-2
    strings shown as text)."""
    out = []
    seen = set()
    for name, guid in machine.variables_set:
        if (name, guid) in seen:
            continue
        seen.add((name, guid))
        value = machine.config.variables.get((name, guid))
        if value is None:
            continue
        attributes, data = value
        out.append(dict(name=name, guid=str(guid), attributes=attributes, size_bytes=len(data), text=_text(data)))
    return out


def _text(data: bytes) -> str | None:
    """A NUL-terminated UCS-2 string (or several, as LoaderEntries holds) as text, else None."""
    if len(data) < 2 or len(data) % 2 or data[-2:] != b"\0\0":
        return None
    try:
        text = data[:-2].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    if not all(c.isprintable() or c == "\0" for c in text):
        return None
    return text.replace("\0", " | ")


def failed_allocations(machine: UefiCore, loader_handle: int) -> list[dict]:
    """Each failed AllocatePages/AllocatePool: the call, whose it was (loader, stub, firmware) and its size."""
    from lazyaccept.firmware.loaders.grub import _bytes_asked, _failed_allocation_calls, _name

    return [
        dict(image=c.image, service=c.name, detail=c.detail, status=_name(c.status),
             owner=allocation_owner(machine, c.image, loader_handle).split(" ")[0], size_bytes=_bytes_asked(c))
        for c in _failed_allocation_calls(machine)
    ]


def allocation_owner(machine: UefiCore, image: str, loader_handle: int) -> str:
    """Who made a call: the loader (systemd-boot), the kernel's EFI stub, or the firmware."""
    loader = machine.images.get(loader_handle)
    if loader is not None and image == loader.name:
        return "loader (systemd-boot)"
    if is_stub(machine, image):
        return "stub (the kernel's EFI stub)"
    if any(img.name == image for img in machine.images.values()):
        return f"image {image}"
    return "firmware"


def explain_failure(machine: UefiCore, loader_handle: int) -> str:
    """The last failed allocation: whose it was, what and how large."""
    from lazyaccept.firmware.loaders.grub import _bytes_asked, _failed_allocation_calls, _name

    fails = _failed_allocation_calls(machine)
    if not fails:
        return ""
    call = fails[-1]
    who = allocation_owner(machine, call.image, loader_handle)
    size = _bytes_asked(call)
    what = f"{call.name}({call.detail}) -> {_name(call.status)}, {size} bytes ({size / (1 << 20):.1f} MiB)"
    if who.startswith("loader"):
        return (f"systemd-boot's allocation failed: {what}. systemd-boot reads the entry's initrds whole into pages "
                "of its own before it starts the kernel, below 4 GiB first (AllocateMaxAddress 0xffffffff) then "
                "anywhere (AllocateAnyPages); when both fail, its xmalloc_pages assertion halts the machine. It "
                "never asks for unaccepted memory: only an allocator that accepts on demand (option 1) helps")
    if who.startswith("stub"):
        return (f"the stub's allocation failed: {what}, the buffer for the initrd it asks for after systemd-boot's "
                "LoadFile2 size probe")
    return f"{who}: {what}"
