"""The KVM backend's own 4-level page tables: guest RAM identity-mapped where mapped (accepted) and executable
only in the registered code ranges, changed in place only by upgrades and copy-on-write otherwise (a shadow MMU
never sees a host-side write to a table it has shadowed; see kvm/backend.py)."""

from __future__ import annotations

import struct

from lazyaccept.cpu.kvm.ioctl import HostMemory, KvmError
from lazyaccept.rangemap import RangeMap

PAGE = 1 << 12
PAGE_2M = 1 << 21

# Page-table entry bits. Accessed/Dirty are preset so the CPU never writes our tables.
P, RW, US, ACCESSED, DIRTY, PS, NX = 1, 2, 4, 0x20, 0x40, 0x80, 1 << 63
TABLE = P | RW | US | ACCESSED
LEAF = P | RW | US | ACCESSED | DIRTY

# The tables live in the backend's control region, after its first pages (GDT, TSS, IDT, stubs, stack).
CONTROL_SIZE = 256 << 20
FIRST_TABLE_PAGE = 16


def _upgrade_only(old: int, new: int) -> bool:
    """Can `old` become `new` in place? Only not-present -> present, or dropping NX, with nothing else changed."""
    return old == new or not old & P or bool(old & NX and old & ~NX == new)


class PageTables:
    """4-level page tables in the control region: an identity map of guest RAM where it is mapped, plus the
    backend's own pages in the upper half. Copy-on-write for every change that is not an upgrade (module doc).
    """

    def __init__(self, control: HostMemory, control_gpa: int):
        self.mem = control.view
        self.control_gpa = control_gpa
        self._next_page = FIRST_TABLE_PAGE
        self.tables: dict[tuple[int, int], int] = {}  # (level, va >> coverage shift) -> offset in the region
        self.fresh: set[int] = set()  # table offsets the CPU cannot have walked yet: writable in place
        self.copies = 0  # tables copied for a removal (a cost worth reporting)
        self.root = self._new_table()
        self.tables[(4, 0)] = self.root

    # ------------------------------------------------------------------ allocation and raw access
    def _new_table(self, copy_of: int | None = None) -> int:
        # Never reuse a page: a shadow MMU may still hold a shadow of a retired table's guest-physical page.
        offset = self._next_page * PAGE
        if offset + PAGE > CONTROL_SIZE:
            raise KvmError(0, f"the KVM backend ran out of page-table pages ({CONTROL_SIZE >> 20} MiB)")
        self._next_page += 1
        self.mem[offset : offset + PAGE] = self.mem[copy_of : copy_of + PAGE] if copy_of is not None else bytes(PAGE)
        self.fresh.add(offset)
        return offset

    def gpa(self, offset: int) -> int:
        return self.control_gpa + offset

    def _get(self, table: int, index: int) -> int:
        return struct.unpack_from("<Q", self.mem, table + 8 * index)[0]

    def _put(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, table + 8 * index, value)

    def seal(self) -> None:
        """The CPU is about to run: every table may be walked from now on."""
        self.fresh.clear()

    @staticmethod
    def _key(level: int, va: int) -> tuple[int, int]:
        return level, (va & ((1 << 48) - 1)) >> (12 + 9 * level)

    # ------------------------------------------------------------------ structure
    def table(self, level: int, va: int, create: bool = True) -> int | None:
        """The table at `level` (1 = PT .. 4 = PML4) that translates va; made (present in its parent) if asked."""
        key = self._key(level, va)
        offset = self.tables.get(key)
        if offset is not None or not create:
            return offset
        parent = self.table(level + 1, va)
        assert parent is not None
        offset = self._new_table()
        self.tables[key] = offset
        self.set_entry(level + 1, va, self.gpa(offset) | TABLE)
        return offset

    def entry_index(self, level: int, va: int) -> int:
        return (va >> (12 + 9 * (level - 1))) & 511

    def entry(self, level: int, va: int) -> int:
        table = self.table(level, va, create=False)
        return 0 if table is None else self._get(table, self.entry_index(level, va))

    def set_entry(self, level: int, va: int, value: int) -> None:
        """Entry for va in its level-`level` table, copying the path to the root unless it is an upgrade."""
        key = self._key(level, va)
        table = self.tables[key]
        index = self.entry_index(level, va)
        if table in self.fresh or _upgrade_only(self._get(table, index), value):
            self._put(table, index, value)
            return
        self._put(self._replace(level, va), index, value)

    def _replace(self, level: int, va: int) -> int:
        """Copy the level-`level` table translating va into a fresh page and point its parent at the copy."""
        key = self._key(level, va)
        copy = self._new_table(copy_of=self.tables[key])
        self.tables[key] = copy
        self.copies += 1
        if level == 4:
            self.root = copy
        else:
            self.set_entry(level + 1, va, self.gpa(copy) | TABLE)
        return copy

    def write_table(self, level: int, va: int, entries: list[int]) -> None:
        """All 512 entries of the table translating va (made if missing), in place only if every one upgrades."""
        table = self.table(level, va)
        assert table is not None
        if table not in self.fresh:
            current = struct.unpack_from("<512Q", self.mem, table)
            if not all(_upgrade_only(old, new) for old, new in zip(current, entries, strict=True)):
                table = self._replace(level, va)
        struct.pack_into("<512Q", self.mem, table, *entries)

    def drop_table(self, level: int, va: int) -> None:
        """Forget the level-`level` table translating va (its parent entry has been replaced)."""
        self.tables.pop(self._key(level, va), None)

    # ------------------------------------------------------------------ guest RAM (identity, lower half)
    def apply_region(self, base: int, mapped: RangeMap[bool], executable: RangeMap[bool]) -> None:
        """Make the 2 MiB region at base match `mapped` and `executable` (both 4K-granular)."""
        end = base + PAGE_2M
        pd = self.table(2, base, create=False)
        pde = self._get(pd, self.entry_index(2, base)) if pd is not None else 0
        runs = list(mapped.runs(base, end))
        if len(runs) == 1 and not runs[0][2]:  # nothing mapped
            if pde & P:
                self.set_entry(2, base, 0)
                self.drop_table(1, base)
            return
        has_pt = bool(pde & P) and not pde & PS
        if len(runs) == 1 and not has_pt:
            x_runs = list(executable.runs(base, end))
            if len(x_runs) == 1:  # whole region mapped, one permission: a 2 MiB page
                if pd is None:
                    self.table(2, base)
                self.set_entry(2, base, base | LEAF | PS | (0 if x_runs[0][2] else NX))
                return
        entries = [0] * 512
        for s, e, is_mapped in runs:
            if not is_mapped:
                continue
            for xs, xe, x in executable.runs(s, e):
                flags = LEAF | (0 if x else NX)
                first = (xs - base) >> 12
                entries[first : (xe - base) >> 12] = [(xs + (i << 12)) | flags for i in range((xe - xs) >> 12)]
        if has_pt:
            self.write_table(1, base, entries)
            return
        # No table yet (none, or a 2 MiB page to split): a fresh one, then point the directory entry at it.
        self.drop_table(1, base)
        self.table(2, base)
        pt = self._new_table()
        struct.pack_into("<512Q", self.mem, pt, *entries)
        self.tables[self._key(1, base)] = pt
        self.set_entry(2, base, self.gpa(pt) | TABLE)

    def translate(self, va: int) -> tuple[bool, bool]:
        """(present, executable) of the page at va, as the CPU would find them."""
        for level in (4, 3, 2, 1):
            value = self.entry(level, va)
            if not value & P:
                return False, False
            if level == 1 or (level == 2 and value & PS):
                return True, not value & NX
        return False, False  # pragma: no cover - the loop always returns
