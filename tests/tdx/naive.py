"""A naive per-page reference model of the TDX module, written for the tests from REFERENCE.md section 3.

It keeps one record per 4K page and issues TDCALLs one by one, with edk2's TdAcceptPages and TdxDxe loops
spelled out call by call. The range-map model must agree with it exactly: states, statuses and costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazyaccept.tdx.costs import HostProfile

K4 = 4096
M2 = 2 << 20
NP, PEND, ACC, REM = 0, 1, 2, 3

# Written from the TDX module source (tag TDX_1.5.01), not from lazyaccept.spec: the classes are
# include/auto_gen/tdx_error_codes_defs.h's TDX_OPERAND_BUSY, TDX_OPERAND_INVALID, TDX_PAGE_ALREADY_ACCEPTED and
# TDX_PAGE_SIZE_MISMATCH; src/td_dispatcher/vm_exits/tdg_mem_page_accept.c adds OPERAND_ID_RCX (1) to a lock
# failure and to a bad RCX (api_error_with_operand_id is error + id), and the walk's level to the other two.
BUSY = 0x8000020000000000 + 1
INVALID_RCX = 0xC000010000000000 + 1
ALREADY = 0x00000B0A00000000
MISMATCH = 0xC0000B0B00000000


class NaiveTerminated(Exception):
    def __init__(self, gpa: int):
        self.gpa = gpa


@dataclass
class NaivePage:
    state: int = NP
    level: int = 0
    actor: str = ""
    reaugd: bool = False


@dataclass
class Counters:
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


@dataclass
class Naive:
    profile: HostProfile
    limit: int  # private GPA limit
    ram: set[int] = field(default_factory=set)  # page numbers backed by RAM
    pages: dict[int, NaivePage] = field(default_factory=dict)
    c: Counters = field(default_factory=Counters)
    incidents: list[list] = field(default_factory=list)  # [kind, start, end, actor]
    by_actor: dict[str, int] = field(default_factory=dict)
    busy_pending: int = 0
    terminated_at: int | None = None

    def page(self, gpa: int) -> NaivePage:
        return self.pages.setdefault(gpa // K4, NaivePage())

    # ---- VMM side
    def add_ram(self, start: int, size: int) -> None:
        self.ram.update(range(start // K4, (start + size) // K4))

    def add(self, start: int, size: int) -> None:
        self.add_ram(start, size)
        for g in range(start, start + size, K4):
            self.pages[g // K4] = NaivePage(ACC, 0, "vmm")
        self.by_actor["vmm"] = self.by_actor.get("vmm", 0) + size

    def _removed_2m_to_4k(self, gpa: int) -> None:
        base = gpa - gpa % M2
        if self.page(base).state == REM and self.page(base).level == 1:
            for g in range(base, base + M2, K4):
                self.page(g).level = 0

    def aug(self, start: int, size: int, level: int) -> None:
        for g in range(start, start + size, K4):
            p = self.page(g)
            if level == 0:
                self._removed_2m_to_4k(g)
            self.pages[g // K4] = NaivePage(PEND, level, "", p.state == REM)

    def demote(self, gpa: int) -> None:
        base = gpa - gpa % M2
        for g in range(base, base + M2, K4):
            self.page(g).level = 0

    def remove(self, start: int, size: int) -> None:
        for edge in (start, start + size):
            base = edge - edge % M2
            p = self.page(base)
            if base != edge and p.level == 1 and p.state in (PEND, ACC):
                self.demote(base)
        for g in range(start, start + size, K4):
            p = self.page(g)
            if p.state in (PEND, ACC):
                self.pages[g // K4] = NaivePage(REM, p.level)

    # ---- guest side
    def _incident(self, kind: str, start: int, end: int, actor: str) -> None:
        last = self.incidents[-1] if self.incidents else None
        if last and last[0] == kind and last[3] == actor and last[2] == start:
            last[2] = end
        else:
            self.incidents.append([kind, start, end, actor])

    def _terminate(self, gpa: int) -> None:
        self.terminated_at = gpa
        raise NaiveTerminated(gpa)

    def _accept(self, gpa: int, level: int, actor: str) -> None:
        size = M2 if level else K4
        p = self.page(gpa)
        if p.reaugd:
            self._incident("reaccept-after-remove", gpa, gpa + size, actor)
        for g in range(gpa, gpa + size, K4):
            self.pages[g // K4] = NaivePage(ACC, level, actor)
        self.c.cost_ns += self.profile.clear_ns(size)
        if level:
            self.c.accepted_2m += 1
        else:
            self.c.accepted_4k += 1
        self.by_actor[actor] = self.by_actor.get(actor, 0) + size

    def _aug4k_on_fault(self, gpa: int) -> None:
        if gpa // K4 not in self.ram:
            self._terminate(gpa)
        self.c.exits += 1
        self.c.augs_4k += 1
        self.c.cost_ns += self.profile.exit_ns + self.profile.aug_4k_ns
        self._removed_2m_to_4k(gpa)
        p = self.page(gpa)
        self.pages[gpa // K4] = NaivePage(PEND, 0, "", p.state == REM)

    def tdcall_accept(self, rcx: int, actor: str) -> int:
        if self.terminated_at is not None:
            raise NaiveTerminated(self.terminated_at)
        self.c.tdcalls += 1
        self.c.cost_ns += self.profile.tdcall_ns
        if self.busy_pending:
            self.busy_pending -= 1
            self.c.busy += 1
            return BUSY
        level = rcx & 7
        gpa = rcx & 0x000FFFFFFFFFF000
        if rcx & ((0xFFF << 52) | 0xFF8) or level > 1:
            return INVALID_RCX
        size = M2 if level else K4
        if gpa % size or gpa + size > self.limit:
            return INVALID_RCX
        if level == 0:
            p = self.page(gpa)
            if p.state == ACC:
                self._incident("already-accepted", gpa, gpa + K4, actor)
                self.c.already_accepted += 1
                return ALREADY | p.level
            if p.state == PEND and p.level == 1:
                self.c.exits += 1
                self.c.demotes += 1
                self.c.cost_ns += self.profile.exit_ns + self.profile.demote_ns
                self.demote(gpa)
            elif p.state in (NP, REM):
                self._aug4k_on_fault(gpa)
            self._accept(gpa, 0, actor)
            return 0
        region = [self.page(g) for g in range(gpa, gpa + M2, K4)]
        if all(p.state == NP or (p.state == REM and p.level == 1) for p in region):
            whole_ram = all(g // K4 in self.ram for g in range(gpa, gpa + M2, K4))
            if self.profile.max_private_level >= 1 and whole_ram:
                self.c.exits += 1
                self.c.augs_2m += 1
                self.c.cost_ns += self.profile.exit_ns + self.profile.aug_2m_ns
                for g in range(gpa, gpa + M2, K4):
                    was = self.page(g).state
                    self.pages[g // K4] = NaivePage(PEND, 1, "", was == REM)
            else:
                self._aug4k_on_fault(gpa)
            region = [self.page(g) for g in range(gpa, gpa + M2, K4)]
        if all(p.level == 1 and p.state == ACC for p in region):
            self._incident("already-accepted", gpa, gpa + M2, actor)
            self.c.already_accepted += 1
            return ALREADY | 1
        if all(p.level == 1 and p.state == PEND for p in region):
            self._accept(gpa, 1, actor)
            return 0
        self.c.mismatches += 1
        return MISMATCH | 1

    def td_accept_pages(self, start: int, count: int, page_size: int, actor: str) -> tuple[int, int | None]:
        """edk2 TdAcceptPages, call by call. Returns (status, failed gpa or None)."""
        if start & ~0xFFFFFFFFFF000 or page_size not in (K4, M2):
            return INVALID_RCX, start
        level = 1 if page_size == M2 else 0
        addr = start
        for _ in range(count):
            retried = 0
            while True:
                st = self.tdcall_accept(addr | level, actor)
                if st == 0 or (st & ~0xFFFF) == ALREADY:
                    break
                if (st & ~0xFFFF) == MISMATCH and level == 1:
                    sub, failed = self.td_accept_pages(addr, 512, K4, actor)
                    if failed is not None:
                        return sub, failed
                    break
                if (st & ~0xFFFF) == (BUSY & ~0xFFFF):
                    retried += 1
                    if retried > 3:
                        return st, addr
                    continue
                return st, addr
            addr += page_size
        return 0, None

    def accept_range(self, start: int, size: int, actor: str) -> tuple[int, int | None]:
        """TdxDxe AcceptMemory, spelled out."""
        calls = []
        if size == 0:
            return 0, None
        if start % M2:
            head = min((start + M2 - 1) // M2 * M2 - start, size)
            calls.append((start, head // K4, K4))
            start += head
            size -= head
        if size > M2:
            mid = size - size % M2
            calls.append((start, mid // M2, M2))
            start += mid
            size -= mid
        if size:
            calls.append((start, size // K4, K4))
        for s, n, ps in calls:
            if n == 0:
                continue
            st, failed = self.td_accept_pages(s, n, ps, actor)
            if failed is not None:
                return st, failed
        return 0, None
