"""EFI_LOAD_FILE2_PROTOCOL on the Linux initrd media device path, as OVMF's QemuKernelLoaderFsDxe installs it
(edk2 Protocol/LoadFile2.h; Linux efi.h LINUX_EFI_INITRD_MEDIA_GUID)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import FW, ProtocolBase, vendor_media_path
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

COPY_CHUNK = 64 << 20  # LoadFile2 writes the initrd in pieces this size (zeros into untouched memory stay free)


class LoadFile2(ProtocolBase):
    """EFI_LOAD_FILE2_PROTOCOL on the LINUX_EFI_INITRD_MEDIA device path, as OVMF's QemuKernelLoaderFsDxe
    installs it: a NULL or small buffer gets EFI_BUFFER_TOO_SMALL and the size; otherwise the initrd is copied."""

    def __init__(
        self,
        machine: UefiCore,
        size: int,
        read: Callable[[int, int], bytes | bytearray | memoryview],
        on_probe: Callable[[int], None] | None = None,
        *,
        source_gpa: int | None = None,
        source_actor: str = FW,
    ):
        """`read(offset, length)` gives the initrd's bytes (any buffer); with `source_gpa` the initrd is the
        firmware's copy at that address in guest memory, read as `source_actor`, and is copied guest to guest."""
        super().__init__(machine)
        self.size = size
        self.read_source = read
        self.on_probe = on_probe
        self.source_gpa = source_gpa
        self.source_actor = source_actor
        self.copies = 0
        self.interface = self.struct("LoadFile2", [("LoadFile", self.load_file, 5)])
        path = vendor_media_path(guids.LINUX_INITRD_MEDIA.bytes_le)
        self.device_path = self.m.fw_alloc(len(path))
        self.m.mem.write(self.device_path, path, actor=FW)
        self.handle = self.m.new_handle()
        self.m.install(self.handle, guids.DEVICE_PATH, self.device_path)
        self.m.install(self.handle, guids.LOAD_FILE2, self.interface, self)

    def load_file(self, this: int, path: int, boot_policy: int, size_ptr: int, buffer: int) -> int:
        if not size_ptr:
            return S.INVALID_PARAMETER
        if boot_policy & 0xFF:
            return S.UNSUPPORTED
        have = self.m.r64(size_ptr)
        if not buffer or have < self.size:
            self.m.w64(size_ptr, self.size)
            if self.on_probe is not None:
                self.on_probe(self.size)
            self.m.log("LoadFile2.LoadFile", f"initrd size probe -> {self.size:#x}", S.BUFFER_TOO_SMALL)
            return S.BUFFER_TOO_SMALL
        if self.source_gpa is not None:
            self.m.mem.copy(
                buffer, self.source_gpa, self.size, actor=self.m.actor, src_actor=self.source_actor, chunk=COPY_CHUNK
            )
        else:
            for off in range(0, self.size, COPY_CHUNK):
                n = min(COPY_CHUNK, self.size - off)
                self.m.mem.write(buffer + off, self.read_source(off, n), actor=self.m.actor)
        self.m.tdx.charge(0, self.m.tdx.profile.bytes_ns(self.size, self.m.tdx.profile.copy_bytes_per_s))
        self.m.w64(size_ptr, self.size)
        self.copies += 1
        self.m.log("LoadFile2.LoadFile", f"initrd {self.size:#x} bytes -> {buffer:#x}", S.SUCCESS)
        return S.SUCCESS
