"""Workloads against published figures, and boot to a ready userspace from 4 GiB to 4 TiB."""

from __future__ import annotations

import pytest

from lazyaccept.guest.linux import CHUNK_BYTES, LinuxConfig
from lazyaccept.guest.workload import (
    PUBLISHED_EATMEMORY_1G_TRIES,
    PUBLISHED_EATMEMORY_MS,
    SPR2024_EXIT_NS,
    boot_to_ready,
    eatmemory_sequence,
    fill_memory,
    spr2024_profile,
)
from lazyaccept.units import GiB, TiB

SOURCE = "LKML 2024-01-09, Jun Miao, 'x86/tdx: Optimize try_accept_memory()', Before column"


@pytest.fixture(scope="module")
def spr2024():
    return eatmemory_sequence(spr2024_profile())


@pytest.fixture(scope="module")
def kvm4k():
    return eatmemory_sequence("kvm-4k")


@pytest.fixture(scope="module")
def kvm2m():
    return eatmemory_sequence("kvm-2m")


@pytest.mark.parametrize("i", range(len(PUBLISHED_EATMEMORY_MS)), ids=[f"{s}G" for s, _ in PUBLISHED_EATMEMORY_MS])
def test_fill_memory_published_figures(spr2024, i):
    """LKML 2024-01-09, Jun Miao, "[PATCH] x86/tdx: Optimize try_accept_memory() to reduce 1GB page accepted failed
    times" (Sapphire Rapids; raw log github.com/jmiao2018/eatmemory log-tdx.txt): eatmemory 1G 3.414 s, 2G 3.853 s,
    4G 7.773 s, 8G 15.479 s, 16G 31.527 s, 32G 65.058 s, 64G 133.379 s, run one after the other in one boot of a
    ~96 GiB TD, one thread, 1 KiB mallocs each memset.

    Host profile kvm-4k-spr2024: kvm-4k (private memory mapped at 4K, so every 2M accept ends in 512 4K accepts, as
    the log's 1G-try counter confirms) with one free parameter, exit_ns = 7900 ns (least squares on the seven
    times; kvm-4k has 4000). The writes (kernel clear_page plus eatmemory's memset) use kvm-4k's copy rate, 4 GiB/s,
    unfitted. Tolerance: 10%. The 1G run is the worst (-8%): the 6.12 model has already accepted ~1.2 GiB before
    the first run (the zero-watermark window and the promo watermark), while the 2024 kernel (~6.7) accepted on
    demand, so the model's first run accepts less.
    """
    results, _ = spr2024
    size, ms = PUBLISHED_EATMEMORY_MS[i]
    got = results[i]
    assert got.bytes == size * GiB
    assert got.ns / 1e6 == pytest.approx(ms, rel=0.10), f"{size}G: model {got.ns / 1e9:.2f} s, published {ms / 1e3} s"
    if i:
        assert got.accepted_bytes == size * GiB // 2  # each run accepts only what the previous runs did not


def test_fill_memory_other_profiles_cannot_match(kvm4k, kvm2m):
    """Same source. kvm-4k unfitted (~8 us per 4K accept, Dstack PR 1220) is 19-33% short of every figure; kvm-2m
    (a host that maps 2M: ~1.5 GiB/s) is 57-69% short: the 2024 host did not map private memory at 2M."""
    for (size, ms), r4, r2 in zip(PUBLISHED_EATMEMORY_MS, kvm4k[0], kvm2m[0], strict=True):
        assert -0.35 < r4.ns / 1e6 / ms - 1 < -0.15, size
        assert -0.72 < r2.ns / 1e6 / ms - 1 < -0.55, size
    assert SPR2024_EXIT_NS == spr2024_profile().exit_ns == 7900


def test_one_gig_tries_match_the_published_counter(spr2024):
    """Same source, "Trigger 1G Failed Times" (cumulative): it grows by one per 4K page accepted. Runs 2 to 7:
    the model's try_accept_one(1G) calls per run equal the 4K pages of the increment it accepts; the published
    increments are 0.4-3.5% higher (page tables and kernel data the model does not allocate). Tolerance 4%."""
    results, _ = spr2024
    tries = PUBLISHED_EATMEMORY_1G_TRIES
    increments = [b - a for a, b in zip(tries[:-1], tries[1:], strict=True)]
    for r, inc in zip(results[1:], increments, strict=True):
        assert r.try_1g_calls == pytest.approx(inc, rel=0.04)
        assert r.try_1g_calls == r.accepted_bytes // 4096  # all software rejects: no 1G TDCALL in 4 MiB chunks


BOOT_SIZES = [4 * GiB, 64 * GiB, 1 * TiB, 4 * TiB]


@pytest.fixture(scope="module")
def boots():
    return {ram: boot_to_ready(ram, 8)[0] for ram in BOOT_SIZES}


def test_boot_to_ready_grows_with_memory_through_the_memmap(boots):
    """Lazy accept does not make Linux's boot independent of memory size: the memmap (64 bytes per 4K page) is
    accepted early on one CPU, and 6.12 keeps free memory at the promo watermark (~0.3% of memory)."""
    prev = 0
    for ram in BOOT_SIZES:
        r = boots[ram]
        assert r.ns > prev
        prev = r.ns
        memmap = r.accepted_by_actor["linux-memmap"]
        assert memmap == pytest.approx(ram / 64, rel=0.03)
        assert set(r.accepted_by_actor) <= {"linux-memblock", "linux-memmap", "linux-buddy", "stub"}
        early = r.phase_ns("linux-early")
        assert early >= 0.9 * memmap / (1.5 * GiB) * 1e9  # one vCPU clearing at ~1.5 GiB/s
    assert boots[4 * TiB].ns > 40e9


def test_eager_accepts_everything_at_boot():
    lazy, _ = boot_to_ready(64 * GiB, 8)
    eager, _ = boot_to_ready(64 * GiB, 8, kernel=LinuxConfig(accept_memory="eager"))
    assert eager.accepted_by_actor["linux-eager"] > 55 * GiB
    assert eager.ns > 5 * lazy.ns
    assert sum(eager.accepted_by_actor.values()) > sum(lazy.accepted_by_actor.values()) + 50 * GiB


def test_kernel_without_support_loses_memory_unless_the_firmware_accepted_all():
    old = LinuxConfig(unaccepted_memory=False)
    r, run = boot_to_ready(16 * GiB, 4, kernel=old)
    assert r.lost_bytes == 14 * GiB and run.check.ok
    assert "linux-buddy" not in r.accepted_by_actor and "stub" not in r.accepted_by_actor
    r, run = boot_to_ready(16 * GiB, 4, kernel=old, accept_all_at_exit=True)
    assert r.lost_bytes == 0 and run.td.tdx.accepted_by_actor["exit-accept-all"] == 14 * GiB


def test_fill_after_boot_4tib_in_closed_form():
    r, run = boot_to_ready(4 * TiB, 64, profile="kvm-4k")
    fill = fill_memory(run.linux, 2 * TiB, workers=64)
    assert fill.accepted_bytes > 2 * TiB - 16 * GiB and fill.accepted_bytes % CHUNK_BYTES == 0
    assert fill.accepted_by_actor["linux-buddy"] == fill.accepted_bytes
    assert not run.td.tdx.incidents and run.linux.counters.chunks_accepted > 500_000
    assert fill.ns > 0 and r.ns > 0
