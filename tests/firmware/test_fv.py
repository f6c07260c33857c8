"""The firmware-volume parser (firmware/pi/fv.py) on Debian's OVMF.fd 2025.02, and on damaged volumes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lazyaccept.binaries import BinaryStore
from lazyaccept.errors import InputError
from lazyaccept.firmware.pi.fv import image_fingerprint, module_index, parse_volume, volumes_in_image
from lazyaccept.spec.fv import EFI_FIRMWARE_FILE_SYSTEM2_GUID, EFI_FVH_SIGNATURE, FileType


@pytest.fixture(scope="module")
def ovmf() -> bytes:
    return Path(BinaryStore().ovmf_fd()).read_bytes()


@pytest.mark.real_binary
def test_ovmf_modules_are_found_with_their_types(ovmf: bytes) -> None:
    volumes = volumes_in_image(ovmf)
    # the variable store, FVMAIN_COMPACT with PEIFV and DXEFV inside its LZMA section, and SECFV
    assert [v.where.count("/") for v in volumes] == [0, 0, 3, 3, 0]
    assert all(not v.undecoded for v in volumes)
    types = {m.name: FileType(m.file_type) for m in module_index(volumes).values()}
    assert types["SecMain"] == FileType.SECURITY_CORE and types["PeiCore"] == FileType.PEI_CORE
    assert types["DxeCore"] == FileType.DXE_CORE and types["BdsDxe"] == FileType.DRIVER
    assert types["TdxDxe"] == FileType.DRIVER and types["Shell"] == FileType.APPLICATION
    assert sum(t == FileType.PEIM for t in types.values()) > 5


@pytest.mark.real_binary
def test_the_fingerprint_survives_relocation(ovmf: bytes) -> None:
    """What DxeCore's loader changes in the headers (OptionalHeader.ImageBase) leaves the image's name."""
    file = next(f for v in volumes_in_image(ovmf) for f in v.files if f.ui_name == "TdxDxe")
    image = bytearray(file.images[0][1])
    before = image_fingerprint(lambda at, n: bytes(image[at : at + n]), 0)
    pe = int.from_bytes(image[0x3C:0x40], "little")
    struct.pack_into("<Q", image, pe + 24 + 24, 0x7E000000)  # PE32+ ImageBase
    assert image_fingerprint(lambda at, n: bytes(image[at : at + n]), 0) == before is not None
    struct.pack_into("<I", image, pe + 24 + 16, 0x1234)  # AddressOfEntryPoint: another image
    assert image_fingerprint(lambda at, n: bytes(image[at : at + n]), 0) != before


def _volume(length: int = 0x1000, header_length: int = 0x48) -> bytearray:
    fv = bytearray(b"\xff" * length)
    struct.pack_into(
        "<16s16sQIIHHHBB", fv, 0, bytes(16), EFI_FIRMWARE_FILE_SYSTEM2_GUID.bytes_le, length, EFI_FVH_SIGNATURE,
        0x800, header_length, 0, 0, 0, 2,
    )  # fmt: skip
    struct.pack_into("<IIII", fv, 0x38, length // 0x1000, 0x1000, 0, 0)
    return fv


def test_a_bad_volume_is_refused_naming_the_field_and_offset() -> None:
    assert parse_volume(_volume())[0].files == []
    bad = _volume()
    bad[40:44] = b"_FVX"
    with pytest.raises(InputError, match=r"not '_FVH'.*field EFI_FIRMWARE_VOLUME_HEADER.Signature, offset 0x28"):
        parse_volume(bad)
    with pytest.raises(InputError, match=r"FvLength 0x2000 runs past.*HEADER.FvLength, offset 0x20"):
        parse_volume(_volume(0x2000)[:0x1000])
    with pytest.raises(InputError, match=r"HeaderLength 0x10.*offset 0x30"):
        parse_volume(_volume(header_length=0x10))


def test_a_file_running_past_its_volume_is_refused() -> None:
    fv = _volume()
    # a file header at 0x48: type DRIVER, state DATA_VALID (inverted: erase polarity 1), 0x2000 bytes
    size = (0x2000).to_bytes(3, "little")
    struct.pack_into("<16sHBB3sB", fv, 0x48, bytes(range(16)), 0, FileType.DRIVER, 0, size, 0xF8)
    with pytest.raises(InputError, match=r"file size 0x2000.*field EFI_FFS_FILE_HEADER.Size, offset 0x5c"):
        parse_volume(fv)


def test_an_image_with_no_volume_is_refused() -> None:
    with pytest.raises(InputError, match="no firmware volume"):
        volumes_in_image(b"\xff" * 0x3000)
