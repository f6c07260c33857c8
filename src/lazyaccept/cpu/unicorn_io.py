"""RDTSC and port I/O under unicorn, answered by the EFI machine (on_rdtsc, on_port_in, on_port_out).

unicorn's Python binding hooks IN, OUT and CPUID but refuses RDTSC, while the C library (2.x) accepts
UC_X86_INS_RDTSC with the CPUID callback type (int cb(uc, user): 1 = the hook set EDX:EAX). So RDTSC is
registered through the binding's own lower-level hook_add. Without these hooks an IN returns 0, which makes
GRUB's PIT calibration loop (grub_pit_wait) spin forever, and RDTSC follows the host clock, not virtual time.
A backend other than unicorn (KVM) answers the same three client methods from its own exits.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

if TYPE_CHECKING:
    from lazyaccept.cpu.machine import EfiMachine


def install_io_hooks(machine: EfiMachine) -> list[str]:
    """Hook what the machine's config asks for on a unicorn backend; the names of the hooks installed."""
    uc = getattr(machine.backend, "uc", None)
    if uc is None:
        return []
    installed = []
    keep: list[object] = []
    if machine.config.port_io:

        def port_in(_uc: object, port: int, size: int, _user: object) -> int:
            return machine.on_port_in(port, size)

        def port_out(_uc: object, port: int, size: int, value: int, _user: object) -> None:
            machine.on_port_out(port, size, value)

        uc.hook_add(UC_HOOK_INSN, port_in, None, 1, 0, X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, port_out, None, 1, 0, X.UC_X86_INS_OUT)
        installed += ["in", "out"]
    if machine.config.virtual_tsc:
        from unicorn.unicorn_py3.arch import intel

        @intel.uccallback(uc, intel.HOOK_INSN_CPUID_CFUNC)
        def rdtsc(_uc: object, _key: int) -> int:
            value = machine.on_rdtsc()
            uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
            uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
            return 1

        add = uc._Uc__do_hook_add  # the binding's generic path, which does not filter the instruction id
        add(UC_HOOK_INSN, rdtsc, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))  # RDTSCP (also ECX) is left alone
        keep.append(rdtsc)
        installed.append("rdtsc")
    machine.backend._io_hook_refs = keep  # type: ignore[attr-defined,union-attr]  # ctypes callbacks must stay alive
    return installed


# ================================================================================================= fast paths
FAST_CHUNK = 16 << 20


def install_fast_paths(machine: EfiMachine, functions: dict[str, int]) -> list[str]:
    """Run a loader's byte-at-a-time memmove/memset in Python instead of instruction by instruction.

    GRUB's grub_memmove and grub_memset (kern/misc.c, built without SSE) copy one byte per loop iteration,
    about 100 ns a byte under unicorn: GRUB's disk cache copies every 4 KiB it reads, so a 1 GiB initrd would
    take minutes. Each function's first instruction is hooked; the hook does what the C function does (System V
    ABI, as GRUB's own code is compiled: dest in RDI, source or value in RSI, length in RDX, dest returned in
    RAX) through the machine's memory, so accesses are checked against the TDX module as before, then returns
    to the caller. Like guest instructions, the copy costs no virtual time, so results are the same with and
    without the fast paths (and on another backend); only wall time changes. The binary is not modified."""
    b = machine.backend
    if not hasattr(b, "add_code_hook"):
        return []

    def finish(result: int) -> None:
        rsp = b.reg("rsp")
        b.set_reg("rax", result)
        b.set_reg("rip", int.from_bytes(b.read(rsp, 8), "little"))
        b.set_reg("rsp", rsp + 8)

    def memmove() -> None:
        dst, src, n = b.reg("rdi"), b.reg("rsi"), b.reg("rdx")
        if n:
            chunks = [(off, machine.read(src + off, min(FAST_CHUNK, n - off))) for off in range(0, n, FAST_CHUNK)]
            for off, data in chunks if dst <= src else reversed(chunks):
                machine.write(dst + off, data)
        finish(dst)

    def memset() -> None:
        dst, value, n = b.reg("rdi"), b.reg("rsi"), b.reg("rdx")
        for off in range(0, n, FAST_CHUNK):
            machine.write(dst + off, bytes([value & 0xFF]) * min(FAST_CHUNK, n - off))
        finish(dst)

    impls = {"memmove": memmove, "memset": memset}
    installed = []
    for kind, address in functions.items():
        fn = impls.get(kind)
        if fn is not None and address:
            b.add_code_hook(address, fn)  # the same on every backend, so timelines stay identical
            installed.append(kind)
    return installed
