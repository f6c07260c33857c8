"""The Linux model held to the real kernel (issue 16): one TD booted twice by the Python firmware with the same
scenario and so the same handoff, once followed by the Linux model (guest/linux.py) and once by Debian's 6.12
itself (`--run-kernel`, kernel_run.py), then compared field by field as differential.py compares the firmwares.

The real side is read from the kernel's own phases and its accepts by kernel function (guest/kernel_progress.py),
its console (SWIOTLB's "software IO TLB: mapped" line) and /init's first /proc/meminfo reading. The model stops at
the same point: its userspace stand-in (os_ready_bytes) is one page, what /init has taken before it reads meminfo
to within the promo watermark, so its pending memory "at ready" is meminfo's Unaccepted at /init.

A field the model derives from the kernel's own rules is compared exactly; one it lumps into a measured constant
(LinuxConfig: the early memblock allocations, the page-allocator calls made while the watermarks are zero) is
compared within a Bound that says what is lumped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lazyaccept.boot import run_boot
from lazyaccept.boot_report import BootReport, BootScenario
from lazyaccept.differential import Bound, FieldDiff
from lazyaccept.errors import InputError
from lazyaccept.guest.initramfs import parse_meminfo_blocks
from lazyaccept.rangemap import intersect_ranges, minus_ranges
from lazyaccept.records import Actor
from lazyaccept.units import PAGE_4K, GiB, KiB, MiB, human_size

MODEL, REAL = "model", "real"
# The real kernel's phases (kernel_progress.PHASE_ENTRIES) each model phase stands for.
PHASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # field: (the model's phases, the real kernel's phases)
    "accepted.early": (("linux-early",), ("early boot", "start_kernel")),
    "accepted.mm_init": (("linux-mm-init",), ("mm init",)),
    "accepted.initcalls": (("linux-initcalls",), ("kernel_init", "initcalls")),
}
# sparse_init_nid's memmap (mm/sparse.c sparse_buffer_init through memmap_alloc): the kernel functions its accepts
# are found behind on the stack.
MEMMAP_FUNCTIONS = ("sparse_init_nid", "sparse_buffer_init", "sparse_init")
SWIOTLB_LINE = re.compile(r"software IO TLB: mapped \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\]")

_MEMBLOCK = ("the model's small early memblock allocations are one measured lump (misc_memblock_bytes: page "
             "tables, NODE_DATA, the log buffer, ACPI copies), each real one ending on a 2 MiB unit adds a guard "
             "unit")
_PREWMARK = ("the model's page-allocator calls while the watermarks are zero are a measured count per phase "
             "(prewmark_*_calls); each real call accepts one 4 MiB chunk, and how many there are depends on what "
             "the kernel's initcalls allocate")
BOUNDS: dict[str, Bound] = {
    "accepted.early": Bound(8 * MiB, _MEMBLOCK),
    "accepted.mm_init": Bound(8 * MiB, _MEMBLOCK + "; " + _PREWMARK),
    "accepted.initcalls": Bound(16 * MiB, _PREWMARK),
    "accepted.by_init": Bound(24 * MiB, "the sum of the three phases' bounds"),
    "unaccepted_at_init": Bound(24 * MiB, "whole 4 MiB chunks of what the model accepts within its bounds, plus the "
                                           "2 MiB units the real memblock half-accepts in a chunk"),
    "shared.other": Bound(8 * MiB, "the model converts only the bounce buffer; the real kernel also decrypts its "
                                   "atomic DMA pools (kernel/dma/pool.c, 6.12: 128 KiB per GiB of RAM each, at "
                                   "most 4 MiB) and other dma_alloc_coherent memory through MapGPA"),
    "swiotlb.start": Bound(16 * MiB, "the real kernel's other memblock_alloc_low users before mem_init (below "
                                     "4 GiB, top-down) are not modelled"),
}


@dataclass(frozen=True)
class LinuxFacts:
    """What each side accepted, where SWIOTLB's buffer went and what was left pending, at /init."""

    reached_init: str  # "yes", or why not
    phases: dict[str, int]  # field name (PHASES) -> bytes accepted
    memmap: int  # bytes accepted for the memmap
    swiotlb: tuple[int, int] | None  # the bounce buffer [start, end)
    shared: list[tuple[int, int]]  # what Linux converted to shared (TDG.VP.VMCALL<MapGPA>) by /init
    unaccepted: int | None  # bytes pending on the zones' unaccepted lists (meminfo's Unaccepted)
    table: dict[str, Any] | None  # the handoff: the stub's unaccepted table as Linux received it (the report's)

    @property
    def by_init(self) -> int:
        return sum(self.phases.values())


@dataclass
class LinuxDifferential:
    ram: int
    edk2_profile: str
    kernel_release: str = ""
    fields: list[FieldDiff] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.fields)

    def get(self, name: str) -> FieldDiff:
        return next(f for f in self.fields if f.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {"ram_bytes": self.ram, "edk2_profile": self.edk2_profile, "kernel_release": self.kernel_release,
                "ok": self.ok, "wall_s": self.wall_s, "notes": self.notes,
                "fields": [{("model" if k == "python" else k): v for k, v in f.as_dict().items()}
                           for f in self.fields]}


def scenarios(ram: int, initrd: str, cmdline: str, timeout_s: float) -> tuple[BootScenario, BootScenario]:
    """The model's and the real kernel's boot: the same TD (1 vCPU: --run-kernel's), firmware and payload."""
    base = BootScenario(ram=ram, smp=1, initrd=initrd, cmdline=cmdline, log_calls=False, timeout_s=timeout_s)
    return BootScenario(**{**base.__dict__, "os_ready_bytes": PAGE_4K}), BootScenario(
        **{**base.__dict__, "run_kernel": True})


def run_linux_differential(ram: int = 4 * GiB, initrd: str | Path | None = None,
                           cmdline: str = "console=ttyS0 nokaslr", timeout_s: float = 900.0,
                           real: BootReport | None = None) -> LinuxDifferential:
    """Boot the model and the real kernel on the same TD and handoff and compare them. `real`: a --run-kernel
    report of that scenario already run (a test's fixture), used instead of booting again."""
    if initrd is None:
        raise InputError("the Linux differential needs an initramfs whose /init reads /proc/meminfo "
                         "(lazyaccept initramfs --out FILE)")
    model_sc, real_sc = scenarios(ram, str(initrd), cmdline, timeout_s)
    if real is None:
        real = run_boot(real_sc)
    elif not real.scenario.run_kernel or real.scenario.ram != ram:
        raise InputError("the real report given is not a --run-kernel boot of this TD")
    model = run_boot(model_sc)
    out = compare(model_facts(model), real_facts(real))
    out.ram, out.edk2_profile, out.kernel_release = ram, model.edk2_profile, real.kernel_release
    out.wall_s = {MODEL: round(model.wall_s, 2), REAL: round(real.wall_s, 2)}
    return out


def model_facts(rep: BootReport) -> LinuxFacts:
    linux = rep.linux
    if linux is None:
        raise InputError(f"the Linux model did not run after the handoff ({rep.outcome}: {rep.reason})")
    phases = {name: sum(sum(p.accepted.values()) for p in linux.phases if p.name in model)
              for name, (model, _) in PHASES.items()}
    swiotlb = linux.memblock_allocs.get("swiotlb")
    return LinuxFacts(
        reached_init="yes" if rep.os_outcome == "ready" else f"no ({rep.os_outcome})",
        phases=phases,
        memmap=linux.tdx.accepted_by_actor.get(Actor.LINUX_MEMMAP, 0),
        swiotlb=swiotlb,
        # mem_encrypt_init -> swiotlb_update_mem_attributes decrypts the whole buffer (arch/x86/mm/mem_encrypt.c,
        # kernel/dma/swiotlb.c, 6.12): the model's only conversion
        shared=[swiotlb] if swiotlb else [],
        unaccepted=sum(linux.unaccepted_bytes(z) for z in linux.zones),
        table=rep.unaccepted_table,
    )


def real_facts(rep: BootReport) -> LinuxFacts:
    k = rep.kernel
    if k is None or k.run.progress is None:
        raise InputError(f"the real kernel did not run or left no phases ({rep.outcome}: {rep.reason})")
    progress = k.run.progress
    by_phase = {p.name: p.accepted_bytes for p in progress.phases}
    phases = {name: sum(by_phase.get(p, 0) for p in real) for name, (_, real) in PHASES.items()}
    # Accepts from /init on are after its first meminfo reading: not part of "by /init".
    memmap = sum(c.accepted_bytes for c in progress.by_function if c.function in MEMMAP_FUNCTIONS)
    found = SWIOTLB_LINE.search(k.console)
    before = parse_meminfo_blocks(k.console).before
    at_init = next((p for p in progress.phases if p.name == "/init"), None)
    reached = at_init is not None and at_init.start_ns is not None and bool(before)
    return LinuxFacts(
        reached_init="yes" if reached else f"no ({k.outcome}: {k.detail})",
        phases=phases,
        memmap=memmap,
        # swiotlb_print_info prints the pool's start and end, end = start + bytes (kernel/dma/swiotlb.c, 6.12)
        swiotlb=(int(found[1], 16), int(found[2], 16)) if found else None,
        shared=k.run.shared_by_kernel,
        unaccepted=before["Unaccepted"] * KiB if "Unaccepted" in before else None,
        table=rep.unaccepted_table,
    )


def compare(model: LinuxFacts, real: LinuxFacts) -> LinuxDifferential:
    out = LinuxDifferential(0, "")
    add = out.fields.append

    def exact(name: str, a: Any, b: Any, show: Any = str) -> None:
        add(FieldDiff(name, show(a), show(b), a == b))

    def bounded(name: str, a: int | None, b: int | None, show: Any = human_size) -> None:
        if a is None or b is None:
            add(FieldDiff(name, "none" if a is None else show(a), "none" if b is None else show(b), False))
            return
        add(FieldDiff(name, show(a), show(b), a == b, BOUNDS[name], abs(a - b)))

    exact("reached_init", model.reached_init, real.reached_init)
    exact("handoff.unaccepted_table", model.table, real.table, _show_table)
    for name in PHASES:
        bounded(name, model.phases[name], real.phases[name])
    bounded("accepted.by_init", model.by_init, real.by_init)
    exact("memmap", model.memmap, real.memmap, human_size)
    ms, rs = model.swiotlb, real.swiotlb
    exact("swiotlb.size", ms and ms[1] - ms[0], rs and rs[1] - rs[0], lambda v: "none" if v is None else human_size(v))
    bounded("swiotlb.start", ms and ms[0], rs and rs[0], hex)
    # The bounce buffer made shared, wholly (what the model assumes of mem_encrypt_init), and what else was.
    exact("swiotlb.shared", intersect_ranges(model.shared, [ms]) if ms else [],
          intersect_ranges(real.shared, [rs]) if rs else [], _show_ranges)
    bounded("shared.other", _total(minus_ranges(model.shared, [ms] if ms else [])),
            _total(minus_ranges(real.shared, [rs] if rs else [])))
    bounded("unaccepted_at_init", model.unaccepted, real.unaccepted,
            lambda v: f"{v // KiB:,} kB ({human_size(v)})")
    return out


def _total(ranges: list[tuple[int, int]]) -> int:
    return sum(e - s for s, e in ranges)


def _show_ranges(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(f"[{s:#x}, {e:#x})" for s, e in ranges) or "none"


def _show_table(t: dict[str, Any] | None) -> str:
    if t is None:
        return "none"
    return f"at {t['address']:#x}, {human_size(t['set_bytes'])} pending"


def format_table(d: LinuxDifferential) -> str:
    lines = [
        f"TD {human_size(d.ram)}, 1 vCPU, below-4g, Python firmware as {d.edk2_profile}: the Linux model vs "
        f"the real kernel {d.kernel_release or ''} (wall: model {d.wall_s.get(MODEL, 0):.1f} s, "
        f"real {d.wall_s.get(REAL, 0):.1f} s)",
        *(f"note: {n}" for n in d.notes),
        "",
        f"{'field':26} {'model':>24} {'real':>24}  verdict",
    ]
    for f in d.fields:
        lines.append(f"{f.name:26} {f.python:>24} {f.real:>24}  {f.verdict}")
        if not f.equal and f.bound is not None:
            lines.append(f"{'':28}bound {human_size(f.bound.max_bytes)}: {f.bound.reason}")
    lines += ["", "result: " + ("PASS (every field equal or within its bound)" if d.ok else "FAIL")]
    return "\n".join(lines)
