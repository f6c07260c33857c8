"""XMM/x87 state of the KVM backend's vCPU, through KVM_GET/SET_XSAVE(2) or KVM_GET/SET_FPU; the backend's
self-test picks the first that reaches the guest."""

from __future__ import annotations

import ctypes
import struct

from lazyaccept.cpu.kvm.ioctl import (
    KVM_CAP_XSAVE,
    KVM_CAP_XSAVE2,
    XSAVE_FCW,
    XSAVE_MXCSR,
    XSAVE_SIZE,
    XSAVE_XMM0,
    XSAVE_XSTATE_BV,
    Kvm,
    Vcpu,
    Vm,
    kvm_fpu,
)

XSTATE_X87, XSTATE_SSE = 1, 2  # XSTATE_BV bits: components XRSTOR loads from memory instead of their init values


class XsaveState:
    """The vCPU's FPU/SSE state through KVM_GET_XSAVE (or KVM_GET_XSAVE2) and KVM_SET_XSAVE: struct kvm_xsave in
    the XSAVE standard format (ioctl.XSAVE_*). A register written here sets its component's XSTATE_BV bit, else
    XRSTOR would give the guest the component's init value (zeros) instead."""

    def __init__(self, vcpu: Vcpu, size: int = XSAVE_SIZE, *, xsave2: bool = False):
        self.vcpu, self.xsave2 = vcpu, xsave2
        self.name = f"KVM_GET_XSAVE2/KVM_SET_XSAVE ({size} bytes)" if xsave2 else "KVM_GET_XSAVE/KVM_SET_XSAVE"
        self.buffer = (ctypes.c_uint8 * size)()

    def load(self) -> None:
        self.vcpu.get_xsave(self.buffer, xsave2=self.xsave2)

    def store(self) -> None:
        self.vcpu.set_xsave(self.buffer)

    def xmm(self, i: int) -> int:
        start = XSAVE_XMM0 + 16 * i
        return int.from_bytes(bytes(self.buffer[start : start + 16]), "little")

    def set_xmm(self, i: int, value: int) -> None:
        start = XSAVE_XMM0 + 16 * i
        self.buffer[start : start + 16] = list(value.to_bytes(16, "little"))
        self._mark(XSTATE_SSE)

    def set_control(self, fcw: int, mxcsr: int) -> None:
        struct.pack_into("<H", self.buffer, XSAVE_FCW, fcw)
        struct.pack_into("<I", self.buffer, XSAVE_MXCSR, mxcsr)
        self._mark(XSTATE_X87 | XSTATE_SSE)

    def _mark(self, bits: int) -> None:
        bv = struct.unpack_from("<Q", self.buffer, XSAVE_XSTATE_BV)[0]
        struct.pack_into("<Q", self.buffer, XSAVE_XSTATE_BV, bv | bits)


class FpuState:
    """The vCPU's FPU/SSE state through KVM_GET_FPU/KVM_SET_FPU (struct kvm_fpu)."""

    name = "KVM_GET_FPU/KVM_SET_FPU"

    def __init__(self, vcpu: Vcpu):
        self.vcpu = vcpu
        self.fpu = kvm_fpu()

    def load(self) -> None:
        self.vcpu.get_fpu(self.fpu)

    def store(self) -> None:
        self.vcpu.set_fpu(self.fpu)

    def xmm(self, i: int) -> int:
        return int.from_bytes(bytes(self.fpu.xmm[16 * i : 16 * i + 16]), "little")

    def set_xmm(self, i: int, value: int) -> None:
        self.fpu.xmm[16 * i : 16 * i + 16] = list(value.to_bytes(16, "little"))

    def set_control(self, fcw: int, mxcsr: int) -> None:
        self.fpu.fcw, self.fpu.mxcsr = fcw, mxcsr


XmmState = XsaveState | FpuState


def xmm_state_candidates(kvm: Kvm, vm: Vm, vcpu: Vcpu) -> list[XmmState]:
    """The ways to reach XMM state this KVM offers, best first (KVM API doc: KVM_GET_XSAVE2, KVM_SET_XSAVE)."""
    out: list[XmmState] = []
    if kvm.check_extension(KVM_CAP_XSAVE):
        size = vm.check_extension(KVM_CAP_XSAVE2)  # 0 before Linux 5.17; at least 4096 where offered
        if size >= XSAVE_SIZE:
            out.append(XsaveState(vcpu, size, xsave2=True))
        out.append(XsaveState(vcpu))
    out.append(FpuState(vcpu))
    return out
