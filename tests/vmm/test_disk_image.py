"""`boot --disk FILE`: users' raw disk images, read through the file at offsets and checked on open (vmm/disk_image.py),
against images made by sgdisk, mkfs.vfat and mtools and by lazyaccept's own writer; and the damaged ones, each one
line naming the structure and its byte offset."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest

from lazyaccept.cli import main
from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.blockio import mbr_hard_drive_node
from lazyaccept.firmware.drivers.partition import read_gpt, read_mbr
from lazyaccept.spec.device_path import device_path_text
from lazyaccept.spec.gpt import EFI_PARTITION_TABLE_HEADER
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.disk_image import DiskImage, read_partition_table
from lazyaccept.vmm.fat_reader import FatReader

from .disk_images import ESP_START, lazyaccept_image, mbr_image, sgdisk_image, tool

BOOT = b"MZ" + bytes(range(256)) * 64  # stands for a loader: only its bytes are compared here
CFG = b"set timeout=0\n"
FILES: dict[str, Path | bytes] = {"EFI/BOOT/BOOTX64.EFI": BOOT, "EFI/debian/grub.cfg": CFG, "vmlinuz": b"k" * 70000}


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sgdisk_image(tmp_path_factory.mktemp("gpt") / "gpt.img", 64 * MiB, FILES)


def test_an_sgdisk_image_is_read_as_gpt_with_its_esp_files(gpt: Path) -> None:
    with_disk = DiskImage(gpt)
    summary = with_disk.summary()
    assert (summary["partition_table"], summary["esp_partition"], summary["fat"]) == ("gpt", 1, "FAT32")
    assert summary["files"] == {"EFI/BOOT/BOOTX64.EFI": len(BOOT), "EFI/debian/grub.cfg": len(CFG), "vmlinuz": 70000}
    assert with_disk.has_removable_path and with_disk.esp is not None and with_disk.esp.first_lba == ESP_START
    # The firmware's own reader (PartitionDxe's checks, FatPkg's walk) agrees on the partition and the bytes.
    entries = read_gpt(with_disk.read_padded, 512, with_disk.size // 512 - 1)
    assert [(e.number, e.first_lba) for e in entries] == [(1, ESP_START)]
    fat = FatReader(with_disk.esp_read())
    assert fat.read_file("\\EFI\\BOOT\\BOOTX64.EFI") == BOOT and fat.read_file("efi/debian/GRUB.CFG") == CFG
    with_disk.close()


def test_a_100_gib_sparse_image_is_never_read_whole(tmp_path: Path) -> None:
    image = sgdisk_image(tmp_path / "big.img", 100 * GiB, FILES)
    assert image.stat().st_blocks * 512 < 64 * MiB  # sparse on the host too
    disk = DiskImage(image)
    assert disk.size == 100 * GiB and disk.table.kind == "gpt"
    assert disk.bytes_read < 2 * MiB, disk.bytes_read  # the tables, the BPB, the FAT sectors, the folders
    disk.close()


def test_an_mbr_image_with_an_esp_of_type_0xef(tmp_path: Path) -> None:
    image = mbr_image(tmp_path / "mbr.img", 48 * MiB, FILES)
    disk = DiskImage(image)
    assert disk.table.kind == "mbr" and disk.esp is not None and disk.esp.type == "0xef"
    assert disk.summary()["files"]["EFI/BOOT/BOOTX64.EFI"] == len(BOOT)
    # PartitionDxe's view: the MBR child, its HD() node of MBR type with the disk signature.
    signature, entries = read_mbr(disk.read_padded, disk.size // 512 - 1)
    assert signature == 0x1A2B3C4D and [(e.number, e.first_lba) for e in entries] == [(1, ESP_START)]
    node = mbr_hard_drive_node(1, ESP_START, entries[0].last_lba - ESP_START + 1, signature)
    assert device_path_text(node + bytes([0x7F, 0xFF, 4, 0])) == "HD(1,MBR,0x1a2b3c4d,0x800,0x14000)"
    disk.close()


def test_an_image_lazyaccept_wrote_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "own.img"
    _, volume = lazyaccept_image(path, {"EFI/BOOT/BOOTX64.EFI": BOOT, "grub.cfg": CFG})
    disk = DiskImage(path)
    assert disk.summary()["files"] == {"EFI/BOOT/BOOTX64.EFI": len(BOOT), "grub.cfg": len(CFG)}
    assert disk.fat_bits == volume.fat_bits == 16
    disk.close()


# ------------------------------------------------------------------------------------------------- damaged images
def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _reseal_header(path: Path, lba: int, **fields: int) -> None:
    """Set header fields and recompute the header's CRC, as a tool that wrote a wrong value would."""
    raw = bytearray(_read(path, lba * 512, 512))
    h = EFI_PARTITION_TABLE_HEADER.unpack(raw)
    h.update(fields, HeaderCRC32=0)
    packed = bytearray(EFI_PARTITION_TABLE_HEADER.pack(h))
    packed[16:20] = zlib.crc32(packed).to_bytes(4, "little")
    _patch(path, lba * 512, bytes(packed))


def _fat16_image(tmp_path: Path) -> tuple[Path, int, int, int]:
    """lazyaccept's FAT16 image: (path, partition offset, FAT offset in the volume, vmlinuz's first cluster)."""
    path = tmp_path / "fat16.img"
    disk, volume = lazyaccept_image(path, {"EFI/BOOT/BOOTX64.EFI": BOOT, "vmlinuz": b"k" * 70000})
    extent = volume.file_extent("vmlinuz")
    assert extent is not None
    first = (extent[0] // 512 - volume.data_start) // volume.spc + 2
    return path, disk.partitions[0].first_lba * 512, volume.fat_start * 512, first


def damage(kind: str, tmp_path: Path) -> tuple[Path, str, str, int]:
    """(image, text of the message, field, offset) for each kind of damage."""
    if kind == "no partition table":
        path = tmp_path / "zeros.img"
        path.write_bytes(bytes(MiB))
        return path, "no partition table: no MBR boot signature", "MBR signature", 0x1FE
    if kind in ("GPT header CRC", "GPT primary header CRC only"):
        path = sgdisk_image(tmp_path / "crc.img", 64 * MiB, FILES)
        _patch(path, 512 + 16, b"\xde\xad\xbe\xef")
        if kind == "GPT header CRC":
            _patch(path, path.stat().st_size - 512 + 16, b"\xde\xad\xbe\xef")
        return path, "GPT header CRC is 0xefbeadde", "HeaderCRC32", 512 + 16
    if kind == "GPT entry array out of range":
        path = sgdisk_image(tmp_path / "range.img", 64 * MiB, FILES)
        _reseal_header(path, 1, PartitionEntryLBA=1 << 40)
        _reseal_header(path, path.stat().st_size // 512 - 1, PartitionEntryLBA=1 << 40)
        return path, "GPT partition entry array at LBA 1099511627776", "PartitionEntryLBA", 512 + 72
    if kind == "GPT without an ESP":
        path = sgdisk_image(tmp_path / "linux.img", 64 * MiB, FILES, type_code="8300")
        return path, "GPT has no EFI System Partition", "PartitionTypeGUID", 1024
    if kind == "MBR without an ESP":
        path = mbr_image(tmp_path / "mbr83.img", 48 * MiB, FILES, part_type=0x83)
        return path, "MBR has no EFI System Partition (type 0xEF; its partition types: 0x83)", "MBR partition type", 450
    if kind == "file shorter than the table":
        path = sgdisk_image(tmp_path / "short.img", 64 * MiB, FILES)
        with open(path, "r+b") as f:
            f.truncate(20 * MiB)
        return path, "the image is shorter than the partition table says: GPT partition 1 ends at byte", "EndingLBA", \
            1024 + 40
    path, base, fat, first = _fat16_image(tmp_path)
    if kind == "truncated FAT":
        _patch(path, base + 22, (1).to_bytes(2, "little"))  # BPB_FATSz16: one sector for thousands of clusters
        return path, "truncated FAT: its 512 bytes cannot hold the entries of", "BPB_FATSz16", base + 22
    if kind == "FAT past the partition":
        _patch(path, base + 22, (0xFFFF).to_bytes(2, "little"))
        return path, "truncated FAT: the FATs end at byte", "BPB_FATSz16", base + 22
    assert kind == "cluster chain loop"
    back = first + 10  # the 11th cluster leads back to the first, well inside the file's 35
    _patch(path, base + fat + 2 * back, first.to_bytes(2, "little"))
    return path, f"loop in a cluster chain: cluster {first} comes back after 11 clusters", "FAT entry", \
        base + fat + 2 * back


KINDS = ["no partition table", "GPT header CRC", "GPT entry array out of range", "GPT without an ESP",
         "MBR without an ESP", "file shorter than the table", "truncated FAT", "FAT past the partition",
         "cluster chain loop"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_image_names_the_structure_and_offset(kind: str, tmp_path: Path) -> None:
    path, text, field, offset = damage(kind, tmp_path)
    with pytest.raises(InputError) as caught:
        DiskImage(path)
    message = str(caught.value)
    assert message.startswith(f"--disk {path}: {text}"), message
    assert message.endswith(f"(field {field}, offset {offset:#x})"), message


@pytest.mark.parametrize("kind", ["GPT header CRC", "cluster chain loop", "no partition table"])
def test_the_cli_says_it_in_one_line_and_exits_2(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, text, _field, _offset = damage(kind, tmp_path)
    assert main(["boot", "--disk", str(path), "-m", "4G", "-smp", "1"]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and err.count("\n") == 1, err


def test_a_damaged_primary_gpt_header_falls_back_to_the_backup(tmp_path: Path) -> None:
    path, *_ = damage("GPT primary header CRC only", tmp_path)
    disk = DiskImage(path)
    assert disk.table.kind == "gpt" and "the backup header at the last LBA is used" in disk.table.notes[0]
    disk.close()


def test_a_bare_file_system_is_not_a_partitioned_disk(tmp_path: Path) -> None:
    bare = tmp_path / "bare.img"
    with open(bare, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run([tool("mkfs.vfat"), str(bare)], check=True, capture_output=True)
    with pytest.raises(InputError, match=r"no partition table: the image is a bare FAT file system .*offset 0x1be"):
        read_partition_table(lambda o, n: _read(bare, o, n), bare.stat().st_size)


def test_cli_refuses_two_disk_sources(tmp_path: Path, gpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["boot", "--disk", str(gpt), "--disk-from", str(tmp_path)]) == 2
    assert "give --disk FILE, --disk-from DIR or --write-disk-dir DIR, not two of them" in capsys.readouterr().err


def test_the_scenario_key_and_the_api_argument_set_the_disk(tmp_path: Path, gpt: Path) -> None:
    from lazyaccept import api
    from lazyaccept.scenario import ScenarioError, scenario_from_dict

    sc = scenario_from_dict({"loader": {"kind": "grub", "disk": str(gpt)}}, tmp_path).scenario
    assert (sc.grub, sc.disk, sc.disk_from) == (True, str(gpt), None)
    assert api.boot_scenario(disk=str(gpt)).disk == str(gpt) and api.boot_scenario(disk=str(gpt)).grub
    with pytest.raises(ScenarioError, match=r"loader\.disk: no such file"):
        scenario_from_dict({"loader": {"kind": "grub", "disk": "missing.img"}}, tmp_path)
    with pytest.raises(ScenarioError, match=r"payload\.kernel: not used with loader\.disk"):
        scenario_from_dict({"loader": {"kind": "grub", "disk": str(gpt)}, "payload": {"kernel": str(gpt)}}, tmp_path)
    with pytest.raises(ScenarioError, match=r"loader\.disk: give loader\.disk, loader\.disk_from"):
        scenario_from_dict({"loader": {"kind": "grub", "disk": str(gpt), "disk_from": str(tmp_path)}}, tmp_path)


def test_a_folder_or_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path, text in ((tmp_path, "cannot read it: not a file or a block device"),
                       (tmp_path / "missing.img", "cannot read it: No such file or directory")):
        assert main(["boot", "--disk", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--disk {path}: {text}" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("fat", [16, 32])
def test_lazyaccept_disk_writes_a_folder_as_an_image_boot_disk_reads(fat: int, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "esp"
    (folder / "EFI" / "BOOT").mkdir(parents=True)
    (folder / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(BOOT)
    (folder / "grub.cfg").write_bytes(CFG)
    out = tmp_path / "esp.img"
    assert main(["disk", "--out", str(out), "--from", str(folder), "--fat", str(fat)]) == 0
    assert f"ESP partition 1 FAT{fat}" in capsys.readouterr().out
    disk = DiskImage(out)
    assert disk.summary()["files"] == {"EFI/BOOT/BOOTX64.EFI": len(BOOT), "grub.cfg": len(CFG)}
    assert disk.fat_bits == fat and disk.has_removable_path
    assert out.stat().st_blocks * 512 < out.stat().st_size  # written sparse
    # and a real counterpart reads it: mtools lists the same files
    listing = subprocess.run([tool("mcopy"), "-i", f"{out}@@{ESP_START * 512}", "::/grub.cfg", "-"],
                             capture_output=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert listing == CFG
    disk.close()


def test_lazyaccept_disk_json_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from jsonschema import Draft202012Validator

    from lazyaccept.json_keys import schema_path

    folder = tmp_path / "esp"
    folder.mkdir()
    (folder / "grub.cfg").write_bytes(CFG)
    assert main(["disk", "--out", str(tmp_path / "esp.img"), "--from", str(folder), "--fat", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    Draft202012Validator(json.loads(schema_path().read_text())).validate(data)
    assert (data["command"], data["fat"], data["files"]) == ("disk", "FAT16", {"grub.cfg": len(CFG)})
