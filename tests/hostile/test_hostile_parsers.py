"""Hostile input to every parser, built by mutating valid input the way an attacker would: lengths, offsets,
overlapping and unaligned ranges, ranges beyond the GPA width, a missing end of list, huge counts. Each
rejection is an InputError naming the field and its offset; nothing else escapes. The coverage-guided fuzzers
(fuzz/) run the same parsers; test_fuzz_smoke.py runs them briefly."""

from __future__ import annotations

import struct

import pytest
from fuzz import targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe import pe
from lazyaccept.firmware.pi import hob as H
from lazyaccept.guest import boot_params as bp
from lazyaccept.guest.unaccepted import parse_unaccepted_table
from lazyaccept.spec.linux_efi import UNACCEPTED_TABLE_HEADER
from lazyaccept.vmm import tdvf

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = targets.TD_HOB_BASE
GENERIC = H.EFI_HOB_GENERIC_HEADER
RES = H.EFI_HOB_RESOURCE_DESCRIPTOR
PHIT = H.EFI_HOB_HANDOFF_INFO_TABLE
STRICT = dict(allowed_types=H.EDK2_TD_HOB_TYPES, range_alignment=4096, max_address=H.TDX_GPA_LIMIT)


# ------------------------------------------------------------------------------------------------ TD HOB


@st.composite
def ram_layouts(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Ascending, disjoint, 4 KiB-aligned RAM ranges, as a VMM would describe them."""
    n = draw(st.integers(1, 12))
    out, pos = [], 0
    for _ in range(n):
        pos += draw(st.integers(0, 1 << 20)) * 4096
        size = draw(st.integers(1, 1 << 24)) * 4096
        out.append((pos, size))
        pos += size
    return out


def encode(ram: list[tuple[int, int]]) -> bytearray:
    records = [H.PhitHob()] + [
        H.ResourceHob(H.ResourceType.MEMORY_UNACCEPTED, H.TDVF_RAM_ATTRIBUTES, s, n) for s, n in ram
    ]
    return bytearray(H.encode_hob_list(records, base_address=BASE, end_pointer="qemu"))


def res_at(i: int) -> int:
    """Offset of HOB[i], a resource descriptor after the PHIT."""
    return PHIT.size + (i - 1) * RES.size


def poke_u64(buf: bytearray, at: int, value: int) -> None:
    buf[at : at + 8] = (value % (1 << 64)).to_bytes(8, "little")


def rejected(buf: bytes | bytearray, **kw) -> InputError:
    with pytest.raises(InputError) as err:
        H.parse_hob_list(bytes(buf), base_address=BASE, **kw)
    targets.expect_input_error(err.value)
    return err.value


@SETTINGS
@given(ram_layouts(), st.data())
def test_overlapping_ranges_name_the_later_descriptor(ram, data) -> None:
    if len(ram) < 2:
        return
    i = data.draw(st.integers(2, len(ram)))
    prev_start, prev_size = ram[i - 2]
    new_start = prev_start + data.draw(st.integers(0, prev_size // 4096 - 1)) * 4096
    buf = encode(ram)
    poke_u64(buf, res_at(i) + RES.offset_of("PhysicalStart"), new_start)
    err = rejected(buf, **STRICT)
    assert "overlaps" in str(err) and err.field.endswith(".PhysicalStart")
    assert err.offset == res_at(int(err.field[4:].split("]")[0])) + RES.offset_of("PhysicalStart")


@SETTINGS
@given(ram_layouts(), st.data(), st.sampled_from(["PhysicalStart", "ResourceLength"]), st.integers(1, 4095))
def test_unaligned_ranges_are_rejected(ram, data, name, misalign) -> None:
    i = data.draw(st.integers(1, len(ram)))
    buf = encode(ram)
    at = res_at(i) + RES.offset_of(name)
    poke_u64(buf, at, int.from_bytes(buf[at : at + 8], "little") + misalign)
    err = rejected(buf, **STRICT)
    assert (err.field, err.offset) == (f"HOB[{i}].{name}", at) or "overlaps" in str(err)


@SETTINGS
@given(ram_layouts(), st.data(), st.integers(0, (1 << 12) - 2))
def test_ranges_beyond_the_gpa_width_or_wrapping_are_rejected(ram, data, high) -> None:
    i = data.draw(st.integers(1, len(ram)))
    buf = encode(ram)
    start = (1 + high) << 52  # at or beyond 2^52 (the TDX GPA limit), wrapping past 2^64 when near its top
    poke_u64(buf, res_at(i) + RES.offset_of("PhysicalStart"), start)
    err = rejected(buf, **STRICT)
    assert ("above the address limit" in str(err) or "wraps" in str(err) or "overlaps" in str(err))


@SETTINGS
@given(ram_layouts(), st.integers(1, 8))
def test_missing_end_of_list_is_rejected(ram, cut) -> None:
    buf = encode(ram)[: -GENERIC.size]  # no END_OF_HOB_LIST
    buf += bytes(cut * 8)  # zeros after it read as HobType 0
    err = rejected(buf)
    assert err.field.endswith("Header.HobType")
    assert err.offset == len(encode(ram)) - GENERIC.size


@pytest.mark.parametrize("count", [4097, 20000])
def test_huge_hob_counts_stop_at_max_hobs(count: int) -> None:
    ram = [(i * 8192, 4096) for i in range(count)]
    err = rejected(encode(ram))
    assert f"more than {H.DEFAULT_MAX_HOBS} HOBs" in str(err)
    assert err.offset == res_at(H.DEFAULT_MAX_HOBS)


@SETTINGS
@given(ram_layouts(), st.data(), st.sampled_from([0, 4, 7, 12, 0xFFF8, 0xFFFF]))
def test_lying_hob_lengths_name_hob_length(ram, data, length) -> None:
    i = data.draw(st.integers(1, len(ram)))
    buf = encode(ram)
    at = res_at(i) + GENERIC.offset_of("HobLength")
    buf[at : at + 2] = struct.pack("<H", length)
    err = rejected(buf)
    assert (err.field, err.offset) == (f"HOB[{i}].Header.HobLength", at)


@SETTINGS
@given(st.binary(max_size=600), st.sampled_from(targets.td_hob_seeds()))
def test_td_hob_fuzz_target_on_spliced_input(tail, seed) -> None:
    targets.td_hob(seed[: len(seed) // 2] + tail)


# ------------------------------------------------------------------------------------------------ TDVF metadata

_BUILTIN = tdvf.builtin_ovmf_metadata()
_IMAGE = tdvf.synthesize_image(_BUILTIN.sections, tdvf.OVMF_FD_SIZE)
_DESCRIPTOR = tdvf.parse_tdvf_metadata(_IMAGE).descriptor_offset
_TABLE = _DESCRIPTOR + tdvf.TDVF_DESCRIPTOR.size
_VALUES = st.one_of(
    st.sampled_from([0, 1, 0xFFF, 0x1000, 0x37C000, 0x400000, 0xFFFFFFFF, 1 << 52, (1 << 64) - 1]),
    st.integers(0, (1 << 64) - 1),
)


@SETTINGS
@given(st.integers(0, len(_BUILTIN.sections) - 1), st.sampled_from(tdvf.TDVF_SECTION.fields), _VALUES)
def test_tdvf_section_fields_are_checked(index, name, value) -> None:
    image = bytearray(_IMAGE)
    at = _TABLE + index * tdvf.TDVF_SECTION.size + tdvf.TDVF_SECTION.offset_of(name)
    width = struct.calcsize("<" + dict(tdvf.TDVF_SECTION._formats)[name])  # type: ignore[attr-defined]
    image[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    try:
        meta = tdvf.parse_tdvf_metadata(image)
    except InputError as err:
        targets.expect_input_error(err)
        assert err.field.startswith("TDVF_SECTION[") or err.field.startswith("TDVF_DESCRIPTOR"), err
        assert _TABLE <= err.offset < _TABLE + len(_BUILTIN.sections) * tdvf.TDVF_SECTION.size or "Number" in err.field
        return
    targets.tdvf_image(b"\x01" + bytes(image)) if len(image) <= 0x10000 else None
    assert len(meta.sections) == len(_BUILTIN.sections)


@pytest.mark.parametrize("count", [0xFFFF, 0x10000, 0xFFFFFFFF])
def test_huge_section_counts(count: int) -> None:
    image = bytearray(_IMAGE)
    at = _DESCRIPTOR + tdvf.TDVF_DESCRIPTOR.offset_of("NumberOfSectionEntries")
    image[at : at + 4] = count.to_bytes(4, "little")
    with pytest.raises(InputError) as err:
        tdvf.parse_tdvf_metadata(image)
    assert err.value.field.startswith("TDVF_DESCRIPTOR.") and err.value.offset is not None


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=2048))
def test_tdvf_fuzz_target_on_random_tails(data) -> None:
    targets.tdvf_image(b"\x00" + targets.tdvf_seeds()[0][1:][: -len(data)] + data)


# ------------------------------------------------------------------------------------------------ PE images

_PE = targets.minimal_pe()
_OH = 0x40 + pe.IMAGE_FILE_HEADER.size
_SH = _OH + pe.IMAGE_OPTIONAL_HEADER64.size + 16 * 8
_PE_FIELDS = (
    [("e_lfanew", 0x3C, 4)]
    + [(f"IMAGE_FILE_HEADER.{n}", 0x40 + pe.IMAGE_FILE_HEADER.offset_of(n), 2)
       for n in ("NumberOfSections", "SizeOfOptionalHeader")]
    + [(f"IMAGE_OPTIONAL_HEADER64.{n}", _OH + pe.IMAGE_OPTIONAL_HEADER64.offset_of(n), 4)
       for n in ("AddressOfEntryPoint", "SectionAlignment", "SizeOfImage", "SizeOfHeaders", "NumberOfRvaAndSizes")]
    + [(f"section{i}.{n}", _SH + 40 * i + pe.IMAGE_SECTION_HEADER.offset_of(n), 4)
       for i in range(2) for n in ("VirtualSize", "VirtualAddress", "SizeOfRawData", "PointerToRawData")]
    + [("DataDirectory[5]", _OH + pe.IMAGE_OPTIONAL_HEADER64.size + 40, 8), ("reloc block", 0x400, 8)]
)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(_PE_FIELDS), st.integers(0, (1 << 64) - 1)), min_size=1, max_size=3))
def test_pe_header_fields_are_checked(mutations) -> None:
    data = bytearray(_PE)
    for (_name, at, width), value in mutations:
        data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    targets.pe_image(bytes(data))  # parses and lays out, or an InputError naming field and offset


def test_relocation_block_over_a_huge_zero_image_costs_what_the_file_holds() -> None:
    # A 1.5 KiB file claiming a 1 GiB image whose relocation block spans it: every entry outside the file is
    # zero (IMAGE_REL_BASED_ABSOLUTE). Parsing once walked all 500 million of them (minutes); now only the
    # file-backed ones.
    data = bytearray(_PE)
    size_at = _OH + pe.IMAGE_OPTIONAL_HEADER64.offset_of("SizeOfImage")
    data[size_at : size_at + 4] = (1 << 30).to_bytes(4, "little")
    span = (1 << 30) - 0x2000
    dir_at = _OH + pe.IMAGE_OPTIONAL_HEADER64.size + 8 * pe.DIRECTORY_BASERELOC
    data[dir_at : dir_at + 8] = pe.IMAGE_DATA_DIRECTORY.pack(VirtualAddress=0x2000, Size=span)
    data[0x400:0x408] = pe.IMAGE_BASE_RELOCATION.pack(VirtualAddress=0x1000, SizeOfBlock=span)
    image = pe.parse_pe(bytes(data))
    assert image.relocations == ((0x1008, pe.REL_DIR64),)


def test_relocations_read_through_the_laid_out_image() -> None:
    image = pe.parse_pe(_PE)
    assert image.relocations == ((0x1008, pe.REL_DIR64),)
    laid = image.layout(0x140000000 + 0x10000)
    assert int.from_bytes(laid[0x1008:0x1010], "little") == 0x140001000 + 0x10000


# ------------------------------------------------------------------------------------------------ boot_params and
# the unaccepted-memory table a stub leaves


def zero_page(entries: list[tuple[int, int, int]], count: int | None = None) -> bytearray:
    page = bytearray(bp.BOOT_PARAMS_SIZE)
    page[bp.E820_ENTRIES_OFFSET] = len(entries) if count is None else count
    for i, (a, n, t) in enumerate(entries[: bp.E820_MAX_ENTRIES_ZEROPAGE]):
        at = bp.E820_TABLE_OFFSET + i * bp.BOOT_E820_ENTRY.size
        page[at : at + bp.BOOT_E820_ENTRY.size] = bp.BOOT_E820_ENTRY.pack(addr=a, size=n, type=t)
    return page


@pytest.mark.parametrize("count", [129, 255])
def test_e820_count_beyond_the_zero_page(count: int) -> None:
    with pytest.raises(InputError) as err:
        bp.parse_boot_params(bytes(zero_page([], count)), 0x1000)
    assert (err.value.field, err.value.offset) == ("boot_params.e820_entries", bp.E820_ENTRIES_OFFSET)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.integers(0, 20)),
                max_size=8))
def test_e820_entries_parse_or_name_the_wrapping_one(entries) -> None:
    try:
        params = bp.parse_boot_params(bytes(zero_page(entries)), 0x1000)
    except InputError as err:
        i = next(k for k, (a, n, _) in enumerate(entries) if a + n > 1 << 64)
        assert (err.field, err.offset) == (f"e820_table[{i}].size", bp.E820_TABLE_OFFSET + 20 * i + 8)
        return
    assert [(e.start, e.size, e.type) for e in params.e820] == entries


def test_truncated_zero_page() -> None:
    with pytest.raises(InputError) as err:
        bp.parse_boot_params(bytes(100), 0x1000)
    assert (err.value.field, err.value.offset) == ("boot_params", 0)


def table(version: int = 1, unit: int = 2 << 20, base: int = 1 << 32, size: int = 8, bitmap: bytes = b"\xff" * 8):
    return UNACCEPTED_TABLE_HEADER.pack(version=version, unit_size=unit, phys_base=base, size=size) + bitmap


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (table(version=2), "version"),
        (table(unit=0), "unit_size"),
        (table(unit=3 << 20), "unit_size"),
        (table(base=(1 << 52)), "phys_base"),
        (table(base=(1 << 64) - (2 << 20)), "phys_base"),
        (table(base=1 << 51, size=1 << 40), "size"),
        (table(size=9), "bitmap"),
        (table()[:10], "struct efi_unaccepted_memory"),
    ],
    ids=["version", "unit-0", "unit-not-power-of-2", "base-beyond-gpa", "base-near-2^64", "size-beyond-gpa",
         "truncated-bitmap", "truncated-header"],
)
def test_unaccepted_table_read_back(raw: bytes, field: str) -> None:
    with pytest.raises(InputError) as err:
        parse_unaccepted_table(raw, base_offset=0x5000)
    targets.expect_input_error(err.value)
    assert err.value.field == field and err.value.offset >= 0x5000


@SETTINGS
@given(st.binary(max_size=64))
def test_boot_params_fuzz_target_on_mutated_seed(noise) -> None:
    seed = bytearray(targets.boot_params_seeds()[0])
    at = int.from_bytes(noise[:2].ljust(2, b"\0"), "little") % len(seed)
    seed[at : at + len(noise)] = noise
    targets.boot_params(bytes(seed))
