"""Disk images as users make them, for `boot --disk`: partitioned by Debian's sgdisk (GPT) or by a plain MBR,
formatted by mkfs.vfat and filled by mtools (`make tools` installs gdisk, dosfstools and mtools), so that
lazyaccept's readers are held to real counterparts; and images lazyaccept writes itself (vmm/disk.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from lazyaccept.units import MiB
from lazyaccept.vmm.disk import BytesSource, FatVolume, GptDisk, Partition, Source

TOOLS = {"sgdisk": "gdisk", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}
ESP_START = 2048  # sectors: the 1 MiB alignment every tool uses
ESP_GPT_TYPE = "EF00"


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path, f"{name} is missing: install Debian's {TOOLS[name]} (make tools does)"
    return path


def _run(*argv: str) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # mtools refuses an image whose geometry is not a floppy's
    subprocess.run(argv, check=True, capture_output=True, env=env)


def fill_esp(image: Path, esp_bytes: int, files: dict[str, Path | bytes], *, fat: int = 32) -> None:
    """mkfs.vfat on the partition at ESP_START, then each file copied in with mtools (folders made as needed)."""
    sectors_per_cluster = ["-s", "1"] if fat == 32 else []
    _run(tool("mkfs.vfat"), "-F", str(fat), *sectors_per_cluster, "--offset", str(ESP_START), str(image),
         str(esp_bytes // 1024))
    target = f"{image}@@{ESP_START * 512}"
    made: set[str] = set()
    for name, content in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in made:
                _run(tool("mmd"), "-i", target, f"::/{folder}")
                made.add(folder)
        src = content
        if isinstance(content, bytes):
            src = image.parent / f".{uuid.uuid4().hex}"
            src.write_bytes(content)
        _run(tool("mcopy"), "-i", target, str(src), f"::/{name}")


def sgdisk_image(path: Path, size: int, files: dict[str, Path | bytes], *, esp_bytes: int = 40 * MiB,
                 type_code: str = ESP_GPT_TYPE) -> Path:
    """A sparse GPT image: sgdisk's protective MBR, headers and entry arrays; one partition of type_code."""
    with open(path, "wb") as f:
        f.truncate(size)
    last = ESP_START + esp_bytes // 512 - 1
    _run(tool("sgdisk"), "-o", "-n", f"1:{ESP_START}:{last}", "-t", f"1:{type_code}", str(path))
    fill_esp(path, esp_bytes, files)
    return path


def mbr_image(path: Path, size: int, files: dict[str, Path | bytes], *, esp_bytes: int = 40 * MiB,
              part_type: int = 0xEF, signature: int = 0x1A2B3C4D) -> Path:
    """A PC-AT MBR disk (one primary partition of part_type), the ESP formatted by mkfs.vfat."""
    with open(path, "wb") as f:
        f.truncate(size)
    mbr = bytearray(512)
    mbr[440:444] = signature.to_bytes(4, "little")
    entry = bytes([0, 0, 0, 0, part_type, 0, 0, 0]) + ESP_START.to_bytes(4, "little")
    mbr[446:462] = entry + (esp_bytes // 512).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    fill_esp(path, esp_bytes, files, fat=16 if esp_bytes < 64 * MiB else 32)
    with open(path, "r+b") as f:
        f.write(mbr)
    return path


def lazyaccept_image(path: Path, files: dict[str, bytes]) -> tuple[GptDisk, FatVolume]:
    """An image lazyaccept's own writer lays out (a FAT16 ESP of 2 KiB clusters: small enough to write whole)."""
    sources: dict[str, Source] = {name: BytesSource(data) for name, data in files.items()}
    volume = FatVolume(sources, fat_bits=16, cluster_bytes=2048, free_bytes=1 * MiB)
    disk = GptDisk([Partition("EFI system partition", volume)], disk_guid=uuid.UUID(int=0x1A2))
    disk.write_image(path)
    return disk, volume
