"""Images (edk2 DxeMain Image/): LoadImage from a buffer or a device path, StartImage as a nested call on the
one CPU, Exit and return, and code that a loader placed itself (Debian GRUB's own PE loader)."""

from __future__ import annotations

import mmap
from collections.abc import Generator

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.pe import LAYOUT_MAX, parse_pe
from lazyaccept.firmware.dxe.service_base import (
    FIRMWARE_ACTOR,
    Frame,
    Image,
    Resumed,
    ServiceBase,
    ServiceStop,
    status_name,
)
from lazyaccept.records import StopKind, StopReason
from lazyaccept.spec import guids
from lazyaccept.spec.device_path import device_path_text, file_name
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import EFI_LOADED_IMAGE_PROTOCOL, LOADED_IMAGE_REVISION
from lazyaccept.spec.pe import pe_debug_name
from lazyaccept.units import PAGE_4K, align_up, human_size

STACK_SIZE = 1 << 20
# A service that calls the guest: yields (function, arguments), is sent each call's status, returns its own.
GuestCalls = Generator[tuple[int, tuple[int, ...]], int, int]
MAX_PLACED_IMAGE = 256 << 20  # how far back to look for the PE header of code a loader placed itself
BOOT_MANAGER = "Boot Manager"  # who the call log names for BDS's own calls (BdsDxe, UefiBootManagerLib)
BUFFER_CHUNK = 64 << 20  # the Boot Manager's buffer is written this much at a time (a 1 GiB UKI is never whole)


def placed_key(head: bytes) -> bytes:
    """What names a PE image a loader placed: its PE signature, file header and the optional header up to
    SizeOfImage (entry point, timestamp, sizes), which every loader copies as they are."""
    lfanew = int.from_bytes(head[0x3C:0x40], "little")
    return bytes(head[lfanew : lfanew + 0x58])


def boot_buffer_failed(name: str, size: int, status: int) -> str:
    """Why a boot option failed when the Boot Manager had no buffer for its file (the reason a report gives; OVMF
    itself prints 'BdsDxe: failed to load Boot0000 ...: Not Found', PlatformBmPrintScLib)."""
    return (f"Boot Manager: its buffer of {name} ({human_size(size)}, AllocatePool EfiBootServicesData) failed "
            f"({S(status).name}): no LoadImage, the boot option fails (NOT_FOUND)")


CALLEE_SAVED = ("rbx", "rbp", "rdi", "rsi", "r12", "r13", "r14", "r15", *(f"xmm{i}" for i in range(6, 16)))


def image_pages(size_of_image: int, section_alignment: int) -> int:
    """The pages CoreLoadPeImage allocates for an image: SizeOfImage and room to align its base."""
    align = max(section_alignment, PAGE_4K)
    return align_up(size_of_image, PAGE_4K) // PAGE_4K + (align - PAGE_4K) // PAGE_4K


class ImageServices(ServiceBase):
    def running_image_header(self, size: int = PAGE_4K) -> bytes:
        """The first `size` bytes of the image whose code runs now (a loaded image, or one a loader placed)."""
        for start, end, name in self._placed_code:
            if name is not None and name == self._code_actor:
                return self.mem.read(start, min(size, end - start), actor=FIRMWARE_ACTOR)
        return self.frames[-1].image.pe.data[:size] if self.frames else b""

    def placed_image_at(self, addr: int) -> str | None:
        """The name of a PE image that a loader placed in its own pages and runs at addr, if addr is outside
        every image the firmware loaded: memory of type EfiLoaderCode that starts with an MZ header."""
        for img in self.images.values():
            if img.base <= addr < img.base + img.pe.size_of_image:
                return None
        for start, end, name in self._placed_code:
            if start <= addr < end:
                return name
        run_start, _run_end, entry = self.dxe.pages.map.run_at(addr)
        page_end = align_up(addr + 1, PAGE_4K)
        if entry is None or entry.type != M.EfiLoaderCode:
            self._placed_code.append((max(run_start, page_end - PAGE_4K), page_end, None))
            return None
        # Look back page by page for the PE header of an image covering addr; stop at what is known already.
        page = page_end - PAGE_4K
        while page >= run_start and addr - page < MAX_PLACED_IMAGE:
            if any(s <= page < e for s, e, _ in self._placed_code):
                break
            if self.mem.read(page, 2, actor=FIRMWARE_ACTOR) == b"MZ":
                head = self.mem.read(page, 0x400, actor=FIRMWARE_ACTOR)
                lfanew = int.from_bytes(head[0x3C:0x40], "little")
                if lfanew + 0x58 <= len(head) and head[lfanew : lfanew + 4] == b"PE\0\0":
                    size = int.from_bytes(head[lfanew + 0x50 : lfanew + 0x54], "little")  # SizeOfImage
                    if page + size > addr:
                        kind = ("linux EFI stub" if head[0x202:0x206] == b"HdrS"
                                else self.placed_names.get(placed_key(head), "PE image"))
                        # the code that ran last jumped in: a loaded image, or one placed itself (GRUB under shim)
                        loader = self._code_actor or (self.frames[-1].image.name if self.frames else FIRMWARE_ACTOR)
                        loader = loader.split(" (started by ")[0]
                        name = f"{kind} (started by {loader} itself)"
                        self._placed_code.append((page, page + size, name))
                        for hook in self.on_placed_image:
                            hook(name, page, size)
                        return name
            page -= PAGE_4K
        self._placed_code.append((page + PAGE_4K, page_end, None))  # no image starts in these pages
        return None

    def load_image(
        self,
        data: bytes | mmap.mmap,
        name: str,
        *,
        parent: int = 0,
        device_handle: int = 0,
        file_path: int = 0,
        load_options: str | None = None,
        device_path: int = 0,
    ) -> tuple[int, int]:
        """CoreLoadImage from a buffer: (status, image handle)."""
        try:
            pe = parse_pe(data, name)
        except InputError as exc:
            # edk2's PeCoffLoaderGetImageInfo answers RETURN_UNSUPPORTED for what is not a PE/COFF image.
            status = S.LOAD_ERROR if not data else S.UNSUPPORTED
            self.log("LoadImage", f"{name}: {exc}", status)
            return status, 0
        if pe.subsystem not in (10, 11, 12):
            return S.UNSUPPORTED, 0
        align = max(pe.section_alignment, PAGE_4K)
        pages = image_pages(pe.size_of_image, pe.section_alignment)
        status, raw_base = self.dxe.allocate_pages(0, M.EfiLoaderCode, pages)
        if status != S.SUCCESS:
            return status, 0
        base = align_up(raw_base, align)
        if pe.size_of_image <= LAYOUT_MAX:
            self.mem.write(base, pe.layout(base), actor=FIRMWARE_ACTOR)
        else:  # a unified kernel image with a big initrd: written piece by piece, its zeros left untouched
            self.mem.fill(base, pe.size_of_image, 0, actor=FIRMWARE_ACTOR)
            for rva, piece in pe.pieces():
                self.mem.write(base + rva, piece, actor=FIRMWARE_ACTOR)
            pe.relocate(
                base,
                lambda rva, n: self.mem.read(base + rva, n, actor=FIRMWARE_ACTOR),
                lambda rva, b: self.mem.write(base + rva, b, actor=FIRMWARE_ACTOR),
            )
        self.tdx.charge(0, self.tdx.profile.bytes_ns(pe.size_of_image, self.tdx.profile.copy_bytes_per_s))
        handle = self.new_handle()
        options, options_size = 0, 0
        if load_options is not None:
            encoded = (load_options + "\0").encode("utf-16-le")
            options = self.fw_alloc(len(encoded), M.EfiLoaderData)
            self.mem.write(options, encoded, actor=FIRMWARE_ACTOR)
            options_size = len(encoded)
        li = self.fw_alloc(EFI_LOADED_IMAGE_PROTOCOL.size)
        self.mem.write(
            li,
            EFI_LOADED_IMAGE_PROTOCOL.pack(
                Revision=LOADED_IMAGE_REVISION,
                ParentHandle=parent,
                SystemTable=self.system_table,
                DeviceHandle=device_handle,
                FilePath=file_path,
                LoadOptionsSize=options_size,
                LoadOptions=options,
                ImageBase=base,
                ImageSize=pe.size_of_image,
                ImageCodeType=M.EfiLoaderCode,
                ImageDataType=M.EfiLoaderData,
            ),
            actor=FIRMWARE_ACTOR,
        )
        self.install(handle, guids.LOADED_IMAGE, li)
        if device_path or file_path:  # the whole path it was loaded from (CoreLoadImageCommon)
            self.install(handle, guids.LOADED_IMAGE_DEVICE_PATH, device_path or file_path)
        self.images[handle] = Image(handle, name, pe, base, pages, base + pe.entry_rva, li, raw_base, parent)
        self._update_code_ranges()
        return S.SUCCESS, handle

    def load_boot_option(self, data: bytes | mmap.mmap, name: str, *, device_handle: int, file_path: int,
                         device_path: int) -> tuple[int, int, bool]:
        """The Boot Manager's load of a boot option's file: (status, image handle, whether its buffer was had).
        edk2-stable202502 and -stable202605 alike (MdeModulePkg/Library/UefiBootManagerLib BmBoot.c
        EfiBootManagerBoot, BmLoadOption.c BmGetNextLoadOptionBuffer, MdePkg DxeServicesLib
        GetFileBufferByFilePath): the file, \\EFI\\BOOT\\BOOTX64.EFI for a disk's option too
        (BmExpandMediaDevicePath), is read whole into AllocatePool(EfiBootServicesData, FileSize); then
        LoadImage(TRUE, gImageHandle, FilePath, FileBuffer, FileSize) allocates the image's pages while that buffer
        is held; then FreePool(FileBuffer). No buffer: no LoadImage, and the option fails (EFI_NOT_FOUND)."""
        size = len(data)
        saved_actor, saved_args = self._code_actor, self._call_args
        self._code_actor = BOOT_MANAGER  # its calls are the firmware's, logged as the Boot Manager's
        try:
            status, buffer = self._file_into_pool(data, name)
            if status != S.SUCCESS:
                return status, 0, False
            self._call_args = (1, 0, device_path, buffer, size, 0)
            loaded, handle = self.load_image(data, name, device_handle=device_handle, file_path=file_path,
                                             device_path=device_path)  # the buffer's bytes are data's
            self.log("LoadImage", f"{name}, {size:#x} bytes from the buffer at {buffer:#x}", loaded)
            self._free_file_pool(buffer)
            return loaded, handle, True
        finally:
            self._code_actor, self._call_args = saved_actor, saved_args

    def _file_into_pool(self, data: bytes | mmap.mmap, name: str) -> tuple[int, int]:
        """GetFileBufferByFilePath's read of a whole file (MdePkg DxeServicesLib, edk2-stable202502):
        AllocatePool(EfiBootServicesData, FileSize), then Read, logged as the current actor's."""
        size = len(data)
        self._call_args = (M.EfiBootServicesData, size, 0)
        status, buffer = self.dxe.allocate_pool(M.EfiBootServicesData, size)
        self.log("AllocatePool", f"type {int(M.EfiBootServicesData)}, {size:#x} bytes, {name} read whole"
                 + (f" -> {buffer:#x}" if status == S.SUCCESS else ""), status)  # fmt: skip
        if status != S.SUCCESS:
            return status, 0
        # the Read, piece by piece; the pieces that are zeros (a sparse initrd) stay the zeros fill() wrote
        self.mem.fill(buffer, size, 0, actor=FIRMWARE_ACTOR)
        for off in range(0, size, BUFFER_CHUNK):
            piece = bytes(data[off : off + BUFFER_CHUNK])
            if piece.count(0) != len(piece):
                self.mem.write(buffer + off, piece, actor=FIRMWARE_ACTOR)
        self.tdx.charge(0, self.tdx.profile.bytes_ns(size, self.tdx.profile.copy_bytes_per_s))
        return S.SUCCESS, buffer

    def _free_file_pool(self, buffer: int) -> None:
        self._call_args = (buffer,)
        self.log("FreePool", f"{buffer:#x}", self.dxe.free_pool(buffer))

    def _update_code_ranges(self) -> None:
        if not self.dxe.exited:
            # Nothing stops before ExitBootServices, and loaders run code outside their images (GRUB runs its
            # modules from its heap): no block hooks until then, so that code runs at full JIT speed.
            self.backend.set_code_ranges([(0, 1 << 64)])
            return
        ranges = [(self.thunk_base, self.thunk_end)]
        if self.exit_caller_region is not None:  # the code that exited boot services, wherever it was placed
            ranges.append(self.exit_caller_region)
        ranges += [(img.base, img.base + img.pe.size_of_image) for img in self.images.values()]
        self.backend.set_code_ranges(ranges)

    def start_image(self, handle: int) -> StopReason:
        """Start an image from the firmware (BDS): run until it returns, exits, or the kernel is entered."""
        image = self.images[handle]
        regs: dict[str, int] = {"_toplevel": 1}
        self._enter_image(image, self.stack_top - 0x100, regs, 0, 0)
        stop = self.backend.run(
            image.entry, max_instructions=self.config.max_instructions, timeout_s=self.config.timeout_s
        )
        self.stop_reason = stop
        return stop

    def _enter_image(self, image: Image, rsp: int, saved: dict[str, int], size_ptr: int, data_ptr: int) -> None:
        """Set the CPU up to call image's entry point with a return into the '<image returned>' thunk."""
        rsp = (rsp & ~0xF) - 8  # RSP = 8 mod 16 at entry, as after a call
        self.mem.write(rsp, self._thunk_by_name["<image returned>"].to_bytes(8, "little"), actor=FIRMWARE_ACTOR)
        self.frames.append(Frame(image, saved, rsp, size_ptr, data_ptr))
        image.started = True
        self.backend.set_reg("rsp", rsp)
        self.backend.set_reg("rcx", image.handle)
        self.backend.set_reg("rdx", self.system_table)
        self.backend.set_reg("rip", image.entry)

    def _leave_image(self, status: int) -> None:
        """The running image returned or called Exit: back to whoever started it."""
        frame = self.frames.pop()
        frame.image.exit_status = status
        self.exit_status = status
        if not self.frames or frame.registers.get("_toplevel"):
            raise ServiceStop(StopReason(StopKind.EXIT, f"{frame.image.name} exited with {status_name(status)}"))
        for name, value in frame.registers.items():
            self.backend.set_reg(name, value)
        caller_rsp = frame.return_rsp
        self.backend.set_reg("rip", self.r64(caller_rsp))
        self.backend.set_reg("rsp", caller_rsp + 8)
        self.backend.set_reg("rax", status)
        raise Resumed()

    def bs_LoadImage(self, boot_policy: int, parent: int, path: int, source: int, size: int, handle_ptr: int) -> int:
        if not handle_ptr or parent not in self.images:
            return S.INVALID_PARAMETER
        full_path = 0
        if path:  # LoadedImageDevicePath keeps the caller's whole path (CoreLoadImageCommon duplicates it)
            raw = self.read_device_path(path)
            full_path = self.fw_alloc(len(raw))
            self.mem.write(full_path, raw, actor=FIRMWARE_ACTOR)
        if not source:
            if not path:  # CoreLoadImageCommon: no buffer and no FilePath
                self.log("LoadImage", "no device path and no buffer", S.INVALID_PARAMETER)
                return S.INVALID_PARAMETER
            found = self.protocols.load_image_from_path(path)
            if not isinstance(found, tuple):  # no Simple File System gave the file: LoadFile2, then LoadFile
                return self.run_guest_calls(self._load_through_load_file(boot_policy, parent, path, raw, full_path,
                                                                         handle_ptr))
            return self._load_from_file(found, parent, full_path, handle_ptr)
        # From a buffer: DeviceHandle is the handle whose device path is the longest prefix of the path, FilePath
        # what follows it (CoreLoadImageCommon: CoreLocateDevicePath(gEfiDevicePathProtocolGuid)); no handle
        # matches a MemoryMapped() path, so there FilePath is the whole path.
        data, device, file_path = self.read(source, size), 0, full_path
        # Named for the call log: the file the path names (systemd-boot's and GRUB's kernel), else the
        # image's CodeView name once it is loaded (below), else where the buffer was.
        name = (file_name(raw) if path else None) or f"image@{source:#x}"
        if path:
            device, file_path = self._device_of_path(raw, full_path)
        status, handle = self.load_image(
            data, name, parent=parent, device_handle=device, file_path=file_path, device_path=full_path
        )
        if status == S.SUCCESS:
            self.w64(handle_ptr, handle)
            if name.startswith("image@"):
                image = self.images[handle]
                end = image.base + image.pe.size_of_image  # the record's RVA is the image's word: read inside it

                def inside(at: int, n: int) -> bytes | None:
                    return self.mem.read(at, min(n, end - at), actor=FIRMWARE_ACTOR) if image.base <= at < end else None

                image.name = name = pe_debug_name(inside, image.base) or name
        self.log("LoadImage", f"{name}, {len(data):#x} bytes", status)
        return status

    def _load_from_file(self, found: tuple[bytes, str, int, int], parent: int, full_path: int,
                        handle_ptr: int) -> int:
        """LoadImage(FilePath) of a file a Simple File System serves: CoreLoadImageCommon reads it whole with
        GetFileBufferByFilePath into a pool buffer of the DXE core's (its allocation, not the caller's), loads from
        it and frees it (edk2-stable202502 MdeModulePkg/Core/Dxe/Image/Image.c, FHand.FreeBuffer); no buffer:
        EFI_NOT_FOUND."""
        data, name, device, file_path = found
        caller = self._code_actor, self._call_args
        self._code_actor = FIRMWARE_ACTOR
        try:
            status, buffer = self._file_into_pool(data, name)
            if status == S.SUCCESS:
                status, handle = self.load_image(
                    data, name, parent=parent, device_handle=device, file_path=file_path, device_path=full_path
                )
                self._free_file_pool(buffer)
            else:
                status = S.NOT_FOUND
        finally:
            self._code_actor, self._call_args = caller
        if status == S.SUCCESS:
            self.w64(handle_ptr, handle)
        self.log("LoadImage", f"{name}, {len(data):#x} bytes" if buffer else f"{name}: no buffer for the file", status)
        return status

    def _load_through_load_file(self, boot_policy: int, parent: int, path: int, raw: bytes, full_path: int,
                                handle_ptr: int) -> GuestCalls:
        """LoadImage's file from EFI_LOAD_FILE2_PROTOCOL (BootPolicy FALSE only) or EFI_LOAD_FILE_PROTOCOL on the
        handle whose device path is the longest prefix of the path, each asked for the size, then into a pool
        buffer of that size; EFI_NOT_FOUND when neither gives it, whatever they answered (edk2-stable202605
        MdePkg/Library/DxeServicesLib/DxeServicesLib.c GetFileBufferByFilePath, as CoreLoadImageCommon in
        MdeModulePkg/Core/Dxe/Image/Image.c calls it after the Simple File System)."""
        for guid in ([guids.LOAD_FILE2] if not boot_policy else []) + [guids.LOAD_FILE]:
            device, prefix = self.locate_device_path(guid, raw)
            if prefix < 0:
                continue
            this = self.handles[device][guid]
            function, node = self.r64(this), path + prefix
            policy = boot_policy if guid == guids.LOAD_FILE else 0
            size_ptr = self.fw_alloc(8)
            status = yield function, (this, node, policy, size_ptr, 0)
            buffer, allocated = 0, 0
            if status == S.BUFFER_TOO_SMALL:
                allocated = self.r64(size_ptr)
                status, buffer = self.dxe.allocate_pool(M.EfiBootServicesData, allocated)
                if status == S.SUCCESS:
                    status = yield function, (this, node, policy, size_ptr, buffer)
            size = min(self.r64(size_ptr), allocated)  # never read past the buffer, whatever the protocol claims
            self.dxe.free_pool(size_ptr)
            self.log(guids.name_of(guid), f"LoadImage's file from {device_path_text(raw)}: {size:#x} bytes", status)
            if status == S.SUCCESS and buffer:
                data = self.mem.read(buffer, size, actor=FIRMWARE_ACTOR)
                self.dxe.free_pool(buffer)
                name = file_name(raw) or device_path_text(raw[prefix:]) or device_path_text(raw)
                loaded, handle = self.load_image(data, name, parent=parent, device_handle=device,
                                                 file_path=full_path + prefix, device_path=full_path)
                if loaded == S.SUCCESS:
                    self.w64(handle_ptr, handle)
                self.log("LoadImage", f"{name}, {len(data):#x} bytes", loaded)
                return loaded
            if buffer:
                self.dxe.free_pool(buffer)
        self.log("LoadImage", f"from {device_path_text(raw)}", S.NOT_FOUND)
        return S.NOT_FOUND

    def run_guest_calls(self, steps: GuestCalls, value: int | None = None,
                        caller: tuple[int, dict[str, int]] | None = None) -> int:
        """Run a service that calls functions of the guest (a protocol a driver or loader installed): each
        (function, arguments) it yields is called on the one CPU, returning into '<callback returned>', and the
        service goes on with its status; its own status goes back to its caller. A function that is one of the
        firmware's own services is called directly."""
        while True:
            try:
                function, args = steps.send(value)  # type: ignore[arg-type]
            except StopIteration as done:
                if caller is None:
                    return int(done.value)
                rsp, saved = caller
                for reg, v in saved.items():
                    self.backend.set_reg(reg, v)
                self.backend.set_reg("rax", int(done.value))
                self.backend.set_reg("rip", self.r64(rsp))  # the caller's return address, as the thunk's ret
                self.backend.set_reg("rsp", rsp + 8)
                raise Resumed() from None
            if self.thunk_base <= function < self.thunk_end:
                value = self._services[(function - self.thunk_base) // self.thunk_size][1](*args) or S.SUCCESS
                continue
            if caller is None:
                caller = (self.backend.reg("rsp"), {reg: self.backend.reg(reg) for reg in CALLEE_SAVED})
            self._guest_calls.append((steps, caller))
            rsp = ((caller[0] - 0x100) & ~0xF) - 0x38  # the return address, shadow space, a fifth argument
            back = self._thunk_by_name.get("<callback returned>") or self.thunk(
                "<callback returned>", self.svc_callback_returned, 0)  # made once a service first calls the guest
            self.mem.write(rsp, back.to_bytes(8, "little"), actor=FIRMWARE_ACTOR)
            for i, arg in enumerate(args[4:]):
                self.mem.write(rsp + 0x28 + 8 * i, arg.to_bytes(8, "little"), actor=FIRMWARE_ACTOR)
            for reg, arg in zip(("rcx", "rdx", "r8", "r9"), args, strict=False):
                self.backend.set_reg(reg, arg)
            self.backend.set_reg("rsp", rsp)
            self.backend.set_reg("rip", function)
            raise Resumed()

    def svc_callback_returned(self) -> int:
        steps, caller = self._guest_calls.pop()
        return self.run_guest_calls(steps, self.backend.reg("rax"), caller)

    def _device_of_path(self, raw: bytes, full_path: int) -> tuple[int, int]:
        best, best_len = self.locate_device_path(guids.DEVICE_PATH, raw)
        if best_len <= 0:
            return 0, full_path
        return best, full_path + best_len

    def bs_StartImage(self, handle: int, exit_data_size_ptr: int, exit_data_ptr: int) -> int:
        image = self.images.get(handle)
        if image is None or image.started:
            self.log("StartImage", f"{handle:#x}", S.INVALID_PARAMETER)
            return S.INVALID_PARAMETER
        saved = {name: self.backend.reg(name) for name in CALLEE_SAVED}
        rsp = self.backend.reg("rsp")
        self.log("StartImage", image.name, None)
        for hook in self.on_start_image:
            hook(image)
        self._enter_image(image, rsp - 0x80, saved, exit_data_size_ptr, exit_data_ptr)
        self.frames[-1].return_rsp = rsp
        raise Resumed()

    def bs_Exit(self, handle: int, status: int, data_size: int, data: int) -> int:
        if not self.frames or self.frames[-1].image.handle != handle:
            self.log("Exit", f"{handle:#x} is not the running image", S.INVALID_PARAMETER)
            return S.INVALID_PARAMETER
        self.log("Exit", f"{self.frames[-1].image.name}, {status_name(status)}", None)
        self._leave_image(status)
        return S.SUCCESS

    def svc_image_returned(self) -> int:
        status = self.backend.reg("rax")
        self.log("<image returned>", status_name(status), None)
        self._leave_image(status)
        return S.SUCCESS

    def bs_UnloadImage(self, handle: int) -> int:
        image = self.images.get(handle)
        if image is None:
            return S.INVALID_PARAMETER
        if image.started and image.exit_status is None:
            return S.UNSUPPORTED
        del self.images[handle]
        self.handles.pop(handle, None)
        self._update_code_ranges()
        return self.dxe.free_pages(image.alloc_base, image.pages)
