"""The seam between the firmware and a CPU that runs real EFI binaries.

A backend owns guest registers and the host memory behind guest-physical addresses, runs code until something
needs the firmware (a boot-service thunk, an unmapped access, CPUID, TDCALL, the jump into the kernel, a
budget), and calls back into a `CpuClient` for each. The firmware, loaders and checks only see this interface,
so a second backend (KVM) can slot in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Protocol

from lazyaccept.records import StopReason

# Registers by name; backends map them to their own ids.
ARG_REGS = ("rcx", "rdx", "r8", "r9")  # Microsoft x64 calling convention
THUNK_SIZE = 4  # bytes per service thunk; the backend decides what they contain


class CpuClient(Protocol):
    """What a backend calls back into (the EFI environment)."""

    def on_service(self, index: int) -> None:
        """The guest called thunk `index`; arguments are in registers/stack. Set RAX before returning."""

    def on_unmapped(self, gpa: int, size: int, access: str) -> bool:
        """The guest touched memory the backend has not mapped: map it and return True, or return False."""

    def on_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int] | None:
        """(eax, ebx, ecx, edx) for leaves the firmware defines, None for the backend's default."""

    def on_tdcall(self) -> None:
        """The guest executed TDCALL (66 0F 01 CC); read and write registers to answer it."""

    def on_block_outside(self, rip: int) -> bool:
        """A block started outside the registered code ranges; return True to stop there."""

    def on_rdtsc(self) -> int:
        """The guest's RDTSC, once the backend routes it (route_io(virtual_tsc=True)): the 64-bit TSC."""

    def on_port_in(self, port: int, size: int) -> int:
        """The guest's IN from `port` of `size` bytes, once routed (route_io(port_io=True)): the value read."""

    def on_port_out(self, port: int, size: int, value: int) -> None:
        """The guest's OUT of `value` to `port`, once routed (route_io(port_io=True))."""


VIEW_CHUNK = 16 << 20  # what a backend without views of its own hands out per read


class CpuBackend(ABC):
    """A CPU that runs guest code for a CpuClient.

    The abstract methods are what every run needs. What a backend can do beyond that is declared by the
    capability attributes below, which callers read instead of probing for methods; `cpu/select.py` chooses a
    backend by them. A subclass overrides the class attributes it differs in. Where an ability depends on the
    host (KVM), the backend sets it as an instance attribute: in its constructor after its start-up self-tests,
    or, for routes_rdtsc, when route_io has tried; each backend's class docstring says which.
    """

    name: str = ""
    counts_instructions: bool = False  # run(max_instructions=N) stops after N instructions
    routes_cpuid: bool = False  # CPUID in guest code reaches CpuClient.on_cpuid
    routes_rdtsc: bool = False  # route_io(virtual_tsc=True) sends RDTSC to CpuClient.on_rdtsc
    routes_port_io: bool = False  # route_io(port_io=True) sends IN/OUT to CpuClient.on_port_in/on_port_out
    enters_supervisor: bool = False  # enter_supervisor() moves the run to CPL0 (CPUID then from the CPU's table)
    hooks_code: bool = False  # add_code_hook() replaces the instruction at an address by a Python callback
    xmm_state_ok: bool = True  # set_reg/reg of "xmm0".."xmm15" reach the guest's registers

    # ----------------------------------------------------------------- what every backend does
    @abstractmethod
    def map(self, gpa: int, size: int) -> None: ...
    @abstractmethod
    def unmap(self, gpa: int, size: int) -> None: ...
    @abstractmethod
    def read(self, gpa: int, size: int) -> bytes: ...
    @abstractmethod
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    @abstractmethod
    def reg(self, name: str) -> int: ...
    @abstractmethod
    def set_reg(self, name: str, value: int) -> None: ...
    @abstractmethod
    def thunk_code(self) -> bytes: ...
    @abstractmethod
    def set_thunk_range(self, start: int, end: int) -> None: ...
    @abstractmethod
    def set_code_ranges(self, ranges: list[tuple[int, int]]) -> None: ...
    @abstractmethod
    def run(self, rip: int, *, max_instructions: int = 0, timeout_s: float = 0) -> StopReason: ...
    @abstractmethod
    def stop(self, reason: StopReason) -> None: ...

    # ----------------------------------------------------------------- optional, by capability
    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        """Mapped [gpa, gpa + size) as read-only views; each may be reused by the next, so consume one before
        taking another. This default reads VIEW_CHUNK at a time; a backend with host memory behind the guest's
        hands out views of it without a copy."""
        for pos in range(0, size, VIEW_CHUNK):
            yield memoryview(self.read(gpa + pos, min(VIEW_CHUNK, size - pos)))

    def route_io(self, *, virtual_tsc: bool = False, port_io: bool = False) -> list[str]:
        """Send the guest's RDTSC and port I/O to the client (on_rdtsc, on_port_in, on_port_out), as far as this
        backend can (routes_rdtsc, routes_port_io): the names of what is routed ("in", "out", "rdtsc")."""
        return []

    def enter_supervisor(self) -> None:
        """Run guest code at CPL0 from the next entry on; only where enters_supervisor is True."""
        raise NotImplementedError(f"the {self.name} backend cannot enter CPL0")

    def add_code_hook(self, address: int, callback: Callable[[], None]) -> None:
        """Run `callback` instead of the instruction at `address` each time execution reaches it; the callback
        moves RIP on. Only where hooks_code is True."""
        raise NotImplementedError(f"the {self.name} backend cannot hook code")
