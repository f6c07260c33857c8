"""Architectural state of a TD vCPU under unicorn: the state the TDX module starts it in, guest-virtual
addresses, event delivery through the guest's IDT, and which firmware image an address lies in.

unicorn neither starts in 32-bit protected mode (UC_MODE_64 comes up with EFER.LMA=1, CR0.PG=0) nor delivers
exceptions through the IDT (it only calls UC_HOOK_INTR), so both are done here by hand.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as uc_module

from lazyaccept.firmware.pi.fv import FvModule, Reader, image_fingerprint
from lazyaccept.spec.fv import SectionType
from lazyaccept.spec.pe import codeview_name, pe_debug_name

# The TD vCPU's initial state. tdx-module src/common/data_structures/td_vmcs_init.c
# (td_vmcs_migrated_state_init_map / td_vmcs_non_migrated_state_init_map): RIP 0xFFFFFFF0, RFLAGS 0x2, flat 4 GiB
# CS (0xC09B) and data segments (0xC093), IA32_EFER 0x901 (SCE|LME|NXE: long mode enabled, not active),
# CR0 0x21 (PE|NE), CR4 0x2040 (MCE|VMXE). VMXE is the TDX module's own (the guest's CR4 read shadow hides it and
# unicorn has no VMX), so the guest starts with CR4.MCE only.
INITIAL_RIP = 0xFFFFFFF0
INITIAL_RFLAGS = 0x2
INITIAL_EFER = 0x901
INITIAL_CR0 = 0x21
INITIAL_CR4 = 0x40
MSR_EFER = 0xC0000080
FLAT_CODE32 = 0x00CF9B000000FFFF  # base 0, limit 4 GiB, 32-bit code, present, DPL 0 (access byte 0x9B)
FLAT_DATA32 = 0x00CF93000000FFFF
CR0_PE = 1
CR0_PG = 1 << 31
MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000084
TSS_RSP0 = 4  # the 64-bit TSS: RSP0 at offset 4, IST1..7 from 0x24
# QEMU's CPUX86State in a unicorn 2.1.4 context blob (after its 40-byte header): hflags, then segs[6], each a
# SegmentCache {u32 selector; u64 base; u32 limit; u32 flags} (target/i386/cpu.h); checked by cpl_switch_ok.
HFLAGS_OFFSET, SEGS_OFFSET, SEG_SIZE, SEG_CS, SEG_SS = 216, 224, 24, 1, 2
HF_CPL_MASK, HF_CS32_MASK, HF_SS32_MASK, HF_LMA_MASK, HF_CS64_MASK = 3, 1 << 4, 1 << 5, 1 << 14, 1 << 15
DESC_A, DESC_P, DESC_L, DESC_B = 1 << 8, 1 << 15, 1 << 21, 1 << 22
# SYSCALL's fixed CS and SS (SDM vol. 2B: flat, DPL 0; QEMU's helper_syscall flags): 64-bit code; writable data.
KERNEL_CODE64_FLAGS = (1 << 23) | DESC_L | DESC_P | (1 << 12) | (1 << 11) | (1 << 9) | DESC_A
KERNEL_DATA_FLAGS = (1 << 23) | DESC_B | DESC_P | (1 << 12) | (1 << 9) | DESC_A
RFLAGS_RF = 1 << 16
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
RFLAGS_IF = 1 << 9
RFLAGS_CLEARED_ON_DELIVERY = (1 << 8) | (1 << 14) | (1 << 16) | (1 << 17)  # TF, NT, RF, VM
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
GATE_INTERRUPT = 0xE  # IF is cleared on delivery; a trap gate (0xF) keeps it

# unicorn 2.1.4 never resets CPUX86State.old_exception (QEMU does so in do_interrupt_all, which unicorn skips when
# a hook handles the exception), so a second exception after one handled in Python escalates to #DF and then a
# silent triple fault. Its offset in a context blob, checked by `old_exception_offset_ok` before it is trusted.
OLD_EXCEPTION_OFFSET = 5536


class GuestFault(Exception):
    """Delivery failed as it would on hardware (no IDT, a gate not present, an unmapped stack or table)."""


def enter_initial_state(uc: Uc, *, gpaw: int, vcpu_index: int, init_rcx: int, cpuid1_eax: int) -> None:
    """Put unicorn's CPU in the TDX module's initial TD vCPU state.

    GPRs: tdx-module src/vmm_dispatcher/api_calls/tdh_vp_init.c init_vcpu_gprs_and_registers: RBX = GPAW (OVMF's
    ResetVector reads EBX[5:0], OvmfPkg/ResetVector/Ia32/IntelTdx.nasm.inc InitTdxWorkarea), RCX = R8 = the
    TDH.VP.INIT parameter (QEMU passes the TD HOB address), RDX = CPUID(1).EAX, RSI = the vCPU index (BSP 0:
    InitTdxWorkarea sends a non-zero ESI to TdxApWait), everything else 0.
    """
    # Leaving long mode: unicorn clears LMA only when paging is switched off, so switch it on and off once
    # (with PAE, which CR0.PG needs while LME is set). Then load flat 32-bit descriptors from a scratch GDT.
    uc.reg_write(X.UC_X86_REG_CR4, CR4_PAE | INITIAL_CR4)
    uc.reg_write(X.UC_X86_REG_CR0, INITIAL_CR0 | CR0_PG)
    uc.reg_write(X.UC_X86_REG_CR0, INITIAL_CR0)
    uc.reg_write(X.UC_X86_REG_CR4, INITIAL_CR4)
    scratch = 0x1000
    uc.mem_map(scratch, 0x1000, UC_PROT_ALL)
    try:
        uc.mem_write(scratch, struct.pack("<QQQ", 0, FLAT_CODE32, FLAT_DATA32))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, scratch, 23, 0))
        uc.reg_write(X.UC_X86_REG_CS, 0x08)
        for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS, X.UC_X86_REG_SS):
            uc.reg_write(seg, 0x10)
    finally:
        uc.mem_unmap(scratch, 0x1000)
    # The descriptor caches keep the flat segments; the firmware loads its own GDT before using a selector.
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0, 0))
    uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, INITIAL_EFER))
    gprs = dict.fromkeys(("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"), 0)
    gprs.update({f"r{i}": 0 for i in range(8, 16)})
    gprs.update(rbx=gpaw, rcx=init_rcx, r8=init_rcx, rdx=cpuid1_eax, rsi=vcpu_index)
    for name, value in gprs.items():
        uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), value)
    uc.reg_write(X.UC_X86_REG_EFLAGS, INITIAL_RFLAGS)
    uc.reg_write(X.UC_X86_REG_RIP, INITIAL_RIP)


def in_protected_32(uc: Uc) -> bool:
    """The state check: 32-bit protected mode, paging off, long mode not active."""
    efer = uc.reg_read(X.UC_X86_REG_MSR, MSR_EFER)
    return (
        bool(uc.reg_read(X.UC_X86_REG_CR0) & 1) and not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG and not efer & (1 << 10)
    )


def old_exception_offset_ok() -> bool:
    """Does OLD_EXCEPTION_OFFSET hold old_exception in this unicorn? It starts at -1 and a #DE sets it to 0."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x1000, b"\x31\xc9\xf7\xf1\xf4")  # xor ecx, ecx; div ecx; hlt
    before = read_old_exception(uc)
    uc.hook_add(UC_HOOK_INTR, lambda u, intno, _: u.emu_stop())
    uc.emu_start(0x1000, 0x1005)
    return before == -1 and read_old_exception(uc) == 0


def read_old_exception(uc: Uc) -> int:
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value or 0
    return int(struct.unpack("<i", ctypes.string_at(base + OLD_EXCEPTION_OFFSET, 4))[0])


def reset_old_exception(uc: Uc) -> None:
    """old_exception := -1 through a context round trip (only between emu_start calls: the context holds RIP)."""
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value or 0
    ctypes.memmove(base + OLD_EXCEPTION_OFFSET, struct.pack("<i", -1), 4)
    uc.context_restore(ctx)
    binding: Any = uc  # ctl_flush_tb exists in 2.1.4 but not in the binding's type hints
    binding.ctl_flush_tb()  # code translated under the old state must not run on


def run_without_exits(uc: Uc) -> None:
    """Let emu_start run until a hook stops it, with no exit address at all.

    unicorn 2.1.4 drops the translation at each exit address whenever emu_start returns (qemu/softmmu/cpus.c
    resume_all_vcpus -> uc_exit_invalidate_iter -> uc_invalidate_tb(exit - 1) -> get_page_addr_code), which under
    UC_TLB_VIRTUAL asks the TLB-fill hook for an instruction fetch of the exit's page. Once the guest's tables leave
    that page unmapped (OVMF 2026.08's DXE, after its page tables are rebuilt) the walk is a #PF the guest never
    caused (CR2 0xfffffffffffff000 with RIP elsewhere) and the slice's clean return turns into UC_ERR_EXCEPTION.
    With UC_CTL_UC_USE_EXITS on and an empty exit set, `until` has no effect and nothing is walked."""
    binding: Any = uc  # the exit controls exist in 2.1.4 but not in the binding's type hints
    binding.ctl_exits_enabled(True)
    binding.ctl_set_exits([])


def virt_to_phys(uc: Uc, va: int) -> int:
    """The guest's own translation (4- or 5-level paging; identity with paging off). Raises GuestFault."""
    if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PG:
        return va & 0xFFFFFFFF
    levels = 5 if uc.reg_read(X.UC_X86_REG_CR4) & CR4_LA57 else 4
    table = uc.reg_read(X.UC_X86_REG_CR3) & 0x000FFFFFFFFFF000
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        entry = int.from_bytes(uc.mem_read(table + ((va >> shift) & 0x1FF) * 8, 8), "little")
        if not entry & 1:
            raise GuestFault(f"{va:#x} is not mapped by the guest's page tables")
        frame = entry & 0x000FFFFFFFFFF000
        if level == 1 or (level in (2, 3) and entry & 0x80):
            return (frame & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = frame
    raise GuestFault(f"bad page walk for {va:#x}")


def read_virt(uc: Uc, va: int, size: int) -> bytes:
    out = bytearray()
    while size > 0:
        n = min(size, 0x1000 - (va & 0xFFF))
        out += uc.mem_read(virt_to_phys(uc, va), n)
        va, size = va + n, size - n
    return bytes(out)


def write_virt(uc: Uc, va: int, data: bytes) -> None:
    pos = 0
    while pos < len(data):
        n = min(len(data) - pos, 0x1000 - ((va + pos) & 0xFFF))
        uc.mem_write(virt_to_phys(uc, va + pos), data[pos : pos + n])
        pos += n


class VirtualMemory(Protocol):
    """Guest-virtual reads and writes through the guest's page tables (raising GuestFault where unmapped)."""

    def read(self, va: int, size: int) -> bytes: ...

    def write(self, va: int, data: bytes) -> None: ...


class _WalkedMemory:
    """read_virt/write_virt: a fresh walk of the guest's tables through unicorn for every access."""

    def __init__(self, uc: Uc):
        self.uc = uc

    def read(self, va: int, size: int) -> bytes:
        return read_virt(self.uc, va, size)

    def write(self, va: int, data: bytes) -> None:
        write_virt(self.uc, va, data)


def enter_cpl0(uc: Uc, code: tuple[int, int], stack: tuple[int, int]) -> None:
    """Load CS and SS, each (selector, descriptor flags as QEMU keeps them: the descriptor's high dword), flat, and
    make the CPL 0. In UC_MODE_64 unicorn's register writes of CS and SS set the selector only (reg_write in
    qemu/target/i386/unicorn.c) and QEMU takes the CPL from hflags, which SS's DPL sets when a segment is loaded
    (cpu_x86_load_seg_cache): so both caches and hflags are written in a context round trip, as
    cpu_x86_load_seg_cache would leave them for a 64-bit CS. Only between emu_start calls."""
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value or 0
    hflags = struct.unpack("<I", ctypes.string_at(base + HFLAGS_OFFSET, 4))[0]
    hflags &= ~(HF_CPL_MASK | HF_SS32_MASK)
    if code[1] & DESC_L:
        hflags |= HF_CS64_MASK | HF_CS32_MASK
    if stack[1] & DESC_B:
        hflags |= HF_SS32_MASK
    ctypes.memmove(base + HFLAGS_OFFSET, struct.pack("<I", hflags), 4)
    for index, (selector, flags) in ((SEG_CS, code), (SEG_SS, stack)):
        limit = 0xFFFFFFFF if flags & DESC_P else 0  # a null SS: base, limit and flags 0 (do_interrupt64)
        cache = struct.pack("<IIQII", selector, 0, 0, limit, flags)
        ctypes.memmove(base + SEGS_OFFSET + SEG_SIZE * index, cache, SEG_SIZE)
    uc.context_restore(ctx)


def cpl_switch_ok() -> bool:
    """Do HFLAGS_OFFSET and SEGS_OFFSET hold hflags and the segment caches in this unicorn? In UC_MODE_64 it starts
    at CPL 0 with hflags.LMA and CS64 set, and a CS write lands in the selector there; after enter_cpl0 from a
    hand-set CPL 3, a privileged instruction (MOV from CR3) runs instead of raising #GP."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_CS, 0x1234)
    ctx = uc.context_save()
    base = ctypes.cast(ctx.context, ctypes.c_void_p).value or 0
    hflags = struct.unpack("<I", ctypes.string_at(base + HFLAGS_OFFSET, 4))[0]
    selector = struct.unpack("<I", ctypes.string_at(base + SEGS_OFFSET + SEG_SIZE * SEG_CS, 4))[0]
    if hflags & (HF_LMA_MASK | HF_CS64_MASK | HF_CPL_MASK) != HF_LMA_MASK | HF_CS64_MASK or selector != 0x1234:
        return False
    ctypes.memmove(base + HFLAGS_OFFSET, struct.pack("<I", hflags | 3), 4)
    uc.context_restore(ctx)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x1000, b"\x0f\x20\xd8")  # mov rax, cr3
    faults: list[int] = []

    def on_intr(u: Uc, intno: int, _user: object) -> None:
        faults.append(intno)
        u.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.emu_start(0x1000, 0x1003)
    if faults != [13]:
        return False  # CPL 3 did not take
    enter_cpl0(uc, (0x10, KERNEL_CODE64_FLAGS), (0, 0))
    uc.reg_write(X.UC_X86_REG_CR3, 0x5000)
    uc.emu_start(0x1000, 0x1003)
    return faults == [13] and uc.reg_read(X.UC_X86_REG_RAX) == 0x5000 and uc.reg_read(X.UC_X86_REG_CS) == 0x10


def syscall(uc: Uc, next_rip: int) -> int:
    """SYSCALL in 64-bit mode (SDM vol. 2B, SYSCALL): RCX the next RIP, R11 RFLAGS (RF clear), RFLAGS masked by
    IA32_FMASK, CS from IA32_STAR[47:32] and SS that + 8 at CPL 0, RIP from IA32_LSTAR. unicorn 2.1.4's
    helper_syscall only calls UC_HOOK_INSN hooks and steps over the instruction (target/i386/seg_helper.c), so its
    hook records it and this does the rest. Returns the new RIP."""
    star = uc.msr_read(MSR_STAR)
    lstar = uc.msr_read(MSR_LSTAR)
    fmask = uc.msr_read(MSR_FMASK)
    rflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    uc.reg_write(X.UC_X86_REG_RCX, next_rip)
    uc.reg_write(X.UC_X86_REG_R11, rflags & ~RFLAGS_RF)
    selector = (star >> 32) & 0xFFFC
    enter_cpl0(uc, (selector, KERNEL_CODE64_FLAGS), (selector + 8, KERNEL_DATA_FLAGS))
    uc.reg_write(X.UC_X86_REG_EFLAGS, rflags & ~(fmask | RFLAGS_RF) & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_RIP, lstar)
    return lstar


def deliver(uc: Uc, vector: int, return_rip: int, error_code: int | None, memory: VirtualMemory | None = None) -> int:
    """Deliver `vector` through the guest's 64-bit IDT as the CPU does (SDM vol. 3A, 6.14): from CPL 3 onto the
    TSS's RSP0 (the gate's IST stack if it names one, from any CPL), else the current stack; aligned to 16; SS,
    RSP, RFLAGS, CS, RIP and the error code pushed; IF cleared for an interrupt gate; CS from the gate and, on a
    privilege change, a null SS. Returns the handler's address. Raises GuestFault where hardware would escalate
    (to #DF, here to a stop). The IDT, TSS and stack are reached through `memory` (default: read_virt/write_virt),
    as implicit supervisor-mode accesses."""
    mem = memory if memory is not None else _WalkedMemory(uc)
    _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    old_rsp, cs, rflags, ss = read_regs(uc, _DELIVERY_READS)
    rsp = old_rsp
    if vector * 16 + 15 > idt_limit:
        raise GuestFault(f"vector {vector} lies beyond the IDT (limit {idt_limit:#x})")
    gate = mem.read(idt_base + vector * 16, 16)
    low, selector, ist, attributes, mid, high = struct.unpack("<HHBBHI", gate[:12])
    if not attributes & 0x80:
        raise GuestFault(f"IDT gate {vector} is not present")
    handler = low | (mid << 16) | (high << 32)
    to_cpl0 = bool(cs & 3) and not selector & 3  # a kernel gate taken from user mode: a stack switch
    if ist & 7 or to_cpl0:
        _, tss_base, _, _ = uc.reg_read(X.UC_X86_REG_TR)
        at = tss_base + (0x24 + 8 * ((ist & 7) - 1) if ist & 7 else TSS_RSP0)
        rsp = int.from_bytes(mem.read(at, 8), "little")
    frame = [ss, old_rsp, rflags, cs]
    frame.append(return_rip)
    if error_code is not None:
        frame.append(error_code)
    rsp = (rsp & ~0xF) - 8 * len(frame)
    mem.write(rsp, struct.pack(f"<{len(frame)}Q", *reversed(frame)))
    cleared = RFLAGS_CLEARED_ON_DELIVERY | (RFLAGS_IF if attributes & 0xF == GATE_INTERRUPT else 0)
    if to_cpl0:
        descriptor = mem.read(uc.reg_read(X.UC_X86_REG_GDTR)[1] + (selector & ~7), 8)
        enter_cpl0(uc, (selector & ~3, struct.unpack("<II", descriptor)[1] | DESC_A), (0, 0))
    elif selector != cs:
        uc.reg_write(X.UC_X86_REG_CS, selector)
    write_regs(uc, ((X.UC_X86_REG_RSP, rsp), (X.UC_X86_REG_EFLAGS, rflags & ~cleared)))
    uc.reg_write(X.UC_X86_REG_RIP, handler)
    return handler


_DELIVERY_READS = (X.UC_X86_REG_RSP, X.UC_X86_REG_CS, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_SS)


def read_regs(uc: Uc, ids: tuple[int, ...]) -> list[int]:
    """64-bit registers in one uc_reg_read_batch: the binding's reg_read costs ~13 us a call (its register class
    lookup), and a kernel run delivers tens of thousands of #VEs."""
    binding: Any = uc
    values = (ctypes.c_uint64 * len(ids))()
    base = ctypes.addressof(values)
    ptrs = (ctypes.c_void_p * len(ids))(*(base + 8 * i for i in range(len(ids))))
    if uc_module.uclib.uc_reg_read_batch(binding._uch, (ctypes.c_int32 * len(ids))(*ids), ptrs, len(ids)):
        raise RuntimeError("uc_reg_read_batch failed")
    return list(values)


def write_regs(uc: Uc, pairs: tuple[tuple[int, int], ...]) -> None:
    """(register, 64-bit value) pairs in one uc_reg_write_batch, in order. Not RIP: from a hook, unicorn 2.1.4 goes
    on with the block it is in after a batch that writes RIP (uc_reg_write leaves it for the new RIP)."""
    binding: Any = uc
    values = (ctypes.c_uint64 * len(pairs))(*(v & ((1 << 64) - 1) for _, v in pairs))
    base = ctypes.addressof(values)
    ptrs = (ctypes.c_void_p * len(pairs))(*(base + 8 * i for i in range(len(pairs))))
    ids = (ctypes.c_int32 * len(pairs))(*(r for r, _ in pairs))
    if uc_module.uclib.uc_reg_write_batch(binding._uch, ids, ptrs, len(pairs)):
        raise RuntimeError("uc_reg_write_batch failed")


EXCEPTION_NAMES = {0: "#DE", 1: "#DB", 3: "#BP", 6: "#UD", 8: "#DF", 13: "#GP", 14: "#PF", 20: "#VE"}


class EventTrail:
    """The last events delivered to a vCPU, kept so that a stop unicorn gives no reason for (a triple fault inside
    unicorn ends emu_start without calling any hook) can still name what led to it."""

    def __init__(self, size: int = 8):
        self._events: deque[tuple[int, int]] = deque(maxlen=size)

    def record(self, vector: int, return_rip: int) -> None:
        self._events.append((vector, return_rip))

    def describe(self) -> str:
        if not self._events:
            return "no exception or interrupt delivered yet"
        return "last delivered: " + ", ".join(
            f"{EXCEPTION_NAMES.get(v, f'vector {v:#x}')} (return RIP {rip:#x})" for v, rip in self._events
        )


def silent_stop_detail(uc: Uc, trail: EventTrail) -> str:
    """Why emu_start may have returned with no hook involved: old_exception 8 means a #DF was being raised, so the
    next fault was a triple fault (QEMU's check_exception shuts the CPU down; unicorn just returns)."""
    pending = read_old_exception(uc)
    state = {-1: "no exception pending", 8: "a #DF was pending: a triple fault"}.get(
        pending, f"exception {EXCEPTION_NAMES.get(pending, pending)} pending"
    )
    return f"unicorn returned without a reason ({state}); {trail.describe()}"


# ------------------------------------------------------------------ which image an address lies in
SCAN_BACK = 4 << 20  # firmware images are smaller than this
HEADER_CHECK = 0x200  # bytes of a cached image's headers compared on each use (images are unloaded, pages reused)


@dataclass(frozen=True)
class ImageHit:
    base: int
    end: int
    name: str
    module: FvModule | None  # the firmware file it came from, where the build's volumes hold it


def image_at(
    read: Reader, address: int, modules: Mapping[bytes, FvModule] | None = None, floor: int = 0
) -> ImageHit | None:
    """The PE32/PE32+ or TE image containing `address`: the nearest header before it, a page at a time, whose
    image covers the address. Headers sit wherever the firmware volume's section put them (SecMain's MZ is 4 bytes
    into a page), so every "MZ"/"VZ" is tried. Named by its firmware file (`modules`, firmware/pi/fv.py), else by
    its CodeView PDB path, else by the USER_INTERFACE section after it in place, else by its address. No header
    is looked for below `floor` (the end of an image known to end before the address: images do not overlap)."""
    page = address & ~0xFFF
    for base in range(page, max(page - SCAN_BACK, floor & ~0xFFF, 0), -0x1000):
        data = read(base, 0x1000)
        if data is None:
            return None
        end = len(data) if base != page else address - base + 2  # a header may start at the address itself
        for tag in (b"MZ", b"VZ"):
            at = data.rfind(tag, 0, end)
            while at >= 0:
                hit = _image_hit(read, base + at, address, modules or {})
                if hit is not None:
                    return hit
                at = data.rfind(tag, 0, at)
    return None


def image_name_at(read: Reader, address: int, modules: Mapping[bytes, FvModule] | None = None) -> str | None:
    hit = image_at(read, address, modules)
    return hit.name if hit is not None else None


class ImageLocator:
    """image_at with what it found kept by page. A kept image is re-checked (its headers read and compared) once
    per epoch (`new_epoch`: a vCPU's synchronous point), as images are unloaded and their pages reused. A page
    with no image (a scan back of up to 4 MiB) is scanned again only after `forget_empty` (a new boot phase)."""

    def __init__(self, modules: Mapping[bytes, FvModule] | None = None):
        self.modules = modules or {}
        self._by_page: dict[int, ImageHit | None] = {}  # page -> its image, or None: no image there
        self._headers: dict[int, bytes] = {}  # image base -> its first HEADER_CHECK bytes
        self._images: dict[int, ImageHit] = {}  # image base -> the image found there
        self._bases: list[int] = []  # sorted keys of _images
        self._checked: set[int] = set()  # image bases checked in this epoch

    def new_epoch(self) -> None:
        self._checked.clear()

    def forget_empty(self) -> None:
        self._by_page = {page: hit for page, hit in self._by_page.items() if hit is not None}

    def locate(self, read: Reader, address: int) -> ImageHit | None:
        page = address & ~0xFFF
        if page in self._by_page and self._by_page[page] is None:
            return None
        known = self._by_page.get(page)
        floor = 0
        if known is None:  # a page not seen yet may lie in an image found from another page
            at = bisect.bisect_right(self._bases, address) - 1
            known = self._images[self._bases[at]] if at >= 0 else None
        if known is not None and known.base <= address < known.end:
            if known.base in self._checked or read(known.base, HEADER_CHECK) == self._headers.get(known.base):
                self._checked.add(known.base)
                self._by_page[page] = known
                return known
        elif known is not None and known.end <= address:
            floor = known.end
        hit = image_at(read, address, self.modules, floor)
        if hit is None:
            self._by_page[page] = None
            return None
        headers = read(hit.base, HEADER_CHECK)
        if headers is not None:
            self._headers[hit.base] = headers
            self._checked.add(hit.base)
            self._by_page[page] = hit
            if hit.base not in self._images:
                bisect.insort(self._bases, hit.base)
            self._images[hit.base] = hit
        return hit


def _image_hit(read: Reader, base: int, address: int, modules: Mapping[bytes, FvModule]) -> ImageHit | None:
    found = image_fingerprint(read, base)
    if found is None:
        return None
    fingerprint, size_of_image = found
    if not base <= address < base + size_of_image:
        return None
    module = modules.get(fingerprint)
    if module is not None:
        return ImageHit(base, base + size_of_image, module.name, module)
    if read(base, 2) == b"MZ":
        name = pe_debug_name(read, base) or _ui_section(read, base) or f"image@{base:#x}"
    else:
        raw = read(base, TE_HEADER.size)
        fields = TE_HEADER.unpack(raw) if raw is not None else None
        # TE keeps RVAs of the PE image it was stripped from: memory = base + rva - stripped + sizeof(TE header).
        delta = TE_HEADER.size - fields[4] if fields else 0
        debug_rva = fields[10] if fields else 0  # DataDirectory[1].VirtualAddress (DEBUG)
        name = codeview_name(read, base, debug_rva, delta) or _ui_section(read, base) or f"te-image@{base:#x}"
    return ImageHit(base, base + size_of_image, name, None)


TE_HEADER = struct.Struct("<2sHBBHIIQ8I")  # EFI_TE_IMAGE_HEADER (MdePkg/Include/IndustryStandard/PeImage.h)


def _ui_section(read: Reader, base: int) -> str | None:
    """Release builds (Debian's) carry no debug directory; an image executed in place still sits in its firmware
    file's PE32/TE section, which edk2's build follows with a USER_INTERFACE section naming the module
    (PI spec vol. 3, EFI_COMMON_SECTION_HEADER: 24-bit size, 8-bit type)."""
    head = read(base - 4, 4)
    if head is None or head[3] not in (SectionType.PE32, SectionType.TE):
        return None
    following = (base - 4 + int.from_bytes(head[:3], "little") + 3) & ~3
    ui = read(following, 4)
    if ui is None or ui[3] != SectionType.USER_INTERFACE:
        return None
    size = int.from_bytes(ui[:3], "little")
    text = read(following + 4, min(max(size - 4, 0), 256))
    return text.decode("utf-16-le", "replace").split("\0", 1)[0] if text else None

