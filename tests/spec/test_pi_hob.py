"""The PI HOB spec layer (lazyaccept.spec.pi_hob) and the VMM's TD HOB written through it."""

from __future__ import annotations

import pytest

from lazyaccept.errors import ConfigError
from lazyaccept.firmware.pi.hob import Hob, PhitHob, ResourceHob, encode_hob_list, parse_hob_list
from lazyaccept.spec import pi_hob as S
from lazyaccept.units import GiB
from lazyaccept.vmm.layout import q35_split, td_ram_entries
from lazyaccept.vmm.td import HobConvention, TdConfig, build_td, encode_td_hob, td_hob_resources
from lazyaccept.vmm.tdvf import builtin_ovmf_metadata


def test_sizes_are_the_c_sizeof() -> None:
    sizes = {
        S.EFI_HOB_GENERIC_HEADER: 8,
        S.EFI_HOB_HANDOFF_INFO_TABLE: 56,
        S.EFI_HOB_MEMORY_ALLOCATION_HEADER: 40,
        S.EFI_HOB_MEMORY_ALLOCATION: 48,
        S.EFI_HOB_RESOURCE_DESCRIPTOR: 48,
        S.EFI_HOB_GUID_TYPE: 24,
        S.EFI_HOB_FIRMWARE_VOLUME: 24,
        S.EFI_HOB_FIRMWARE_VOLUME2: 56,
        S.EFI_HOB_FIRMWARE_VOLUME3: 64,
        S.EFI_HOB_CPU: 16,
        S.EFI_HOB_UEFI_CAPSULE: 24,
    }
    assert {layout.c_name: layout.size for layout in sizes} == {layout.c_name: n for layout, n in sizes.items()}
    assert S.EFI_HOB_RESOURCE_DESCRIPTOR.offset_of("PhysicalStart") == 32
    assert S.EFI_HOB_HANDOFF_INFO_TABLE.offset_of("EfiEndOfHobList") == 48


def test_resource_descriptor_round_trip() -> None:
    layout = S.EFI_HOB_RESOURCE_DESCRIPTOR
    values = {
        **S.hob_header(S.HobType.RESOURCE_DESCRIPTOR, layout.size),
        "ResourceType": S.ResourceType.MEMORY_UNACCEPTED,
        "ResourceAttribute": S.TDVF_RAM_ATTRIBUTES,
        "PhysicalStart": 0x100000000,
        "ResourceLength": 60 * GiB,
    }
    raw = layout.pack(values)
    assert raw[:4] == bytes([3, 0, 48, 0]) and len(raw) == 48
    back = layout.unpack(raw)
    assert {k: back[k] for k in values} == {k: int(v) for k, v in values.items()}


def test_hob_header_refuses_a_length_hoblength_cannot_hold() -> None:
    with pytest.raises(ValueError, match="HobLength"):
        S.hob_header(S.HobType.GUID_EXTENSION, S.MAX_HOB_LENGTH + 8)


@pytest.mark.parametrize("convention", list(HobConvention))
def test_vmm_td_hob_is_the_hob_writers_bytes(convention: HobConvention) -> None:
    """The VMM writes the TD HOB with the spec layouts alone; the firmware's writer gives the same bytes."""
    entries = td_ram_entries(q35_split(64 * GiB), builtin_ovmf_metadata())
    resources = td_hob_resources(entries, convention)
    raw = encode_td_hob(resources, base_address=0x809000, capacity=0x2000)
    records: list[Hob] = [PhitHob()]
    records += [ResourceHob(kind, S.TDVF_RAM_ATTRIBUTES, start, size) for kind, start, size in resources]
    assert raw == encode_hob_list(records, base_address=0x809000, end_pointer="qemu")
    assert parse_hob_list(raw, base_address=0x809000).end_pointer == "qemu"


def test_vmm_td_hob_overrun_is_qemus_fatal_error() -> None:
    entries = td_ram_entries(q35_split(4 * GiB), builtin_ovmf_metadata())
    resources = td_hob_resources(entries, HobConvention.QEMU) * 100
    with pytest.raises(ConfigError, match="TD_HOB overrun"):
        encode_td_hob(resources, base_address=0x809000, capacity=0x2000)
    assert build_td(TdConfig(4 * GiB)).hob_bytes[:2] == b"\x01\x00"
