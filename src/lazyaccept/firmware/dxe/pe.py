"""PE32+ images as a UEFI firmware loads them (edk2 MdePkg/Library/BasePeCoffLib): parse with full validation,
lay out the sections (tails beyond SizeOfRawData zero-filled), apply base relocations.

The layouts are lazyaccept.spec.pe. Every malformed image is an InputError naming the field and
its offset in the file; nothing else escapes for any byte string.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from lazyaccept.errors import InputError
from lazyaccept.spec.pe import (
    DIRECTORY_BASERELOC,
    IMAGE_BASE_RELOCATION,
    IMAGE_DATA_DIRECTORY,
    IMAGE_DOS_HEADER,
    IMAGE_NUMBEROF_DIRECTORY_ENTRIES,
    IMAGE_OPTIONAL_HEADER64,
    IMAGE_SECTION_HEADER,
    MACHINE_X64,
    MZ,
    PE32PLUS_MAGIC,
    PE_SIGNATURE,
    PE_SIGNATURE_AND_FILE_HEADER,
    REL_ABSOLUTE,
    REL_DIR64,
    REL_HIGHLOW,
)

# The parser's users (the fuzz seeds, the hostile tests) index the file header from the PE signature.
IMAGE_FILE_HEADER = PE_SIGNATURE_AND_FILE_HEADER
__all__ = [
    "DIRECTORY_BASERELOC",
    "IMAGE_BASE_RELOCATION",
    "IMAGE_DATA_DIRECTORY",
    "IMAGE_DOS_HEADER",
    "IMAGE_FILE_HEADER",
    "IMAGE_OPTIONAL_HEADER64",
    "IMAGE_SECTION_HEADER",
    "MACHINE_X64",
    "MZ",
    "PE32PLUS_MAGIC",
    "PE_SIGNATURE",
    "PeImage",
    "Section",
    "parse_pe",
]

SUBSYSTEMS = {10: "EFI_APPLICATION", 11: "EFI_BOOT_SERVICE_DRIVER", 12: "EFI_RUNTIME_DRIVER"}
# SizeOfImage is 32 bits; a unified kernel image with a 1 GiB initrd is over 1 GiB. Images above LAYOUT_MAX are
# loaded piece by piece (PeImage.pieces), so a hostile header asking for 4 GiB costs no host memory.
MAX_IMAGE_SIZE = (1 << 32) - 1
LAYOUT_MAX = 64 << 20
MAX_SECTIONS = 96


@dataclass(frozen=True)
class Section:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int


@dataclass(frozen=True)
class PeImage:
    """A parsed PE32+ image; `layout(base)` gives its bytes as loaded and relocated at base."""

    data: bytes | mmap.mmap  # a big image (a UKI) is a map of its file, never read whole
    image_base: int
    entry_rva: int
    size_of_image: int
    size_of_headers: int
    section_alignment: int
    subsystem: int
    sections: tuple[Section, ...]
    relocations: tuple[tuple[int, int], ...]  # (rva, type) of each HIGHLOW/DIR64 fixup
    source: str = ""

    @property
    def subsystem_name(self) -> str:
        return SUBSYSTEMS.get(self.subsystem, f"subsystem {self.subsystem}")

    def layout(self, base: int) -> bytearray:
        img = bytearray(self.size_of_image)
        img[: self.size_of_headers] = self.data[: self.size_of_headers]
        for s in self.sections:
            n = min(s.raw_size, s.virtual_size) if s.virtual_size else s.raw_size
            img[s.virtual_address : s.virtual_address + n] = self.data[s.raw_offset : s.raw_offset + n]
        delta = (base - self.image_base) & ((1 << 64) - 1)
        if delta:
            for rva, kind in self.relocations:
                if kind == REL_DIR64:
                    v = int.from_bytes(img[rva : rva + 8], "little")
                    img[rva : rva + 8] = ((v + delta) & ((1 << 64) - 1)).to_bytes(8, "little")
                else:
                    v = int.from_bytes(img[rva : rva + 4], "little")
                    img[rva : rva + 4] = ((v + delta) & 0xFFFFFFFF).to_bytes(4, "little")
        return img

    def pieces(self, chunk: int = 64 << 20) -> Iterator[tuple[int, memoryview]]:
        """What layout() copies from the file, as (rva, view) runs in layout order (a later run overwrites an
        earlier one), without copying: the headers, then each section's file-backed bytes, `chunk` at a time. The
        rest of the image is zeros and the relocations are still to apply (relocate). For images too big to lay
        out in host memory."""
        view = memoryview(self.data)
        spans = [(0, 0, self.size_of_headers)]
        spans += [(s.virtual_address, s.raw_offset, min(s.raw_size, s.virtual_size) if s.virtual_size else s.raw_size)
                  for s in self.sections]  # fmt: skip
        for va, raw, n in spans:
            for off in range(0, n, chunk):
                yield va + off, view[raw + off : raw + off + min(chunk, n - off)]

    def relocate(self, base: int, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None]) -> None:
        """Apply the base relocations to an image written at base from pieces(), through read/write of its RVAs."""
        delta = (base - self.image_base) & ((1 << 64) - 1)
        if not delta:
            return
        for rva, kind in self.relocations:
            n, mask = (8, (1 << 64) - 1) if kind == REL_DIR64 else (4, 0xFFFFFFFF)
            write(rva, ((int.from_bytes(read(rva, n), "little") + delta) & mask).to_bytes(n, "little"))


def parse_pe(data: bytes | mmap.mmap, source: str = "") -> PeImage:
    """Validate and parse a PE32+ x64 image; InputError naming the field and offset otherwise."""
    if not isinstance(data, bytes | mmap.mmap):
        data = bytes(data)
    dos = IMAGE_DOS_HEADER.unpack(data, 0, what="DOS header")
    if dos["e_magic"] != MZ:
        raise InputError("not a PE image: no MZ signature", field="IMAGE_DOS_HEADER.e_magic", offset=0)
    pe_off = dos["e_lfanew"]
    fh = PE_SIGNATURE_AND_FILE_HEADER.unpack(data, pe_off, what="PE file header")
    if fh["Signature"] != PE_SIGNATURE:
        raise InputError("no PE signature at e_lfanew", field="Signature", offset=pe_off)
    if fh["Machine"] != MACHINE_X64:
        raise InputError(
            f"machine {fh['Machine']:#x} is not x64 (0x8664)",
            field="IMAGE_FILE_HEADER.Machine",
            offset=pe_off + PE_SIGNATURE_AND_FILE_HEADER.offset_of("Machine"),
        )
    if not 1 <= fh["NumberOfSections"] <= MAX_SECTIONS:
        raise InputError(
            f"{fh['NumberOfSections']} sections (1..{MAX_SECTIONS} allowed)",
            field="IMAGE_FILE_HEADER.NumberOfSections",
            offset=pe_off + PE_SIGNATURE_AND_FILE_HEADER.offset_of("NumberOfSections"),
        )
    oh_off = pe_off + PE_SIGNATURE_AND_FILE_HEADER.size
    oh = IMAGE_OPTIONAL_HEADER64.unpack(data, oh_off, what="optional header")
    if oh["Magic"] != PE32PLUS_MAGIC:
        raise InputError(
            f"optional header magic {oh['Magic']:#x} is not PE32+ (0x20b)",
            field="IMAGE_OPTIONAL_HEADER64.Magic",
            offset=oh_off,
        )

    def bad(msg: str, name: str) -> InputError:
        return InputError(
            msg, field=f"IMAGE_OPTIONAL_HEADER64.{name}", offset=oh_off + IMAGE_OPTIONAL_HEADER64.offset_of(name)
        )

    size_of_image = oh["SizeOfImage"]
    if not 0 < size_of_image <= MAX_IMAGE_SIZE:
        raise bad(f"SizeOfImage {size_of_image:#x} out of range", "SizeOfImage")
    if not 0 < oh["SizeOfHeaders"] <= min(size_of_image, len(data)):
        raise bad(f"SizeOfHeaders {oh['SizeOfHeaders']:#x} outside the image or file", "SizeOfHeaders")
    align = oh["SectionAlignment"]
    if align == 0 or align & (align - 1):
        raise bad(f"SectionAlignment {align:#x} is not a power of two", "SectionAlignment")
    if oh["AddressOfEntryPoint"] >= size_of_image:
        raise bad(f"entry point RVA {oh['AddressOfEntryPoint']:#x} beyond SizeOfImage", "AddressOfEntryPoint")
    n_dirs = oh["NumberOfRvaAndSizes"]
    if n_dirs > IMAGE_NUMBEROF_DIRECTORY_ENTRIES:
        raise bad(f"{n_dirs} data directories (at most 16)", "NumberOfRvaAndSizes")
    dirs_off = oh_off + IMAGE_OPTIONAL_HEADER64.size
    dirs = [
        IMAGE_DATA_DIRECTORY.unpack(data, dirs_off + IMAGE_DATA_DIRECTORY.size * i, what=f"data directory {i}")
        for i in range(n_dirs)
    ]
    sec_off = oh_off + fh["SizeOfOptionalHeader"]
    if fh["SizeOfOptionalHeader"] < IMAGE_OPTIONAL_HEADER64.size + 8 * n_dirs:
        raise InputError(
            "SizeOfOptionalHeader too small for its data directories",
            field="IMAGE_FILE_HEADER.SizeOfOptionalHeader",
            offset=pe_off + PE_SIGNATURE_AND_FILE_HEADER.offset_of("SizeOfOptionalHeader"),
        )
    sections = []
    for i in range(fh["NumberOfSections"]):
        at = sec_off + i * IMAGE_SECTION_HEADER.size
        sh = IMAGE_SECTION_HEADER.unpack(data, at, what=f"section header {i}")
        name = sh["Name"].rstrip(b"\0").decode("ascii", "replace")
        va, vsize, raw_off, raw_size = (
            sh["VirtualAddress"],
            sh["VirtualSize"],
            sh["PointerToRawData"],
            sh["SizeOfRawData"],
        )
        span = max(vsize, raw_size)
        if va + span > size_of_image or va < oh["SizeOfHeaders"] and span:
            raise InputError(
                f"section {name!r} [{va:#x}, +{span:#x}) outside the image",
                field=f"IMAGE_SECTION_HEADER[{i}].VirtualAddress",
                offset=at + 12,
            )
        loaded = min(raw_size, vsize) if vsize else raw_size
        if loaded and raw_off + loaded > len(data):
            raise InputError(
                f"section {name!r} raw data [{raw_off:#x}, +{loaded:#x}) runs past the end of the file",
                field=f"IMAGE_SECTION_HEADER[{i}].SizeOfRawData",
                offset=at + 16,
            )
        sections.append(Section(name, va, vsize, raw_off, raw_size, sh["Characteristics"]))
    relocs = _relocations(
        data,
        sections,
        dirs[DIRECTORY_BASERELOC] if n_dirs > DIRECTORY_BASERELOC else None,
        size_of_image,
        dirs_off + 8 * DIRECTORY_BASERELOC,
        oh["SizeOfHeaders"],
    )
    return PeImage(
        data,
        oh["ImageBase"],
        oh["AddressOfEntryPoint"],
        size_of_image,
        oh["SizeOfHeaders"],
        align,
        oh["Subsystem"],
        tuple(sections),
        relocs,
        source,
    )


def _file_backed(
    data: bytes | mmap.mmap, sections: list[Section], size_of_headers: int, start: int, end: int
) -> list[tuple[int, bytes]]:
    """The bytes of [start, end) of the laid-out image that come from the file, as (rva, bytes) pieces in order;
    the rest of the image is zeros. Work follows the file's size, not a hostile SizeOfImage."""
    pieces = [(0, 0, size_of_headers)]
    pieces += [
        (s.virtual_address, s.raw_offset, min(s.raw_size, s.virtual_size) if s.virtual_size else s.raw_size)
        for s in sections
    ]
    spans = sorted((max(va, start), min(va + n, end)) for va, _, n in pieces if max(va, start) < min(va + n, end))
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out = []
    for lo, hi in merged:
        buf = bytearray(hi - lo)
        for va, raw, n in pieces:  # in layout order: a later section overwrites an earlier one, as layout() does
            a, b = max(va, lo), min(va + n, hi)
            if a < b:
                buf[a - lo : b - lo] = data[raw + a - va : raw + b - va]
        out.append((lo, bytes(buf)))
    return out


def _relocations(
    data: bytes | mmap.mmap,
    sections: list[Section],
    directory: dict | None,
    size_of_image: int,
    dir_offset: int,
    size_of_headers: int = 0,
) -> tuple[tuple[int, int], ...]:
    if not directory or not directory["Size"]:
        return ()
    start, size = directory["VirtualAddress"], directory["Size"]
    if start + size > size_of_image:
        raise InputError("base relocation directory outside the image", field="DataDirectory[5]", offset=dir_offset)
    # The directory is an RVA: read it through the laid-out image, where all but the file-backed parts are zero.
    # (a block header straddling the directory's end is read whole, then refused for its size).
    backed = _file_backed(data, sections, size_of_headers, start, min(start + size + 8, size_of_image))

    def read(rva: int, n: int) -> bytes:
        out = bytearray(n)
        for lo, blob in backed:
            a, b = max(lo, rva), min(lo + len(blob), rva + n)
            if a < b:
                out[a - rva : b - rva] = blob[a - lo : b - lo]
        return bytes(out)

    out = []
    pos = start
    while pos < start + size:
        block = IMAGE_BASE_RELOCATION.unpack(read(pos, IMAGE_BASE_RELOCATION.size), 0, what="relocation block")
        bsize = block["SizeOfBlock"]
        if bsize < IMAGE_BASE_RELOCATION.size or bsize % 2 or pos + bsize > start + size:
            raise InputError(
                f"relocation block size {bsize:#x} invalid",
                field="IMAGE_BASE_RELOCATION.SizeOfBlock",
                offset=pos + IMAGE_BASE_RELOCATION.offset_of("SizeOfBlock"),
            )
        # Entries outside the file-backed parts are zero, IMAGE_REL_BASED_ABSOLUTE: skipping them is exact.
        first, last = pos + IMAGE_BASE_RELOCATION.size, pos + bsize
        for lo, blob in backed:
            a, b = max(lo, first), min(lo + len(blob), last)
            a += (a - first) % 2  # entries are 2-byte aligned from the block's first entry
            for at in range(a, b - 1, 2):
                entry = blob[at - lo] | blob[at - lo + 1] << 8
                kind, rva = entry >> 12, block["VirtualAddress"] + (entry & 0xFFF)
                if kind == REL_ABSOLUTE:
                    continue
                width = 8 if kind == REL_DIR64 else 4
                if kind not in (REL_HIGHLOW, REL_DIR64) or rva + width > size_of_image:
                    raise InputError(
                        f"unsupported or out-of-image relocation (type {kind}, RVA {rva:#x})",
                        field="IMAGE_BASE_RELOCATION.TypeOffset",
                        offset=at,
                    )
                out.append((rva, kind))
        pos += bsize
    return tuple(out)
