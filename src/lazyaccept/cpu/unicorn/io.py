"""RDTSC and port I/O under unicorn, answered by the client (CpuClient.on_rdtsc, on_port_in, on_port_out).

unicorn's Python binding hooks IN, OUT and CPUID but refuses RDTSC, while the C library (2.x) accepts
UC_X86_INS_RDTSC with the CPUID callback type (int cb(uc, user): 1 = the hook set EDX:EAX). So RDTSC is
registered through the binding's own lower-level hook_add. Without these hooks an IN returns 0, which makes
GRUB's PIT calibration loop (grub_pit_wait) spin forever, and RDTSC follows the host clock, not virtual time.
A backend other than unicorn (KVM) answers the same three client methods from its own exits.
"""

from __future__ import annotations

import ctypes
from typing import Any

from unicorn import UC_HOOK_INSN, Uc
from unicorn import x86_const as X

from lazyaccept.cpu.backend import CpuClient


def install_port_io_hooks(uc: Uc, client: CpuClient) -> None:
    """IN and OUT go to the client."""

    def port_in(_uc: object, port: int, size: int, _user: object) -> int:
        return client.on_port_in(port, size)

    def port_out(_uc: object, port: int, size: int, value: int, _user: object) -> None:
        client.on_port_out(port, size, value)

    uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)


def install_rdtsc_hook(uc: Uc, client: CpuClient) -> object:
    """RDTSC reads the client's TSC (RDTSCP, which also sets ECX, is left alone). Returns the ctypes callback,
    which the caller must keep alive as long as `uc`."""
    from unicorn.unicorn_py3.arch import intel

    binding: Any = uc  # the binding's private hook path below is not in its type hints

    @intel.uccallback(binding, intel.HOOK_INSN_CPUID_CFUNC)
    def rdtsc(_uc: object, _key: int) -> int:
        value = client.on_rdtsc()
        uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
        return 1

    add = binding._Uc__do_hook_add  # the binding's generic path, which does not filter the instruction id
    add(UC_HOOK_INSN, rdtsc, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
    return rdtsc
