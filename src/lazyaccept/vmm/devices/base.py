"""What every q35 device model shares: the guest-memory seam for DMA, the event log, access-size checks.

Devices are driven by the VMM side of a TD exit (TDG.VP.VMCALL or a routed instruction); each access costs
O(1). Bad guest input is a GuestInputError whose one-line message names the field; the platform turns it into a
TDVMCALL status, never a traceback.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Protocol

from lazyaccept.errors import InputError


class GuestMemory(Protocol):
    """Guest physical memory as a device doing DMA sees it (QEMU's address_space_memory: GPAs without the TD's
    shared bit). In a TD a DMA buffer is shared memory, so the implementation reads the shared view."""

    def read(self, gpa: int, size: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class GuestInputError(InputError):
    """A guest access the device cannot take (bad size, bad register, a DMA descriptor outside memory)."""


def ones(size: int) -> int:
    """All ones over `size` bytes: what an unclaimed port or a master-aborted config read returns."""
    return (1 << (8 * size)) - 1


def check_size(size: int, allowed: tuple[int, ...], field: str) -> None:
    if size not in allowed:
        raise GuestInputError(f"access size {size} not one of {allowed}", field=field)


class EventLog:
    """Counts per kind of event, and the last `keep` notable lines (unknown sub-functions, rejected operands)."""

    def __init__(self, keep: int = 200):
        self.counts: Counter[str] = Counter()
        self.lines: deque[str] = deque(maxlen=keep)

    def count(self, kind: str, n: int = 1) -> None:
        self.counts[kind] += n

    def note(self, kind: str, line: str) -> None:
        """Count `kind` and keep a line saying what happened."""
        self.counts[kind] += 1
        self.lines.append(f"{kind}: {line}")

    def summary(self) -> list[tuple[str, int]]:
        """(kind, count), most frequent first, then by name: stable for reports."""
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
