"""The TDX module model: the ground truth of every guest-physical page of a TD (its Secure EPT).

Each 4K page is NOT_PRESENT (never mapped), PENDING (AUGed, awaiting the guest's accept), ACCEPTED (ADDed at
build time or accepted by the guest) or REMOVED (the VMM took it away), and sits in a Secure-EPT leaf of level
0 (4K) or 1 (2M). States are RangeMaps, so a 4 TiB TD costs what its runs cost.

Two guest-side APIs with one semantics:
- `tdcall()` / `accept_page()`: one TDCALL, as emulated code issues it (REFERENCE.md section 3);
- `accept_pages()` / `accept_range()`: the exact result and cost of the TDCALL sequence edk2's TdAcceptPages
  (MdePkg/Library/TdxLib/AcceptPages.c) and TdxDxe's AcceptMemory (OvmfPkg/TdxDxe/TdxDxe.c) issue for a range,
  computed per run of equal pages, never per page.

A TDCALL that faults because the VMM has not mapped the page (EPT violation with an ACCEPT exit qualification)
is modelled as KVM handles it: the VMM AUGs (or DEMOTEs) and the guest's TDCALL runs again; the guest sees one
TDCALL whose cost includes the exit. Costs go to the issuing vCPU's virtual clock (tdx.costs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import NamedTuple

from lazyaccept.errors import LazyAcceptError
from lazyaccept.rangemap import RangeMap
from lazyaccept.records import Actor
from lazyaccept.spec.tdx import (
    ACCEPT_BUSY,
    ACCEPT_RCX_GPA_MASK,
    ACCEPT_RCX_LEVEL_MASK,
    ACCEPT_RCX_RESERVED_MASK,
    TD_ATTR_SEPT_VE_DISABLE,
    VP_INFO_TDG_SYS_RD_AVAILABLE,
    OperandId,
    PageLevel,
    TdcallLeaf,
    TdxStatus,
)
from lazyaccept.tdx.costs import DEFAULT_PROFILE, HostProfile, profile_by_name
from lazyaccept.tdx.measurement import TdMeasurement
from lazyaccept.tdx.memory import GuestMemory
from lazyaccept.tdx.status import is_error, status_class
from lazyaccept.units import PAGE_2M, PAGE_4K, align_down, align_up

# edk2 TdAcceptPages retries OPERAND_BUSY this many times (TDX_ACCEPTPAGE_MAX_RETRIED) before failing.
ACCEPT_MAX_BUSY_RETRIES = 3
VMM_ACTOR = Actor.VMM


class PageState(IntEnum):
    NOT_PRESENT = 0
    PENDING = 1
    ACCEPTED = 2
    REMOVED = 3


class Page(NamedTuple):
    """The value of a run of pages in the Secure EPT."""

    state: PageState
    level: int = 0  # Secure-EPT leaf level: 0 = 4K, 1 = 2M
    actor: str = ""  # who accepted it ("vmm" for TDH.MEM.PAGE.ADD)
    reaugd: bool = False  # AUGed again after a REMOVE: accepting it silently yields a zeroed page
    converted: bool = False  # REMOVED because the guest converted it to shared (MapGPA): a later accept is expected


ABSENT = Page(PageState.NOT_PRESENT)


class TdTerminated(Exception):
    """The TD was terminated; the record is on `TdxModule.termination`. Not a user error: a run outcome."""

    def __init__(self, termination: Termination):
        self.termination = termination
        super().__init__(str(termination))


class TdxError(LazyAcceptError):
    """A VMM-side operation the TDX module refuses (e.g. ADD over a present page)."""


@dataclass(frozen=True)
class Termination:
    gpa: int
    access: str  # "read", "write", "execute", "accept"
    actor: str
    vcpu: int | None  # None: an accept charged to no one vCPU (the parallel SEC accept)
    reason: str
    rip: int | None = None

    def __str__(self) -> str:
        where = f" at RIP {self.rip:#x}" if self.rip is not None else ""
        who = f"{self.actor} (vCPU {self.vcpu if self.vcpu is not None else 'unassigned'}){where}"
        return f"TD terminated: {self.access} of GPA {self.gpa:#x} by {who}: {self.reason}"


@dataclass
class Incident:
    """A double accept: PAGE_ALREADY_ACCEPTED, or an accept of a page the VMM removed and AUGed again."""

    kind: str  # "already-accepted" | "reaccept-after-remove"
    start: int
    end: int
    actor: str

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class AcceptStats:
    """Counters of guest accept activity; the same fields for one TDCALL, a range call, or a whole run."""

    tdcalls: int = 0
    exits: int = 0
    augs_4k: int = 0
    augs_2m: int = 0
    demotes: int = 0
    mismatches: int = 0
    already_accepted: int = 0
    busy: int = 0
    accepted_4k: int = 0
    accepted_2m: int = 0
    cost_ns: int = 0

    @property
    def accepted_bytes(self) -> int:
        return self.accepted_4k * PAGE_4K + self.accepted_2m * PAGE_2M

    def add(self, other: AcceptStats, times: int = 1) -> None:
        mine, theirs = self.__dict__, other.__dict__
        for name in _STAT_FIELDS:
            mine[name] += times * theirs[name]

    def as_dict(self) -> dict:
        d = {name: getattr(self, name) for name in _STAT_FIELDS}
        d["accepted_bytes"] = self.accepted_bytes
        return d


_STAT_FIELDS = tuple(f.name for f in fields(AcceptStats))


@dataclass
class AcceptResult(AcceptStats):
    """Outcome of a TDCALL sequence: `status` is SUCCESS or the status of the call that stopped it."""

    status: int = TdxStatus.SUCCESS
    failed_gpa: int | None = None

    @property
    def ok(self) -> bool:
        return self.failed_gpa is None


@dataclass
class VmmStats:
    adds_4k: int = 0
    measured_4k: int = 0
    augs_4k: int = 0
    augs_2m: int = 0
    demotes: int = 0
    removes_4k: int = 0
    build_ns: int = 0


class TdxModule:
    """The Secure EPT of one TD, the VMM operations on it, and the guest's TDCALLs."""

    def __init__(
        self,
        profile: HostProfile | str = DEFAULT_PROFILE,
        num_vcpus: int = 1,
        gpa_width: int = 52,
        attributes: int = TD_ATTR_SEPT_VE_DISABLE,
    ):
        if num_vcpus < 1:
            raise TdxError(f"a TD needs at least one vCPU, got {num_vcpus}")
        if gpa_width not in (48, 52):
            raise TdxError(f"GPA width must be 48 or 52, got {gpa_width}")
        self.profile = profile_by_name(profile) if isinstance(profile, str) else profile
        self.num_vcpus = num_vcpus
        self.gpa_width = gpa_width
        self.attributes = attributes
        # The top GPA bit selects shared memory: private GPAs lie below it.
        self.private_limit = 1 << (gpa_width - 1)
        self.pages: RangeMap[Page] = RangeMap(ABSENT, limit=self.private_limit)
        self.ram: RangeMap[bool] = RangeMap(False, limit=self.private_limit)
        self.clocks_ns = [0] * num_vcpus
        self.stats = AcceptStats()
        self.vmm = VmmStats()
        self.accepted_by_actor: dict[str, int] = {}
        # TDG.MEM.PAGE.ACCEPT calls by (actor, vCPU), whatever their status (a caller that charged vcpu=None
        # books its share with count_accepts); the differential test compares them between firmwares.
        self.accept_tdcalls: dict[tuple[str, int], int] = {}
        self.removed_accepted: list[tuple[int, int, str]] = []  # accepted pages removed: (start, end, accepter)
        self.incidents: list[Incident] = []
        self.measured: list[tuple[int, int]] = []
        self.measurement = TdMeasurement()
        self.termination: Termination | None = None
        self.memory = GuestMemory(self)
        self._busy_pending = 0
        self._concurrency = 1
        self._recent_incidents: list[str] = []
        self._clear_cache: dict[tuple[int, int], int] = {}

    # ----------------------------------------------------------------- VMM side

    def add_ram(self, start: int, size: int) -> None:
        """Declare guest RAM the VMM can back (a KVM memslot with private memory). Pages start NOT_PRESENT."""
        self._check_private(start, size, "RAM")
        self.ram.set(start, start + size, True)

    def add(self, start: int, size: int, *, data: bytes = b"", measured: bool = False) -> None:
        """TDH.MEM.PAGE.ADD (4K each) at build time: the pages are accepted and hold `data`."""
        self._check_private(start, size, "ADD")
        if self.measurement.finalized:
            raise TdxError(f"ADD at {start:#x} after TDH.MR.FINALIZE")
        if len(data) > size:
            raise TdxError(f"ADD at {start:#x}: {len(data)} bytes of data for a {size:#x}-byte range")
        if not self.pages.all_equal(start, start + size, lambda p: p.state == PageState.NOT_PRESENT):
            raise TdxError(f"ADD over present pages in [{start:#x}, {start + size:#x})")
        self.ram.set(start, start + size, True)
        self.pages.set(start, start + size, Page(PageState.ACCEPTED, 0, VMM_ACTOR))
        n = size // PAGE_4K
        self.vmm.adds_4k += n
        self.vmm.build_ns += n * self.profile.add_4k_ns
        if measured:
            self.vmm.measured_4k += n
            self.vmm.build_ns += n * self.profile.mr_extend_4k_ns
            self.measured.append((start, size))
        self.accepted_by_actor[VMM_ACTOR] = self.accepted_by_actor.get(VMM_ACTOR, 0) + size
        if data:
            self.memory.vmm_write(start, data)
        # MRTD: every ADDed page, and the bytes of the measured ones as the module copied them.
        self.measurement.page_add(start, size, self.memory.backing.read(start, size) if measured else None)

    def finalize(self) -> None:
        """TDH.MR.FINALIZE: MRTD is fixed and the TD can run (measurement.mrtd hashes it when first read)."""
        self.measurement.finalize()

    def aug(self, start: int, size: int, level: int = 0) -> None:
        """TDH.MEM.PAGE.AUG: map NOT_PRESENT or REMOVED RAM as PENDING at the given level."""
        self._check_private(start, size, "AUG", align=PAGE_2M if level == 1 else PAGE_4K)
        if level not in (0, 1):
            raise TdxError(f"AUG level must be 0 (4K) or 1 (2M), got {level}")
        if self.ram.total(start, start + size, lambda r: not r):
            raise TdxError(f"AUG outside guest RAM in [{start:#x}, {start + size:#x})")
        if not self.pages.all_equal(
            start, start + size, lambda p: p.state in (PageState.NOT_PRESENT, PageState.REMOVED)
        ):
            raise TdxError(f"AUG over mapped pages in [{start:#x}, {start + size:#x})")
        if level == 0:
            self._split_2m_empty(start, start + size)
        elif any(self._classify_2m(b) != "fresh" for b in range(start, start + size, PAGE_2M)):
            raise TdxError(f"AUG at 2M over a 4K page table in [{start:#x}, {start + size:#x})")
        self._map_pending(start, start + size, level)

    def demote(self, gpa: int) -> None:
        """TDH.MEM.PAGE.DEMOTE: split the 2M leaf containing gpa into 512 4K leaves of the same state."""
        base = align_down(gpa, PAGE_2M)
        page = self.pages.get(base)
        if page.level != 1 or page.state not in (PageState.PENDING, PageState.ACCEPTED):
            raise TdxError(f"DEMOTE at {gpa:#x}: no 2M leaf there")
        self._demote_leaf(base)

    def remove(self, start: int, size: int, *, converted: bool = False) -> None:
        """TDH.MEM.PAGE.REMOVE of present pages (a partially covered 2M leaf is demoted first). `converted`: the
        guest asked for it (TDG.VP.VMCALL<MapGPA> to shared), so accepting the page again after its conversion
        back to private is the protocol, not a VMM swapping memory under the guest."""
        self._check_private(start, size, "REMOVE")
        end = start + size
        for edge in (start, end):
            base = align_down(edge, PAGE_2M)
            leaf = self.pages.get(base)
            if base != edge and leaf.level == 1 and leaf.state in (PageState.PENDING, PageState.ACCEPTED):
                self._demote_leaf(base)  # the removal covers part of this 2M leaf
        present = self.pages.total(start, end, lambda p: p.state in (PageState.PENDING, PageState.ACCEPTED))
        accepted = [(s, e, p.actor) for s, e, p in self.pages.runs(start, end) if p.state == PageState.ACCEPTED]
        self.removed_accepted += accepted
        self.pages.update(
            start,
            end,
            lambda p: Page(PageState.REMOVED, p.level, converted=converted)
            if p.state in (PageState.PENDING, PageState.ACCEPTED)
            else p,
        )
        self.vmm.removes_4k += present // PAGE_4K
        self.memory.backing.zero(start, end)

    def inject_busy(self, count: int = 1) -> None:
        """Fault injection: the next `count` ACCEPT TDCALLs find their Secure-EPT entry locked (by another vCPU's
        ACCEPT, or with the VMM's host-priority bit set) and return ACCEPT_BUSY, the same status in both cases."""
        self._busy_pending += count

    @contextmanager
    def parallel(self, concurrency: int) -> Iterator[None]:
        """Within the block, `concurrency` vCPUs clear memory at once and share the bandwidth cap."""
        saved, self._concurrency = self._concurrency, max(1, concurrency)
        try:
            yield
        finally:
            self._concurrency = saved

    # ----------------------------------------------------------------- guest side: one TDCALL

    def tdcall(self, leaf: int, rcx: int = 0, *, vcpu: int = 0, actor: str = "guest") -> dict[str, int]:
        """One TDCALL; returns the output registers (RAX = status)."""
        if leaf == TdcallLeaf.MEM_PAGE_ACCEPT:
            return {"rax": self.accept_rcx(rcx, vcpu=vcpu, actor=actor)}
        self.charge_tdcall(vcpu)
        if leaf == TdcallLeaf.VP_INFO:
            return {"rax": TdxStatus.SUCCESS, **self.vp_info(vcpu)}
        # An unknown leaf number is an invalid RAX operand.
        return {"rax": TdxStatus.OPERAND_INVALID | OperandId.RAX}

    def charge_tdcall(self, vcpu: int) -> None:
        """The cost of one TDCALL that is not an accept, on the vCPU's clock."""
        self._charge(vcpu, AcceptStats(cost_ns=self.profile.tdcall_ns))

    def vp_info(self, vcpu: int) -> dict[str, int]:
        """TDG.VP.INFO's output registers (src/td_dispatcher/vm_exits/tdg_vp_info.c, TDX_1.5.01): RCX the GPA
        width (52 with TDCS GPAW set, else 48), RDX the TD attributes, R8 num_vcpus | max_vcpus << 32 (QEMU
        initializes every vCPU it declares), R9 the vCPU index, R10 tdg_commands_available_t (TDG.SYS.RD is
        available), R11 reserved, written 0."""
        return {
            "rcx": self.gpa_width,
            "rdx": self.attributes,
            "r8": self.num_vcpus | (self.num_vcpus << 32),
            "r9": vcpu,
            "r10": VP_INFO_TDG_SYS_RD_AVAILABLE,
            "r11": 0,
        }

    def accept_page(self, gpa: int, level: int = 0, *, vcpu: int = 0, actor: str = "guest") -> int:
        """TDG.MEM.PAGE.ACCEPT of one page; returns the full status."""
        return self.accept_rcx(gpa | level, vcpu=vcpu, actor=actor)

    def accept_rcx(self, rcx: int, *, vcpu: int = 0, actor: str = "guest") -> int:
        """TDG.MEM.PAGE.ACCEPT with its raw RCX operand; returns the full status."""
        stats = self.stats  # counted in place: one TDCALL is the hot path of emulated code
        before = stats.cost_ns
        key = (actor, vcpu)
        self.accept_tdcalls[key] = self.accept_tdcalls.get(key, 0) + 1
        try:
            return self._accept_one_rcx(rcx, vcpu, actor, stats)
        finally:
            self.clocks_ns[vcpu] += stats.cost_ns - before

    def _accept_one_rcx(self, rcx: int, vcpu: int, actor: str, res: AcceptStats) -> int:
        self._require_alive()
        res.tdcalls += 1
        res.cost_ns += self.profile.tdcall_ns
        if self._busy_pending:
            self._busy_pending -= 1
            res.busy += 1
            return ACCEPT_BUSY
        level = rcx & ACCEPT_RCX_LEVEL_MASK
        gpa = rcx & ~(ACCEPT_RCX_RESERVED_MASK | ACCEPT_RCX_LEVEL_MASK) & ((1 << 64) - 1)
        # Current TDX modules accept 4K and 2M only; 1G, reserved bits, misalignment and GPAs beyond the
        # private range are all OPERAND_INVALID on RCX.
        if rcx & ACCEPT_RCX_RESERVED_MASK or level > PageLevel.L2M or gpa % (PAGE_2M if level else PAGE_4K):
            return TdxStatus.OPERAND_INVALID | OperandId.RCX
        if gpa + (PAGE_2M if level else PAGE_4K) > self.private_limit:
            return TdxStatus.OPERAND_INVALID | OperandId.RCX
        return self._accept_2m(gpa, vcpu, actor, res) if level else self._accept_4k(gpa, vcpu, actor, res)

    def _accept_4k(self, gpa: int, vcpu: int, actor: str, res: AcceptStats) -> int:
        p = self.pages.get(gpa)
        if p.state == PageState.ACCEPTED:
            self._incident("already-accepted", gpa, gpa + PAGE_4K, actor)
            res.already_accepted += 1
            return TdxStatus.PAGE_ALREADY_ACCEPTED | p.level
        if p.state == PageState.PENDING and p.level == 1:
            # A 4K accept inside a pending 2M leaf: EPT-violation exit, the VMM demotes, the guest retries.
            res.exits += 1
            res.demotes += 1
            res.cost_ns += self.profile.exit_ns + self.profile.demote_ns
            self._demote_leaf(align_down(gpa, PAGE_2M))
            p = self.pages.get(gpa)
        if p.state in (PageState.NOT_PRESENT, PageState.REMOVED):
            # The page goes straight from unmapped to accepted: the VMM's AUG is charged, not stored.
            p = Page(PageState.PENDING, 0, "", self._fault_aug_4k(gpa, vcpu, actor, res, map_page=False, page=p))
        self._finish_accept(gpa, gpa + PAGE_4K, 0, p, actor, res)
        return TdxStatus.SUCCESS

    def _accept_2m(self, gpa: int, vcpu: int | None, actor: str, res: AcceptStats) -> int:
        kind = self._classify_2m(gpa)
        if kind == "fresh":
            if self.profile.max_private_level >= 1 and self.ram.all_equal(gpa, gpa + PAGE_2M, bool):
                res.exits += 1
                res.augs_2m += 1
                res.cost_ns += self.profile.exit_ns + self.profile.aug_2m_ns
                self._map_pending(gpa, gpa + PAGE_2M, 1)
                kind = "leaf-pending"
            else:
                # The host maps the faulting 4K page only; the re-executed 2M accept finds a 4K table.
                self._fault_aug_4k(gpa, vcpu, actor, res)
                kind = "table"
        if kind == "leaf-accepted":
            self._incident("already-accepted", gpa, gpa + PAGE_2M, actor)
            res.already_accepted += 1
            return TdxStatus.PAGE_ALREADY_ACCEPTED | 1
        if kind == "table":
            res.mismatches += 1
            return TdxStatus.PAGE_SIZE_MISMATCH | 1
        self._finish_accept(gpa, gpa + PAGE_2M, 1, self.pages.get(gpa), actor, res)
        return TdxStatus.SUCCESS

    def _classify_2m(self, base: int) -> str:
        """What a 2M ACCEPT's Secure-EPT walk finds at the 2M entry of [base, base + 2M)."""
        runs = list(self.pages.runs(base, base + PAGE_2M))
        if all(p.state == PageState.NOT_PRESENT or (p.state == PageState.REMOVED and p.level == 1) for *_, p in runs):
            return "fresh"
        if len(runs) == 1 and runs[0][2].level == 1:
            return "leaf-accepted" if runs[0][2].state == PageState.ACCEPTED else "leaf-pending"
        return "table"

    def _fault_aug_4k(
        self, gpa: int, vcpu: int | None, actor: str, res: AcceptStats, map_page: bool = True, page: Page | None = None
    ) -> bool:
        """The EPT-violation exit of an accept on an unmapped 4K page: the VMM AUGs it (if it is RAM).
        Returns whether the page had been removed before (a re-AUG)."""
        if not self.ram.get(gpa):
            self._terminate(gpa, "accept", actor, vcpu, "accept of a GPA the VMM does not back with RAM")
        res.exits += 1
        res.augs_4k += 1
        res.cost_ns += self.profile.exit_ns + self.profile.aug_4k_ns
        before = page or self.pages.get(gpa)
        removed = before.state == PageState.REMOVED
        reaugd = removed and not before.converted
        if removed:
            self._split_2m_empty(gpa, gpa + PAGE_4K)
        if map_page:
            self._map_pending(gpa, gpa + PAGE_4K, 0)
        else:
            self.vmm.augs_4k += 1
        return reaugd

    # ----------------------------------------------------------------- guest side: TDCALL sequences

    def accept_pages(
        self, start: int, count: int, page_size: int, *, vcpu: int | None = 0, actor: str = "guest"
    ) -> AcceptResult:
        """edk2 TdAcceptPages(start, count, page_size): the exact TDCALL sequence, counted per run.

        Per page: PAGE_ALREADY_ACCEPTED is a warning, PAGE_SIZE_MISMATCH at 2M falls back to 512 4K accepts,
        OPERAND_BUSY is retried up to 3 times, anything else stops with EFI_INVALID_PARAMETER.
        With vcpu=None the cost is counted but charged to no clock (parallel accept distributes it).
        """
        res = AcceptResult()
        try:
            self._accept_pages(start, count, page_size, vcpu, actor, res)
        finally:
            self._charge(vcpu, res)
            if vcpu is not None:
                self.count_accepts(vcpu, actor, res.tdcalls)
        return res

    def accept_range(
        self, start: int, size: int, *, vcpu: int = 0, actor: str = "guest", page_size: int = PAGE_2M
    ) -> AcceptResult:
        """TdxDxe's EDKII_MEMORY_ACCEPT_PROTOCOL.AcceptMemory: a 4K head up to a 2 MiB boundary, the middle
        in 2M pages only when more than 2 MiB remains (TdxDxe.c tests Size > SIZE_2MB, so a middle of
        exactly 2 MiB goes as 512 4K pages), the tail in 4K pages."""
        res = AcceptResult()
        try:
            for s, n, ps in edk2_accept_split(start, size, page_size):
                self._accept_pages(s, n, ps, vcpu, actor, res)
                if not res.ok:
                    break
        finally:
            self._charge(vcpu, res)
            self.count_accepts(vcpu, actor, res.tdcalls)
        return res

    def _accept_pages(
        self, start: int, count: int, page_size: int, vcpu: int | None, actor: str, res: AcceptResult
    ) -> None:
        self._require_alive()
        if count <= 0:
            return
        if start & ~ACCEPT_RCX_GPA_MASK or page_size not in (PAGE_4K, PAGE_2M):
            # TdAcceptPages rejects these before any TDCALL.
            res.status, res.failed_gpa = TdxStatus.OPERAND_INVALID | OperandId.RCX, start
            return
        level = 1 if page_size == PAGE_2M else 0
        # OPERAND_BUSY can only be pending from fault injection, so it hits the first TDCALL of a sequence.
        if self._busy_pending:
            tries = min(self._busy_pending, ACCEPT_MAX_BUSY_RETRIES + 1)
            self._busy_pending -= tries
            res.tdcalls += tries
            res.busy += tries
            res.cost_ns += tries * self.profile.tdcall_ns
            if tries > ACCEPT_MAX_BUSY_RETRIES:
                res.status, res.failed_gpa = ACCEPT_BUSY, start
                return
        end = start + count * page_size
        valid_end = min(end, self.private_limit - self.private_limit % page_size)
        if level and start % PAGE_2M:
            valid_end = start
        if start < valid_end:
            if level:
                self._accept_2m_span(start, valid_end, vcpu, actor, res)
            else:
                self._accept_4k_span(start, valid_end, vcpu, actor, res)
        if valid_end < end:
            res.tdcalls += 1
            res.cost_ns += self.profile.tdcall_ns
            res.status, res.failed_gpa = TdxStatus.OPERAND_INVALID | OperandId.RCX, valid_end

    def _accept_4k_span(self, start: int, end: int, vcpu: int | None, actor: str, res: AcceptResult) -> None:
        """4K accepts of every page in [start, end), in address order, one run of equal pages at a time."""
        prof = self.profile
        pos = start
        while pos < end:
            rs, re_, p = self.pages.run_at(pos)
            re_ = min(re_, end)
            n = (re_ - pos) // PAGE_4K
            if p.state == PageState.ACCEPTED:
                res.tdcalls += n
                res.already_accepted += n
                res.cost_ns += n * prof.tdcall_ns
                self._incident("already-accepted", pos, re_, actor)
            elif p.state == PageState.PENDING:
                if p.level == 1:
                    leaves = (align_up(re_, PAGE_2M) - align_down(pos, PAGE_2M)) // PAGE_2M
                    res.exits += leaves
                    res.demotes += leaves
                    res.cost_ns += leaves * (prof.exit_ns + prof.demote_ns)
                    self.pages.set(align_down(pos, PAGE_2M), align_up(re_, PAGE_2M), p._replace(level=0))
                    p = p._replace(level=0)
                res.tdcalls += n
                res.cost_ns += n * prof.tdcall_ns
                self._finish_accept(pos, re_, 0, p, actor, res)
            else:
                ram_end = self._ram_end(pos, re_)
                if ram_end > pos:
                    m = (ram_end - pos) // PAGE_4K
                    res.tdcalls += m
                    res.exits += m
                    res.augs_4k += m
                    res.cost_ns += m * (prof.tdcall_ns + prof.exit_ns + prof.aug_4k_ns)
                    self._split_2m_empty(pos, ram_end)
                    self._map_pending(pos, ram_end, 0)
                    self._finish_accept(pos, ram_end, 0, self.pages.get(pos), actor, res)
                if ram_end < re_:
                    res.tdcalls += 1
                    res.cost_ns += prof.tdcall_ns
                    self._terminate(ram_end, "accept", actor, vcpu, "accept of a GPA the VMM does not back with RAM")
            pos = re_

    def _accept_2m_span(self, start: int, end: int, vcpu: int | None, actor: str, res: AcceptResult) -> None:
        """2M accepts of each 2M page in [start, end) with the fallback to 512 4K accepts on mismatch.

        2M pages lying inside one run of equal pages (and, when unmapped, inside RAM) behave identically:
        the first is accepted call by call, the rest are charged as multiples of it.
        """
        pos = start
        while pos < end:
            _, re_, p = self.pages.run_at(pos)
            batch_end = min(align_down(re_, PAGE_2M), end)
            if p.state in (PageState.NOT_PRESENT, PageState.REMOVED):
                batch_end = min(batch_end, align_down(self._ram_end(pos, batch_end), PAGE_2M))
            m = (batch_end - pos) // PAGE_2M
            first = AcceptResult()
            self._recent_incidents = []
            first.tdcalls += 1
            first.cost_ns += self.profile.tdcall_ns
            try:
                status = self._accept_2m(pos, vcpu, actor, first)
                if status_class(status) == TdxStatus.PAGE_SIZE_MISMATCH:
                    self._accept_4k_span(pos, pos + PAGE_2M, vcpu, actor, first)
            finally:
                res.add(first)
            if m > 1:
                rs, re2, final = self.pages.run_at(pos)
                if rs <= pos and re2 >= pos + PAGE_2M:
                    # The first 2M page ended as one run: the other m-1 end the same way at the same cost.
                    res.add(first, m - 1)
                    self.pages.set(pos + PAGE_2M, batch_end, final)
                    self.accepted_by_actor[actor] = (
                        self.accepted_by_actor.get(actor, 0) + (m - 1) * first.accepted_bytes
                    )
                    self.memory.backing.zero(pos + PAGE_2M, batch_end)
                    for kind in dict.fromkeys(self._recent_incidents):
                        self._incident(kind, pos + PAGE_2M, batch_end, actor)
                    pos = batch_end
                    continue
            pos += PAGE_2M

    # ----------------------------------------------------------------- checks and queries

    def check_access(
        self, gpa: int, size: int, access: str, *, actor: str, vcpu: int = 0, rip: int | None = None
    ) -> None:
        """A guest read/write/execute of [gpa, gpa + size): touching a page not accepted terminates the TD."""
        self._require_alive()
        if size <= 0:
            return
        end = gpa + size
        if gpa < 0 or end > self.private_limit:
            self._terminate(max(gpa, 0), access, actor, vcpu, "access beyond the TD's private GPA range", rip)
        for s, _e, p in self.pages.runs(gpa, end):
            if p.state != PageState.ACCEPTED:
                reason = {
                    PageState.PENDING: "EPT violation on a pending (unaccepted) page; SEPT_VE_DISABLE is set, so "
                    "KVM treats it as fatal ('Guest access before accepting')",
                    PageState.REMOVED: "EPT violation on a page the VMM removed",
                    PageState.NOT_PRESENT: "EPT violation on an unaccepted page the VMM never mapped",
                }[p.state]
                self._terminate(s, access, actor, vcpu, reason, rip)

    def is_accepted(self, start: int, size: int) -> bool:
        return self.pages.all_equal(start, start + size, lambda p: p.state == PageState.ACCEPTED)

    def state_ranges(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, PageState]]:
        """Runs of equal state (levels and actors merged)."""
        cur: list = []
        for s, e, p in self.pages.runs(start, end):
            if cur and cur[2] == p.state and cur[1] == s:
                cur[1] = e
            else:
                if cur:
                    yield cur[0], cur[1], cur[2]
                cur = [s, e, p.state]
        if cur:
            yield cur[0], cur[1], cur[2]

    def bytes_in_state(self, state: PageState, start: int = 0, end: int | None = None) -> int:
        return self.pages.total(start, self.private_limit if end is None else end, lambda p: p.state == state)

    def clock_ns(self, vcpu: int) -> int:
        return self.clocks_ns[vcpu]

    @property
    def terminated(self) -> bool:
        return self.termination is not None

    # ----------------------------------------------------------------- internals

    def _finish_accept(self, start: int, end: int, level: int, before: Page, actor: str, res: AcceptStats) -> None:
        """Pages in [start, end), PENDING at `level`, become ACCEPTED: zeroed, charged, attributed."""
        if before.reaugd:
            self._incident("reaccept-after-remove", start, end, actor)
        n_bytes = end - start
        if level:
            res.accepted_2m += n_bytes // PAGE_2M
            res.cost_ns += (n_bytes // PAGE_2M) * self._clear_ns(PAGE_2M)
        else:
            res.accepted_4k += n_bytes // PAGE_4K
            res.cost_ns += (n_bytes // PAGE_4K) * self._clear_ns(PAGE_4K)
        self.pages.set(start, end, Page(PageState.ACCEPTED, level, actor))
        self.accepted_by_actor[actor] = self.accepted_by_actor.get(actor, 0) + n_bytes
        self.memory.backing.zero(start, end)

    def _clear_ns(self, page_size: int) -> int:
        key = (page_size, self._concurrency)
        ns = self._clear_cache.get(key)
        if ns is None:
            ns = self._clear_cache[key] = self.profile.clear_ns(page_size, self._concurrency)
        return ns

    def _map_pending(self, start: int, end: int, level: int) -> None:
        self.pages.update(
            start, end, lambda p: Page(PageState.PENDING, level, "", p.state == PageState.REMOVED and not p.converted)
        )
        n = (end - start) >> (21 if level else 12)
        if level:
            self.vmm.augs_2m += n
        else:
            self.vmm.augs_4k += n

    def _split_2m_empty(self, start: int, end: int) -> None:
        """Mapping 4K pages where a removed 2M leaf was: the rest of that 2M becomes removed 4K entries."""
        for edge in (start, end - 1):
            base = align_down(edge, PAGE_2M)
            p = self.pages.get(base)
            if p.state == PageState.REMOVED and p.level == 1:
                self.pages.set(base, base + PAGE_2M, p._replace(level=0))
        self.pages.update(start, end, lambda p: p._replace(level=0) if p.state == PageState.REMOVED else p)

    def _demote_leaf(self, base: int) -> None:
        p = self.pages.get(base)
        self.pages.set(base, base + PAGE_2M, p._replace(level=0))
        self.vmm.demotes += 1

    def _ram_end(self, start: int, end: int) -> int:
        """End of the RAM run starting at start, clipped to end (start itself if start is not RAM)."""
        s, e, is_ram = self.ram.run_at(start)
        return min(e, end) if is_ram else start

    def _incident(self, kind: str, start: int, end: int, actor: str) -> None:
        self._recent_incidents.append(kind)
        last = self.incidents[-1] if self.incidents else None
        if last and last.kind == kind and last.actor == actor and last.end == start:
            last.end = end
        else:
            self.incidents.append(Incident(kind, start, end, actor))

    def _charge(self, vcpu: int | None, res: AcceptStats) -> None:
        """Count res; its cost goes to vcpu's clock (None: the caller distributes it with charge())."""
        if vcpu is not None:
            self.clocks_ns[vcpu] += res.cost_ns
        self.stats.add(res)

    def count_accepts(self, vcpu: int, actor: str, tdcalls: int) -> None:
        """Book accept TDCALLs made on a vCPU (accept_tdcalls)."""
        if tdcalls:
            self.accept_tdcalls[(actor, vcpu)] = self.accept_tdcalls.get((actor, vcpu), 0) + tdcalls

    def charge(self, vcpu: int, ns: int) -> None:
        """Advance a vCPU's virtual clock by work done elsewhere (copies, hashing, a share of parallel work)."""
        self.clocks_ns[vcpu] += ns

    def _terminate(
        self, gpa: int, access: str, actor: str, vcpu: int | None, reason: str, rip: int | None = None
    ) -> None:
        self.termination = Termination(gpa, access, actor, vcpu, reason, rip)
        raise TdTerminated(self.termination)

    def _require_alive(self) -> None:
        if self.termination is not None:
            raise TdTerminated(self.termination)

    def _check_private(self, start: int, size: int, what: str, align: int = PAGE_4K) -> None:
        if size <= 0 or start % align or size % align:
            raise TdxError(f"{what} range [{start:#x}, +{size:#x}) must be non-empty and {align:#x}-aligned")
        if start < 0 or start + size > self.private_limit:
            raise TdxError(
                f"{what} range [{start:#x}, {start + size:#x}) is beyond the private GPA limit "
                f"{self.private_limit:#x} (GPA width {self.gpa_width})"
            )


def edk2_accept_split(start: int, size: int, page_size: int = PAGE_2M) -> list[tuple[int, int, int]]:
    """TdxDxe AcceptMemory's split of [start, start + size) into (start, count, page_size) calls."""
    calls: list[tuple[int, int, int]] = []
    if size <= 0:
        return calls
    if start % PAGE_2M:
        head = min(align_up(start, PAGE_2M) - start, size)
        calls.append((start, head // PAGE_4K, PAGE_4K))
        start += head
        size -= head
    if size > PAGE_2M:
        middle = size & ~(PAGE_2M - 1)
        calls.append((start, middle // page_size, page_size))
        start += middle
        size -= middle
    if size:
        calls.append((start, size // PAGE_4K, PAGE_4K))
    return [c for c in calls if c[1]]


def is_accept_error(status: int) -> bool:
    """Errors that stop TdAcceptPages (PAGE_ALREADY_ACCEPTED is only a warning)."""
    return is_error(status) and status_class(status) != TdxStatus.PAGE_SIZE_MISMATCH
