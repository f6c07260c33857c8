"""Binary layouts declared once, with their C names, and used both to read and to write.

A Layout is a little-endian packed C struct. Reading checks that the buffer holds the whole struct and
raises InputError naming the struct and offset otherwise, so a truncated HOB or image never surfaces as a
struct.error traceback.
"""

from __future__ import annotations

import mmap
import struct
import uuid
from collections.abc import Mapping
from typing import Any

from lazyaccept.errors import InputError

Buffer = bytes | bytearray | memoryview | mmap.mmap  # what the readers accept: a file may be mapped, not read


class Layout:
    """A packed little-endian C struct: Layout("EFI_HOB_GENERIC_HEADER", [("HobType", "H"), ...])."""

    def __init__(self, c_name: str, fields: list[tuple[str, str]]):
        self.c_name = c_name
        self.fields = [name for name, _ in fields]
        self._formats = dict(fields)
        self._struct = struct.Struct("<" + "".join(fmt for _, fmt in fields))
        self.size = self._struct.size
        self._offsets: dict[str, int] = {}
        pos = 0
        for name, fmt in fields:
            self._offsets[name] = pos
            pos += struct.calcsize("<" + fmt)

    def offset_of(self, field: str) -> int:
        return self._offsets[field]

    def pack(self, values: Mapping[str, Any] | None = None, **kw: Any) -> bytes:
        merged = dict(values or {}, **kw)
        unknown = set(merged) - set(self.fields)
        if unknown:
            raise ValueError(f"{self.c_name} has no field {sorted(unknown)[0]}")
        args = []
        for name in self.fields:
            value = merged.get(name, 0)
            if isinstance(value, uuid.UUID):
                value = value.bytes_le
            elif self._formats[name].endswith("s") and isinstance(value, int):
                value = b""
            args.append(value)
        try:
            return self._struct.pack(*args)
        except struct.error as exc:
            raise ValueError(f"cannot pack {self.c_name}: {exc}") from None

    def unpack(self, buf: Buffer, offset: int = 0, *, what: str | None = None) -> dict:
        """Read the struct at offset; a buffer too short is an InputError naming the struct and offset."""
        if offset < 0 or offset + self.size > len(buf):
            raise InputError(
                f"truncated {what or self.c_name}: needs {self.size} bytes, {max(0, len(buf) - offset)} left",
                field=self.c_name,
                offset=offset,
            )
        return dict(zip(self.fields, self._struct.unpack_from(buf, offset), strict=True))


def guid(text: str) -> uuid.UUID:
    """A GUID as written in specs, e.g. guid('e47a6535-984a-4798-865e-4685a7bf8ec2')."""
    return uuid.UUID(text)


def guid_bytes(value: uuid.UUID) -> bytes:
    """The 16 bytes of an EFI_GUID in memory (first three fields little-endian)."""
    return value.bytes_le


def guid_from_bytes(data: Buffer, offset: int = 0) -> uuid.UUID:
    if offset < 0 or offset + 16 > len(data):
        raise InputError("truncated EFI_GUID", field="EFI_GUID", offset=offset)
    return uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))
