"""DXE memory services at scale: 100,000 mixed allocations and frees on a 4 TiB TD with option 1, and
GetMemoryMap over a 10,000-descriptor map. Prints wall time and peak memory (tracemalloc); asserts nothing.

Run: .venv/bin/python benchmarks/bench_dxe.py [--ops N] [--descriptors N] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource, ResourceType
from lazyaccept.spec.efi import MAX_UINT64, EfiAllocateType, EfiMemoryType, EfiStatus
from lazyaccept.tdx.costs import profile_by_name
from lazyaccept.tdx.module import TdxModule
from lazyaccept.units import GiB, TiB, format_ns, human_size

T = TypeVar("T")
M = EfiMemoryType
A = EfiAllocateType
TYPES = (M.EfiLoaderData, M.EfiLoaderCode, M.EfiBootServicesData, M.EfiBootServicesCode, M.EfiACPIReclaimMemory)


def build_td(ram_bytes: int, upfront_bytes: int, policy: DxePolicy) -> tuple[TdxModule, DxeCore]:
    """RAM as QEMU lays it out for a large TD: 2 GiB below 4 GiB, the rest from 4 GiB."""
    tdx = TdxModule(profile=profile_by_name("kvm-2m"), num_vcpus=8)
    low = min(ram_bytes, 2 * GiB)
    tdx.add_ram(0, low)
    tdx.add_ram(4 * GiB, ram_bytes - low)
    tdx.accept_range(0, upfront_bytes, actor="sec")
    resources = [
        Resource(0, upfront_bytes),
        Resource(upfront_bytes, low - upfront_bytes, ResourceType.MEMORY_UNACCEPTED),
        Resource(4 * GiB, ram_bytes - low, ResourceType.MEMORY_UNACCEPTED),
    ]
    return tdx, DxeCore(resources, tdx=tdx, policy=policy)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes Python allocated while fn ran (a separate run: tracemalloc slows Python several times)."""
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def mixed_ops(core: DxeCore, n_ops: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    live_pages: list[tuple[int, int]] = []
    live_pool: list[int] = []
    counts = {"alloc_pages": 0, "alloc_pool": 0, "free_pages": 0, "free_pool": 0, "failed": 0}
    for _ in range(n_ops):
        r = rng.random()
        if r < 0.35 or not (live_pages or live_pool):
            pages = int(2 ** rng.uniform(0, 14))  # 4 KiB .. 64 MiB, log-uniform
            kind = rng.random()
            if kind < 0.7:
                status, addr = core.allocate_pages(A.AllocateAnyPages, rng.choice(TYPES), pages)
            elif kind < 0.9:
                status, addr = core.allocate_pages(A.AllocateMaxAddress, rng.choice(TYPES), pages, 4 * GiB - 1)
            else:
                status, addr = core.allocate_pages(A.AllocateMaxAddress, rng.choice(TYPES), pages, MAX_UINT64)
            counts["alloc_pages"] += 1
            if status == EfiStatus.SUCCESS:
                live_pages.append((addr, pages))
            else:
                counts["failed"] += 1
        elif r < 0.6:
            status, addr = core.allocate_pool(rng.choice(TYPES), int(2 ** rng.uniform(3, 17)))
            counts["alloc_pool"] += 1
            if status == EfiStatus.SUCCESS:
                live_pool.append(addr)
            else:
                counts["failed"] += 1
        elif r < 0.8 and live_pages:
            addr, pages = live_pages.pop(rng.randrange(len(live_pages)))
            core.free_pages(addr, pages)
            counts["free_pages"] += 1
        elif live_pool:
            core.free_pool(live_pool.pop(rng.randrange(len(live_pool))))
            counts["free_pool"] += 1
    counts["live_allocations"] = len(live_pages) + len(live_pool)
    return counts


def fragmented_map(core: DxeCore, descriptors: int) -> None:
    """Single pages of alternating types: each allocation its own descriptor."""
    for i in range(descriptors):
        core.allocate_pages(A.AllocateAnyPages, TYPES[i % 2], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--descriptors", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    policy = DxePolicy(option1=True)
    (tdx, core), wall = timed(lambda: build_td(4 * TiB, 2 * GiB, policy))
    print(f"build 4 TiB TD + DXE core: {wall * 1e3:.1f} ms wall")

    t_virtual = core.clock_ns
    counts, wall = timed(lambda: mixed_ops(core, args.ops, args.seed))
    peak = peak_memory(lambda: mixed_ops(build_td(4 * TiB, 2 * GiB, policy)[1], args.ops, args.seed))
    print(
        f"{args.ops} mixed allocations/frees (option 1): {wall:.2f} s wall ({wall / args.ops * 1e6:.1f} us/op), "
        f"peak {human_size(peak)}"
    )
    print(f"  {counts}")
    print(
        f"  memory map runs {len(list(core.pages.runs()))}, free runs {len(core.pages.free)}, "
        f"GCD entries {len(core.gcd.map)}, option-1 accepts {len(core.acceptor.events)} "
        f"({human_size(core.acceptor.accepted_bytes())}), virtual time {format_ns(core.clock_ns - t_virtual)}"
    )

    _, core2 = build_td(4 * TiB, 2 * GiB, policy)
    _, wall = timed(lambda: fragmented_map(core2, args.descriptors))
    probe = core2.get_memory_map(0)
    print(
        f"fragmented map: {args.descriptors} allocations in {wall:.2f} s; probe says "
        f"{probe.memory_map_size // probe.descriptor_size} descriptors"
    )
    result, wall = timed(lambda: core2.get_memory_map(probe.memory_map_size))
    peak = peak_memory(lambda: core2.get_memory_map(probe.memory_map_size))
    print(
        f"GetMemoryMap of {len(result.descriptors)} descriptors: {wall * 1e3:.1f} ms wall, peak {human_size(peak)} "
        f"({result.status})"
    )
    _, wall = timed(lambda: core2.get_memory_map(0))
    print(f"GetMemoryMap size probe: {wall * 1e3:.1f} ms wall")


if __name__ == "__main__":
    main()
