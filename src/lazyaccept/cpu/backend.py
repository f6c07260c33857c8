"""The seam between the firmware and a CPU that runs real EFI binaries.

A backend owns guest registers and the host memory behind guest-physical addresses, runs code until something
needs the firmware (a boot-service thunk, an unmapped access, CPUID, TDCALL, the jump into the kernel, a
budget), and calls back into a `CpuClient` for each. The firmware, loaders and checks only see this interface,
so a second backend (KVM) can slot in.
"""

from __future__ import annotations

from collections.abc import Iterator
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


class CpuBackend(Protocol):
    name: str

    def map(self, gpa: int, size: int) -> None: ...
    def unmap(self, gpa: int, size: int) -> None: ...
    def read(self, gpa: int, size: int) -> bytes: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    # Optional: views(gpa, size) -> Iterator[memoryview], mapped memory as read-only views without a copy
    # through Python bytes; each view may be reused by the next, so consume one before taking another.
    def reg(self, name: str) -> int: ...
    def set_reg(self, name: str, value: int) -> None: ...
    def thunk_code(self) -> bytes: ...
    def set_thunk_range(self, start: int, end: int) -> None: ...
    def set_code_ranges(self, ranges: list[tuple[int, int]]) -> None: ...
    def run(self, rip: int, *, max_instructions: int = 0, timeout_s: float = 0) -> StopReason: ...
    def stop(self, reason: StopReason) -> None: ...


VIEW_CHUNK = 16 << 20  # what a backend without views hands out per read


def backend_views(backend: CpuBackend, gpa: int, size: int) -> Iterator[memoryview]:
    """Mapped [gpa, gpa + size) as views: the backend's own where it has them, else reads of VIEW_CHUNK."""
    views = getattr(backend, "views", None)
    if views is not None:
        yield from views(gpa, size)
        return
    for pos in range(0, size, VIEW_CHUNK):
        yield memoryview(backend.read(gpa + pos, min(VIEW_CHUNK, size - pos)))
