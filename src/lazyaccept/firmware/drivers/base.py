"""What every driver here shares: an interface is a guest structure of function pointers into service thunks,
allocated from the DXE core; device path helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyaccept.records import Actor

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore

FW = Actor.DXE
END_NODE = bytes([0x7F, 0xFF, 4, 0])


def vendor_media_path(vendor: bytes) -> bytes:
    """A VenMedia(GUID) node followed by End: MEDIA_DEVICE_PATH (4), MEDIA_VENDOR_DP (3)."""
    return bytes([4, 3]) + (20).to_bytes(2, "little") + vendor + END_NODE


def pointers(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


class ProtocolBase:
    def __init__(self, machine: UefiCore):
        self.m = machine

    def struct(self, name: str, methods: list[tuple[str, Callable[..., int | None], int]], tail: bytes = b"") -> int:
        """Allocate and write a protocol interface: function pointers to new thunks, then tail data."""
        thunks = [self.m.thunk(f"{name}.{n}", fn, nargs) for n, fn, nargs in methods]
        addr = self.m.fw_alloc(8 * len(thunks) + len(tail))
        self.m.mem.write(addr, pointers(*thunks) + tail, actor=FW)
        return addr
