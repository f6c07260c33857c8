"""The kernel's own progress during a --run-kernel run, from its symbols (guest/kallsyms.py): its phases, and the
kernel function each of its accepts was for.

Phases begin at the first instruction of a few functions, hooked one address each (a UC_HOOK_CODE on a single
address costs nothing elsewhere): start_kernel (init/main.c), mm_core_init (mm/mm_init.c, 6.12: the buddy
allocator takes over memblock's free memory), kernel_init (the first task, which runs the initcalls),
do_one_initcall's first call (the initcalls themselves), run_init_process (/init exec'd). Each records the virtual
clock (the vCPU's, charged up to that instruction), the TDCALLs and accepts made so far.

Each successful TDG.MEM.PAGE.ACCEPT is attributed by a bounded scan of the kernel stack upward from RSP at the
TDCALL: Debian's kernels use ORC, not frame pointers, so the return addresses are found as stack words in kernel
text right after a CALL instruction (as the kernel's own guess unwinder does). Of that chain, innermost first,
`path` is the first function below the accept plumbing (accept_memory -> tdx_accept_memory -> __tdcall) and
`function` the first one that is not an allocator either: the code that wanted the memory (swiotlb_init_remap
behind memblock_alloc_range_nid, do_anonymous_page behind the page allocator). A stale word that looks like a
return address can lengthen the chain: the scan stops at the first function of a known kernel entry point."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unicorn import UC_HOOK_CODE, UcError
from unicorn import x86_const as X

from lazyaccept.cpu.unicorn.td_state import GuestFault, read_virt
from lazyaccept.errors import InputError
from lazyaccept.guest.kallsyms import KernelSymbols, read_kallsyms
from lazyaccept.units import format_ns, human_size

# (phase, function whose first instruction starts it); in the order the kernel reaches them.
PHASE_ENTRIES: tuple[tuple[str, str], ...] = (
    ("start_kernel", "start_kernel"),
    ("mm init", "mm_core_init"),
    ("kernel_init", "kernel_init"),
    ("initcalls", "do_one_initcall"),
    ("/init", "run_init_process"),
)
BEFORE_PHASES = "early boot"  # from the stub's jump to start_kernel (startup_64, x86_64_start_kernel)

STACK_SCAN_BYTES = 16 * 1024  # THREAD_SIZE on x86-64 (KASAN off): no frame is further than this
# accept_memory's own plumbing, innermost (drivers/firmware/efi/unaccepted_memory.c, arch/x86/coco/tdx/tdx.c and
# tdcall.S in 6.12): never the answer.
PLUMBING = re.compile(r"^(accept_memory|arch_accept_memory|tdx_accept_memory|try_accept_one|__tdcall.*|"
                      r"tdx_enc_status_change.*|__tdx_.*)$")
# Allocators between a caller and accept_memory (mm/memblock.c, mm/page_alloc.c, mm/mm_init.c, mm/slub.c in 6.12):
# the path an accept took, not who asked for the memory.
ALLOCATOR = re.compile(r"^(memblock_.*|__memblock_.*|accept_page|__accept_page|try_to_accept_memory.*|"
                       r"cond_accept_memory|__free_pages_core|__free_pages_memory|memblock_free_pages|"
                       r"free_low_memory_core_early|deferred_init_maxorder|deferred_init_memmap_chunk|"
                       r"deferred_free_.*|padata_do_multithreaded|get_page_from_freelist|prep_new_page|"
                       r"__alloc_pages.*|alloc_pages.*|__alloc_frozen_pages.*|alloc_frozen_pages.*|folio_alloc.*|"
                       r"__folio_alloc.*|vma_alloc_folio.*|alloc_anon_folio|rmqueue.*|__rmqueue.*|"
                       r"__get_free_pages|get_free_pages.*|get_zeroed_page.*|allocate_slab|new_slab|___slab_alloc|"
                       r"__slab_alloc.*|kmem_cache_alloc.*|__kmalloc.*|kmalloc.*|kzalloc.*|kmemdup.*|kstrdup.*|"
                       r"kvmalloc.*|__kvmalloc.*|alloc_slab_page|__do_kmalloc.*|memmap_alloc|"
                       r"__earlyonly_bootmem_alloc|vmemmap_alloc_block.*|__vmalloc.*|vmalloc.*|execmem_alloc)$")
# Where a task's kernel stack begins: nothing above them belongs to the accept.
ENTRY_POINTS = frozenset({"ret_from_fork_asm", "ret_from_fork", "entry_SYSCALL_64", "entry_SYSCALL_64_after_hwframe",
                          "asm_exc_page_fault", "common_startup_64", "x86_64_start_kernel", "x86_64_start_reservations",
                          "start_kernel", "kernel_init", "rest_init"})
# CALL through memory or a register (FF /2), by length: what an indirect call compiles to without retpolines
INDIRECT_CALLS = ((6, b"\xff\x15"), (2, b"\xff\xd0"), (2, b"\xff\xd1"), (2, b"\xff\xd2"), (2, b"\xff\xd3"),
                  (3, b"\x41\xff\xd3"), (3, b"\xff\x55"), (3, b"\xff\x50"))
# with retpolines (Debian's kernels), an indirect call is a direct one to a thunk (arch/x86/lib/retpoline.S)
INDIRECT_THUNKS = ("__x86_indirect_thunk_", "__x86_indirect_call_thunk_", "__x86_indirect_its_thunk_")


@dataclass
class KernelPhase:
    name: str
    symbol: str  # where it starts ("" for the first)
    start_ns: int | None = None  # virtual clock at its start (None: never reached)
    tdcalls: int = 0  # within the phase, every leaf
    accept_tdcalls: int = 0  # TDG.MEM.PAGE.ACCEPT, whatever its status
    accepted_bytes: int = 0
    virtual_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "symbol": self.symbol, "start_ns": self.start_ns, "virtual_ns": self.virtual_ns,
                "tdcalls": self.tdcalls, "accept_tdcalls": self.accept_tdcalls,
                "accepted_bytes": self.accepted_bytes}


@dataclass
class AcceptCaller:
    function: str  # who wanted the memory (see the module doc)
    path: str  # the allocator it went through ("" when it called accept_memory itself)
    accepted_bytes: int = 0
    tdcalls: int = 0  # successful TDG.MEM.PAGE.ACCEPTs
    phases: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"function": self.function, "path": self.path, "accepted_bytes": self.accepted_bytes,
                "tdcalls": self.tdcalls, "phases": self.phases}


@dataclass
class KernelProgress:
    """What KernelRun.progress holds: phases in order, the accepts by caller (most bytes first), and notes
    (where the symbols came from, a KASLR slide)."""

    phases: list[KernelPhase]
    by_function: list[AcceptCaller]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"phases": [p.as_dict() for p in self.phases],
                "accepts_by_function": [c.as_dict() for c in self.by_function], "notes": self.notes}

    def lines(self, top: int = 12) -> list[str]:
        """The text report's lines: each phase, then the callers with the most bytes."""
        out = [f"  {note}" for note in self.notes if note]
        if self.phases:
            out.append("  kernel phases (virtual time at start, its length, TDCALLs, accepts):")
        for p in self.phases:
            if p.start_ns is None:
                out.append(f"    {p.name:<13} not reached ({p.symbol})")
                continue
            out.append(f"    {p.name:<13} at {format_ns(p.start_ns):>10}, {format_ns(p.virtual_ns):>10}: "
                       f"{p.tdcalls:>7} TDCALLs, {human_size(p.accepted_bytes):>10} in {p.accept_tdcalls} accepts")
        if self.by_function:
            out.append("  accepted by kernel function (the caller found on its stack, via the allocator):")
        for c in self.by_function[:top]:
            via = f" via {c.path}" if c.path else ""
            out.append(f"    {human_size(c.accepted_bytes):>10} in {c.tdcalls:>5} accepts: {c.function}{via} "
                       f"[{', '.join(c.phases)}]")
        if len(self.by_function) > top:
            rest = self.by_function[top:]
            out.append(f"    {human_size(sum(c.accepted_bytes for c in rest)):>10} in "
                       f"{sum(c.tdcalls for c in rest):>5} accepts: {len(rest)} other functions")
        return out


def accept_chain(symbols: KernelSymbols, image: bytes, rip: int, words: Sequence[int], slide: int = 0) -> list[str]:
    """The functions of the return addresses among stack words (innermost first) for code stopped at `rip`.

    A candidate is a word in kernel text right after a CALL instruction in `image` (the kernel as loaded, _text at
    its start). From the function at `rip`, each step takes the next candidate whose direct CALL targets the
    function reached so far, skipping the words an older call tree left between the frames; when none does (a
    tail call, a call through a register or a retpoline thunk), the next candidate. Consecutive repeats fold."""
    text = symbols.address("_text") or 0
    found: list[tuple[str, str | None]] = []  # (function, what its CALL targets: None when unknown)
    for word in words:
        address = word - slide
        hit = symbols.function_at(address)
        at = address - text
        if hit is None or hit[1] == 0 or at < 6:
            continue
        if image[at - 5] == 0xE8:
            target = symbols.function_at(address + int.from_bytes(image[at - 4 : at], "little", signed=True))
            if target is None:
                continue
            found.append((hit[0], None if target[0].startswith(INDIRECT_THUNKS) else target[0]))
        elif any(image[at - n : at - n + len(op)] == op for n, op in INDIRECT_CALLS):
            found.append((hit[0], None))
    here = symbols.function_at(rip - slide)
    callee = here[0] if here else ""
    chain: list[str] = []
    i = 0
    while i < len(found):
        i = next((j for j in range(i, len(found)) if found[j][1] == callee), i)
        callee = found[i][0]
        if not chain or chain[-1] != callee:
            chain.append(callee)
        if callee in ENTRY_POINTS:
            break
        i += 1
    return chain


def attribute(chain: Sequence[str]) -> tuple[str, str]:
    """(function, path) for a chain, innermost first (see the module doc)."""
    callers = [f for f in chain if not PLUMBING.match(f)]
    path = next((f for f in callers if ALLOCATOR.match(f)), "")
    asker = next((f for f in callers if not ALLOCATOR.match(f)), "")
    if not asker:  # the outermost function found, plumbing or not
        return (path or (chain[-1] if chain else "(no caller found on the stack)")), ""
    return asker, path if path and callers.index(path) < callers.index(asker) else ""


class KernelProgressWatch:
    """Armed on the machine's vCPUs before the kernel runs (arm), read once it stopped (result)."""

    def __init__(self, machine: Any, symbols: KernelSymbols, image: bytes, slide: int):
        self.machine = machine
        self.symbols = symbols
        self.image = image
        self.slide = slide
        self.notes = [f"kernel symbols: {len(symbols):,} from its kallsyms ({symbols.layout} offsets)"]
        if self.slide:
            self.notes.append(f"the kernel runs {self.slide:+#x} from its link address (KASLR): symbols moved")
        self.phases = [KernelPhase(BEFORE_PHASES, "")]
        self._marks: list[tuple[int, int, int, int]] = []  # per phase start: (ns, tdcalls, accept TDCALLs, bytes)
        self._hooks: list[tuple[Any, int]] = []
        self._accepted = 0
        self._callers: dict[tuple[str, str], AcceptCaller] = {}
        self._next = 0

    def arm(self) -> None:
        self._marks.append(self._counts(self.machine.vcpus[0]))
        self.phases[0].start_ns = self._marks[0][0]
        for v in self.machine.vcpus:
            v.on_kernel_accept = self._on_accept
        self._arm_next()

    def _arm_next(self) -> None:
        for uc, handle in self._hooks:
            uc.hook_del(handle)
        self._hooks = []
        while self._next < len(PHASE_ENTRIES):
            name, symbol = PHASE_ENTRIES[self._next]
            address = self.symbols.address(symbol)
            if address is not None:
                address += self.slide
                for v in self.machine.vcpus:
                    self._hooks.append((v.uc, v.uc.hook_add(UC_HOOK_CODE, self._on_entry, v, address, address)))
                return
            self.notes.append(f"phase {name}: no {symbol} in this kernel's symbols")
            self._next += 1

    def _on_entry(self, _uc: Any, _address: int, _size: int, vcpu: Any) -> None:
        name, symbol = PHASE_ENTRIES[self._next]
        self.phases.append(KernelPhase(name, symbol))
        self._marks.append(self._counts(vcpu))
        self.phases[-1].start_ns = self._marks[-1][0]
        self._next += 1
        self._arm_next()

    def _counts(self, vcpu: Any) -> tuple[int, int, int, int]:
        vcpu.clock.sync(int(vcpu.uc.reg_read(X.UC_X86_REG_RIP)))  # charge the instructions run up to here
        tdx = self.machine.tdx
        tdcalls = sum(sum(c.values()) for c in self.machine.dispatcher.tdcall_counts())
        accepts = sum(n for (actor, _), n in tdx.accept_tdcalls.items() if actor.startswith("linux"))
        return max(tdx.clocks_ns), tdcalls, accepts, self._accepted

    def _on_accept(self, vcpu: Any, _gpa: int, size: int) -> None:
        self._accepted += size
        rsp = int(vcpu.uc.reg_read(X.UC_X86_REG_RSP))
        # up to the end of the stack's THREAD_SIZE-aligned block: the task's stack ends there
        span = min(STACK_SCAN_BYTES, STACK_SCAN_BYTES - rsp % STACK_SCAN_BYTES) & ~7
        words: list[int] = []
        try:
            raw = read_virt(vcpu.uc, rsp, span)
            words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        except (GuestFault, UcError):  # an unmapped stack page: no chain, the fallback names it
            words = []
        rip = int(vcpu.uc.reg_read(X.UC_X86_REG_RIP))
        function, path = attribute(accept_chain(self.symbols, self.image, rip, words, self.slide))
        caller = self._callers.setdefault((function, path), AcceptCaller(function, path))
        caller.accepted_bytes += size
        caller.tdcalls += 1
        phase = self.phases[-1].name
        if phase not in caller.phases:
            caller.phases.append(phase)

    def result(self) -> KernelProgress:
        for uc, handle in self._hooks:
            uc.hook_del(handle)
        self._hooks = []
        for v in self.machine.vcpus:
            v.on_kernel_accept = None
        end = self._counts(self.machine.vcpus[0])
        for phase, start, stop in zip(self.phases, self._marks, [*self._marks[1:], end], strict=True):
            phase.virtual_ns = stop[0] - start[0]
            phase.tdcalls = stop[1] - start[1]
            phase.accept_tdcalls = stop[2] - start[2]
            phase.accepted_bytes = stop[3] - start[3]
        base = self._marks[0][0]
        for phase in self.phases:
            phase.start_ns = None if phase.start_ns is None else phase.start_ns - base
        reached = {p.name for p in self.phases}
        phases = self.phases + [KernelPhase(name, symbol) for name, symbol in PHASE_ENTRIES if name not in reached]
        by_function = sorted(self._callers.values(), key=lambda c: (-c.accepted_bytes, c.function))
        return KernelProgress(phases, by_function, self.notes)


def kernel_progress_watch(machine: Any, vcpu: int, image: bytes, text: int, slide: int | None = None
                          ) -> tuple[KernelProgressWatch | None, str]:
    """A watch for the kernel about to run on `vcpu` from its entry (RIP now), with the symbols of its image as
    loaded (`text`: the link address of its first byte); (None, why) when the image has no readable kallsyms.
    `slide`: the KASLR slide when the caller knows it (a run entering at the stub's jump, in the identity map,
    shows none of it: the Python firmware's --run-kernel with nokaslr passes 0); None: found from the entry."""
    if not image:
        return None, "no kernel phases: the handoff does not say where the kernel was loaded"
    try:
        symbols = read_kallsyms(image, load_vaddr=text)
    except InputError as exc:
        return None, f"no kernel phases: {exc}"
    uc = machine.vcpus[vcpu].uc
    if slide is None:
        slide = kaslr_slide(symbols, image, int(uc.reg_read(X.UC_X86_REG_RIP)), lambda va, n: read_virt(uc, va, n))
    if slide is None:
        return None, "no kernel phases: the code at the kernel's entry is nowhere in its image (KASLR?)"
    return KernelProgressWatch(machine, symbols, image, slide), ""


def kaslr_slide(symbols: KernelSymbols, image: bytes, rip: int, read: Callable[[int, int], bytes]) -> int | None:
    """How far the running kernel is from its link address: the code at `rip` (the first instruction run in its
    text mapping, in common_startup_64) found in the image at rip - slide, for the slides KASLR can choose
    (multiples of CONFIG_PHYSICAL_ALIGN, 2 MiB, within the 1 GiB KERNEL_IMAGE_SIZE). None when none fits."""
    text = symbols.address("_text") or 0
    try:
        code = read(rip, 32)
    except (GuestFault, UcError):
        return None
    for slide in range(0, 1 << 30, 2 << 20):
        at = rip - slide - text
        if at < 0:
            break
        if image[at : at + len(code)] == code:
            return slide
    return None
