"""Why Debian's GRUB 2.12 stops at `grub>`: where it looked for grub.cfg (seen from the ESP reads it made), which
grub.cfg files the disk holds, and a fix that the report names and that a test then boots. Real runs of GRUB
(and of the Linux stub for the fixes), on whichever CPU backend `--cpu auto` picks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.boot import BootReport, BootScenario, run_boot
from lazyaccept.commands import boot as boot_cmd
from lazyaccept.firmware.dxe.pe import PeImage, Section, parse_pe
from lazyaccept.firmware.loaders.grub import EspReads, grub_image_modules
from lazyaccept.units import GiB
from lazyaccept.vmm.disk import GRUB_PREFIX, BytesSource, FatVolume, grub_cfg_text

pytestmark = pytest.mark.real_binary
PREFIX_CFG = f"/{GRUB_PREFIX}/grub.cfg"


def grub_boot(folder: Path, **kw) -> BootReport:
    kw.setdefault("ram", 4 * GiB)
    kw.setdefault("smp", 1)
    kw.setdefault("upfront", "below-4g")
    kw.setdefault("rng_seed", 7)
    kw.setdefault("os_ready_bytes", 0)
    kw.setdefault("log_calls", False)
    return run_boot(BootScenario(grub=True, disk_from=str(folder), **kw))


def esp_folder(root: Path, cfgs: tuple[str, ...], dirs: tuple[str, ...] = ()) -> Path:
    """The kernel at /vmlinuz and a grub.cfg booting it (no initrd) at each path of cfgs."""
    root.mkdir()
    shutil.copyfile(BinaryStore().linux_vmlinuz(), root / "vmlinuz")
    for rel in cfgs:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(grub_cfg_text("vmlinuz", None, "console=ttyS0"))
    for rel in dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "README").write_text("not a config\n")
    return root


def test_prefix_is_read_from_debians_image_and_matches_where_the_disk_copies_grub_cfg() -> None:
    mods = grub_image_modules(parse_pe(BinaryStore().grub_efi().read_bytes(), "grubx64.efi"))
    assert mods.prefix == f"/{GRUB_PREFIX}"  # vmm/disk.py copies a top-level grub.cfg there
    assert mods.config is None  # Debian's monolithic image embeds no config: normal mode picks the file
    assert mods.memdisk_bytes > 0 and mods.elf_modules > 50
    assert "grubx64.efi" in mods.source


def test_module_records_with_a_config_and_a_device_prefix() -> None:
    def record(kind: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 8)
        return (kind).to_bytes(4, "little") + (8 + len(body)).to_bytes(4, "little") + body

    records = (
        record(0, b"\x7fELF" + bytes(12))
        + record(2, b"set root=x\nconfigfile /a.cfg\n\0")
        + record(3, b"(memdisk)/boot\0")
    )
    mods = b"mimg" + bytes(4) + (24).to_bytes(8, "little") + (24 + len(records)).to_bytes(8, "little") + records
    data = bytes(0x400) + mods
    pe = PeImage(data, 0, 0, 0x2000, 0x400, 0x1000, 10, (Section("mods", 0x1000, len(mods), 0x400, len(mods), 0),), ())
    out = grub_image_modules(pe)
    assert (out.prefix, out.config, out.elf_modules) == ("(memdisk)/boot", "set root=x\nconfigfile /a.cfg\n", 1)
    assert grub_image_modules(PeImage(data, 0, 0, 0x2000, 0x400, 0x1000, 10, (), ())).prefix is None


@pytest.mark.parametrize("fat_bits", [16, 32])
def test_reads_map_to_the_folders_and_files_they_cover(fat_bits: int) -> None:
    vol = FatVolume(
        {"EFI/debian/grub.cfg": BytesSource(b"x" * 700), "boot/grub/grub.cfg": BytesSource(b"y")}, fat_bits=fat_bits
    )
    assert vol.data_start % vol.spc == 0  # clusters aligned: one GRUB cache block never spans two of them
    reads = EspReads(vol)
    start, _size = vol.file_extent("EFI/debian/grub.cfg")
    reads.observe(start + 512, 64)  # not the file's first sector: GRUB reads a file from its start
    reads.observe(start - 512, 512)  # the tail of the folder cluster before it: no entries there
    assert reads.files_read() == [] and reads.dirs_read() == []
    reads.observe(start, 64)
    assert reads.files_read() == ["/EFI/debian/grub.cfg"]
    reads.observe(0, vol.data_start * 512 + 32)  # metadata and the first entry of the first cluster
    assert reads.dirs_read() == (["/"] if fat_bits == 32 else ["/", "/EFI"])  # FAT16: root before the clusters


@pytest.fixture(scope="module")
def only_boot_grub(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BootReport]:
    folder = esp_folder(tmp_path_factory.mktemp("esp") / "dir", ("boot/grub/grub.cfg",))
    return folder, grub_boot(folder)


def test_grub_cfg_only_in_boot_grub_ends_at_the_prompt_and_the_report_says_why(only_boot_grub) -> None:
    _folder, rep = only_boot_grub
    assert rep.outcome == "waiting-for-input", rep.reason
    assert rep.console.rstrip().endswith("grub>")
    g = rep.grub
    # Seen from its reads: the folder of its image (fw_path), then $prefix; never /boot.
    assert g["config_search"]["dirs_read"] == ["/", "/EFI", "/EFI/BOOT"]
    assert g["config_paths_tried"] == ["/EFI/BOOT/grub.cfg", PREFIX_CFG]
    assert [x["result"] for x in g["config_search"]["lookups"]] == ["/EFI/BOOT has no grub.cfg", "/EFI has no debian"]
    assert g["config_read"] is None and g["config_search"]["files_read"] == []
    assert g["grub_cfg_on_disk"] == ["/boot/grub/grub.cfg"]
    assert PREFIX_CFG in g["hint"] and "configfile /boot/grub/grub.cfg" in g["hint"]
    assert g["hint_file"] == {"path": PREFIX_CFG, "text": "configfile /boot/grub/grub.cfg\n"}
    assert "GRUB found no config" in rep.explanation and "/boot/grub/grub.cfg" in rep.explanation
    text = boot_cmd.format_report(rep)
    assert "outcome: WAITING-FOR-INPUT" in text
    assert f"  fix: {g['hint']}" in text and "grub.cfg on the disk: /boot/grub/grub.cfg" in text
    assert json.loads(json.dumps(boot_cmd.report_dict(rep)))["grub"]["config_paths_tried"] == g["config_paths_tried"]


def test_the_fix_the_report_names_boots_the_kernel(only_boot_grub, tmp_path: Path) -> None:
    folder, rep = only_boot_grub
    fixed = tmp_path / "fixed"
    shutil.copytree(folder, fixed)
    hint = rep.grub["hint_file"]
    (fixed / hint["path"].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (fixed / hint["path"].lstrip("/")).write_text(hint["text"])
    rep = grub_boot(fixed)
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.handoff_ok, rep.handoff_problems
    assert rep.grub["config_read"] == PREFIX_CFG and rep.grub["hint"] is None
    assert "/boot/grub/grub.cfg" in rep.grub["config_search"]["files_read"]  # read through the configfile
    assert "GRUB found no config" not in rep.explanation


def test_grub_cfg_beside_grub_image_is_found_first(tmp_path: Path) -> None:
    rep = grub_boot(esp_folder(tmp_path / "dir", ("EFI/BOOT/grub.cfg",)))
    assert rep.outcome == "kernel-entry", rep.reason
    assert rep.grub["config_paths_tried"] == ["/EFI/BOOT/grub.cfg"]  # GRUB never went on to $prefix
    assert rep.grub["config_read"] == "/EFI/BOOT/grub.cfg" and rep.grub["hint"] is None


def test_prefix_folder_without_grub_cfg_is_seen_listed(tmp_path: Path) -> None:
    rep = grub_boot(esp_folder(tmp_path / "dir", ("boot/grub/grub.cfg",), dirs=(GRUB_PREFIX,)))
    assert rep.outcome == "waiting-for-input", rep.reason
    assert f"/{GRUB_PREFIX}" in rep.grub["config_search"]["dirs_read"]
    assert rep.grub["config_search"]["lookups"][-1]["result"] == f"/{GRUB_PREFIX} has no grub.cfg"
    assert rep.grub["config_search"]["files_read"] == []  # README was never read


def test_no_grub_cfg_anywhere(tmp_path: Path) -> None:
    rep = grub_boot(esp_folder(tmp_path / "dir", ()))
    assert rep.outcome == "waiting-for-input", rep.reason
    assert rep.grub["grub_cfg_on_disk"] == [] and rep.grub["config_read"] is None
    assert PREFIX_CFG in rep.grub["config_paths_tried"]
    assert "the disk holds no grub.cfg" in rep.explanation
    assert rep.grub["hint_file"] == {"path": PREFIX_CFG, "text": None}
    assert "--write-disk-dir" in rep.grub["hint"]
