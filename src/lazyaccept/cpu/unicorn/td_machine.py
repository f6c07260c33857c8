"""A TD's vCPUs on one host thread: N unicorn CPUs (td_vcpu.TdVcpu) over one guest memory, one TDCALL dispatcher
and one platform, interleaved cooperatively.

Every vCPU starts as the TDX module starts one (td_state.enter_initial_state with its index in RSI) and runs the
firmware's own code. In edk2's TDVF the APs meet the BSP in two places only (edk2-stable202502):
- OvmfPkg/ResetVector/Ia32/IntelTdx.asm `TdxApWait`: an AP spins on TDX_WORK_AREA_PGTBL_READY until the BSP has
  built the page tables;
- OvmfPkg/IntelTdx/Sec/X64/IntelTdxAPs.nasm `ParkAp`: after TDG.VP.INFO in SecEntry.nasm, each AP counts itself in
  the mailbox (OvmfPkg/Library/TdxMailboxLib) and spins on its command; SEC's BSP (TdxHelperLib/SecTdxHelper.c
  MpAcceptMemoryResourceRange) posts AcceptPages there, accepts its own share and waits in MpSerializeEnd, and
  TdxDxe (TdxAcpiTable.c) later posts Wakeup to move the APs to a relocated mailbox (TdxDxe/X64/ApRunLoop.nasm).
Both are the TDVF metadata's TdxInitMem section: the work area page and the mailbox page after it.

Scheduling. unicorn cannot be preempted safely (an asynchronous emu_stop corrupts EFLAGS on resume, REFERENCE.md),
so a vCPU gives the thread away only at synchronous points. Memory hooks limited to the watched pages (the two
above and every relocated mailbox a Wakeup names) see each read and write there. An AP spins when one instruction
reads the same bytes at the same address twice with nothing in between that a spin loop cannot do (no write to the
watched pages, no TDCALL, no page walk); it then waits on those bytes, stopped at that read, and is ready again once
they differ. That stop is inside an instruction's memory access, which is safe only where the flags are dead: true of
OVMF's AP loops (the read is the compare, or a compare follows it), not of arbitrary BSP code, whose repeated
reads of the work area (CcProbe) look the same. So the BSP gives the thread away at its TDCALLs instead (before
the TDX module sees one) and at TDVMCALL<HLT>, whenever an AP is ready; every BSP wait in TDVF is preceded by
one (GetCpusNum's TDG.VP.INFO before MpSerializeStart; its own accepts before MpSerializeEnd). SEC's BSP thus
hands the AcceptPages command over at its first accept after posting it, and the AP accepts its share before the
BSP accepts its own: the TDX module's result is the same.

Virtual time. Each vCPU keeps its own clock (the TDX module's clocks_ns[vcpu]). A read of watched bytes another
vCPU wrote moves the reader's clock up to the writer's clock at the write: a vCPU released by a command starts
its work when the command was posted, and the BSP leaving MpSerializeEnd has waited for the slowest AP.

The watched addresses are virtual addresses (unicorn's memory hooks see those); OVMF identity-maps memory below
4 GiB, where the work area and the mailboxes lie.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, Uc
from unicorn.x86_const import UC_X86_REG_RIP

from lazyaccept.cpu.unicorn.td_memory import AcceptedMapping, HostRam
from lazyaccept.cpu.unicorn.td_paging import shared_bit_translates
from lazyaccept.cpu.unicorn.td_state import cpl_switch_ok, old_exception_offset_ok
from lazyaccept.cpu.unicorn.td_vcpu import NoVmm, TdProgress, TdRunResult, TdVcpu
from lazyaccept.errors import ConfigError
from lazyaccept.records import StopKind, StopReason
from lazyaccept.tdx.tdcall import TdcallDispatcher
from lazyaccept.units import PAGE_4K
from lazyaccept.vmm.platform import Q35Platform
from lazyaccept.vmm.td import Td
from lazyaccept.vmm.tdvf import TdvfMetadata, TdvfSectionType

# OvmfPkg/Include/TdxCommondefs.inc and IndustryStandard/IntelTdx.h (MP_WAKEUP_MAILBOX), edk2-stable202502.
MAILBOX_COMMAND_OFFSET = 0x0
MAILBOX_COMMAND_WAKEUP = 1  # MpProtectedModeWakeupCommandWakeup
MAILBOX_RELOCATED_ARG = 0x800  # WakeupArgsRelocatedMailBox: the mailbox the APs move to
WORK_AREA_SIZE = 0x1000  # PcdOvmfWorkAreaSize (OvmfPkgX64.fdf); the mailbox (PcdOvmfSecGhcbBackupBase) follows
BSP = 0  # TDVF's BSP is vCPU 0 (SecEntry.nasm: VP.INFO's R9 = 0)


def rendezvous_pages(firmware: TdvfMetadata) -> tuple[int, int]:
    """The TDX work area and the AP mailbox: the TEMP_MEM section edk2's ResetVector/X64/IntelTdxMetadata.asm
    lists right before TD_HOB (`_TdxInitMem`: PcdOvmfWorkAreaBase, work area + mailbox)."""
    sections = firmware.sections
    for before, section in zip(sections, sections[1:], strict=False):
        if section.type == TdvfSectionType.TD_HOB and before.type == TdvfSectionType.TEMP_MEM:
            if before.memory_size >= WORK_AREA_SIZE + PAGE_4K:
                return before.memory_base, before.memory_base + WORK_AREA_SIZE
    raise ConfigError(
        f"{firmware.source or 'the image'}: no TdxInitMem section (work area and AP mailbox) in its TDVF metadata; "
        "its APs cannot be run (use 1 vCPU)"
    )


class TdMachine:
    """The vCPUs of `td` (td.config.vcpus of them) on one host thread, over one guest memory. One vCPU is the
    single-vCPU case of it. `until` and `stop_in_kernel` are td_vcpu.TdVcpu's, asked on every vCPU; `current` is
    the vCPU running (for an `until` that cares which)."""

    def __init__(
        self,
        td: Td,
        *,
        platform: Q35Platform | None = None,
        until: Callable[[int, Mapping[str, int]], str | None] | None = None,
        stop_in_kernel: bool = False,
    ):
        if not old_exception_offset_ok():
            raise RuntimeError("this unicorn build keeps old_exception elsewhere: exceptions cannot be resumed")
        if not cpl_switch_ok():
            raise RuntimeError("this unicorn build keeps hflags or the segment caches elsewhere: no entry from CPL 3")
        problem = shared_bit_translates(td.tdx.gpa_width)
        if problem is not None:
            raise RuntimeError(f"this unicorn cannot walk a TD's page tables with the shared bit: {problem}")
        self.td = td
        self.tdx = td.tdx
        self.platform = platform
        self.until = until
        self.stop_in_kernel = stop_in_kernel
        self.dispatcher = TdcallDispatcher(td.tdx, platform if platform is not None else NoVmm())
        self.ram = HostRam.for_td(td.tdx)
        self.mapping = AcceptedMapping(td.tdx, self.ram, 1 << (td.tdx.gpa_width - 1))
        self.mapping.sync()
        n = td.config.vcpus
        self.vcpus = [TdVcpu(self, i) for i in range(n)]
        self.current = 0
        self.switches = 0  # the host thread went from one vCPU to another
        self.spins = [0] * n  # spins detected, per vCPU
        self._waiting: list[tuple[int, bytes] | None] = [None] * n  # (address, bytes) a vCPU spins on
        self._last_read: list[tuple[Any, ...] | None] = [None] * n
        self._halted = [False] * n  # idle at TDVMCALL<HLT> in the kernel: ready once an interrupt is pending
        self._writes: dict[int, tuple[int, int]] = {}  # watched byte -> (vCPU, its clock at the write)
        self._generation = 0  # watched writes so far
        self._watched: set[int] = set()  # watched pages
        self._to_watch: list[int] = []  # pages named by a Wakeup, hooked before the next vCPU runs
        self._mailboxes: set[int] = set()
        if n > 1:
            work_area, mailbox = rendezvous_pages(td.firmware)
            self._mailboxes.add(mailbox)
            self._to_watch += [work_area, mailbox]
            self._watch_new_pages()

    # ----------------------------------------------------------------- running
    def run(self, max_wall_s: float) -> TdRunResult:
        """Run the vCPUs until one stops the machine; the wall-time budget is the last resort."""
        started = time.monotonic()
        deadline = started + max_wall_s
        while True:
            self._watch_new_pages()
            stop = self.vcpus[self.current].step(deadline)
            if stop is not None:
                break
            self._switch()
        if stop.kind == StopKind.BUDGET:
            stop = StopReason(StopKind.BUDGET, f"wall-time budget of {max_wall_s:g} s exhausted", stop.rip)
        vcpu = self.vcpus[self.current]
        for v in self.vcpus:
            v.clock.sync(v.registers()["rip"])  # the instructions since each vCPU's last TDCALL or HLT
            v.progress.virtual_ns = self.tdx.clocks_ns[v.vcpu]
            v.progress.unicorn_regions = self.mapping.regions
            v.progress.tlb_fills = v.walker.fills
        registers = vcpu.registers()
        rip = registers["rip"] if stop.rip is None else stop.rip
        return TdRunResult(
            stop,
            registers,
            vcpu.module_at(rip),
            self._total([v.progress for v in self.vcpus]),
            time.monotonic() - started,
            self.platform.uart.text() if self.platform is not None else "",
            vcpu=vcpu.vcpu,
            per_vcpu=[v.progress for v in self.vcpus],
        )

    def enter_kernel(self, vcpu: int, image: bytes = b"", base: int = 0) -> None:
        """The next run goes on past the stub's jump on `vcpu`, in the kernel loaded as `image` at virtual `base`
        (td_vcpu.TdVcpu.enter_kernel). The other vCPUs stay where the firmware parked them (TDVF's relocated
        mailbox) with the kernel's hooks armed already: the kernel wakes them there (Linux 6.12
        arch/x86/kernel/acpi/madt_wakeup.c acpi_wakeup_cpu) and they jump into its trampoline without a stop."""
        self.stop_in_kernel = False
        for v in self.vcpus:
            v.stop_in_kernel = False
        self.vcpus[vcpu].enter_kernel(image, base)
        for v in self.vcpus:
            if v.vcpu != vcpu:
                v.enter_kernel(image, base)

    def module_at(self, address: int) -> str | None:
        """The firmware image `address` lies in, through vCPU 0's page tables."""
        return self.vcpus[0].module_at(address)

    def _switch(self) -> None:
        """The running vCPU yielded: the next vCPU that is ready runs, else the next one (a spin the machine
        cannot explain is given up on, not trusted: a vCPU never waits for good)."""
        n = len(self.vcpus)
        order = [(self.current + k) % n for k in range(1, n)]
        ready = [i for i in order if self._ready(i)]
        chosen = ready[0] if ready else order[0] if order else self.current
        if chosen != self.current:
            self.switches += 1
        waited = self._waiting[chosen] is not None and self.vcpus[chosen].in_kernel
        lag = self.vcpus[self.current].virtual_now_ns() - self.tdx.clocks_ns[chosen] if waited else 0
        if lag > 0:
            # The kernel's writes that release it go through its direct map, which the watched (virtual) pages do
            # not see: it was released by the vCPU that ran, at that vCPU's time.
            self.tdx.charge(chosen, lag)
        self._waiting[chosen] = None
        self._halted[chosen] = False
        self.current = chosen

    def _ready(self, i: int) -> bool:
        if self._halted[i]:
            # Idle at HLT, its clock follows the running vCPU's (time passes for it too) until an interrupt is due.
            platform = self.platform
            if i != self.current:
                lag = self.vcpus[self.current].virtual_now_ns() - self.tdx.clocks_ns[i]
                if lag > 0:
                    self.tdx.charge(i, lag)
            return platform is not None and platform.pending_interrupt(i) is not None
        waiting = self._waiting[i]
        if waiting is None:
            return True
        address, data = waiting
        return bytes(self.ram.view[address : address + len(data)]) != data

    def others_ready(self, i: int) -> bool:
        """Could another vCPU run now (it never waited, or what it spins on changed)?"""
        return any(self._ready(j) for j in range(len(self.vcpus)) if j != i)

    @staticmethod
    def _total(parts: list[TdProgress]) -> TdProgress:
        total = TdProgress(tdcalls=Counter(), ve=Counter(), exceptions=Counter())
        for p in parts:
            total.tdcalls.update(p.tdcalls)
            total.ve.update(p.ve)
            total.exceptions.update(p.exceptions)
            total.interrupts += p.interrupts
            total.syscalls += getattr(p, "syscalls", 0)  # a snapshot's progress may predate it
            total.tlb_fills += p.tlb_fills
            total.unicorn_regions = p.unicorn_regions
            total.virtual_ns = max(total.virtual_ns, p.virtual_ns)
        return total

    # ----------------------------------------------------------------- the watched pages
    def _watch_new_pages(self) -> None:
        for page in self._to_watch:
            if page in self._watched:
                continue
            self._watched.add(page)
            for v in self.vcpus:
                v.uc.hook_add(UC_HOOK_MEM_READ, self._on_read, v.vcpu, page, page + PAGE_4K - 1)
                v.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write, v.vcpu, page, page + PAGE_4K - 1)
        self._to_watch.clear()

    def _on_read(self, _uc: Uc, _access: int, address: int, size: int, _value: int, i: int) -> None:
        clocks = self.tdx.clocks_ns
        latest = max((w[1] for b in range(address, address + size) if (w := self._writes.get(b)) and w[0] != i),
                     default=0)  # fmt: skip
        if latest > clocks[i]:
            self.tdx.charge(i, latest - clocks[i])  # it sees a write made at the writer's time: it waited for it
        vcpu = self.vcpus[i]
        data = bytes(self.ram.view[address : address + size])
        # The reading instruction counts: TdxDxe's relocated AP loop reads the mailbox's APIC ID twice in a row
        # (broadcast?, mine?), which is no spin (RIP is exact in unicorn's memory hooks).
        seen = (address, data, self._generation, clocks[i], vcpu.walker.fills, _uc.reg_read(UC_X86_REG_RIP))
        if seen != self._last_read[i]:
            self._last_read[i] = seen
            return
        # The same bytes again with nothing a spin loop cannot do in between: it spins on them.
        self.spins[i] += 1
        self._last_read[i] = None
        if i != BSP:
            self._waiting[i] = (address, data)
            vcpu.request_yield()

    def yield_at_pause(self, i: int) -> bool:
        """A vCPU in the kernel at a PAUSE (cpu_relax: a spin-wait) gives the thread to another that can run: the
        vCPU it waits for may be that one."""
        return len(self.vcpus) > 1 and self.others_ready(i)

    def idle(self, i: int) -> bool:
        """TDVMCALL<HLT> on vCPU `i` with no interrupt pending for it: True when it gives the thread away (it is
        halted until an interrupt is pending for it); False when its own clock is to jump to its timer (no other
        vCPU can run, and its own timer fires first)."""
        if len(self.vcpus) == 1:
            return False
        self._halted[i] = True
        if self.others_ready(i):
            return True
        # All halted: the earliest timer among them fires, on its vCPU's clock.
        assert self.platform is not None
        due = [(d, j) for j in range(len(self.vcpus)) if (d := self.platform.next_deadline(j)) is not None]
        if not due:
            self._halted[i] = False
            return False
        deadline, j = min(due)
        if j == i:
            self._halted[i] = False
            return False
        if deadline > self.tdx.clocks_ns[j]:
            self.tdx.charge(j, deadline - self.tdx.clocks_ns[j])
        return True

    def yield_at_tdcall(self, i: int) -> bool:
        """The BSP gives the thread to an AP that can run at its TDCALLs, before the TDX module sees them."""
        return i == BSP and len(self.vcpus) > 1 and self.others_ready(i)

    def _on_write(self, _uc: Uc, _access: int, address: int, size: int, value: int, i: int) -> None:
        stamp = (i, self.tdx.clocks_ns[i])
        for b in range(address, address + size):
            self._writes[b] = stamp
        self._generation += 1
        mailbox = address & ~(PAGE_4K - 1)
        if (
            mailbox in self._mailboxes
            and address - mailbox == MAILBOX_COMMAND_OFFSET
            and value == MAILBOX_COMMAND_WAKEUP
        ):
            # TdxDxe moves the APs to a relocated mailbox (WakeupArgsRelocatedMailBox): they will spin there.
            arg = mailbox + MAILBOX_RELOCATED_ARG
            relocated = int.from_bytes(self.ram.view[arg : arg + 8], "little") & ~(PAGE_4K - 1)
            if 0 < relocated < self.ram.size:
                self._mailboxes.add(relocated)
                self._to_watch.append(relocated)
