"""`boot --disk FILE`: Debian's GRUB and kernel on images made by sgdisk, mkfs.vfat and mtools, booted by the
Python firmware from the image's ESP to the stub's jump into the kernel: a 100 GiB sparse GPT image with GRUB at the
removable-media path, and an MBR image without one (then lazyaccept's GRUB starts as if loaded from there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootScenario, Outcome, run_boot
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.disk import grub_cfg_text

from ..vmm.disk_images import mbr_image, sgdisk_image

pytestmark = pytest.mark.real_binary


def esp(with_grub: bool) -> dict[str, Path | bytes]:
    store = BinaryStore()
    files: dict[str, Path | bytes] = {
        "EFI/debian/grub.cfg": grub_cfg_text("vmlinuz", None, "console=ttyS0 nokaslr").encode(),
        "vmlinuz": store.linux_vmlinuz(),
    }
    if with_grub:
        files["EFI/BOOT/BOOTX64.EFI"] = store.grub_efi()
    return files


def boot(image: Path):
    return run_boot(BootScenario(grub=True, disk=str(image), ram=4 * GiB, smp=1, os_ready_bytes=0, rng_seed=7))


def test_a_100_gib_sparse_gpt_image_boots_its_own_grub(tmp_path: Path) -> None:
    image = sgdisk_image(tmp_path / "big.img", 100 * GiB, esp(with_grub=True))
    rep = boot(image)
    assert rep.outcome == Outcome.KERNEL_ENTRY, (rep.reason, rep.console[-2000:])
    disk = rep.grub["esp"]
    assert (disk["partition_table"], disk["disk_bytes"], disk["fat"]) == ("gpt", 100 * GiB, "FAT32")
    whole = disk["devices"][0]
    assert whole["path"] == "PciRoot(0x0)/Pci(0x4,0x0)"
    assert 10 * MiB < whole["bytes_read"] < 40 * MiB  # GRUB read the kernel and its config, not 100 GiB
    assert "Loading Linux" in rep.console
    assert image.stat().st_blocks * 512 < 100 * MiB


def test_an_mbr_image_without_a_loader_starts_lazyaccepts_grub_from_its_esp(tmp_path: Path) -> None:
    image = mbr_image(tmp_path / "mbr.img", 96 * MiB, esp(with_grub=False), esp_bytes=80 * MiB)
    rep = boot(image)
    assert rep.outcome == Outcome.KERNEL_ENTRY, (rep.reason, rep.console[-2000:])
    disk = rep.grub["esp"]
    assert disk["partition_table"] == "mbr" and "EFI/BOOT/BOOTX64.EFI" not in disk["files"]
    assert disk["devices"][1]["path"] == "PciRoot(0x0)/Pci(0x4,0x0)/HD(1,MBR,0x1a2b3c4d,0x800,0x28000)"
    assert "Loading Linux" in rep.console  # GRUB found the image's EFI/debian/grub.cfg through its own FAT driver
    assert [e["what"] for e in rep.loader_events][:2] == [
        "\\EFI\\BOOT\\BOOTX64.EFI not on the image: lazyaccept's GRUB instead",
        "LoadImage of \\EFI\\BOOT\\BOOTX64.EFI",
    ]


def own_disk(tmp_path: Path, files: dict) -> Path:  # noqa: ANN001 - name -> vmm.disk.Source
    from lazyaccept.vmm.disk import build_esp_disk

    disk, _volume = build_esp_disk(files)
    disk.write_image(tmp_path / "own.img")
    return tmp_path / "own.img"


def test_an_image_with_its_own_loader_is_reported_as_that_loader_not_lazyaccepts_grub(tmp_path: Path) -> None:
    """The image's EFI/BOOT/BOOTX64.EFI is systemd-boot with a 1 GiB initrd: on 64 GiB with 256M up front it is
    that loader's allocation that fails, and the report names it (not GRUB, not lazyaccept's grub.cfg); Secure
    Boot's warning is about that image, and a signed shim there gets none."""
    from lazyaccept.firmware.loaders import systemd_boot as sb
    from lazyaccept.firmware.loaders.grub import initrd_source
    from lazyaccept.vmm.disk import BytesSource, HostFile

    store = BinaryStore()
    files = sb.systemd_boot_esp(HostFile(store.linux_vmlinuz()), initrd_source(1 * GiB), "console=ttyS0 nokaslr",
                                BytesSource(store.systemd_boot_efi().read_bytes()))
    rep = run_boot(BootScenario(grub=True, disk=str(own_disk(tmp_path, files)), ram=64 * GiB, smp=1, upfront="256M",
                                os_ready_bytes=0, edk2_profile="inteltdx-2026.08", timeout_s=300))
    assert rep.outcome == Outcome.LOADER_FAILED, rep.reason
    assert rep.reason.startswith("systemd 262-1 (the disk's EFI/BOOT/BOOTX64.EFI): ") and "xmalloc_pages" in rep.reason
    assert "GRUB" not in rep.explanation and "grub.cfg" not in rep.explanation + rep.hint
    assert rep.grub is not None and rep.grub["image"] == "systemd 262-1"
    assert [(f["image"], f["owner"], f["size_bytes"]) for f in rep.grub["failed_allocations"]] == [
        ("BOOTX64.EFI", "loader", 1 * GiB), ("BOOTX64.EFI", "loader", 1 * GiB)]
    assert "WARNING: inteltdx-2026.08's image has Secure Boot on" in rep.edk2_profile_why  # unsigned systemd-boot

    signed = own_disk(tmp_path, {"EFI/BOOT/BOOTX64.EFI": BytesSource(store.shim_signed_efi().read_bytes())})
    rep = run_boot(BootScenario(grub=True, disk=str(signed), ram=4 * GiB, smp=1, os_ready_bytes=0,
                                edk2_profile="inteltdx-2026.08"))
    assert "WARNING" not in rep.edk2_profile_why  # Debian's signed shim is what the firmware would check
    assert rep.outcome == Outcome.LOADER_FAILED and "shim 16.1 (the disk's EFI/BOOT/BOOTX64.EFI)" in rep.reason
