"""The edk2 profiles: read from the image, named by the user, and what each changes in SEC's hand-off and the loader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.errors import ConfigError, InputError
from lazyaccept.firmware.pi.hob import MemoryAllocationHob
from lazyaccept.firmware.profiles import (
    DEFAULT_PROFILE,
    INTELTDX_2026_08,
    OVMF_X64_2025_02,
    OVMF_X64_2026_08,
    PROFILES,
    Edk2Profile,
    detect,
    image_facts,
    resolve,
)
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.spec.efi import EfiMemoryType as M
from lazyaccept.units import GiB
from lazyaccept.vmm.td import TdConfig, build_td
from lazyaccept.vmm.tdvf import (
    TdvfAttributes,
    TdvfSection,
    TdvfSectionType,
    builtin_ovmf_metadata,
    parse_tdvf_metadata,
    read_firmware,
    synthesize_image,
)

IMAGES = {
    "ovmf_fd": OVMF_X64_2025_02,
    "ovmf_2026_fd": OVMF_X64_2026_08,
    "ovmf_inteltdx_fd": INTELTDX_2026_08,
}


def test_builtin_layout_is_ovmf_2025_02() -> None:
    assert detect(builtin_ovmf_metadata()).profile is DEFAULT_PROFILE is OVMF_X64_2025_02


@pytest.mark.real_binary
@pytest.mark.parametrize("accessor", list(IMAGES))
def test_each_pinned_image_reads_as_its_profile(accessor: str) -> None:
    path = getattr(BinaryStore(), accessor)()
    choice = detect(read_firmware(path))
    profile = IMAGES[accessor]
    assert choice.profile is profile and "firmware version" in choice.why
    # The image's own volumes agree with the fdf values the profile carries.
    facts = image_facts(path.read_bytes())
    pei = profile.reservation("PEIFV")
    assert facts.peifv_size == (pei.size if pei else None)


def test_metadata_shape_without_volumes() -> None:
    """An image with TDVF metadata but no firmware volume: each build's SEC temporary RAM names it."""
    for profile in PROFILES.values():
        base, size = profile.sec_pei_temp_ram
        sections = [*builtin_ovmf_metadata().sections[:2], TdvfSection(2, TdvfSectionType.TD_HOB, TdvfAttributes(0),
                    0, 0, 0x809000, 0x2000), TdvfSection(3, TdvfSectionType.TEMP_MEM, TdvfAttributes(0), 0, 0, base,
                    size)]  # fmt: skip
        image = synthesize_image(sections, 0x400000)
        meta = parse_tdvf_metadata(image, source="")
        assert detect(meta).profile is DEFAULT_PROFILE  # no file to read: the default
        assert detect(replace(meta, source="/nonexistent/image.fd")).profile is profile


def test_named_profile_wins_and_says_what_the_image_reads_as() -> None:
    choice = resolve("inteltdx-2026.08", builtin_ovmf_metadata())
    assert choice.profile is INTELTDX_2026_08 and "ovmf-x64-2025.02" in choice.why
    with pytest.raises(ConfigError, match="unknown edk2 profile 'ovmf-9'"):
        resolve("ovmf-9", builtin_ovmf_metadata())


@pytest.mark.parametrize(
    ("profile", "options"),
    [(OVMF_X64_2025_02, "console=ttyS0 initrd=initrd"), (OVMF_X64_2026_08, "initrd=initrd console=ttyS0")],
)
def test_direct_boot_load_options(profile: Edk2Profile, options: str) -> None:
    assert profile.load_options("console=ttyS0", True) == options
    assert profile.load_options("console=ttyS0", False) == "console=ttyS0"


def _allocations(profile: Edk2Profile) -> dict[int, tuple[int, int]]:
    td = build_td(TdConfig(4 * GiB, 2))
    sec = run_sec(td, parse_policy("below-4g"), profile)
    return {h.base: (h.length, h.memory_type) for h in sec.dxe_hobs.hobs if isinstance(h, MemoryAllocationHob)}


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=lambda p: p.name)
def test_sec_hands_dxe_the_profiles_allocations(profile: Edk2Profile) -> None:
    allocs = _allocations(profile)
    # PlatformTdxPublishRamRegions: the reset vector's page tables and the AP mailbox are ACPI NVS in every release;
    # the work area from 406f42cb74 (edk2-stable202508), boot-services data before.
    assert allocs[0x800000] == (0x6000, M.EfiACPIMemoryNVS)
    assert allocs[0x80C000] == (0x1000, M.EfiACPIMemoryNVS)
    work_area = M.EfiBootServicesData if profile is OVMF_X64_2025_02 else M.EfiACPIMemoryNVS
    assert allocs[0x80B000] == (0x1000, work_area)
    # TD_HOB and the SEC/PEI temporary RAM get no allocation HOB.
    assert 0x809000 not in allocs and profile.sec_pei_temp_ram[0] not in allocs
    fvs = {base: size for base, (size, t) in allocs.items() if t == M.EfiBootServicesData and base < 0x2000000}
    fvs.pop(0x80B000, None)
    expected = {
        "ovmf-x64-2025.02": {0x820000: 0xE0000, 0x900000: 0xE80000},
        "ovmf-x64-2026.08": {0x830000: 0xD0000, 0x900000: 0xE80000},
        "inteltdx-2026.08": {},  # PEI-less: no PEIFV, DXEFV into HOB pages
    }[profile.name]
    assert fvs == expected
    if profile.phit_fv_buffer:
        assert any(size == profile.phit_fv_buffer and base > 0x2000000 for base, (size, _) in allocs.items())


def test_profile_regions_must_be_in_the_images_temp_mem(tmp_path: Path) -> None:
    """A profile whose reset-vector regions the image's metadata does not add is the wrong profile."""
    sections = [*builtin_ovmf_metadata().sections[:2],
                TdvfSection(2, TdvfSectionType.TD_HOB, TdvfAttributes(0), 0, 0, 0x809000, 0x2000),
                TdvfSection(3, TdvfSectionType.TEMP_MEM, TdvfAttributes(0), 0, 0, 0x800000, 0x6000)]  # fmt: skip
    image = tmp_path / "small-temp-mem.fd"
    image.write_bytes(synthesize_image(sections, 0x400000))
    td = build_td(TdConfig(4 * GiB, 1, firmware_path=str(image)))
    assert detect(td.firmware).profile is DEFAULT_PROFILE  # no volumes, no known TEMP_MEM: the default
    with pytest.raises(InputError, match="AP mailbox .* is in no TEMP_MEM section"):
        run_sec(td, parse_policy("below-4g"), OVMF_X64_2026_08)
