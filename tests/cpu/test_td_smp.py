"""edk2's own TDVF (Debian's OVMF.fd 2025.02) on a TD with 2 vCPUs: the AP runs OVMF's reset vector and mailbox
loop, joins SEC's parallel accept through the mailbox with its own TDCALLs, and the TDX module's truth after SEC
equals the Python SEC model's for the same TD and vCPU count."""

from __future__ import annotations

import pytest

from lazyaccept import binaries
from lazyaccept.cpu.unicorn.td_machine import rendezvous_pages
from lazyaccept.errors import ConfigError
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.td import TdConfig
from lazyaccept.vmm.tdvf import TdvfMetadata, TdvfSection, TdvfSectionType
from tests.cpu.sec_truth import assert_sec_model_agrees, run_real_sec


@pytest.mark.real_binary
def test_two_vcpus_accept_in_sec_what_the_sec_model_accepts() -> None:
    config = TdConfig(ram_size=4 * GiB, vcpus=2, firmware_path=str(binaries.ovmf_fd()))
    td, machine, result = run_real_sec(config)
    model, _sec = assert_sec_model_agrees(td, config)
    real = td.tdx.stats

    # Both vCPUs accepted, each with its own TDCALLs; together, every accept.
    counts = machine.dispatcher.counts
    by_vcpu = [counts[i]["MEM_PAGE_ACCEPT"] for i in range(2)]
    assert all(n > 0 for n in by_vcpu) and sum(by_vcpu) == real.accepted_2m + real.accepted_4k
    actors = td.tdx.accepted_by_actor  # the module issuing each accept, by vCPU
    ap_bytes = sum(n for actor, n in actors.items() if actor.endswith(" vCPU 1"))
    assert ap_bytes == by_vcpu[1] * 2 * MiB  # the AP's share is in 2M pages; the BSP does the 4K pieces
    bsp_bytes = sum(n for actor, n in actors.items() if actor.endswith(" vCPU 0"))
    assert bsp_bytes + ap_bytes == model.tdx.accepted_by_actor["sec"]
    # The AP started at the reset vector and went through SecEntry's TDG.VP.INFO to the mailbox.
    assert counts[1]["VP_INFO"] >= 2 and result.per_vcpu[1].tdcalls["MEM_PAGE_ACCEPT"] == by_vcpu[1]
    # The BSP left MpSerializeEnd after the slowest AP: its clock is not behind the AP's.
    assert td.tdx.clocks_ns[0] >= td.tdx.clocks_ns[1] > 0
    assert machine.switches >= 2 and machine.spins[1] >= 1


def test_an_image_without_the_work_area_section_cannot_run_aps() -> None:
    def section(i: int, kind: TdvfSectionType, base: int, size: int) -> TdvfSection:
        return TdvfSection(i, kind, 0, 0, 0, base, size)  # type: ignore[arg-type]

    with_it = TdvfMetadata(
        (section(0, TdvfSectionType.TEMP_MEM, 0x80B000, 0x2000), section(1, TdvfSectionType.TD_HOB, 0x809000, 0x2000)),
        0x400000,
        0,
    )
    assert rendezvous_pages(with_it) == (0x80B000, 0x80C000)
    without = TdvfMetadata((section(0, TdvfSectionType.TD_HOB, 0x809000, 0x2000),), 0x400000, 0, source="x.fd")
    with pytest.raises(ConfigError, match="x.fd: no TdxInitMem section"):
        rendezvous_pages(without)
