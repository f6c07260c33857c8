"""A map from integer addresses to values, stored as sorted runs: the shape of every state in lazyaccept.

A 4 TiB TD has a billion 4K pages; a RangeMap holds one entry per run of equal values, so every operation
costs O(log n + runs touched), never O(pages). Adjacent runs with equal values are always merged, so two
maps with the same contents compare equal run for run.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class RangeMap(Generic[V]):
    """Values over [0, limit); every address starts at `default`."""

    __slots__ = ("_starts", "_values", "limit")

    def __init__(self, default: V, limit: int = 1 << 64):
        self.limit = limit
        self._starts: list[int] = [0]
        self._values: list[V] = [default]

    def __len__(self) -> int:
        """Number of runs."""
        return len(self._starts)

    def _index(self, addr: int) -> int:
        return bisect_right(self._starts, addr) - 1

    def _end_of(self, i: int) -> int:
        return self._starts[i + 1] if i + 1 < len(self._starts) else self.limit

    def get(self, addr: int) -> V:
        return self._values[self._index(addr)]

    def run_at(self, addr: int) -> tuple[int, int, V]:
        """The whole run containing addr: (start, end, value)."""
        i = self._index(addr)
        return self._starts[i], self._end_of(i), self._values[i]

    def _split(self, addr: int) -> int:
        """Make addr a run boundary; return the index of the run starting at addr."""
        i = self._index(addr)
        if self._starts[i] == addr:
            return i
        self._starts.insert(i + 1, addr)
        self._values.insert(i + 1, self._values[i])
        return i + 1

    def _merge_around(self, lo: int, hi: int) -> None:
        """Merge equal neighbours among runs lo-1 .. hi (indexes clipped)."""
        i = max(lo, 1)
        hi = min(hi, len(self._starts) - 1)
        while i <= hi and i < len(self._starts):
            if self._values[i] == self._values[i - 1]:
                del self._starts[i]
                del self._values[i]
                hi -= 1
            else:
                i += 1

    def set(self, start: int, end: int, value: V) -> None:
        """Assign value to [start, end)."""
        if start >= end:
            return
        self._check(start, end)
        i = self._index(start)
        if self._starts[i] == start and i and self._values[i - 1] == value and end < self._end_of(i):
            self._starts[i] = end  # grows the run on the left: the common case of sequential accepts
            return
        i = self._split(start)
        j = self._split(end) if end < self.limit else len(self._starts)
        self._starts[i:j] = [start]
        self._values[i:j] = [value]
        self._merge_around(i, i + 1)

    def update(self, start: int, end: int, fn: Callable[[V], V]) -> None:
        """Replace each value v in [start, end) by fn(v), run by run."""
        if start >= end:
            return
        self._check(start, end)
        i = self._split(start)
        j = self._split(end) if end < self.limit else len(self._starts)
        for k in range(i, j):
            self._values[k] = fn(self._values[k])
        self._merge_around(i, j)

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Runs intersecting [start, end), clipped to it."""
        end = self.limit if end is None else end
        if start >= end:
            return
        i = self._index(start)
        n = len(self._starts)
        while i < n:
            s = self._starts[i]
            if s >= end:
                break
            e = self._starts[i + 1] if i + 1 < n else self.limit
            yield max(s, start), min(e, end), self._values[i]
            i += 1

    def all_equal(self, start: int, end: int, predicate: Callable[[V], bool]) -> bool:
        return all(predicate(v) for _, _, v in self.runs(start, end))

    def total(self, start: int, end: int, predicate: Callable[[V], bool]) -> int:
        """Bytes in [start, end) whose value satisfies predicate."""
        return sum(e - s for s, e, v in self.runs(start, end) if predicate(v))

    def _check(self, start: int, end: int) -> None:
        if start < 0 or end > self.limit:
            raise ValueError(f"range [{start:#x}, {end:#x}) outside [0, {self.limit:#x})")

    def copy(self) -> RangeMap[V]:
        other: RangeMap[V] = RangeMap.__new__(RangeMap)
        other.limit = self.limit
        other._starts = list(self._starts)
        other._values = list(self._values)
        return other


def intersect_ranges(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces of [start, end) lists a and b (each sorted, disjoint) that lie in both."""
    return [(max(s, t), min(e, u)) for s, e in a for t, u in b if max(s, t) < min(e, u)]


def minus_ranges(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces of a (sorted, disjoint [start, end) ranges) outside every range of b (sorted, disjoint)."""
    out = []
    for s, e in a:
        pos = s
        for t, u in b:
            if u <= pos or t >= e:
                continue
            if t > pos:
                out.append((pos, t))
            pos = max(pos, u)
        if pos < e:
            out.append((pos, e))
    return out
