"""Cross-checks of the DXE memory records against each other and against the TDX module's truth.

Run after every operation in tests (check_core). Each violation names the range and what disagrees:
- the memory map holds exactly the GCD system memory given to the DXE core: no gap, nothing outside it;
- no memory-map range (free or allocated) is unaccepted in the TDX module: nothing the allocator can hand out
  would fault on first touch;
- every GCD unaccepted range is unaccepted in the TDX module (else the OS would accept it again);
- no page was accepted twice (PAGE_ALREADY_ACCEPTED or an accept after a VMM remove);
- GetMemoryMap's descriptors are sorted, do not overlap, and cover all RAM (system and unaccepted memory);
- the allocator's free index is the set of free runs of the map; live pool blocks lie in pages of their type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lazyaccept.firmware.dxe.gcd import DXE_CORE_IMAGE_HANDLE, Gcd, GcdType
from lazyaccept.firmware.dxe.page import MapEntry, PageAllocator, is_free_entry
from lazyaccept.firmware.dxe.pool import PoolAllocator
from lazyaccept.spec.efi import EfiMemoryType, EfiStatus

if TYPE_CHECKING:
    from lazyaccept.firmware.dxe.exit import DxeCore
    from lazyaccept.tdx.module import TdxModule

_SYSTEM = (GcdType.EfiGcdMemoryTypeSystemMemory, GcdType.EfiGcdMemoryTypeMoreReliable)
_RAM = (*_SYSTEM, GcdType.EfiGcdMemoryTypeUnaccepted)


class InvariantViolation(AssertionError):
    """The firmware's records disagree with each other or with the TDX module."""


def _merged(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in runs:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def find_violations(
    gcd: Gcd,
    pages: PageAllocator,
    pool: PoolAllocator | None = None,
    tdx: TdxModule | None = None,
    *,
    after_exit: bool = False,
) -> list[str]:
    """Every disagreement found. after_exit: the OS owns memory now and may accept what GCD still calls
    unaccepted (the stub does, in process_unaccepted_memory), so that one check is skipped."""
    problems: list[str] = []
    mapped = _merged([(s, e) for s, e, _ in pages.runs()])
    for s, e in mapped:
        if not gcd.map.all_equal(s, e, lambda g: g.gcd_type in _SYSTEM and g.image_handle == DXE_CORE_IMAGE_HANDLE):
            kinds = sorted({g.gcd_type.name for _, _, g in gcd.runs(s, e)})
            problems.append(f"memory map [{s:#x}, {e:#x}) is not all DXE-owned GCD system memory: {kinds}")
    for s, e, g in gcd.runs():
        if g.gcd_type in _SYSTEM and g.image_handle == DXE_CORE_IMAGE_HANDLE:
            covered = pages.map.total(s, e, lambda v: v is not None)
            if covered != e - s:
                problems.append(
                    f"GCD system memory [{s:#x}, {e:#x}) has {e - s - covered:#x} bytes not in the memory map"
                )
        if g.gcd_type == GcdType.EfiGcdMemoryTypeUnaccepted and pages.map.total(s, e, lambda v: v is not None):
            problems.append(f"unaccepted GCD range [{s:#x}, {e:#x}) is in the memory map")
    expected_free = [(s, e - s) for s, e, v in pages.map.runs() if is_free_entry(v)]
    if sorted(pages.free) != expected_free:
        problems.append(f"free index ({len(pages.free)} runs) differs from the map's {len(expected_free)} free runs")
    problems += _memory_map_output(gcd, pages)
    if pool is not None:
        for buf, block in pool.live.items():
            if not pages.map.all_equal(block.head, block.end, _of_type(block.memory_type)):
                problems.append(
                    f"pool block {buf:#x} ({block.size:#x} bytes) is not in pages of its type {block.memory_type}"
                )
    if tdx is not None:
        problems += _against_truth(gcd, mapped, tdx, after_exit)
    return problems


def _memory_map_output(gcd: Gcd, pages: PageAllocator) -> list[str]:
    problems: list[str] = []
    probe = pages.get_memory_map(0)
    if probe.status != EfiStatus.BUFFER_TOO_SMALL:
        problems.append(f"GetMemoryMap size probe returned {probe.status}")
        return problems
    result = pages.get_memory_map(probe.memory_map_size)
    # edk2 before f80a406aa9 probes without the GCD unaccepted entries (a known upstream bug, modelled): the map
    # may then exceed the probe by one descriptor per unaccepted GCD run, and by no more.
    forgotten = 0 if pages.probe_counts_unaccepted else sum(
        1 for _, _, g in gcd.runs() if g.gcd_type == GcdType.EfiGcdMemoryTypeUnaccepted
    )
    allowed = probe.memory_map_size + forgotten * result.descriptor_size
    if result.status != EfiStatus.SUCCESS or result.memory_map_size > allowed:
        problems.append(f"GetMemoryMap with the probed size {probe.memory_map_size} returned {result.status}")
        return problems
    descs = sorted(result.descriptors, key=lambda d: d.physical_start)
    for a, b in zip(descs, descs[1:], strict=False):
        if a.end > b.physical_start:
            problems.append(f"memory map descriptors overlap: {a} / {b}")
    for d in descs:
        if d.type == EfiMemoryType.EfiUnacceptedMemoryType:
            if not gcd.map.all_equal(
                d.physical_start, d.end, lambda g: g.gcd_type == GcdType.EfiGcdMemoryTypeUnaccepted
            ):
                problems.append(f"type-15 descriptor {d} is not all GCD unaccepted memory")
    ram = _merged([(s, e) for s, e, g in gcd.runs() if g.gcd_type in _RAM])
    covered = _merged([(d.physical_start, d.end) for d in descs])
    ci = 0
    for s, e in ram:
        while ci < len(covered) and covered[ci][1] <= s:
            ci += 1
        if ci == len(covered) or covered[ci][0] > s or covered[ci][1] < e:
            problems.append(f"RAM [{s:#x}, {e:#x}) is not entirely described by GetMemoryMap")
    return problems


def _against_truth(gcd: Gcd, mapped: list[tuple[int, int]], tdx: TdxModule, after_exit: bool) -> list[str]:
    from lazyaccept.tdx.module import PageState

    problems: list[str] = []
    for s, e in mapped:
        if not tdx.is_accepted(s, e - s):
            bad = next((rs, re, st) for rs, re, st in tdx.state_ranges(s, e) if st != PageState.ACCEPTED)
            problems.append(
                f"memory map [{s:#x}, {e:#x}) holds {bad[2].name} pages at [{bad[0]:#x}, {bad[1]:#x}) in the TDX module"
            )
    for s, e, g in gcd.runs():
        if g.gcd_type == GcdType.EfiGcdMemoryTypeUnaccepted and not after_exit:
            accepted = tdx.bytes_in_state(PageState.ACCEPTED, s, e)
            if accepted:
                problems.append(f"GCD says [{s:#x}, {e:#x}) is unaccepted but {accepted:#x} bytes of it are accepted")
    for inc in tdx.incidents:
        problems.append(f"{inc.kind}: [{inc.start:#x}, {inc.end:#x}) by {inc.actor}")
    return problems


def check(
    gcd: Gcd,
    pages: PageAllocator,
    pool: PoolAllocator | None = None,
    tdx: TdxModule | None = None,
    *,
    after_exit: bool = False,
) -> None:
    problems = find_violations(gcd, pages, pool, tdx, after_exit=after_exit)
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvariantViolation("; ".join(problems[:10]) + more)


def check_core(core: DxeCore) -> None:
    check(core.gcd, core.pages, core.pool, core.tdx, after_exit=core.exited)


def _of_type(memory_type: int) -> Callable[[MapEntry | None], bool]:
    return lambda v: v is not None and v.type == memory_type
