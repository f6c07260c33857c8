"""The pure-Python GPT + FAT image builder, read back through the firmware's own GPT and FAT readers (which
validate CRCs, signatures and cluster chains as edk2's PartitionDxe and FAT driver do)."""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc
import uuid
import zlib
from pathlib import Path

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.drivers.partition import read_gpt
from lazyaccept.firmware.loaders.direct_boot import InitrdSource
from lazyaccept.units import GiB, MiB
from lazyaccept.vmm.disk import (
    ESP_TYPE,
    SECTOR,
    BytesSource,
    FatVolume,
    GptDisk,
    Partition,
    build_esp_disk,
    esp_files,
    grub_cfg_text,
    sources_from_folder,
)
from lazyaccept.vmm.fat_reader import FatReader


def sample_files() -> dict[str, object]:
    return {
        "vmlinuz": BytesSource(bytes(range(256)) * 100),
        "initrd.img": InitrdSource(3 * MiB + 17),
        "grub.cfg": BytesSource(grub_cfg_text("vmlinuz", "initrd.img", "console=ttyS0").encode()),
        "EFI/BOOT/BOOTX64.EFI": BytesSource(b"MZ" + bytes(70_000)),
        "a name longer than eight.conf": BytesSource(b"long names use LFN entries"),
        "UPPER.TXT": BytesSource(b""),
    }


def partition_reader(disk: GptDisk):
    entries = read_gpt(disk.read, SECTOR, disk.last_lba)
    assert len(entries) == 1
    base = entries[0].first_lba * SECTOR
    return entries[0], FatReader(lambda off, n: disk.read(base + off, n))


@pytest.mark.parametrize(("fat_bits", "cluster"), [(32, 32 * 1024), (32, 4096), (16, 64 * 1024), (16, 2048)])
def test_files_read_back_through_gpt_and_fat(fat_bits: int, cluster: int) -> None:
    files = sample_files()
    disk, volume = build_esp_disk(files, fat_bits=fat_bits, cluster_bytes=cluster)
    entry, fat = partition_reader(disk)
    assert entry.type_guid == ESP_TYPE and entry.name == "EFI system partition"
    assert fat.fat_bits == fat_bits and fat.cluster_bytes == cluster
    for path, source in files.items():
        assert fat.read_file(path) == source.read(0, source.size), path
    assert fat.read_file("efi/boot/bootx64.efi")[:2] == b"MZ"  # FAT names ignore case
    assert sorted(fat.list_dir("EFI")) == ["BOOT"]
    assert fat.read_file("missing") is None


def test_gpt_headers_and_backup_are_consistent() -> None:
    disk, _ = build_esp_disk(sample_files())
    primary, backup = disk.read(SECTOR, SECTOR), disk.read(disk.last_lba * SECTOR, SECTOR)
    for header, my_lba in ((primary, 1), (backup, disk.last_lba)):
        assert header[:8] == b"EFI PART"
        assert zlib.crc32(header[:16] + bytes(4) + header[20:92]) == int.from_bytes(header[16:20], "little")
        assert int.from_bytes(header[24:32], "little") == my_lba
    mbr = disk.read(0, SECTOR)
    assert mbr[450] == 0xEE and mbr[510:] == b"\x55\xaa"  # protective MBR
    # A damaged primary header: the backup is used, as PartitionDxe does.
    disk.write(SECTOR, bytes(SECTOR))
    assert len(read_gpt(disk.read, SECTOR, disk.last_lba)) == 1


def test_a_1_gib_file_costs_no_host_memory() -> None:
    tracemalloc.start()
    disk, volume = build_esp_disk({"initrd.img": InitrdSource(1 * GiB), "grub.cfg": BytesSource(b"x")})
    offset, size = volume.file_extent("initrd.img")
    mid = disk.read(2048 * SECTOR + offset + 512 * MiB, 64 * 1024)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * MiB
    assert mid == bytes(len(mid))
    assert size == 1 * GiB
    assert disk.read(2048 * SECTOR + offset, 8) == b"070701la"  # the synthetic initrd's marker


def test_fat_limits_are_named() -> None:
    with pytest.raises(InputError, match="FAT16"):
        FatVolume({"big": InitrdSource(8 * GiB)}, fat_bits=16, cluster_bytes=64 * 1024)
    with pytest.raises(InputError, match="power of two"):
        FatVolume({}, cluster_bytes=3000)
    with pytest.raises(InputError, match="same name"):
        FatVolume({"a.txt": BytesSource(b""), "A.TXT": BytesSource(b"")})


def test_folder_becomes_the_esp_with_grub_where_it_looks(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "grub.cfg").write_text("linux /vmlinuz\nboot\n")
    files = esp_files(sources_from_folder(tmp_path), BytesSource(b"MZgrub"))
    disk, _ = build_esp_disk(files)
    _, fat = partition_reader(disk)
    assert fat.read_file("EFI/BOOT/BOOTX64.EFI") == b"MZgrub"
    assert fat.read_file("EFI/debian/grub.cfg") == b"linux /vmlinuz\nboot\n"  # the monolithic image's $prefix


def test_writes_land_in_an_overlay_and_the_image_file_is_sparse(tmp_path: Path) -> None:
    disk = GptDisk([Partition("data", BytesSource(b"\1" * 4096))], disk_guid=uuid.uuid4())
    disk.write(2048 * SECTOR, b"\2" * SECTOR)
    assert disk.read(2048 * SECTOR, 2 * SECTOR) == b"\2" * SECTOR + b"\1" * SECTOR
    image = tmp_path / "disk.img"
    big, _ = build_esp_disk({"initrd.img": InitrdSource(256 * MiB)})
    big.write_image(image)
    assert image.stat().st_size == big.size
    assert image.stat().st_blocks * 512 < 16 * MiB
    if shutil.which("blkid"):  # an independent reader, where the host has one
        out = subprocess.run(["blkid", "-p", str(image)], capture_output=True, text=True).stdout
        assert 'PTTYPE="gpt"' in out
