"""TDG.MEM.PAGE.ACCEPT's status for each way it ends, at register level, against literals written from the TDX
module source (tag TDX_1.5.01) and never from lazyaccept.spec: the classes and operand ids are
include/auto_gen/tdx_error_codes_defs.h's, the detail each failure carries is read from
src/td_dispatcher/vm_exits/tdg_mem_page_accept.c (api_error_with_operand_id(error, id) is error + id):
OPERAND_ID_RCX on a bad RCX and on a Secure-EPT lock failure, the level where the walk stopped otherwise."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lazyaccept.tdx.module import TdxModule
from lazyaccept.tdx.tdcall import TdcallDispatcher

from .naive import ALREADY, BUSY, INVALID_RCX, MISMATCH

TDX_OPERAND_INVALID = 0xC000010000000000
TDX_OPERAND_BUSY = 0x8000020000000000
TDX_PAGE_ALREADY_ACCEPTED = 0x00000B0A00000000
TDX_PAGE_SIZE_MISMATCH = 0xC0000B0B00000000
OPERAND_ID_RCX = 1
LVL_PT, LVL_PD = 0, 1  # ept_level_t
TDG_MEM_PAGE_ACCEPT_LEAF = 6
K4, M2 = 0x1000, 0x200000


def _nothing(tdx: TdxModule) -> None:
    pass


class NoVmm:
    """ACCEPT never reaches the VMM: a TDVMCALL here would be a bug."""

    def tdvmcall(self, *args: int) -> tuple[int, dict[str, int]]:
        raise AssertionError(f"TDVMCALL {args} during an ACCEPT")


# (case, what happens first, RCX, the status the guest reads in RAX)
CASES: list[tuple[str, Callable[[TdxModule], object], int, int]] = [
    ("pending 4K", _nothing, K4 | LVL_PT, 0),
    ("reserved RCX bit", _nothing, K4 | 0x8, TDX_OPERAND_INVALID + OPERAND_ID_RCX),
    ("1G level", _nothing, 0 | 2, TDX_OPERAND_INVALID + OPERAND_ID_RCX),
    # sept_lock_acquire_guest fails: OPERAND_BUSY, or HOST_PRIORITY which tdx_td_dispatcher.c returns as
    # OPERAND_BUSY with the same detail; either way the page operand RCX, not OPERAND_ID_SEPT_TREE (146).
    ("entry locked", lambda t: t.inject_busy(1), K4 | LVL_PT, TDX_OPERAND_BUSY + OPERAND_ID_RCX),
    ("4K twice", lambda t: t.accept_page(K4), K4 | LVL_PT, TDX_PAGE_ALREADY_ACCEPTED + LVL_PT),
    ("4K inside an accepted 2M leaf", lambda t: t.accept_page(M2, 1), M2 + K4 | LVL_PT,
     TDX_PAGE_ALREADY_ACCEPTED + LVL_PD),
    ("2M twice", lambda t: t.accept_page(M2, 1), M2 | LVL_PD, TDX_PAGE_ALREADY_ACCEPTED + LVL_PD),
    ("2M over a 4K table", lambda t: t.accept_page(2 * M2 + K4), 2 * M2 | LVL_PD,
     TDX_PAGE_SIZE_MISMATCH + LVL_PD),
]


@pytest.mark.parametrize(("case", "before", "rcx", "status"), CASES, ids=[c[0] for c in CASES])
def test_accept_status_is_the_modules(
    case: str, before: Callable[[TdxModule], object], rcx: int, status: int
) -> None:
    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 8 * M2)
    before(tdx)
    out = TdcallDispatcher(tdx, vmm=NoVmm()).dispatch(0, {"rax": TDG_MEM_PAGE_ACCEPT_LEAF, "rcx": rcx})
    assert out == {"rax": status}


def test_edk2_gives_up_on_the_fourth_busy_with_the_busy_status() -> None:
    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 8 * M2)
    tdx.inject_busy(4)
    res = tdx.accept_pages(0, 2, M2)
    assert (res.status, res.failed_gpa, res.tdcalls) == (TDX_OPERAND_BUSY + OPERAND_ID_RCX, 0, 4)


def test_the_naive_reference_uses_the_same_values() -> None:
    assert (BUSY, INVALID_RCX) == (TDX_OPERAND_BUSY + OPERAND_ID_RCX, TDX_OPERAND_INVALID + OPERAND_ID_RCX)
    assert (ALREADY, MISMATCH) == (TDX_PAGE_ALREADY_ACCEPTED, TDX_PAGE_SIZE_MISMATCH)
