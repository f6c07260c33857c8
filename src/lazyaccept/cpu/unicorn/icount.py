"""Guest instructions executed under unicorn, for the virtual clock: a native block hook (icount.c) built at first
use with the machine's C compiler into a per-user cache and loaded with ctypes.

Python hooks per block or instruction would multiply the run time; unicorn's own counting (emu_start's count)
runs count-limited slices, which skip the invalid-opcode hook of a TDCALL at a slice start (REFERENCE.md). The
native hook costs one call and one hash lookup per executed block (unicorn calls a lone block hook inline).

Portable: with no C compiler, or a build or self-check that fails, `counter_for` returns None with the reason
(`unavailable_reason`), and the run's virtual time comes from TDCALLs only.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from importlib import resources
from pathlib import Path
from typing import Any

from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import unicorn_const as UC
from unicorn import x86_const as X

SOURCE = "icount.c"
BUILD_TIMEOUT_S = 60
DRAIN_BATCH = 4096


class _Totals(ctypes.Structure):
    """The leading fields of icount.c's `counter`."""

    _fields_ = [
        ("instructions", ctypes.c_uint64),
        ("blocks", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("unknown_blocks", ctypes.c_uint64),
        ("distinct_blocks", ctypes.c_uint64),
    ]


_HOOKCODE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)
# uc_ctl_request_cache (include/unicorn/unicorn.h): UC_CTL_READ_WRITE(UC_CTL_TB_REQUEST_CACHE, 2)
_REQUEST_CACHE = (UC.UC_CTL_IO_READ_WRITE << 30) | (2 << 26) | UC.UC_CTL_TB_REQUEST_CACHE

_library: ctypes.CDLL | None = None
_problem: str | None = None
_loaded = False


def native_cache_dir() -> Path:
    """Per user: $LAZYACCEPT_CACHE/native, else ~/.cache/lazyaccept/native (the library fits this machine only)."""
    root = os.environ.get("LAZYACCEPT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "lazyaccept") / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _build() -> ctypes.CDLL:
    """The shared library, compiled once per source, compiler and machine; raises OSError with the reason."""
    source = resources.files("lazyaccept.cpu.unicorn").joinpath(SOURCE).read_bytes()
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler (cc, gcc, clang or $CC) on this machine")
    key = hashlib.sha256(source + cc.encode() + platform.machine().encode()).hexdigest()[:16]
    target = native_cache_dir() / f"icount-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / SOURCE
            src.write_bytes(source)
            out = Path(tmp) / target.name
            try:
                done = subprocess.run(
                    [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)],
                    capture_output=True,
                    text=True,
                    timeout=BUILD_TIMEOUT_S,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise OSError(f"{cc} could not build {SOURCE}: {exc}") from None
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no message"])[0]
                raise OSError(f"{cc} could not build {SOURCE}: {first}")
            os.replace(out, target)  # atomic: a concurrent run sees the old file or the whole new one
    lib = ctypes.CDLL(str(target))
    lib.icount_new.restype = ctypes.c_void_p
    lib.icount_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.icount_free.argtypes = [ctypes.c_void_p]
    lib.icount_drain.restype = ctypes.c_uint32
    lib.icount_drain.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32]
    return lib


def _library_or_reason() -> tuple[ctypes.CDLL | None, str | None]:
    global _library, _problem, _loaded
    if not _loaded:
        _loaded = True
        try:
            _library = _build()
            _problem = _self_check(_library)
        except OSError as exc:
            _problem = str(exc)
        if _problem is not None:
            _library = None
    return _library, _problem


def unavailable_reason() -> str | None:
    """Why guest instructions cannot be counted on this machine (None: they can)."""
    return _library_or_reason()[1]


class InstructionCounter:
    """Counts the guest instructions `uc` executes from now on (the only UC_HOOK_BLOCK hook it may have: a second
    one would make unicorn call both through its generic, slower path)."""

    def __init__(self, uc: Uc, lib: ctypes.CDLL):
        binding: Any = uc
        ctl = ctypes.cast(_unicorn_lib().uc_ctl, ctypes.c_void_p).value
        handle = lib.icount_new(ctl, _REQUEST_CACHE)
        if not handle:
            raise MemoryError("icount_new")
        self._totals = _Totals.from_address(handle)
        self._handle = ctypes.c_void_p(handle)
        self._drain = lib.icount_drain
        self._out = (ctypes.c_uint64 * (2 * DRAIN_BATCH))()
        weakref.finalize(self, lib.icount_free, ctypes.c_void_p(handle))
        self._callback = ctypes.cast(lib.icount_block, ctypes.c_void_p)
        hook = ctypes.c_size_t()
        status = _unicorn_lib().uc_hook_add(
            binding._uch, ctypes.byref(hook), UC_HOOK_BLOCK, self._callback, ctypes.c_void_p(handle), 1, 0
        )
        if status != UC.UC_ERR_OK:
            raise OSError(f"uc_hook_add(UC_HOOK_BLOCK) failed with status {status}")
        self._keep = (uc, lib)  # the counter memory outlives every emu_start of uc

    @property
    def instructions(self) -> int:
        return int(self._totals.instructions)

    def restart_at(self, instructions: int) -> None:
        """Count on from `instructions` (a restored snapshot's vCPU: its clock books cumulative totals)."""
        self._totals.instructions = instructions

    def drain(self) -> list[tuple[int, int]]:
        """(address, instructions): the instructions of blocks starting in a 4 KiB page since the last drain, with
        the address of the first block seen in that page."""
        out: list[tuple[int, int]] = []
        while n := self._drain(self._handle, self._out, DRAIN_BATCH):
            values = self._out[: 2 * n]
            out += zip(values[0::2], values[1::2], strict=True)
        return out

    def stats(self) -> dict[str, int]:
        t = self._totals
        return {
            "instructions": int(t.instructions),
            "blocks": int(t.blocks),
            "bytes": int(t.bytes),
            "unknown_blocks": int(t.unknown_blocks),
            "distinct_blocks": int(t.distinct_blocks),
        }


def counter_for(uc: Uc) -> InstructionCounter | None:
    lib, _ = _library_or_reason()
    return InstructionCounter(uc, lib) if lib is not None else None


def _unicorn_lib() -> Any:
    from unicorn.unicorn_py3 import unicorn as binding

    return binding.uclib


def _self_check(lib: ctypes.CDLL) -> str | None:
    """Count a loop whose instruction count is known: a wrong ABI or a unicorn that changed would show here."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    # mov ecx, 100; loop: dec ecx; nop; jnz loop; hlt -> 1 + 100 * 3 instructions before HLT
    uc.mem_write(0x1000, bytes.fromhex("b964000000ffc99075fbf4"))
    counter = InstructionCounter(uc, lib)
    uc.emu_start(0x1000, 0x100A)
    expected = 1 + 100 * 3
    if counter.instructions != expected or uc.reg_read(X.UC_X86_REG_RCX) != 0:
        return f"the native instruction counter's self-check counted {counter.instructions}, not {expected}"
    return None
