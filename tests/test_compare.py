"""The comparison of policies, and the published boot-time figures (REFERENCE.md section 7) reproduced by the
model, each naming its host profile, its free parameters and its tolerance."""

from __future__ import annotations

import json

import pytest

from lazyaccept.advise import Payload
from lazyaccept.cli import main
from lazyaccept.compare import DEFAULT_POLICIES, Policy, compare, run_cell
from lazyaccept.guest.linux import LinuxConfig
from lazyaccept.guest.workload import boot_to_ready
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, MiB, TiB

SIZES = [4 * GiB, 64 * GiB, 1 * TiB, 4 * TiB]


@pytest.fixture(scope="module")
def matrix():
    return compare(DEFAULT_POLICIES, SIZES, [8], ["kvm-2m"])


def test_lazy_firmware_phase_is_flat_while_eager_grows_linearly(matrix) -> None:
    for policy in ("below-4g", "512M", "256M+option1", "256M+option2"):
        assert matrix.flatness(policy, 8, "kvm-2m") <= 0.05, policy
    eager = {c.ram: c.firmware_ns for c in matrix.select(policy="eager", vcpus=8)}
    assert eager[4 * TiB] / eager[4 * GiB] == pytest.approx(1024, rel=0.10)
    # ...and the OS phase still grows with memory (the memmap is 1/64 of RAM, accepted early on one CPU).
    os_ns = {c.ram: c.os_ns for c in matrix.select(policy="below-4g", vcpus=8)}
    assert os_ns[4 * TiB] > 10 * os_ns[4 * GiB]


def test_fixed_256m_without_on_demand_cannot_hold_a_64m_initrd(matrix) -> None:
    cells = matrix.select(policy="256M", vcpus=8)
    assert cells and all(not c.boots and c.failed_step == "stub initrd buffer" for c in cells)
    # No kernel ran, so there are no OS figures (a second TD used to supply them).
    assert all(c.os_ns is None and c.ready_accepted is None and c.total_ns is None for c in cells)


def test_a_cell_is_one_run_the_os_starts_from_what_the_firmware_accepted() -> None:
    """256 MiB up front, option 1, a 1 GiB initrd on 64 GiB: the DXE allocator accepts over 2 GiB on demand (the
    loader's copy and the stub's buffer). The OS phase runs on that same TD, so what is accepted when userspace is
    ready includes it; a separate TD booted without the option (the old two-TD cell) misses it."""
    policy = Policy("256M+option1", "256M", "option1")
    cell = run_cell(policy, 64 * GiB, 8, "kvm-2m", Payload(initrd_bytes=1 * GiB), 512 * MiB)
    assert cell.boots and cell.firmware_accepted > 2 * GiB + 256 * MiB
    assert cell.ready_accepted > cell.firmware_accepted + GiB  # Linux's memmap, SWIOTLB, userspace on top
    _, separate = boot_to_ready(64 * GiB, 8, upfront="256M")
    assert cell.ready_accepted - separate.td.tdx.bytes_in_state(PageState.ACCEPTED) > 1.5 * GiB


def test_compare_cli_writes_plots_and_html(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--sizes", "4G,64G", "--vcpus", "1,8", "--policies", "eager,below-4g,256M+option1",
                 "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["cells"]) == 12
    for name in ("report.html", "time_kvm-2m_8vcpu.svg", "accepted_kvm-2m_1vcpu.png", "address_space.svg"):
        assert (out / name).stat().st_size > 1000
    assert "<svg" in (out / "report.html").read_text()


def test_kata_13535_eager_64g_never_reaches_bds_in_90s_lazy_boots_under_15s() -> None:
    """kata-containers issue 13535: a 64 GiB TD with eager OVMF did not reach BDS after 90 s; with 512 MiB up
    front it booted in under 15 s. Profile kvm-4k (mainline KVM, as kata ran), 1 vCPU (kata's default), no free
    parameter; tolerance: the inequalities. kvm-2m cannot match the first figure (eager SEC there is ~43 s)."""
    eager, eager_run = boot_to_ready(64 * GiB, 1, profile="kvm-4k", upfront="all")
    lazy, lazy_run = boot_to_ready(64 * GiB, 1, profile="kvm-4k", upfront="512M")
    assert eager_run.sec.phase_ns > 90e9
    assert (lazy_run.sec.phase_ns + lazy.ns) < 15e9
    eager_2m, run_2m = boot_to_ready(64 * GiB, 1, profile="kvm-2m", upfront="all")
    assert run_2m.sec.phase_ns < 90e9  # the 2M profile is too fast for this figure


def _ratio_constant(ram: int, profile: str, vcpus: int, target: float) -> float:
    """The memory-independent boot time C (firmware init, kernel init, devices, userspace) for which
    (eager + C) / (lazy + C) equals the published ratio. Lazy = 512 MiB up front, Linux lazy; eager = SEC accepts
    everything. The 2022 kernel had no zero-watermark accept window (no prewmark calls)."""
    kernel = LinuxConfig(prewmark_mm_init_calls=0, prewmark_initcall_calls=0)
    times = {}
    for up in ("all", "512M"):
        work, run = boot_to_ready(ram, vcpus, profile=profile, upfront=up, kernel=kernel)
        times[up] = (run.sec.phase_ns + work.ns) / 1e9
    return (times["all"] - target * times["512M"]) / (target - 1)


def test_kirill_v2_boot_to_shell_ratios() -> None:
    """Kirill Shutemov, unaccepted memory v2 cover letter (linux-mm, 2022): boot to shell ~2.5x faster lazy than
    eager at 4 GiB and ~4x at 64 GiB. Free parameter: C, the boot time that does not depend on memory, fitted per
    figure (tolerance: C must be a plausible 0-30 s). One profile cannot match both figures with one C: on
    kvm-2m with 1 vCPU the 4 GiB figure needs C ~ 0.3 s but then the 64 GiB ratio is ~14x; the 64 GiB figure is
    matched by kvm-4k with 8 vCPUs (C ~ 4.6 s), which in turn cannot give 2.5x at 4 GiB (its 4 GiB eager/lazy
    ratio is below 2.5 for any C >= 0)."""
    c4 = _ratio_constant(4 * GiB, "kvm-2m", 1, 2.5)
    c64 = _ratio_constant(64 * GiB, "kvm-4k", 8, 4.0)
    assert 0 <= c4 <= 30 and 0 <= c64 <= 30
    assert _ratio_constant(64 * GiB, "kvm-2m", 1, 4.0) > 5 * max(c4, 0.1)  # one C does not fit both
    assert _ratio_constant(4 * GiB, "kvm-4k", 8, 2.5) < 0  # kvm-4k/8 vCPUs cannot reach 2.5x at 4 GiB
