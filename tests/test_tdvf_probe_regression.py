"""edk2 f80a406aa9 (MdeModulePkg/Core/Dxe/Mem/Page.c CoreGetMemoryMap, "Account for Unaccepted Entries", 2025-10,
first in edk2-stable202511) reproduced with the real binaries.

Before it, GetMemoryMap's size probe counted gMemoryMap entries and GCD reserved, persistent and runtime MMIO entries,
but not GCD unaccepted ones, which the call then writes all the same. A loader that sizes its buffer exactly from the
probe (tests/cpu/efi_apps/memory_map_probe_app.c, started by the real OVMF through QEMU direct boot) gets EFI_SUCCESS
and a map written past its buffer, once there are more unaccepted descriptors than the probe over-counts through
merges (2 on Debian's OVMF 2025.02 with an 8 GiB TD, 6 since it installs QEMU's ACPI tables: the pages it frees
again merge with their neighbours; the app splits the one unaccepted range into 9 descriptors with
SetMemorySpaceAttributes(EFI_MEMORY_RUNTIME) stripes).

OVMF 2026.08 (OvmfPkgX64) counts them: the same app's map fits the probed size. (It has no UEFI shell, so after the
app returns BDS finds nothing more to boot.) The Python firmware's profiles follow each release's rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyaccept import binaries
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.spec.linux_boot import read_setup_header
from lazyaccept.tdvf_run import TdvfOutcome, TdvfRun, run_tdvf
from lazyaccept.units import GiB
from lazyaccept.vmm.devices.fw_cfg import DirectBoot, FwCfgKey, direct_boot_items
from tests.cpu.efi_apps.build import PE_HEADER_AT, build
from tests.hostile.conftest import cases

pytestmark = pytest.mark.real_binary
SOURCE = Path(__file__).parent / "cpu" / "efi_apps" / "memory_map_probe_app.c"
RAM = 8 * GiB  # q35: 2 GiB below 4 GiB (accepted by SEC), 6 GiB above it left unaccepted
STRIPES = 4  # -> 9 unaccepted descriptors: 8 more than the probe counts, beyond its over-count of 6
MAX_WALL_S = 120  # a bound, not a figure: about 10 s to the app on an idle machine
BUFFER_TOO_SMALL = (1 << 63) | 5
BAD_BUFFER_SIZE = (1 << 63) | 4
SUCCESS = 0


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("probe-app")
    return {n: build(SOURCE, out / f"probe-{n}.efi", f"STRIPES={n}") for n in (0, STRIPES)}


def real(app: Path, firmware: Path) -> tuple[TdvfOutcome, dict[str, int], str]:
    rep = run_tdvf(TdvfRun(firmware, ram=RAM, kernel=app, cmdline="", max_wall_s=MAX_WALL_S))
    return rep.outcome, cases(rep.console), rep.console


def model(app: Path, profile: str) -> tuple[str, dict[str, int], str]:
    rep = run_boot(BootScenario(ram=RAM, smp=1, efi_app=str(app), edk2_profile=profile))
    assert rep.outcome == "app-exited", (rep.outcome, rep.reason)
    return rep.reason, cases(rep.console), rep.console


def test_the_app_is_a_kernel_qemu_splits_and_ovmf_joins(apps: dict[int, Path]) -> None:
    image = apps[STRIPES].read_bytes()
    header = read_setup_header(image)
    assert header is not None and header["version"] >= 0x202 and header["loadflags"] & 1
    assert int.from_bytes(image[0x3C:0x40], "little") == PE_HEADER_AT and image[PE_HEADER_AT:][:4] == b"PE\0\0"
    items = direct_boot_items(DirectBoot(image), below_4g=2 * GiB)
    setup, kernel = items[FwCfgKey.SETUP_DATA], items[FwCfgKey.KERNEL_DATA]
    assert len(setup) == (header["setup_sects"] + 1) * 512 and kernel == image[len(setup):]
    # QEMU patches only setup-header bytes: the joined file keeps every PE byte
    assert setup[:0x1F1] == image[:0x1F1] and setup[0x26C:] == image[0x26C:len(setup)]


def test_ovmf_2025_02_probe_ignores_unaccepted_descriptors_and_the_map_overflows(apps: dict[int, Path]) -> None:
    outcome, one, _ = real(apps[0], binaries.ovmf_fd())
    assert outcome == TdvfOutcome.SHELL  # the app returned and BDS went on
    assert one["unaccepted_descriptors"] == 1 and one["map_status"] == SUCCESS
    # what the probe over-counts: merged descriptors (6 once the firmware installs QEMU's ACPI tables: the pages
    # it frees again, QEMU's blobs and the MADT TdxDxe replaces, merge with their neighbours)
    slack = one["probe_size"] - one["map_size"]
    assert 0 <= slack < 8 * one["descriptor_size"]
    outcome, split, console = real(apps[STRIPES], binaries.ovmf_fd())
    assert outcome == TdvfOutcome.SHELL and split["stripes_marked"] == STRIPES
    extra = (split["unaccepted_descriptors"] - 1) * split["descriptor_size"]
    assert split["unaccepted_descriptors"] == 2 * STRIPES + 1
    assert split["probe_size"] == one["probe_size"]  # eight more descriptors, not one more counted
    assert split["map_size"] == one["map_size"] + extra
    # the overflow: EFI_SUCCESS, a returned size past the probe's, bytes written past the buffer
    assert split["map_status"] == SUCCESS and split["map_size"] > split["probe_size"]
    assert split["written_past_probe"] > split["map_size"] - split["probe_size"] - split["descriptor_size"]
    assert "OVERFLOW" in console


def test_ovmf_2026_08_probe_counts_them(apps: dict[int, Path]) -> None:
    outcome, split, _ = real(apps[STRIPES], binaries.ovmf_2026_fd())
    assert outcome == TdvfOutcome.NO_BOOT_OPTION, outcome  # the app returned; no shell to go on to
    assert split["unaccepted_descriptors"] == 2 * STRIPES + 1
    assert split["map_status"] == SUCCESS and split["map_size"] <= split["probe_size"]
    assert split["written_past_probe"] == 0


@pytest.mark.parametrize("profile, counted", [("ovmf-x64-2025.02", False), ("ovmf-x64-2026.08", True)])
def test_python_firmware_profiles_count_as_the_release_does(
    apps: dict[int, Path], profile: str, counted: bool
) -> None:
    """The probe's rule per profile, as the real 2025.02 shows it: eight more unaccepted descriptors add eight to the
    map and nothing (2025.02) or eight (2026.08) to the probe. With 2025.02's rule the Python firmware's map overflows
    the probed buffer as the real one does (EFI_SUCCESS, bytes written past the buffer): its probe counts no bin
    slack before d419725b23, so nothing absorbs the eight uncounted descriptors (the real map's merges absorb part of
    them, so it overflows by less)."""
    _, one, _ = model(apps[0], profile)
    reason, split, _ = model(apps[STRIPES], profile)
    assert split["stripes_marked"] == STRIPES and split["unaccepted_descriptors"] == 2 * STRIPES + 1
    extra = (split["unaccepted_descriptors"] - one["unaccepted_descriptors"]) * split["descriptor_size"]
    assert split["map_size"] - one["map_size"] == extra
    assert split["probe_size"] - one["probe_size"] == (extra if counted else 0)
    fits = split["map_status"] == SUCCESS and split["written_past_probe"] == 0
    assert fits == reason.endswith("SUCCESS")
    if counted:
        assert fits
    else:
        assert split["map_status"] == SUCCESS and split["written_past_probe"] > 0 and not fits
