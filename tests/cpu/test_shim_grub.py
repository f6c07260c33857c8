"""shim 16.1 -> GRUB on the Python firmware (Secure Boot off): Debian's shimx64.efi is the ESP's BOOTX64.EFI, reads
grubx64.efi from its own folder through the Simple File System, places it in its own pages and jumps in; GRUB then
boots the kernel. The report names each loader by its SBAT record and the call log names whose allocation is whose.
"""

from __future__ import annotations

import json

import pytest

from lazyaccept.api import boot, boot_scenario
from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootScenario, run_boot
from lazyaccept.boot_text import format_report
from lazyaccept.cli import main
from lazyaccept.errors import ConfigError
from lazyaccept.scenario import load_scenario

pytestmark = pytest.mark.real_binary

GRUB_UNDER_SHIM = "grubx64.efi (started by shimx64.efi itself)"


def test_shim_starts_grub_2_12_which_boots_6_12(capsys) -> None:
    code = main(["boot", "-m", "4G", "-smp", "1", "--grub", "--shim", "debian:shim", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["outcome"] == "kernel-entry", out["reason"]
    assert out["grub"]["shim"] == "shim 16.1" and out["grub"]["image"] == "grub2 2.12-9+deb13u4"
    assert out["scenario"]["shim"] == str(BinaryStore().shim_efi())
    assert {"EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi"} <= set(out["grub"]["esp"]["files"])
    assert out["handoff"]["ok"] and out["kernel"]["profile"] == "linux-6.12"
    # each loader's allocations carry its name: shim's own, GRUB's (placed by shim), the stub's (placed by GRUB)
    allocations = {c["image"] for c in out["calls"] if c["name"] in ("AllocatePages", "AllocatePool")}
    assert {"shimx64.efi", GRUB_UNDER_SHIM, "linux EFI stub (started by grubx64.efi itself)"} <= allocations
    shim_loads_grub = [c for c in out["calls"] if c["image"] == "shimx64.efi" and c["name"].startswith("File.")]
    assert shim_loads_grub, "shim read grubx64.efi through EFI_FILE_PROTOCOL"
    assert [p["name"] for p in out["phases"]][3:6] == ["Boot Manager (disk, LoadImage of shim)",
                                                       "shim until it starts GRUB",
                                                       "GRUB until it starts the kernel's EFI stub"]
    # shim mirrors its MOK state into volatile variables, sizing them with QueryVariableInfo
    assert any(c["name"] == "SetVariable" and "MokListRT" in c["detail"] and c["status"] == "SUCCESS"
               for c in out["calls"])
    assert "Could not get variable storage info" not in out["console"]


def test_the_text_report_names_both_loaders_and_a_failing_allocation_is_grubs() -> None:
    result = boot(ram="4G", smp=1, grub=True, shim="debian:shim", grub_efi="debian:grub-2.14", upfront="64M")
    rep = result.report
    assert "loader: shim 16.1 -> grub2 2.14-4 from a GPT disk" in format_report(rep)
    assert result.outcome == "loader-failed", rep.reason
    assert rep.grub is not None and rep.grub["failed_allocations"]
    assert all(f["image"] == GRUB_UNDER_SHIM and f["owner"] == "loader" for f in rep.grub["failed_allocations"])
    assert rep.grub["failed_allocations"][-1]["size_bytes"] == 0xB32 * 4096  # the kernel file's copy
    assert f"[{GRUB_UNDER_SHIM}, loader] AllocatePages(" in format_report(rep)
    assert "GRUB's allocation failed: AllocatePages(" in rep.explanation


def test_shim_needs_a_chain_to_start() -> None:
    with pytest.raises(ConfigError, match="--shim needs --firmware-exec .* or --grub"):
        boot(ram="4G", smp=1, shim="debian:shim")
    with pytest.raises(ConfigError, match="--shim needs"):
        run_boot(BootScenario(ram=4 << 30, smp=1, shim=str(BinaryStore().shim_efi()), grub=True, systemd_boot=True))
    assert boot_scenario(shim="debian:shim", grub=True).shim == str(BinaryStore().shim_efi())


def test_a_scenario_file_names_shim_with_grub(tmp_path) -> None:
    path = tmp_path / "shim.toml"
    path.write_text('[firmware]\nshim = "debian:shim"\n[loader]\nkind = "grub"\n')
    assert load_scenario(path).scenario.shim == str(BinaryStore().shim_efi())
    path.write_text('[firmware]\nshim = "debian:shim"\n')
    with pytest.raises(ConfigError, match=r'firmware\.shim: only with firmware\.exec = true .* or loader\.kind'):
        load_scenario(path)
