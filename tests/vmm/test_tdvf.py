"""TDVF metadata reader: the real Debian OVMF images, the built-in layout, and hostile images."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept import binaries
from lazyaccept.errors import InputError
from lazyaccept.vmm.tdvf import (
    MAX_SECTIONS,
    OVMF_TABLE_ENTRY_TAIL,
    OVMF_TABLE_FOOTER,
    TDVF_DESCRIPTOR,
    TDVF_SECTION,
    TDX_METADATA_OFFSET,
    TdvfAttributes,
    TdvfMetadata,
    TdvfSection,
    TdvfSectionType,
    builtin_ovmf_metadata,
    load_firmware,
    parse_tdvf_metadata,
    read_firmware,
    synthesize_image,
)

T = TdvfSectionType
MR = TdvfAttributes.MR_EXTEND
NONE = TdvfAttributes(0)
SMALL = 0x40000  # a 256 KiB image: ROM at 0xfffc0000


def sec(index: int, kind: TdvfSectionType, base: int, size: int, raw_offset: int = 0, raw_size: int = 0,
        attributes: TdvfAttributes = NONE) -> TdvfSection:
    return TdvfSection(index=index, type=kind, attributes=attributes, raw_offset=raw_offset, raw_size=raw_size,
                       memory_base=base, memory_size=size)


def small_sections() -> list[TdvfSection]:
    """A valid layout for a 256 KiB image: CFV + BFV fill the ROM, then the RAM sections."""
    return [
        sec(0, T.BFV, 0xFFFC8000, 0x38000, raw_offset=0x8000, raw_size=0x38000, attributes=MR),
        sec(1, T.CFV, 0xFFFC0000, 0x8000, raw_offset=0, raw_size=0x8000),
        sec(2, T.TEMP_MEM, 0x800000, 0x6000),
        sec(3, T.TD_HOB, 0x809000, 0x2000),
    ]


def image_of(sections: list[TdvfSection], size: int = SMALL) -> bytearray:
    return bytearray(synthesize_image(sections, size))


def descriptor_at(image: bytes | bytearray) -> int:
    """Where the descriptor is, found the simple way (synthesize_image puts the one table entry first)."""
    n = len(image)
    entry_data = n - 0x30 - OVMF_TABLE_FOOTER.offset_of("Guid") - OVMF_TABLE_ENTRY_TAIL.size - TDX_METADATA_OFFSET.size
    return n - int.from_bytes(image[entry_data : entry_data + 4], "little")


def section_field(image: bytes | bytearray, index: int, name: str) -> int:
    return descriptor_at(image) + TDVF_DESCRIPTOR.size + index * TDVF_SECTION.size + TDVF_SECTION.offset_of(name)


def desc_field(image: bytes | bytearray, name: str) -> int:
    return descriptor_at(image) + TDVF_DESCRIPTOR.offset_of(name)


def poke(image: bytearray, offset: int, value: int, width: int) -> bytearray:
    image[offset : offset + width] = value.to_bytes(width, "little")
    return image


def rejected(image: bytes | bytearray, field: str, offset: int | None, *words: str) -> InputError:
    with pytest.raises(InputError) as info:
        parse_tdvf_metadata(image)
    exc = info.value
    assert exc.field == field, str(exc)
    assert exc.offset == offset, str(exc)
    text = str(exc)
    assert f"field {field}" in text
    if offset is not None:
        assert f"offset {offset:#x}" in text
    for word in words:
        assert word in text, text
    return exc


# ---------------------------------------------------------------------------------------------------------
# Real images


@pytest.mark.real_binary
def test_debian_ovmf_fd_parses_to_the_six_sections_qemu_uses():
    meta = read_firmware(binaries.ovmf_fd())
    assert meta.image_size == 0x400000
    assert meta.rom_base == 0xFFC00000
    got = [(s.type, s.memory_base, s.memory_size, s.raw_offset, s.raw_size, s.attributes) for s in meta.sections]
    assert got == [
        (T.BFV, 0xFFC84000, 0x37C000, 0x84000, 0x37C000, MR),
        (T.CFV, 0xFFC00000, 0x84000, 0x0, 0x84000, NONE),
        (T.TEMP_MEM, 0x811000, 0xF000, 0, 0, NONE),
        (T.TEMP_MEM, 0x80B000, 0x2000, 0, 0, NONE),
        (T.TD_HOB, 0x809000, 0x2000, 0, 0, NONE),
        (T.TEMP_MEM, 0x800000, 0x6000, 0, 0, NONE),
    ]
    assert meta.td_hob.memory_base == 0x809000
    assert [meta.region_of(s) for s in meta.sections] == ["ROM", "ROM", "RAM", "RAM", "RAM", "RAM"]


@pytest.mark.real_binary
def test_builtin_layout_equals_the_real_ovmf_fd_field_by_field():
    real = read_firmware(binaries.ovmf_fd())
    builtin = builtin_ovmf_metadata()
    assert real.image_size == builtin.image_size
    assert real.descriptor_offset == builtin.descriptor_offset
    assert real.rom_base == builtin.rom_base
    assert len(real.sections) == len(builtin.sections)
    for mine, theirs in zip(builtin.sections, real.sections, strict=True):
        for f in dataclasses.fields(TdvfSection):
            assert getattr(mine, f.name) == getattr(theirs, f.name), (mine.index, f.name)
    assert real == builtin


@pytest.mark.real_binary
def test_ovmf_code_4m_is_rejected_because_bfv_raw_data_runs_past_the_file():
    path = binaries.ovmf_code_4m_fd()
    with pytest.raises(InputError) as info:
        read_firmware(path)
    exc = info.value
    text = str(exc)
    assert exc.field == "TDVF_SECTION[0].RawDataSize"
    # The descriptor sits at image end - 0x9c0, like in OVMF.fd; RawDataSize is the entry's second u32.
    assert exc.offset == 0x37C000 - 0x9C0 + TDVF_DESCRIPTOR.size + TDVF_SECTION.offset_of("RawDataSize")
    assert "section 0" in text and "BFV" in text and "runs past the end" in text and "0x37c000" in text
    assert str(path) in text


def test_builtin_layout_survives_a_round_trip_through_an_image():
    builtin = builtin_ovmf_metadata()
    image = synthesize_image(builtin.sections, builtin.image_size, descriptor_offset=builtin.descriptor_offset)
    assert parse_tdvf_metadata(image) == builtin


def test_builtin_layout_properties():
    meta = load_firmware(None)
    assert meta.source == "builtin"
    assert meta.rom_base == 0xFFC00000
    bfv = meta.of_type(T.BFV)[0]
    assert bfv.measured and bfv.from_image and bfv.qemu_add == "ADD+MR.EXTEND"
    assert [s.memory_base for s in meta.ram_sections] == [0x811000, 0x80B000, 0x809000, 0x800000]
    assert all(s.qemu_add == "ADD" and not s.from_image for s in meta.ram_sections)


def test_load_firmware_reads_a_file(tmp_path):
    path = tmp_path / "fw.fd"
    path.write_bytes(synthesize_image(small_sections(), SMALL))
    meta = load_firmware(path)
    assert isinstance(meta, TdvfMetadata)
    assert meta.source == str(path)
    assert meta.rom_base == 0xFFFC0000
    assert [s.type for s in meta.sections] == [T.BFV, T.CFV, T.TEMP_MEM, T.TD_HOB]


def test_missing_empty_and_directory_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="cannot read firmware image .*missing"):
        read_firmware(tmp_path / "missing")
    with pytest.raises(InputError, match="cannot read firmware image"):
        read_firmware(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InputError, match="empty.*too short"):
        read_firmware(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------------
# Hostile images: each refused with the field and its offset


def test_wrong_signature():
    image = image_of(small_sections())
    image[desc_field(image, "Signature")] = ord("X")
    rejected(image, "TDVF_DESCRIPTOR.Signature", desc_field(image, "Signature"), "signature")


def test_wrong_version():
    image = image_of(small_sections())
    poke(image, desc_field(image, "Version"), 2, 4)
    rejected(image, "TDVF_DESCRIPTOR.Version", desc_field(image, "Version"), "version 2")


def test_length_inconsistent_with_section_count():
    image = image_of(small_sections())
    poke(image, desc_field(image, "Length"), TDVF_DESCRIPTOR.size + 3 * TDVF_SECTION.size, 4)
    rejected(image, "TDVF_DESCRIPTOR.Length", desc_field(image, "Length"), "does not match 4 sections")


def test_length_past_the_image():
    image = image_of(small_sections())
    poke(image, desc_field(image, "Length"), 0xFFFFFFFF, 4)
    rejected(image, "TDVF_DESCRIPTOR.Length", desc_field(image, "Length"), "past the end")


@pytest.mark.parametrize("count", [0, 1, MAX_SECTIONS + 1, 0xFFFFFFFF])
def test_bad_section_counts(count):
    image = image_of(small_sections())
    poke(image, desc_field(image, "NumberOfSectionEntries"), count, 4)
    rejected(image, "TDVF_DESCRIPTOR.NumberOfSectionEntries", desc_field(image, "NumberOfSectionEntries"))


def test_huge_count_with_matching_length_is_refused_before_reading_entries():
    image = image_of(small_sections())
    count = 0x40000000
    poke(image, desc_field(image, "NumberOfSectionEntries"), count, 4)
    poke(image, desc_field(image, "Length"), (TDVF_DESCRIPTOR.size + count * TDVF_SECTION.size) & 0xFFFFFFFF, 4)
    with pytest.raises(InputError) as info:
        parse_tdvf_metadata(image)
    assert info.value.field in ("TDVF_DESCRIPTOR.NumberOfSectionEntries", "TDVF_DESCRIPTOR.Length")


@pytest.mark.parametrize("distance", [0, 1, SMALL + 0x1000, 0xFFFFFFFF])
def test_metadata_offset_outside_the_image(distance):
    image = image_of(small_sections())
    n = len(image)
    at = n - 0x30 - 2 - OVMF_TABLE_ENTRY_TAIL.size - TDX_METADATA_OFFSET.size
    poke(image, at, distance, 4)
    rejected(image, "TDX_METADATA_OFFSET.Offset", at, "outside")


def test_metadata_offset_entry_too_short():
    image = image_of(small_sections())
    n = len(image)
    tail = n - 0x30 - 2 - OVMF_TABLE_ENTRY_TAIL.size
    poke(image, tail, OVMF_TABLE_ENTRY_TAIL.size + 2, 2)  # entry data shrinks to 2 bytes
    rejected(image, "TDX_METADATA_OFFSET.Offset", tail - 2, "holds 2 bytes")


def test_no_footer_guid():
    image = image_of(small_sections())
    image[-0x30] ^= 0xFF
    rejected(image, "OVMF_TABLE_FOOTER.Guid", SMALL - 0x30, "not an OVMF/TDVF image")


@pytest.mark.parametrize(("size", "length"), [(SMALL, 0), (SMALL, 17), (0x400, 0x400), (0x400, 0xFFFF)])
def test_footer_table_length_out_of_range(size, length):
    # A length that reaches past the image start is only possible in a small buffer (the field is a u16).
    image = bytearray(synthesize_image(small_sections(), SMALL)[-size:])
    poke(image, size - 0x32, length, 2)
    rejected(image, "OVMF_TABLE_FOOTER.TableLength", size - 0x32, "out of range")


def test_empty_footer_table_has_no_tdx_entry():
    image = image_of(small_sections())
    poke(image, SMALL - 0x32, OVMF_TABLE_FOOTER.size, 2)
    rejected(image, "OVMF_TABLE_FOOTER", SMALL - 0x32, "no TDX metadata offset entry")


def test_footer_entry_length_corrupt():
    image = image_of(small_sections())
    tail = SMALL - 0x32 - OVMF_TABLE_ENTRY_TAIL.size
    poke(image, tail, 3, 2)
    rejected(image, "OVMF_TABLE_ENTRY[0].Length", tail, "length 3")


def test_footer_entry_with_another_guid():
    image = image_of(small_sections())
    image[SMALL - 0x33] ^= 0xFF  # last byte of the entry's GUID
    rejected(image, "OVMF_TABLE_FOOTER", SMALL - 0x32, "no TDX metadata offset entry")


def test_truncated_footer():
    image = image_of(small_sections())
    # The first 64 KiB of the image: size is fine, but its end holds no footer.
    rejected(bytes(image[:0x10000]), "OVMF_TABLE_FOOTER.Guid", 0x10000 - 0x30, "no OVMF table footer")
    rejected(bytes(image[-40:]), "OVMF_TABLE_FOOTER", 0, "too short")


def test_image_size_not_a_multiple_of_64k():
    # Consistent metadata in an image one page too long: QEMU's loader refuses the size.
    shifted = [dataclasses.replace(s, raw_offset=s.raw_offset + 0x1000) if s.from_image else s
               for s in small_sections()]
    image = synthesize_image(shifted, SMALL + 0x1000)
    rejected(image, "image size", None, "not a positive multiple of 64 KiB")


def _section_case(index: int, **changes: int) -> tuple[bytearray, int]:
    sections = small_sections()
    image = image_of(sections)
    for name, value in changes.items():
        width = 8 if name in ("MemoryAddress", "MemoryDataSize") else 4
        poke(image, section_field(image, index, name), value, width)
    return image, index


@pytest.mark.parametrize(
    ("index", "changes", "field", "words"),
    [
        (2, {"MemoryAddress": 0x800800}, "MemoryAddress", ["not 4 KiB aligned"]),
        (2, {"MemoryDataSize": 0x6100}, "MemoryDataSize", ["not 4 KiB aligned"]),
        (1, {"RawDataSize": 0x9000}, "RawDataSize", ["exceeds MemoryDataSize"]),
        (2, {"Type": 9}, "Type", ["unknown type 9", "not supported by QEMU"]),
        (2, {"Type": 4}, "Type", ["PERM_MEM", "not supported by QEMU"]),
        (3, {"Type": 7}, "Type", ["TD_INFO"]),
        (1, {"RawDataSize": 0}, "RawDataSize", ["CFV section has RawDataSize 0"]),
        (3, {"RawDataSize": 0x1000}, "RawDataSize", ["TD_HOB section has RawDataSize 0x1000"]),
        (2, {"MemoryDataSize": 0}, "MemoryDataSize", ["MemoryDataSize is 0"]),
        (2, {"MemoryAddress": 0xFFFFFFFFFFFFF000}, "MemoryDataSize", ["wraps past 2^64"]),
        (1, {"DataOffset": 0x800}, "DataOffset", ["not 4 KiB aligned"]),
        (1, {"DataOffset": 0x40000}, "DataOffset", ["beyond the end"]),
        (0, {"DataOffset": 0x10000}, "RawDataSize", ["BFV raw data [0x10000, 0x48000) runs past the end"]),
        (1, {"DataOffset": 0x3C000, "RawDataSize": 0x1000}, "MemoryDataSize", ["QEMU copies MemoryDataSize"]),
    ],
)
def test_hostile_section_fields(index, changes, field, words):
    image, index = _section_case(index, **changes)
    rejected(image, f"TDVF_SECTION[{index}].{field}", section_field(image, index, field), f"section {index}", *words)


def test_overlapping_sections():
    sections = small_sections()
    sections[3] = dataclasses.replace(sections[3], memory_base=0x805000)  # TD_HOB inside TEMP_MEM [0x800000, +0x6000)
    image = image_of(sections)
    rejected(image, "TDVF_SECTION[3].MemoryAddress", section_field(image, 3, "MemoryAddress"), "overlaps section 2")


def test_ram_section_overlapping_the_rom():
    sections = small_sections()
    sections[2] = dataclasses.replace(sections[2], memory_base=0xFFFFF000, memory_size=0x1000)
    image = image_of(sections)
    rejected(image, "TDVF_SECTION[2].MemoryAddress", section_field(image, 2, "MemoryAddress"), "overlaps section 0")


def test_no_td_hob():
    sections = small_sections()
    sections[3] = dataclasses.replace(sections[3], type=T.TEMP_MEM)
    image = image_of(sections)
    rejected(image, "TDVF_DESCRIPTOR.NumberOfSectionEntries", desc_field(image, "NumberOfSectionEntries"), "no TD_HOB")


def test_two_td_hobs():
    sections = small_sections() + [sec(4, T.TD_HOB, 0x900000, 0x1000)]
    image = image_of(sections)
    rejected(image, "TDVF_SECTION[4].Type", section_field(image, 4, "Type"), "second TD_HOB", "section 3")


def test_unknown_attribute_bits_are_kept_as_qemu_ignores_them():
    sections = small_sections()
    sections[1] = dataclasses.replace(sections[1], attributes=TdvfAttributes(0x80 | TdvfAttributes.PAGE_AUG))
    meta = parse_tdvf_metadata(synthesize_image(sections, SMALL))
    assert not meta.sections[1].measured
    assert int(meta.sections[1].attributes) == 0x82


def test_footer_walk_finds_the_entry_behind_other_entries():
    """OVMF's real table has five entries; the TDX one is the last one walked (the lowest in the image)."""
    image = bytearray(synthesize_image(small_sections(), SMALL, descriptor_offset=SMALL - 0x400))
    # Insert an unrelated 22-byte entry between the TDX entry and the footer.
    footer_at = SMALL - 0x32
    tdx_entry = bytes(image[footer_at - 22 : footer_at])
    other = (0x1234).to_bytes(4, "little") + (22).to_bytes(2, "little") + bytes(range(16))
    image[footer_at - 44 : footer_at] = tdx_entry + other
    poke(image, footer_at, OVMF_TABLE_FOOTER.size + 44, 2)
    meta = parse_tdvf_metadata(image)
    assert len(meta.sections) == 4


# ---------------------------------------------------------------------------------------------------------
# Fuzzing: nothing but InputError ever comes out


_BUILTIN = builtin_ovmf_metadata()
_VALID = synthesize_image(_BUILTIN.sections, _BUILTIN.image_size, descriptor_offset=_BUILTIN.descriptor_offset)
_META_START = _BUILTIN.descriptor_offset - 16
_META_END = _BUILTIN.descriptor_offset + TDVF_DESCRIPTOR.size + len(_BUILTIN.sections) * TDVF_SECTION.size
_FOOTER_START = len(_VALID) - 0x32 - 22
_POSITIONS = list(range(_META_START, _META_END)) + list(range(_FOOTER_START, len(_VALID)))
_FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_input_error(image: bytes | bytearray) -> TdvfMetadata | None:
    try:
        return parse_tdvf_metadata(image)
    except InputError as exc:
        assert exc.field, str(exc)
        return None


@_FUZZ
@given(st.lists(st.tuples(st.sampled_from(_POSITIONS), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_metadata_bytes(mutations):
    image = bytearray(_VALID)
    for pos, value in mutations:
        image[pos] = value
    meta = _parse_or_input_error(image)
    if meta is not None:
        _assert_sane(meta)


@_FUZZ
@given(st.integers(0, len(_VALID) - 1), st.booleans())
def test_fuzz_truncation(length, from_front):
    image = _VALID[len(_VALID) - length :] if from_front else _VALID[:length]
    meta = _parse_or_input_error(image)
    if meta is not None:
        _assert_sane(meta)


_U32 = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 0x1000, 0x8000, 0x38000, 0x3F000, 0xFFFFF000]))
_U64 = st.one_of(
    st.integers(0, (1 << 64) - 1),
    st.sampled_from([0, 0x1000, 0x800000, 0xFFFC0000, 0xFFFFF000, (1 << 64) - 0x1000]),
)


@_FUZZ
@given(
    st.lists(
        st.builds(
            TdvfSection,
            index=st.just(0),
            type=st.integers(0, 9),
            attributes=st.integers(0, 0xFFFFFFFF),
            raw_offset=_U32,
            raw_size=_U32,
            memory_base=_U64,
            memory_size=_U64,
        ),
        min_size=0,
        max_size=6,
    )
)
def test_fuzz_section_values(sections):
    meta = _parse_or_input_error(synthesize_image(sections, SMALL))
    if meta is not None:
        _assert_sane(meta)


def _assert_sane(meta: TdvfMetadata) -> None:
    """What a parsed image guarantees to the rest of lazyaccept."""
    assert meta.image_size % 0x10000 == 0
    assert sum(s.type == T.TD_HOB for s in meta.sections) == 1
    ordered = sorted(meta.sections, key=lambda s: s.memory_base)
    for s in ordered:
        assert s.memory_base % 0x1000 == 0 and s.memory_size % 0x1000 == 0 and s.memory_size > 0
        assert s.memory_end <= 1 << 64
        if s.from_image:
            assert 0 < s.raw_size <= s.memory_size and s.raw_offset + s.memory_size <= meta.image_size
        else:
            assert s.raw_size == 0
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.memory_end <= b.memory_base
