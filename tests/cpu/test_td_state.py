"""td_state's unicorn workarounds, on a bare unicorn CPU: no exit address is walked when emu_start returns, and a
stop without a reason names what was delivered last."""

from __future__ import annotations

from typing import Any

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MODE_64, UC_PROT_ALL, UC_TLB_VIRTUAL, Uc, UcError
from unicorn import x86_const as X

from lazyaccept.cpu.unicorn.td_state import EventTrail, reset_old_exception, run_without_exits, silent_stop_detail

CODE = 0x1000
UNTIL = (1 << 64) - 1  # the exit address the TD vCPU passes (td_vcpu.UNREACHABLE_UNTIL)


def _virtual_tlb_cpu(fills: list[int]) -> Uc:
    """A CPU in UC_TLB_VIRTUAL mode whose fill hook maps only the code page, as the TD vCPU's walker does for a
    page the guest's tables leave unmapped; `fills` records every page asked for."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000, UC_PROT_ALL)
    uc.mem_write(CODE, b"\x90\x90\xf4")  # nop; nop; hlt
    binding: Any = uc
    binding.ctl_set_tlb_mode(UC_TLB_VIRTUAL)

    def fill(_uc: Uc, va: int, _access: int, entry: Any, _user: object) -> bool:
        fills.append(va & ~0xFFF)
        if va & ~0xFFF != CODE:
            return False
        entry.paddr, entry.perms = CODE, UC_PROT_ALL
        return True

    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    return uc


def test_unicorn_walks_the_exit_page_when_emu_start_returns() -> None:
    # The quirk itself (unicorn 2.1.4): a clean HLT becomes UC_ERR_EXCEPTION because the exit's page was walked.
    fills: list[int] = []
    uc = _virtual_tlb_cpu(fills)
    with pytest.raises(UcError):
        uc.emu_start(CODE, UNTIL)
    assert UNTIL & ~0xFFF in fills


def test_without_exits_a_slice_returns_cleanly_and_walks_only_guest_pages() -> None:
    fills: list[int] = []
    uc = _virtual_tlb_cpu(fills)
    run_without_exits(uc)
    for _ in range(2):
        uc.emu_start(CODE, UNTIL)  # HLT ends the slice; `until` has no effect
        assert uc.reg_read(X.UC_X86_REG_RIP) == CODE + 3
        uc.reg_write(X.UC_X86_REG_RIP, CODE)
    assert set(fills) == {CODE}


def test_a_silent_stop_names_the_pending_exception_and_the_last_deliveries() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000, UC_PROT_ALL)
    trail = EventTrail(size=2)
    assert silent_stop_detail(uc, trail) == (
        "unicorn returned without a reason (no exception pending); no exception or interrupt delivered yet"
    )
    for vector, rip in ((0x20, 0x7000), (14, 0x7E2AEE71), (8, 0x7E2AEE71)):
        trail.record(vector, rip)
    detail = silent_stop_detail(uc, trail)
    assert "vector 0x20" not in detail  # only the last two are kept
    assert detail.endswith("last delivered: #PF (return RIP 0x7e2aee71), #DF (return RIP 0x7e2aee71)")
    # A #DE leaves old_exception 0 in unicorn until it is reset (what a triple fault starts from).
    uc.mem_write(CODE, b"\x31\xc9\xf7\xf1")  # xor ecx, ecx; div ecx
    uc.hook_add(UC_HOOK_INTR, lambda u, _intno, _user: u.emu_stop())
    uc.emu_start(CODE, CODE + 4)
    assert "(exception #DE pending)" in silent_stop_detail(uc, trail)
    reset_old_exception(uc)
    assert "(no exception pending)" in silent_stop_detail(uc, trail)
