"""The memory-accept protocols: EDKII_MEMORY_ACCEPT_PROTOCOL (MdePkg Protocol/MemoryAccept.h; TdxDxe installs it)
and OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL (OvmfPkg Protocol/SevMemoryAcceptance.h), the OS's opt-in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazyaccept.firmware.drivers.base import ProtocolBase
from lazyaccept.spec import guids
from lazyaccept.spec.efi import EfiStatus as S

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.core import UefiCore


class AcceptProtocols(ProtocolBase):
    """EDKII_MEMORY_ACCEPT_PROTOCOL (TdxDxe installs it: TDCALLs only, no GCD update) and, when the policy
    installs it, OVMF_SEV_MEMORY_ACCEPTANCE_PROTOCOL (the OS's opt-in to unaccepted memory)."""

    def __init__(self, machine: UefiCore):
        super().__init__(machine)
        core = self.m.dxe
        self.allow_calls = 0
        if core.protocol is not None:
            iface = self.struct("MemoryAccept", [("AcceptMemory", self.accept_memory, 3)])
            self.m.install(self.m.new_handle(), guids.EDKII_MEMORY_ACCEPT, iface, self)
        if core.sev_protocol is not None:
            iface = self.struct("SevMemoryAcceptance", [("AllowUnacceptedMemory", self.allow, 1)])
            self.m.install(self.m.new_handle(), guids.OVMF_SEV_MEMORY_ACCEPTANCE, iface, self)

    def accept_memory(self, this: int, start: int, size: int) -> int:
        protocol = self.m.dxe.protocol
        if protocol is None:  # installed only with the protocol; a stale pointer finds nothing to call
            return S.UNSUPPORTED
        status = protocol.accept_memory(start, size, actor=self.m.actor)
        self.m.log("MemoryAccept.AcceptMemory", f"{start:#x}, {size:#x}", status)
        return status

    def allow(self, this: int) -> int:
        self.allow_calls += 1
        sev = self.m.dxe.sev_protocol
        if sev is None:
            return S.UNSUPPORTED
        status = sev.allow_unaccepted_memory()
        self.m.log("SevMemoryAcceptance.AllowUnacceptedMemory", "", status)
        return status
