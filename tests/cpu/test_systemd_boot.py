"""systemd-boot 262 (Debian's systemd-bootx64.efi, unmodified) booted from a GPT disk laid out as `bootctl install`
does, on lazyaccept firmware: it reads loader.conf and its Type #1 entry through the firmware's Simple File
System, sets its Loader* variables, loads the kernel's EFI stub and hands it the initrd through LoadFile2."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.commands.boot import report_dict
from lazyaccept.units import GiB, MiB

pytestmark = pytest.mark.real_binary
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
UKI_NAME = "vmlinuz-6.12.117+deb13-cloud-amd64.efi"  # boot --uki names the UKI after the kernel it holds


def sd_boot(**kw) -> BootReport:
    kw.setdefault("smp", 2)
    kw.setdefault("os_ready_bytes", 0)  # the guest model after the handoff is tested elsewhere
    return run_boot(BootScenario(systemd_boot=True, **kw))


def variables(rep: BootReport) -> dict[str, str | None]:
    assert rep.systemd_boot is not None
    return {v["name"]: v["text"] for v in rep.systemd_boot["variables"] if v["guid"] == LOADER_GUID}


def test_systemd_boot_boots_the_kernel_on_4g_and_its_variables_are_reported() -> None:
    rep = sd_boot(ram=4 * GiB, initrd_size=16 * MiB, cmdline="console=ttyS0 nokaslr sd")
    assert rep.outcome == "kernel-entry", (rep.reason, rep.console)
    assert rep.handoff_ok, rep.handoff_problems
    assert "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path" in rep.console
    # the entry's options line, after the initrd= systemd-boot adds for each initrd line
    assert rep.boot_params.cmdline == "initrd=\\initrd.img console=ttyS0 nokaslr sd"
    seen = variables(rep)
    assert seen["LoaderInfo"] == "systemd-boot 262-1"
    assert seen["LoaderEntrySelected"] == "lazyaccept.conf"
    assert seen["LoaderImageIdentifier"] == "\\EFI\\BOOT\\BOOTX64.EFI"
    assert "lazyaccept.conf" in (seen["LoaderEntries"] or "")
    calls = [(c["image"], c["name"], c["status"]) for c in rep.calls]
    assert ("systemd-bootx64.efi", "SimpleFileSystem.OpenVolume", "SUCCESS") in calls
    assert ("systemd-bootx64.efi", "File.Open", "SUCCESS") in calls  # loader.conf, the entry, the kernel
    # the kernel it read and LoadImage'd from that buffer is named by the file its device path names
    assert ("systemd-bootx64.efi", "StartImage", None) in calls and ("vmlinuz", "ExitBootServices", "SUCCESS") in calls
    data = report_dict(rep)
    assert data["scenario"]["loader"] == "systemd-boot" and data["grub"] is None
    assert {v["name"] for v in data["systemd_boot"]["variables"]} >= {"LoaderInfo", "LoaderEntrySelected"}


def test_a_1g_initrd_on_64g_without_on_demand_halts_systemd_boot_at_its_own_allocation() -> None:
    rep = sd_boot(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB, timeout_s=300)
    assert rep.outcome == "loader-failed", rep.reason
    assert "xmalloc_pages" in rep.reason and "halting" in rep.reason
    assert rep.systemd_boot is not None
    failed = rep.systemd_boot["failed_allocations"]
    assert [(f["image"], f["owner"], f["detail"], f["size_bytes"]) for f in failed] == [
        ("systemd-bootx64.efi", "loader", "MaxAddress, type 2, 0x40000 pages, in 0xffffffff", 1 * GiB),  # below 4G
        ("systemd-bootx64.efi", "loader", "AnyPages, type 2, 0x40000 pages, in 0x0", 1 * GiB),  # then anywhere
    ]
    assert "systemd-boot's allocation failed" in rep.explanation and "1073741824 bytes" in rep.explanation
    # its freeze() stalls a minute at a time forever: the phase ends where it halted, not 3 minutes later
    phase = next(p for p in rep.phases if p.name == "systemd-boot")
    assert phase.virtual_ns < 10 * 10**9, phase


def test_a_1g_initrd_on_64g_boots_when_the_allocator_accepts_on_demand() -> None:
    rep = sd_boot(ram=64 * GiB, upfront="256M", initrd_size=1 * GiB, option1=True, timeout_s=300)
    assert rep.outcome == "kernel-entry", (rep.reason, rep.explanation)
    # systemd-boot's copy of the initrd and the stub's own: both accepted by the allocator
    assert rep.accepted_by_actor["dxe-option1"] >= 2 * GiB


def test_systemd_boot_as_efi_app_opens_its_volume() -> None:
    """`--efi-app systemd-bootx64.efi` once stopped at 'Unable to open root directory: Invalid parameter': the app
    had no device. Now it runs from a disk holding only itself, finds no entry, counts its menu down and picks
    'Reboot Into Firmware Interface', as on a real machine."""
    from lazyaccept.binaries import BinaryStore

    rep = run_boot(BootScenario(efi_app=str(BinaryStore().systemd_boot_efi()), ram=4 * GiB, smp=1, timeout_s=120))
    assert "Unable to open root directory" not in rep.console
    assert "Reboot Into Firmware Interface" in rep.console
    assert (rep.outcome, rep.reason) == ("app-exited", "ResetSystem(0)")
    indications = [c for c in rep.calls if c["name"] == "SetVariable" and "OsIndications" in c["detail"]]
    assert indications and indications[-1]["status"] == "SUCCESS"


def test_systemd_boot_starts_linux_7_2_too() -> None:
    from lazyaccept.binaries import BinaryStore

    rep = sd_boot(ram=4 * GiB, initrd_size=16 * MiB, kernel=str(BinaryStore().linux72_vmlinuz()))
    assert rep.outcome == "kernel-entry", (rep.reason, rep.console)
    assert rep.handoff_ok, rep.handoff_problems
    assert rep.kernel_release.startswith("7.2.")


def test_disk_from_a_folder_with_its_own_entries(tmp_path) -> None:  # noqa: ANN001
    """--disk-from DIR: the folder's loader.conf (a glob as default) and entry; systemd-boot is put at the
    removable-media path since the folder has none there."""
    import shutil

    from lazyaccept.binaries import BinaryStore

    (tmp_path / "loader/entries").mkdir(parents=True)
    (tmp_path / "EFI/Linux").mkdir(parents=True)
    shutil.copy(BinaryStore().linux_vmlinuz(), tmp_path / "EFI/Linux/linux-6.12")
    (tmp_path / "loader/loader.conf").write_text("timeout 0\ndefault deb*\n")
    (tmp_path / "loader/entries/debian-6.12.conf").write_text(
        "title Debian\nlinux /EFI/Linux/linux-6.12\noptions console=ttyS0 nokaslr mine\n")
    rep = sd_boot(ram=4 * GiB, disk_from=str(tmp_path))
    assert rep.outcome == "kernel-entry", (rep.reason, rep.console)
    assert variables(rep)["LoaderEntrySelected"] == "debian-6.12.conf"
    assert rep.boot_params.cmdline == "console=ttyS0 nokaslr mine"
    assert rep.systemd_boot is not None and "EFI/BOOT/BOOTX64.EFI" in rep.systemd_boot["esp"]["files"]


@pytest.mark.parametrize("uki", [False, True], ids=["type1", "uki-type2"])
def test_write_disk_dir_writes_the_esp_the_run_uses_and_it_boots_again(tmp_path, uki: bool) -> None:  # noqa: ANN001
    """`boot --systemd-boot [--uki] --write-disk-dir DIR` writes systemd-boot's ESP (not GRUB's folder) and boots
    from it; `--disk-from DIR --systemd-boot` then boots the same entry."""
    from lazyaccept.cli import build_parser
    from lazyaccept.commands.boot import scenario_from_args

    parser, _ = build_parser()
    esp = tmp_path / "esp"
    flags = ["boot", "--systemd-boot", "--write-disk-dir", str(esp), "-m", "4G", "-smp", "1", "--initrd-size", "16M"]
    sc = scenario_from_args(parser.parse_args(flags + (["--uki"] if uki else [])))
    written = sorted(p.relative_to(esp).as_posix() for p in esp.rglob("*") if p.is_file())
    assert "EFI/BOOT/BOOTX64.EFI" in written and "EFI/systemd/systemd-bootx64.efi" in written
    assert "grub.cfg" not in written and "loader/loader.conf" in written
    if uki:
        assert [n for n in written if n.startswith("EFI/Linux/")] == [f"EFI/Linux/{UKI_NAME}"]
        assert "loader/entries/lazyaccept.conf" not in written  # a Type #2 entry needs no entry file
    else:
        assert {"loader/entries/lazyaccept.conf", "vmlinuz", "initrd.img"} <= set(written)
    assert sc.disk_from == str(esp) and sc.systemd_boot and not sc.uki
    first = run_boot(replace(sc, os_ready_bytes=0))
    again = sd_boot(ram=4 * GiB, smp=1, disk_from=str(esp))
    for rep in (first, again):
        assert rep.outcome == "kernel-entry", (rep.reason, rep.console)
    assert variables(first)["LoaderEntrySelected"] == variables(again)["LoaderEntrySelected"] == (
        UKI_NAME if uki else "lazyaccept.conf")


def test_a_scenario_files_write_disk_dir_writes_systemd_boots_esp(tmp_path) -> None:  # noqa: ANN001
    """loader.write_disk_dir with kind systemd-boot writes the ESP the run lays out, as the flag does (one writer for
    both: boot.write_disk_folder), and the run boots from it."""
    from lazyaccept.scenario import scenario_from_dict

    esp = tmp_path / "esp"
    sf = scenario_from_dict({"td": {"ram": "4G", "vcpus": 1}, "payload": {"initrd_size": "16M"},
                             "loader": {"kind": "systemd-boot", "write_disk_dir": str(esp)}}, tmp_path)
    sc = sf.prepared()
    assert sc.disk_from == str(esp) and sc.systemd_boot and not sc.grub
    assert (esp / "loader/entries/lazyaccept.conf").is_file() and not (esp / "grub.cfg").exists()
    rep = run_boot(replace(sc, os_ready_bytes=0))
    assert rep.outcome == "kernel-entry", (rep.reason, rep.console)
    assert variables(rep)["LoaderEntrySelected"] == "lazyaccept.conf"
