"""EFI_RNG_PROTOCOL (edk2 Protocol/Rng.h), seeded so that a run with nokaslr is reproducible."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import ProtocolBase
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


class Rng(ProtocolBase):
    """EFI_RNG_PROTOCOL, seeded so that a run (with nokaslr) is reproducible; the seed goes in the report."""

    def __init__(self, machine: UefiCore, seed: int):
        super().__init__(machine)
        self.seed = seed
        self.random = random.Random(seed)
        self.bytes_served = 0
        self.interface = self.struct("Rng", [("GetInfo", self.get_info, 3), ("GetRNG", self.get_rng, 4)])
        self.m.install(self.m.new_handle(), guids.RNG, self.interface, self)

    def get_info(self, this: int, size_ptr: int, list_ptr: int) -> int:
        have = self.m.r64(size_ptr)
        self.m.w64(size_ptr, 16)
        if have < 16 or not list_ptr:
            return S.BUFFER_TOO_SMALL
        self.m.write(list_ptr, guids.RNG_ALG_RAW.bytes_le)
        return S.SUCCESS

    def get_rng(self, this: int, algorithm_ptr: int, length: int, buffer: int) -> int:
        if not buffer or length == 0:
            return S.INVALID_PARAMETER
        if algorithm_ptr and self.m.read_guid(algorithm_ptr) != guids.RNG_ALG_RAW:
            return S.UNSUPPORTED
        self.m.write(buffer, self.random.randbytes(length))
        self.bytes_served += length
        return S.SUCCESS
