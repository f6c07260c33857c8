"""Accepting memory in DXE: the memory-accept protocol and the three on-demand options of the Lazy Accept RFC.

MemoryAcceptProtocol is EDKII_MEMORY_ACCEPT_PROTOCOL as OvmfPkg/TdxDxe/TdxDxe.c installs it: AcceptMemory
(This, Start, Size) only issues the TDCALLs (TdxMemoryAccept: 4K head, 2M middle, 4K tail, through the TDX
model's accept_range) and returns EFI_SUCCESS, or EFI_INVALID_PARAMETER as MdePkg TdAcceptPages does when a
TDCALL fails. Its callers own the bookkeeping: AcceptManager.accept turns what was accepted into system
memory with RemoveMemorySpace + AddMemorySpace(SystemMemory), as OvmfPkg/AmdSevDxe AcceptAllMemory does, so
it appears in the memory map as EfiConventionalMemory.

The on-demand options (none of them upstream; with none selected, allocations beyond accepted memory fail
as in upstream edk2):
1. in the allocator: a failed AllocatePages / AllocatePool accepts memory and retries once. The dropped
   AcceptMemoryResource patch (v1/v2 of the lazy-accept series) did this on EFI_OUT_OF_RESOURCES only, so its
   AllocateAddress branch could never run: AllocateAddress over unaccepted memory fails with EFI_NOT_FOUND
   (Page.c CoreConvertPagesEx). Here AllocateAddress retries on EFI_NOT_FOUND when the requested range is RAM,
   partly unaccepted and otherwise free. Chunks are multiples of 32 MiB as in the patch; placement is the
   patch's `first-fit` (first unaccepted GCD entry large enough, accepted from its base) or `lowest` (the
   default: the lowest 2 MiB-aligned range that satisfies the constraint, so TdxDxe accepts in 2M pages and
   the OS bitmap's 2 MiB units stay whole).
2. for loaders: accept_for_loader(size or range) accepts ahead, accept_and_retry wraps an allocation.
3. a boot service AcceptMemory(Start, Size); see accept_memory_service for its contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from lazyaccept.errors import ConfigError
from lazyaccept.firmware.dxe.gcd import Gcd, GcdType
from lazyaccept.firmware.dxe.page import AllocationRequest, PageAllocator
from lazyaccept.records import Actor
from lazyaccept.spec.efi import (
    EDKII_MEMORY_ACCEPT_PROTOCOL_GUID,
    EFI_MEMORY_INTERNAL_MASK,
    EFI_MEMORY_RUNTIME,
    EFI_PAGE_MASK,
    EFI_PAGE_SHIFT,
    EFI_PAGE_SIZE,
    MAX_ALLOC_ADDRESS,
    MAX_UINT64,
    EfiAllocateType,
    EfiMemoryType,
    EfiStatus,
)
from lazyaccept.units import MiB, align_down, align_up

if TYPE_CHECKING:
    from lazyaccept.tdx.module import AcceptResult, TdxModule

S = EfiStatus
UNACCEPTED = GcdType.EfiGcdMemoryTypeUnaccepted
SYSTEM = GcdType.EfiGcdMemoryTypeSystemMemory
DEFAULT_CHUNK_BYTES = 32 * MiB  # the dropped AcceptMemoryResource rounds requests up to 32 MiB multiples
DEFAULT_ALIGN_BYTES = 2 * MiB


class Placement(StrEnum):
    FIRST_FIT = "first-fit"  # the dropped patch: first unaccepted GCD entry large enough, from its base
    LOWEST = "lowest"  # lowest range aligned to align_bytes that satisfies the constraint


@dataclass(frozen=True)
class OnDemandConfig:
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    placement: Placement = Placement.LOWEST
    align_bytes: int = DEFAULT_ALIGN_BYTES

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or self.chunk_bytes % EFI_PAGE_SIZE:
            raise ConfigError(f"accept chunk must be a positive multiple of 4 KiB, got {self.chunk_bytes:#x}")
        if self.align_bytes <= 0 or self.align_bytes & (self.align_bytes - 1) or self.align_bytes < EFI_PAGE_SIZE:
            raise ConfigError(f"accept alignment must be a power of two of at least 4 KiB, got {self.align_bytes:#x}")
        object.__setattr__(self, "placement", Placement(self.placement))


@dataclass
class AcceptCall:
    """One AcceptMemory protocol call: what was asked, what the TDX module did, what it cost."""

    start: int
    size: int
    actor: str
    status: EfiStatus
    accepted_bytes: int
    cost_ns: int
    tdcalls: int


class MemoryAcceptProtocol:
    """EDKII_MEMORY_ACCEPT_PROTOCOL (TdxDxe): AcceptMemory issues TDCALLs and nothing else."""

    guid = EDKII_MEMORY_ACCEPT_PROTOCOL_GUID

    def __init__(self, tdx: TdxModule, *, vcpu: int = 0):
        self.tdx = tdx
        self.vcpu = vcpu
        self.calls: list[AcceptCall] = []
        self.last_result: AcceptResult | None = None

    def accept_memory(self, start: int, size: int, *, actor: str = "tdxdxe") -> EfiStatus:
        """TdxDxe.c TdxMemoryAccept: Size 0 is EFI_SUCCESS; a failed TDCALL is EFI_INVALID_PARAMETER."""
        if size == 0:
            return S.SUCCESS
        res = self.tdx.accept_range(start, size, vcpu=self.vcpu, actor=actor)
        self.last_result = res
        status = S.SUCCESS if res.ok else S.INVALID_PARAMETER
        self.calls.append(AcceptCall(start, size, actor, status, res.accepted_bytes, res.cost_ns, res.tdcalls))
        return status


@dataclass
class AcceptEvent:
    """One range the firmware accepted and recorded as system memory, and why."""

    start: int
    end: int
    actor: str
    reason: str
    status: EfiStatus
    accepted_bytes: int
    cost_ns: int


@dataclass
class AcceptOutcome:
    status: EfiStatus
    start: int = 0
    end: int = 0
    accepted_bytes: int = 0


@dataclass
class AcceptManager:
    """The caller side of the protocol: accept unaccepted GCD ranges and record them, plus options 1-3."""

    gcd: Gcd
    pages: PageAllocator
    protocol: MemoryAcceptProtocol | None
    config: OnDemandConfig = field(default_factory=OnDemandConfig)
    events: list[AcceptEvent] = field(default_factory=list)
    option1_enabled: bool = False

    # ----------------------------------------------------------------- accepting and recording

    def accept(self, start: int, end: int, *, actor: str, reason: str = "") -> EfiStatus:
        """Accept every unaccepted GCD part of [start, end) and make it system memory. Parts already accepted
        are left alone, so nothing is accepted twice. EFI_UNSUPPORTED without a memory-accept protocol."""
        if self.protocol is None:
            return S.UNSUPPORTED
        for s, e, g in list(self.gcd.runs(start, end)):
            if g.gcd_type != UNACCEPTED:
                continue
            status = self.protocol.accept_memory(s, e - s, actor=actor)
            res = self.protocol.last_result
            cost = res.cost_ns if res is not None else 0
            if status != S.SUCCESS:
                accepted = self._record_partial(s, e, g.capabilities)
                self.events.append(AcceptEvent(s, e, actor, reason, status, accepted, cost))
                return status
            self._to_system_memory(s, e, g.capabilities)
            self.events.append(AcceptEvent(s, e, actor, reason, status, e - s, cost))
        return S.SUCCESS

    def accept_all(self, *, actor: str = "accept-all", reason: str = "") -> EfiStatus:
        status = S.SUCCESS
        for s, e in self.unaccepted_ranges():
            status = self.accept(s, e, actor=actor, reason=reason)
            if status != S.SUCCESS:
                break
        return status

    def unaccepted_ranges(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """Unaccepted GCD memory as maximal ranges."""
        out: list[tuple[int, int]] = []
        for s, e in self.gcd.ranges_of_type(UNACCEPTED, start, end):
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    def unaccepted_bytes(self) -> int:
        return self.gcd.bytes_of_type(UNACCEPTED)

    def accepted_bytes(self, actor: str | None = None) -> int:
        return sum(ev.accepted_bytes for ev in self.events if actor is None or ev.actor == actor)

    def accepted_by_actor(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ev in self.events:
            out[ev.actor] = out.get(ev.actor, 0) + ev.accepted_bytes
        return out

    def _to_system_memory(self, s: int, e: int, capabilities: int) -> None:
        # AmdSevDxe AcceptAllMemory: allocable system memory capabilities, as PromoteMemoryResource masks them.
        caps = capabilities & ~(EFI_MEMORY_INTERNAL_MASK | EFI_MEMORY_RUNTIME)
        status = self.gcd.remove_memory_space(s, e - s)
        if status == S.SUCCESS:
            status = self.gcd.add_memory_space(SYSTEM, s, e - s, caps)
        if status != S.SUCCESS:
            raise RuntimeError(f"GCD refused to turn accepted [{s:#x}, {e:#x}) into system memory: {status}")

    def _record_partial(self, s: int, e: int, capabilities: int) -> int:
        """After a failed accept, record as system memory exactly the pages the TDCALLs accepted (TdAcceptPages
        stops at the first failure), so that GCD and the TDX module still agree."""
        from lazyaccept.tdx.module import PageState

        assert self.protocol is not None
        done = 0
        for rs, re, state in list(self.protocol.tdx.state_ranges(s, e)):
            rs, re = align_up(rs, EFI_PAGE_SIZE), align_down(re, EFI_PAGE_SIZE)
            if state == PageState.ACCEPTED and rs < re:
                self._to_system_memory(rs, re, capabilities)
                done += re - rs
        return done

    # ----------------------------------------------------------------- placement

    def choose_range(
        self, size: int, *, max_address: int = MAX_ALLOC_ADDRESS, placement: Placement | None = None
    ) -> tuple[int, int] | None:
        """An unaccepted range of at least `size` bytes ending at or below max_address (inclusive), by policy.
        The size is rounded up to the chunk; `lowest` falls back to 2 MiB then 4 KiB rounding when a whole
        chunk does not fit under max_address or in any unaccepted range."""
        placement = placement or self.config.placement
        limit = min((max_address + 1) & ~EFI_PAGE_MASK, self.gcd.limit)
        size = align_up(size, EFI_PAGE_SIZE)
        chunk = align_up(size, self.config.chunk_bytes)
        ranges = self.unaccepted_ranges()
        if placement == Placement.FIRST_FIT:
            for s, e in ranges:
                if e - s >= chunk and s + chunk <= limit and s > 0:
                    return s, s + chunk
            return None
        align = self.config.align_bytes
        for want in dict.fromkeys((chunk, align_up(size, align), size)):
            for s, e in ranges:
                base = max(align_up(s, align), align)
                if base + want <= min(e, limit):
                    return base, base + want
        return None

    # ----------------------------------------------------------------- option 1: in the allocator

    def install_option1(self, config: OnDemandConfig | None = None) -> None:
        if config is not None:
            self.config = config
        self.option1_enabled = True
        self.pages.on_allocation_failure = self.on_allocation_failure

    def on_allocation_failure(self, req: AllocationRequest) -> bool:
        """The allocator's hook: accept what would let the request succeed; True means retry."""
        if self.protocol is None:
            return False
        size = req.pages << EFI_PAGE_SHIFT
        reason = f"{req.kind} {EfiAllocateType(req.allocate_type).name} {req.pages:#x} pages: {req.status}"
        if req.allocate_type == EfiAllocateType.AllocateAddress:
            if req.status != S.NOT_FOUND:
                return False
            rng = self._ranges_for_address(req.address, size)
            if not rng:
                return False
            for s, e in rng:
                if self.accept(s, e, actor=Actor.DXE_OPTION1, reason=reason) != S.SUCCESS:
                    return False
            return True
        if req.status != S.OUT_OF_RESOURCES or size == 0:
            return False
        max_address = req.address if req.allocate_type == EfiAllocateType.AllocateMaxAddress else MAX_ALLOC_ADDRESS
        chosen = self.choose_range(size, max_address=max_address)
        if chosen is None:
            return False
        return self.accept(*chosen, actor=Actor.DXE_OPTION1, reason=reason) == S.SUCCESS

    def _ranges_for_address(self, start: int, size: int) -> list[tuple[int, int]]:
        """For AllocateAddress: the ranges to accept when [start, start+size) is RAM, partly unaccepted and
        otherwise free. first-fit: the patch's rule (one unaccepted entry holds the whole request; accept a
        chunk from the address, clipped to the entry). lowest: each unaccepted part, widened to 2 MiB inside
        its unaccepted range."""
        end = start + size
        if size == 0 or start & EFI_PAGE_MASK or end > self.gcd.limit:
            return []
        parts: list[tuple[int, int]] = []
        for s, e, g in self.gcd.runs(start, end):
            if g.gcd_type == UNACCEPTED:
                parts.append((s, e))
            elif g.gcd_type in (SYSTEM, GcdType.EfiGcdMemoryTypeMoreReliable):
                if not all(v.type == EfiMemoryType.EfiConventionalMemory for _, _, v in self.pages.runs(s, e)):
                    return []
                if self.pages.map.total(s, e, lambda v: v is not None) != e - s:
                    return []
            else:
                return []
        if not parts:
            return []
        if self.config.placement == Placement.FIRST_FIT:
            rs, re, g = self.gcd.map.run_at(start)
            if g.gcd_type != UNACCEPTED or re < end:
                return []
            return [(start, min(start + align_up(size, self.config.chunk_bytes), re))]
        align = self.config.align_bytes
        out = []
        for s, e in parts:
            lo, hi = self._unaccepted_extent(s)
            out.append((max(lo, align_down(s, align)), min(hi, align_up(e, align))))
        return out

    def _unaccepted_extent(self, address: int) -> tuple[int, int]:
        s, e, _ = self.gcd.map.run_at(address)
        return s, e

    # ----------------------------------------------------------------- option 2: for loaders

    def accept_for_loader(
        self,
        size: int,
        *,
        start: int | None = None,
        max_address: int = MAX_ALLOC_ADDRESS,
        actor: str = Actor.LOADER_OPTION2,
    ) -> AcceptOutcome:
        """Accept ahead for a loader: the unaccepted parts of [start, start+size) when start is given, else
        a range of `size` bytes below max_address chosen by the placement policy (chunk-rounded). The
        accepted memory is free EfiConventionalMemory the loader's next allocation can use."""
        if start is None:
            chosen = self.choose_range(size, max_address=max_address)
            if chosen is None:
                return AcceptOutcome(S.OUT_OF_RESOURCES)
            s, e = chosen
        else:
            s, e = align_down(start, EFI_PAGE_SIZE), align_up(start + size, EFI_PAGE_SIZE)
            if not self.gcd.is_ram(s, e):
                return AcceptOutcome(S.NOT_FOUND, s, e)
        before = self.accepted_bytes()
        status = self.accept(s, e, actor=actor, reason=f"loader needs {size:#x} bytes")
        return AcceptOutcome(status, s, e, self.accepted_bytes() - before)

    def accept_and_retry(
        self,
        attempt: Callable[[], tuple[int, int]],
        size: int,
        *,
        max_address: int = MAX_ALLOC_ADDRESS,
        actor: str = Actor.LOADER_OPTION2,
    ) -> tuple[int, int]:
        """Run an allocation; on EFI_OUT_OF_RESOURCES accept `size` bytes and run it once more (the RFC's
        loader-level retry, e.g. QEMU direct boot's copy of the initrd)."""
        status, addr = attempt()
        if (
            status == S.OUT_OF_RESOURCES
            and self.accept_for_loader(size, max_address=max_address, actor=actor).status == S.SUCCESS
        ):
            status, addr = attempt()
        return status, addr

    # ----------------------------------------------------------------- option 3: a boot service

    def accept_memory_service(self, start: int, size: int, *, actor: str = "loader-option3") -> EfiStatus:
        """AcceptMemory(Start, Size), the boot service of option 3. Contract:
        - Start and Size must be multiples of 4 KiB, Size non-zero (as the GCD services reject Length 0),
          and Start + Size must not pass 2^64: else EFI_INVALID_PARAMETER;
        - every byte must be RAM the GCD knows (system memory or unaccepted): else EFI_NOT_FOUND;
        - parts already accepted are left alone; a range already accepted is EFI_SUCCESS with no TDCALL;
        - the unaccepted parts are accepted exactly (no rounding) and become EfiConventionalMemory; the
          memory map key changes, so a loader must get the memory map again before ExitBootServices;
        - a TDCALL failure is EFI_DEVICE_ERROR; pages accepted before it stay accepted and recorded."""
        if start < 0 or size < 0 or start & EFI_PAGE_MASK or size & EFI_PAGE_MASK or size == 0:
            return S.INVALID_PARAMETER
        end = start + size
        if end > MAX_UINT64 + 1:
            return S.INVALID_PARAMETER
        if not self.gcd.is_ram(start, end):
            return S.NOT_FOUND
        status = self.accept(start, end, actor=actor, reason="AcceptMemory boot service")
        if status == S.UNSUPPORTED:
            return status
        return S.SUCCESS if status == S.SUCCESS else S.DEVICE_ERROR
