"""PE/COFF as UEFI loads it (Microsoft PE Format specification; edk2 MdePkg/Include/IndustryStandard/PeImage.h):
the DOS header, the PE signature, the COFF file header, the PE32+ optional header, data directories, section headers
and base relocation blocks. The parser and loader are cpu/pe.py.
"""

from __future__ import annotations

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


assert IMAGE_DOS_HEADER.size == 64 and IMAGE_FILE_HEADER_ONLY.size == 20 and IMAGE_OPTIONAL_HEADER64.size == 112
assert IMAGE_SECTION_HEADER.size == 40 and IMAGE_DATA_DIRECTORY.size == IMAGE_BASE_RELOCATION.size == 8
