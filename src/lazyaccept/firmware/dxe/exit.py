"""The DXE memory services as boot services, and ExitBootServices (edk2 MdeModulePkg/Core/Dxe/DxeMain/DxeMain.c).

DxeCore builds GCD, memory map, pool and the accept machinery from SEC's resource descriptors, then offers the
boot services a loader calls (AllocatePages, FreePages, GetMemoryMap, AllocatePool, FreePool, the DXE services
of the GCD, the option-3 AcceptMemory service) with EFI_STATUS results, and ends them at ExitBootServices:

- CoreExitBootServices signals the before-exit event group once, on the first call only; then
  CoreTerminateMemoryMap rejects a stale map key with EFI_INVALID_PARAMETER (signalling the exit-failed
  group), else boot services end and every later call raises BootServicesExited (edk2 zeroes gBS: a call
  through it would jump to NULL).
- The accept-all-unless-the-OS-opts-in handler is OvmfPkg/AmdSevDxe's ResolveUnacceptedMemory: on the
  before-exit group it accepts every unaccepted GCD entry (GetMemorySpaceMap into pool, accept, Remove +
  AddMemorySpace, FreePool) unless AllowUnacceptedMemory of OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL was called.
  AmdSevDxe is SEV-SNP only upstream; here the handler and the protocol are configured independently, so a
  firmware can run the handler without offering the opt-in (what a 6.12 stub then gets is everything
  accepted). Accepting changes the map key, so the loader's first ExitBootServices fails and its retry with a
  fresh map succeeds, as on real firmware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lazyaccept.errors import LazyAcceptError
from lazyaccept.firmware.dxe.accept import AcceptManager, MemoryAcceptProtocol, OnDemandConfig
from lazyaccept.firmware.dxe.gcd import AllocationLike, Gcd, GcdMemorySpaceDescriptor, GcdType, ResourceLike
from lazyaccept.firmware.dxe.page import MemoryMapResult, PageAllocator
from lazyaccept.firmware.dxe.pool import PoolAllocator
from lazyaccept.firmware.profiles import DEFAULT_PROFILE, Edk2Profile
from lazyaccept.records import Actor
from lazyaccept.spec.efi import (
    EDKII_MEMORY_ACCEPT_PROTOCOL_GUID,
    EFI_GCD_MEMORY_SPACE_DESCRIPTOR,
    OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID,
    EfiMemoryType,
    EfiStatus,
)

if TYPE_CHECKING:
    import uuid

    from lazyaccept.tdx.module import TdxModule

S = EfiStatus


class BootServicesExited(LazyAcceptError):
    """A boot service was called after ExitBootServices succeeded."""


@dataclass(frozen=True)
class DxePolicy:
    """How the DXE phase treats unaccepted memory. The default is upstream edk2 for TDX: no on-demand accept,
    no accept-all at ExitBootServices, no opt-in protocol. The edk2 profile decides the memory type bins and the
    GetMemoryMap probe unless a field overrides it (platform.start_dxe sets the profile SEC ran with)."""

    option1: bool = False  # accept on allocation failure in AllocatePages / AllocatePool
    option3: bool = False  # offer the AcceptMemory(Start, Size) boot service
    on_demand: OnDemandConfig = field(default_factory=OnDemandConfig)
    accept_all_at_exit: bool = False  # AmdSevDxe-style handler on the before-exit event group
    memory_acceptance_protocol: bool = False  # OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL installed (the OS opt-in)
    edk2_profile: Edk2Profile = DEFAULT_PROFILE
    probe_counts_unaccepted: bool | None = None  # None: the profile's (False: edk2 before commit f80a406aa9)
    memory_type_information: tuple[tuple[int, int], ...] | None = None  # None: the profile's
    address_bits: int = 48  # CPU HOB SizeOfMemorySpace

    @property
    def probe(self) -> bool:
        p = self.probe_counts_unaccepted
        return self.edk2_profile.probe_counts_unaccepted if p is None else p

    @property
    def bins(self) -> tuple[tuple[int, int], ...]:
        b = self.memory_type_information
        return self.edk2_profile.memory_type_information if b is None else b

    @property
    def name(self) -> str:
        parts = [p for p, on in (("option1", self.option1), ("option3", self.option3)) if on]
        if self.accept_all_at_exit:
            parts.append("accept-all-at-exit" + ("+opt-in" if self.memory_acceptance_protocol else ""))
        return "+".join(parts) or "upstream"


class SevMemoryAcceptanceProtocol:
    """OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL: AllowUnacceptedMemory(This) switches off accept-all at exit."""

    guid = OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID

    def __init__(self, core: DxeCore):
        self._core = core

    def allow_unaccepted_memory(self) -> EfiStatus:
        self._core._enter("AllowUnacceptedMemory")
        self._core.allow_unaccepted = True
        return S.SUCCESS


class DxeCore:
    """The DXE core's memory services over one TD, from SEC's hand-off to ExitBootServices."""

    def __init__(
        self,
        resources: Iterable[ResourceLike],
        *,
        tdx: TdxModule | None = None,
        policy: DxePolicy | None = None,
        allocations: Iterable[AllocationLike] = (),
        initial_region: tuple[int, int] | None = None,
        vcpu: int = 0,
    ):
        self.policy = policy or DxePolicy()
        self.tdx = tdx
        self.vcpu = vcpu
        self.gcd = Gcd(self.policy.address_bits)
        self.pages = PageAllocator(
            self.gcd,
            memory_type_information=self.policy.bins,
            probe_counts_unaccepted=self.policy.probe,
            splits_free_bins=self.policy.edk2_profile.splits_free_bins,
        )
        self.pool = PoolAllocator(self.pages)
        self.initial_region = self.gcd.initialize(resources, allocations, initial_region)
        self.protocol = MemoryAcceptProtocol(tdx, vcpu=vcpu) if tdx is not None else None
        self.acceptor = AcceptManager(self.gcd, self.pages, self.protocol, self.policy.on_demand)
        if self.policy.option1:
            self.acceptor.install_option1()
        self.sev_protocol = SevMemoryAcceptanceProtocol(self) if self.policy.memory_acceptance_protocol else None
        self.allow_unaccepted = False
        self.before_exit: list[Callable[[], None]] = []  # gEfiEventBeforeExitBootServicesGuid
        self.on_exit: list[Callable[[], None]] = []  # gEfiEventExitBootServicesGuid
        self.on_exit_failed: list[Callable[[], None]] = []  # gEventExitBootServicesFailedGuid
        if self.policy.accept_all_at_exit:
            self.before_exit.append(self._resolve_unaccepted_memory)
        self.exited = False
        self.exit_attempts = 0
        self._before_exit_signalled = False
        self._exit_failed = False
        self.calls: dict[str, int] = {}
        self.warnings: list[str] = []

    # ----------------------------------------------------------------- boot services (EFI_BOOT_SERVICES)

    def allocate_pages(
        self, allocate_type: int, memory_type: int, pages: int, memory: int | None = 0
    ) -> tuple[EfiStatus, int]:
        self._enter("AllocatePages")
        return self.pages.allocate_pages(allocate_type, memory_type, pages, memory)

    def free_pages(self, memory: int, pages: int) -> EfiStatus:
        self._enter("FreePages")
        return self.pages.free_pages(memory, pages)

    def get_memory_map(self, memory_map_size: int | None, *, buffer: bool = True) -> MemoryMapResult:
        self._enter("GetMemoryMap", allowed_after_failed_exit=True)
        return self.pages.get_memory_map(memory_map_size, buffer=buffer)

    def allocate_pool(self, pool_type: int, size: int, *, buffer: bool = True) -> tuple[EfiStatus, int]:
        self._enter("AllocatePool")
        return self.pool.allocate_pool(pool_type, size, buffer=buffer)

    def free_pool(self, buffer: int | None) -> EfiStatus:
        self._enter("FreePool")
        return self.pool.free_pool(buffer)

    def accept_memory(self, start: int, size: int) -> EfiStatus:
        """Option 3's AcceptMemory(Start, Size) boot service (contract: AcceptManager.accept_memory_service).
        Without option 3 the firmware has no such service: EFI_UNSUPPORTED."""
        self._enter("AcceptMemory")
        if not self.policy.option3:
            return S.UNSUPPORTED
        return self.acceptor.accept_memory_service(start, size)

    def locate_protocol(self, guid: uuid.UUID) -> object | None:
        """LocateProtocol for the two protocols this layer owns (None: EFI_NOT_FOUND)."""
        self._enter("LocateProtocol")
        if guid == EDKII_MEMORY_ACCEPT_PROTOCOL_GUID:
            return self.protocol
        if guid == OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL_GUID:
            return self.sev_protocol
        return None

    def exit_boot_services(self, image_handle: int, map_key: int) -> EfiStatus:
        """DxeMain.c CoreExitBootServices."""
        self._enter("ExitBootServices", allowed_after_failed_exit=True)
        self.exit_attempts += 1
        if not self._before_exit_signalled:
            self._before_exit_signalled = True
            for notify in list(self.before_exit):
                notify()
        status = self.pages.terminate_memory_map(map_key)
        if status != S.SUCCESS:
            self._exit_failed = True
            for notify in list(self.on_exit_failed):
                notify()
            return status
        self.exited = True
        for notify in list(self.on_exit):
            notify()
        return S.SUCCESS

    # ----------------------------------------------------------------- DXE services (gDS), memory part

    def get_memory_space_descriptor(self, base: int) -> tuple[EfiStatus, GcdMemorySpaceDescriptor | None]:
        self._enter("GetMemorySpaceDescriptor")
        return self.gcd.get_memory_space_descriptor(base)

    def get_memory_space_map(self) -> tuple[EfiStatus, int, list[GcdMemorySpaceDescriptor]]:
        """Gcd.c CoreGetMemorySpaceMap: the array is AllocatePool'ed (EfiBootServicesData) for the caller to
        FreePool, which can change the memory map. Returns (status, buffer address, descriptors)."""
        self._enter("GetMemorySpaceMap")
        return self._get_memory_space_map()

    def set_memory_space_attributes(self, base: int, length: int, attributes: int) -> EfiStatus:
        self._enter("SetMemorySpaceAttributes")
        return self.gcd.set_memory_space_attributes(base, length, attributes)

    def set_memory_space_capabilities(self, base: int, length: int, capabilities: int) -> EfiStatus:
        self._enter("SetMemorySpaceCapabilities")
        return self.gcd.set_memory_space_capabilities(base, length, capabilities)

    def add_memory_space(self, gcd_type: int, base: int, length: int, capabilities: int) -> EfiStatus:
        self._enter("AddMemorySpace")
        return self.gcd.add_memory_space(gcd_type, base, length, capabilities)

    def remove_memory_space(self, base: int, length: int) -> EfiStatus:
        self._enter("RemoveMemorySpace")
        return self.gcd.remove_memory_space(base, length)

    def allocate_memory_space(
        self,
        allocate_type: int,
        gcd_type: int,
        alignment: int,
        length: int,
        base_address: int | None,
        image_handle: int | None,
        device_handle: int | None = None,
    ) -> tuple[EfiStatus, int]:
        self._enter("AllocateMemorySpace")
        return self.gcd.allocate_memory_space(
            allocate_type, gcd_type, alignment, length, base_address, image_handle, device_handle
        )

    def free_memory_space(self, base: int, length: int) -> EfiStatus:
        self._enter("FreeMemorySpace")
        return self.gcd.free_memory_space(base, length)

    # ----------------------------------------------------------------- reporting

    @property
    def clock_ns(self) -> int:
        return self.tdx.clock_ns(self.vcpu) if self.tdx is not None else 0

    def accepted_bytes(self) -> int:
        return self.acceptor.accepted_bytes()

    # ----------------------------------------------------------------- internals

    def _enter(self, name: str, *, allowed_after_failed_exit: bool = False) -> None:
        if self.exited:
            raise BootServicesExited(
                f"{name} called after ExitBootServices succeeded: boot services are gone (edk2 zeroed gBS)"
            )
        if self._exit_failed and not allowed_after_failed_exit:
            # UEFI 2.x, ExitBootServices: after a failure only GetMemoryMap and ExitBootServices may be used;
            # edk2 does not enforce it, neither does this model, but the run records it.
            self.warnings.append(f"{name} called between a failed ExitBootServices and its retry")
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.tdx is not None:
            self.tdx.charge(self.vcpu, self.tdx.profile.boot_service_call_ns)

    def _get_memory_space_map(self) -> tuple[EfiStatus, int, list[GcdMemorySpaceDescriptor]]:
        _, descriptors = self.gcd.get_memory_space_map()
        status, buffer = self.pool.allocate_pool(
            EfiMemoryType.EfiBootServicesData, len(descriptors) * EFI_GCD_MEMORY_SPACE_DESCRIPTOR.size
        )
        if status != S.SUCCESS:
            return S.OUT_OF_RESOURCES, 0, []
        # The pool allocation itself may have changed the map; edk2 loops until the count is stable.
        _, descriptors = self.gcd.get_memory_space_map()
        return S.SUCCESS, buffer, descriptors

    def _resolve_unaccepted_memory(self) -> None:
        """OvmfPkg/AmdSevDxe/AmdSevDxe.c ResolveUnacceptedMemory + AcceptAllMemory."""
        if self.allow_unaccepted:
            return
        status, buffer, descriptors = self._get_memory_space_map()
        if status != S.SUCCESS:
            self.warnings.append(f"accept-all at ExitBootServices: GetMemorySpaceMap failed: {status}")
            return
        for d in descriptors:
            if d.gcd_memory_type != GcdType.EfiGcdMemoryTypeUnaccepted:
                continue
            status = self.acceptor.accept(d.base_address, d.end, actor=Actor.EXIT_ACCEPT_ALL, reason="ExitBootServices")
            if status != S.SUCCESS:
                self.warnings.append(f"accept-all at ExitBootServices stopped at {d.base_address:#x}: {status}")
                break
        self.pool.free_pool(buffer)
