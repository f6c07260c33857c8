"""edk2's own regressions reproduced with the real binaries, and the Python firmware's profiles held to them.

b15f98e68f (OvmfPkg/IntelTdx, 2025-09, first in edk2-stable202511): with more than one vCPU, SEC's
BspApAcceptMemoryResourceRange accepts 2 MiB pages only, so a TD HOB range whose size is not a multiple of 2 MiB
(q35 keeps all RAM below 4 GiB up to 2815M) loses its last sub-2 MiB piece: it stays unaccepted while the HOB
publishes it as system memory. OVMF 2025.02 then places PEI's permanent memory at the top of that RAM and the
TD is terminated on PeiCore's first write there, before any payload runs; 2026.08 accepts the tail on CPU 0.
"""

from __future__ import annotations

import pytest

from lazyaccept import binaries
from lazyaccept.boot import BootScenario, Outcome, run_boot
from lazyaccept.firmware.profiles import get_profile
from lazyaccept.tdvf_run import TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.tdx.module import PageState
from lazyaccept.units import MiB
from lazyaccept.vmm.td import TdConfig
from tests.cpu.sec_truth import assert_sec_model_agrees, run_real_sec

pytestmark = pytest.mark.real_binary
ODD_RAM = 2815 * MiB  # below q35's 2816M split: all of it below 4 GiB, ending 1 MiB past a 2 MiB boundary
TAIL = (ODD_RAM - MiB, ODD_RAM)


def test_ovmf_2025_02_on_two_vcpus_leaves_the_tail_pending_and_pei_terminates_the_td() -> None:
    rep = run_tdvf(TdvfRun(binaries.ovmf_fd(), ram=ODD_RAM, vcpus=2, max_wall_s=120))
    assert rep.outcome == TdvfOutcome.TERMINATED, (rep.outcome, rep.detail)
    assert rep.module == "PeiCore" and "write of GPA" in rep.detail
    gpa = int(rep.detail.split("GPA ")[1].split()[0], 16)
    assert TAIL[0] <= gpa < TAIL[1], rep.detail
    # the Python SEC with the 2025.02 profile leaves exactly that piece pending, and says so
    td = rep.td
    assert td is not None
    assert td.tdx.bytes_in_state(PageState.ACCEPTED, *TAIL) == 0  # never accepted (the VMM never even AUGed it)
    config = TdConfig(ram_size=ODD_RAM, vcpus=2, firmware_path=str(binaries.ovmf_fd()))
    real_sec, _machine, _result = run_real_sec(config)
    _model, sec = assert_sec_model_agrees(real_sec, config, get_profile("ovmf-x64-2025.02"))
    assert sec.dropped_tails == [TAIL]


@pytest.mark.parametrize("profile", ["ovmf-x64-2025.02", "ovmf-x64-2026.08"])
def test_python_firmware_enters_pei_memory_as_the_release_does(profile: str) -> None:
    rep = run_boot(BootScenario(ram=ODD_RAM, smp=2, initrd_size=16 * MiB, edk2_profile=profile, os_ready_bytes=0,
                                log_calls=False, cpu="unicorn"))
    if profile == "ovmf-x64-2025.02":  # as the real image above: PeiCore's write into the tail ends the TD
        assert rep.outcome == Outcome.TERMINATED and rep.reason.startswith("in PEI"), (rep.outcome, rep.reason)
        assert rep.termination is not None and "PeiCore" in rep.termination
        gpa = int(rep.termination.split("GPA ")[1].split()[0], 16)
        assert TAIL[0] <= gpa < TAIL[1]
    else:
        assert rep.outcome == Outcome.KERNEL_ENTRY, (rep.outcome, rep.reason)


def test_ovmf_2026_08_accepts_the_tail_on_cpu_0() -> None:
    config = TdConfig(ram_size=ODD_RAM, vcpus=2, firmware_path=str(binaries.ovmf_2026_fd()))
    td, _machine, _result = run_real_sec(config)
    assert [(s, e) for s, e, st in td.tdx.state_ranges(*TAIL) if st == PageState.ACCEPTED] == [TAIL]
    _model, sec = assert_sec_model_agrees(td, config, get_profile("ovmf-x64-2026.08"))
    assert sec.dropped_tails == []
