"""The loaders' boot-services interface (firmware/loaders/services.py) on the fast model: the DXE memory engine
as it is, blobs known by their sizes, and StartImage running the Linux 6.12 stub model. So advise and compare
boot through the same QemuDirectBoot as real binaries do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lazyaccept.firmware.dxe.exit import DxeCore
from lazyaccept.firmware.dxe.image import image_pages
from lazyaccept.firmware.loaders.services import BlobReader, KernelSizes
from lazyaccept.guest.kernel_image import kernel_sizes
from lazyaccept.guest.stub_model import StubConfig, StubResult, run_stub
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec.efi import EfiAllocateType as A
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S


class ModelLoaderServices:
    """LoaderServices on a DxeCore; `stub` configures the stub model that StartImage runs (its kernel and
    initrd sizes come from what the loader loaded and offered)."""

    def __init__(self, dxe: DxeCore, stub: StubConfig | None = None):
        self._dxe = dxe
        self.stub_config = stub or StubConfig()
        self.kernels: dict[int, KernelSizes] = {}
        self.load_options: dict[int, str] = {}
        self.initrd_size = 0
        self.on_probe: Callable[[int], None] | None = None
        self.stub: StubResult | None = None  # the stub model's result once an image was started

    @property
    def dxe(self) -> DxeCore:
        return self._dxe

    def _charge_copy(self, size: int) -> None:
        tdx = self._dxe.tdx
        if tdx is not None:
            tdx.charge(0, tdx.profile.bytes_ns(size, tdx.profile.copy_bytes_per_s))

    def write_blob(self, address: int, size: int, read: BlobReader | None) -> None:
        # No bytes move (the model has none): the copy costs its time only.
        self._charge_copy(size)

    def load_image(self, kernel: bytes | KernelSizes, blob: int, name: str, load_options: str) -> tuple[int, int]:
        sizes = kernel if isinstance(kernel, KernelSizes) else kernel_sizes(kernel)
        pages = image_pages(sizes.image_bytes, sizes.section_alignment)
        status, base = self._dxe.allocate_pages(A.AllocateAnyPages, M.EfiLoaderCode, pages)
        if status != S.SUCCESS:
            return status, 0
        self._charge_copy(sizes.image_bytes)
        self.kernels[base] = sizes  # the image's base is its handle
        self.load_options[base] = load_options
        return S.SUCCESS, base

    def offer_initrd(self, size: int, source: int | BlobReader, on_probe: Callable[[int], None] | None) -> None:
        self.initrd_size, self.on_probe = size, on_probe

    def _probe_initrd(self) -> int:
        if self.on_probe is not None:
            self.on_probe(self.initrd_size)
        return self.initrd_size

    def start_image(self, handle: int) -> StopReason:
        config = replace(
            self.stub_config,
            kernel_alloc_bytes=self.kernels[handle].stub_alloc_bytes,
            initrd_bytes=self.initrd_size,
            cmdline_bytes=len(self.load_options[handle].encode()) + 1,  # efi_convert_cmdline's ASCII copy
            load_file2=self._probe_initrd,
        )
        self.stub = run_stub(self._dxe, config)
        if self.stub.ok:
            return StopReason(StopKind.KERNEL, self.stub.message)
        return StopReason(StopKind.EXIT, self.stub.message)  # the stub returns to the firmware
