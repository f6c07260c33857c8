"""Guest memory: one object addressable by GPA, through which every guest-side read and write goes.

Every access is checked against the TDX module first (an access to a page that is not accepted terminates the
TD), Python-side firmware writes included. The bytes live in a replaceable backing; the default is sparse
(2 MiB chunks allocated on first write, untouched memory reads as zero and costs nothing).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Protocol

Buffer = bytes | bytearray | memoryview
CHUNK = 1 << 21
VIEW_CHUNK = 16 << 20  # the most a fallback or a zero run hands out at once
_ZERO_STEP = 1 << 20
_ZEROS = bytes(VIEW_CHUNK)  # calloc'd: untouched, its pages cost no host memory


def is_zero(data: Buffer) -> bool:
    """All bytes zero, at memcmp speed and without a copy (startswith takes any buffer; stops at the first
    non-zero megabyte)."""
    view = memoryview(data).cast("B")
    return all(_ZEROS.startswith(view[i : i + _ZERO_STEP]) for i in range(0, len(view), _ZERO_STEP))


def zero_views(size: int) -> Iterator[memoryview]:
    """`size` zero bytes as read-only views of one shared zero buffer."""
    zeros = memoryview(_ZEROS)
    for pos in range(0, size, VIEW_CHUNK):
        yield zeros[: min(VIEW_CHUNK, size - pos)]


def overlaps(a: int, b: int, size: int) -> bool:
    return a < b + size and b < a + size


class Backing(Protocol):
    def read(self, gpa: int, size: int) -> bytes: ...
    def write(self, gpa: int, data: Buffer) -> None: ...
    def zero(self, start: int, end: int) -> None: ...


def backing_views(backing: Backing, gpa: int, size: int) -> Iterator[memoryview]:
    """[gpa, gpa + size) as consecutive read-only views: the backing's own `views` where it has one (no copy),
    else reads of at most VIEW_CHUNK. A view may be reused by the next one: consume each before taking another."""
    views = getattr(backing, "views", None)
    if views is not None:
        yield from views(gpa, size)
        return
    for pos in range(0, size, VIEW_CHUNK):
        yield memoryview(backing.read(gpa + pos, min(VIEW_CHUNK, size - pos)))


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

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        while size > 0:
            idx, off = divmod(gpa, CHUNK)
            n = min(size, CHUNK - off)
            chunk = self.chunks.get(idx)
            yield memoryview(chunk)[off : off + n] if chunk is not None else memoryview(_ZEROS)[:n]
            gpa += n
            size -= n

    def write(self, gpa: int, data: Buffer) -> None:
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


class AccessChecker(Protocol):
    """What guest memory needs of the TDX module (tdx/module.py's TdxModule): the check of each access."""

    def check_access(
        self, gpa: int, size: int, access: str, *, actor: str, vcpu: int = 0, rip: int | None = None
    ) -> None: ...


class GuestMemory:
    """GPA-addressed guest memory whose every access the TDX module checks."""

    def __init__(self, tdx: AccessChecker, backing: Backing | None = None):
        self.tdx = tdx
        self.backing: Backing = backing or SparseBacking()

    def read(self, gpa: int, size: int, *, actor: str, vcpu: int = 0) -> bytes:
        self.tdx.check_access(gpa, size, "read", actor=actor, vcpu=vcpu)
        return self.backing.read(gpa, size)

    def views(self, gpa: int, size: int, *, actor: str, vcpu: int = 0) -> Iterator[memoryview]:
        """[gpa, gpa + size) as read-only views without copying where the backing allows (hash or copy from
        them, one at a time: the next view may reuse the last one's buffer). The whole range is checked now."""
        self.tdx.check_access(gpa, size, "read", actor=actor, vcpu=vcpu)
        return backing_views(self.backing, gpa, size)

    def write(self, gpa: int, data: Buffer, *, actor: str, vcpu: int = 0) -> None:
        self.tdx.check_access(gpa, len(data), "write", actor=actor, vcpu=vcpu)
        self.backing.write(gpa, data)

    def fill(self, gpa: int, size: int, byte: int = 0, *, actor: str, vcpu: int = 0) -> None:
        self.tdx.check_access(gpa, size, "write", actor=actor, vcpu=vcpu)
        if byte == 0:
            self.backing.zero(gpa, gpa + size)
        else:
            self.backing.write(gpa, bytes([byte]) * size)

    def copy(
        self,
        dst: int,
        src: int,
        size: int,
        *,
        actor: str,
        vcpu: int = 0,
        src_actor: str | None = None,
        chunk: int | None = None,
    ) -> None:
        """memmove within guest memory; both ranges are checked whole before a byte moves. Disjoint ranges are
        streamed view by view (one memcpy per byte where the backing gives views) as one write per `chunk`
        (default: one write), so a backing decides on zeros per chunk as if each chunk were read and written;
        overlapping ones go through one copy in Python."""
        if size <= 0:
            return
        if overlaps(dst, src, size):
            data = self.read(src, size, actor=src_actor or actor, vcpu=vcpu)
            self.write(dst, data, actor=actor, vcpu=vcpu)
            return
        self.tdx.check_access(src, size, "read", actor=src_actor or actor, vcpu=vcpu)
        self.tdx.check_access(dst, size, "write", actor=actor, vcpu=vcpu)
        write_views = getattr(self.backing, "write_views", None)
        step = chunk or size
        for off in range(0, size, step):
            n = min(step, size - off)
            views = functools.partial(backing_views, self.backing, src + off, n)
            if write_views is not None:
                write_views(dst + off, n, views)
                continue
            pos = dst + off
            for view in views():
                self.backing.write(pos, view)
                pos += len(view)

    def read_u64(self, gpa: int, *, actor: str) -> int:
        return int.from_bytes(self.read(gpa, 8, actor=actor), "little")

    def vmm_write(self, gpa: int, data: Buffer) -> None:
        """The VMM's own write (initial contents given to TDH.MEM.PAGE.ADD): not a guest access."""
        self.backing.write(gpa, data)
