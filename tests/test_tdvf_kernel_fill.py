"""Accept on demand in the real kernel: Debian's 6.12 on a 3 GiB, 1-vCPU TD booted by OVMF 2025.02, whose /init
fills a tmpfs with more than the memory already accepted above 4 GiB (OVMF accepts all of it below 4 GiB; above,
the stub's unaccepted table leaves most of the Normal zone pending). The page allocator then accepts memory itself
(Linux 6.12 mm/page_alloc.c: get_page_from_freelist finds the zone under its watermark, counting NR_UNACCEPTED as
unusable, and try_to_accept_memory takes MAX_ORDER blocks off zone->unaccepted_pages up to the high watermark),
and /init's Unaccepted reading drops by what it accepted."""

from __future__ import annotations

import json

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.commands.tdvf import format_report, kernel_run_dict
from lazyaccept.guest.initramfs import parse_meminfo_blocks, write_initramfs
from lazyaccept.tdvf_run import TdvfOutcome, TdvfReport, TdvfRun, kernel_accepts_outside_table, run_tdvf
from lazyaccept.units import GiB, KiB, MiB

pytestmark = pytest.mark.real_binary

MAX_WALL_S = 600  # a bound, not a figure: a run that needs more is stuck
FILL_MIB = 512  # more than the Normal zone's accepted free memory after boot on 3 GiB (256 MiB is not)
CMDLINE = f"console=ttyS0 nokaslr lazyaccept.fill_mib={FILL_MIB}"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> TdvfReport:
    store = BinaryStore()
    initrd = write_initramfs(tmp_path_factory.mktemp("initrd") / "initramfs.cpio.gz", store.busybox(), compress=True)
    return run_tdvf(TdvfRun(store.ovmf_fd(), ram=3 * GiB, kernel=store.linux_vmlinuz(), initrd=initrd.path,
                            cmdline=CMDLINE, run_kernel=True, max_wall_s=MAX_WALL_S))


def test_the_fill_makes_the_kernel_accept_on_demand(report: TdvfReport) -> None:
    k = report.kernel_run
    assert k is not None and report.outcome == TdvfOutcome.POWERED_OFF, (report.detail, k and k.console[-3000:])
    meminfo = parse_meminfo_blocks(k.console)
    assert meminfo.fill_done and meminfo.fill_bytes == FILL_MIB * MiB, k.console[-3000:]
    # The report reads /init's lines as parse_meminfo_blocks does.
    assert k.meminfo_before == meminfo.before and k.meminfo_after == meminfo.after
    before, after = k.meminfo_before["Unaccepted"], k.meminfo_after["Unaccepted"]
    assert k.fill_accepts and k.fill_accepted_bytes is not None
    # Every 2M/4K TDG.MEM.PAGE.ACCEPT of the fill is one the kernel counted off NR_UNACCEPTED (a MAX_ORDER block
    # at a time, parts of which an earlier accept may have taken already): the reading drops by at least as much.
    assert (before - after) * KiB >= k.fill_accepted_bytes > 0
    assert set(k.fill_accepts) <= set(k.accepts)
    # Accepted only what the stub left pending, and nothing twice.
    assert kernel_accepts_outside_table(report) == []
    assert len(set(k.accepts)) == len(k.accepts)
    text = format_report(report)
    assert "/init's fill: Unaccepted" in text
    data = json.loads(json.dumps(kernel_run_dict(report)))
    assert data["fill_accepted_bytes"] == k.fill_accepted_bytes
    assert data["meminfo_before"]["Unaccepted"] == before and data["meminfo_after"]["Unaccepted"] == after
