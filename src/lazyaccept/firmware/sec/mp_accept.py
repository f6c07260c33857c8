"""Parallel up-front accept exactly as edk2's SEC does it (OvmfPkg/IntelTdx/TdxHelperLib/SecTdxHelper.c).

- BspAcceptMemoryResourceRange: the BSP accepts a range as 4K head up to 2 MiB, the 2M middle when more than
  2 MiB remains (`TotalLength > SIZE_2MB`), the 4K tail.
- MpAcceptMemoryResourceRange: the BSP accepts an unaligned head; a remainder of at most 32 MiB
  (ACCEPT_CHUNK_SIZE) the BSP accepts alone; otherwise the APs are woken through the mailbox (AcceptPages)
  and CPU i accepts the 32 MiB chunks at start + i*32MiB + k*N*32MiB in 2M pages (BspApAcceptMemoryResourceRange).
- The striped loop takes MIN(32MiB, end - addr) / 2MiB pages per chunk, so a tail shorter than 2 MiB at the end
  of a range is never accepted, yet TransferTdxHobList still reports the whole HOB as system memory (edk2 up to
  edk2-stable202508). From b15f98e68f (edk2-stable202511) CPU 0 accepts that tail in 4K pages. Which one runs is
  the edk2 profile's (`accept_tail`); the tails left pending are recorded in the outcome.

Per-CPU shares are computed in closed form: chunks that fall inside one run of equal pages cost the same, so a
4 TiB TD's 131,072 chunks cost one representative accept per run, never a Python loop per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyaccept.records import Actor
from lazyaccept.tdx.module import AcceptResult, AcceptStats, TdxModule, edk2_accept_split
from lazyaccept.units import PAGE_2M, MiB, align_down, align_up

ACCEPT_CHUNK_SIZE = 32 * MiB
AP_STACK_SIZE = 16 * 1024


def aps_stack_size(n_cpus: int) -> int:
    """APS_STACK_SIZE(CpusNum): ALIGN_VALUE(CpusNum * 16 KiB, 2 MiB)."""
    return align_up(n_cpus * AP_STACK_SIZE, PAGE_2M)


@dataclass
class MpAcceptOutcome:
    stats: AcceptStats = field(default_factory=AcceptStats)
    dropped_tails: list[tuple[int, int]] = field(default_factory=list)  # sub-2 MiB tails left pending
    failed: AcceptResult | None = None


class MpAccepter:
    """Accepts ranges the way SEC's BSP and APs do, charging each vCPU's clock."""

    def __init__(self, tdx: TdxModule, n_cpus: int, actor: str = Actor.SEC, *, accept_tail: bool = True):
        self.tdx = tdx
        self.n = n_cpus
        self.actor = actor
        self.accept_tail = accept_tail  # b15f98e68f
        self.outcome = MpAcceptOutcome()

    def bsp_accept(self, start: int, end: int) -> None:
        """BspAcceptMemoryResourceRange on CPU 0 (the same head/middle/tail split as TdxDxe)."""
        for s, count, page_size in edk2_accept_split(start, end - start):
            if self.outcome.failed is not None:
                return  # SEC stops at a failed accept (edk2: ASSERT, CpuDeadLoop)
            self._record(self.tdx.accept_pages(s, count, page_size, vcpu=0, actor=self.actor))

    def mp_accept(self, start: int, end: int, *, hob_end: bool = True) -> None:
        """MpAcceptMemoryResourceRange (or the BSP alone with one vCPU). hob_end: `end` is a TD HOB range's end,
        as upstream's always is; a policy's own cut (not upstream) gets its tail accepted whatever the profile."""
        if end <= start or self.outcome.failed is not None:
            return
        if self.n == 1:
            self.bsp_accept(start, end)
            return
        if start % PAGE_2M:
            head_end = min(align_up(start, PAGE_2M), end)
            self.bsp_accept(start, head_end)
            start = head_end
        if end - start <= 0:
            return
        if end - start <= ACCEPT_CHUNK_SIZE:
            self.bsp_accept(start, end)
            return
        middle_end = align_down(end, PAGE_2M)
        # Only as many vCPUs as there are chunks clear memory at once and share the bandwidth.
        with self.tdx.parallel(min(self.n, -(-(middle_end - start) // ACCEPT_CHUNK_SIZE))):
            self._striped(start, middle_end)
        if middle_end < end:
            if self.accept_tail or not hob_end:
                self.bsp_accept(middle_end, end)  # BspApAcceptMemoryResourceRange, CpuIndex 0 (b15f98e68f)
            else:
                self.outcome.dropped_tails.append((middle_end, end))

    def _striped(self, start: int, end: int) -> None:
        """CPU i takes chunks k = i, i + N, i + 2N, ... of [start, end); per-CPU cost in closed form."""
        n_chunks = -(-(end - start) // ACCEPT_CHUNK_SIZE)
        last_full = (end - start) // ACCEPT_CHUNK_SIZE  # chunks [0, last_full) are whole 32 MiB
        k = 0
        while k < n_chunks and self.outcome.failed is None:
            chunk_start = start + k * ACCEPT_CHUNK_SIZE
            if k >= last_full:
                self._chunk(k, chunk_start, end)
                k += 1
                continue
            # Whole chunks lying inside one run of equal pages (and of RAM) behave identically.
            _, run_end, _ = self.tdx.pages.run_at(chunk_start)
            _, ram_end, _ = self.tdx.ram.run_at(chunk_start)
            k_end = min(last_full, k + max(0, (min(run_end, ram_end) - chunk_start) // ACCEPT_CHUNK_SIZE))
            if k_end - k < 2:
                self._chunk(k, chunk_start, chunk_start + ACCEPT_CHUNK_SIZE)
                k += 1
                continue
            first = self._accept_uncharged(chunk_start, chunk_start + ACCEPT_CHUNK_SIZE)
            rest = (
                self._accept_uncharged(chunk_start + ACCEPT_CHUNK_SIZE, start + k_end * ACCEPT_CHUNK_SIZE)
                if first.ok
                else AcceptResult()
            )
            # OPERAND_BUSY (fault injection) hits the first TDCALL of a call: chunk k, or chunk k + 1 for `rest`;
            # its retries cost that chunk's vCPU and are not part of the per-chunk cost.
            busy_ns = self.tdx.profile.tdcall_ns
            self.tdx.charge(k % self.n, first.busy * busy_ns)
            self.tdx.charge((k + 1) % self.n, rest.busy * busy_ns)
            self.tdx.count_accepts(k % self.n, self.actor, first.busy)
            self.tdx.count_accepts((k + 1) % self.n, self.actor, rest.busy)
            per_chunk_calls = first.tdcalls - first.busy
            per_chunk = first.cost_ns - first.busy * busy_ns
            if not (first.ok and rest.ok):
                self.tdx.charge(k % self.n, per_chunk)
                self.tdx.charge((k + 1) % self.n, rest.cost_ns - rest.busy * busy_ns)
                self.tdx.count_accepts(k % self.n, self.actor, per_chunk_calls)
                self.tdx.count_accepts((k + 1) % self.n, self.actor, rest.tdcalls - rest.busy)
                return  # recorded in outcome.failed; SEC stops there
            if rest.cost_ns - rest.busy * busy_ns != per_chunk * (k_end - k - 1):
                raise AssertionError(f"chunks {k}..{k_end} of a uniform run cost differently")
            for cpu in range(self.n):
                self.tdx.charge(cpu, _count_mod(k, k_end, self.n, cpu) * per_chunk)
                self.tdx.count_accepts(cpu, self.actor, _count_mod(k, k_end, self.n, cpu) * per_chunk_calls)
            k = k_end

    def _chunk(self, k: int, s: int, e: int) -> None:
        res = self.tdx.accept_pages(s, (e - s) // PAGE_2M, PAGE_2M, vcpu=k % self.n, actor=self.actor)
        self._record(res)

    def _accept_uncharged(self, s: int, e: int) -> AcceptResult:
        res = self.tdx.accept_pages(s, (e - s) // PAGE_2M, PAGE_2M, vcpu=None, actor=self.actor)
        self._record(res)
        return res

    def _record(self, res: AcceptResult) -> None:
        self.outcome.stats.add(res)
        if not res.ok and self.outcome.failed is None:
            self.outcome.failed = res


def _count_mod(k0: int, k1: int, n: int, i: int) -> int:
    """How many k in [k0, k1) have k % n == i."""

    def below(k: int) -> int:
        return (k - i + n - 1) // n if k > i else 0

    return below(k1) - below(k0)
