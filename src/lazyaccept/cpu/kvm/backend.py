"""The KVM CPU backend: the same EFI binaries on /dev/kvm at native speed, firmware services still in Python.

Behind the CpuBackend seam exactly like the unicorn backend; what differs is how each duty is done:
- Guest code runs at CPL3 in 64-bit mode set directly with KVM_SET_SREGS. On kvm-pvm (KVM without hardware
  virtualization) CPL0 is emulated instruction by instruction and CPL3 runs natively; on hardware KVM CPL3
  costs nothing, so one mode serves both. `enter_supervisor` moves a run to CPL0 for a short stretch.
- Service thunks are `out 0xF0, al; ret; int3`: `out imm8` changes no register, so the arguments are intact at
  KVM_EXIT_IO, the thunk is the one at RIP-2, and the `ret` returns to the caller after Python answers. The
  TSS I/O bitmap lets the guest use only the backend's two ports; any other port I/O faults and is emulated.
- Exceptions go through an IDT of same-privilege gates with their own stack (IST1, so a fault on an unmapped
  stack still delivers) to stubs `push vector; out 0xF1, al`. Python reads the frame, puts the guest back
  where it faulted, and handles it: #PF on a non-present page is CpuClient.on_unmapped, an instruction fetch
  from an NX page is on_block_outside (the jump into the kernel), #UD on TDCALL is on_tdcall, and #GP on a
  privileged instruction is emulated as unicorn executes it (CPUID, where KVM can fault it, is on_cpuid).
- Guest RAM is host memory reserved with MAP_NORESERVE in 1 GiB KVM memory slots made on first use
  (guest_ram.py). Slots cannot track 4K pages, so access control is the guest's own page tables (paging.py),
  kept by this backend outside the TD's address space: a page is present only while EmulatedBacking has mapped
  it (only accepted memory), and executable only inside the registered code ranges.
- Page-table entries change in place only from not-present to present or from NX to executable, which KVM
  picks up on the resulting fault (it re-walks guest tables then). Any other change (unmap, revoke execute,
  split a 2 MiB page) copies the tables on the path to the root and loads the new root, because a shadow MMU
  (kvm-pvm) never sees a host-side write to a table it has already shadowed.
- A time budget is SIGALRM interrupting KVM_RUN (EINTR); an exit budget bounds runaway exit loops.
- XMM/x87 state goes through KVM_GET/SET_XSAVE (KVM_GET_XSAVE2 where offered) or KVM_GET/SET_FPU, whichever a
  self-test at start proves reaches the guest (KVM_SET_FPU does not on every KVM: it leaves XSTATE_BV alone).
- On kvm-pvm a virtual TSC needs the host thread's TSC disabled during KVM_RUN; that is done only inside a
  machine-code trampoline with signals blocked (ioctl.tsc_guarded_run), never from Python, where any RDTSC of the
  host process (vDSO clock, profiler, signal handler) would then kill it.

Where it cannot do what unicorn does, FIDELITY_LIMITS says so.
"""

from __future__ import annotations

import ctypes
import signal
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lazyaccept.cpu.backend import CpuBackend, CpuClient
from lazyaccept.cpu.kvm.decoder import Insn, decode
from lazyaccept.cpu.kvm.guest_ram import GuestRam
from lazyaccept.cpu.kvm.ioctl import (
    EXIT_NAMES,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    CpuidEntry,
    HostMemory,
    Kvm,
    KvmError,
    Vcpu,
    Vm,
    kvm_dtable,
    kvm_regs,
    kvm_segment,
    kvm_sregs,
    thread_signal_mask,
    tsc_guarded_run,
)
from lazyaccept.cpu.kvm.paging import ACCESSED, CONTROL_SIZE, DIRTY, LEAF, NX, PAGE, PAGE_2M, RW, US, P, PageTables
from lazyaccept.cpu.kvm.xmm import XmmState, xmm_state_candidates
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import StopKind, StopReason

U64 = (1 << 64) - 1

# The control region: GDT, TSS, IDT, exception stubs, exception stack and every page-table page. It lives in
# its own memory slot at the top of the guest-physical space (outside any TD's RAM) and is mapped only in the
# upper half of the address space, supervisor-only except the stubs and the stack, so guest code never sees it.
CONTROL_VA = 0xFFFF_FF80_0000_0000
GDT_OFF = 0x0
IDT_OFF, SUPERVISOR_IDT_OFF = 0x1000, 0x2000  # gates to the CPL3 code segment, and to the CPL0 one
STUBS_OFF, SELFTEST_OFF, SYSCALL_OFF = 0x3000, 0x3800, 0x3A00
IST_OFF, IST_TOP_OFF = 0x4000, 0x6000
TSS_OFF, TSS_PAGES = 0x7000, 3
STUB_SIZE = 8
KERNEL_CS, KERNEL_DS, USER_CS, USER_DS, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
TSS_IOMAP = 104  # the I/O permission bitmap follows the 64-bit TSS: all clear, so port I/O exits to KVM directly
TSS_LIMIT = TSS_IOMAP + 8192  # the byte after the bitmap must be 0xFF and inside the limit

PORT_SERVICE, PORT_EXCEPTION, PORT_SYSCALL = 0xF0, 0xF1, 0xF2
THUNK_CODE = bytes([0xE6, PORT_SERVICE, 0xC3, 0xCC])  # out 0xF0, al; ret; int3
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
VECTOR_NAMES = {0: "#DE", 3: "#BP (int3)", 6: "#UD", 13: "#GP", 14: "#PF"}  # as the unicorn backend names them

CR0 = 0x8005_0033  # PG | AM | WP | NE | ET | MP | PE
CR4 = (1 << 5) | (1 << 9) | (1 << 10)  # PAE | OSFXSR | OSXMMEXCPT (SSE as under real firmware)
EFER = 0xD00  # NXE | LMA | LME; no SCE, so SYSCALL is #UD instead of a jump to CPL0
CR4_TSD = 1 << 2  # RDTSC faults at CPL > 0
RFLAGS_RESERVED, RFLAGS_IF, RFLAGS_RF = 0x2, 0x200, 0x10000
FCW_INIT, MXCSR_INIT = 0x37F, 0x1F80
MSR_EFER, MSR_PLATFORM_INFO, MSR_MISC_FEATURES_ENABLES = 0xC000_0080, 0xCE, 0x140
MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK = 0xC000_0081, 0xC000_0082, 0xC000_0084
PLATFORM_INFO_CPUID_FAULTING, CPUID_FAULTING = 1 << 31, 1

TDCALL = b"\x66\x0f\x01\xcc"
RDTSC = b"\x0f\x31"
# The XMM self-test: movq rcx, xmm7; mov rdx, XMM_PROBE_OUT; movq xmm6, rdx; and to clean up after any outcome,
# pxor xmm6, xmm6; pxor xmm7, xmm7.
XMM_PROBE_IN, XMM_PROBE_OUT = (0xA5 << 120) | 0x0123_4567_89AB_CDEF, 0x5A5A_0F0F_3C3C_9669
XMM_PROBE_CODE = b"\x66\x48\x0f\x7e\xf9" + b"\x48\xba" + XMM_PROBE_OUT.to_bytes(8, "little") + b"\x66\x48\x0f\x6e\xf2"
XMM_CLEAR_CODE = b"\x66\x0f\xef\xf6" + b"\x66\x0f\xef\xff"
TDX_CPUID_LEAF = 0x21
CPUID7_ECX_LA57 = 1 << 16
KVM_INTERNAL_ERROR_EMULATION = 1
DEFAULT_MAX_EXITS = 2_000_000
SPURIOUS_FAULT_LIMIT = 8

FIDELITY_LIMITS = (
    "CPUID at CPL3 reaches on_cpuid only where KVM can fault it (hardware KVM emulates CPUID faulting); on "
    "kvm-pvm it runs natively with the host's values, and leaf 0x21 is served by KVM's table after "
    "enter_supervisor (the cpu.select hook does that for the stub's own accepts after ExitBootServices)",
    "RDTSC runs natively unless route_io(virtual_tsc=True) can make it fault (CR4.TSD; on kvm-pvm also the host "
    "thread's TSC disabled around KVM_RUN, which needs an executable trampoline page and KVM_SET_SIGNAL_MASK); "
    "RDRAND and XGETBV always run natively",
    "XMM registers are reached through the first of KVM_SET/GET_XSAVE2, KVM_SET/GET_XSAVE and KVM_SET/GET_FPU "
    "that the start-up self-test proves; where none does (xmm_state_ok False) setting one may not reach the guest",
    "instruction counts cannot be bounded (max_instructions): runs are bounded by time and by exits",
    "on_block_outside is asked once per 4 KiB page (then the page stays executable until set_code_ranges), "
    "not once per basic block",
    "a non-canonical address raises #GP, reported as an exception, where unicorn reports an unmapped access",
    "at CPL3 control-register writes are recorded, not applied: the backend's page tables stay in force",
    "the exception frame goes on the backend's own stack, so guest memory below RSP is never written",
)

_REG_NAMES = frozenset("rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip".split())


# ================================================================================================ the backend
class _Resources:
    """What a backend holds outside Python's heap, released by a finalizer (not by the backend itself)."""

    def __init__(self) -> None:
        self.kvm: Kvm | None = None
        self.vm: Vm | None = None
        self.vcpu: Vcpu | None = None
        self.control: HostMemory | None = None
        self.ram: GuestRam | None = None

    def release(self) -> None:
        for obj in (self.vcpu, self.vm, self.kvm):
            if obj is not None:
                obj.close()
        if self.ram is not None:
            for memory in self.ram.chunks.values():
                memory.close()
            self.ram.chunks.clear()
        if self.control is not None:
            self.control.close()
        self.vcpu = self.vm = self.kvm = self.control = self.ram = None


@dataclass
class KvmStats:
    exits: int = 0
    services: int = 0
    exceptions: dict[str, int] = field(default_factory=dict)
    emulated: dict[str, int] = field(default_factory=dict)
    page_faults_mapped: int = 0
    execute_grants: int = 0
    root_switches: int = 0
    kvm_run_s: float = 0.0
    interrupts: int = 0  # KVM_RUN ended by a signal (EINTR)


class KvmBackend(CpuBackend):
    """CpuBackend on /dev/kvm (see the module docstring). `device` is for tests; `max_exits` 0 = no limit.

    Capabilities that depend on the host are instance attributes, set by self-tests: routes_cpuid and
    xmm_state_ok in the constructor, routes_rdtsc by route_io(virtual_tsc=True) (False until it has tried)."""

    name = "kvm"
    counts_instructions = False  # runs are bounded by time and exits (FIDELITY_LIMITS)
    routes_port_io = True
    enters_supervisor = True
    hooks_code = True

    def __init__(self, client: CpuClient, *, device: str = "/dev/kvm", max_exits: int = DEFAULT_MAX_EXITS):
        self.client = client
        self.max_exits = max_exits
        self.stats = KvmStats()
        self.error: BaseException | None = None
        self.emulated_log: list[str] = []  # privileged instructions emulated, first few, for reports
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)
        kvm = self._res.kvm = Kvm(device)
        vm = self._res.vm = kvm.create_vm()
        phys_bits = self._guest_phys_bits(kvm.supported_cpuid())
        self.control_gpa = (1 << phys_bits) - CONTROL_SIZE
        self._res.control = HostMemory(CONTROL_SIZE, align=PAGE_2M, hugepages=False)
        vm.set_memory_region(0, self.control_gpa, CONTROL_SIZE, self._res.control.address)
        # Identity mapping needs a canonical lower-half address, and RAM must stay below the control region.
        self.ram = self._res.ram = GuestRam(vm, min(1 << 47, self.control_gpa), first_slot=1)
        self.vcpu = self._res.vcpu = vm.create_vcpu(0)
        # KVM checks LM/NX in guest CPUID before accepting EFER. It also answers CPUID itself at CPL0 (after
        # enter_supervisor), so it gets the client's TDX leaf now: CPUID cannot change once the vCPU has run.
        self._cpuid_entries = _with_client_leaves(_without_la57(kvm.supported_cpuid()), client)
        self.vcpu.set_cpuid(self._cpuid_entries)
        self.tables = PageTables(self._res.control, self.control_gpa)
        self.mapped: RangeMap[bool] = RangeMap(False, limit=1 << 48)
        self.executable: RangeMap[bool] = RangeMap(False, limit=1 << 48)
        self._code_ranges: list[tuple[int, int]] = []
        self._thunk_range = (0, 0)
        self._build_control()
        self._regs = kvm_regs()
        self._sregs = kvm_sregs()
        self._regs_dirty = self._fpu_dirty = False
        self._fpu_valid = False
        self._loaded_root = -1
        self._sregs_changes: dict[str, object] = {}
        self.privilege = 3
        self.port_io = False  # guest port I/O goes to client.on_port_in/on_port_out (else reads 0, as unicorn)
        self.virtual_tsc = False  # RDTSC goes to client.on_rdtsc
        self._host_tsc_fault = False  # kvm-pvm: RDTSC faults only while the host thread has TSC disabled too
        self._signal_mask: int | None = None  # what KVM_SET_SIGNAL_MASK last gave the vCPU
        self.rdtsc_problem = ""  # why RDTSC cannot be routed, once route_io has tried
        self._virtual_cr = {0: CR0, 2: 0, 3: self.tables.gpa(self.tables.root), 4: CR4, 8: 0}
        self._code_hooks: dict[int, tuple[Callable[[], None], bytes]] = {}  # address -> (callback, original byte)
        self._init_cpu()
        self._xmm, self.xmm_state_ok, self.xmm_state_problem = self._choose_xmm_state(kvm, vm)
        self.xmm_interface = self._xmm.name
        self._xmm.load()
        self._xmm.set_control(FCW_INIT, MXCSR_INIT)
        self._xmm.store()
        self.routes_cpuid = self._enable_cpuid_faulting() and self._selftest_cpuid()
        self.routes_rdtsc = False
        self._stop: StopReason | None = None

    # ------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _guest_phys_bits(entries: list[CpuidEntry]) -> int:
        for e in entries:
            if e.function == 0x8000_0008:
                return e.eax & 0xFF
        return 36

    def _build_control(self) -> None:
        mem = self._control_view()
        t = self.tables
        # The backend's pages in the upper half: GDT/TSS and IDT supervisor-only (the CPU reads them, the guest
        # cannot), the stubs user-executable and read-only, the exception stack user-writable.
        layout = (
            (GDT_OFF, P | RW | ACCESSED | DIRTY | NX),
            *((TSS_OFF + i * PAGE, P | ACCESSED | NX) for i in range(TSS_PAGES)),
            (IDT_OFF, P | ACCESSED | NX),
            (SUPERVISOR_IDT_OFF, P | ACCESSED | NX),
            (STUBS_OFF, P | US | ACCESSED),
            (IST_OFF, LEAF | NX),
            (IST_OFF + PAGE, LEAF | NX),
        )
        t.table(1, CONTROL_VA)
        for offset, flags in layout:
            t.set_entry(1, CONTROL_VA + offset, t.gpa(offset) | flags)
        gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00AFFB000000FFFF, 0x00CFF3000000FFFF]
        tss_va = CONTROL_VA + TSS_OFF
        gdt.append(
            (TSS_LIMIT & 0xFFFF)
            | ((tss_va & 0xFFFFFF) << 16)
            | (0x89 << 40)
            | (((TSS_LIMIT >> 16) & 0xF) << 48)
            | (((tss_va >> 24) & 0xFF) << 56)
        )
        gdt.append(tss_va >> 32)
        struct.pack_into(f"<{len(gdt)}Q", mem, GDT_OFF, *gdt)
        struct.pack_into("<Q", mem, TSS_OFF + 36, CONTROL_VA + IST_TOP_OFF)  # IST1
        struct.pack_into("<H", mem, TSS_OFF + 102, TSS_IOMAP)
        # Every port allowed: guest port I/O is then a plain KVM_EXIT_IO (no #GP, no frame), told apart from
        # the backend's own by RIP.
        mem[TSS_OFF + TSS_IOMAP : TSS_OFF + TSS_LIMIT] = bytes(8192)
        mem[TSS_OFF + TSS_LIMIT] = 0xFF
        for vector in range(256):
            stub = STUBS_OFF + STUB_SIZE * vector
            mem[stub : stub + STUB_SIZE] = bytes([0x6A, vector & 0xFF, 0xE6, PORT_EXCEPTION, 0x0F, 0x0B, 0xCC, 0xCC])
            handler = CONTROL_VA + stub
            # DPL 0 on vectors with an error code: `int 14` from CPL3 then arrives as #GP, never as a fake #PF.
            dpl = 0 if vector in ERROR_CODE_VECTORS else 3
            for idt, cs in ((IDT_OFF, USER_CS), (SUPERVISOR_IDT_OFF, KERNEL_CS)):
                low = (
                    (handler & 0xFFFF)
                    | (cs << 16)
                    | (1 << 32)  # IST1
                    | ((0x8E | dpl << 5) << 40)
                    | (((handler >> 16) & 0xFFFF) << 48)
                )
                struct.pack_into("<QQ", mem, idt + 16 * vector, low, handler >> 32)
        # SYSCALL is #UD without EFER.SCE, but kvm-pvm delivers it to LSTAR anyway: make that a clean stop.
        mem[SYSCALL_OFF : SYSCALL_OFF + 4] = bytes([0xE6, PORT_SYSCALL, 0x0F, 0x0B])  # out 0xF2, al; ud2

    def _init_cpu(self) -> None:
        s = self._sregs
        self.vcpu.get_sregs(s)
        code = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_CS, type=11, present=1, dpl=3, s=1, l=1, g=1)
        data = kvm_segment(base=0, limit=0xFFFFFFFF, selector=USER_DS, type=3, present=1, dpl=3, db=1, s=1, g=1)
        s.cs = code
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = kvm_segment(base=CONTROL_VA + TSS_OFF, limit=TSS_LIMIT, selector=TSS_SEL, type=11, present=1)
        s.gdt.base, s.gdt.limit = CONTROL_VA + GDT_OFF, 7 * 8 - 1
        s.idt.base, s.idt.limit = CONTROL_VA + IDT_OFF, 256 * 16 - 1
        s.cr0, s.cr4, s.efer = CR0, CR4, EFER
        s.cr3 = self.tables.gpa(self.tables.root)
        self.vcpu.set_sregs(s)
        self._loaded_root = self.tables.root
        # Registers as unicorn starts them: all zero (KVM's reset puts the CPU signature in RDX), IF clear.
        for name in _REG_NAMES:
            setattr(self._regs, name, 0)
        self._regs.rflags = RFLAGS_RESERVED
        self.vcpu.set_regs(self._regs)
        try:
            self.vcpu.set_msrs(
                {MSR_LSTAR: CONTROL_VA + SYSCALL_OFF, MSR_STAR: KERNEL_CS << 32, MSR_SYSCALL_MASK: RFLAGS_IF}
            )
        except KvmError:
            pass  # then SYSCALL is simply #UD (EFER.SCE is clear)

    def _enable_cpuid_faulting(self) -> bool:
        """Ask KVM to fault CPUID at CPL > 0 (it emulates Intel's CPUID faulting where it intercepts CPUID)."""
        try:
            if not self.vcpu.get_msrs([MSR_PLATFORM_INFO]).get(MSR_PLATFORM_INFO, 0) & PLATFORM_INFO_CPUID_FAULTING:
                return False
            return self.vcpu.set_msrs({MSR_MISC_FEATURES_ENABLES: CPUID_FAULTING}) == 1
        except KvmError:
            return False

    def _choose_xmm_state(self, kvm: Kvm, vm: Vm) -> tuple[XmmState, bool, str]:
        """The first interface whose XMM writes the guest sees and whose reads see the guest's writes:
        (it, True, ""), else (the last one, False, one line saying what each did)."""
        candidates = xmm_state_candidates(kvm, vm, self.vcpu)
        problems = []
        for state in candidates:
            problem = self._selftest_xmm(state)
            if not problem:
                return state, True, ""
            problems.append(f"{state.name}: {problem}")
        return candidates[-1], False, "XMM state cannot be set: " + "; ".join(problems)

    def _selftest_xmm(self, state: XmmState) -> str:
        """Set xmm7 through `state`, let the guest copy it to RCX and write xmm6, read back: "" when all agree."""
        out = kvm_regs()
        try:
            state.load()
            state.set_xmm(6, 0)
            state.set_xmm(7, XMM_PROBE_IN)
            state.store()
            vector = self._selftest(XMM_PROBE_CODE, regs_out=out)
            if vector != 3:
                return f"the probe stopped with vector {vector}"
            state.load()
            if out.rcx != XMM_PROBE_IN & U64:
                return f"xmm7 set to {XMM_PROBE_IN & U64:#x} reads {out.rcx:#x} in the guest"
            if state.xmm(6) != XMM_PROBE_OUT:
                return f"the guest's xmm6 {XMM_PROBE_OUT:#x} reads {state.xmm(6):#x} through it"
            if state.xmm(7) != XMM_PROBE_IN:
                return f"xmm7 set to {XMM_PROBE_IN:#x} reads back as {state.xmm(7):#x}"
            return ""
        except KvmError as exc:
            return str(exc)
        finally:
            self._selftest(XMM_CLEAR_CODE)  # the guest starts with zeroed XMM registers whatever happened

    def _selftest_cpuid(self) -> bool:
        """Does CPUID at CPL3 fault (so that on_cpuid can answer)?"""
        return self._selftest(b"\x0f\xa2", rax=TDX_CPUID_LEAF) == 13

    def _selftest(self, code: bytes, rax: int = 0, regs_out: kvm_regs | None = None) -> int | None:
        """Run `code; int3` at CPL3 on the backend's own page, registers saved around it: the vector it raised
        (3 when the code ran through to the int3), None for any other exit; `regs_out` gets the guest's registers
        at that exception."""
        mem = self._control_view()
        mem[SELFTEST_OFF : SELFTEST_OFF + len(code) + 1] = code + b"\xcc"
        saved = kvm_regs()
        ctypes_copy(saved, self._regs)  # what the client set is only in the cache until the next entry
        self._regs.rax, self._regs.rcx = rax, 0
        self._regs.rip = CONTROL_VA + SELFTEST_OFF
        self._regs.rsp = CONTROL_VA + IST_OFF + 0x800
        self.vcpu.set_regs(self._regs)
        self.tables.seal()
        vector = None
        reason = self._run_vcpu()
        while reason == KVM_EXIT_INTR:  # a signal (a profiler's, a 1 ms timer) is no answer: the probe must run
            reason = self._run_vcpu()
        if reason == KVM_EXIT_IO and self.vcpu.run_state.u.io.port == PORT_EXCEPTION:
            self.vcpu.get_regs(self._regs)
            vector = self._frame()[0]
            if regs_out is not None:
                ctypes_copy(regs_out, self._regs)
        ctypes_copy(self._regs, saved)
        self._regs_dirty = True
        mem[SELFTEST_OFF : SELFTEST_OFF + len(code) + 1] = b"\xcc" * (len(code) + 1)
        return vector

    def _run_vcpu(self) -> int:
        if not self._host_tsc_fault:
            return self.vcpu.run()
        # The host's own RDTSC would fault too: the trampoline disables it only around KVM_RUN itself.
        return self.vcpu.run_tsc_guarded()

    def route_io(self, *, virtual_tsc: bool = False, port_io: bool = False) -> list[str]:
        """Send guest port I/O and RDTSC to the client (on_port_in, on_port_out, on_rdtsc), as the unicorn
        backend's hooks do. Returns what is routed: RDTSC is missing when this KVM cannot make it fault."""
        routed = []
        self.port_io = port_io
        if port_io:
            routed += ["in", "out"]
        if virtual_tsc and not self.virtual_tsc:
            self.routes_rdtsc = self.virtual_tsc = self._make_rdtsc_fault()
        if virtual_tsc and self.virtual_tsc:
            routed.append("rdtsc")
        return routed

    def _make_rdtsc_fault(self) -> bool:
        """CR4.TSD makes RDTSC fault at CPL3. kvm-pvm runs CPL3 natively and forwards the #GP only while the
        host thread has TSC disabled as well (prctl PR_SET_TSC in the trampoline), so that is tried second."""
        self._sregs_changes["cr4"] = CR4 | CR4_TSD
        self._flush_sregs()
        if self._selftest(RDTSC) == 13:
            return True
        problem = self._prepare_host_tsc_fault()
        if not problem:
            self._host_tsc_fault = True
            if self._selftest(RDTSC) == 13:
                return True
            problem = "RDTSC at CPL3 does not fault, even with the host thread's TSC disabled"
            self.vcpu.set_signal_mask(None)  # KVM_RUN keeps the thread's own mask, whatever it becomes
            self._signal_mask = None
        self._host_tsc_fault = False
        self.rdtsc_problem = problem
        self._sregs_changes["cr4"] = CR4
        self._flush_sregs()
        return False

    def _prepare_host_tsc_fault(self) -> str:
        """The trampoline and the vCPU's signal mask it relies on; a reason when either is refused (then the host
        thread's TSC is never touched)."""
        function, why = tsc_guarded_run()
        if function is None:
            return why
        try:
            self._sync_signal_mask()
        except KvmError as exc:
            return str(exc)
        return ""

    def _sync_signal_mask(self) -> None:
        """During KVM_RUN the vCPU blocks what this thread blocks outside it (the trampoline blocks everything
        around KVM_RUN, so without this no signal could interrupt the guest)."""
        mask = thread_signal_mask()
        if mask != self._signal_mask:
            self.vcpu.set_signal_mask(mask)
            self._signal_mask = mask

    def enter_supervisor(self) -> None:
        """Run guest code at CPL0 from the next entry on (native on hardware KVM, emulated and slow on kvm-pvm).
        CPUID is then KVM's, whose leaf 0x21 is the client's: for a short stretch such as the stub's code after
        ExitBootServices, which checks that leaf before accepting memory itself."""
        if self.privilege == 0:
            return
        self._sregs_changes.update(self._segments(0))
        self.privilege = 0

    @staticmethod
    def _segments(cpl: int) -> dict[str, object]:
        """CS, SS and the IDT for running at `cpl` (0 or 3)."""
        code, data, idt = (KERNEL_CS, KERNEL_DS, SUPERVISOR_IDT_OFF) if cpl == 0 else (USER_CS, USER_DS, IDT_OFF)
        return dict(
            cs=kvm_segment(base=0, limit=0xFFFFFFFF, selector=code, type=11, present=1, dpl=cpl, s=1, l=1, g=1),
            ss=kvm_segment(base=0, limit=0xFFFFFFFF, selector=data, type=3, present=1, dpl=cpl, db=1, s=1, g=1),
            idt=_dtable(CONTROL_VA + idt, 256 * 16 - 1),
        )

    def _control_view(self) -> memoryview:
        if self._res.control is None:
            raise KvmError(0, "the KVM backend is closed")
        return self._res.control.view

    def close(self) -> None:
        """Release the VM and its host memory now (otherwise when the backend is collected)."""
        self._finalizer()

    # ------------------------------------------------------------------------------------------ memory
    def map(self, gpa: int, size: int) -> None:
        if size <= 0:
            return
        self.ram.ensure(gpa, gpa + size)
        self.mapped.set(gpa, gpa + size, True)
        self._apply(gpa, gpa + size)

    def unmap(self, gpa: int, size: int) -> None:
        if size <= 0:
            return
        self.mapped.set(gpa, gpa + size, False)
        self._apply(gpa, gpa + size)
        self.ram.discard(gpa, size)  # unmapped memory comes back zeroed, as after unicorn's mem_unmap/mem_map

    def read(self, gpa: int, size: int) -> bytes:
        data = self.ram.read(gpa, size)
        hooked = [a for a in self._code_hooks if gpa <= a < gpa + size]
        if not hooked:
            return data
        out = bytearray(data)  # Python sees the binary as it is, not the breakpoints planted in it
        for address in hooked:
            out[address - gpa] = self._code_hooks[address][1][0]
        return bytes(out)

    def views(self, gpa: int, size: int) -> Iterator[memoryview]:
        """Guest RAM as views without a copy; a piece holding a planted int3 comes as a copy with the original
        byte, as read gives it."""
        pos = 0
        for view in self.ram.views(gpa, size):
            hooked = [a for a in self._code_hooks if gpa + pos <= a < gpa + pos + len(view)]
            if hooked:
                out = bytearray(view)
                for address in hooked:
                    out[address - gpa - pos] = self._code_hooks[address][1][0]
                view = memoryview(out).toreadonly()
            yield view
            pos += len(view)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.ram.write(gpa, data)
        for address in [a for a in self._code_hooks if gpa <= a < gpa + len(data)]:
            callback, _ = self._code_hooks[address]
            self._code_hooks[address] = (callback, bytes(data[address - gpa : address - gpa + 1]))
            self.ram.write(address, b"\xcc")

    def add_code_hook(self, address: int, callback: Callable[[], None]) -> None:
        """Run `callback` instead of the instruction at `address`, each time execution reaches it (unicorn's
        UC_HOOK_CODE on one address); the callback moves RIP on, e.g. returns to the caller. KVM cannot break
        on an address (kvm-pvm ignores debug registers at CPL3), so an int3 is planted there: Python-side reads
        still see the original byte, guest code reading its own bytes sees 0xCC."""
        original = self.read(address, 1)
        self._code_hooks[address] = (callback, original)
        self.ram.write(address, b"\xcc")

    def _apply(self, start: int, end: int) -> None:
        base = start - start % PAGE_2M
        while base < end:
            self.tables.apply_region(base, self.mapped, self.executable)
            base += PAGE_2M

    # ------------------------------------------------------------------------------------------ registers
    def reg(self, name: str) -> int:
        if name in _REG_NAMES:
            return getattr(self._regs, name)
        if name == "eflags":
            return self._regs.rflags
        if name.startswith("xmm"):
            self._load_fpu()
            return self._xmm.xmm(int(name[3:]))
        if name.startswith("cr"):
            return self._virtual_cr[int(name[2:])]
        raise KeyError(f"unknown register {name}")

    def set_reg(self, name: str, value: int) -> None:
        if name in _REG_NAMES:
            setattr(self._regs, name, value & U64)
            self._regs_dirty = True
        elif name == "eflags":
            self._regs.rflags = value & U64
            self._regs_dirty = True
        elif name.startswith("xmm"):
            self._load_fpu()
            self._xmm.set_xmm(int(name[3:]), value & ((1 << 128) - 1))
            self._fpu_dirty = True
        else:
            raise KeyError(f"the KVM backend cannot set register {name}")

    def _load_fpu(self) -> None:
        if not self._fpu_valid:
            self._xmm.load()
            self._fpu_valid = True

    # ------------------------------------------------------------------------------------------ code layout
    def thunk_code(self) -> bytes:
        return THUNK_CODE

    def set_thunk_range(self, start: int, end: int) -> None:
        self._thunk_range = (start, end)
        self._rebuild_executable()

    def set_code_ranges(self, ranges: list[tuple[int, int]]) -> None:
        """Only these ranges (and the thunks) are executable; execute grants from on_block_outside end here."""
        self._code_ranges = sorted(ranges)
        self._rebuild_executable()

    def _rebuild_executable(self) -> None:
        old = self.executable
        new: RangeMap[bool] = RangeMap(False, limit=old.limit)
        for start, end in [*self._code_ranges, self._thunk_range]:
            start, end = start - start % PAGE, min(-(-end // PAGE) * PAGE, new.limit)
            if end > start:
                new.set(start, end, True)
        self.executable = new
        # Only mapped memory whose permission changed: the machine may switch between "everything" and "the
        # images" (at ExitBootServices), and the address space is 256 TiB.
        bases: set[int] = set()
        for s, e, is_mapped in self.mapped.runs():
            if not is_mapped:
                continue
            for os_, oe, was in old.runs(s, e):
                for ns, ne, now in new.runs(os_, oe):
                    if now != was:
                        bases.update(range(ns - ns % PAGE_2M, ne, PAGE_2M))
        for base in sorted(bases):
            self.tables.apply_region(base, self.mapped, self.executable)

    def _grant_execute(self, page: int) -> None:
        self.executable.set(page, page + PAGE, True)
        self.tables.apply_region(page - page % PAGE_2M, self.mapped, self.executable)
        self.stats.execute_grants += 1

    # ------------------------------------------------------------------------------------------ running
    def run(self, rip: int, *, max_instructions: int = 0, timeout_s: float = 0) -> StopReason:
        self._stop = None
        self.set_reg("rip", rip)
        if max_instructions:
            return StopReason(
                StopKind.ERROR, f"the KVM backend cannot count instructions (max_instructions={max_instructions})", rip
            )
        if self._host_tsc_fault:
            self._sync_signal_mask()  # this thread's mask now (run may be called from another thread)
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
        exits_at_start = self.stats.exits
        last_fault: tuple[int, int] | None = None
        repeats = 0
        with _alarm(timeout_s):
            while self._stop is None:
                if deadline is not None and time.monotonic() >= deadline:
                    self._stop = StopReason(StopKind.BUDGET, "time budget exhausted", self._regs.rip)
                    break
                if self.max_exits and self.stats.exits - exits_at_start >= self.max_exits:
                    self._stop = StopReason(
                        StopKind.BUDGET, f"exit budget exhausted ({self.max_exits} exits)", self._regs.rip
                    )
                    break
                reason = self._enter()
                if reason == KVM_EXIT_INTR:
                    continue  # the alarm (or another signal): the deadline check decides
                fault = self._dispatch(reason)
                # A fault that repeats unchanged means the guest cannot make progress (a spurious-fault loop).
                if fault is not None and fault == last_fault:
                    repeats += 1
                    if repeats > SPURIOUS_FAULT_LIMIT:
                        self.stop(StopReason(StopKind.ERROR, f"the same page fault repeats at {fault[1]:#x}", fault[0]))
                else:
                    repeats = 0
                last_fault = fault
        return self._stop

    def stop(self, reason: StopReason) -> None:
        if self._stop is None:
            self._stop = reason

    def _enter(self) -> int:
        """Write back what Python changed, KVM_RUN once, read the registers back."""
        if self._regs_dirty:
            self.vcpu.set_regs(self._regs)
            self._regs_dirty = False
        if self._fpu_dirty:
            self._xmm.store()
            self._fpu_dirty = False
        self._flush_sregs()
        self.tables.seal()
        t0 = time.perf_counter()
        reason = self._run_vcpu()
        self.stats.kvm_run_s += time.perf_counter() - t0
        self._fpu_valid = False
        if reason != KVM_EXIT_INTR:
            self.stats.exits += 1
        else:
            self.stats.interrupts += 1
        self.vcpu.get_regs(self._regs)
        return reason

    def _flush_sregs(self) -> None:
        """Load a new page-table root or segment changes, on fresh sregs (at CPL0 the guest may change CRs)."""
        if self.tables.root == self._loaded_root and not self._sregs_changes:
            return
        self.vcpu.get_sregs(self._sregs)
        for name, value in self._sregs_changes.items():
            setattr(self._sregs, name, value)
        self._sregs_changes.clear()
        if self.tables.root != self._loaded_root:
            self._sregs.cr3 = self.tables.gpa(self.tables.root)
            self._loaded_root = self.tables.root
            self._virtual_cr[3] = self._sregs.cr3
            self.stats.root_switches += 1
        self.vcpu.set_sregs(self._sregs)

    def _dispatch(self, reason: int) -> tuple[int, int] | None:
        """Handle one exit; returns (rip, cr2) when it was a page fault that was resolved in place."""
        if reason == KVM_EXIT_IO:
            io = self.vcpu.run_state.u.io
            rip = self._regs.rip
            start, end = self._thunk_range
            if io.port == PORT_SERVICE and io.direction == KVM_EXIT_IO_OUT and start <= rip - 2 < end:
                if (rip - 2 - start) % len(THUNK_CODE) == 0:
                    self._service((rip - 2 - start) // len(THUNK_CODE), rip - 2)
                    return None
            stub, frame = rip - CONTROL_VA - STUBS_OFF, self._regs.rsp - CONTROL_VA
            # A real delivery: from a stub, with the frame on the exception stack (a guest that jumps into a
            # stub with its own stack is only doing port I/O).
            if (
                io.port == PORT_EXCEPTION
                and 0 <= stub < 256 * STUB_SIZE
                and stub % STUB_SIZE == 4
                and frame in (IST_TOP_OFF - 6 * 8, IST_TOP_OFF - 7 * 8)  # vector, [error,] 5-word frame
            ):
                return self._exception()
            if io.port == PORT_SYSCALL and rip == CONTROL_VA + SYSCALL_OFF + 2:
                self._syscall()
                return None
            self._guest_io(io.direction == KVM_EXIT_IO_OUT, io.port, io.size, io.count)
            return None
        if reason == KVM_EXIT_SHUTDOWN:
            self.stop(StopReason(StopKind.EXCEPTION, "triple fault (KVM_EXIT_SHUTDOWN)", self._regs.rip))
        elif reason == KVM_EXIT_HLT:
            self.stop(StopReason(StopKind.EXCEPTION, "hlt", self._regs.rip))
        elif reason == KVM_EXIT_MMIO:
            addr = self.vcpu.run_state.u.mmio.phys_addr
            self.stop(StopReason(StopKind.ERROR, f"kvm: access to {addr:#x}, which has no memory slot", self._regs.rip))
        elif reason == KVM_EXIT_INTERNAL_ERROR and self._emulation_failed():
            pass
        elif reason in (KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_FAIL_ENTRY):
            detail = EXIT_NAMES[reason]
            if reason == KVM_EXIT_INTERNAL_ERROR:
                detail += f" suberror {self.vcpu.run_state.u.internal.suberror}"
                if self.vcpu.run_state.u.internal.suberror == KVM_INTERNAL_ERROR_EMULATION:
                    detail += f": KVM cannot emulate instruction {self._code_at(self._regs.rip, 8).hex()} at CPL0"
            self.stop(StopReason(StopKind.ERROR, f"kvm: {detail}", self._regs.rip))
        else:
            self.stop(
                StopReason(StopKind.ERROR, f"kvm: unexpected exit {EXIT_NAMES.get(reason, reason)}", self._regs.rip)
            )
        return None

    def _emulation_failed(self) -> bool:
        """KVM's instruction emulator (all of CPL0 on kvm-pvm) gave up: TDCALL is the one it may meet here."""
        if self.vcpu.run_state.u.internal.suberror != KVM_INTERNAL_ERROR_EMULATION:
            return False
        rip = self._regs.rip
        if self._code_at(rip, 4) != TDCALL:
            return False
        self._tdcall(rip)
        return True

    def _code_at(self, rip: int, size: int) -> bytes:
        try:
            return self.ram.read(rip, size)
        except KvmError:
            return b""

    def _tdcall(self, rip: int) -> None:
        self._note("tdcall")
        self.client.on_tdcall()
        if self._stop is None:
            self.set_reg("rip", rip + len(TDCALL))

    def _code_hook(self, address: int) -> None:
        self._regs.rip = address
        self.stats.services += 1
        try:
            self._code_hooks[address][0]()
        except Exception as exc:  # as for services: stop with a report
            self.stop(
                StopReason(StopKind.ERROR, f"code hook at {address:#x} raised {type(exc).__name__}: {exc}", address)
            )
            self.error = exc
            return
        if self._stop is None and self._regs.rip == address:
            self.stop(StopReason(StopKind.ERROR, f"code hook at {address:#x} did not move RIP on", address))

    def _syscall(self) -> None:
        """The guest executed SYSCALL (RCX holds the address after it): there is no OS to call, stop there."""
        rip = (self._regs.rcx - 2) & U64
        self._regs.rip, self._regs.rflags = rip, self._regs.r11
        self._regs_dirty = True
        if self.privilege == 3:  # back to the CPL3 segments SYSCALL left
            self._sregs_changes.update(self._segments(3))
        self.stop(StopReason(StopKind.EXCEPTION, "syscall: there is no operating system to call", rip))

    def _service(self, index: int, address: int) -> None:
        self.stats.services += 1
        try:
            self.client.on_service(index)
        except Exception as exc:  # a firmware bug must stop the run with a report, not kill the process
            self.stop(StopReason(StopKind.ERROR, f"firmware service raised {type(exc).__name__}: {exc}", address))
            self.error = exc

    def _guest_io(self, out: bool, port: int, size: int, count: int) -> None:
        """Port I/O by the guest itself that KVM let through (CPL0, or the backend's own two ports)."""
        data = self.vcpu.io_data(size * count)
        for i in range(count):
            item = data[i * size : (i + 1) * size]
            if out:
                self._port_out(port, size, int.from_bytes(item, "little"))
            else:
                item[:] = self._port_in(port, size).to_bytes(size, "little")
        self._note("out" if out else "in")

    def _port_in(self, port: int, size: int) -> int:
        if not self.port_io:
            return 0  # no devices, as under unicorn without I/O hooks
        return self.client.on_port_in(port, size) & ((1 << (8 * size)) - 1)

    def _port_out(self, port: int, size: int, value: int) -> None:
        if self.port_io:
            self.client.on_port_out(port, size, value)

    # ------------------------------------------------------------------------------------------ exceptions
    def _frame(self) -> tuple[int, int, int, int, int]:
        """(vector, error code, rip, rflags, rsp) from the exception stack, as the stub left it."""
        mem = self._control_view()
        sp = self._regs.rsp - CONTROL_VA
        vector = struct.unpack_from("<Q", mem, sp)[0] & 0xFF
        sp += 8
        error = 0
        if vector in ERROR_CODE_VECTORS:
            error = struct.unpack_from("<Q", mem, sp)[0]
            sp += 8
        rip, _cs, rflags, rsp, _ss = struct.unpack_from("<5Q", mem, sp)
        return vector, error, rip, rflags, rsp

    def _exception(self) -> tuple[int, int] | None:
        vector, error, rip, rflags, rsp = self._frame()
        # Put the guest back at the faulting instruction: the client sees the state the fault interrupted.
        self._regs.rip, self._regs.rsp, self._regs.rflags = rip, rsp, rflags & ~RFLAGS_RF
        self._regs_dirty = True
        name = VECTOR_NAMES.get(vector, "")
        self.stats.exceptions[name or str(vector)] = self.stats.exceptions.get(name or str(vector), 0) + 1
        if vector == 14:
            return self._page_fault(error, rip)
        if vector == 3 and rip - 1 in self._code_hooks:
            self._code_hook(rip - 1)
            return None
        if vector == 13 and error & 2:  # `int n` through a DPL0 gate: the software interrupt n itself
            self.stop(StopReason(StopKind.EXCEPTION, _exception_text(error >> 3), rip))
        elif vector in (6, 13):
            self._privileged(vector, rip)
        else:
            self.stop(StopReason(StopKind.EXCEPTION, _exception_text(vector), rip))
        return None

    def _page_fault(self, error: int, rip: int) -> tuple[int, int] | None:
        self.vcpu.get_sregs(self._sregs)
        cr2 = self._sregs.cr2
        self._virtual_cr[2] = cr2
        fetch, write = bool(error & 0x10), bool(error & 2)
        access = "execute" if fetch else "write" if write else "read"
        in_control = cr2 >= CONTROL_VA
        present, executable = (False, False) if in_control else self.tables.translate(cr2)
        if in_control and error & 1:
            self.stop(StopReason(StopKind.EXCEPTION, f"CPU exception 14 #PF ({access} of {cr2:#x})", rip))
            return None
        if fetch and rip == 0:  # as the unicorn backend reports it, before page 0 is mapped or asked about
            self.stop(StopReason(StopKind.EXCEPTION, "jump to address 0 (a call through a NULL pointer)", 0))
            return None
        if not error & 1:  # not present
            if present:
                return rip, cr2  # stale translation (hardware TLB): the fault itself flushed it, retry
            if self.client.on_unmapped(cr2, 1, access):
                if not self.tables.translate(cr2)[0]:
                    self.stop(StopReason(StopKind.ERROR, f"on_unmapped claimed {cr2:#x} but left it unmapped", rip))
                    return None
                self.stats.page_faults_mapped += 1
                return rip, cr2
            self.stop(StopReason(StopKind.ERROR, f"kvm: unmapped {access} at {cr2:#x}", rip))
            return None
        if fetch:
            if executable:
                return rip, cr2
            # An instruction that runs on from code into the next page is no jump: only a fetch at RIP is.
            if rip == cr2 and self.client.on_block_outside(rip):
                self.stop(StopReason(StopKind.KERNEL, "jumped outside firmware and loaded images", rip))
                return None
            self._grant_execute(cr2 - cr2 % PAGE)
            return None
        self.stop(StopReason(StopKind.EXCEPTION, f"CPU exception 14 #PF ({access} of {cr2:#x}, error {error:#x})", rip))
        return None

    def _privileged(self, vector: int, rip: int) -> None:
        code = self._code_at(rip, 16)
        if code[:4] == TDCALL:  # #UD on a CPU without TDX
            self._tdcall(rip)
            return
        if vector == 6:
            self.stop(StopReason(StopKind.EXCEPTION, f"invalid opcode {code[:4].hex()} (#UD)", rip))
            return
        insn = decode(code)
        if insn is None or not self._emulate(insn, rip):
            what = f"instruction {code[:8].hex()}" if insn is None else insn.kind
            self.stop(StopReason(StopKind.EXCEPTION, f"CPU exception 13 #GP ({what}, not emulated)", rip))
            return
        if self._stop is None:
            self.set_reg("rip", rip + insn.length)

    def _emulate(self, insn: Insn, rip: int) -> bool:
        """Do what a CPL0 CPU would (as unicorn does); False when the backend does not emulate it."""
        r = self._regs
        kind = insn.kind
        if kind == "cpuid":
            leaf, subleaf = r.rax & 0xFFFFFFFF, r.rcx & 0xFFFFFFFF
            answer = self.client.on_cpuid(leaf, subleaf) or self._default_cpuid(leaf, subleaf)
            r.rax, r.rbx, r.rcx, r.rdx = (v & 0xFFFFFFFF for v in answer)
        elif kind == "rdmsr":
            value = EFER if r.rcx & 0xFFFFFFFF == MSR_EFER else 0  # unknown MSRs read 0, as under unicorn
            r.rax, r.rdx = value & 0xFFFFFFFF, value >> 32
        elif kind in ("wrmsr", "wbinvd", "invd", "invlpg"):
            pass  # no effect on this machine: caches and TLBs (ours) are not modelled
        elif kind == "out":
            port = r.rdx & 0xFFFF if insn.port is None else insn.port
            self._port_out(port, insn.size, r.rax & ((1 << (8 * insn.size)) - 1))
        elif kind == "in":
            port = r.rdx & 0xFFFF if insn.port is None else insn.port
            _write_partial(r, "rax", self._port_in(port, insn.size), insn.size)
        elif kind in ("rdtsc", "rdtscp") and self.virtual_tsc:
            value = self.client.on_rdtsc()
            r.rax, r.rdx = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
            if kind == "rdtscp":
                r.rcx = 0  # IA32_TSC_AUX
        elif kind == "cli":
            r.rflags &= ~RFLAGS_IF
        elif kind == "sti":
            r.rflags |= RFLAGS_IF
        elif kind == "mov_from_cr" and insn.cr in self._virtual_cr:
            setattr(r, insn.gpr, self._virtual_cr[insn.cr])
        elif kind == "mov_to_cr" and insn.cr in self._virtual_cr:
            self._virtual_cr[insn.cr] = getattr(r, insn.gpr)  # recorded, not applied (FIDELITY_LIMITS)
        elif kind == "hlt":
            self.stop(StopReason(StopKind.EXCEPTION, "hlt", rip))
        else:
            return False
        self._regs_dirty = True
        self._note(kind, rip)
        return True

    def _default_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        for e in self._cpuid_entries:
            if e.function == leaf and (not e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX or e.index == subleaf):
                return e.eax, e.ebx, e.ecx, e.edx
        return 0, 0, 0, 0

    def _note(self, kind: str, rip: int | None = None) -> None:
        self.stats.emulated[kind] = self.stats.emulated.get(kind, 0) + 1
        if rip is not None and len(self.emulated_log) < 64:
            self.emulated_log.append(f"{rip:#x}: {kind}")


def ctypes_copy(dst: ctypes.Structure, src: ctypes.Structure) -> None:
    ctypes.memmove(ctypes.addressof(dst), ctypes.addressof(src), ctypes.sizeof(src))


def _dtable(base: int, limit: int) -> kvm_dtable:
    table = kvm_dtable()
    table.base, table.limit = base, limit
    return table


def _without_la57(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    """KVM's table with LA57 (leaf 7.0 ECX bit 16) cleared: guest code runs on this backend's 4-level tables and
    its CR4 writes are recorded, not applied, so 5-level paging cannot be offered. Linux's EFI stub would switch
    to it when the bit is set (libstub x86-5lvl.c, efi_setup_5level_paging, v6.12), as unicorn's CPU never asks."""
    out = []
    for e in entries:
        if e.function == 7 and e.index == 0 and e.ecx & CPUID7_ECX_LA57:
            e = CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx & ~CPUID7_ECX_LA57, e.edx)
        out.append(e)
    return out


def _with_client_leaves(entries: list[CpuidEntry], client: CpuClient) -> list[CpuidEntry]:
    """KVM's CPUID table with the leaves the firmware defines (TDX's 0x21) replaced by the client's answers."""
    answer = client.on_cpuid(TDX_CPUID_LEAF, 0)
    if answer is None:
        return entries
    kept = [e for e in entries if e.function != TDX_CPUID_LEAF]
    return [*kept, CpuidEntry(TDX_CPUID_LEAF, 0, 0, *answer)]


def _exception_text(vector: int) -> str:
    return f"CPU exception {vector} {VECTOR_NAMES.get(vector, '')}".strip()


def _write_partial(regs: kvm_regs, name: str, value: int, size: int) -> None:
    """Write the low `size` bytes of a register as x86 does: 32-bit writes zero the upper half."""
    if size == 4:
        setattr(regs, name, value & 0xFFFFFFFF)
    else:
        mask = (1 << (8 * size)) - 1
        setattr(regs, name, (getattr(regs, name) & ~mask) | (value & mask))


@contextmanager
def _alarm(timeout_s: float) -> Iterator[None]:
    """SIGALRM every so often from timeout_s on, so that a guest spinning without exits returns from KVM_RUN.

    Only in the main thread (where Python lets us install a handler), and never over someone else's timer:
    then the budget is checked at exits only.
    """
    usable = (
        timeout_s > 0
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )
    if not usable:
        yield
        return
    previous: Callable | int | None = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def _on_alarm(_signum: int, _frame: object) -> None:
    """Nothing to do: the signal's purpose is the EINTR it gives KVM_RUN."""
