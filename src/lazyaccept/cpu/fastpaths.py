"""Backend-neutral fast paths: a loader's byte-at-a-time memmove/memset run in Python instead of instruction by
instruction, on any backend that can hook an address (CpuBackend.add_code_hook)."""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept.cpu.backend import CpuBackend

FAST_CHUNK = 16 << 20


def install_fast_paths(
    backend: CpuBackend,
    read: Callable[[int, int], bytes],
    write: Callable[[int, bytes], None],
    functions: dict[str, int],
) -> list[str]:
    """Run a loader's byte-at-a-time memmove/memset in Python instead of instruction by instruction.

    GRUB's grub_memmove and grub_memset (kern/misc.c, built without SSE) copy one byte per loop iteration,
    about 100 ns a byte under unicorn: GRUB's disk cache copies every 4 KiB it reads, so a 1 GiB initrd would
    take minutes. Each function's first instruction is hooked; the hook does what the C function does (System V
    ABI, as GRUB's own code is compiled: dest in RDI, source or value in RSI, length in RDX, dest returned in
    RAX) through `read` and `write` (the machine's, so accesses are checked against the TDX module as before),
    then returns to the caller. Like guest instructions, the copy costs no virtual time, so results are the same
    with and without the fast paths (and on another backend); only wall time changes. The binary is not
    modified."""
    b = backend
    if not b.hooks_code:
        return []

    def finish(result: int) -> None:
        rsp = b.reg("rsp")
        b.set_reg("rax", result)
        b.set_reg("rip", int.from_bytes(b.read(rsp, 8), "little"))
        b.set_reg("rsp", rsp + 8)

    def memmove() -> None:
        dst, src, n = b.reg("rdi"), b.reg("rsi"), b.reg("rdx")
        if n:
            chunks = [(off, read(src + off, min(FAST_CHUNK, n - off))) for off in range(0, n, FAST_CHUNK)]
            for off, data in chunks if dst <= src else reversed(chunks):
                write(dst + off, data)
        finish(dst)

    def memset() -> None:
        dst, value, n = b.reg("rdi"), b.reg("rsi"), b.reg("rdx")
        for off in range(0, n, FAST_CHUNK):
            write(dst + off, bytes([value & 0xFF]) * min(FAST_CHUNK, n - off))
        finish(dst)

    impls = {"memmove": memmove, "memset": memset}
    installed = []
    for kind, address in functions.items():
        fn = impls.get(kind)
        if fn is not None and address:
            b.add_code_hook(address, fn)  # the same on every backend, so timelines stay identical
            installed.append(kind)
    return installed
