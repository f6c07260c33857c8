"""QEMU q35 RAM layout for a TD, the RAM entries around the TDVF sections, and the TD HOB QEMU writes."""

from __future__ import annotations

import pytest

from lazyaccept.errors import ConfigError
from lazyaccept.firmware.pi.hob import PhitHob, parse_hob_list
from lazyaccept.spec.pi_hob import ResourceType
from lazyaccept.tdx.module import PageState
from lazyaccept.units import GiB, MiB, TiB
from lazyaccept.vmm.layout import RamKind, q35_split, td_ram_entries
from lazyaccept.vmm.td import HobConvention, TdConfig, build_td
from lazyaccept.vmm.tdvf import builtin_ovmf_metadata


@pytest.mark.parametrize(
    ("ram", "below", "above"),
    [
        (512 * MiB, 512 * MiB, 0),
        (0xB0000000 - 4096, 0xB0000000 - 4096, 0),  # just under 2.75 GiB: all of it below 4 GiB
        (0xB0000000, 2 * GiB, 0xB0000000 - 2 * GiB),  # from 2.75 GiB: 2 GiB below, the rest from 4 GiB
        (4 * GiB, 2 * GiB, 2 * GiB),
        (64 * GiB, 2 * GiB, 62 * GiB),
        (67000 * MiB, 2 * GiB, 67000 * MiB - 2 * GiB),
        (4 * TiB, 2 * GiB, 4 * TiB - 2 * GiB),
    ],
)
def test_q35_split(ram: int, below: int, above: int) -> None:
    split = q35_split(ram)
    assert (split.below_4g, split.above_4g) == (below, above)


def test_max_ram_below_4g_only_lowers() -> None:
    assert q35_split(64 * GiB, max_ram_below_4g=1 * GiB).below_4g == 1 * GiB
    assert q35_split(64 * GiB, max_ram_below_4g=3 * GiB).below_4g == 2 * GiB


def test_ram_entries_split_around_ovmf_sections() -> None:
    entries = td_ram_entries(q35_split(64 * GiB), builtin_ovmf_metadata())
    got = [(e.start, e.size, e.kind) for e in entries]
    U, A = RamKind.UNACCEPTED, RamKind.ADDED
    assert got == [
        (0x0, 0x800000, U),
        (0x800000, 0x6000, A),
        (0x806000, 0x3000, U),
        (0x809000, 0x2000, A),  # TD_HOB and the TEMP_MEM after it stay two entries: QEMU does not merge them
        (0x80B000, 0x2000, A),
        (0x80D000, 0x4000, U),
        (0x811000, 0xF000, A),
        (0x820000, 2 * GiB - 0x820000, U),
        (4 * GiB, 62 * GiB, U),
    ]


def test_section_outside_ram_is_fatal() -> None:
    with pytest.raises(ConfigError, match="Failed to accept memory for TDVF section"):
        td_ram_entries(q35_split(4 * MiB), builtin_ovmf_metadata())


def test_td_hob_bytes_as_qemu_writes_them() -> None:
    td = build_td(TdConfig(64 * GiB, 2))
    raw = td.tdx.memory.read(0x809000, 0x2000, actor="test")
    hobs = parse_hob_list(raw, base_address=0x809000)
    assert hobs.end_pointer == "qemu"
    phit = hobs.phit
    assert isinstance(phit, PhitHob) and phit.memory_top == phit.free_memory_bottom == 0
    resources = hobs.resources()
    assert [(r.start, r.length) for r in resources] == [(e.start, e.size) for e in td.ram_entries]
    for r, e in zip(resources, td.ram_entries, strict=True):
        want = ResourceType.MEMORY_UNACCEPTED if e.kind == RamKind.UNACCEPTED else ResourceType.SYSTEM_MEMORY
        assert r.resource_type == want and int(r.attributes) == 0x7


def test_truth_after_build_only_sections_are_accepted() -> None:
    td = build_td(TdConfig(4 * TiB, 64))
    fw = td.firmware
    accepted = [(s, e) for s, e, st in td.tdx.state_ranges(0, 1 << 46) if st == PageState.ACCEPTED]
    assert accepted == [(0x800000, 0x806000), (0x809000, 0x80D000), (0x811000, 0x820000), (fw.rom_base, 4 * GiB)]
    assert td.tdx.vmm.measured_4k * 4096 == 0x37C000  # BFV only (MR_EXTEND)
    assert td.vmm_build_ns > 0


def test_cloud_hypervisor_convention_has_no_type_7() -> None:
    td = build_td(TdConfig(8 * GiB, 1, hob_convention=HobConvention.CLOUD_HYPERVISOR))
    hobs = parse_hob_list(td.hob_bytes, base_address=td.hob_base)
    assert {r.resource_type for r in hobs.resources()} == {ResourceType.SYSTEM_MEMORY}


def test_bad_configs() -> None:
    with pytest.raises(ConfigError, match="vCPU"):
        build_td(TdConfig(4 * GiB, 0))
    with pytest.raises(ConfigError, match="multiple of 4 KiB"):
        q35_split(4 * GiB + 1)
