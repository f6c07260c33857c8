"""Guest-physical RAM of the KVM backend: 1 GiB KVM memory slots, each backed by host memory made on first use."""

from __future__ import annotations

from collections.abc import Iterator

from lazyaccept.cpu.kvm.ioctl import HostMemory, KvmError, Vm
from lazyaccept.tdx.memory import zero_views

CHUNK = 1 << 30  # guest RAM slot granularity: small enough to make lazily, few enough for KVM's slot limit


class GuestRam:
    """Guest-physical RAM in 1 GiB KVM slots, each backed by host memory reserved on first use."""

    def __init__(self, kvm_vm: Vm, limit: int, first_slot: int):
        self.vm = kvm_vm
        self.limit = limit
        self.chunks: dict[int, HostMemory] = {}
        self._next_slot = first_slot

    def ensure(self, start: int, end: int) -> None:
        if end > self.limit:
            raise KvmError(0, f"guest RAM at {start:#x}-{end:#x} lies beyond the backend's limit {self.limit:#x}")
        for index in range(start // CHUNK, (end - 1) // CHUNK + 1):
            if index not in self.chunks:
                memory = HostMemory(CHUNK, align=CHUNK)
                self.vm.set_memory_region(self._next_slot, index * CHUNK, CHUNK, memory.address)
                self._next_slot += 1
                self.chunks[index] = memory

    def _pieces(self, gpa: int, size: int) -> Iterator[tuple[int, int, int, int]]:
        """(chunk index, offset in chunk, offset in data, length) for [gpa, gpa + size)."""
        pos = 0
        while pos < size:
            index, offset = divmod(gpa + pos, CHUNK)
            n = min(size - pos, CHUNK - offset)
            yield index, offset, pos, n
            pos += n

    def read(self, gpa: int, size: int) -> bytes:
        if gpa < 0 or gpa + size > self.limit:
            raise KvmError(0, f"read of {size:#x} bytes at {gpa:#x}: outside guest RAM")
        parts = []
        for index, offset, _, n in self._pieces(gpa, size):
            memory = self.chunks.get(index)
            parts.append(bytes(memory.view[offset : offset + n]) if memory else bytes(n))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        """[gpa, gpa + size) as read-only views of the host memory behind it (zeros where no slot exists yet)."""
        if gpa < 0 or gpa + size > self.limit:
            raise KvmError(0, f"read of {size:#x} bytes at {gpa:#x}: outside guest RAM")
        for index, offset, _, n in self._pieces(gpa, size):
            memory = self.chunks.get(index)
            if memory is not None:
                yield memory.view[offset : offset + n].toreadonly()
            else:
                yield from zero_views(n)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.ensure(gpa, gpa + len(view))
        for index, offset, pos, n in self._pieces(gpa, len(view)):
            self.chunks[index].view[offset : offset + n] = view[pos : pos + n]

    def discard(self, gpa: int, size: int) -> None:
        """Page-aligned [gpa, gpa + size) reads as zero again; the host pages are returned."""
        for index, offset, _, n in self._pieces(gpa, size):
            memory = self.chunks.get(index)
            if memory is not None:
                memory.discard(offset, n)

    @property
    def resident_chunks(self) -> int:
        return len(self.chunks)
