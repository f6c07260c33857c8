"""The TDX numbers of lazyaccept.spec.tdx, as the TDX module (TDX_1.5.01) and the guests use them."""

from __future__ import annotations

from lazyaccept.spec.tdx import (
    ACCEPT_RCX_GPA_MASK,
    OperandId,
    PageLevel,
    TdcallLeaf,
    TdvmcallSubfunction,
    TdxStatus,
)
from lazyaccept.tdx.status import is_error, status_name


def test_the_numbers_guests_hard_code() -> None:
    # edk2 Tdx.h / Linux asm/shared/tdx.h spell these as literals: TDG.MEM.PAGE.ACCEPT 6, TDG.VP.INFO 1, MapGPA.
    assert (TdcallLeaf.VP_VMCALL, TdcallLeaf.VP_INFO, TdcallLeaf.MEM_PAGE_ACCEPT) == (0, 1, 6)
    assert TdvmcallSubfunction.MAP_GPA == 0x10001
    assert [PageLevel.L4K.size, PageLevel.L2M.size, PageLevel.L1G.size] == [4096, 2 << 20, 1 << 30]
    assert OperandId.SEPT is OperandId.SEPT_TREE and OperandId.SEPT_TREE == 0x92


def test_status_classes() -> None:
    assert not is_error(TdxStatus.PAGE_ALREADY_ACCEPTED | PageLevel.L2M)
    assert all(is_error(s) for s in (TdxStatus.OPERAND_INVALID, TdxStatus.OPERAND_BUSY, TdxStatus.PAGE_SIZE_MISMATCH))
    assert status_name(TdxStatus.OPERAND_BUSY | OperandId.SEPT_TREE) == "OPERAND_BUSY(detail=0x92)"
    assert ACCEPT_RCX_GPA_MASK == 0x000F_FFFF_FFFF_F000
