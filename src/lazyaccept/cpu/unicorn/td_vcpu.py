"""A TD vCPU on unicorn: edk2's own TDVF run from the reset vector at CPL0 against this project's TDX module.

A TD's vCPUs and what they share (memory, TDCALL dispatcher, platform, the scheduler) are a td_machine.TdMachine;
this module is one vCPU of it. The vCPU starts as the TDX module starts one (td_state.enter_initial_state), sees
only memory the TDX module has accepted (td_memory), and leaves the CPU for the TDX module only where a TD does:
- TDCALL (66 0F 01 CC, an invalid opcode to unicorn) goes to the TDX module's `TdcallDispatcher` with the GPRs;
  the registers it returns are written back and RIP moves past the instruction. Without a VMM (`NoVmm`) a
  TDG.VP.VMCALL ends the run.
- HLT raises #VE (exit reason 12) through the guest's IDT; the dispatcher keeps the #VE information for
  TDG.VP.VEINFO.GET (or turns the #VE into #DF when the last one's is unread).
- CPUID is answered by a hook, not through #VE: a TD's CPUID is virtualised by the TDX module for the leaves
  firmware reads (0, 1, 0x21 on every I/O call; edk2's TdIsEnabled), and raising #VE would cost a TDVMCALL
  round trip per I/O for the same values. The difference: leaves a real TD would send to the VMM via #VE are
  answered from unicorn's CPU model here.
- CPU exceptions (#GP, #UD, #PF...) are delivered through the guest's IDT (OVMF's CpuExceptionHandlerLib prints
  and dead-loops; the wall-time budget ends that). The error code pushed is 0: unicorn does not expose it.
- A touch of memory that is not accepted terminates the TD, as KVM does with SEPT_VE_DISABLE.
- Paging is walked by td_paging (unicorn's virtual-TLB mode), not by unicorn, whose walker faults on the shared
  bit; #PF goes through the guest's IDT with its error code and CR2. After TDG.VP.VMCALL<MapGPA> the unicorn
  mappings follow: pages shared are removed from the private view and appear at GPA | shared bit.
- Interrupts from the platform's x2APIC (its timer) are injected when RFLAGS.IF=1 at safe points only: after a
  TDCALL returns and at HLT; a TDVMCALL<HLT> with nothing pending moves virtual time to the next timer deadline.

After the handoff the same vCPU can go on in the Linux kernel (`enter_kernel`, tdvf_run --run-kernel): TDCALLs are
answered as before (the accepts are the kernel's, actor `linux`); HLT, port I/O, CPUID of the hypervisor leaves and
the MSRs the TDX module does not run natively (tdx/msr.py) and loads/stores to shared GPAs with no memory (MMIO)
raise #VE through the kernel's IDT, which its handler
turns into TDVMCALLs (td_kernel.py: how IN/OUT, CPUID and RDMSR/WRMSR are stopped before they execute); the CPUID
leaves the module virtualises stay answered by the hook, as for the firmware; exceptions go through the kernel's
IDT, IST stacks and all.

Runs stop only synchronously, from hooks (emu_stop) — the project's spike found that unicorn's asynchronous stop
corrupts EFLAGS on resume — except for the wall-time budget, after which the run is never resumed. A vCPU gives
the host thread to another one the same way (td_machine: spinning on the AP mailbox, idle at HLT).
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_HOOK_TLB_FILL,
    UC_MEM_FETCH,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ,
    UC_MEM_WRITE,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn import x86_const as X
from unicorn.unicorn_py3 import unicorn as uc_module

from lazyaccept import interrupt
from lazyaccept.cpu.unicorn.icount import counter_for, unavailable_reason
from lazyaccept.cpu.unicorn.td_kernel import (
    EXIT_REASON_MSR_READ,
    EXIT_REASON_MSR_WRITE,
    MAX_BLOCK,
    MSR_INSTRUCTION_LENGTH,
    RDMSR,
    WRMSR,
    CpuidSite,
    GuestEntropy,
    IoSite,
    Site,
    VeSites,
    decode_io,
    decode_random,
    instruction_at,
    mmio_operand_address,
    mmio_ve,
    msr_sites,
    pause_sites,
    random_sites,
)
from lazyaccept.cpu.unicorn.td_memory import AcceptedMapping, HostRam
from lazyaccept.cpu.unicorn.td_paging import (
    PF_ID,
    PageFault,
    PageWalker,
    UnsupportedPaging,
    _Msr,  # uc_x86_msr
)
from lazyaccept.cpu.unicorn.td_phases import LINUX, FirmwareClock
from lazyaccept.cpu.unicorn.td_state import (
    RFLAGS_IF,
    VECTORS_WITH_ERROR_CODE,
    EventTrail,
    GuestFault,
    ImageLocator,
    deliver,
    enter_initial_state,
    read_virt,
    reset_old_exception,
    run_without_exits,
    silent_stop_detail,
    syscall,
)
from lazyaccept.errors import InputError
from lazyaccept.firmware.pi.fv import FvModule, module_index_of
from lazyaccept.records import Actor, StopKind, StopReason
from lazyaccept.spec.tdx import PageLevel, TdcallLeaf, TdvmcallStatus, TdxStatus
from lazyaccept.spec.tdx import TdvmcallSubfunction as Sub
from lazyaccept.tdx.module import TdTerminated
from lazyaccept.tdx.msr import MsrAction, msr_action
from lazyaccept.tdx.tdcall import TdcallDispatcher, VeInfo, leaf_name
from lazyaccept.vmm.devices.cpuid import TOPOLOGY_LEAVES, topology
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td

TDCALL_BYTES = b"\x66\x0f\x01\xcc"
HLT_BYTE = 0xF4
EXIT_REASON_HLT = 12  # VM-exit basic reason, as TDG.VP.VEINFO.GET reports it
UNREACHABLE_UNTIL = (1 << 64) - 1  # not canonical: emu_start never stops on reaching it
STALE_STOPS_LIMIT = 10_000  # stale stops in a row... of a run: beyond, unicorn is stuck, not the guest
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPR_NAMES}
_GPR_INDEX = {name: i for i, name in enumerate(GPR_NAMES)}
_REPORT_REGS = {**_GPR, "rsp": X.UC_X86_REG_RSP, "rip": X.UC_X86_REG_RIP, "rflags": X.UC_X86_REG_EFLAGS}
_REPORT_REGS.update(cr0=X.UC_X86_REG_CR0, cr2=X.UC_X86_REG_CR2, cr3=X.UC_X86_REG_CR3, cr4=X.UC_X86_REG_CR4)
# CPUID leaf 0x21 in a TD: "IntelTDX    " in EBX, EDX, ECX (REFERENCE.md section 3; OvmfPkg IntelTdx.nasm.inc).
TDX_CPUID_21 = (0, 0x65746E49, 0x20202020, 0x5844546C)
# __START_KERNEL_map (arch/x86/include/asm/page_64_types.h, Linux 6.12): where the kernel's text is mapped.
KERNEL_TEXT_MAPPING = 0xFFFFFFFF80000000
GENUINE_INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # EBX, ECX, EDX
CPUID1_ECX_HYPERVISOR = 1 << 31
CPUID1_ECX_X2APIC = 1 << 21
CPUID7_ECX_LA57 = 1 << 16
# CPUID leaf 0x15 as the TDX module virtualizes it (TDX module ABI: from TD_PARAMS.TSC_FREQUENCY, in units of
# 25 MHz): EAX 1, EBX TSC_FREQUENCY, ECX the 25 MHz nominal crystal, which is also the TD's APIC bus (apic.py).
# Linux takes tsc_khz and the APIC timer period from it (arch/x86/kernel/tsc.c native_calibrate_tsc). The virtual
# TSC runs at the clock the cost profile assumes for guest instructions (tdx/costs.py guest_instruction_ps: 2.0 GHz).
TSC_CRYSTAL_HZ = 25_000_000
VIRTUAL_TSC_HZ = 2_000_000_000
MSR_TSC_AUX = 0xC0000103


class NoVmm:
    """The VMM side of a TD run without a device model: every TDG.VP.VMCALL ends the run (VmcallHandler)."""

    def tdvmcall(
        self, vcpu: int, subfunction: int, r12: int, r13: int, r14: int, r15: int
    ) -> tuple[int, dict[str, int]]:
        raise VmmMissing(f"TDG.VP.VMCALL {subfunction:#x} (R12={r12:#x}) with no VMM platform attached")


class VmmMissing(Exception):
    pass


@dataclass
class TdProgress:
    """How far a run got. Instructions are not counted: unicorn counts only in count-limited slices, which skip
    the invalid-opcode hook of a TDCALL at a slice start (REFERENCE.md, unicorn facts)."""

    tdcalls: Counter[str] = field(default_factory=Counter)
    ve: Counter[str] = field(default_factory=Counter)
    exceptions: Counter[str] = field(default_factory=Counter)
    interrupts: int = 0
    syscalls: int = 0  # SYSCALLs from user mode, entered by td_state.syscall
    unicorn_regions: int = 0
    tlb_fills: int = 0  # page walks done by td_paging (unicorn TLB misses)
    stale_stops: int = 0  # slices ended by a stop request no hook of theirs made (resumed)
    virtual_ns: int = 0


@dataclass
class TdRunResult:
    stop: StopReason
    registers: dict[str, int]  # of the vCPU that stopped the run
    module: str | None  # the firmware image RIP lies in, where one is found
    progress: TdProgress  # all vCPUs together; virtual_ns is the slowest vCPU's clock
    wall_s: float
    serial: str = ""
    vcpu: int = 0  # the vCPU that stopped the run
    per_vcpu: list[TdProgress] = field(default_factory=list)

    @property
    def rip(self) -> int:
        return self.registers["rip"]


# uc_cb_tlbfill_t (unicorn 2.1.4 include/unicorn/unicorn.h): uc, vaddr, uc_mem_type, uc_tlb_entry *, user data.
_TLB_FILL_CFUNC = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)


class _TlbEntry(ctypes.Structure):
    """struct uc_tlb_entry: uint64_t paddr; uc_prot perms (filled in place: cheaper than a memmove of a packed copy)."""

    _fields_ = (("paddr", ctypes.c_uint64), ("perms", ctypes.c_uint32))


# uc_cb_hookcode_t: uc, address, size, user data.
_CODE_CFUNC = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


class _Gprs:
    """A TDCALL's GPRs in one uc_reg_read_batch, and its outputs back in one uc_reg_write_batch: the binding's
    reg_read/reg_write cost several microseconds each, a tenth of a boot's time with 15 of them per TDCALL."""

    def __init__(self, uc: Uc):
        binding: Any = uc
        self._handle = binding._uch
        self._values = (ctypes.c_uint64 * len(GPR_NAMES))()
        base = ctypes.addressof(self._values)
        self._ids = (ctypes.c_int32 * len(GPR_NAMES))(*_GPR.values())
        self._ptrs = (ctypes.c_void_p * len(GPR_NAMES))(*(base + 8 * i for i in range(len(GPR_NAMES))))

    def read(self) -> dict[str, int]:
        if uc_module.uclib.uc_reg_read_batch(self._handle, self._ids, self._ptrs, len(GPR_NAMES)):
            raise RuntimeError("uc_reg_read_batch(GPRs) failed")
        return dict(zip(GPR_NAMES, self._values, strict=True))

    def write(self, out: Mapping[str, int]) -> None:
        """The outputs over the GPRs of the last read (none of them changed since: the TDCALL's hook reads, the
        TDX module answers, this writes), all 15 through the same arrays: new ctypes arrays per call cost more."""
        if not out:
            return
        values = self._values
        for name, value in out.items():
            values[_GPR_INDEX[name]] = value & ((1 << 64) - 1)
        if uc_module.uclib.uc_reg_write_batch(self._handle, self._ids, self._ptrs, len(GPR_NAMES)):
            raise RuntimeError("uc_reg_write_batch(GPRs) failed")


class _Reg:
    """Single registers straight through libunicorn: the binding's reg_read/reg_write (~13 us a call, its register
    class lookup) were most of the kernel's hot hooks (RIP at every hook, RFLAGS per instruction of an interrupt
    window, RAX/RDX at every RDTSC)."""

    def __init__(self, uc: Uc):
        binding: Any = uc
        self._handle = binding._uch
        self._read_fn = uc_module.uclib.uc_reg_read
        self._write_fn = uc_module.uclib.uc_reg_write
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        self._tsc = (ctypes.c_uint64 * 3)()
        self._tsc_ptrs = (ctypes.c_void_p * 3)(*(ctypes.addressof(self._tsc) + 8 * i for i in range(3)))
        self._tsc_ids = (ctypes.c_int32 * 3)(X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX)
        self._msr = _Msr(0, 0)
        self._msr_ref = ctypes.byref(self._msr)

    def read(self, reg: int) -> int:
        self._value.value = 0  # a 32-bit register fills only the low half
        if self._read_fn(self._handle, reg, self._ref):
            raise RuntimeError(f"uc_reg_read({reg}) failed")
        return self._value.value

    def write(self, reg: int, value: int) -> None:
        self._value.value = value & ((1 << 64) - 1)
        if self._write_fn(self._handle, reg, self._ref):
            raise RuntimeError(f"uc_reg_write({reg}) failed")

    def write_tsc(self, value: int, aux: int | None) -> None:
        """EDX:EAX = value, each half zero-extended (RDTSC), and ECX = aux (RDTSCP), in one batch."""
        self._tsc[0], self._tsc[1] = value & 0xFFFFFFFF, value >> 32 & 0xFFFFFFFF
        count = 2
        if aux is not None:
            self._tsc[2], count = aux & 0xFFFFFFFF, 3
        if uc_module.uclib.uc_reg_write_batch(self._handle, self._tsc_ids, self._tsc_ptrs, count):
            raise RuntimeError("uc_reg_write_batch(RAX, RDX, RCX) failed")

    def msr(self, index: int) -> int:
        """An MSR of unicorn's CPU (the binding's msr_read goes through its slow register path)."""
        self._msr.rid, self._msr.value = index, 0
        if self._read_fn(self._handle, X.UC_X86_REG_MSR, self._msr_ref):
            raise RuntimeError(f"uc_reg_read(MSR {index:#x}) failed")
        return int(self._msr.value)


class VcpuHost(Protocol):
    """What a vCPU needs of the machine it belongs to (td_machine.TdMachine): what the vCPUs share, and its
    scheduler's two questions."""

    td: Td
    platform: Q35Platform | None
    dispatcher: TdcallDispatcher
    ram: HostRam
    mapping: AcceptedMapping
    stop_in_kernel: bool
    until: Callable[[int, Mapping[str, int]], str | None] | None

    def others_ready(self, i: int) -> bool: ...

    def yield_at_tdcall(self, i: int) -> bool: ...

    def yield_at_pause(self, i: int) -> bool: ...

    def idle(self, i: int) -> bool: ...


class TdVcpu:
    """One vCPU of a TD machine (td_machine.TdMachine), started at the reset vector as the TDX module starts vCPU
    `vcpu`. It owns its unicorn; the memory views, the TDCALL dispatcher and the platform are the machine's.
    `until(leaf, inputs)` is asked before each TDCALL reaches the TDX module and stops the run there
    (StopKind.REQUESTED) with the reason it returns. With `stop_in_kernel`, the run stops (StopKind.KERNEL) at the
    first instruction fetched from the x86-64 kernel's text mapping: the Linux kernel runs, past the EFI stub's jump
    and its own identity-mapped start."""

    def __init__(self, machine: VcpuHost, vcpu: int):
        td = machine.td
        self.machine = machine
        self.td = td
        self.tdx = td.tdx
        self.vcpu = vcpu
        self.platform = machine.platform
        self.dispatcher = machine.dispatcher
        self.ram = machine.ram
        self.mapping = machine.mapping
        self.shared_bit = machine.mapping.shared_bit
        self.stop_in_kernel = machine.stop_in_kernel
        name = Path(td.config.firmware_path).name if td.config.firmware_path else "tdvf"
        self.actor = name  # who accepts when the TDCALL's RIP lies in no firmware module (e.g. the reset vector)
        self.actor_suffix = "" if td.config.vcpus == 1 else f" vCPU {vcpu}"
        self.progress = TdProgress()
        self.yielded = False  # the machine's scheduler stopped this vCPU to run another (td_machine)
        self._stop: StopReason | None = None
        self._exception: tuple[int, int] | None = None  # (vector, RIP) raised in the last slice
        self._page_fault: PageFault | None = None  # raised by the page walk in the last slice
        self.trail = EventTrail()  # what was delivered last, for a stop unicorn gives no reason for
        self._cpuid_cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._cpuid_cpu: Uc | None = None
        # After the handoff (enter_kernel): the kernel's accepts (GPA, bytes) and its port I/O sites.
        self.in_kernel = False
        self.kernel_accepts: list[tuple[int, int, int]] = []  # (GPA, bytes, console bytes at the time)
        # Told of each of them, at the TDCALL (RIP and RSP still the kernel's): guest/kernel_progress.py.
        self.on_kernel_accept: Callable[[TdVcpu, int, int], None] | None = None
        self.io_sites: VeSites | None = None
        self._kernel_memory = _TranslatedMemory(self)
        self._io_rollback: tuple[Any, Site] | None = None  # a site met for the first time: context to go back to
        self._pending_ve: tuple[VeInfo, int] | None = None  # a #VE to deliver at the end of the slice, at RIP
        self._pending_msr: tuple[int, bool, int, MsrAction] | None = None  # (RIP, write, MSR, action) stopped at
        self._pending_mmio: VeInfo | None = None  # a load/store to a shared GPA with no memory (MMIO)
        self._pending_syscall = False  # a SYSCALL stepped over by unicorn: the entry to the kernel is ours
        self._irq_window: int | None = None  # the code hook waiting for RFLAGS.IF (_open_irq_window)
        # Called per instruction while open: straight from libunicorn, past the binding's wrapper (as the TLB fill).
        self._irq_window_hook = _CODE_CFUNC(self._raw_irq_window)
        self._irq_window_seen = False
        self._irq_window_action: str | None = None  # "inject" or "close", decided in the hook, done after the slice
        self.msr_events: Counter[str] = Counter()  # "rdmsr 0x1b ve" -> count
        self.entropy = GuestEntropy()  # the kernel's RDRAND/RDSEED (td_kernel.py): a run repeats
        self.random_reads = 0
        self._paused_at: int | None = None  # the PAUSE or TDCALL this vCPU last yielded at in the kernel (RIP on it)

        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        # First, on an empty address space: its scratch GDT page would collide with the TD's memory.
        enter_initial_state(
            self.uc,
            gpaw=self.tdx.gpa_width,
            vcpu_index=vcpu,
            init_rcx=td.hob_base,
            cpuid1_eax=self._native_cpuid(1, 0)[0],
        )
        self.mapping.attach(self.uc)
        self.walker = PageWalker(self.uc, self.ram.view, self.tdx.gpa_width, self._check_table)
        self.mapping.on_loss.append(self.walker.forget)
        self._gprs = _Gprs(self.uc)
        self._reg = _Reg(self.uc)
        binding: Any = self.uc  # ctl_set_tlb_mode exists in 2.1.4 but not in the binding's type hints
        binding.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        run_without_exits(self.uc)  # else each emu_start's end walks the `until` page: a #PF the guest never caused
        # The TLB fill hook straight through libunicorn: the binding's two Python wrappers and its entry struct
        # were a third of each fill's cost, and a boot makes hundreds of thousands. The binding keeps the pointer.
        self._tlb_fill_hook = _TLB_FILL_CFUNC(self._raw_tlb_fill)
        binding._Uc__do_hook_add(UC_HOOK_TLB_FILL, self._tlb_fill_hook, 1, 0)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid)
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        # Bounded to what lies beyond both views: a memory hook over an address keeps unicorn's TLB entries for
        # it on the slow path (exec-all.h uc_mem_hook_installed), so one over all of memory made every store to
        # a data page miss the victim TLB.
        unmapped = UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED | UC_HOOK_MEM_FETCH_UNMAPPED
        beyond = self.ram.size
        self.uc.hook_add(unmapped, self._on_unmapped, None, beyond, self.shared_bit - 1)
        self.uc.hook_add(unmapped, self._on_unmapped, None, self.shared_bit + beyond, (1 << 64) - 1)
        # The firmware's own work on the virtual clock and its phases, by module (td_phases): synced at TDCALL,
        # HLT and the end of the run. Without a C compiler, virtual time comes from TDCALLs only.
        self.icount = counter_for(self.uc)
        self.vtime_note = None if self.icount else f"virtual time from TDCALLs only: {unavailable_reason()}"
        modules, self.modules_note = _firmware_modules(td)
        self.locator = ImageLocator(modules)
        self.clock = FirmwareClock(self.tdx, vcpu, self.icount, self.locator, self._read_code)

    @property
    def until(self) -> Callable[[int, Mapping[str, int]], str | None] | None:
        return self.machine.until

    # ----------------------------------------------------------------- running
    def step(self, deadline: float) -> StopReason | None:
        """Run from the vCPU's RIP until it stops the machine (the reason is returned) or yields to another vCPU
        (None, `yielded` set). The wall-time budget is the last resort (dead loops, idle firmware)."""
        self.yielded = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return StopReason(StopKind.BUDGET, "wall-time budget exhausted", self._rip())
            self._stop, self._exception, self._page_fault = None, None, None
            with interrupt.stoppable(self.uc.emu_stop):  # Ctrl-C stops the vCPU, then raises here (interrupt.py)
                try:
                    self.uc.emu_start(self._rip(), UNREACHABLE_UNTIL, timeout=max(1, int(remaining * 1e6)))
                except UcError as exc:
                    interrupt.reraise_from_hook(self.uc)  # Ctrl-C without the CLI's handler: not a unicorn error
                    rolling_back = self._io_rollback is not None or self._pending_mmio is not None
                    if self._stop is None and self._page_fault is None and not self.yielded and not rolling_back:
                        self._stop = StopReason(StopKind.ERROR, f"unicorn: {exc}", self._rip())
            stop = self._stop or self._after_slice(deadline)
            if stop is not None or self.yielded:
                return stop

    def request_yield(self) -> None:
        """Stop at the end of the current translation block (a synchronous stop) so another vCPU runs."""
        self.yielded = True
        self.uc.emu_stop()

    def registers(self) -> dict[str, int]:
        return {name: self.uc.reg_read(reg) for name, reg in _REPORT_REGS.items()}

    def _after_slice(self, deadline: float) -> StopReason | None:
        """emu_start returned without a stop of ours: an exception to deliver, a yield, HLT, or the budget."""
        if self._io_rollback is not None:
            return self._roll_back_io()
        if self._pending_syscall:
            self._pending_syscall = False
            try:
                syscall(self.uc, self._rip())
            except UcError as exc:
                return StopReason(StopKind.EXCEPTION, f"SYSCALL entry not possible: {exc}", self._rip())
            return None
        if self._pending_ve is not None:
            info, rip = self._pending_ve
            self._pending_ve = None
            return self._raise_ve(info, rip)
        if self._pending_msr is not None:
            return self._msr_after_slice()
        if self._pending_mmio is not None:
            info, self._pending_mmio = self._pending_mmio, None
            info = self._exact_mmio(info)
            self._page_fault = None  # unicorn's own view of the refused fill, not the guest's
            return self._raise_ve(info, self._rip())
        fault = self._page_fault
        # unicorn's stop (emu_stop, ours or the timeout's) fetches at the `until` page, which faults: not the
        # guest's. A stop request can also outlive the slice it was made in and end the next one at its start.
        stopped = fault is not None and fault.address & ~0xFFF == UNREACHABLE_UNTIL & ~0xFFF
        if stopped and self.in_kernel and fault is not None and not fault.error_code & PF_ID:
            stopped = False  # the kernel's own data access there (an ERR_PTR dereferenced): its #PF, not unicorn's
        if stopped:
            fault = None
        if fault is not None:
            self._page_fault = None
            self.progress.exceptions["#PF"] += 1
            self.uc.reg_write(X.UC_X86_REG_CR2, fault.address)
            return self._deliver(14, self._rip(), fault.error_code)
        if self._exception is not None:
            vector, rip = self._exception
            reset_old_exception(self.uc)
            return self._deliver(vector, rip, 0 if vector in VECTORS_WITH_ERROR_CODE else None)
        if self._irq_window_action is not None:
            action, self._irq_window_action = self._irq_window_action, None
            if action == "open":
                self._open_irq_window()
                return None
            self._close_irq_window()
            if action == "inject" and self._interrupt_pending():
                return self._inject_interrupt(self._rip())
            return None
        if self.yielded:
            return None
        rip = self._rip()
        if stopped and time.monotonic() < deadline:
            self.progress.stale_stops += 1  # a stop no hook of this slice asked for: the guest simply goes on
            if self.progress.stale_stops % STALE_STOPS_LIMIT:
                return None
            return StopReason(StopKind.ERROR, f"unicorn stops at once, {STALE_STOPS_LIMIT} times over", rip)
        if self._byte_before(rip) == HLT_BYTE:
            return self._halted(rip - 1)
        if time.monotonic() >= deadline:
            return StopReason(StopKind.BUDGET, "wall-time budget exhausted", rip)
        return StopReason(StopKind.ERROR, silent_stop_detail(self.uc, self.trail), rip)

    def _halted(self, hlt_rip: int) -> StopReason | None:
        """HLT in a TD is a #VE (the TDX module does not run HLT); the handler asks the VMM through TDVMCALL.
        An interrupt the guest accepts (IF=1) arrives before the HLT executes instead."""
        self.clock.sync(hlt_rip)
        if self._interrupt_pending():
            return self._inject_interrupt(hlt_rip)
        self.progress.ve["hlt"] += 1
        vector = self.dispatcher.inject_ve(self.vcpu, VeInfo(EXIT_REASON_HLT, instruction_length=1))
        # #VE is a fault: the frame's RIP is the HLT itself; edk2's handler adds the instruction length. With the
        # last #VE's information unread the TDX module delivers #DF instead.
        return self._deliver(vector, hlt_rip, 0 if vector in VECTORS_WITH_ERROR_CODE else None)

    # ----------------------------------------------------------------- the kernel (after the handoff)
    def enter_kernel(self, image: bytes = b"", base: int = 0) -> None:
        """Go on past the stub's jump: no stop at the kernel's text mapping; accepts are the kernel's; IN/OUT
        raise #VE, and RDMSR/WRMSR in `image` (the kernel as loaded, mapped at `base`) do what the TDX module does
        with them (td_kernel.py). TDVF never runs IN/OUT in a TD, so the hooks are armed only now."""
        for address, write in msr_sites(image, base).items():
            self.uc.hook_add(UC_HOOK_CODE, self._on_msr_site, write, address, address)
        for address in random_sites(image, base):
            self.uc.hook_add(UC_HOOK_CODE, self._on_random_site, None, address, address)
        if self.td.config.vcpus > 1:
            for address in pause_sites(image, base):
                self.uc.hook_add(UC_HOOK_CODE, self._on_pause, None, address, address)
        self.in_kernel = True
        self.stop_in_kernel = False
        self.actor = Actor.LINUX
        self.clock.enter_kernel()
        self.io_sites = VeSites(self.uc, self._on_io_site, self._reg.read)
        self.uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        self.uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        self._install_tsc_hooks()

    def _install_tsc_hooks(self) -> None:
        """RDTSC and RDTSCP read the virtual TSC: the vCPU's virtual clock (its instructions charged up to here)
        at VIRTUAL_TSC_HZ, so the kernel's clocksource, the APIC timer it programs and the console timestamps all
        follow the TDX module's clock and a run repeats. unicorn's own TSC follows the host's. The binding refuses
        these instruction ids; the C library takes them with the CPUID callback type (cpu/unicorn/io.py)."""
        from unicorn.unicorn_py3.arch import intel

        binding: Any = self.uc

        @intel.uccallback(binding, intel.HOOK_INSN_CPUID_CFUNC)
        def rdtsc(_uc: object, _key: int) -> int:
            self._write_tsc(aux=False)
            return 1

        @intel.uccallback(binding, intel.HOOK_INSN_CPUID_CFUNC)
        def rdtscp(_uc: object, _key: int) -> int:
            self._write_tsc(aux=True)
            return 1

        self._tsc_hooks = (rdtsc, rdtscp)  # the binding keeps only the pointers
        add = binding._Uc__do_hook_add
        add(UC_HOOK_INSN, rdtsc, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
        add(UC_HOOK_INSN, rdtscp, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSCP))

    def virtual_tsc(self) -> int:
        """The TSC now: the virtual clock after charging the instructions run so far."""
        return self.virtual_now_ns() * VIRTUAL_TSC_HZ // 1_000_000_000

    def virtual_now_ns(self) -> int:
        """The virtual clock after charging the instructions run so far. In the kernel (phase linux) the clock's
        sync books them all at one rate (td_phases: instructions_ns(total) - instructions_ns(booked)), so the
        clock it would reach is computed without booking: a udelay's RDTSC loop is a hook per iteration."""
        clock = self.clock
        booked = clock.instructions
        if not self.in_kernel or clock.counter is None or booked is None or clock.current != LINUX:
            clock.sync(self._rip())
            return self.tdx.clocks_ns[self.vcpu]
        ns = self.tdx.profile.instructions_ns
        return self.tdx.clocks_ns[self.vcpu] + ns(clock.counter.instructions) - ns(booked)

    def _write_tsc(self, aux: bool) -> None:
        # RDTSCP: Linux's rdtsc_ordered() is RDTSCP where the CPU has it, so every udelay iteration reads TSC_AUX.
        self._reg.write_tsc(self.virtual_tsc(), self._reg.msr(MSR_TSC_AUX) if aux else None)

    def _on_syscall(self, uc: Uc, _user: object) -> None:
        """unicorn steps over SYSCALL after its hooks (helper_syscall): the entry is made once the slice ends,
        with RIP past the instruction (td_state.syscall)."""
        if self._io_rollback is None:
            self._pending_syscall = True
            self.progress.syscalls = getattr(self.progress, "syscalls", 0) + 1
        uc.emu_stop()

    def _on_in(self, uc: Uc, port: int, size: int, _user: object) -> int:
        self._io_first_time(True, size)
        return (1 << (8 * size)) - 1  # rolled back before anyone sees it

    def _on_out(self, uc: Uc, port: int, size: int, value: int, _user: object) -> None:
        self._io_first_time(False, size)

    def _io_first_time(self, is_in: bool, size: int) -> None:
        """An IN/OUT with no code hook yet (its first execution): keep the context and stop; the end of the slice
        rolls back to the instruction and raises the #VE. RIP here is the block's last synced PC (td_kernel.py):
        the instruction is the first IN/OUT of that direction and size decoded from it."""
        if self._io_rollback is not None or self._pending_ve is not None or not self.in_kernel:
            return  # the rest of a block being rolled back, or one that delivers a #VE already
        synced = self._rip()

        def wanted(address: int, code: bytes) -> IoSite | None:
            site = decode_io(address, code)
            return site if site is not None and site.is_in == is_in and site.size == size else None

        site = instruction_at(self._code_at(synced, MAX_BLOCK) or self._code_at(synced, 0x1000 - (synced & 0xFFF)),
                              synced, wanted)
        if site is None:
            what = "IN" if is_in else "OUT"
            self._request_stop(StopReason(StopKind.ERROR, f"{what} of {size} bytes not found after {synced:#x}"))
            return
        self._io_rollback = (self.uc.context_save(), site)
        self.uc.emu_stop()

    def _on_io_site(self, uc: Uc, address: int, _size: int, _user: object) -> None:
        """The code hook before a known IN/OUT or CPUID: the TDX module's #VE, raised before the instruction runs."""
        assert self.io_sites is not None
        site = self.io_sites.sites.get(address)
        if site is None or self._io_rollback is not None or self._pending_ve is not None:
            return
        info = self.io_sites.ve_info(site)
        if info is None:
            return  # a CPUID leaf the TDX module answers itself: the CPUID hook does
        # Delivered here, before the instruction: a RIP written in a code hook makes unicorn leave the block and go
        # on at the handler in the same emu_start (a slice per #VE was most of a kernel boot's time). The lazy
        # arithmetic flags pushed may be stale, as at the TDCALLs answered inline: at an I/O or CPUID the
        # compiler keeps no flags live (inline asm clobbers them on x86).
        stop = self._raise_ve(info, address)
        if stop is not None:
            self._request_stop(stop)

    def _on_msr_site(self, uc: Uc, address: int, _size: int, write: bool) -> None:
        """Before a RDMSR/WRMSR of the kernel: native where the TDX module lets it be, else stop and raise."""
        if self._io_rollback is not None or self._pending_ve is not None or self._pending_msr is not None:
            return
        if self._code_at(address, 2) != (WRMSR if write else RDMSR):
            return  # the bytes matched inside another instruction, or the kernel patched the site since
        index = self._reg.read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        action = msr_action(index, write)
        self.msr_events[f"{'wrmsr' if write else 'rdmsr'} {index:#x} {action}"] += 1
        if action in (MsrAction.NATIVE, MsrAction.MODULE):
            return  # the CPU's (unicorn's) own MSR; MODULE: the module's virtualised value, not modelled
        stop = self._msr_exit(address, write, index, action)  # inline, as an I/O #VE (_on_io_site)
        if stop is not None:
            self._request_stop(stop)

    def _on_random_site(self, uc: Uc, address: int, _size: int, _user: object) -> None:
        """Before a RDRAND/RDSEED of the kernel: its value from the run's generator, CF set (SDM vol. 2B: a valid
        value; OF, SF, ZF, AF, PF cleared), RIP past it."""
        if self._io_rollback is not None or self._pending_ve is not None or self._pending_msr is not None:
            return
        site = decode_random(self._code_at(address, 5))
        if site is None:
            return  # the bytes matched inside another instruction, or the kernel patched the site since
        reg = _GPR[site.register]
        value = self.entropy.next() & ((1 << 8 * site.size) - 1)
        if site.size == 2:
            value |= self._reg.read(reg) & ~0xFFFF  # a 16-bit destination keeps the rest (a 32-bit one does not)
        self.random_reads += 1
        flags = self._reg.read(X.UC_X86_REG_EFLAGS) & ~0x8D5  # OF SF ZF AF PF CF
        self._reg.write(reg, value)
        self._reg.write(X.UC_X86_REG_EFLAGS, flags | 1)
        self._reg.write(X.UC_X86_REG_RIP, address + site.length)  # unicorn goes on there, as after a #VE delivery

    def _msr_after_slice(self) -> StopReason | None:
        assert self._pending_msr is not None
        rip, write, index, action = self._pending_msr
        self._pending_msr = None
        return self._msr_exit(rip, write, index, action)

    def _msr_exit(self, rip: int, write: bool, index: int, action: MsrAction) -> StopReason | None:
        """What the TDX module does at a RDMSR/WRMSR it does not let run natively, before the instruction."""
        if action == MsrAction.GP:
            self.progress.exceptions["#GP (MSR)"] += 1
            return self._deliver(13, rip, 0)
        if action == MsrAction.VE:
            reason = EXIT_REASON_MSR_WRITE if write else EXIT_REASON_MSR_READ
            return self._raise_ve(VeInfo(reason, instruction_length=MSR_INSTRUCTION_LENGTH), rip)
        # The virtual APIC page: the CPU answers without an exit; here the platform's x2APIC is that page.
        if self.platform is None:
            return StopReason(StopKind.ERROR, f"x2APIC MSR {index:#x} with no platform", rip)
        if write:
            rax, rdx = self.uc.reg_read(X.UC_X86_REG_RAX), self.uc.reg_read(X.UC_X86_REG_RDX)
            ok = self.platform.wrmsr(self.vcpu, index, (rdx & 0xFFFFFFFF) << 32 | (rax & 0xFFFFFFFF))
        else:
            value = self.platform.rdmsr(self.vcpu, index)
            ok = value is not None
            if value is not None:
                self.uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
                self.uc.reg_write(X.UC_X86_REG_RDX, value >> 32 & 0xFFFFFFFF)
        if not ok:
            return self._deliver(13, rip, 0)
        self.uc.reg_write(X.UC_X86_REG_RIP, rip + MSR_INSTRUCTION_LENGTH)
        self._safe_point()  # an EOI may let the next interrupt in
        return self._stop

    def _roll_back_io(self) -> StopReason | None:
        assert self._io_rollback is not None and self.io_sites is not None
        context, site = self._io_rollback
        self._io_rollback = None
        self._page_fault, self._exception, self._stop = None, None, None
        self.uc.context_restore(context)
        self.uc.reg_write(X.UC_X86_REG_RIP, site.address)
        self.io_sites.discovered += 1
        self.io_sites.add(site)
        info = self.io_sites.ve_info(site)
        assert info is not None  # the first execution raised it
        return self._raise_ve(info, site.address)

    def _exact_mmio(self, info: VeInfo) -> VeInfo:
        """The MMIO #VE with the access's own linear and physical address (the TLB fill saw only the page): from
        the instruction's memory operand, as the TDX module reports the faulting GPA."""
        rip = self._rip()
        regs = {"fs_base": X.UC_X86_REG_FS_BASE, "gs_base": X.UC_X86_REG_GS_BASE}

        def reg(name: str) -> int:
            return int(self.uc.reg_read(regs.get(name) or getattr(X, f"UC_X86_REG_{name.upper()}")))

        address = mmio_operand_address(self._code_at(rip, 15), rip, reg)
        if address is None or address >> 12 != info.gla >> 12:
            return info
        offset = address & 0xFFF
        return dataclasses.replace(info, gla=address, gpa=(info.gpa & ~0xFFF) | offset)

    def _raise_ve(self, info: VeInfo, rip: int) -> StopReason | None:
        """A #VE at `rip` (a fault: the frame returns to the instruction; the handler skips it by the length)."""
        self.progress.ve[f"exit {info.exit_reason}"] += 1
        vector = self.dispatcher.inject_ve(self.vcpu, info)
        return self._deliver(vector, rip, 0 if vector in VECTORS_WITH_ERROR_CODE else None)

    def _deliver(self, vector: int, return_rip: int, error_code: int | None) -> StopReason | None:
        self.trail.record(vector, return_rip)
        try:
            deliver(self.uc, vector, return_rip, error_code, self._kernel_memory if self.in_kernel else None)
        except (GuestFault, UcError) as exc:
            return StopReason(
                StopKind.EXCEPTION, f"vector {vector} at {return_rip:#x} not deliverable: {exc}", return_rip
            )
        return None

    def _interrupt_pending(self) -> bool:
        if self.platform is None or not self._reg.read(X.UC_X86_REG_EFLAGS) & RFLAGS_IF:
            return False
        return self.platform.pending_interrupt(self.vcpu) is not None

    def _inject_interrupt(self, return_rip: int) -> StopReason | None:
        """INTA on the vCPU's x2APIC (IRR to ISR; the guest's EOI write clears it) and delivery through the IDT."""
        assert self.platform is not None
        vector = self.platform.apics[self.vcpu].acknowledge()
        if vector is None:
            return None
        self.progress.interrupts += 1
        return self._deliver(vector, return_rip, None)

    def _idle(self) -> None:
        """TDVMCALL<HLT> with nothing pending: another vCPU that can run does; else virtual time jumps to the next
        timer deadline (no vCPU can wake this one otherwise)."""
        if self.platform is None or self.platform.pending_interrupt(self.vcpu) is not None:
            return
        if self.machine.idle(self.vcpu):
            self.request_yield()
            return
        deadline = self.platform.next_deadline() if self.td.config.vcpus == 1 else self.platform.next_deadline(
            self.vcpu)
        now = self.tdx.clocks_ns[self.vcpu]
        if deadline is not None and deadline > now:
            self.tdx.charge(self.vcpu, deadline - now)

    def _on_pause(self, _uc: Uc, address: int, _size: int, _user: object) -> None:
        # The stop leaves RIP on the PAUSE: back on this vCPU, it goes once round its loop before it yields again.
        if address == self._paused_at:
            self._paused_at = None
        elif self._io_rollback is None and self.machine.yield_at_pause(self.vcpu):
            self._paused_at = address
            self.request_yield()

    def _safe_point(self, in_hook: bool = False) -> None:
        """Inject the platform's pending interrupt where the guest allows it (RFLAGS.IF); in the kernel, with IF
        clear, open the interrupt window instead (from inside a hook: once this slice has stopped, since dropping
        translations must not happen under the running one)."""
        if self._interrupt_pending():
            stop = self._inject_interrupt(self._rip())
            if stop is not None:
                self._request_stop(stop)
        elif self.in_kernel and self.platform is not None and self.platform.pending_interrupt(self.vcpu) is not None:
            if self._irq_window is not None:
                return
            if in_hook:
                self._irq_window_action = self._irq_window_action or "open"
                self.uc.emu_stop()
            else:
                self._open_irq_window()

    # An interrupt that became pending while RFLAGS.IF was clear (typically at the TDVMCALL<HLT> of tdx_safe_halt,
    # whose caller enables interrupts only after it returns) is taken as the CPU takes it: once the guest sets IF,
    # after the instruction that set it (SDM vol. 3A, 6.8.3: STI's interrupt shadow). Until then a code hook over
    # all code watches RFLAGS; it exists only while an interrupt waits, and translations are dropped both ways.
    def _open_irq_window(self) -> None:
        if self._irq_window is not None:
            return
        binding: Any = self.uc
        self._irq_window = binding._Uc__do_hook_add(UC_HOOK_CODE, self._irq_window_hook, 1, 0)
        self._irq_window_seen = False
        binding.ctl_flush_tb()

    def _close_irq_window(self) -> None:
        if self._irq_window is None:
            return
        self.uc.hook_del(self._irq_window)
        self._irq_window = None
        binding: Any = self.uc
        binding.ctl_flush_tb()

    def _raw_irq_window(self, _handle: int, _address: int, _size: int, _key: int) -> None:
        try:
            self._on_irq_window()
        except BaseException as exc:  # as the binding's own callbacks: emulation stops, emu_start raises it
            binding: Any = self.uc
            if binding._hook_exception is None:
                binding._hook_exception = exc
            self.uc.emu_stop()

    def _on_irq_window(self) -> None:
        if self._irq_window_action is not None or self._io_rollback is not None or self._irq_window is None:
            return
        if not self._reg.read(X.UC_X86_REG_EFLAGS) & RFLAGS_IF:
            self._irq_window_seen = False
            return
        if not self._irq_window_seen:
            self._irq_window_seen = True  # the instruction after the one that set IF runs first
            return
        self._irq_window_action = "inject" if self._interrupt_pending() else "close"
        self.uc.emu_stop()

    def _request_stop(self, reason: StopReason) -> None:
        if self._stop is None:
            self._stop = reason
        self.uc.emu_stop()

    # ----------------------------------------------------------------- TDCALL
    def _on_invalid(self, uc: Uc, _user: object) -> bool:
        if self._io_rollback is not None:
            uc.emu_stop()  # the rest of a block being rolled back: nothing of it reaches the TDX module
            return False
        rip = self._rip()
        if self.in_kernel:
            code = self._code_at(rip, 4)  # the kernel's text is not identity-mapped: through its page tables
        else:
            try:
                code = bytes(uc.mem_read(rip, 4))  # the firmware runs identity-mapped
            except UcError:
                code = b""
        if code != TDCALL_BYTES:
            # #UD through the guest's IDT, in the next slice (an exception needs old_exception reset first).
            self._exception = (6, rip)
            self.progress.exceptions["#UD"] += 1
            uc.emu_stop()
            return False
        if rip == self._paused_at:
            self._paused_at = None  # back on the TDCALL it yielded at: issued now (an AP in the kernel never waits)
        elif self.machine.yield_at_tdcall(self.vcpu):
            # Before the TDX module sees it: RIP stays on the TDCALL, issued when this vCPU runs again.
            if self.in_kernel:
                self._paused_at = rip
            self.request_yield()
            return False
        try:
            self._tdcall(rip)
        except Exception as exc:  # a model bug must end the run with a report, not vanish inside unicorn
            self._request_stop(StopReason(StopKind.ERROR, f"TDCALL model raised {type(exc).__name__}: {exc}", rip))
        if self._stop is not None:
            uc.emu_stop()
            return False
        return True

    def _tdcall(self, rip: int) -> None:
        regs = self._gprs.read()
        leaf = regs["rax"] & 0xFFFF  # bits 23:16 carry the leaf version
        if self.until is not None:
            reason = self.until(leaf, regs)
            if reason:
                # Before the TDX module sees it: RIP stays on the TDCALL, so a later run() issues it.
                self._request_stop(StopReason(StopKind.REQUESTED, reason, rip))
                return
        self.progress.tdcalls[leaf_name(leaf)] += 1
        hit = self.clock.sync(rip)  # the accept's actor: the module issuing the TDCALL
        try:
            actor = (hit.name if hit else self.actor) + self.actor_suffix
            out = self.dispatcher.dispatch(self.vcpu, regs, rip=rip, actor=actor)
        except TdTerminated as exc:
            self._request_stop(StopReason(StopKind.TERMINATED, str(exc), rip))
            return
        except VmmMissing as exc:
            self._request_stop(StopReason(StopKind.ERROR, str(exc), rip))
            return
        self._gprs.write(out)
        self._reg.write(X.UC_X86_REG_RIP, rip + len(TDCALL_BYTES))
        if self.in_kernel and leaf == TdcallLeaf.VP_VMCALL and self.until is not None:
            # What the VMM just did may end the VM (QEMU stops at once on an ACPI S5 request): ask again after it.
            reason = self.until(leaf, regs)
            if reason:
                self._request_stop(StopReason(StopKind.REQUESTED, reason, rip + len(TDCALL_BYTES)))
                return
        if leaf == TdcallLeaf.VP_VMCALL and regs["r10"] == 0 and regs["r11"] == EXIT_REASON_HLT:
            self._idle()
        if leaf == TdcallLeaf.VP_VMCALL and regs["r10"] == 0 and regs["r11"] == Sub.MAP_GPA:
            if out.get("r10", 0) in (TdvmcallStatus.SUCCESS, TdvmcallStatus.RETRY):
                self._follow_map_gpa(regs["r12"], regs["r13"])
        if leaf == TdcallLeaf.MEM_PAGE_ACCEPT and out.get("rax", 0) == TdxStatus.SUCCESS:
            gpa = regs["rcx"] & ~0xFFF & ((1 << 52) - 1)
            self.mapping.sync(gpa, gpa + PageLevel(regs["rcx"] & 7).size)
            if self.in_kernel:
                # With how much the console held then: the report places each accept after the kernel's last line.
                console = len(self.platform.uart.output) if self.platform is not None else 0
                self.kernel_accepts.append((gpa, PageLevel(regs["rcx"] & 7).size, console))
                if self.on_kernel_accept is not None:
                    self.on_kernel_accept(self, gpa, PageLevel(regs["rcx"] & 7).size)
        self._safe_point(in_hook=True)

    def _follow_map_gpa(self, gpa: int, size: int) -> None:
        """The VMM removed what went shared (td_memory keeps unicorn's private view equal to the accepted pages)
        and the shared aliases follow its record."""
        assert self.platform is not None
        start = gpa & ~self.shared_bit
        self.mapping.sync(start, start + size)
        self.mapping.sync_shared(self.platform.shared_ranges(), start, start + size)

    # ----------------------------------------------------------------- paging
    def _raw_tlb_fill(self, _handle: int, va: int, access: int, entry: int, _key: int) -> bool:
        try:
            return self._on_tlb_fill(va, access, entry)
        except BaseException as exc:  # as the binding's own callbacks: emulation stops, emu_start raises it
            binding: Any = self.uc
            if binding._hook_exception is None:
                binding._hook_exception = exc
            self.uc.emu_stop()
            return False

    def _on_tlb_fill(self, va: int, access: int, entry: int) -> bool:
        """Answer unicorn's TLB miss at `va`: write the uc_tlb_entry at address `entry`, or refuse (False)."""
        if self._io_rollback is not None:
            # The rest of a block being rolled back (td_kernel.py): it reaches no memory it had not reached, and
            # no access of it may have a verdict (a termination) of its own.
            self.uc.emu_stop()
            return False
        try:
            paddr, perms = self.walker.translate(va, access)
            if self.stop_in_kernel and access == UC_MEM_FETCH and va >= KERNEL_TEXT_MAPPING:
                self._request_stop(StopReason(StopKind.KERNEL, f"the kernel runs at {va:#x} (its text mapping)", va))
            if not self.mapping.is_mapped(paddr):
                kind = {UC_MEM_WRITE: "write", UC_MEM_FETCH: "execute"}.get(access, "read")
                if self.in_kernel and paddr & self.shared_bit and access != UC_MEM_FETCH:
                    # MMIO by instruction: the EPT violation on a shared GPA is a #VE (td_kernel.mmio_ve), raised
                    # at the instruction once unicorn has unwound it (the end of this slice).
                    self._pending_mmio = mmio_ve(va, paddr | (va & 0xFFF), access == UC_MEM_WRITE)
                    self.uc.emu_stop()
                    return False
                self._unreachable(paddr, 1, kind)
                return False
            page = paddr >> 12
            self.mapping.handed.add(page)  # in unicorn's TLB until a flush (td_memory: AcceptedMapping)
            if access == UC_MEM_FETCH:
                self.mapping.code_pages.add(page)
            elif page not in self.mapping.code_pages:
                # A data access to a page never executed caches no execute right: unicorn 2.1.4 keeps an
                # executable entry's writes on its slow path for good (cputlb.c notdirty_write never cleans it),
                # and such an entry misses the victim TLB on every write: a copy between two buffers 1 MiB apart
                # (its 256-entry TLB) then walked once per store. A fetch from the page fills again and gets
                # execute. A page once executed keeps it: only that slow path sees a write to translated code
                # (without it OVMF 2026.08 ran a stale translation of a page DXE had reloaded and read garbage).
                perms &= ~UC_PROT_EXEC
            out = _TlbEntry.from_address(entry)
            out.paddr, out.perms = paddr, perms
            return True
        except PageFault as fault:
            self._page_fault = self._page_fault or fault  # the first: unicorn's stop may fault again after it
        except TdTerminated as exc:
            self._stop = self._stop or StopReason(StopKind.TERMINATED, str(exc), self._rip())
        except UnsupportedPaging as exc:
            self._stop = self._stop or StopReason(StopKind.ERROR, str(exc), self._rip())
        except Exception as exc:  # a walker bug must end the run with a report, not vanish inside unicorn
            self._stop = self._stop or StopReason(
                StopKind.ERROR, f"page walk raised {type(exc).__name__}: {exc}", self._rip()
            )
        return False  # unicorn stops with UC_ERR_EXCEPTION; _after_slice delivers a #PF

    def _unreachable(self, gpa: int, size: int, kind: str) -> None:
        """An access to memory the guest may not reach stops the run: pending or removed private memory (the TDX
        module terminates the TD, as KVM does on the EPT violation) or a shared GPA with no memory (MMIO by
        instruction: a #VE in a TD, not modelled; OVMF reaches MMIO through TDVMCALL<#VE.RequestMMIO> itself)."""
        rip = self._rip()
        if gpa & self.shared_bit:
            self._request_stop(
                StopReason(
                    StopKind.ERROR, f"{kind} of shared GPA {gpa:#x}: MMIO by instruction (#VE, not modelled)", rip
                )
            )
            return
        try:
            self.tdx.check_access(gpa, max(size, 1), kind, actor=self.actor, vcpu=self.vcpu, rip=rip)
        except TdTerminated as exc:
            self._request_stop(StopReason(StopKind.TERMINATED, str(exc), rip))
            return
        # Accepted but not reachable: a bug of ours, never a guest behaviour.
        self._request_stop(StopReason(StopKind.ERROR, f"accepted GPA {gpa:#x} is not in the private view", rip))

    def _check_table(self, gpa: int, size: int) -> None:
        """A page-table read of the walk: private tables must be accepted (else the TD terminates)."""
        if self.mapping.is_mapped(gpa):
            return
        if gpa & self.shared_bit:
            raise UnsupportedPaging(f"page table at shared GPA {gpa:#x} with no shared memory behind it")
        self.tdx.check_access(gpa, size, "read", actor=self.actor, vcpu=self.vcpu, rip=self._rip())
        raise UnsupportedPaging(f"accepted page-table GPA {gpa:#x} is not mapped in unicorn")

    # ----------------------------------------------------------------- CPUID
    def _on_cpuid(self, uc: Uc, _user: object) -> int:
        leaf = self._reg.read(X.UC_X86_REG_RAX) & 0xFFFFFFFF
        if self.in_kernel and CpuidSite.ve_info(leaf) is not None:
            # First time at this CPUID (later, its code hook stops before it): roll back to it, then #VE.
            if self._io_rollback is None and self._pending_ve is None:
                self._io_rollback = (self.uc.context_save(), CpuidSite(self._rip()))
                uc.emu_stop()
            return 1
        subleaf = self._reg.read(X.UC_X86_REG_RCX) & 0xFFFFFFFF
        eax, ebx, ecx, edx = self.cpuid(leaf, subleaf)
        for reg, value in ((X.UC_X86_REG_RAX, eax), (X.UC_X86_REG_RBX, ebx), (X.UC_X86_REG_RCX, ecx)):
            self._reg.write(reg, value)
        self._reg.write(X.UC_X86_REG_RDX, edx)
        return 1  # the hook answered; never move RIP here (the block goes on linearly)

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """The TD's CPUID: an Intel CPU behind a hypervisor with the TDX leaf, otherwise unicorn's model."""
        if leaf == 0:
            eax = max(self._native_cpuid(0, 0)[0], 0x21)
            return eax, GENUINE_INTEL[0], GENUINE_INTEL[1], GENUINE_INTEL[2]
        if leaf == 0x21:
            return TDX_CPUID_21 if subleaf == 0 else (0, 0, 0, 0)
        if leaf == 0x15:
            return 1, VIRTUAL_TSC_HZ // TSC_CRYSTAL_HZ, TSC_CRYSTAL_HZ, 0
        if leaf in TOPOLOGY_LEAVES and self.td.config.vcpus > 1:  # unicorn's model is one CPU of APIC ID 0
            return topology(subleaf, self.vcpu, self.td.config.vcpus)
        eax, ebx, ecx, edx = self._native_cpuid(leaf, subleaf)
        if leaf == 1:
            # The TDX module forces the virtual x2APIC on and reports the vCPU's APIC ID.
            ecx |= CPUID1_ECX_HYPERVISOR | CPUID1_ECX_X2APIC
            ebx = (ebx & 0x00FFFFFF) | (self.vcpu << 24)
        elif leaf == 7 and subleaf == 0:
            ecx &= ~CPUID7_ECX_LA57  # 4-level paging: virt_to_phys and the reset vector's tables agree
        elif leaf == 0x80000008:
            # Physical address bits = GPAW: firmware sizes its page tables and the shared bit from it.
            eax = (eax & ~0xFF) | self.tdx.gpa_width
        elif 0x40000000 <= leaf < 0x40010000:
            eax = ebx = ecx = edx = 0  # no hypervisor leaves: KVM's paravirtual features are not a TD's
        return eax, ebx, ecx, edx

    def _native_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """unicorn's own CPUID, run on a scratch CPU once per leaf (the hook cannot both ask it and edit it)."""
        key = (leaf, subleaf)
        if key not in self._cpuid_cache:
            if self._cpuid_cpu is None:
                self._cpuid_cpu = Uc(UC_ARCH_X86, UC_MODE_64)
                self._cpuid_cpu.mem_map(0x1000, 0x1000, UC_PROT_ALL)
                self._cpuid_cpu.mem_write(0x1000, b"\x0f\xa2")
            cpu = self._cpuid_cpu
            cpu.reg_write(X.UC_X86_REG_RAX, leaf)
            cpu.reg_write(X.UC_X86_REG_RCX, subleaf)
            cpu.emu_start(0x1000, 0x1002)
            regs = (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX)
            self._cpuid_cache[key] = (
                cpu.reg_read(regs[0]) & 0xFFFFFFFF,
                cpu.reg_read(regs[1]) & 0xFFFFFFFF,
                cpu.reg_read(regs[2]) & 0xFFFFFFFF,
                cpu.reg_read(regs[3]) & 0xFFFFFFFF,
            )
        return self._cpuid_cache[key]

    # ----------------------------------------------------------------- exceptions and memory
    def _on_interrupt(self, uc: Uc, intno: int, _user: object) -> None:
        if self._io_rollback is not None:
            uc.emu_stop()
            return
        rip = self._rip()
        code = self._code_at(rip, 2)
        if intno == 3 and code[:1] == b"\xcc":
            rip += 1  # INT3 is a trap: the frame returns past it
        elif code[:1] == b"\xcd" and code[1:2] == bytes([intno]):
            rip += 2  # INT n
        self.progress.exceptions[f"vector {intno}"] += 1
        self._exception = (intno, rip)
        uc.emu_stop()

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int, _user: object) -> bool:
        """Beyond the TD's memory (both views cover all of it): the same verdicts as a TLB fill's."""
        if self._stop is None:
            kind = {UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_FETCH_UNMAPPED: "execute"}.get(access, "read")
            self._unreachable(address, size, kind)
        return False

    # ----------------------------------------------------------------- inspection
    def _rip(self) -> int:
        return self._reg.read(X.UC_X86_REG_RIP)

    def _code_at(self, va: int, size: int) -> bytes:
        try:
            if self.in_kernel:
                return self._kernel_memory.read(va, size)
            return read_virt(self.uc, va, size)
        except (GuestFault, UcError):
            return b""

    def _byte_before(self, rip: int) -> int | None:
        code = self._code_at(rip - 1, 1)
        return code[0] if code else None

    def _read_code(self, va: int, size: int) -> bytes | None:
        code = self._code_at(va, size)
        return code if len(code) == size else None

    def module_at(self, address: int) -> str | None:
        """The firmware image (PE32/PE32+ or TE) `address` lies in, by its firmware file's name."""
        hit = self.locator.locate(self._read_code, address)
        return hit.name if hit is not None else None


class _TranslatedMemory:
    """Guest-virtual access through the vCPU's own page walker (its remembered walks, td_paging) and the host RAM
    view: the kernel's #VE deliveries and code reads, one walk per page instead of unicorn reads per level."""

    def __init__(self, vcpu: TdVcpu):
        self.vcpu = vcpu

    def _gpa(self, va: int, access: int) -> int:
        try:
            # Implicit supervisor-mode accesses (SDM vol. 3A, 4.6.1): the IDT read and the frame's pushes of a
            # delivery, whatever the CPL and RFLAGS.AC; the report's code reads go the same way.
            gpa, _perms = self.vcpu.walker.translate(va & ~0xFFF, access, implicit=True)
        except (PageFault, UnsupportedPaging) as exc:
            raise GuestFault(str(exc)) from exc
        if gpa & self.vcpu.shared_bit or not self.vcpu.mapping.is_mapped(gpa):
            raise GuestFault(f"{va:#x} is at GPA {gpa:#x}, not accepted private memory")
        return gpa

    def read(self, va: int, size: int) -> bytes:
        out = bytearray()
        view = self.vcpu.ram.view
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            gpa = self._gpa(va, UC_MEM_READ) | (va & 0xFFF)
            out += view[gpa : gpa + n]
            va, size = va + n, size - n
        return bytes(out)

    def write(self, va: int, data: bytes) -> None:
        view, pos = self.vcpu.ram.view, 0
        while pos < len(data):
            n = min(len(data) - pos, 0x1000 - ((va + pos) & 0xFFF))
            gpa = self._gpa(va + pos, UC_MEM_WRITE) | ((va + pos) & 0xFFF)
            view[gpa : gpa + n] = data[pos : pos + n]
            pos += n


def _firmware_modules(td: Td) -> tuple[dict[bytes, FvModule], str | None]:
    """The images of the TD's firmware by fingerprint (firmware/pi/fv.py), or none with the reason."""
    path = td.config.firmware_path
    if not path:
        return {}, "modules unnamed: the TD has no firmware file"
    try:
        return module_index_of(path), None
    except (InputError, OSError) as exc:
        return {}, f"modules unnamed: {path}: {exc}"
