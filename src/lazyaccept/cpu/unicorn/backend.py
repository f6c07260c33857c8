"""The unicorn CPU backend: x86-64 EFI code under unicorn's JIT, firmware services in Python.

Tricks (proved by the project's spike):
- UC_MODE_64 starts in long mode with paging off, so linear = physical and EFI code needs no page tables.
- Service thunks are `ret` bytes on one page; a code hook limited to that page runs the Python service before
  the `ret`, so the rest of guest code runs at full JIT speed.
- Unmapped memory raises UC_HOOK_MEM_UNMAPPED: accepted memory is mapped there lazily, pending memory never.
- CPUID and invalid opcodes are hookable: leaf 0x21 answers "IntelTDX    " and TDCALL (66 0F 01 CC) is routed
  to the TDX module.
- IN, OUT and RDTSC reach the client once route_io asks for them (io.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_BLOCK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from lazyaccept import interrupt
from lazyaccept.cpu.backend import VIEW_CHUNK, CpuBackend, CpuClient
from lazyaccept.cpu.unicorn.io import install_port_io_hooks, install_rdtsc_hook
from lazyaccept.records import StopKind, StopReason

TDCALL_BYTES = b"\x66\x0f\x01\xcc"
ADDRESS_LIMIT = 1 << 52
# emu_start stops silently when RIP reaches `until`; 0 would make a call through a NULL pointer look like a
# budget stop, so use an address no x86-64 code can reach (it is not canonical).
UNREACHABLE_UNTIL = (1 << 64) - 1
_REGS = {
    name: getattr(X, f"UC_X86_REG_{name.upper()}")
    for name in (
        "rax",
        "rbx",
        "rcx",
        "rdx",
        "rsi",
        "rdi",
        "rbp",
        "rsp",
        "r8",
        "r9",
        "r10",
        "r11",
        "r12",
        "r13",
        "r14",
        "r15",
        "rip",
        "eflags",
        "cr0",
        "cr2",
        "cr3",
        "cr4",
    )
}
_XMM = {f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)}
UC_ERR_OK = 0


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)


@contextmanager
def _address_of(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """The address of a contiguous buffer, read-only ones included (ctypes' from_buffer needs writable ones),
    held for the duration: unicorn reads from it without a copy into Python bytes."""
    buffer = _PyBuffer()
    _get_buffer(data, ctypes.byref(buffer), 0)  # PyBUF_SIMPLE: contiguous bytes, else BufferError
    try:
        yield buffer.buf, buffer.len
    finally:
        _release_buffer(ctypes.byref(buffer))


class UnicornBackend(CpuBackend):
    """Every capability is the same on every host, so all are class attributes."""

    name = "unicorn"
    counts_instructions = True
    routes_cpuid = True
    routes_rdtsc = True
    routes_port_io = True
    hooks_code = True

    def __init__(self, client: CpuClient):
        self.client = client
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # SSE as under real firmware: CR4.OSFXSR | OSXMMEXCPT.
        self.uc.reg_write(X.UC_X86_REG_CR4, self.uc.reg_read(X.UC_X86_REG_CR4) | (1 << 9) | (1 << 10))
        self._stop: StopReason | None = None
        self._block_hooks: list[int] = []
        self._thunk_hook: int | None = None
        self._thunk_base = 0
        self._view_buffer: bytearray | None = None
        self._routed: list[str] = []
        self._io_hook_refs: list[object] = []  # ctypes callbacks must live as long as the engine
        self.uc.hook_add(
            UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED, self._unmapped
        )
        self.uc.hook_add(UC_HOOK_INSN, self._cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._invalid)
        self.uc.hook_add(UC_HOOK_INTR, self._interrupt)

    # ----------------------------------------------------------------- memory and registers
    def map(self, gpa: int, size: int) -> None:
        self.uc.mem_map(gpa, size, UC_PROT_ALL)

    def unmap(self, gpa: int, size: int) -> None:
        self.uc.mem_unmap(gpa, size)

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(gpa, size))

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        """Mapped memory read straight into one reusable buffer (unicorn's memory has no host view to share):
        one memcpy per byte, VIEW_CHUNK at a time; each view is overwritten by the next."""
        if self._view_buffer is None:
            self._view_buffer = bytearray(VIEW_CHUNK)
        out = memoryview(self._view_buffer)
        for pos in range(0, size, VIEW_CHUNK):
            n = min(VIEW_CHUNK, size - pos)
            status = uclib.uc_mem_read(self.uc._uch, gpa + pos, (ctypes.c_char * n).from_buffer(out), n)
            if status != UC_ERR_OK:
                raise UcError(status)  # UcError takes the status alone
            yield out[:n].toreadonly()

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        if isinstance(data, bytes):
            self.uc.mem_write(gpa, data)
            return
        # uc_mem_write (not a store through a host view) so that unicorn drops code it translated from here.
        with _address_of(data) as (address, size):
            status = uclib.uc_mem_write(self.uc._uch, gpa, ctypes.cast(address, ctypes.POINTER(ctypes.c_char)), size)
        if status != UC_ERR_OK:
            raise UcError(status)

    def reg(self, name: str) -> int:
        if name in _XMM:
            return self.uc.reg_read(_XMM[name])
        return self.uc.reg_read(_REGS[name])

    def set_reg(self, name: str, value: int) -> None:
        if name in _XMM:
            self.uc.reg_write(_XMM[name], value)
        else:
            self.uc.reg_write(_REGS[name], value & ((1 << 64) - 1))

    # ----------------------------------------------------------------- code layout
    def thunk_code(self) -> bytes:
        return b"\xc3\xcc\xcc\xcc"  # ret; the hook runs the service before it executes

    def set_thunk_range(self, start: int, end: int) -> None:
        if self._thunk_hook is not None:
            self.uc.hook_del(self._thunk_hook)
        self._thunk_base = start
        self._thunk_hook = self.uc.hook_add(UC_HOOK_CODE, self._thunk, None, start, end - 1)

    def set_code_ranges(self, ranges: list[tuple[int, int]]) -> None:
        """Blocks starting outside these [start, end) ranges are reported to on_block_outside."""
        for h in self._block_hooks:
            self.uc.hook_del(h)
        self._block_hooks = []
        pos = 0
        for start, end in sorted(ranges):
            if start > pos:
                self._block_hooks.append(self.uc.hook_add(UC_HOOK_BLOCK, self._outside, None, pos, start - 1))
            pos = max(pos, end)
        if pos < ADDRESS_LIMIT:
            self._block_hooks.append(self.uc.hook_add(UC_HOOK_BLOCK, self._outside, None, pos, ADDRESS_LIMIT - 1))

    def add_code_hook(self, address: int, callback: Callable[[], None]) -> None:
        self.uc.hook_add(UC_HOOK_CODE, lambda *_: callback(), None, address, address)

    def route_io(self, *, virtual_tsc: bool = False, port_io: bool = False) -> list[str]:
        """Hooks for what is asked (see unicorn/io.py), each installed once; everything asked is routed."""
        if port_io and "in" not in self._routed:
            install_port_io_hooks(self.uc, self.client)
            self._routed += ["in", "out"]
        if virtual_tsc and "rdtsc" not in self._routed:
            self._io_hook_refs.append(install_rdtsc_hook(self.uc, self.client))
            self._routed.append("rdtsc")
        asked = {"in": port_io, "out": port_io, "rdtsc": virtual_tsc}
        return [name for name in self._routed if asked[name]]

    # ----------------------------------------------------------------- running
    def run(self, rip: int, *, max_instructions: int = 0, timeout_s: float = 0) -> StopReason:
        self._stop = None
        with interrupt.stoppable(self.uc.emu_stop):  # Ctrl-C stops the CPU, then raises here (interrupt.py)
            try:
                self.uc.emu_start(rip, UNREACHABLE_UNTIL, timeout=int(timeout_s * 1e6), count=max_instructions)
            except UcError as exc:
                interrupt.reraise_from_hook(self.uc)  # Ctrl-C without the CLI's handler: not a unicorn error
                if self._stop is None:
                    self._stop = StopReason(StopKind.ERROR, f"unicorn: {exc}", self.uc.reg_read(X.UC_X86_REG_RIP))
        if self._stop is None:
            what = "instruction" if max_instructions else "time"
            self._stop = StopReason(StopKind.BUDGET, f"{what} budget exhausted", self.uc.reg_read(X.UC_X86_REG_RIP))
        return self._stop

    def stop(self, reason: StopReason) -> None:
        if self._stop is None:
            self._stop = reason
        self.uc.emu_stop()

    # ----------------------------------------------------------------- hooks
    def _thunk(self, uc: Uc, address: int, size: int, _user: object) -> None:
        index = (address - self._thunk_base) // 4
        try:
            self.client.on_service(index)
        except Exception as exc:  # a firmware bug must stop the run with a report, not kill the process
            self.stop(StopReason(StopKind.ERROR, f"firmware service raised {type(exc).__name__}: {exc}", address))
            self.error = exc

    def _unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _user: object) -> bool:
        kind = {UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_FETCH_UNMAPPED: "execute"}.get(access, "read")
        if self._stop is not None:
            return False
        return self.client.on_unmapped(address, size, kind)

    def _cpuid(self, uc: Uc, _user: object) -> int:
        leaf = uc.reg_read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        answer = self.client.on_cpuid(leaf, uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF)
        if answer is None:
            return 0
        for reg, value in zip(
            (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX), answer, strict=True
        ):
            uc.reg_write(reg, value)
        return 1

    def _invalid(self, uc: Uc, _user: object) -> bool:
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        try:
            code = bytes(uc.mem_read(rip, 4))
        except UcError:
            code = b""
        if code == TDCALL_BYTES:
            self.client.on_tdcall()
            if self._stop is None:
                uc.reg_write(X.UC_X86_REG_RIP, rip + 4)
                return True
            return False
        self.stop(StopReason(StopKind.EXCEPTION, f"invalid opcode {code.hex()} (#UD)", rip))
        return False

    def _interrupt(self, uc: Uc, intno: int, _user: object) -> None:
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        names = {0: "#DE", 3: "#BP (int3)", 6: "#UD", 13: "#GP", 14: "#PF"}
        self.stop(StopReason(StopKind.EXCEPTION, f"CPU exception {intno} {names.get(intno, '')}".strip(), rip))

    def _outside(self, uc: Uc, address: int, size: int, _user: object) -> None:
        if self._stop is None and address == 0:
            # Page 0 is accepted RAM, so this would run zeros: it is a call through a NULL pointer.
            self.stop(StopReason(StopKind.EXCEPTION, "jump to address 0 (a call through a NULL pointer)", 0))
            return
        if self._stop is None and self.client.on_block_outside(address):
            self.stop(StopReason(StopKind.KERNEL, "jumped outside firmware and loaded images", address))
