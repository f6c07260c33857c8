"""The Python DXE core as binaries see it (edk2 MdeModulePkg/Core/Dxe/DxeMain/DxeMain.c): it allocates the
UEFI tables from the DXE core's own memory, points every service at a thunk, and wires the service groups
(handle.py, event.py, image.py, memory_services.py, runtime.py) into the Boot, Runtime and DXE Services tables.
It never touches a CPU itself: a CPU binding (cpu/machine.py) gives it a `Processor` and answers the CPU's
callbacks. Each service call is logged and charged to the virtual clock."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.event import Event, EventServices
from lazyaccept.firmware.dxe.exit import DxeCore
from lazyaccept.firmware.dxe.handle import HandleServices
from lazyaccept.firmware.dxe.image import STACK_SIZE, Frame, Image, ImageServices
from lazyaccept.firmware.dxe.memory_services import MemoryServices
from lazyaccept.firmware.dxe.runtime import RuntimeServices, default_variables
from lazyaccept.firmware.dxe.service_base import (
    FIRMWARE_ACTOR,
    THUNK_PAGES,
    MachineConfig,
    PlatformDrivers,
    Processor,
)
from lazyaccept.records import ServiceCall, StopReason
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.spec.efi import EfiStatus as S
from lazyaccept.spec.efi_tables import (
    ACCEPT_MEMORY_SERVICE,
    BOOT_SERVICES,
    BOOT_SERVICES_SIGNATURE,
    DXE_SERVICES,
    DXE_SERVICES_REVISION,
    DXE_SERVICES_SIGNATURE,
    EFI_CONFIGURATION_TABLE,
    EFI_SYSTEM_TABLE,
    EFI_TABLE_HEADER,
    RUNTIME_SERVICES,
    RUNTIME_SERVICES_SIGNATURE,
    SYSTEM_TABLE_SIGNATURE,
    TABLE_HEADER_SIZE,
    UEFI_REVISION,
)
from lazyaccept.tdx.module import TdxModule
from lazyaccept.units import PAGE_4K

MAX_CONFIG_TABLES = 64


class UefiCore(HandleServices, EventServices, ImageServices, MemoryServices, RuntimeServices):
    def __init__(
        self,
        tdx: TdxModule,
        dxe: DxeCore,
        config: MachineConfig | None,
        backend: Processor,
        drivers: Callable[[UefiCore], PlatformDrivers],
    ):
        """`backend` runs the binaries (guest memory already goes through it); `drivers` installs the platform's
        protocols once the tables exist (the CPU binding passes firmware/drivers' installer)."""
        self.backend = backend
        self._install_drivers = drivers
        self.tdx = tdx
        self.mem = tdx.memory
        self.dxe = dxe
        self.config = config or MachineConfig()
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
        self.placed_names: dict[bytes, str] = {}  # image.placed_key of an image -> its name when a loader places it
        self.variables_set: list[tuple[str, uuid.UUID]] = []
        for key, value in default_variables().items():  # the globals BDS and the variable driver set
            self.config.variables.setdefault(key, value)
        self.idle_streak = 0
        self.last_activity_ns = 0
        self.input_waiting = False  # True once the run stopped because the loader waits for keys
        # Code a loader placed and started itself, without LoadImage (Debian GRUB's own PE loader, peimage):
        # (start, end, name or None) of memory-map runs whose code called a service.
        self._placed_code: list[tuple[int, int, str | None]] = []
        self._guest_calls = []  # services waiting for a guest function they called (image.run_guest_calls)
        self._code_actor: str | None = None
        self.exit_caller_region: tuple[int, int] | None = None
        self._services: list[tuple[str, Callable[..., int | None], int]] = []
        self._thunk_by_name: dict[str, int] = {}
        self._setup()

    def _setup(self) -> None:
        status, self.thunk_base = self.dxe.allocate_pages(0, M.EfiBootServicesCode, THUNK_PAGES)
        if status != S.SUCCESS:
            raise InputError("no accepted memory for the firmware's service thunks")
        self.thunk_end = self.thunk_base + THUNK_PAGES * PAGE_4K
        code = self.backend.thunk_code()
        self.thunk_size = len(code)
        self.mem.write(self.thunk_base, code * (THUNK_PAGES * PAGE_4K // len(code)), actor=FIRMWARE_ACTOR)
        self.backend.set_thunk_range(self.thunk_base, self.thunk_end)
        self.stack_top = self._alloc_pages(STACK_SIZE // PAGE_4K, M.EfiBootServicesData) + STACK_SIZE
        self.thunk("<image returned>", self.svc_image_returned, 0)
        self._build_tables()

    def _alloc_pages(self, pages: int, memory_type: int) -> int:
        status, addr = self.dxe.allocate_pages(0, memory_type, pages)
        if status != S.SUCCESS:
            raise InputError(f"firmware could not allocate {pages} pages: {status.name}")
        return addr

    def _write_table(self, addr: int, signature: int, revision: int, pointers: list[int], extra: bytes = b"") -> int:
        size = TABLE_HEADER_SIZE + 8 * len(pointers) + len(extra)
        body = b"".join(p.to_bytes(8, "little") for p in pointers) + extra
        header = EFI_TABLE_HEADER.pack(Signature=signature, Revision=revision, HeaderSize=size)
        self.mem.write(addr, header + body, actor=FIRMWARE_ACTOR)
        crc = zlib.crc32(self.mem.read(addr, size, actor=FIRMWARE_ACTOR))
        self.mem.write(addr + 16, crc.to_bytes(4, "little"), actor=FIRMWARE_ACTOR)
        return size

    def _build_tables(self) -> None:
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
        self.config_tables.append((guids.DXE_SERVICES_TABLE, self.dxe_services))
        self.protocols = self._install_drivers(self)  # may install configuration tables (ACPI)
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

    def bs_InstallConfigurationTable(self, guid_ptr: int, table: int) -> int:
        if not guid_ptr:
            return S.INVALID_PARAMETER
        return self.install_configuration_table(self.read_guid(guid_ptr), table)

    def install_configuration_table(self, guid: uuid.UUID, table: int) -> int:
        """CoreInstallConfigurationTable (Dxe/Misc/InstallConfigurationTable.c): a GUID already present has its
        pointer replaced in place (or its entry removed for a null table), a new one is appended."""
        present = any(g == guid for g, _ in self.config_tables)
        if not table and not present:
            status = S.NOT_FOUND
        elif not present and len(self.config_tables) >= MAX_CONFIG_TABLES:
            status = S.OUT_OF_RESOURCES
        else:
            if not table:
                self.config_tables = [(g, p) for g, p in self.config_tables if g != guid]
            elif present:
                self.config_tables = [(g, table if g == guid else p) for g, p in self.config_tables]
            else:
                self.config_tables.append((guid, table))
            if hasattr(self, "protocols"):  # the system table is written once the console exists
                self._write_system_table()
            status = S.SUCCESS
        self.log("InstallConfigurationTable", f"{guids.name_of(guid)}, {table:#x}", status)
        return status

    def bs_ConnectController(self, controller: int, driver: int, path: int, recursive: int) -> int:
        return S.NOT_FOUND

    def bs_DisconnectController(self, controller: int, driver: int, child: int) -> int:
        return S.SUCCESS

    def bs_CalculateCrc32(self, data: int, size: int, crc_ptr: int) -> int:
        if not data or not crc_ptr or size == 0:
            return S.INVALID_PARAMETER
        self.w32(crc_ptr, zlib.crc32(self.read(data, size)))
        return S.SUCCESS
