"""Guest memory: one object addressable by GPA, through which every guest-side read and write goes.

Every access is checked against the TDX module first (an access to a page that is not accepted terminates the
TD), Python-side firmware writes included. The bytes live in a replaceable backing; the default is sparse
(2 MiB chunks allocated on first write, untouched memory reads as zero and costs nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lazyaccept.tdx.module import TdxModule

CHUNK = 1 << 21


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """All bytes zero, at C speed."""
    return bytes(data).count(0) == len(data) if isinstance(data, memoryview) else data.count(0) == len(data)


class Backing(Protocol):
    def read(self, gpa: int, size: int) -> bytes: ...
    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None: ...
    def zero(self, start: int, end: int) -> None: ...


class SparseBacking:
    """Bytes in 2 MiB chunks allocated on first write."""

    def __init__(self) -> None:
        self.chunks: dict[int, bytearray] = {}

    @property
    def resident_bytes(self) -> int:
        return len(self.chunks) * CHUNK

    def read(self, gpa: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            idx, off = divmod(gpa, CHUNK)
            n = min(size, CHUNK - off)
            chunk = self.chunks.get(idx)
            out += chunk[off : off + n] if chunk is not None else bytes(n)
            gpa += n
            size -= n
        return bytes(out)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            idx, off = divmod(gpa + pos, CHUNK)
            n = min(len(view) - pos, CHUNK - off)
            chunk = self.chunks.get(idx)
            if chunk is None:
                if is_zero(view[pos : pos + n]):
                    pos += n
                    continue
                chunk = self.chunks[idx] = bytearray(CHUNK)
            chunk[off : off + n] = view[pos : pos + n]
            pos += n

    def zero(self, start: int, end: int) -> None:
        """Zero [start, end): whole chunks are dropped, so zeroing 4 TiB costs the chunks that exist."""
        if start >= end or not self.chunks:
            return
        first, last = start // CHUNK, (end - 1) // CHUNK
        keys = (
            [k for k in self.chunks if first <= k <= last]
            if last - first > len(self.chunks)
            else [k for k in range(first, last + 1) if k in self.chunks]
        )
        for k in keys:
            lo, hi = max(start, k * CHUNK), min(end, (k + 1) * CHUNK)
            if hi - lo == CHUNK:
                del self.chunks[k]
            else:
                self.chunks[k][lo - k * CHUNK : hi - k * CHUNK] = bytes(hi - lo)


class GuestMemory:
    """GPA-addressed guest memory whose every access the TDX module checks."""

    def __init__(self, tdx: TdxModule, backing: Backing | None = None):
        self.tdx = tdx
        self.backing: Backing = backing or SparseBacking()

    def read(self, gpa: int, size: int, *, actor: str, vcpu: int = 0) -> bytes:
        self.tdx.check_access(gpa, size, "read", actor=actor, vcpu=vcpu)
        return self.backing.read(gpa, size)

    def write(self, gpa: int, data: bytes | bytearray | memoryview, *, actor: str, vcpu: int = 0) -> None:
        self.tdx.check_access(gpa, len(data), "write", actor=actor, vcpu=vcpu)
        self.backing.write(gpa, data)

    def fill(self, gpa: int, size: int, byte: int = 0, *, actor: str, vcpu: int = 0) -> None:
        self.tdx.check_access(gpa, size, "write", actor=actor, vcpu=vcpu)
        if byte == 0:
            self.backing.zero(gpa, gpa + size)
        else:
            self.backing.write(gpa, bytes([byte]) * size)

    def copy(self, dst: int, src: int, size: int, *, actor: str, vcpu: int = 0) -> None:
        data = self.read(src, size, actor=actor, vcpu=vcpu)
        self.write(dst, data, actor=actor, vcpu=vcpu)

    def read_u64(self, gpa: int, *, actor: str) -> int:
        return int.from_bytes(self.read(gpa, 8, actor=actor), "little")

    def vmm_write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """The VMM's own write (initial contents given to TDH.MEM.PAGE.ADD): not a guest access."""
        self.backing.write(gpa, data)
