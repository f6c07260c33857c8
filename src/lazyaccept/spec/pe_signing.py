"""What Secure Boot loaders read of a PE32+ image before they hash it: its Authenticode certificate table
(IMAGE_DIRECTORY_ENTRY_SECURITY, the data directory whose "RVA" is a file offset; Microsoft PE Format, "The
Attribute Certificate Table") and whether it has an SBAT section (a section named ".sbat": shim 16.1 pe.c
verify_buffer_sbat finds it by name, and refuses an image it loads itself without one).

Both read headers only and never raise: a file that is not a PE32+ image is unsigned and has no SBAT.
"""

from __future__ import annotations

import struct
from pathlib import Path

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


def _headers(path: Path) -> tuple[bytes, int, int, int] | None:
    """(head of the file, offset of the optional header, its size, number of sections) or None."""
    try:
        with path.open("rb") as f:
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


def certificate_table(path: Path) -> tuple[int, int]:
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


def is_signed(path: Path) -> bool:
    """Whether the image carries an Authenticode signature (a non-empty certificate table); not whether it
    verifies."""
    return certificate_table(path)[1] > 0


def has_sbat_section(path: Path) -> bool:
    found = _headers(path)
    if found is None:
        return False
    head, optional, optional_size, sections = found
    first = optional + optional_size
    size = IMAGE_SECTION_HEADER.size
    return any(head[first + size * i : first + size * i + 8] == SBAT_SECTION for i in range(sections))
