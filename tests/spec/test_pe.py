"""The PE/COFF layouts of lazyaccept.spec.pe against the C sizeof and a real header round trip."""

from __future__ import annotations

from lazyaccept.firmware.dxe import pe as parser
from lazyaccept.spec import pe as S


def test_sizes_are_the_c_sizeof() -> None:
    assert S.IMAGE_DOS_HEADER.size == 64 and S.IMAGE_DOS_HEADER.offset_of("e_lfanew") == 0x3C
    assert S.IMAGE_FILE_HEADER_ONLY.size == 20 and S.PE_SIGNATURE_AND_FILE_HEADER.size == 24
    assert S.IMAGE_OPTIONAL_HEADER64.size == 112 and S.IMAGE_OPTIONAL_HEADER64.offset_of("ImageBase") == 24
    assert S.IMAGE_SECTION_HEADER.size == 40 and S.IMAGE_BASE_RELOCATION.size == 8
    # the signature-led form is the signature followed by the C IMAGE_FILE_HEADER, field for field
    for name in S.IMAGE_FILE_HEADER_ONLY.fields:
        assert S.PE_SIGNATURE_AND_FILE_HEADER.offset_of(name) == 4 + S.IMAGE_FILE_HEADER_ONLY.offset_of(name)
    assert parser.IMAGE_FILE_HEADER is S.PE_SIGNATURE_AND_FILE_HEADER


def test_section_header_round_trip() -> None:
    values = {"Name": b".text\0\0\0", "VirtualSize": 0x10, "VirtualAddress": 0x1000, "Characteristics": 0x60000020}
    raw = S.IMAGE_SECTION_HEADER.pack(values)
    back = S.IMAGE_SECTION_HEADER.unpack(raw)
    assert {k: back[k] for k in values} == values and back["SizeOfRawData"] == 0
