"""The TD vCPU's page walk, done here instead of by unicorn, so a PTE may carry the TD's shared bit.

Why: unicorn 2.1.4's x86 walker (qemu/target/i386/excp_helper.c, handle_mmu_fault) treats every PTE bit from
TCG_PHYS_ADDR_BITS (40, a compile-time constant in cpu.h: PG_HI_RSVD_MASK) to 51 as reserved, so a PTE with the
shared bit (bit 51 at GPAW 52, bit 47 at GPAW 48) raises #PF(RSVD). X86CPU.phys_bits exists but that walker never
reads it, so neither the context blob nor the uc handle can raise the limit (option (a) of issue 14 is closed),
and an alias at GPA | shared bit (option (b)) is unreachable through that walker. unicorn's virtual-TLB mode
(UC_TLB_VIRTUAL) instead asks a UC_HOOK_TLB_FILL callback for each TLB miss; `PageWalker` answers it with the
architectural 4/5-level walk at MAXPHYADDR = GPAW (what the TD's CPUID reports), so what the guest sees stays
architectural: reserved bits, A/D updates, R/W with CR0.WP, XD with EFER.NXE, U/S with CR4.SMEP/SMAP and
RFLAGS.AC (SDM vol. 3A, 4.6 "Access rights"), #PF error codes and CR2.

unicorn keeps one TLB per MMU index, and QEMU's cpu_mmu_index (target/i386/cpu.h) picks it from the CPL and,
at CPL0-2, from CR4.SMAP with RFLAGS.AC (MMU_USER_IDX, MMU_KSMAP_IDX, MMU_KNOSMAP_IDX); STAC/CLAC end the
translation block. A fill answers for the index unicorn asks it for, so the walk reads the CPL and AC at the fill.

The physical address handed to unicorn is the GPA as the TD issues it, shared bit included: private GPAs hit the
accepted-page mappings, shared ones the shared-memory aliases at GPA | shared bit (td_memory).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable
from typing import Any

from unicorn import UC_ARCH_X86, UC_HOOK_TLB_FILL, UC_MEM_FETCH, UC_MEM_WRITE, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import unicorn_const as UC
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as uc_module

CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
CR4_SMEP = 1 << 20
CR4_SMAP = 1 << 21
RFLAGS_AC = 1 << 18
EFER_NXE = 1 << 11
EFER_LMA = 1 << 10
MSR_EFER = 0xC0000080
P, RW, US, A, D, PS = 1, 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 7
XD = 1 << 63
FRAME = 0x000FFFFFFFFFF000  # bits 51:12
# #PF error code bits (SDM vol. 3A, 4.7)
PF_P, PF_W, PF_US, PF_RSVD, PF_ID = 1, 1 << 1, 1 << 2, 1 << 3, 1 << 4
# The access's privilege, a part of each remembered walk's key (SDM vol. 3A, 4.6: supervisor-mode accesses are
# those at CPL < 3, and implicit ones such as the IDT read and the exception frame's pushes at any CPL).
SUPERVISOR, SUPERVISOR_AC, USER, IMPLICIT = 0, 1, 2, 3
PROT_R, PROT_W, PROT_X = UC.UC_PROT_READ, UC.UC_PROT_WRITE, UC.UC_PROT_EXEC
_QWORD = struct.Struct("<Q")
WALKS_KEPT = 1 << 16  # remembered walks (a few MB); beyond, they are dropped and start again


class _Msr(ctypes.Structure):
    _fields_ = (("rid", ctypes.c_uint32), ("value", ctypes.c_uint64))  # uc_x86_msr


class _Regs:
    """CR0/CR3/CR4/EFER, RFLAGS and CS straight through libunicorn, all in one uc_reg_read_batch: the Python
    binding's reg_read costs ~13 us a call, and even direct uc_reg_read calls, one per register, were a fifth of a
    boot's time (every TLB miss reads them). The start-up self-test runs through this path too."""

    def __init__(self, uc: Uc):
        binding: Any = uc
        self._handle = binding._uch
        self._msr = _Msr(MSR_EFER, 0)
        self._batch = uc_module.uclib.uc_reg_read_batch
        self._crs = (ctypes.c_uint64 * 5)()
        ids = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS)
        self._ids = (ctypes.c_int32 * 6)(*ids, X.UC_X86_REG_MSR)
        base = ctypes.addressof(self._crs)
        self._ptrs = (ctypes.c_void_p * 6)(*(base + 8 * i for i in range(5)), ctypes.addressof(self._msr))

    def paging(self) -> tuple[int, int, int, int, int]:
        """CR0, CR3, CR4, EFER and the access's privilege (SUPERVISOR, SUPERVISOR_AC or USER): CPL 3 is CS's
        RPL in long mode; RFLAGS.AC counts only at CPL < 3 with CR4.SMAP."""
        if self._batch(self._handle, self._ids, self._ptrs, 6):
            raise RuntimeError("uc_reg_read_batch(CR0, CR3, CR4, RFLAGS, CS, EFER) failed")
        crs = self._crs
        if crs[4] & 3 == 3:
            mode = USER
        elif crs[2] & CR4_SMAP and crs[3] & RFLAGS_AC:
            mode = SUPERVISOR_AC
        else:
            mode = SUPERVISOR
        return crs[0], crs[1], crs[2], self._msr.value, mode


class PageFault(Exception):
    def __init__(self, address: int, error_code: int, why: str):
        super().__init__(f"#PF at {address:#x} (error code {error_code:#x}): {why}")
        self.address = address
        self.error_code = error_code


class UnsupportedPaging(Exception):
    """Legacy 32-bit paging (CR0.PG with EFER.LMA clear): TDVF goes from flat 32-bit straight to long mode."""


class PageWalker:
    """Translate a linear address as a CPL0 TD vCPU does.

    `view` is host memory indexed by GPA without the shared bit (private and shared views of a GPA never hold
    memory at once: the VMM removes the private page when the guest shares it). `table_readable(gpa)` says whether
    a page-table GPA (shared bit included) is backed; a walk into one that is not raises the callback's own error
    (the TDX module terminates the TD). The access's privilege is the vCPU's at the walk (CPL, RFLAGS.AC), or
    IMPLICIT for the supervisor-mode accesses of an event delivery (translate's `implicit`)."""

    def __init__(self, uc: Uc, view: memoryview, gpaw: int, table_readable: Callable[[int, int], None]):
        self.uc = uc
        self.regs = _Regs(uc)
        self.view = view
        self.shared_bit = 1 << (gpaw - 1)
        # MAXPHYADDR = GPAW: frame bits above it are reserved (none at GPAW 52).
        self.high_reserved = FRAME & ~((1 << gpaw) - 1)
        self.table_readable = table_readable
        self.fills = 0
        # Walks already done, by (page, access): the control registers, each entry read (address, value after
        # the walk's A/D update), and the result. unicorn's TLB is direct-mapped (256 entries, 8 victims), so a
        # loop over a few buffers 1 MiB apart misses it at every access; such a miss re-reads the entries and
        # compares instead of walking. Equal registers and entries give the same walk, with nothing to update.
        self._walks: dict[tuple[int, int], tuple[tuple[int, int, int, int, int], tuple[tuple[int, int], ...], int, int]]
        self._walks = {}

    def forget(self) -> None:
        """Drop the remembered walks: a page left the TD's view, so a table read may no longer be allowed."""
        self._walks.clear()

    def _entry(self, table: int, index: int) -> tuple[int, int]:
        gpa = table + index * 8
        self.table_readable(gpa, 8)
        at = gpa & ~self.shared_bit
        return at, _QWORD.unpack_from(self.view, at)[0]

    def _set(self, at: int, entry: int) -> None:
        self.view[at : at + 8] = entry.to_bytes(8, "little")

    def translate(self, va: int, access: int, implicit: bool = False) -> tuple[int, int]:
        """(GPA of the page, UC_PROT_* allowed) for an access of kind UC_MEM_READ/WRITE/FETCH at `va`; `implicit`
        for the supervisor-mode accesses an event delivery makes (IDT, stack), whatever the CPL and RFLAGS.AC."""
        self.fills += 1
        regs = self.regs.paging()
        if implicit:
            regs = (*regs[:4], IMPLICIT)
        cr0, cr3, cr4, efer, mode = regs
        if not cr0 & CR0_PG:
            return va & 0xFFFFF000, UC_PROT_ALL
        key = (va >> 12, access)
        known = self._walks.get(key)
        if known is not None and known[0] == regs:
            view = self.view
            for at, value in known[1]:
                if _QWORD.unpack_from(view, at)[0] != value:
                    break
            else:
                return known[2], known[3]
        if not efer & EFER_LMA:
            raise UnsupportedPaging(f"legacy 32-bit paging at {va:#x} (CR4 {cr4:#x})")
        write, fetch = access == UC_MEM_WRITE, access == UC_MEM_FETCH
        nxe = bool(efer & EFER_NXE)
        reserved = self.high_reserved | (0 if nxe else XD)
        user = mode == USER
        # ID is set for a fetch with NXE or SMEP (SDM vol. 3A, 4.7); U/S for an access at CPL 3 (not implicit).
        error = (PF_W if write else 0) | (PF_ID if fetch and (nxe or cr4 & CR4_SMEP) else 0) | (PF_US if user else 0)
        table = cr3 & FRAME
        levels = 5 if cr4 & CR4_LA57 else 4
        writable, executable, user_page = True, True, True
        touched: list[tuple[int, int]] = []
        for level in range(levels, 0, -1):
            shift = 12 + 9 * (level - 1)
            at, entry = self._entry(table, (va >> shift) & 0x1FF)
            if not entry & P:
                raise PageFault(va, error, f"level-{level} entry not present")
            large = level in (2, 3) and entry & PS
            bad = reserved | (PS if level >= 4 else 0)
            if large:
                bad |= ((1 << shift) - 1) & ~0x1FFF  # frame bits below the page size, PAT (bit 12) aside
            if entry & bad:
                raise PageFault(va, error | PF_P | PF_RSVD, f"reserved bits {entry & bad:#x} in level-{level} entry")
            writable &= bool(entry & RW)
            executable &= not (nxe and entry & XD)
            user_page &= bool(entry & US)  # a user-mode address: U/S set at every level (SDM vol. 3A, 4.6.1)
            touched.append((at, entry))
            if level == 1 or large:
                frame = entry & FRAME & ~((1 << shift) - 1)
                gpa = frame | (va & ((1 << shift) - 1) & ~0xFFF)
                break
            table = entry & FRAME
        # SDM vol. 3A, 4.6.1: at CPL 3 only user-mode addresses, writable at every level whatever CR0.WP. In
        # supervisor mode, CR0.WP makes read-only pages read-only; SMEP forbids fetches from user-mode addresses;
        # SMAP forbids data accesses to them unless RFLAGS.AC is set and the access is explicit.
        if user and not user_page:
            raise PageFault(va, error | PF_P, "user-mode access to a supervisor page")
        if write and not writable and (user or cr0 & CR0_WP):
            raise PageFault(va, error | PF_P, "write to a read-only page")
        if fetch and not executable:
            raise PageFault(va, error | PF_P, "fetch from an XD page")
        if user_page and not user:
            if fetch and cr4 & CR4_SMEP:
                raise PageFault(va, error | PF_P, "supervisor fetch from a user page (CR4.SMEP)")
            if not fetch and cr4 & CR4_SMAP and mode != SUPERVISOR_AC:
                raise PageFault(va, error | PF_P, "supervisor data access to a user page (CR4.SMAP)")
        # Accessed on every level; Dirty on the leaf when written. Without D, write stays out of the TLB entry so
        # the first write walks again and sets it (as QEMU's walker does).
        after = []
        for at, entry in touched[:-1]:
            if not entry & A:
                self._set(at, entry | A)
            after.append((at, entry | A))
        leaf_at, leaf = touched[-1]
        new_leaf = leaf | A | (D if write else 0)
        if new_leaf != leaf:
            self._set(leaf_at, new_leaf)
        after.append((leaf_at, new_leaf))
        # The entry serves every access of this privilege (the MMU index): no data right where SMAP forbids it.
        data = not (user_page and not user and cr4 & CR4_SMAP and mode != SUPERVISOR_AC)
        prot = PROT_R if data else 0
        if data and (writable or not (user or cr0 & CR0_WP)) and new_leaf & D:
            prot |= PROT_W
        if executable and not (user_page and not user and cr4 & CR4_SMEP):
            prot |= PROT_X
        if len(self._walks) >= WALKS_KEPT:
            self._walks.clear()
        self._walks[key] = (regs, tuple(after), gpa, prot)
        return gpa, prot


def shared_bit_translates(gpaw: int = 52) -> str | None:
    """Start-up self-test: on this unicorn, does a load through a PTE carrying the shared bit reach the shared
    alias? None when it does, else why not (the caller refuses to start)."""
    host = mmap.mmap(-1, 0x10000)
    base = ctypes.addressof(ctypes.c_char.from_buffer(host))
    shared = 1 << (gpaw - 1)
    try:
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map_ptr(0, 0x8000, UC_PROT_ALL, base)
        uc.mem_map_ptr(shared | 0x8000, 0x1000, UC_PROT_ALL, base + 0x8000)
        # PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000; VA 0 is code, VA 0x5000 the shared page.
        for table, entry in ((0x1000, 0x2003), (0x2000, 0x3003), (0x3000, 0x4003)):
            host[table : table + 8] = struct.pack("<Q", entry)
        host[0x4000:0x4008] = struct.pack("<Q", 0x0003)
        host[0x4028:0x4030] = struct.pack("<Q", shared | 0x8003)
        host[0x8000:0x8008] = b"SHAREDOK"
        host[0:10] = b"\x48\x8b\x04\x25\x00\x50\x00\x00\xf4\x90"  # mov rax, [0x5000]; hlt
        uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE)
        uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_PG)
        binding: Any = uc  # ctl_set_tlb_mode exists in 2.1.4 but not in the binding's type hints
        binding.ctl_set_tlb_mode(UC.UC_TLB_VIRTUAL)
        walker = PageWalker(uc, memoryview(host), gpaw, lambda _gpa, _size: None)

        def fill(_uc: Uc, va: int, access: int, entry: object, _data: object) -> bool:
            gpa, prot = walker.translate(va, access)
            entry.paddr, entry.perms = gpa, prot  # type: ignore[attr-defined]
            return True

        uc.hook_add(UC_HOOK_TLB_FILL, fill)
        uc.emu_start(0, 8)
        got = uc.reg_read(X.UC_X86_REG_RAX).to_bytes(8, "little")
        if got != b"SHAREDOK":
            return f"a load through a PTE with bit {gpaw - 1} read {got!r}, not the shared page"
        if not host[0x4028] & A:
            return "the walker did not set the Accessed bit"
        return None
    except Exception as exc:  # any failure means the mechanism is not there: say what it was
        return f"{type(exc).__name__}: {exc}"
