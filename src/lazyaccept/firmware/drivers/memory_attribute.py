"""EFI_MEMORY_ATTRIBUTE_PROTOCOL (edk2 Protocol/MemoryAttribute.h): changes are recorded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import ProtocolBase
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


class MemoryAttribute(ProtocolBase):
    """EFI_MEMORY_ATTRIBUTE_PROTOCOL: attribute changes are recorded (the stub makes its text RO+X)."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        self.changes: list[tuple[str, int, int, int]] = []
        self.interface = self.struct(
            "MemoryAttribute",
            [
                ("GetMemoryAttributes", self.get, 4),
                ("SetMemoryAttributes", self.set, 4),
                ("ClearMemoryAttributes", self.clear, 4),
            ],
        )
        self.m.install(self.m.new_handle(), guids.MEMORY_ATTRIBUTE, self.interface, self)

    def _check(self, base: int, length: int) -> bool:
        return bool(length) and not base & 0xFFF and not length & 0xFFF

    def get(self, this: int, base: int, length: int, attr_ptr: int) -> int:
        if not self._check(base, length) or not attr_ptr:
            return S.INVALID_PARAMETER
        self.m.w64(attr_ptr, 0)
        return S.SUCCESS

    def set(self, this: int, base: int, length: int, attributes: int) -> int:
        if not self._check(base, length):
            return S.INVALID_PARAMETER
        self.changes.append(("set", base, length, attributes))
        return S.SUCCESS

    def clear(self, this: int, base: int, length: int, attributes: int) -> int:
        if not self._check(base, length):
            return S.INVALID_PARAMETER
        self.changes.append(("clear", base, length, attributes))
        return S.SUCCESS
