"""The native instruction counter (cpu/unicorn/icount.py + icount.c) and its absence."""

from __future__ import annotations

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc

from lazyaccept.cpu.unicorn import icount


def _loop(uc: Uc, at: int, times: int) -> int:
    """mov ecx, times; dec ecx; nop; jnz back; hlt at `at`: returns the address of the HLT."""
    uc.mem_write(at, b"\xb9" + times.to_bytes(4, "little") + bytes.fromhex("ffc99075fb") + b"\xf4")
    return at + 10


def test_instructions_are_counted_exactly_and_by_page() -> None:
    if icount.unavailable_reason() is not None:
        pytest.skip(icount.unavailable_reason())
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x10000, 0x3000, UC_PROT_ALL)
    counter = icount.counter_for(uc)
    assert counter is not None
    uc.emu_start(0x10000, _loop(uc, 0x10000, 1000))
    uc.emu_start(0x12000, _loop(uc, 0x12000, 7))
    assert counter.instructions == (1 + 3 * 1000) + (1 + 3 * 7)
    assert sorted(counter.drain()) == [(0x10000, 1 + 3 * 1000), (0x12000, 1 + 3 * 7)]  # the first block's address
    assert counter.drain() == []  # handed over once
    uc.emu_start(0x12000, 0x1200A)
    assert counter.drain() == [(0x12000, 1 + 3 * 7)] and counter.stats()["unknown_blocks"] == 0


def test_without_a_c_compiler_the_run_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icount, "_compiler", lambda: None)
    monkeypatch.setattr(icount, "_loaded", False)
    monkeypatch.setattr(icount, "_library", None)
    monkeypatch.setattr(icount, "_problem", None)
    assert icount.counter_for(Uc(UC_ARCH_X86, UC_MODE_64)) is None
    assert icount.unavailable_reason() == "no C compiler (cc, gcc, clang or $CC) on this machine"
