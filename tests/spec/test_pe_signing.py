"""spec/pe_signing.py: the certificate table and the .sbat section, read from headers only, never raising."""

from __future__ import annotations

import struct
from pathlib import Path

from lazyaccept.spec.pe_signing import certificate_table, has_sbat_section, is_signed, sbat_entries, sbat_product


def pe(tmp_path: Path, *, certificates: tuple[int, int] = (0, 0), sections: tuple[bytes, ...] = (b".text",),
       directories: int = 16) -> Path:
    optional_size = 112 + 8 * directories
    head = bytearray(0x400)
    struct.pack_into("<H", head, 0, 0x5A4D)
    struct.pack_into("<I", head, 0x3C, 0x40)
    struct.pack_into("<IHHIIIHH", head, 0x40, 0x4550, 0x8664, len(sections), 0, 0, 0, optional_size, 0x22)
    optional = 0x40 + 24
    struct.pack_into("<H", head, optional, 0x20B)
    struct.pack_into("<I", head, optional + 108, directories)
    if directories > 4:
        struct.pack_into("<II", head, optional + 112 + 32, *certificates)
    for i, name in enumerate(sections):
        head[optional + optional_size + 40 * i : optional + optional_size + 40 * i + 8] = name.ljust(8, b"\0")
    path = tmp_path / "image.efi"
    path.write_bytes(bytes(head))
    return path


def test_signed_and_sbat(tmp_path: Path) -> None:
    signed = pe(tmp_path, certificates=(0x400, 0x5A8), sections=(b".text", b".sbat"))
    assert certificate_table(signed) == (0x400, 0x5A8) and is_signed(signed) and has_sbat_section(signed)
    plain = pe(tmp_path)
    assert certificate_table(plain) == (0, 0) and not is_signed(plain) and not has_sbat_section(plain)
    assert not has_sbat_section(pe(tmp_path, sections=(b".sbatx",)))  # the name, all 8 bytes
    assert not is_signed(pe(tmp_path, certificates=(0x400, 0x10), directories=4))  # no security directory


def test_anything_else_is_unsigned_without_sbat(tmp_path: Path) -> None:
    for data in (b"", b"MZ", b"\x7fELF" + bytes(100), b"MZ" + bytes(0x3A) + b"\xff\xff\xff\x7f"):
        path = tmp_path / "x"
        path.write_bytes(data)
        assert certificate_table(path) == (0, 0) and not has_sbat_section(path)
        assert sbat_entries(path) == [] and sbat_product(path) == ""
    assert not is_signed(tmp_path / "missing") and sbat_product(tmp_path / "missing") == ""


SBAT = (b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
        b"grub,5,Free Software Foundation,grub,2.14,https://www.gnu.org/software/grub/\n"
        b"grub.debian,5,Debian,grub2,2.14-4,https://tracker.debian.org/pkg/grub2\n")


def with_sbat(tmp_path: Path, text: bytes, *, raw_size: int = 0x200) -> Path:
    """An image whose second section is .sbat, its bytes at file offset 0x400 (NUL padded as a linker does)."""
    path = pe(tmp_path, sections=(b".text", b".sbat"))
    head = bytearray(path.read_bytes())
    at = 0x40 + 24 + 112 + 8 * 16 + 40  # the second section header
    struct.pack_into("<IIII", head, at + 8, len(text), 0x1000, raw_size, 0x400)
    path.write_bytes(bytes(head) + text.ljust(raw_size, b"\0"))
    return path


def test_sbat_records_name_the_loader(tmp_path: Path) -> None:
    path = with_sbat(tmp_path, SBAT)
    assert [r[0] for r in sbat_entries(path)] == ["sbat", "grub", "grub.debian"]
    assert sbat_product(path) == "grub2 2.14-4"  # the vendor's record wins over upstream's
    upstream_only = with_sbat(tmp_path, SBAT.split(b"grub.debian")[0])
    assert sbat_product(upstream_only) == "grub 2.14"
    assert sbat_product(with_sbat(tmp_path, b"not,csv\n")) == ""  # fewer than 5 commas: no record
    assert sbat_entries(with_sbat(tmp_path, SBAT, raw_size=0x10)) == []  # cut short: no whole record
    past_end = with_sbat(tmp_path, SBAT)
    past_end.write_bytes(past_end.read_bytes()[:0x410])  # the section runs past the file's end
    assert sbat_product(past_end) == ""
