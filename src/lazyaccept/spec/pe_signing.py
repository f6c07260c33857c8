"""What Secure Boot loaders read of a PE32+ image before they hash it: its Authenticode certificate table
(IMAGE_DIRECTORY_ENTRY_SECURITY, the data directory whose "RVA" is a file offset; Microsoft PE Format, "The
Attribute Certificate Table") and whether it has an SBAT section (a section named ".sbat": shim 16.1 pe.c
verify_buffer_sbat finds it by name, and refuses an image it loads itself without one).

All never raise: a file that is not a PE32+ image is unsigned and has no SBAT. The SBAT records also name the
loader a report talks about (grub2 2.14-4, shim 16.1), whatever file name it was given.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

from lazyaccept.spec.pe import (
    IMAGE_DATA_DIRECTORY,
    IMAGE_OPTIONAL_HEADER64,
    IMAGE_SECTION_HEADER,
    MZ,
    PE32PLUS_MAGIC,
    PE_SIGNATURE,
    PE_SIGNATURE_AND_FILE_HEADER,
)

DIRECTORY_SECURITY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
SBAT_SECTION = b".sbat\0\0\0"
HEADER_BYTES = 64 << 10  # headers and section table; no real image has them beyond this


def _open(path: Path | bytes) -> BinaryIO:
    """An image's file, or its bytes already read (a loader on a disk image's ESP)."""
    return io.BytesIO(path) if isinstance(path, bytes) else path.open("rb")


def _headers(path: Path | bytes) -> tuple[bytes, int, int, int] | None:
    """(head of the file, offset of the optional header, its size, number of sections) or None."""
    try:
        with _open(path) as f:
            head = f.read(HEADER_BYTES)
        if struct.unpack_from("<H", head, 0)[0] != MZ:
            return None
        pe = struct.unpack_from("<I", head, 0x3C)[0]
        signature, _machine, sections = struct.unpack_from("<IHH", head, pe)
        optional_size = struct.unpack_from("<H", head, pe + 20)[0]
        optional = pe + PE_SIGNATURE_AND_FILE_HEADER.size
        if signature != PE_SIGNATURE or struct.unpack_from("<H", head, optional)[0] != PE32PLUS_MAGIC:
            return None
        return head, optional, optional_size, sections
    except (OSError, struct.error):
        return None


def certificate_table(path: Path | bytes) -> tuple[int, int]:
    """(file offset, size) of the image's attribute certificate table; (0, 0) when it has none."""
    found = _headers(path)
    if found is None:
        return 0, 0
    head, optional, _size, _sections = found
    try:
        count = struct.unpack_from("<I", head, optional + IMAGE_OPTIONAL_HEADER64.size - 4)[0]  # NumberOfRvaAndSizes
        if count <= DIRECTORY_SECURITY:
            return 0, 0
        at = optional + IMAGE_OPTIONAL_HEADER64.size + DIRECTORY_SECURITY * IMAGE_DATA_DIRECTORY.size
        offset, size = struct.unpack_from("<II", head, at)
    except struct.error:
        return 0, 0
    return offset, size


def is_signed(path: Path | bytes) -> bool:
    """Whether the image carries an Authenticode signature (a non-empty certificate table); not whether it
    verifies."""
    return certificate_table(path)[1] > 0


def has_sbat_section(path: Path | bytes) -> bool:
    found = _headers(path)
    if found is None:
        return False
    head, optional, optional_size, sections = found
    first = optional + optional_size
    size = IMAGE_SECTION_HEADER.size
    return any(head[first + size * i : first + size * i + 8] == SBAT_SECTION for i in range(sections))


SBAT_MAX_BYTES = 64 << 10  # an SBAT section is a few CSV lines; more is no SBAT


def sbat_entries(path: Path | bytes) -> list[list[str]]:
    """The CSV records of the image's .sbat section (component, generation, vendor, package, version, url; the
    SBAT spec in shim's SBAT.md), [] when it has none. The first record is the format's own ("sbat,1,...")."""
    found = _headers(path)
    if found is None:
        return []
    head, optional, optional_size, sections = found
    first = optional + optional_size
    for i in range(sections):
        at = first + IMAGE_SECTION_HEADER.size * i
        if head[at : at + 8] != SBAT_SECTION:
            continue
        try:
            virtual_size, _rva, raw_size, raw_at = struct.unpack_from("<IIII", head, at + 8)
            with _open(path) as f:
                f.seek(raw_at)
                data = f.read(min(virtual_size or raw_size, raw_size, SBAT_MAX_BYTES))
        except (OSError, struct.error):
            return []
        text = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        return [line.split(",") for line in text.splitlines() if line.count(",") >= 4]
    return []


def sbat_product(path: Path | bytes) -> str:
    """"grub2 2.14-4", "shim 16.1": the package and version of the image's vendor SBAT record (a component named
    upstream.vendor), else of its upstream record; "" without SBAT."""
    records = [r for r in sbat_entries(path) if r[0] != "sbat"]
    vendor = [r for r in records if "." in r[0]]
    for r in vendor + records:
        if r[3] and r[4]:
            return f"{r[3]} {r[4]}"
    return ""
