"""PE/COFF as UEFI loads it (Microsoft PE Format specification; edk2 MdePkg/Include/IndustryStandard/PeImage.h):
the DOS header, the PE signature, the COFF file header, the PE32+ optional header, data directories, section headers
and base relocation blocks. The parser and loader are cpu/pe.py.
"""

from __future__ import annotations

from collections.abc import Callable

from lazyaccept.binlayout import Layout

IMAGE_DOS_HEADER = Layout("IMAGE_DOS_HEADER", [("e_magic", "H"), ("e_unused", "58s"), ("e_lfanew", "I")])
_FILE_HEADER_FIELDS = [
    ("Machine", "H"),
    ("NumberOfSections", "H"),
    ("TimeDateStamp", "I"),
    ("PointerToSymbolTable", "I"),
    ("NumberOfSymbols", "I"),
    ("SizeOfOptionalHeader", "H"),
    ("Characteristics", "H"),
]
# IMAGE_FILE_HEADER as C declares it (sizeof 20), after the 4-byte PE signature.
IMAGE_FILE_HEADER_ONLY = Layout("IMAGE_FILE_HEADER", _FILE_HEADER_FIELDS)
# What e_lfanew points at: IMAGE_NT_HEADERS64's Signature ("PE\0\0") and FileHeader, read as one (sizeof 24).
PE_SIGNATURE_AND_FILE_HEADER = Layout("IMAGE_FILE_HEADER", [("Signature", "I"), *_FILE_HEADER_FIELDS])
IMAGE_OPTIONAL_HEADER64 = Layout(
    "IMAGE_OPTIONAL_HEADER64",
    [
        ("Magic", "H"),
        ("MajorLinkerVersion", "B"),
        ("MinorLinkerVersion", "B"),
        ("SizeOfCode", "I"),
        ("SizeOfInitializedData", "I"),
        ("SizeOfUninitializedData", "I"),
        ("AddressOfEntryPoint", "I"),
        ("BaseOfCode", "I"),
        ("ImageBase", "Q"),
        ("SectionAlignment", "I"),
        ("FileAlignment", "I"),
        ("MajorOperatingSystemVersion", "H"),
        ("MinorOperatingSystemVersion", "H"),
        ("MajorImageVersion", "H"),
        ("MinorImageVersion", "H"),
        ("MajorSubsystemVersion", "H"),
        ("MinorSubsystemVersion", "H"),
        ("Win32VersionValue", "I"),
        ("SizeOfImage", "I"),
        ("SizeOfHeaders", "I"),
        ("CheckSum", "I"),
        ("Subsystem", "H"),
        ("DllCharacteristics", "H"),
        ("SizeOfStackReserve", "Q"),
        ("SizeOfStackCommit", "Q"),
        ("SizeOfHeapReserve", "Q"),
        ("SizeOfHeapCommit", "Q"),
        ("LoaderFlags", "I"),
        ("NumberOfRvaAndSizes", "I"),
    ],
)
IMAGE_DATA_DIRECTORY = Layout("IMAGE_DATA_DIRECTORY", [("VirtualAddress", "I"), ("Size", "I")])
IMAGE_SECTION_HEADER = Layout(
    "IMAGE_SECTION_HEADER",
    [
        ("Name", "8s"),
        ("VirtualSize", "I"),
        ("VirtualAddress", "I"),
        ("SizeOfRawData", "I"),
        ("PointerToRawData", "I"),
        ("PointerToRelocations", "I"),
        ("PointerToLinenumbers", "I"),
        ("NumberOfRelocations", "H"),
        ("NumberOfLinenumbers", "H"),
        ("Characteristics", "I"),
    ],
)
IMAGE_BASE_RELOCATION = Layout("IMAGE_BASE_RELOCATION", [("VirtualAddress", "I"), ("SizeOfBlock", "I")])

MZ = 0x5A4D  # IMAGE_DOS_SIGNATURE
PE_SIGNATURE = 0x00004550  # IMAGE_NT_SIGNATURE
MACHINE_X64 = 0x8664  # IMAGE_FILE_MACHINE_AMD64
PE32PLUS_MAGIC = 0x20B  # IMAGE_NT_OPTIONAL_HDR64_MAGIC
DIRECTORY_SECURITY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the certificate table (a file offset, not an RVA)
DIRECTORY_BASERELOC = 5  # IMAGE_DIRECTORY_ENTRY_BASERELOC
IMAGE_SCN_CNT_CODE = 0x00000020
IMAGE_SCN_CNT_INITIALIZED_DATA = 0x00000040
IMAGE_SCN_MEM_READ = 0x40000000
REL_ABSOLUTE, REL_HIGHLOW, REL_DIR64 = 0, 3, 10  # IMAGE_REL_BASED_ABSOLUTE, _HIGHLOW, _DIR64
IMAGE_NUMBEROF_DIRECTORY_ENTRIES = 16


def is_pe(head: bytes) -> bool:
    """Whether a file's first bytes are a PE image at all: the MZ header's e_lfanew points at "PE\\0\\0". (Whether
    UEFI can load it is LoadImage's question; this tells an EFI application from a file that is none.)"""
    if len(head) < IMAGE_DOS_HEADER.size or int.from_bytes(head[:2], "little") != MZ:
        return False
    lfanew = int.from_bytes(head[0x3C:0x40], "little")
    return int.from_bytes(head[lfanew : lfanew + 4], "little") == PE_SIGNATURE if lfanew + 4 <= len(head) else False


DIRECTORY_DEBUG = 6  # IMAGE_DIRECTORY_ENTRY_DEBUG
IMAGE_DEBUG_TYPE_CODEVIEW = 2


def codeview_name(read: Callable[[int, int], bytes | None], base: int, debug_rva: int, delta: int = 0) -> str | None:
    """The module name in an image's CodeView (RSDS) debug record, as edk2's build leaves it (the .pdb/.dll path's
    file name without the suffix); `delta` maps RVAs to addresses of a TE image (stripped headers). None without
    one (release builds often carry none)."""
    if not debug_rva:
        return None
    entry = read(base + debug_rva + delta, 28)  # EFI_IMAGE_DEBUG_DIRECTORY_ENTRY
    if entry is None or int.from_bytes(entry[12:16], "little") != IMAGE_DEBUG_TYPE_CODEVIEW:
        return None
    record = read(base + int.from_bytes(entry[20:24], "little") + delta, 0x200)  # its RVA
    if record is None or record[:4] != b"RSDS":
        return None
    path = record[24:].split(b"\0", 1)[0].decode("utf-8", "replace")
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-4] if name.lower().endswith((".pdb", ".dll")) else name


def pe_debug_name(read: Callable[[int, int], bytes | None], base: int) -> str | None:
    """codeview_name of a PE32 or PE32+ image whose headers are at base (loaded, or a file read at offset base)."""
    dos = read(base, 0x40)
    if dos is None or dos[:2] != b"MZ":
        return None
    head = read(base + int.from_bytes(dos[0x3C:0x40], "little"), 0x108)
    if head is None or head[:4] != b"PE\0\0":
        return None
    # DataDirectory[6] (DEBUG): the directories start 112 bytes into a PE32+ optional header, 96 into PE32's
    directories = 24 + (112 if head[24:26] == b"\x0b\x02" else 96)
    at = directories + 8 * DIRECTORY_DEBUG
    return codeview_name(read, base, int.from_bytes(head[at : at + 4], "little"))

assert IMAGE_DOS_HEADER.size == 64 and IMAGE_FILE_HEADER_ONLY.size == 20 and IMAGE_OPTIONAL_HEADER64.size == 112
assert IMAGE_SECTION_HEADER.size == 40 and IMAGE_DATA_DIRECTORY.size == IMAGE_BASE_RELOCATION.size == 8
