"""User mode on the TD vCPU (td_state): IRETQ to CPL 3 runs natively; SYSCALL, which unicorn only steps over, is
entered by td_state.syscall; an exception at CPL 3 is delivered onto the TSS's RSP0 with CS from the gate and a
null SS (SDM vol. 3A, 6.14.2), and SYSRET goes back natively."""

from __future__ import annotations

import struct

import pytest
from unicorn import UC_ARCH_X86, UC_ERR_INSN_INVALID, UC_HOOK_INSN, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from lazyaccept.cpu.unicorn.td_state import CR0_PG, CR4_PAE, deliver, syscall

GDT, IDT, TSS = 0x4000, 0x5000, 0x6000
KERNEL, USER, ENTRY, UD_HANDLER = 0x8000, 0x9000, 0xA000, 0xB000
USER_STACK, RSP0 = 0x30000, 0x40000
STAR = (0x23 << 48) | (0x10 << 32)  # Linux's: __KERNEL_CS 0x10 (SS 0x18); SYSRET to 0x33 / 0x2b
FMASK = 0x47700  # Linux's syscall_init: TF, DF, IF, IOPL, AC, NT


def _cpu() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x400000, UC_PROT_ALL)
    # Identity map of 4 MiB in 2 MiB pages, user-accessible (no SMEP/SMAP here).
    uc.mem_write(0x1000, struct.pack("<Q", 0x2007))
    uc.mem_write(0x2000, struct.pack("<Q", 0x3007))
    uc.mem_write(0x3000, struct.pack("<QQ", 0x000087, 0x200087))
    tss = 0x67 | (TSS & 0xFFFFFF) << 16 | 0x89 << 40
    gdt = [0, 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF, 0, tss, 0]
    uc.mem_write(GDT, struct.pack(f"<{len(gdt)}Q", *gdt))
    gate = UD_HANDLER & 0xFFFF | 0x10 << 16 | 0x8E << 40 | (UD_HANDLER >> 16 & 0xFFFF) << 48
    uc.mem_write(IDT + 6 * 16, struct.pack("<QQ", gate, 0))
    uc.mem_write(TSS + 4, struct.pack("<Q", RSP0))
    kernel = b"\x66\xb8\x40\x00\x0f\x00\xd8"  # mov ax, 0x40; ltr ax
    kernel += b"\x6a\x2b\x68" + struct.pack("<I", USER_STACK) + b"\x68\x02\x02\x00\x00\x6a\x33\x68"
    kernel += struct.pack("<I", USER) + b"\x48\xcf"  # push ss, rsp, rflags, cs, rip; iretq
    uc.mem_write(KERNEL, kernel)
    uc.mem_write(USER, b"\x0f\x05\x0f\x0b")  # syscall; ud2
    uc.mem_write(ENTRY, b"\x48\x0f\x07")  # sysretq
    uc.reg_write(X.UC_X86_REG_CR3, 0x1000)
    uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_PG)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT, len(gdt) * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, IDT, 0xFFF, 0))
    uc.reg_write(X.UC_X86_REG_CS, 0x10)
    uc.reg_write(X.UC_X86_REG_SS, 0x18)
    uc.reg_write(X.UC_X86_REG_RSP, 0x20000)
    uc.msr_write(0xC0000080, uc.msr_read(0xC0000080) | 1)  # EFER.SCE: SYSRET checks it
    for msr, value in ((0xC0000081, STAR), (0xC0000082, ENTRY), (0xC0000084, FMASK)):
        uc.msr_write(msr, value)
    return uc


def test_syscall_and_an_exception_from_user_mode_enter_the_kernel_at_cpl0() -> None:
    uc = _cpu()
    events: list[str] = []

    def on_syscall(u: Uc, _user: object) -> None:
        events.append("syscall")
        u.emu_stop()

    def on_intr(u: Uc, intno: int, _user: object) -> None:
        events.append(f"vector {intno}")
        u.emu_stop()

    uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(KERNEL, USER)  # IRETQ to CPL 3, natively
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x33 and uc.reg_read(X.UC_X86_REG_SS) == 0x2B
    uc.emu_start(USER, USER + 0x100)
    assert events == ["syscall"] and uc.reg_read(X.UC_X86_REG_RIP) == USER + 2  # unicorn stepped over it
    rflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    assert syscall(uc, USER + 2) == ENTRY and uc.reg_read(X.UC_X86_REG_RIP) == ENTRY
    assert uc.reg_read(X.UC_X86_REG_RCX) == USER + 2 and uc.reg_read(X.UC_X86_REG_R11) == rflags
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x10 and uc.reg_read(X.UC_X86_REG_SS) == 0x18
    assert not uc.reg_read(X.UC_X86_REG_EFLAGS) & 0x200  # IF masked by IA32_FMASK
    with pytest.raises(UcError) as stopped:  # SYSRETQ natively to CPL 3, then UD2 there: unicorn stops at #UD
        uc.emu_start(ENTRY, UD_HANDLER)
    assert stopped.value.errno == UC_ERR_INSN_INVALID
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x33 and uc.reg_read(X.UC_X86_REG_RIP) == USER + 2
    user_rflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    assert deliver(uc, 6, USER + 2, None) == UD_HANDLER
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x10 and uc.reg_read(X.UC_X86_REG_SS) == 0  # null SS at CPL 0
    assert uc.reg_read(X.UC_X86_REG_RSP) == RSP0 - 40 and uc.reg_read(X.UC_X86_REG_RIP) == UD_HANDLER
    frame = struct.unpack("<5Q", uc.mem_read(RSP0 - 40, 40))
    assert frame == (USER + 2, 0x33, user_rflags, USER_STACK, 0x2B)
    # CPL 0 for real: a privileged instruction runs (MOV from CR3) where at CPL 3 it would raise #GP.
    uc.mem_write(UD_HANDLER, b"\x0f\x20\xd8")  # mov rax, cr3
    uc.emu_start(UD_HANDLER, UD_HANDLER + 3)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 0x1000 and events == ["syscall"]
