"""QEMU direct boot (-kernel/-initrd/-append) as OVMF does it, with the loader-level option 2.

OVMF (OvmfPkg/QemuKernelLoaderFsDxe, GenericQemuLoadImageLib):
- at DXE time each fw_cfg blob (kernel, initrd) is copied into an AllocatePool(EfiBootServicesData) buffer
  (`Blob->Data = AllocatePool (Blob->Size)`); a failed allocation fails the driver, and no kernel boots;
- the initrd is served through EFI_LOAD_FILE2_PROTOCOL on the LINUX_EFI_INITRD_MEDIA device path, copying
  from that buffer into whatever buffer the stub allocated, so an initrd needs twice its size in accepted memory;
- BDS loads the kernel with LoadImage from the blob and sets its LoadOptions to the command line with
  "initrd=initrd" when there is an initrd (appended or prefixed: the edk2 profile's), then StartImage.

Option 2 here: when the loader's own copy fails with EFI_OUT_OF_RESOURCES it accepts memory and retries, and it
accepts ahead for the unmodified stub: before StartImage a slot of the kernel's init_size (from the setup
header) that the stub will find as conventional memory, and on LoadFile2's size probe the initrd's size.
A documented alternative (`stream_initrd`) keeps no firmware copy and streams the initrd from the host.

The loader drives only LoaderServices (services.py), so the fast model (advise, compare) runs these same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyaccept.firmware.dxe.pool import POOL_OVERHEAD
from lazyaccept.firmware.loaders.services import (
    BLOB_CHUNK,
    BlobReader,
    KernelSizes,
    LoaderServices,
    SetupHeader,
    parse_setup_header,
)
from lazyaccept.firmware.profiles import DEFAULT_PROFILE, Edk2Profile
from lazyaccept.records import Actor, StopReason
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.units import PAGE_2M, MiB, align_up

SYNTHETIC_INITRD_MARKER = b"070701lazyaccept-synthetic-initrd"
OPTION2_ACTOR = Actor.LOADER_OPTION2
_ZEROS = bytes(BLOB_CHUNK)  # calloc'd: a synthetic initrd's zeros cost no host memory until read


@dataclass
class InitrdSource:
    """An initrd from a file's bytes, or `size` synthetic bytes (zeros after a small marker)."""

    size: int
    data: bytes | None = None
    name: str = "initrd"

    def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        marker = SYNTHETIC_INITRD_MARKER
        if offset >= len(marker):
            return bytes(length)
        out = bytearray(length)
        if offset < len(marker):
            n = min(len(marker) - offset, length)
            out[:n] = marker[offset : offset + n]
        return bytes(out)

    def view(self, offset: int, length: int) -> memoryview:
        """What read gives, without a copy: a view of the file's bytes, or of shared zeros past the marker."""
        if self.data is not None:
            return memoryview(self.data)[offset : offset + length]
        if offset >= len(SYNTHETIC_INITRD_MARKER) and length <= len(_ZEROS):
            return memoryview(_ZEROS)[:length]
        return memoryview(self.read(offset, length))


@dataclass
class DirectBootConfig:
    kernel: bytes | KernelSizes  # sizes only: the fast model
    kernel_name: str = "vmlinuz"
    initrd: InitrdSource | None = None
    cmdline: str = ""
    option2: bool = False  # accept and retry the loader's own copies, and accept ahead for the stub
    stream_initrd: bool = False  # no firmware copy of the initrd: LoadFile2 reads it from the host
    edk2_profile: Edk2Profile = DEFAULT_PROFILE  # X86QemuLoadImageLib's LoadOptions differ by release


@dataclass
class LoaderEvent:
    what: str
    status: int
    size: int = 0
    address: int = 0
    accepted_bytes: int = 0


@dataclass
class DirectBootResult:
    stop: StopReason | None
    failed: str | None = None  # what failed before the kernel could start, in the firmware's words
    events: list[LoaderEvent] = field(default_factory=list)
    setup: SetupHeader | None = None  # None for a kernel given by its sizes
    kernel_handle: int = 0
    load_options: str = ""
    failed_step: str = ""  # "kernel blob", "initrd blob" or "kernel image" when `failed`


class QemuDirectBoot:
    def __init__(self, services: LoaderServices, config: DirectBootConfig):
        self.fw = services
        self.config = config
        self.events: list[LoaderEvent] = []
        self.setup: SetupHeader | None = None

    # ----------------------------------------------------------------- DXE time: QemuKernelLoaderFsDxe
    def _copy_blob(self, what: str, size: int, read: BlobReader | None) -> int:
        """AllocatePool a firmware buffer for a fw_cfg blob and copy the blob in; 0 on failure."""
        dxe = self.fw.dxe

        def attempt() -> tuple[int, int]:
            return dxe.allocate_pool(M.EfiBootServicesData, size)

        before = dxe.acceptor.accepted_bytes(OPTION2_ACTOR)
        if self.config.option2:
            # what the retry needs is the pool's pages: the blob and the pool header and tail (an exact `size`
            # left the allocation short by those bytes whenever the page below the accepted range was in use)
            status, addr = dxe.acceptor.accept_and_retry(attempt, size + POOL_OVERHEAD, actor=OPTION2_ACTOR)
        else:
            status, addr = attempt()
        accepted = dxe.acceptor.accepted_bytes(OPTION2_ACTOR) - before
        self.events.append(LoaderEvent(f"AllocatePool for the {what} blob", status, size, addr, accepted))
        if status != S.SUCCESS:
            return 0
        self.fw.write_blob(addr, size, read)
        return addr

    def _install_initrd(self) -> bool:
        initrd = self.config.initrd
        if initrd is None:
            return True
        on_probe = self._accept_ahead_initrd if self.config.option2 else None
        if self.config.stream_initrd:
            self.fw.offer_initrd(initrd.size, initrd.view, on_probe)
            return True
        blob = self._copy_blob("initrd", initrd.size, initrd.view)
        if not blob:
            return False
        self.fw.offer_initrd(initrd.size, blob, on_probe)
        return True

    def _accept_ahead_initrd(self, size: int) -> None:
        outcome = self.fw.dxe.acceptor.accept_for_loader(size, actor=OPTION2_ACTOR)
        self.events.append(
            LoaderEvent(
                "accept ahead for the stub's initrd buffer",
                outcome.status,
                size,
                outcome.start or 0,
                outcome.accepted_bytes,
            )
        )

    # ----------------------------------------------------------------- BDS: GenericQemuLoadImageLib
    def run(self) -> DirectBootResult:
        cfg = self.config
        kernel = cfg.kernel
        read: BlobReader | None = None
        if isinstance(kernel, KernelSizes):
            init_size, kernel_size = kernel.init_size, kernel.file_bytes
        else:
            self.setup = parse_setup_header(kernel)
            init_size, kernel_size = self.setup.init_size, len(kernel)
            view = memoryview(kernel)

            def read(off: int, n: int) -> memoryview:
                return view[off : off + n]
        kernel_blob = self._copy_blob("kernel", kernel_size, read)
        if not kernel_blob:
            return self._failed(
                "kernel blob", "QemuKernelLoaderFsDxe: no memory for the kernel blob (EFI_OUT_OF_RESOURCES)"
            )
        if not self._install_initrd():
            return self._failed(
                "initrd blob",
                f"QemuKernelLoaderFsDxe: AllocatePool of {cfg.initrd.size if cfg.initrd else 0:#x} bytes for the "
                "initrd blob failed "
                "(EFI_OUT_OF_RESOURCES): the firmware's copy of the initrd does not fit in accepted memory",
            )
        options = cfg.edk2_profile.load_options(cfg.cmdline, cfg.initrd is not None)
        status, handle = self.fw.load_image(kernel, kernel_blob, cfg.kernel_name, options)
        self.events.append(LoaderEvent("LoadImage of the kernel", status, kernel_size))
        if status != S.SUCCESS:
            return self._failed("kernel image", f"LoadImage of the kernel failed ({S(status).name})")
        if cfg.option2:
            self._accept_ahead_kernel(init_size)
        stop = self.fw.start_image(handle)
        return DirectBootResult(stop, None, self.events, self.setup, handle, options)

    def _accept_ahead_kernel(self, init_size: int) -> None:
        """Make sure a 2 MiB aligned slot of init_size at or above 16 MiB is conventional memory."""
        need = align_up(init_size, PAGE_2M)
        if self._largest_kernel_slot() >= need:
            self.events.append(LoaderEvent("kernel slot already free", S.SUCCESS, need))
            return
        outcome = self.fw.dxe.acceptor.accept_for_loader(need + PAGE_2M, actor=OPTION2_ACTOR)
        self.events.append(
            LoaderEvent(
                "accept ahead for the kernel slot", outcome.status, need, outcome.start or 0, outcome.accepted_bytes
            )
        )

    def _largest_kernel_slot(self) -> int:
        best = 0
        for s, e, entry in self.fw.dxe.pages.runs():
            if entry.type == M.EfiConventionalMemory:
                lo = max(align_up(s, PAGE_2M), 16 * MiB)
                best = max(best, e - lo)
        return best

    def _failed(self, step: str, why: str) -> DirectBootResult:
        return DirectBootResult(None, why, self.events, self.setup, failed_step=step)
