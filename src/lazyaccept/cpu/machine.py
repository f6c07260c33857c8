"""The EFI machine: real PE32+ binaries running against lazyaccept's firmware services.

It lays the UEFI tables out in guest memory (allocated from the DXE core like any firmware data), points every
service at a thunk that traps into Python, keeps the handle/protocol database, loads and starts images (nested
StartImage by switching contexts on the one CPU), and routes CPUID leaf 0x21, TDCALL and every touch of memory
through the TDX module. Each service call is logged and charged to the virtual clock.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from lazyaccept.cpu import guids
from lazyaccept.cpu.backend import ARG_REGS, THUNK_SIZE, StopReason
from lazyaccept.cpu.memory import EmulatedBacking
from lazyaccept.cpu.pe import PeImage, parse_pe
from lazyaccept.cpu.tables import (
    ACCEPT_MEMORY_SERVICE,
    BOOT_SERVICES,
    BOOT_SERVICES_SIGNATURE,
    DXE_SERVICES,
    DXE_SERVICES_REVISION,
    DXE_SERVICES_SIGNATURE,
    EFI_CONFIGURATION_TABLE,
    EFI_LOADED_IMAGE_PROTOCOL,
    EFI_SYSTEM_TABLE,
    EFI_TABLE_HEADER,
    EFI_TIME,
    LOADED_IMAGE_REVISION,
    RUNTIME_SERVICES,
    RUNTIME_SERVICES_SIGNATURE,
    SYSTEM_TABLE_SIGNATURE,
    TABLE_HEADER_SIZE,
    UEFI_REVISION,
)
from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.exit import BootServicesExited, DxeCore
from lazyaccept.firmware.efi import EfiMemoryType as M
from lazyaccept.firmware.efi import EfiStatus as S
from lazyaccept.tdx.module import TdTerminated, TdxModule
from lazyaccept.units import PAGE_4K, align_up

FIRMWARE_ACTOR = "dxe"
STACK_SIZE = 1 << 20
MAX_CONFIG_TABLES = 64
THUNK_PAGES = 4
TDX_CPUID_LEAF = 0x21
TDX_SIGNATURE = b"IntelTDX    "  # EBX, EDX, ECX
MAX_DEVICE_PATH = 4096
U64 = (1 << 64) - 1
TSC_HZ = 2_000_000_000  # the virtual TSC's nominal rate (a loader calibrates it against Stall)
# Idle guest code (a key poll that finds nothing, a loop reading the TSC) makes virtual time pass, in steps that
# double while nothing else happens, so a sleep or a menu timeout costs few emulated iterations.
IDLE_FIRST_STEP_NS = 100
IDLE_MAX_STEP_NS = 10_000_000
IDLE_SERVICES = frozenset({"ConIn.ReadKeyStroke", "CheckEvent", "BS.CheckEvent"})
# With no scripted keys left and no terminal, a loader idle this long (virtual time) waits for input that
# will never come: the run stops. Longer than GRUB's 10 s "Press any key to continue..." wait.
INPUT_WAIT_LIMIT_NS = 30_000_000_000
MAX_PLACED_IMAGE = 256 << 20  # how far back to look for the PE header of code a loader placed itself


class ServiceStop(Exception):
    """Raised by a service to end the run (the top-level image exited or returned)."""

    def __init__(self, reason: StopReason):
        self.reason = reason


@dataclass
class ServiceCall:
    name: str
    detail: str
    status: int | None
    image: str


@dataclass
class Image:
    handle: int
    name: str
    pe: PeImage
    base: int
    pages: int
    entry: int
    loaded_image: int  # address of its EFI_LOADED_IMAGE_PROTOCOL
    alloc_base: int = 0  # what AllocatePages returned (base is aligned up from it)
    parent: int = 0
    started: bool = False
    exit_status: int | None = None


@dataclass
class Frame:
    """A StartImage in progress: what to restore in the caller when the started image returns or exits."""

    image: Image
    registers: dict[str, int]
    return_rsp: int  # RSP at the StartImage call: it points at the caller's return address
    exit_data_size_ptr: int
    exit_data_ptr: int


@dataclass
class Event:
    type: int
    tpl: int
    notify: int
    context: int
    group: uuid.UUID | None = None
    signaled: bool = False
    timer_period_ns: int = 0
    timer_due_ns: int | None = None


CALLEE_SAVED = ("rbx", "rbp", "rdi", "rsi", "r12", "r13", "r14", "r15", *(f"xmm{i}" for i in range(6, 16)))


@dataclass
class MachineConfig:
    rng_seed: int = 0
    log_calls: bool = True
    timeout_s: float = 600.0
    max_instructions: int = 0
    cc_measurement: bool = True
    memory_attribute_protocol: bool = True
    firmware_vendor: str = "lazyaccept TDVF"
    virtual_tsc: bool = False  # RDTSC reads the virtual clock; idle polling advances it (loaders with timeouts)
    port_io: bool = False  # I/O port reads return all ones: no legacy devices (PIT, RTC) behind them
    tcg2: bool = False  # offer EFI_TCG2_PROTOCOL (a vTPM) besides or instead of CC measurement
    variables: dict[tuple[str, uuid.UUID], tuple[int, bytes]] = field(default_factory=dict)


class EfiMachine:
    def __init__(
        self, tdx: TdxModule, dxe: DxeCore, config: MachineConfig | None = None, backend_factory: Callable | None = None
    ):
        from lazyaccept.cpu.unicorn.backend import UnicornBackend

        self.tdx = tdx
        self.mem = tdx.memory
        self.dxe = dxe
        self.config = config or MachineConfig()
        self.backend = (backend_factory or UnicornBackend)(self)
        self.backing = EmulatedBacking(self.backend, tdx, prior=self.mem.backing)  # type: ignore[arg-type]
        self.mem.backing = self.backing
        self.calls: list[ServiceCall] = []
        self.call_counts: dict[str, int] = {}
        self.console: list[str] = []
        self.handles: dict[int, dict[uuid.UUID, int]] = {}
        self.interfaces: dict[int, object] = {}
        self.config_tables: list[tuple[uuid.UUID, int]] = []
        self.images: dict[int, Image] = {}
        self.frames: list[Frame] = []
        self.events: dict[int, Event] = {}
        self.monotonic = 0
        self.kernel_entry: tuple[int, int] | None = None  # (RIP, RSI) at the jump into the kernel
        self.stop_reason: StopReason | None = None
        self.exit_status: int | None = None  # of the last image that returned or exited
        self.on_after_exit: list[Callable[[], None]] = []
        self.on_start_image: list[Callable[[Image], None]] = []  # a loader's StartImage of another image
        self.on_placed_image: list[Callable[[str, int, int], None]] = []  # (name, base, size): see placed_image_at
        self.idle_streak = 0
        self.last_activity_ns = 0
        self.input_waiting = False  # True once the run stopped because the loader waits for keys
        # Code a loader placed and started itself, without LoadImage (Debian GRUB's own PE loader, peimage):
        # (start, end, name or None) of memory-map runs whose code called a service.
        self._placed_code: list[tuple[int, int, str | None]] = []
        self._code_actor: str | None = None
        self.exit_caller_region: tuple[int, int] | None = None
        self._services: list[tuple[str, Callable[..., int | None], int]] = []
        self._thunk_by_name: dict[str, int] = {}
        self._fw_heap: list[int] = []  # [next, end] of the firmware's own small-object heap
        self._setup()
        if self.config.virtual_tsc or self.config.port_io:
            self.backend.route_io(virtual_tsc=self.config.virtual_tsc, port_io=self.config.port_io)

    # ================================================================= guest memory helpers
    def read(self, addr: int, size: int) -> bytes:
        return self.mem.read(addr, size, actor=self.actor)

    def write(self, addr: int, data: bytes | bytearray) -> None:
        self.mem.write(addr, data, actor=self.actor)

    def r64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def w64(self, addr: int, value: int) -> None:
        self.write(addr, (value & U64).to_bytes(8, "little"))

    def w32(self, addr: int, value: int) -> None:
        self.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read_guid(self, addr: int) -> uuid.UUID:
        return uuid.UUID(bytes_le=self.read(addr, 16))

    def read_str16(self, addr: int, max_chars: int = 4096) -> str:
        out = bytearray()
        while len(out) < 2 * max_chars:
            chunk = self.read(addr + len(out), 64)
            for i in range(0, 64, 2):
                if chunk[i : i + 2] == b"\0\0":
                    return (out + chunk[:i]).decode("utf-16-le", "replace")
            out += chunk
        return out.decode("utf-16-le", "replace")

    @property
    def actor(self) -> str:
        if self._code_actor is not None:
            return self._code_actor
        return self.frames[-1].image.name if self.frames else FIRMWARE_ACTOR

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
                        kind = "linux EFI stub" if head[0x202:0x206] == b"HdrS" else "PE image"
                        loader = self.frames[-1].image.name if self.frames else FIRMWARE_ACTOR
                        name = f"{kind} (started by {loader} itself)"
                        self._placed_code.append((page, page + size, name))
                        for hook in self.on_placed_image:
                            hook(name, page, size)
                        return name
            page -= PAGE_4K
        self._placed_code.append((page + PAGE_4K, page_end, None))  # no image starts in these pages
        return None

    def fw_alloc(self, size: int, memory_type: int = M.EfiBootServicesData) -> int:
        """Firmware-owned data from the DXE core's pool, zeroed."""
        status, addr = self.dxe.allocate_pool(memory_type, size)
        if status != S.SUCCESS:
            raise InputError(f"firmware could not allocate {size} bytes for its tables: {status.name}")
        self.mem.write(addr, bytes(size), actor=FIRMWARE_ACTOR)
        return addr

    # ================================================================= setup
    def _setup(self) -> None:
        status, self.thunk_base = self.dxe.allocate_pages(0, M.EfiBootServicesCode, THUNK_PAGES)
        if status != S.SUCCESS:
            raise InputError("no accepted memory for the firmware's service thunks")
        self.thunk_end = self.thunk_base + THUNK_PAGES * PAGE_4K
        self.mem.write(
            self.thunk_base, self.backend.thunk_code() * (THUNK_PAGES * PAGE_4K // THUNK_SIZE), actor=FIRMWARE_ACTOR
        )
        self.backend.set_thunk_range(self.thunk_base, self.thunk_end)
        self.stack_top = self._alloc_pages(STACK_SIZE // PAGE_4K, M.EfiBootServicesData) + STACK_SIZE
        self.thunk("<image returned>", self.svc_image_returned, 0)
        self._build_tables()

    def _alloc_pages(self, pages: int, memory_type: int) -> int:
        status, addr = self.dxe.allocate_pages(0, memory_type, pages)
        if status != S.SUCCESS:
            raise InputError(f"firmware could not allocate {pages} pages: {status.name}")
        return addr

    def thunk(self, name: str, fn: Callable[..., int | None], nargs: int) -> int:
        index = len(self._services)
        if (index + 1) * THUNK_SIZE > THUNK_PAGES * PAGE_4K:
            raise RuntimeError("out of service thunks")
        self._services.append((name, fn, nargs))
        addr = self.thunk_base + index * THUNK_SIZE
        self._thunk_by_name[name] = addr
        return addr

    def function_table(
        self, prefix: str, entries: list[tuple[str, int]], impl: object, method_prefix: str
    ) -> list[int]:
        out = []
        for name, nargs in entries:
            fn = getattr(impl, method_prefix + name, None)
            out.append(self.thunk(f"{prefix}.{name}", fn or self._unimplemented(f"{prefix}.{name}"), nargs))
        return out

    def _unimplemented(self, name: str) -> Callable[..., int]:
        def service(*_args: int) -> int:
            return S.UNSUPPORTED

        return service

    def _write_table(self, addr: int, signature: int, revision: int, pointers: list[int], extra: bytes = b"") -> int:
        size = TABLE_HEADER_SIZE + 8 * len(pointers) + len(extra)
        body = b"".join(p.to_bytes(8, "little") for p in pointers) + extra
        header = EFI_TABLE_HEADER.pack(Signature=signature, Revision=revision, HeaderSize=size)
        self.mem.write(addr, header + body, actor=FIRMWARE_ACTOR)
        crc = zlib.crc32(self.mem.read(addr, size, actor=FIRMWARE_ACTOR))
        self.mem.write(addr + 16, crc.to_bytes(4, "little"), actor=FIRMWARE_ACTOR)
        return size

    def _build_tables(self) -> None:
        from lazyaccept.cpu import protocols

        bs_entries = list(BOOT_SERVICES) + ([ACCEPT_MEMORY_SERVICE] if self.dxe.policy.option3 else [])
        self.boot_services = self.fw_alloc(TABLE_HEADER_SIZE + 8 * len(bs_entries))
        self._write_table(
            self.boot_services,
            BOOT_SERVICES_SIGNATURE,
            UEFI_REVISION,
            self.function_table("BS", bs_entries, self, "bs_"),
        )
        self.runtime_services = self.fw_alloc(TABLE_HEADER_SIZE + 8 * len(RUNTIME_SERVICES), M.EfiRuntimeServicesData)
        self._write_table(
            self.runtime_services,
            RUNTIME_SERVICES_SIGNATURE,
            UEFI_REVISION,
            self.function_table("RT", RUNTIME_SERVICES, self, "rt_"),
        )
        self.dxe_services = self.fw_alloc(TABLE_HEADER_SIZE + 8 * len(DXE_SERVICES))
        self._write_table(
            self.dxe_services,
            DXE_SERVICES_SIGNATURE,
            DXE_SERVICES_REVISION,
            self.function_table("DS", DXE_SERVICES, self, "ds_"),
        )
        vendor = (self.config.firmware_vendor + "\0").encode("utf-16-le")
        self.vendor = self.fw_alloc(len(vendor), M.EfiRuntimeServicesData)
        self.mem.write(self.vendor, vendor, actor=FIRMWARE_ACTOR)
        self.config_array = self.fw_alloc(EFI_CONFIGURATION_TABLE.size * MAX_CONFIG_TABLES, M.EfiRuntimeServicesData)
        self.system_table = self.fw_alloc(EFI_SYSTEM_TABLE.size, M.EfiRuntimeServicesData)
        self.protocols = protocols.install_platform_protocols(self)
        self.config_tables.append((guids.DXE_SERVICES_TABLE, self.dxe_services))
        self._write_system_table()

    def _write_system_table(self) -> None:
        con = self.protocols.console
        fields = dict(
            FirmwareVendor=self.vendor,
            FirmwareRevision=0x10000,
            ConsoleInHandle=con.handle,
            ConIn=con.conin,
            ConsoleOutHandle=con.handle,
            ConOut=con.conout,
            StandardErrorHandle=con.handle,
            StdErr=con.conout,
            RuntimeServices=self.runtime_services,
            BootServices=0 if self.dxe.exited else self.boot_services,
            NumberOfTableEntries=len(self.config_tables),
            ConfigurationTable=self.config_array,
        )
        if self.dxe.exited:  # CoreExitBootServices clears these in gST
            fields.update(ConsoleInHandle=0, ConIn=0, ConsoleOutHandle=0, ConOut=0, StandardErrorHandle=0, StdErr=0)
        body = EFI_SYSTEM_TABLE.pack(fields)[TABLE_HEADER_SIZE:]
        self._write_table(self.system_table, SYSTEM_TABLE_SIGNATURE, UEFI_REVISION, [], body)
        entries = b"".join(
            EFI_CONFIGURATION_TABLE.pack(VendorGuid=g.bytes_le, VendorTable=p) for g, p in self.config_tables
        )
        self.mem.write(self.config_array, entries, actor=FIRMWARE_ACTOR)

    # ================================================================= handles and protocols
    def new_handle(self) -> int:
        handle = self.fw_alloc(16)
        self.handles[handle] = {}
        return handle

    def install(self, handle: int, guid: uuid.UUID, interface: int, impl: object | None = None) -> None:
        self.handles.setdefault(handle, {})[guid] = interface
        if impl is not None:
            self.interfaces[interface] = impl

    def handles_with(self, guid: uuid.UUID) -> list[int]:
        return [h for h, protos in self.handles.items() if guid in protos]

    def read_device_path(self, addr: int) -> bytes:
        """A device path's bytes up to and including its End node; hostile lengths are refused."""
        out = bytearray()
        while len(out) < MAX_DEVICE_PATH:
            node = self.read(addr + len(out), 4)
            length = int.from_bytes(node[2:4], "little")
            if length < 4:
                raise InputError(f"device path node at {addr + len(out):#x} has length {length}", field="Length")
            out += self.read(addr + len(out), length)
            if node[0] == 0x7F and node[1] == 0xFF:
                return bytes(out)
        raise InputError(f"device path at {addr:#x} has no End node within {MAX_DEVICE_PATH} bytes")

    # ================================================================= images
    def load_image(
        self,
        data: bytes,
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
        pages = align_up(pe.size_of_image, PAGE_4K) // PAGE_4K + (align - PAGE_4K) // PAGE_4K
        status, raw_base = self.dxe.allocate_pages(0, M.EfiLoaderCode, pages)
        if status != S.SUCCESS:
            return status, 0
        base = align_up(raw_base, align)
        image_bytes = pe.layout(base)
        self.mem.write(base, image_bytes, actor=FIRMWARE_ACTOR)
        self.tdx.charge(0, self.tdx.profile.bytes_ns(len(image_bytes), self.tdx.profile.copy_bytes_per_s))
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
            raise ServiceStop(StopReason("exit", f"{frame.image.name} exited with {_status_name(status)}"))
        for name, value in frame.registers.items():
            self.backend.set_reg(name, value)
        caller_rsp = frame.return_rsp
        self.backend.set_reg("rip", self.r64(caller_rsp))
        self.backend.set_reg("rsp", caller_rsp + 8)
        self.backend.set_reg("rax", status)
        raise _Resumed()

    # ================================================================= CpuClient
    def on_service(self, index: int) -> None:
        name, fn, nargs = self._services[index]
        args = [self.backend.reg(r) for r in ARG_REGS[: min(nargs, 4)]]
        if nargs > 4:
            rsp = self.backend.reg("rsp")
            stack = self.backend.read(rsp + 0x28, 8 * (nargs - 4))
            args += [int.from_bytes(stack[i : i + 8], "little") for i in range(0, len(stack), 8)]
        self.call_counts[name] = self.call_counts.get(name, 0) + 1
        self.tdx.charge(0, self.tdx.profile.boot_service_call_ns)
        if self.frames:
            self._code_actor = self.placed_image_at(self.r64(self.backend.reg("rsp")))
        if name not in IDLE_SERVICES:
            self.idle_streak = 0
            self.last_activity_ns = self.tdx.clock_ns(0)
        self._current_call = name
        try:
            status = fn(*args)
        except _Resumed:
            return
        except ServiceStop as stop:
            self.backend.stop(stop.reason)
            return
        except TdTerminated as exc:
            self.log(name, "TD terminated", None)
            self.backend.stop(StopReason("terminated", str(exc.termination), self.backend.reg("rip")))
            return
        except BootServicesExited:
            status = S.UNSUPPORTED
            self.log(name, "called after ExitBootServices", status)
        except InputError as exc:
            status = S.INVALID_PARAMETER
            self.log(name, f"bad argument: {exc}", status)
        self.backend.set_reg("rax", S.SUCCESS if status is None else int(status))

    def on_unmapped(self, gpa: int, size: int, access: str) -> bool:
        if self.backing.map_on_touch(gpa, size):
            return True
        rip = self.backend.reg("rip")
        try:
            self.tdx.check_access(gpa, size, access, actor=self.actor, rip=rip)
        except TdTerminated as exc:
            self.backend.stop(StopReason("terminated", str(exc.termination), rip))
            return False
        # Accepted after all (e.g. beyond what map_on_touch widened): map and retry.
        return self.backing.map_on_touch(gpa, size)

    def on_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
        if leaf == TDX_CPUID_LEAF:
            sig = TDX_SIGNATURE
            return (
                0,
                int.from_bytes(sig[0:4], "little"),
                int.from_bytes(sig[8:12], "little"),
                int.from_bytes(sig[4:8], "little"),
            )
        return None

    def on_tdcall(self) -> None:
        if self.frames:
            self._code_actor = self.placed_image_at(self.backend.reg("rip"))
        leaf = self.backend.reg("rax")
        try:
            out = self.tdx.tdcall(leaf, self.backend.reg("rcx"), vcpu=0, actor=self.actor)
        except TdTerminated as exc:
            self.backend.stop(StopReason("terminated", str(exc.termination), self.backend.reg("rip")))
            return
        for reg, value in out.items():
            self.backend.set_reg(reg, value)
        self.call_counts["TDCALL"] = self.call_counts.get("TDCALL", 0) + 1

    def on_block_outside(self, rip: int) -> bool:
        if not self.dxe.exited:
            return False
        self.kernel_entry = (rip, self.backend.reg("rsi"))
        return True

    def idle(self) -> int:
        """The guest polled and found nothing to do: advance virtual time by the next idle step (returned).
        With a terminal attached the step is waited for in wall time too, so a countdown runs at human speed."""
        step = min(IDLE_FIRST_STEP_NS << min(self.idle_streak, 40), IDLE_MAX_STEP_NS)
        self.idle_streak += 1
        self.tdx.charge(0, step)
        console = self.protocols.console
        if self._terminal_live():
            console.terminal.wait(step / 1e9)  # type: ignore[union-attr]
        elif (
            not console.key_available()
            and self.tdx.clock_ns(0) - self.last_activity_ns > INPUT_WAIT_LIMIT_NS
            and not self.dxe.exited
        ):
            self.input_waiting = True
            self.backend.stop(StopReason("input", "the loader waits for keyboard input and no scripted keys are left"))
        return step

    def _terminal_live(self) -> bool:
        """A person can still type (a terminal whose input has not ended)."""
        terminal = self.protocols.console.terminal
        return terminal is not None and not getattr(terminal, "input_closed", False)

    def on_rdtsc(self) -> int:
        """RDTSC from the virtual clock; each read is a poll that lets a little virtual time pass."""
        value = self.tdx.clock_ns(0) * TSC_HZ // 1_000_000_000
        self.idle()
        return value & U64

    def on_port_in(self, port: int, size: int) -> int:
        """No legacy device answers: the bus floats high. GRUB's PIT probe then fails and it calibrates its TSC
        with Stall (grub-core/kern/i386/tsc_pit.c, efi/tsc.c)."""
        return (1 << (8 * size)) - 1

    def on_port_out(self, port: int, size: int, value: int) -> None:
        return None

    # ================================================================= logging
    def log(self, name: str, detail: str, status: int | None) -> None:
        if self.config.log_calls:
            self.calls.append(ServiceCall(name, detail, status, self.actor))

    # ================================================================= boot services
    def bs_RaiseTPL(self, new_tpl: int) -> int:
        old, self.tpl = getattr(self, "tpl", 4), new_tpl
        return old

    def bs_RestoreTPL(self, old_tpl: int) -> int:
        self.tpl = old_tpl
        return S.SUCCESS

    def bs_AllocatePages(self, alloc_type: int, memory_type: int, pages: int, memory_ptr: int) -> int:
        alloc_type &= 0xFFFFFFFF
        memory_type &= 0xFFFFFFFF
        if not memory_ptr:
            status = S.INVALID_PARAMETER
            self.log("AllocatePages", "Memory NULL", status)
            return status
        requested = self.r64(memory_ptr)
        status, addr = self.dxe.allocate_pages(alloc_type, memory_type, pages, requested)
        if status == S.SUCCESS:
            self.w64(memory_ptr, addr)
        kind = ["AnyPages", "MaxAddress", "Address"][alloc_type] if alloc_type < 3 else str(alloc_type)
        self.log(
            "AllocatePages",
            f"{kind}, type {memory_type}, {pages:#x} pages, in {requested:#x}"
            + (f" -> {addr:#x}" if status == S.SUCCESS else ""),
            status,
        )
        return status

    def bs_FreePages(self, memory: int, pages: int) -> int:
        status = self.dxe.free_pages(memory, pages)
        self.log("FreePages", f"{memory:#x}, {pages:#x} pages", status)
        return status

    def bs_GetMemoryMap(self, size_ptr: int, map_ptr: int, key_ptr: int, desc_size_ptr: int, version_ptr: int) -> int:
        if not size_ptr:
            self.log("GetMemoryMap", "MemoryMapSize NULL", S.INVALID_PARAMETER)
            return S.INVALID_PARAMETER
        have = self.r64(size_ptr)
        result = self.dxe.get_memory_map(have, buffer=bool(map_ptr))
        self.w64(size_ptr, result.memory_map_size)
        if desc_size_ptr:
            self.w64(desc_size_ptr, result.descriptor_size)
        if version_ptr:
            self.w32(version_ptr, result.descriptor_version)
        if result.status == S.SUCCESS:
            self.write(map_ptr, result.pack())
            if key_ptr:
                self.w64(key_ptr, result.map_key)
        self.log("GetMemoryMap", f"size {have} -> {result.memory_map_size}, key {result.map_key}", result.status)
        return result.status

    def bs_AllocatePool(self, pool_type: int, size: int, buffer_ptr: int) -> int:
        status, addr = self.dxe.allocate_pool(pool_type & 0xFFFFFFFF, size, buffer=bool(buffer_ptr))
        if status == S.SUCCESS:
            self.w64(buffer_ptr, addr)
        self.log(
            "AllocatePool",
            f"type {pool_type & 0xFFFFFFFF}, {size:#x} bytes" + (f" -> {addr:#x}" if status == S.SUCCESS else ""),
            status,
        )
        return status

    def bs_FreePool(self, buffer: int) -> int:
        status = self.dxe.free_pool(buffer or None)
        self.log("FreePool", f"{buffer:#x}", status)
        return status

    def bs_ExitBootServices(self, image_handle: int, map_key: int) -> int:
        caller = self.r64(self.backend.reg("rsp"))
        status = self.dxe.exit_boot_services(image_handle, map_key)
        self.log("ExitBootServices", f"key {map_key}", status)
        if status == S.SUCCESS:
            start, end, _ = self.dxe.pages.map.run_at(caller)
            self.exit_caller_region = (start, end)
            self._write_system_table()
            self._update_code_ranges()  # from now on a block outside the images is the jump into the kernel
            for hook in self.on_after_exit:
                hook()
        return status

    def bs_AcceptMemory(self, start: int, size: int) -> int:
        status = self.dxe.accept_memory(start, size)
        self.log("AcceptMemory", f"{start:#x}, {size:#x}", status)
        return status

    def bs_InstallConfigurationTable(self, guid_ptr: int, table: int) -> int:
        if not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        present = any(g == guid for g, _ in self.config_tables)
        if not table and not present:
            status = S.NOT_FOUND
        elif not present and len(self.config_tables) >= MAX_CONFIG_TABLES:
            status = S.OUT_OF_RESOURCES
        else:
            self.config_tables = [(g, p) for g, p in self.config_tables if g != guid]
            if table:
                self.config_tables.append((guid, table))
            self._write_system_table()
            status = S.SUCCESS
        self.log("InstallConfigurationTable", f"{guids.name_of(guid)}, {table:#x}", status)
        return status

    def bs_HandleProtocol(self, handle: int, guid_ptr: int, interface_ptr: int) -> int:
        return self.bs_OpenProtocol(handle, guid_ptr, interface_ptr, 0, 0, 0x2, _name="HandleProtocol")

    def bs_OpenProtocol(
        self,
        handle: int,
        guid_ptr: int,
        interface_ptr: int,
        agent: int,
        controller: int,
        attributes: int,
        _name: str = "OpenProtocol",
    ) -> int:
        if not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if handle not in self.handles:
            status = S.INVALID_PARAMETER
        else:
            interface = self.handles[handle].get(guid)
            status = S.SUCCESS if interface is not None else S.UNSUPPORTED
            if interface is not None and interface_ptr and attributes != 0x4:  # TEST_PROTOCOL writes nothing
                self.w64(interface_ptr, interface)
        self.log(_name, f"{handle:#x}, {guids.name_of(guid)}", status)
        return status

    def bs_CloseProtocol(self, handle: int, guid_ptr: int, agent: int, controller: int) -> int:
        return S.SUCCESS if handle in self.handles else S.INVALID_PARAMETER

    def bs_LocateProtocol(self, guid_ptr: int, registration: int, interface_ptr: int) -> int:
        if not guid_ptr or not interface_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        found = self.handles_with(guid)
        status = S.SUCCESS if found else S.NOT_FOUND
        self.w64(interface_ptr, self.handles[found[0]][guid] if found else 0)
        self.log("LocateProtocol", guids.name_of(guid), status)
        return status

    def _search(self, search_type: int, guid_ptr: int) -> tuple[list[int], str]:
        search_type &= 0xFFFFFFFF
        if search_type == 0:  # AllHandles
            return list(self.handles), "all"
        if search_type == 2 and guid_ptr:  # ByProtocol
            guid = self.read_guid(guid_ptr)
            return self.handles_with(guid), guids.name_of(guid)
        return [], "unsupported search"

    def bs_LocateHandle(self, search_type: int, guid_ptr: int, key: int, size_ptr: int, buffer: int) -> int:
        found, what = self._search(search_type, guid_ptr)
        if not size_ptr:
            return S.INVALID_PARAMETER
        need = 8 * len(found)
        have = self.r64(size_ptr)
        self.w64(size_ptr, need)
        if not found:
            status = S.NOT_FOUND
        elif have < need:
            status = S.BUFFER_TOO_SMALL
        else:
            self.write(buffer, b"".join(h.to_bytes(8, "little") for h in found))
            status = S.SUCCESS
        self.log("LocateHandle", what, status)
        return status

    def bs_LocateHandleBuffer(self, search_type: int, guid_ptr: int, key: int, count_ptr: int, buffer_ptr: int) -> int:
        found, what = self._search(search_type, guid_ptr)
        if not count_ptr or not buffer_ptr:
            return S.INVALID_PARAMETER
        self.w64(count_ptr, len(found))
        if not found:
            self.w64(buffer_ptr, 0)
            status = S.NOT_FOUND
        else:
            status, addr = self.dxe.allocate_pool(M.EfiBootServicesData, 8 * len(found))
            if status == S.SUCCESS:
                self.write(addr, b"".join(h.to_bytes(8, "little") for h in found))
                self.w64(buffer_ptr, addr)
        self.log("LocateHandleBuffer", what, status)
        return status

    def bs_LocateDevicePath(self, guid_ptr: int, path_ptr_ptr: int, handle_ptr: int) -> int:
        if not guid_ptr or not path_ptr_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        path_addr = self.r64(path_ptr_ptr)
        wanted = self.read_device_path(path_addr)[:-4]  # without the End node
        best, best_len = 0, -1
        for handle in self.handles_with(guid):
            dp = self.handles[handle].get(guids.DEVICE_PATH)
            if dp is None:
                continue
            mine = self.read_device_path(dp)[:-4]
            if wanted.startswith(mine) and len(mine) > best_len:
                best, best_len = handle, len(mine)
        if best_len < 0:
            status = S.NOT_FOUND
        else:
            if not handle_ptr:
                return S.INVALID_PARAMETER
            self.w64(handle_ptr, best)
            self.w64(path_ptr_ptr, path_addr + best_len)
            status = S.SUCCESS
        self.log("LocateDevicePath", guids.name_of(guid), status)
        return status

    def bs_ProtocolsPerHandle(self, handle: int, buffer_ptr: int, count_ptr: int) -> int:
        if handle not in self.handles:
            return S.INVALID_PARAMETER
        protos = list(self.handles[handle])
        status, array = self.dxe.allocate_pool(M.EfiBootServicesData, 8 * max(1, len(protos)))
        if status != S.SUCCESS:
            return status
        for i, g in enumerate(protos):
            gaddr = self.fw_alloc(16)
            self.mem.write(gaddr, g.bytes_le, actor=FIRMWARE_ACTOR)
            self.w64(array + 8 * i, gaddr)
        self.w64(buffer_ptr, array)
        self.w64(count_ptr, len(protos))
        return S.SUCCESS

    def bs_InstallProtocolInterface(self, handle_ptr: int, guid_ptr: int, interface_type: int, interface: int) -> int:
        if not handle_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        handle = self.r64(handle_ptr)
        guid = self.read_guid(guid_ptr)
        if handle == 0:
            handle = self.new_handle()
            self.w64(handle_ptr, handle)
        elif handle not in self.handles:
            return S.INVALID_PARAMETER
        elif guid in self.handles[handle]:
            return S.INVALID_PARAMETER
        self.install(handle, guid, interface)
        self.log("InstallProtocolInterface", f"{handle:#x}, {guids.name_of(guid)}", S.SUCCESS)
        return S.SUCCESS

    def bs_InstallMultipleProtocolInterfaces(self) -> int:
        handle_ptr = self.backend.reg("rcx")
        values = self._varargs(1)
        if not handle_ptr:
            return S.INVALID_PARAMETER
        handle = self.r64(handle_ptr)
        pairs = []
        for i in range(0, len(values) - 1, 2):
            pairs.append((self.read_guid(values[i]), values[i + 1]))
        if handle and handle not in self.handles:
            return S.INVALID_PARAMETER
        if handle and any(g in self.handles[handle] for g, _ in pairs):
            return S.ALREADY_STARTED
        if any(g == guids.DEVICE_PATH for g, _ in pairs):
            wanted = next(p for g, p in pairs if g == guids.DEVICE_PATH)
            path = self.read_device_path(wanted)
            for other in self.handles_with(guids.DEVICE_PATH):
                if self.read_device_path(self.handles[other][guids.DEVICE_PATH]) == path:
                    self.log("InstallMultipleProtocolInterfaces", "device path already installed", S.ALREADY_STARTED)
                    return S.ALREADY_STARTED
        if not handle:
            handle = self.new_handle()
            self.w64(handle_ptr, handle)
        for g, p in pairs:
            self.install(handle, g, p)
        self.log(
            "InstallMultipleProtocolInterfaces",
            f"{handle:#x}, " + ", ".join(guids.name_of(g) for g, _ in pairs),
            S.SUCCESS,
        )
        return S.SUCCESS

    def bs_UninstallMultipleProtocolInterfaces(self) -> int:
        handle = self.backend.reg("rcx")
        values = self._varargs(1)
        if handle not in self.handles:
            return S.INVALID_PARAMETER
        for i in range(0, len(values) - 1, 2):
            guid = self.read_guid(values[i])
            if self.handles[handle].get(guid) != values[i + 1]:
                return S.INVALID_PARAMETER
        for i in range(0, len(values) - 1, 2):
            self.handles[handle].pop(self.read_guid(values[i]), None)
        return S.SUCCESS

    def bs_UninstallProtocolInterface(self, handle: int, guid_ptr: int, interface: int) -> int:
        if handle not in self.handles or not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if self.handles[handle].get(guid) != interface:
            return S.NOT_FOUND
        del self.handles[handle][guid]
        return S.SUCCESS

    def bs_ReinstallProtocolInterface(self, handle: int, guid_ptr: int, old: int, new: int) -> int:
        if handle not in self.handles or not guid_ptr:
            return S.INVALID_PARAMETER
        guid = self.read_guid(guid_ptr)
        if self.handles[handle].get(guid) != old:
            return S.NOT_FOUND
        self.handles[handle][guid] = new
        return S.SUCCESS

    def _varargs(self, first: int) -> list[int]:
        """GUID/interface pairs of a variadic call, ending at a NULL GUID."""
        regs = [self.backend.reg(r) for r in ARG_REGS]
        rsp = self.backend.reg("rsp")
        values: list[int] = []
        i = first
        while i < 64:
            v = regs[i] if i < 4 else int.from_bytes(self.backend.read(rsp + 8 + 8 * i, 8), "little")
            if (i - first) % 2 == 0 and v == 0:
                break
            values.append(v)
            i += 1
        return values

    def bs_RegisterProtocolNotify(self, guid_ptr: int, event: int, registration_ptr: int) -> int:
        if registration_ptr:
            self.w64(registration_ptr, self.fw_alloc(8))
        return S.SUCCESS

    def bs_LoadImage(self, boot_policy: int, parent: int, path: int, source: int, size: int, handle_ptr: int) -> int:
        if not handle_ptr or parent not in self.images:
            return S.INVALID_PARAMETER
        full_path = 0
        if path:  # LoadedImageDevicePath keeps the caller's whole path (CoreLoadImageCommon duplicates it)
            raw = self.read_device_path(path)
            full_path = self.fw_alloc(len(raw))
            self.mem.write(full_path, raw, actor=FIRMWARE_ACTOR)
        if not source:
            status = self.protocols.load_image_from_path(path) if path else S.NOT_FOUND
            if isinstance(status, tuple):
                data, name, device, file_path = status
            else:
                self.log("LoadImage", f"from device path {path:#x}", status)
                return status
        else:
            # From a buffer: no device handle matches a MemoryMapped() path, so FilePath is the whole path.
            data, name, device, file_path = self.read(source, size), f"image@{source:#x}", 0, full_path
        status, handle = self.load_image(
            data, name, parent=parent, device_handle=device, file_path=file_path, device_path=full_path
        )
        if status == S.SUCCESS:
            self.w64(handle_ptr, handle)
        self.log("LoadImage", f"{name}, {len(data):#x} bytes", status)
        return status

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
        raise _Resumed()

    def bs_Exit(self, handle: int, status: int, data_size: int, data: int) -> int:
        if not self.frames or self.frames[-1].image.handle != handle:
            self.log("Exit", f"{handle:#x} is not the running image", S.INVALID_PARAMETER)
            return S.INVALID_PARAMETER
        self.log("Exit", f"{self.frames[-1].image.name}, {_status_name(status)}", None)
        self._leave_image(status)
        return S.SUCCESS

    def svc_image_returned(self) -> int:
        status = self.backend.reg("rax")
        self.log("<image returned>", _status_name(status), None)
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

    def bs_GetNextMonotonicCount(self, count_ptr: int) -> int:
        if not count_ptr:
            return S.INVALID_PARAMETER
        self.monotonic += 1
        self.w64(count_ptr, self.monotonic)
        return S.SUCCESS

    def bs_Stall(self, microseconds: int) -> int:
        self.tdx.charge(0, microseconds * 1000)
        return S.SUCCESS

    def bs_SetWatchdogTimer(self, timeout: int, code: int, size: int, data: int) -> int:
        return S.SUCCESS

    def bs_ConnectController(self, controller: int, driver: int, path: int, recursive: int) -> int:
        return S.NOT_FOUND

    def bs_DisconnectController(self, controller: int, driver: int, child: int) -> int:
        return S.SUCCESS

    def bs_CalculateCrc32(self, data: int, size: int, crc_ptr: int) -> int:
        if not data or not crc_ptr or size == 0:
            return S.INVALID_PARAMETER
        self.w32(crc_ptr, zlib.crc32(self.read(data, size)))
        return S.SUCCESS

    def bs_CopyMem(self, dst: int, src: int, length: int) -> None:
        if length:
            self.mem.copy(dst, src, length, actor=self.actor)  # memmove; streamed through views when disjoint
            self.tdx.charge(0, self.tdx.profile.bytes_ns(length, self.tdx.profile.copy_bytes_per_s))

    def bs_SetMem(self, buffer: int, size: int, value: int) -> None:
        if size:
            self.mem.fill(buffer, size, value & 0xFF, actor=self.actor)  # checks the range first

    # events: enough for loaders that poll keys and timers; times are virtual
    def bs_CreateEvent(self, event_type: int, tpl: int, notify: int, context: int, event_ptr: int) -> int:
        return self.bs_CreateEventEx(event_type, tpl, notify, context, 0, event_ptr)

    def bs_CreateEventEx(
        self, event_type: int, tpl: int, notify: int, context: int, group_ptr: int, event_ptr: int
    ) -> int:
        if not event_ptr:
            return S.INVALID_PARAMETER
        event = self.fw_alloc(16)
        group = self.read_guid(group_ptr) if group_ptr else None
        self.events[event] = Event(event_type & 0xFFFFFFFF, tpl, notify, context, group)
        self.w64(event_ptr, event)
        self.log(
            "CreateEventEx",
            f"type {event_type & 0xFFFFFFFF:#x}" + (f", group {guids.name_of(group)}" if group else ""),
            S.SUCCESS,
        )
        return S.SUCCESS

    def bs_CloseEvent(self, event: int) -> int:
        return S.SUCCESS if self.events.pop(event, None) is not None else S.INVALID_PARAMETER

    def bs_SignalEvent(self, event: int) -> int:
        e = self.events.get(event)
        if e is None:
            return S.INVALID_PARAMETER
        e.signaled = True
        return S.SUCCESS

    def bs_SetTimer(self, event: int, timer_type: int, trigger_time: int) -> int:
        e = self.events.get(event)
        if e is None:
            return S.INVALID_PARAMETER
        now = self.tdx.clock_ns(0)
        if timer_type == 0:  # TimerCancel
            e.timer_due_ns = None
        else:
            e.timer_period_ns = trigger_time * 100 if timer_type == 1 else 0  # 100 ns units
            e.timer_due_ns = now + trigger_time * 100
        return S.SUCCESS

    def _event_ready(self, event: int) -> bool:
        e = self.events.get(event)
        if e is None:
            return False
        if self.protocols.is_key_event(event):
            return self.protocols.console.key_available()
        if e.timer_due_ns is not None and self.tdx.clock_ns(0) >= e.timer_due_ns:
            e.signaled = True
            e.timer_due_ns = self.tdx.clock_ns(0) + e.timer_period_ns if e.timer_period_ns else None
        return e.signaled

    def bs_CheckEvent(self, event: int) -> int:
        if event not in self.events:
            return S.INVALID_PARAMETER
        self.tdx.charge(0, 1_000)  # a poll takes time, so timers can expire
        if self._event_ready(event):
            self.events[event].signaled = False
            return S.SUCCESS
        return S.NOT_READY

    def bs_WaitForEvent(self, count: int, events_ptr: int, index_ptr: int) -> int:
        if count == 0 or not events_ptr:
            return S.INVALID_PARAMETER
        events = [self.r64(events_ptr + 8 * i) for i in range(min(count, 64))]
        for _ in range(2):
            for i, ev in enumerate(events):
                if self._event_ready(ev):
                    self.events[ev].signaled = False
                    if index_ptr:
                        self.w64(index_ptr, i)
                    return S.SUCCESS
            # Nothing ready: let virtual time run to the earliest timer.
            due = [t for e in events if e in self.events and (t := self.events[e].timer_due_ns)]
            if not due:
                break
            self.tdx.charge(0, max(0, min(due) - self.tdx.clock_ns(0)))
        if self._terminal_live() and any(self.protocols.is_key_event(e) for e in events):
            while not self.protocols.console.key_available():  # a person at the terminal: wait for a key
                self.idle()
            return self.bs_WaitForEvent(count, events_ptr, index_ptr)
        if any(self.protocols.is_key_event(e) for e in events):
            self.input_waiting = True
            raise ServiceStop(StopReason("input", "the loader waits for keyboard input and no scripted keys are left"))
        raise ServiceStop(StopReason("exit", "WaitForEvent would block forever (no input, no timer)"))

    # ================================================================= runtime services
    def rt_GetTime(self, time_ptr: int, caps_ptr: int) -> int:
        if not time_ptr:
            return S.INVALID_PARAMETER
        seconds = self.tdx.clock_ns(0) // 1_000_000_000
        self.write(
            time_ptr,
            EFI_TIME.pack(
                Year=2026,
                Month=1,
                Day=1,
                Hour=seconds // 3600 % 24,
                Minute=seconds // 60 % 60,
                Second=seconds % 60,
                Nanosecond=self.tdx.clock_ns(0) % 1_000_000_000,
                TimeZone=0x7FF,
            ),
        )
        return S.SUCCESS

    def rt_GetVariable(self, name_ptr: int, guid_ptr: int, attr_ptr: int, size_ptr: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr or not size_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        value = self.config.variables.get((name, guid))
        if value is None:
            status = S.NOT_FOUND
        else:
            attributes, data = value
            have = self.r64(size_ptr)
            self.w64(size_ptr, len(data))
            if have < len(data) or not data_ptr:
                status = S.BUFFER_TOO_SMALL
            else:
                self.write(data_ptr, data)
                if attr_ptr:
                    self.w32(attr_ptr, attributes)
                status = S.SUCCESS
        self.log("GetVariable", f"{guids.name_of(guid)}:{name}", status)
        return status

    def rt_SetVariable(self, name_ptr: int, guid_ptr: int, attributes: int, size: int, data_ptr: int) -> int:
        if not name_ptr or not guid_ptr:
            return S.INVALID_PARAMETER
        name, guid = self.read_str16(name_ptr), self.read_guid(guid_ptr)
        if size == 0:
            self.config.variables.pop((name, guid), None)
        else:
            self.config.variables[(name, guid)] = (attributes & 0xFFFFFFFF, self.read(data_ptr, size))
        self.log("SetVariable", f"{guids.name_of(guid)}:{name}, {size} bytes", S.SUCCESS)
        return S.SUCCESS

    def rt_GetNextVariableName(self, size_ptr: int, name_ptr: int, guid_ptr: int) -> int:
        return S.NOT_FOUND

    def rt_ResetSystem(self, reset_type: int, status: int, size: int, data: int) -> int:
        raise ServiceStop(StopReason("exit", f"ResetSystem({reset_type})"))

    # ================================================================= DXE services
    def ds_GetMemorySpaceDescriptor(self, base: int, desc_ptr: int) -> int:
        status, desc = self.dxe.get_memory_space_descriptor(base)
        if status == S.SUCCESS and desc is not None and desc_ptr:
            self.write(desc_ptr, desc.pack())
        self.log("GetMemorySpaceDescriptor", f"{base:#x}", status)
        return status

    def ds_SetMemorySpaceAttributes(self, base: int, length: int, attributes: int) -> int:
        status = self.dxe.set_memory_space_attributes(base, length, attributes)
        self.log("SetMemorySpaceAttributes", f"{base:#x}, {length:#x}, {attributes:#x}", status)
        return status

    def ds_SetMemorySpaceCapabilities(self, base: int, length: int, capabilities: int) -> int:
        return self.dxe.set_memory_space_capabilities(base, length, capabilities)

    def ds_GetMemorySpaceMap(self, count_ptr: int, map_ptr: int) -> int:
        status, buffer, descs = self.dxe.get_memory_space_map()
        if status == S.SUCCESS:
            self.write(buffer, b"".join(d.pack() for d in descs))
            self.w64(count_ptr, len(descs))
            self.w64(map_ptr, buffer)
        return status


class _Resumed(Exception):
    """A service switched the CPU to other code (StartImage, Exit): RAX is not written."""


def _status_name(status: int) -> str:
    try:
        return S(status).name
    except ValueError:
        return f"{status:#x}"
