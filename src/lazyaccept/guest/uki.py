"""Unified kernel images: systemd-stub with the kernel, initrd, command line and os-release appended as PE sections.

The layout follows what systemd's ukify does to the stub (src/ukify/ukify.py, pe_add_sections, systemd v262; read,
not copied): the stub's own headers and sections stay byte for byte; each new section header goes after the last
one inside SizeOfHeaders; each section's data starts at the file's end rounded up to FileAlignment and its
VirtualAddress at the previous section's end rounded up to SectionAlignment; NumberOfSections, SizeOfInitializedData
(ukify adds every new section's VirtualSize there, .linux included) and SizeOfImage follow, and CheckSum becomes 0.
A signed stub is refused, as ukify refuses it (appending would break its signature). Sections go in ukify's order,
.linux last.

The file is written sparse: a synthetic initrd is a hole made by seeking, a real file is copied in chunks, so a
1 GiB initrd is never held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lazyaccept.errors import InputError
from lazyaccept.files import atomic_open
from lazyaccept.firmware.dxe.pe import Section as PeSection
from lazyaccept.spec.pe import (
    DIRECTORY_SECURITY,
    IMAGE_DATA_DIRECTORY,
    IMAGE_DOS_HEADER,
    IMAGE_OPTIONAL_HEADER64,
    IMAGE_SCN_CNT_CODE,
    IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ,
    IMAGE_SECTION_HEADER,
    MACHINE_X64,
    MZ,
    PE32PLUS_MAGIC,
    PE_SIGNATURE,
    PE_SIGNATURE_AND_FILE_HEADER,
)
from lazyaccept.units import align_up

U32 = 1 << 32
COPY_CHUNK = 8 << 20
# ukify's order (.dtb, .splash, .pcrsig, .pcrpkey, .ucode are not built here); the stub reads them by name.
SECTION_ORDER = (".osrel", ".cmdline", ".uname", ".initrd", ".linux")


@dataclass(frozen=True)
class Payload:
    """One section's contents: bytes, a host file (copied in chunks), or `size` zero bytes (a sparse hole)."""

    name: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    @property
    def origin(self) -> str:
        return str(self.path) if self.path is not None else "synthetic (zeros)" if self.data is None else "generated"

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
        elif self.path is not None:
            try:
                with open(self.path, "rb") as f:
                    left = self.size
                    while left:
                        chunk = f.read(min(COPY_CHUNK, left))
                        if not chunk:
                            raise InputError(f"{self.path} shrank while being copied into {self.name}")
                        left -= len(chunk)
                        yield chunk
            except OSError as exc:
                raise InputError(f"cannot read {self.path}: {exc.strerror or exc}") from None


def file_payload(name: str, path: Path | str) -> Payload:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (for section {name})")
    return Payload(name, size, path=path)


@dataclass(frozen=True)
class Section(PeSection):
    """A section header as written (or read back), and where it came from ("stub" or the payload's origin)."""

    origin: str = "stub"

    def record(self) -> dict:
        return dict(
            name=self.name, virtual_address=self.virtual_address, virtual_size=self.virtual_size,
            raw_offset=self.raw_offset, raw_size=self.raw_size, characteristics=self.characteristics,
            origin=self.origin,
        )  # fmt: skip


@dataclass(frozen=True)
class PeHeaders:
    """The offsets of a PE32+ image's headers and its section table, as spec/pe.py lays them out."""

    pe_offset: int
    optional_offset: int
    table_offset: int
    file_header: dict
    optional: dict
    sections: tuple[Section, ...]

    @property
    def directory_offset(self) -> int:
        return self.optional_offset + IMAGE_OPTIONAL_HEADER64.size

    def directory(self, head: bytes, index: int) -> dict:
        if index >= self.optional["NumberOfRvaAndSizes"]:
            return dict(VirtualAddress=0, Size=0)
        return IMAGE_DATA_DIRECTORY.unpack(head, self.directory_offset + index * IMAGE_DATA_DIRECTORY.size)


def read_headers(head: bytes, what: str = "stub") -> PeHeaders:
    """Parse a PE32+ x64 image's headers and section table from its first bytes; InputError naming the structure
    and offset when it is none."""
    dos = IMAGE_DOS_HEADER.unpack(head, 0, what=f"{what}: IMAGE_DOS_HEADER")
    if dos["e_magic"] != MZ:
        raise InputError(f"{what}: not a PE image: no MZ signature", field="IMAGE_DOS_HEADER.e_magic", offset=0)
    pe = dos["e_lfanew"]
    fh = PE_SIGNATURE_AND_FILE_HEADER.unpack(head, pe, what=f"{what}: IMAGE_FILE_HEADER")
    if fh["Signature"] != PE_SIGNATURE:
        raise InputError(f"{what}: no PE signature where e_lfanew points", field="Signature", offset=pe)
    if fh["Machine"] != MACHINE_X64:
        raise InputError(f"{what}: machine {fh['Machine']:#x} is not x64 (0x8664)", field="IMAGE_FILE_HEADER.Machine",
                         offset=pe + PE_SIGNATURE_AND_FILE_HEADER.offset_of("Machine"))  # fmt: skip
    opt = pe + PE_SIGNATURE_AND_FILE_HEADER.size
    oh = IMAGE_OPTIONAL_HEADER64.unpack(head, opt, what=f"{what}: IMAGE_OPTIONAL_HEADER64")
    if oh["Magic"] != PE32PLUS_MAGIC:
        raise InputError(f"{what}: optional header magic {oh['Magic']:#x} is not PE32+ (0x20b)",
                         field="IMAGE_OPTIONAL_HEADER64.Magic", offset=opt)  # fmt: skip
    for name in ("SectionAlignment", "FileAlignment"):
        value = oh[name]
        if value == 0 or value & (value - 1):
            raise InputError(f"{what}: {name} {value:#x} is not a power of two",
                             field=f"IMAGE_OPTIONAL_HEADER64.{name}",
                             offset=opt + IMAGE_OPTIONAL_HEADER64.offset_of(name))  # fmt: skip
    table = opt + fh["SizeOfOptionalHeader"]
    sections = []
    for i in range(fh["NumberOfSections"]):
        at = table + i * IMAGE_SECTION_HEADER.size
        s = IMAGE_SECTION_HEADER.unpack(head, at, what=f"{what}: IMAGE_SECTION_HEADER[{i}]")
        sections.append(Section(s["Name"].rstrip(b"\0").decode("ascii", "replace"), s["VirtualAddress"],
                                s["VirtualSize"], s["PointerToRawData"], s["SizeOfRawData"], s["Characteristics"]))
    return PeHeaders(pe, opt, table, fh, oh, tuple(sections))


def check_sections(h: PeHeaders, file_size: int, what: str = "stub") -> None:
    """The stub's sections must not overlap each other or the headers, in memory or in the file, nor end past the
    file: the new sections go after them, and a stub that breaks this is no image to extend."""
    size_of_headers = h.optional["SizeOfHeaders"]
    for i, s in enumerate(h.sections):
        at = h.table_offset + i * IMAGE_SECTION_HEADER.size
        where = f"{what}: IMAGE_SECTION_HEADER[{i}] ({s.name})"
        if s.raw_size and s.raw_offset + s.raw_size > file_size:
            raise InputError(f"{where}: raw data {s.raw_offset:#x}+{s.raw_size:#x} ends past the file ({file_size:#x})",
                             field="IMAGE_SECTION_HEADER.PointerToRawData",
                             offset=at + IMAGE_SECTION_HEADER.offset_of("PointerToRawData"))  # fmt: skip
        if s.virtual_address < size_of_headers or (s.raw_size and s.raw_offset < size_of_headers):
            raise InputError(f"{where}: overlaps the headers (SizeOfHeaders {size_of_headers:#x})",
                             field="IMAGE_SECTION_HEADER.VirtualAddress",
                             offset=at + IMAGE_SECTION_HEADER.offset_of("VirtualAddress"))  # fmt: skip
        for j, t in enumerate(h.sections[:i]):
            mem = s.virtual_address < t.virtual_address + max(t.virtual_size, 1) and t.virtual_address < (
                s.virtual_address + max(s.virtual_size, 1))
            disk = s.raw_size and t.raw_size and s.raw_offset < t.raw_offset + t.raw_size and (
                t.raw_offset < s.raw_offset + s.raw_size)
            if mem or disk:
                field = "VirtualAddress" if mem else "PointerToRawData"
                raise InputError(f"{where} overlaps IMAGE_SECTION_HEADER[{j}] ({t.name}) "
                                 f"{'in memory' if mem else 'in the file'}", field=f"IMAGE_SECTION_HEADER.{field}",
                                 offset=at + IMAGE_SECTION_HEADER.offset_of(field))  # fmt: skip


@dataclass
class UkiImage:
    path: Path
    size: int  # bytes of the file (its apparent size; the holes of a synthetic initrd take no disk space)
    stub: Path
    stub_sections: int
    sections: list[Section]
    size_of_image: int
    size_of_initialized_data: int
    section_alignment: int
    file_alignment: int
    stub_sha256: str
    checksum_cleared: bool

    @property
    def added(self) -> list[Section]:
        return self.sections[self.stub_sections :]

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def plan(stub: bytes, payloads: list[Payload], what: str = "stub") -> tuple[bytearray, PeHeaders, list[Section]]:
    """The new headers (the stub's first SizeOfHeaders bytes, patched) and every section of the UKI."""
    h = read_headers(stub, what)
    check_sections(h, len(stub), what)
    security = h.directory(stub, DIRECTORY_SECURITY)
    if security["VirtualAddress"] or security["Size"]:
        # ukify refuses too: the signature covers the image as it is, and would not survive appended sections
        raise InputError(f"{what}: is signed (certificate table at {security['VirtualAddress']:#x}); use an "
                         "unsigned stub and sign the UKI afterwards", field="IMAGE_DATA_DIRECTORY[SECURITY]",
                         offset=h.directory_offset + DIRECTORY_SECURITY * IMAGE_DATA_DIRECTORY.size)  # fmt: skip
    names = {s.name for s in h.sections}
    oh = dict(h.optional)
    fa, sa = oh["FileAlignment"], oh["SectionAlignment"]
    size_of_headers = oh["SizeOfHeaders"]
    first_raw = min((s.raw_offset for s in h.sections if s.raw_size), default=size_of_headers)
    room = min(size_of_headers, first_raw)
    last_va = max((s.virtual_address + s.virtual_size for s in h.sections), default=size_of_headers)
    file_end = len(stub)
    sections = list(h.sections)
    initialized = oh["SizeOfInitializedData"]
    for p in payloads:
        if not p.size:
            raise InputError(f"section {p.name} would be empty ({p.origin}): a section of no bytes would share its "
                             "address with the next one")
        i = len(sections)
        at = h.table_offset + i * IMAGE_SECTION_HEADER.size
        where = f"IMAGE_SECTION_HEADER[{i}] ({p.name})"
        if p.name in names:
            raise InputError(f"{what}: already has a {p.name} section", field="IMAGE_SECTION_HEADER.Name",
                             offset=h.table_offset + [s.name for s in h.sections].index(p.name) *
                             IMAGE_SECTION_HEADER.size)  # fmt: skip
        if len(p.name.encode()) > 8:
            raise InputError(f"section name {p.name!r} is longer than 8 bytes", field="IMAGE_SECTION_HEADER.Name")
        if at + IMAGE_SECTION_HEADER.size > room:
            raise InputError(f"{what}: no room for {where} in the headers (they end at {room:#x})",
                             field="IMAGE_OPTIONAL_HEADER64.SizeOfHeaders",
                             offset=h.optional_offset + IMAGE_OPTIONAL_HEADER64.offset_of("SizeOfHeaders"))  # fmt: skip
        va = align_up(last_va, sa)
        raw = align_up(file_end, fa)
        raw_size = align_up(p.size, fa)
        characteristics = IMAGE_SCN_MEM_READ | (IMAGE_SCN_CNT_CODE if p.name == ".linux" else
                                                IMAGE_SCN_CNT_INITIALIZED_DATA)  # fmt: skip
        initialized += p.size
        for value, field in ((va + p.size, "VirtualAddress"), (raw + raw_size, "PointerToRawData"),
                             (align_up(va + p.size, sa), "SizeOfImage"), (initialized, "SizeOfInitializedData")):
            if value >= U32:
                in_section = field in ("VirtualAddress", "PointerToRawData")
                layout = IMAGE_SECTION_HEADER if in_section else IMAGE_OPTIONAL_HEADER64
                raise InputError(f"{where} of {p.size:#x} bytes ({p.origin}) ends at {value:#x}: past PE's 32-bit "
                                 f"{field}", field=f"{layout.c_name}.{field}",
                                 offset=(at if in_section else h.optional_offset) + layout.offset_of(field))
        sections.append(Section(p.name, va, p.size, raw, raw_size, characteristics, p.origin))
        last_va, file_end = va + p.size, raw + raw_size
    head = bytearray(stub[:room])
    for s in sections[len(h.sections) :]:
        i = sections.index(s)
        head[h.table_offset + i * IMAGE_SECTION_HEADER.size : h.table_offset + (i + 1) * IMAGE_SECTION_HEADER.size] = (
            IMAGE_SECTION_HEADER.pack(
                Name=s.name.encode().ljust(8, b"\0"), VirtualSize=s.virtual_size, VirtualAddress=s.virtual_address,
                SizeOfRawData=s.raw_size, PointerToRawData=s.raw_offset, PointerToRelocations=0,
                PointerToLinenumbers=0, NumberOfRelocations=0, NumberOfLinenumbers=0,
                Characteristics=s.characteristics,
            )
        )  # fmt: skip
    fh = dict(h.file_header, NumberOfSections=len(sections))
    head[h.pe_offset : h.pe_offset + PE_SIGNATURE_AND_FILE_HEADER.size] = PE_SIGNATURE_AND_FILE_HEADER.pack(fh)
    oh.update(SizeOfImage=align_up(last_va, sa), SizeOfInitializedData=initialized, CheckSum=0)
    head[h.optional_offset : h.optional_offset + IMAGE_OPTIONAL_HEADER64.size] = IMAGE_OPTIONAL_HEADER64.pack(oh)
    return head, h, sections


def build_uki(out: Path | str, stub_path: Path | str, payloads: list[Payload]) -> UkiImage:
    """Write the UKI of the stub and the payloads (in SECTION_ORDER) to `out`, sparse."""
    stub_path = Path(stub_path)
    try:
        stub = stub_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read stub {stub_path}: {exc.strerror or exc}") from None
    ordered = sorted(payloads, key=lambda p: SECTION_ORDER.index(p.name) if p.name in SECTION_ORDER else 0)
    head, h, sections = plan(stub, ordered, f"stub {stub_path}")
    end = max((s.raw_offset + s.raw_size for s in sections), default=len(stub))
    with atomic_open(out) as f:
        f.write(stub)  # the stub whole, its own sections untouched
        f.seek(0)
        f.write(head)  # then its headers with the new section table
        for s, p in zip(sections[len(h.sections) :], ordered, strict=True):
            f.seek(s.raw_offset)
            written = 0
            for chunk in p.chunks():
                f.write(chunk)
                written += len(chunk)
            if written != p.size and (p.data is not None or p.path is not None):
                raise InputError(f"{p.origin}: {written} bytes read for {p.name}, {p.size} expected")
        f.truncate(end)  # the zeros of FileAlignment padding and of a synthetic initrd are holes
    last = max(s.virtual_address + s.virtual_size for s in sections)
    return UkiImage(
        path=Path(out),
        size=end,
        stub=stub_path,
        stub_sections=len(h.sections),
        sections=sections,
        size_of_image=align_up(last, h.optional["SectionAlignment"]),
        size_of_initialized_data=IMAGE_OPTIONAL_HEADER64.unpack(head, h.optional_offset)["SizeOfInitializedData"],
        section_alignment=h.optional["SectionAlignment"],
        file_alignment=h.optional["FileAlignment"],
        stub_sha256=hashlib.sha256(stub).hexdigest(),
        checksum_cleared=bool(h.optional["CheckSum"]),
    )


def read_uki(path: Path | str, head_bytes: int = 64 << 10) -> tuple[PeHeaders, int]:
    """A UKI's (or any PE image's) headers read back from its first bytes, and the file's size."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(head_bytes)
        size = f.seek(0, 2)
    return read_headers(head, str(path)), size


def section_bytes(path: Path | str, section: Section, limit: int = 1 << 20) -> bytes:
    with open(path, "rb") as f:
        f.seek(section.raw_offset)
        return f.read(min(section.virtual_size, limit))


def default_osrel() -> bytes:
    """ukify copies the build host's os-release; a fixed one keeps the image the same on every host."""
    return b'NAME="lazyaccept UKI"\nID=lazyaccept\nPRETTY_NAME="lazyaccept unified kernel image"\n'


def payloads(
    kernel: Path | str, *, initrd: Path | str | None = None, initrd_size: int | None = None, cmdline: str = "",
    osrel: Path | str | None = None,
) -> list[Payload]:
    """The sections of a UKI of this kernel: .osrel, .cmdline, .uname (the kernel's release, as ukify finds it in
    the setup header), .initrd (a file, or `initrd_size` zeros) and .linux."""
    from lazyaccept.guest.kernel_image import read_release

    linux = file_payload(".linux", kernel)
    try:
        with open(linux.path or "", "rb") as f:
            release, _ = read_release(f.read(64 << 10))
    except OSError as exc:
        raise InputError(f"cannot read {kernel}: {exc.strerror or exc}") from None
    out = [file_payload(".osrel", osrel) if osrel is not None else Payload(".osrel", len(default_osrel()),
                                                                          default_osrel())]  # fmt: skip
    if cmdline:  # ukify adds no .cmdline without one (the stub then takes the loader's options)
        out.append(Payload(".cmdline", len(cmdline.encode()), cmdline.encode()))
    if release:
        out.append(Payload(".uname", len(release.encode()), release.encode()))
    if initrd is not None and initrd_size is not None:
        raise InputError("give --initrd FILE or --initrd-size SIZE, not both")
    if initrd is not None:
        out.append(file_payload(".initrd", initrd))
    elif initrd_size:
        out.append(Payload(".initrd", initrd_size))
    out.append(linux)
    return out
