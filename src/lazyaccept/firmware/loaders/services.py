"""The narrow boot-services interface a loader drives, so that each loader is written once: the machine that runs
real binaries answers it here (around UefiCore), the fast model answers it in guest/model_services.py (around
DxeCore and the stub model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.load_file2 import LoadFile2
from lazyaccept.firmware.dxe.core import UefiCore
from lazyaccept.firmware.dxe.exit import DxeCore
from lazyaccept.records import Actor, StopReason
from lazyaccept.units import PAGE_2M, PAGE_4K, MiB, align_up

BlobReader = Callable[[int, int], bytes | memoryview]
LOADER_ACTOR = Actor.QEMU_LOADER
SETUP_HEADER_MAGIC = b"HdrS"
BLOB_CHUNK = 64 * MiB  # host-to-guest copy granularity: the source's slices stay views, nothing is joined


@dataclass(frozen=True)
class SetupHeader:
    """The bzImage setup header fields the loader reads (Documentation/arch/x86/boot.rst)."""

    version: int
    init_size: int
    kernel_alignment: int
    pref_address: int


def parse_setup_header(kernel: bytes) -> SetupHeader:
    if len(kernel) < 0x268 or kernel[0x202:0x206] != SETUP_HEADER_MAGIC:
        raise InputError("kernel has no x86 boot protocol setup header ('HdrS' at 0x202)", field="header", offset=0x202)
    version = int.from_bytes(kernel[0x206:0x208], "little")
    init_size = int.from_bytes(kernel[0x260:0x264], "little")
    if version < 0x20A or init_size == 0:
        raise InputError(f"boot protocol {version:#x} too old (init_size needs 2.10)", field="version", offset=0x206)
    return SetupHeader(
        version, init_size, int.from_bytes(kernel[0x230:0x234], "little"), int.from_bytes(kernel[0x258:0x260], "little")
    )


@dataclass(frozen=True)
class KernelSizes:
    """A kernel known by its sizes only: what the fast model needs to boot it without its bytes."""

    file_bytes: int
    init_size: int  # setup header: the decompressed kernel's footprint
    image_bytes: int  # PE SizeOfImage: LoadImage's pages
    section_alignment: int = PAGE_4K
    alloc_bytes: int = 0  # what the stub allocates for the decompressed kernel; 0: init_size rounded up to 2 MiB

    @property
    def stub_alloc_bytes(self) -> int:
        return self.alloc_bytes or align_up(self.init_size, PAGE_2M)

class LoaderServices(Protocol):
    """What a loader asks of the firmware."""

    @property
    def dxe(self) -> DxeCore:
        """The DXE memory engine: pool, pages, the acceptor."""
        ...

    def write_blob(self, address: int, size: int, read: BlobReader | None) -> None:
        """Copy a host blob into guest memory at `address` (None: the blob is known by its size only)."""
        ...

    def load_image(self, kernel: bytes | KernelSizes, blob: int, name: str, load_options: str) -> tuple[int, int]:
        """LoadImage of the kernel from its copy at `blob`: (status, image handle)."""
        ...

    def offer_initrd(self, size: int, source: int | BlobReader, on_probe: Callable[[int], None] | None) -> None:
        """Serve the initrd through LoadFile2 from the firmware's copy at a guest address, or streamed from the
        host; `on_probe(size)` runs when the stub asks for the size."""
        ...

    def start_image(self, handle: int) -> StopReason:
        """Start the image and say how it ended."""
        ...


class MachineLoaderServices:
    """LoaderServices on the machine that runs real binaries."""

    def __init__(self, machine: UefiCore):
        self.m = machine
        self.load_file2: LoadFile2 | None = None

    @property
    def dxe(self) -> DxeCore:
        return self.m.dxe

    def write_blob(self, address: int, size: int, read: BlobReader | None) -> None:
        if read is None:
            raise InputError("the machine that runs real binaries needs the blob's bytes, not only its size")
        for off in range(0, size, BLOB_CHUNK):
            self.m.mem.write(address + off, read(off, min(BLOB_CHUNK, size - off)), actor=LOADER_ACTOR)
        self.m.tdx.charge(0, self.m.tdx.profile.bytes_ns(size, self.m.tdx.profile.copy_bytes_per_s))

    def load_image(self, kernel: bytes | KernelSizes, blob: int, name: str, load_options: str) -> tuple[int, int]:
        size = kernel.file_bytes if isinstance(kernel, KernelSizes) else len(kernel)
        data = self.m.mem.read(blob, size, actor=LOADER_ACTOR)
        return self.m.load_image(data, name, load_options=load_options)

    def offer_initrd(self, size: int, source: int | BlobReader, on_probe: Callable[[int], None] | None) -> None:
        if not isinstance(source, int):
            self.load_file2 = LoadFile2(self.m, size, source, on_probe)
            return
        mem = self.m.mem

        def read(off: int, n: int) -> bytes:
            return mem.read(source + off, n, actor=LOADER_ACTOR)

        # LoadFile2 copies from the blob guest to guest, view by view (read stays for other callers).
        self.load_file2 = LoadFile2(self.m, size, read, on_probe, source_gpa=source, source_actor=LOADER_ACTOR)

    def start_image(self, handle: int) -> StopReason:
        return self.m.start_image(handle)
