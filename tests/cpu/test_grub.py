"""Debian's unmodified GRUB 2.12 (monolithic grubx64.efi) booted from a GPT disk on lazyaccept firmware, through
its own FAT/GPT drivers and grub.cfg, to the Linux stub's jump into the kernel (or to the failure GRUB and the
stub print). Each test is a real run of both binaries under unicorn.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.commands import boot as boot_cmd
from lazyaccept.firmware.loaders.grub import write_disk_dir
from lazyaccept.units import GiB, MiB

pytestmark = pytest.mark.real_binary


def grub_boot(**kw) -> BootReport:
    kw.setdefault("smp", 8)
    kw.setdefault("rng_seed", 7)
    kw.setdefault("os_ready_bytes", 0)  # the guest model after the handoff is tested elsewhere
    return run_boot(BootScenario(grub=True, **kw))


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`--write-disk-dir`: the pinned kernel, a sparse 1 GiB synthetic initrd and a grub.cfg."""
    folder = tmp_path_factory.mktemp("esp")
    write_disk_dir(folder, BinaryStore().linux_vmlinuz(), 1 * GiB, "console=ttyS0 nokaslr")
    return folder


def test_disk_dir_is_sparse_and_boots_the_kernel_with_option1(disk_dir: Path) -> None:
    initrd = disk_dir / "initrd.img"
    assert initrd.stat().st_size == 1 * GiB
    assert initrd.stat().st_blocks * 512 < 1 * MiB  # the image is never materialised
    rep = grub_boot(ram=64 * GiB, upfront="256M", option1=True, disk_from=str(disk_dir))
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert "Booting `Debian GNU/Linux (lazyaccept)'" in rep.console
    assert "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path" in rep.console
    assert rep.accepted_by_actor["dxe-option1"] >= 1 * GiB  # the stub's initrd buffer
    assert rep.unaccepted_table["set_bytes"] > 60 * GiB
    assert rep.boot_params.cmdline.startswith("BOOT_IMAGE=/vmlinuz")
    disk = rep.grub["esp"]["devices"][0]
    assert disk["path"] == "PciRoot(0x0)/Pci(0x4,0x0)"
    assert disk["bytes_read"] > 1 * GiB  # GRUB read the initrd itself, through Block I/O
    assert re.fullmatch(
        r"PciRoot\(0x0\)/Pci\(0x4,0x0\)/HD\(1,GPT,[0-9A-F-]{36},0x800,0x[0-9a-f]+\)",
        rep.grub["esp"]["devices"][1]["path"],
    )


def test_without_on_demand_accept_the_stubs_initrd_buffer_fails_as_grub_reports_it(disk_dir: Path) -> None:
    rep = grub_boot(ram=64 * GiB, upfront="256M", disk_from=str(disk_dir))
    assert rep.outcome == "loader-failed"
    assert "EFI stub: ERROR: Failed to load initrd: 0x8000000000000009" in rep.console
    # Debian's GRUB runs the stub with its own PE loader (peimage), not StartImage.
    assert "Application failed, r = 9" in rep.console
    assert "error: image not loaded." in rep.grub["errors"]
    failed = rep.grub["failed_allocations"][0]
    assert failed["image"].startswith("linux EFI stub") and failed["owner"] == "stub"
    assert failed["size_bytes"] == 1 << 30
    assert failed["detail"].startswith("MaxAddress, type 2, 0x40000 pages")  # 1 GiB
    assert "the stub's allocation failed" in rep.explanation
    assert rep.termination is None


@pytest.mark.parametrize("ram", [4 * GiB, 64 * GiB], ids=["4G", "64G"])
def test_below_4g_boots_through_grub(ram: int) -> None:
    rep = grub_boot(ram=ram, upfront="below-4g", initrd_size=64 * MiB, log_calls=False)
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert rep.lost_ram_bytes == 0
    assert rep.unaccepted_table["set_bytes"] == ram - 2 * GiB
    # The generated grub.cfg is where Debian's GRUB looks ($prefix/grub.cfg): it reads it, nothing to fix.
    assert rep.grub["config_read"] == "/EFI/debian/grub.cfg" and rep.grub["hint"] is None
    assert rep.grub["config_paths_tried"] == ["/EFI/BOOT/grub.cfg", "/EFI/debian/grub.cfg"]


def test_lsefimmap_at_the_grub_prompt_shows_unaccepted_memory_as_an_unknown_type() -> None:
    # No grub.cfg: GRUB ends at its prompt; scripted keys are typed when it shows it.
    rep = grub_boot(
        ram=64 * GiB, upfront="below-4g", initrd_size=16 * MiB, keys=[("grub>", "lsefimmap\n")], grub_cfg=""
    )
    assert rep.outcome == "waiting-for-input", rep.reason
    assert "GNU GRUB  version 2.12" in rep.console
    lines = [line for line in rep.console.splitlines() if line.startswith("Unk 0f")]
    # GRUB 2.12 names types 0..14 and prints anything else as "Unk %02x": type 15 is EfiUnacceptedMemoryType.
    assert "Unk 0f    0000000100000000-000000107fffffff 00f80000     62GiB" in lines, lines
    assert "conv-mem" in rep.console
    assert rep.grub["grub_cfg_on_disk"] == [] and rep.grub["config_read"] is None
    assert "GRUB found no config" in rep.explanation


def test_measurement_protocols_are_a_recorded_setting() -> None:
    rep = grub_boot(ram=4 * GiB, upfront="below-4g", initrd_size=16 * MiB, cc_measurement=False, tcg2=True)
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.grub["measurement"] == "tcg2"
    assert any("pcr" in m for m in rep.measurements)
    args = boot_cmd.report_dict(rep)
    assert args["scenario"]["tcg2"] is True and args["scenario"]["cc_measurement"] is False
