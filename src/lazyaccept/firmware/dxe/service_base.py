"""What every group of the DXE core's services builds on (edk2 DxeMain's shared state): guest memory seen as
the running image, the service registry behind the thunks, the run's log, and the seams to the CPU that runs
the binaries (`Processor`) and to the platform drivers (`PlatformDrivers`).

The service groups live beside it as in edk2's DxeMain: handles and protocols (handle.py, Hand/), events, TPL
and timers (event.py, Event/), images (image.py, Image/), memory (memory_services.py, Mem/ and Gcd/), runtime
services (runtime.py); core.py wires them into the tables. A CPU binding (cpu/machine.py) subclasses the core and
answers the CPU's callbacks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.pe import PeImage
from lazyaccept.records import Actor, ServiceCall, StopReason
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.tdx.memory import GuestMemory
from lazyaccept.tdx.module import TdxModule
from lazyaccept.units import PAGE_4K

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.exit import DxeCore

FIRMWARE_ACTOR = Actor.DXE
THUNK_PAGES = 4
MAX_DEVICE_PATH = 4096
U64 = (1 << 64) - 1


class Processor(Protocol):
    """The CPU the binaries run on, as the core needs it: registers, stack reads, runs and stops, where service
    thunks and image code are (cpu/backend.py's backends implement it)."""

    def read(self, gpa: int, size: int) -> bytes: ...
    def reg(self, name: str) -> int: ...
    def set_reg(self, name: str, value: int) -> None: ...
    def thunk_code(self) -> bytes: ...
    def set_thunk_range(self, start: int, end: int) -> None: ...
    def set_code_ranges(self, ranges: list[tuple[int, int]]) -> None: ...
    def run(self, rip: int, *, max_instructions: int = 0, timeout_s: float = 0) -> StopReason: ...
    def stop(self, reason: StopReason) -> None: ...


class Console(Protocol):
    handle: int
    conin: int
    conout: int
    terminal: Any

    def key_available(self) -> bool: ...
    def when(self, expected: str, text: str) -> None: ...
    def type_text(self, text: str) -> None: ...
    @property
    def output(self) -> str: ...


class PlatformDrivers(Protocol):
    """What the core asks of the drivers installed at start (firmware/drivers/platform.py)."""

    @property
    def console(self) -> Console: ...
    @property
    def path_loaders(self) -> list[Callable[[int], object]]: ...

    def is_key_event(self, event: int) -> bool: ...
    def load_image_from_path(self, path: int) -> int | tuple[bytes, str, int, int]: ...


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
    acpi: bool = True  # install QEMU's ACPI tables as OVMF does (firmware/drivers/acpi.py)
    variables: dict[tuple[str, uuid.UUID], tuple[int, bytes]] = field(default_factory=dict)


class ServiceStop(Exception):
    """Raised by a service to end the run (the top-level image exited or returned)."""

    def __init__(self, reason: StopReason):
        self.reason = reason


class Resumed(Exception):
    """A service switched the CPU to other code (StartImage, Exit): RAX is not written."""


def status_name(status: int) -> str:
    try:
        return S(status).name
    except ValueError:
        return f"{status:#x}"


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


class ServiceBase:
    """State and helpers shared by the service groups; UefiCore (core.py) initialises it."""

    tdx: TdxModule
    mem: GuestMemory
    dxe: DxeCore
    config: MachineConfig
    backend: Processor
    protocols: PlatformDrivers
    calls: list[ServiceCall]
    call_counts: dict[str, int]
    handles: dict[int, dict[uuid.UUID, int]]
    interfaces: dict[int, object]
    config_tables: list[tuple[uuid.UUID, int]]
    images: dict[int, Image]
    frames: list[Frame]
    events: dict[int, Event]
    monotonic: int
    kernel_entry: tuple[int, int] | None
    stop_reason: StopReason | None
    exit_status: int | None
    on_after_exit: list[Callable[[], None]]
    on_start_image: list[Callable[[Image], None]]
    on_placed_image: list[Callable[[str, int, int], None]]
    placed_names: dict[bytes, str]
    idle_streak: int
    last_activity_ns: int
    input_waiting: bool
    exit_caller_region: tuple[int, int] | None
    system_table: int
    stack_top: int
    thunk_base: int
    thunk_end: int
    thunk_size: int
    console: list[str]
    _placed_code: list[tuple[int, int, str | None]]
    _code_actor: str | None
    _services: list[tuple[str, Callable[..., int | None], int]]
    _thunk_by_name: dict[str, int]
    _guest_calls: list[tuple[Generator[tuple[int, tuple[int, ...]], int, int], tuple[int, dict[str, int]]]]
    _call_args: tuple[int, ...] = ()  # of the service call in progress (set by the CPU binding)

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

    def fw_alloc(self, size: int, memory_type: int = M.EfiBootServicesData) -> int:
        """Firmware-owned data from the DXE core's pool, zeroed."""
        status, addr = self.dxe.allocate_pool(memory_type, size)
        if status != S.SUCCESS:
            raise InputError(f"firmware could not allocate {size} bytes for its tables: {status.name}")
        self.mem.write(addr, bytes(size), actor=FIRMWARE_ACTOR)
        return addr

    def thunk(self, name: str, fn: Callable[..., int | None], nargs: int) -> int:
        index = len(self._services)
        if (index + 1) * self.thunk_size > THUNK_PAGES * PAGE_4K:
            raise RuntimeError("out of service thunks")
        self._services.append((name, fn, nargs))
        addr = self.thunk_base + index * self.thunk_size
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

    def log(self, name: str, detail: str, status: int | None) -> None:
        if self.config.log_calls:
            self.calls.append(ServiceCall(name, detail, status, self.actor, self._call_args))

    # Provided by other groups or by the CPU binding (declared here so each group type-checks alone).
    def new_handle(self) -> int:
        raise NotImplementedError

    def install(self, handle: int, guid: uuid.UUID, interface: int, impl: object | None = None) -> None:
        raise NotImplementedError

    def read_device_path(self, addr: int) -> bytes:
        raise NotImplementedError

    def handles_with(self, guid: uuid.UUID) -> list[int]:
        raise NotImplementedError

    def locate_device_path(self, guid: uuid.UUID, path: bytes) -> tuple[int, int]:
        raise NotImplementedError

    def placed_image_at(self, addr: int) -> str | None:
        raise NotImplementedError

    def _update_code_ranges(self) -> None:
        raise NotImplementedError

    def _write_system_table(self) -> None:
        raise NotImplementedError

    def idle(self) -> int:
        raise NotImplementedError

    def _terminal_live(self) -> bool:
        raise NotImplementedError

    def install_fast_paths(self, functions: dict[str, int]) -> list[str]:
        """Run these guest functions (name -> address: memmove, memset) in the host where the CPU can; the names
        it took. A CPU binding without fast paths takes none."""
        return []

    def _varargs(self, first: int) -> list[int]:
        """The arguments of a variadic call from the `first` on (the CPU binding reads them by its ABI)."""
        raise NotImplementedError
