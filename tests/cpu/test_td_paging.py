"""td_paging's access rights (SDM vol. 3A, 4.6): U/S at every level, CR4.SMEP and CR4.SMAP with RFLAGS.AC, the
implicit supervisor accesses of an event delivery, CPL 3, and the #PF error codes."""

from __future__ import annotations

import mmap
import struct

import pytest
from unicorn import UC_ARCH_X86, UC_MEM_FETCH, UC_MEM_READ, UC_MEM_WRITE, UC_MODE_64, Uc
from unicorn import x86_const as X

from lazyaccept.cpu.unicorn.td_paging import (
    CR0_PG,
    CR0_WP,
    CR4_PAE,
    CR4_SMAP,
    CR4_SMEP,
    PF_ID,
    PF_P,
    PF_US,
    PF_W,
    PROT_R,
    PROT_W,
    PROT_X,
    RFLAGS_AC,
    PageFault,
    PageWalker,
)

USER_VA, KERNEL_VA, RO_USER_VA = 0x5000, 0x6000, 0x7000


def _walker(cr4: int, *, cpl: int = 0, ac: bool = False) -> PageWalker:
    """PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000, all U/S and R/W; the PTEs: 0x5000 user, 0x6000
    supervisor, 0x7000 user read-only; every leaf already Accessed and Dirty."""
    host = mmap.mmap(-1, 0x10000)
    for table, entry in ((0x1000, 0x2007), (0x2000, 0x3007), (0x3000, 0x4007)):
        host[table : table + 8] = struct.pack("<Q", entry)
    for va, flags in ((USER_VA, 0x67), (KERNEL_VA, 0x63), (RO_USER_VA, 0x65)):
        host[0x4000 + (va >> 12) * 8 : 0x4008 + (va >> 12) * 8] = struct.pack("<Q", va | flags)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE | cr4)
    uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_PG | CR0_WP)
    if cpl == 3:
        uc.reg_write(X.UC_X86_REG_CS, 0x33)
    if ac:
        uc.reg_write(X.UC_X86_REG_EFLAGS, uc.reg_read(X.UC_X86_REG_EFLAGS) | RFLAGS_AC)
    return PageWalker(uc, memoryview(host), 52, lambda _gpa, _size: None)


def _fault(walker: PageWalker, va: int, access: int, implicit: bool = False) -> PageFault:
    with pytest.raises(PageFault) as caught:
        walker.translate(va, access, implicit)
    return caught.value


def test_without_smep_or_smap_the_kernel_reaches_user_pages() -> None:
    w = _walker(0)
    assert w.translate(USER_VA, UC_MEM_READ) == (USER_VA, PROT_R | PROT_W | PROT_X)
    assert w.translate(USER_VA, UC_MEM_FETCH)[1] & PROT_X


def test_smep_forbids_a_supervisor_fetch_from_a_user_page_only() -> None:
    w = _walker(CR4_SMEP)
    fault = _fault(w, USER_VA, UC_MEM_FETCH)
    assert fault.error_code == PF_P | PF_ID and "SMEP" in str(fault)
    gpa, prot = w.translate(USER_VA, UC_MEM_READ)  # data accesses stay allowed, without execute in the entry
    assert gpa == USER_VA and prot == PROT_R | PROT_W
    assert w.translate(KERNEL_VA, UC_MEM_FETCH)[1] & PROT_X


def test_smap_forbids_supervisor_data_access_to_user_pages_unless_ac() -> None:
    w = _walker(CR4_SMAP)
    assert _fault(w, USER_VA, UC_MEM_READ).error_code == PF_P
    assert _fault(w, USER_VA, UC_MEM_WRITE).error_code == PF_P | PF_W
    # A fetch is SMEP's business: with SMAP alone it goes, and the entry it leaves grants no data access.
    assert w.translate(USER_VA, UC_MEM_FETCH)[1] == PROT_X
    assert w.translate(KERNEL_VA, UC_MEM_READ)[1] == PROT_R | PROT_W | PROT_X
    stac = _walker(CR4_SMAP, ac=True)
    assert stac.translate(USER_VA, UC_MEM_WRITE) == (USER_VA, PROT_R | PROT_W | PROT_X)
    # An implicit supervisor access (the frame pushes of a delivery) faults even with RFLAGS.AC set.
    assert _fault(stac, USER_VA, UC_MEM_WRITE, implicit=True).error_code == PF_P | PF_W
    # CR0.WP still applies to the supervisor write it allows.
    assert _fault(stac, RO_USER_VA, UC_MEM_WRITE).error_code == PF_P | PF_W


def test_cpl3_reaches_only_user_pages_and_honours_read_only_whatever_wp() -> None:
    w = _walker(CR4_SMEP | CR4_SMAP, cpl=3)
    assert w.translate(USER_VA, UC_MEM_FETCH)[0] == USER_VA  # SMEP/SMAP restrict supervisor accesses only
    assert w.translate(USER_VA, UC_MEM_WRITE)[1] & PROT_W
    assert _fault(w, KERNEL_VA, UC_MEM_READ).error_code == PF_P | PF_US
    assert _fault(w, RO_USER_VA, UC_MEM_WRITE).error_code == PF_P | PF_W | PF_US
    assert w.translate(RO_USER_VA, UC_MEM_READ)[1] == PROT_R | PROT_X
