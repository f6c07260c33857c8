"""Workloads on the Linux model: boot to a ready userspace, and fill memory as fast as possible.

Both report virtual time per phase and the bytes accepted by each actor ("stub", "linux-memblock", "linux-memmap",
"linux-buddy", "linux-eager"; "sec" and "vmm" for what the firmware and the VMM did before).

Time is what the TDX module charges for accepting plus the guest's own writes at the host profile's copy rate:
struct page initialisation (64 bytes per 4K page), zeroing of memblock allocations, and for a task's memory one
pass of kernel zeroing (clear_page on the fault) plus the task's own writes. Device probing, decompression and
userspace start-up are not modelled: boot figures are the memory-dependent part of a boot.

Published figures this module is checked against (REFERENCE.md section 7):
- LKML 2024-01-09, Jun Miao, "[PATCH] x86/tdx: Optimize try_accept_memory() to reduce 1GB page accepted failed
  times", Sapphire Rapids, eatmemory 1G..64G, "Before" column: 3414, 3853, 7773, 15479, 31527, 65058, 133379 ms.
  The raw log (github.com/jmiao2018/eatmemory log-tdx.txt) shows the runs in sequence in one boot of a TD with
  MemTotal 100169027584 bytes, each run freeing its memory before the next: a run of S re-uses what the previous
  runs accepted and accepts only the increment (1G, 1G, 2G, 4G, ... 32G). The "Trigger 1G Failed Times" column,
  a cumulative counter, grows by 263302, 542708, 1075852, ... between runs: one try_accept_one(1G) per 4K page
  accepted, so the host mapped private memory at 4K (every 2M accept fell back to 512 4K accepts).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lazyaccept.firmware.dxe.exit import DxePolicy
from lazyaccept.firmware.sec import SecResult, parse_policy, run_sec
from lazyaccept.guest.handoff import STUB_ACTOR, GuestCrash, Handoff, HandoffCheck, check_handoff
from lazyaccept.guest.linux import Linux, LinuxConfig, Phase
from lazyaccept.guest.stub_model import StubConfig, StubResult, run_stub_after_sec
from lazyaccept.tdx.costs import PROFILES, HostProfile
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.td import Td, TdConfig, build_td

DEFAULT_RESIDENT_BYTES = 512 * MiB  # a small distribution userspace plus the kernel's own allocations (assumed)

# LKML 2024-01-09 (see the module docstring): (GiB eaten, ms), "Before" column, and the cumulative
# "Trigger 1G Failed Times" after each run.
PUBLISHED_EATMEMORY_MS = ((1, 3414), (2, 3853), (4, 7773), (8, 15479), (16, 31527), (32, 65058), (64, 133379))
PUBLISHED_EATMEMORY_1G_TRIES = (751824, 1015126, 1557834, 2633686, 4785649, 9087686, 17693366)
# MemTotal 100169027584 bytes = 93.3 GiB: a 96 GiB TD less its memmap (1.5 GiB), SWIOTLB (1 GiB) and kernel.
PUBLISHED_EATMEMORY_TD_BYTES = 96 * GiB

# One free parameter fitted to those seven runs (least squares on seconds, 7911 ns): the cost of the EPT-violation
# exit on each 4K accept. mainline KVM's ~8 us per 4K fault (Dstack PR 1220) gives 2.1 s per GiB
# accepted; the 2024 Sapphire Rapids runs imply ~12 us (3.1 s per GiB).
SPR2024_EXIT_NS = 7_900


def spr2024_profile() -> HostProfile:
    """kvm-4k with the exit cost fitted to the 2024 eatmemory runs (every other cost as kvm-4k)."""
    base = PROFILES["kvm-4k"]
    return replace(
        base,
        name="kvm-4k-spr2024",
        description="kvm-4k with exit_ns fitted to LKML 2024-01-09 eatmemory runs on Sapphire Rapids",
        exit_ns=SPR2024_EXIT_NS,
        sources={**base.sources, "exit_ns": "fitted: LKML 2024-01-09 'x86/tdx: Optimize try_accept_memory()'"},
    )


@dataclass
class GuestRun:
    """A TD built by the VMM, through SEC, DXE and the EFI stub model, with Linux ready to boot on the same TDX
    module: the firmware's end state is the OS's start."""

    td: Td
    sec: SecResult
    handoff: Handoff
    check: HandoffCheck
    linux: Linux
    stub: Phase  # the stub after ExitBootServices


@dataclass
class WorkloadResult:
    name: str
    phases: list[Phase]
    accepted_by_actor: dict[str, int]  # during the workload
    lost_bytes: int = 0  # RAM the kernel never sees (type-15 memory a kernel without support leaves out)
    notes: list[str] = field(default_factory=list)

    @property
    def ns(self) -> int:
        return sum(p.ns for p in self.phases)

    def phase_ns(self, name: str) -> int:
        return sum(p.ns for p in self.phases if p.name == name)


@dataclass
class FillResult:
    bytes: int
    workers: int
    ns: int
    accepted_bytes: int  # newly accepted by the page allocator for this fill
    try_1g_calls: int  # try_accept_one(1G) calls (software rejects plus 1G TDCALLs)
    accepted_by_actor: dict[str, int]


def start_guest(
    ram_size: int,
    vcpus: int = 8,
    *,
    profile: HostProfile | str = "kvm-2m",
    upfront: str = "below-4g",
    kernel: LinuxConfig | None = None,
    accept_all_at_exit: bool = False,
    initrd_bytes: int = 0,
) -> GuestRun:
    """Build the TD, run SEC with an up-front policy, DXE and the 6.12 stub (no loader copies); Linux not yet
    booted. `accept_all_at_exit` is a firmware that accepts everything at ExitBootServices (DxePolicy)."""
    kernel = kernel or LinuxConfig()
    td = build_td(TdConfig(ram_size, vcpus, profile=profile))
    sec = run_sec(td, parse_policy(upfront))
    config = StubConfig(initrd_bytes=initrd_bytes, unaccepted_memory_support=kernel.unaccepted_memory)
    _, stub = run_stub_after_sec(td, sec, config, DxePolicy(accept_all_at_exit=accept_all_at_exit))
    return guest_after_stub(td, sec, stub, kernel)


def guest_after_stub(td: Td, sec: SecResult, stub: StubResult, kernel: LinuxConfig | None = None) -> GuestRun:
    """Linux on the TDX module the firmware and the stub model left (`stub` a run that exited boot services)."""
    if stub.handoff is None:
        raise GuestCrash("panic", f"the stub never reached the kernel: {stub.message}")
    tdx = td.tdx
    accepted: dict[str, int] = {STUB_ACTOR: stub.stub_accepted_bytes} if stub.stub_accepted_bytes else {}
    stub_phase = Phase("stub", stub.after_exit_ns, accepted, list(stub.handoff.notes))
    check = check_handoff(tdx, stub.handoff)
    return GuestRun(td, sec, stub.handoff, check, Linux(tdx, stub.handoff, kernel or LinuxConfig()), stub_phase)


def boot_to_ready(
    ram_size: int,
    vcpus: int = 8,
    *,
    resident_bytes: int = DEFAULT_RESIDENT_BYTES,
    profile: HostProfile | str = "kvm-2m",
    upfront: str = "below-4g",
    kernel: LinuxConfig | None = None,
    accept_all_at_exit: bool = False,
) -> tuple[WorkloadResult, GuestRun]:
    """Boot to a ready userspace holding `resident_bytes` (allocated and written once on the boot CPU).

    Phases: "stub" (the EFI stub's own accepts after ExitBootServices), then Linux's "linux-early",
    "linux-mm-init", "linux-initcalls" and "linux-ready". Firmware time (SEC, DXE) is not included.
    """
    run = start_guest(
        ram_size, vcpus, profile=profile, upfront=upfront, kernel=kernel, accept_all_at_exit=accept_all_at_exit
    )
    return run_to_ready(run, resident_bytes), run


def run_to_ready(run: GuestRun, resident_bytes: int = DEFAULT_RESIDENT_BYTES) -> WorkloadResult:
    """Linux from the run's handoff to a ready userspace (see boot_to_ready)."""
    tdx = run.td.tdx
    acc0 = _minus(dict(tdx.accepted_by_actor), run.stub.accepted)
    linux = run.linux
    linux.boot()
    with linux.phase("linux-ready"):
        linux.alloc(resident_bytes, workers=1, touch_passes=1)
    notes = list(run.handoff.notes) + linux.notes
    return WorkloadResult(
        "boot-to-ready",
        [run.stub, *linux.phases],
        _delta(tdx.accepted_by_actor, acc0),
        run.check.lost_bytes,
        notes,
    )


def fill_memory(linux: Linux, n_bytes: int, workers: int = 1, *, free_after: bool = True) -> FillResult:
    """Allocate and write n_bytes as fast as possible on `workers` vCPUs (each its share), then free it."""
    tdx = linux.tdx
    acc0 = dict(tdx.accepted_by_actor)
    tries0 = linux.counters.loop_steps
    with linux.phase("fill") as ph:
        alloc = linux.alloc(n_bytes, workers=workers, touch_passes=2)
    if free_after:
        linux.free(alloc)
    tries = linux.counters.loop_steps - tries0
    return FillResult(n_bytes, workers, ph.ns, alloc.accepted_bytes, tries, _delta(tdx.accepted_by_actor, acc0))



PUBLISHED_EATMEMORY_GIB = tuple(size for size, _ in PUBLISHED_EATMEMORY_MS)

def eatmemory_sequence(
    profile: HostProfile | str | None = None, sizes_gib=PUBLISHED_EATMEMORY_GIB, vcpus: int = 8
) -> tuple[list[FillResult], GuestRun]:
    """The published runs: a 96 GiB TD booted once, then eatmemory of each size in turn on one CPU, each freeing
    its memory before the next (as in the raw log)."""
    run = start_guest(PUBLISHED_EATMEMORY_TD_BYTES, vcpus, profile=profile or spr2024_profile())
    run.linux.boot()
    with run.linux.phase("linux-ready"):
        run.linux.alloc(DEFAULT_RESIDENT_BYTES, touch_passes=1)
    return [fill_memory(run.linux, s * GiB, 1) for s in sizes_gib], run


def _delta(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


def _minus(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: v - b.get(k, 0) for k, v in a.items()}
