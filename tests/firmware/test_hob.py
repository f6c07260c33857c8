"""PI HOB layouts, the HOB list writer, and the validating parser (lazyaccept.firmware.pi.hob)."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyaccept.errors import ConfigError, InputError
from lazyaccept.firmware.pi import hob as H
from lazyaccept.firmware.pi.hob import (
    EDK2_TD_HOB_TYPES,
    TDX_GPA_LIMIT,
    CpuHob,
    Fv2Hob,
    Fv3Hob,
    FvHob,
    GuidHob,
    HobList,
    HobOverrunError,
    MemoryAllocationHob,
    PhitHob,
    RawHob,
    ResourceHob,
    encode_hob_list,
    iter_resources_sorted,
    parse_hob_list,
    total_bytes_by_resource_type,
    write_hob_list_into,
)
from lazyaccept.spec.pi_hob import TDVF_RAM_ATTRIBUTES, HobType, ResourceAttribute, ResourceType

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TD_HOB_BASE = 0x809000  # Debian OVMF.fd's TD_HOB section
TD_HOB_SIZE = 0x2000
UNACCEPTED, SYSTEM = ResourceType.MEMORY_UNACCEPTED, ResourceType.SYSTEM_MEMORY

# A 64 GiB q35 TD as QEMU's tdx.c lays it out for Debian OVMF.fd: 2 GiB low, 62 GiB from 4 GiB, and each TD_HOB /
# TEMP_MEM section (0x800000+0x6000, 0x809000+0x2000, 0x80b000+0x2000, 0x811000+0xf000) split out as ADDED.
QEMU_64G_RAM = [
    (0x0, 0x800000, False),
    (0x800000, 0x6000, True),
    (0x806000, 0x3000, False),
    (0x809000, 0x2000, True),
    (0x80B000, 0x2000, True),
    (0x80D000, 0x4000, False),
    (0x811000, 0xF000, True),
    (0x820000, 2 * GiB - 0x820000, False),
    (4 * GiB, 62 * GiB, False),
]


def qemu_td_hob(ram: list[tuple[int, int, bool]] = QEMU_64G_RAM) -> list[H.Hob]:
    """The records of hw/i386/tdvf-hob.c: a zeroed PHIT, then one descriptor per RAM entry with attributes 0x7."""
    return [PhitHob()] + [
        ResourceHob(SYSTEM if added else UNACCEPTED, TDVF_RAM_ATTRIBUTES, start, length) for start, length, added in ram
    ]


def qemu_td_hob_bytes(ram: list[tuple[int, int, bool]], base: int) -> bytes:
    """The same TD HOB assembled by hand with struct, independently of the module's layouts."""
    resources = b"".join(
        struct.pack("<HHI16sIIQQ", 3, 48, 0, b"\0" * 16, 0 if added else 7, 0x7, start, length)
        for start, length, added in ram
    )
    end_offset = 56 + len(resources)
    phit = struct.pack("<HHIIIQQQQQ", 1, 56, 0, 9, 0, 0, 0, 0, 0, base + end_offset + 8)  # QEMU: just past END
    return phit + resources + struct.pack("<HHI", 0xFFFF, 8, 0)


# ---------------------------------------------------------------------------------------------------------------
# Layouts, byte for byte
# ---------------------------------------------------------------------------------------------------------------


def test_structure_sizes_match_the_c_declarations():
    assert H.EFI_HOB_GENERIC_HEADER.size == 8
    assert H.END_OF_HOB_LIST.size == 8
    assert H.EFI_HOB_HANDOFF_INFO_TABLE.size == 56
    assert H.EFI_HOB_RESOURCE_DESCRIPTOR.size == 48
    assert H.EFI_HOB_MEMORY_ALLOCATION_HEADER.size == 40
    assert H.EFI_HOB_MEMORY_ALLOCATION.size == 48
    assert H.EFI_HOB_CPU.size == 16
    assert H.EFI_HOB_GUID_TYPE.size == 24
    assert H.EFI_HOB_FIRMWARE_VOLUME.size == 24
    assert H.EFI_HOB_FIRMWARE_VOLUME2.size == 56
    assert H.EFI_HOB_FIRMWARE_VOLUME3.size == 64


def test_field_offsets_match_the_c_declarations():
    phit, res, alloc = H.EFI_HOB_HANDOFF_INFO_TABLE, H.EFI_HOB_RESOURCE_DESCRIPTOR, H.EFI_HOB_MEMORY_ALLOCATION
    assert [phit.offset_of(f) for f in ("Version", "BootMode", "EfiMemoryTop", "EfiEndOfHobList")] == [8, 12, 16, 48]
    assert [res.offset_of(f) for f in ("Owner", "ResourceType", "ResourceAttribute")] == [8, 24, 28]
    assert [res.offset_of(f) for f in ("PhysicalStart", "ResourceLength")] == [32, 40]
    assert alloc.offset_of("AllocDescriptor.MemoryBaseAddress") == 24
    assert alloc.offset_of("AllocDescriptor.MemoryType") == 40
    assert H.EFI_HOB_CPU.offset_of("SizeOfMemorySpace") == 8
    assert H.EFI_HOB_FIRMWARE_VOLUME3.offset_of("FvName") == 32  # EFI_GUID is 4-byte aligned after the BOOLEAN


def test_values_match_pihob_h():
    assert HobType.END_OF_HOB_LIST == 0xFFFF and HobType.UNUSED == 0xFFFE and HobType.FV3 == 0x0C
    assert ResourceType.MEMORY_UNACCEPTED == 7 and H.EFI_RESOURCE_MAX_MEMORY_TYPE == 8
    assert ResourceAttribute.ENCRYPTED == 0x04000000 and ResourceAttribute.MORE_RELIABLE == 0x02000000
    assert ResourceAttribute.READ_ONLY_PROTECTED == 0x00040000 and ResourceAttribute.HOT_PLUGGABLE == 0x10000000
    assert H.RESOURCE_ATTRIBUTE_ALL == 0x1FFFFFFF
    assert TDVF_RAM_ATTRIBUTES == 0x7
    assert H.EFI_HOB_HANDOFF_TABLE_VERSION == 9


def test_resource_descriptor_bytes():
    owner = uuid.UUID("38c74800-5590-4db4-a0f3-675d9b8e8026")
    hob = ResourceHob(UNACCEPTED, TDVF_RAM_ATTRIBUTES, 0x1_0000_0000, 62 * GiB, owner)
    raw = encode_hob_list([hob], base_address=0)[56:104]
    assert raw[:8] == bytes.fromhex("0300 3000 00000000")
    assert raw[8:24] == bytes.fromhex("0048c738 9055 b44d a0f3675d9b8e8026")  # EFI_GUID: first three fields LE
    assert struct.unpack_from("<IIQQ", raw, 24) == (7, 7, 0x1_0000_0000, 62 * GiB)


def test_guid_hob_is_24_bytes_plus_data_padded_to_8():
    name = uuid.UUID("d5d1de3c-105c-44f9-9ea9-bcef98120031")
    raw = encode_hob_list([GuidHob(name, b"abc")], base_address=0)
    assert struct.unpack_from("<HH", raw, 56) == (4, 32)
    assert raw[56 + 24 : 56 + 32] == b"abc" + b"\0" * 5
    parsed = parse_hob_list(raw, base_address=0)
    assert parsed[1] == GuidHob(name, b"abc\0\0\0\0\0")  # the padding is data, as GET_GUID_HOB_DATA_SIZE says


def test_cpu_and_memory_allocation_bytes():
    raw = encode_hob_list([CpuHob(52, 16), MemoryAllocationHob(0x800000, 0x6000, 4)], base_address=0)
    assert raw[56:72] == struct.pack("<HHIBB6s", 6, 16, 0, 52, 16, b"")
    assert struct.unpack_from("<HHI16sQQI4s", raw, 72) == (2, 48, 0, b"\0" * 16, 0x800000, 0x6000, 4, b"\0" * 4)


# ---------------------------------------------------------------------------------------------------------------
# Writer and round trips
# ---------------------------------------------------------------------------------------------------------------


def test_qemu_td_hob_is_byte_exact_and_round_trips():
    records = qemu_td_hob()
    raw = encode_hob_list(records, base_address=TD_HOB_BASE, end_pointer="qemu", capacity=TD_HOB_SIZE)
    assert raw == qemu_td_hob_bytes(QEMU_64G_RAM, TD_HOB_BASE)
    assert len(raw) == 56 + 9 * 48 + 8
    parsed = parse_hob_list(raw, base_address=TD_HOB_BASE, limit=TD_HOB_SIZE, range_alignment=4096)
    assert parsed.hobs == records
    assert parsed.end_pointer == "qemu" and parsed.size_bytes == len(raw) and parsed.base_address == TD_HOB_BASE
    assert parsed.phit.end_of_hob_list == TD_HOB_BASE + len(raw)


def test_edk2_end_pointer_points_at_the_end_hob():
    raw = encode_hob_list(qemu_td_hob(), base_address=TD_HOB_BASE)
    (end_of_hob_list,) = struct.unpack_from("<Q", raw, 48)
    assert end_of_hob_list == TD_HOB_BASE + len(raw) - 8
    assert parse_hob_list(raw, base_address=TD_HOB_BASE).end_pointer == "edk2"


def test_every_record_type_round_trips():
    g1, g2 = uuid.uuid4(), uuid.uuid4()
    records = [
        PhitHob(
            boot_mode=H.BootMode.BOOT_ON_S3_RESUME,
            memory_top=0x900000,
            memory_bottom=0x800000,
            free_memory_top=0x8F0000,
            free_memory_bottom=0x810000,
        ),
        ResourceHob(
            ResourceType.MEMORY_MAPPED_IO,
            ResourceAttribute.PRESENT | ResourceAttribute.UNCACHEABLE,
            0xB000_0000,
            256 * MiB,
            g1,
        ),
        ResourceHob(ResourceType.IO, ResourceAttribute.PRESENT, 0, 0x10000),
        MemoryAllocationHob(0x800000, 0x6000, 4, g2, b"entry-point:1234"),
        GuidHob(g1, b"12345678"),
        FvHob(0xFFC84000, 0x37C000),
        Fv2Hob(0xFFC84000, 0x1000, g1, g2),
        Fv3Hob(0xFFC84000, 0x1000, 7, True, g1, g2),
        CpuHob(52, 16),
        RawHob(HobType.UNUSED, b"\xaa" * 8),
        RawHob(HobType.MEMORY_POOL, b""),
        RawHob(0x1234, b"\x01" * 16),  # an unknown type: kept, otherwise skipped
    ]
    raw = encode_hob_list(records, base_address=0x1000)
    assert parse_hob_list(raw, base_address=0x1000) == HobList(records)


def test_a_default_phit_is_put_first():
    parsed = parse_hob_list(encode_hob_list([CpuHob(48, 16)], base_address=0), base_address=0)
    assert parsed.hobs == [PhitHob(), CpuHob(48, 16)]


def test_writer_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="PHIT"):
        encode_hob_list([PhitHob(), PhitHob()], base_address=0)
    with pytest.raises(ValueError, match="HobLength holds at most"):
        encode_hob_list([GuidHob(uuid.uuid4(), b"\0" * 0x10000)], base_address=0)
    with pytest.raises(ValueError, match="multiple of 8"):
        encode_hob_list([], base_address=4)
    with pytest.raises(ValueError, match="RawHob"):
        encode_hob_list([RawHob(HobType.END_OF_HOB_LIST)], base_address=0)


def test_write_into_the_td_hob_section_and_overrun():
    fits = [(i * 2 * MiB, MiB, False) for i in range(169)]  # (0x2000 - 56 - 8) // 48 = 169
    area = bytearray(b"\xee" * (TD_HOB_SIZE + 16))
    written = write_hob_list_into(area, qemu_td_hob(fits), base_address=TD_HOB_BASE, capacity=TD_HOB_SIZE)
    assert written == 56 + 169 * 48 + 8 <= TD_HOB_SIZE
    assert area[written:] == b"\xee" * (len(area) - written)
    assert parse_hob_list(area, base_address=TD_HOB_BASE, limit=TD_HOB_SIZE).hobs == qemu_td_hob(fits)

    too_many = fits + [(169 * 2 * MiB, MiB, False)]
    untouched = bytearray(TD_HOB_SIZE)
    with pytest.raises(HobOverrunError, match="TD_HOB overrun") as exc:
        write_hob_list_into(untouched, qemu_td_hob(too_many), base_address=TD_HOB_BASE)
    assert isinstance(exc.value, ConfigError)
    assert (exc.value.needed_bytes, exc.value.capacity_bytes) == (56 + 170 * 48 + 8, TD_HOB_SIZE)
    assert untouched == bytearray(TD_HOB_SIZE)


def test_helpers_sort_and_total_resources():
    parsed = parse_hob_list(encode_hob_list(list(reversed(qemu_td_hob()[1:])), base_address=0), base_address=0)
    starts = [r.start for r in parsed.resources()]
    assert starts == sorted(starts) and len(starts) == len(QEMU_64G_RAM)
    added = 0x6000 + 0x2000 + 0x2000 + 0xF000
    assert parsed.bytes_by_resource_type() == {UNACCEPTED: 64 * GiB - added, SYSTEM: added}
    assert total_bytes_by_resource_type(parsed) == parsed.bytes_by_resource_type()
    assert [r.start for r in iter_resources_sorted(parsed, types={SYSTEM})] == [0x800000, 0x809000, 0x80B000, 0x811000]
    assert parsed.of_type(ResourceHob)[0].start == 4 * GiB  # of_type keeps list order


# ---------------------------------------------------------------------------------------------------------------
# Hostile input: every rule names the field and its offset
# ---------------------------------------------------------------------------------------------------------------

BASE = 0x809000
# PHIT at 0, HOB[1] at 56, HOB[2] at 104, END at 152.
VALID = [
    PhitHob(),
    ResourceHob(SYSTEM, TDVF_RAM_ATTRIBUTES, 0x800000, 0x6000),
    ResourceHob(UNACCEPTED, TDVF_RAM_ATTRIBUTES, 0x1000000, 0x1000000),
]


def valid_bytes(records: list[H.Hob] = VALID, base: int = BASE) -> bytearray:
    return bytearray(encode_hob_list(records, base_address=base, end_pointer="qemu"))


def poke(fmt: str, offset: int, value: int, records: list[H.Hob] = VALID) -> Callable[[], bytes]:
    def make() -> bytes:
        raw = valid_bytes(records)
        struct.pack_into("<" + fmt, raw, offset, value)
        return bytes(raw)

    return make


def _second_phit() -> bytes:
    raw = valid_bytes()
    return bytes(raw[:56] + raw[:56] + raw[56:])


def _cpu_reserved() -> bytes:
    raw = valid_bytes([PhitHob(), CpuHob(52, 16)])
    raw[56 + 12] = 1
    return bytes(raw)


HOSTILE = [
    # (case, bytes, parser options, field, offset, words in the message)
    ("empty", lambda: b"", {}, "HOB[0].Header.HobType", 0, "without an END_OF_HOB_LIST"),
    ("first not PHIT", poke("H", 0, 3), {}, "HOB[0].Header.HobType", 0, "not the PHIT"),
    ("PHIT version", poke("I", 8, 8), {}, "HOB[0].Version", 8, "Version 0x8"),
    ("PHIT boot mode", poke("I", 12, 0x21), {}, "HOB[0].BootMode", 12, "EFI_BOOT_MODE"),
    ("PHIT memory top", poke("Q", 16, 0x1001), {}, "HOB[0].EfiMemoryTop", 16, "4 KiB"),
    ("PHIT free top", poke("Q", 32, 0x800), {}, "HOB[0].EfiFreeMemoryTop", 32, "4 KiB"),
    (
        "PHIT bottom above top",
        poke("Q", 24, 0x2000, [PhitHob(memory_top=0x1000)]),
        {},
        "HOB[0].EfiMemoryBottom",
        24,
        "above",
    ),
    ("PHIT length", poke("H", 2, 64), {}, "HOB[0].Header.HobLength", 2, "sizeof(EFI_HOB_HANDOFF_INFO_TABLE)"),
    ("EfiEndOfHobList", poke("Q", 48, BASE + 168), {}, "HOB[0].EfiEndOfHobList", 48, "points neither"),
    ("HobLength 0", poke("H", 58, 0), {}, "HOB[1].Header.HobLength", 58, "shorter than the 8-byte"),
    ("HobLength 4", poke("H", 58, 4), {}, "HOB[1].Header.HobLength", 58, "shorter than the 8-byte"),
    ("HobLength unaligned", poke("H", 58, 52), {}, "HOB[1].Header.HobLength", 58, "multiple of 8"),
    ("HobLength past end", poke("H", 106, 0xFFF8), {}, "HOB[2].Header.HobLength", 106, "past the end"),
    ("Reserved", poke("I", 60, 1), {}, "HOB[1].Header.Reserved", 60, "must be zero"),
    ("type 0", poke("H", 56, 0), {}, "HOB[1].Header.HobType", 56, "HobType 0"),
    ("second PHIT", _second_phit, {}, "HOB[1].Header.HobType", 56, "second PHIT"),
    ("no END", lambda: bytes(valid_bytes()[:-8]), {}, "HOB[3].Header.HobType", 152, "without an END_OF_HOB_LIST"),
    ("END replaced", poke("H", 152, HobType.UNUSED), {}, "HOB[4].Header.HobType", 160, "without an END_OF_HOB_LIST"),
    (
        "resource length",
        lambda: bytes(valid_bytes([PhitHob(), RawHob(3, b"\0" * 48)])),
        {},
        "HOB[1].Header.HobLength",
        58,
        "sizeof(EFI_HOB_RESOURCE_DESCRIPTOR) = 48",
    ),
    ("resource type", poke("I", 80, 8), {}, "HOB[1].ResourceType", 80, "EFI_RESOURCE_TYPE"),
    ("attributes", poke("I", 84, 0x7 | 0x20000000), {}, "HOB[1].ResourceAttribute", 84, "undefined bits 0x20000000"),
    (
        "attributes edk2 rejects",
        poke("I", 84, 0x7 | ResourceAttribute.HOT_PLUGGABLE),
        {"allowed_attributes": H.EDK2_TD_HOB_ATTRIBUTES},
        "HOB[1].ResourceAttribute",
        84,
        "disallowed bits 0x10000000",
    ),
    ("length 0", poke("Q", 96, 0), {}, "HOB[1].ResourceLength", 96, "empty"),
    ("wrap", poke("Q", 88, (1 << 64) - 0x3000), {}, "HOB[1].ResourceLength", 96, "wraps"),
    ("overlap", poke("Q", 136, 0x805000), {}, "HOB[2].PhysicalStart", 136, "overlaps [0x800000, 0x806000) of HOB[1]"),
    ("overlap, later HOB lower", poke("Q", 88, 0x1800000), {}, "HOB[2].PhysicalStart", 136, "of HOB[1]"),
    (
        "unaligned start",
        poke("Q", 88, 0x800800),
        {"range_alignment": 4096},
        "HOB[1].PhysicalStart",
        88,
        "not 0x1000-aligned",
    ),
    (
        "unaligned length",
        poke("Q", 96, 0x6800),
        {"range_alignment": 4096},
        "HOB[1].ResourceLength",
        96,
        "not a multiple of 0x1000",
    ),
    (
        "beyond 2^52",
        poke("Q", 136, TDX_GPA_LIMIT - 0x1000),
        {"max_address": TDX_GPA_LIMIT},
        "HOB[2].ResourceLength",
        144,
        "address limit",
    ),
    (
        "GUID HOB short",
        lambda: bytes(valid_bytes([PhitHob(), RawHob(4, b"\0" * 8)])),
        {},
        "HOB[1].Header.HobLength",
        58,
        "sizeof(EFI_HOB_GUID_TYPE) = 24",
    ),
    ("CPU reserved", _cpu_reserved, {}, "HOB[1].Reserved", 66, "Reserved bytes"),
    (
        "type not allowed",
        lambda: bytes(valid_bytes([PhitHob(), MemoryAllocationHob(0, 0x1000, 4)])),
        {"allowed_types": EDK2_TD_HOB_TYPES},
        "HOB[1].Header.HobType",
        56,
        "not allowed",
    ),
    (
        "too many HOBs",
        lambda: bytes(valid_bytes([PhitHob()] + [RawHob(HobType.UNUSED)] * 20)),
        {"max_hobs": 10},
        "HOB[10].Header.HobType",
        56 + 9 * 8,
        "more than 10 HOBs",
    ),
    (
        "memory type",
        lambda: bytes(valid_bytes([PhitHob(), MemoryAllocationHob(0, 0x1000, 16)])),
        {},
        "HOB[1].AllocDescriptor.MemoryType",
        96,
        "reserved EFI_MEMORY_TYPE",
    ),
    (
        "allocation wrap",
        lambda: bytes(valid_bytes([PhitHob(), MemoryAllocationHob((1 << 64) - 0x1000, 0x1000, 4)])),
        {},
        "HOB[1].AllocDescriptor.MemoryLength",
        88,
        "wraps",
    ),
    ("FV wrap", lambda: bytes(valid_bytes([PhitHob(), FvHob(1 << 63, 1 << 63)])), {}, "HOB[1].Length", 72, "wraps"),
    (
        "limit cuts the list",
        lambda: bytes(valid_bytes()),
        {"limit": 150},
        "HOB[2].Header.HobLength",
        106,
        "past the end",
    ),
]


@pytest.mark.parametrize(("case", "make", "options", "field", "offset", "words"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_input_names_field_and_offset(case, make, options, field, offset, words):
    with pytest.raises(InputError) as exc:
        parse_hob_list(make(), base_address=BASE, **options)
    assert (exc.value.field, exc.value.offset) == (field, offset)
    message = str(exc.value)
    assert words in message and f"field {field}" in message and f"offset {offset:#x}" in message


def test_unaligned_base_address_is_rejected():
    with pytest.raises(InputError, match="8-byte aligned"):
        parse_hob_list(valid_bytes(base=BASE), base_address=BASE + 4)


def test_io_ranges_do_not_collide_with_memory_ranges():
    records = [
        PhitHob(),
        ResourceHob(SYSTEM, TDVF_RAM_ATTRIBUTES, 0, 0x10000),
        ResourceHob(ResourceType.IO, 0, 0, 0x100),
    ]
    assert parse_hob_list(encode_hob_list(records, base_address=0), base_address=0).hobs == records
    clash = records + [ResourceHob(ResourceType.IO_RESERVED, 0, 0x80, 0x10)]
    with pytest.raises(InputError, match="I/O range"):
        parse_hob_list(encode_hob_list(clash, base_address=0), base_address=0)


def test_bytes_after_the_end_hob_are_ignored():
    raw = bytes(valid_bytes()) + b"\xff" * 40
    assert parse_hob_list(raw, base_address=BASE).hobs == VALID


def test_pi_1_9_phit_version_is_accepted():
    records = [PhitHob(version=0xA)] + VALID[1:]
    assert parse_hob_list(encode_hob_list(records, base_address=0), base_address=0).phit.version == 0xA


# ---------------------------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------------------------

PAGE = 4096
_guids = st.sampled_from([H.ZERO_GUID, uuid.UUID("38c74800-5590-4db4-a0f3-675d9b8e8026")])
_attrs = st.sets(st.sampled_from(list(ResourceAttribute))).map(lambda s: ResourceAttribute(sum(int(a) for a in s)))


@st.composite
def resource_sets(draw: st.DrawFn) -> list[ResourceHob]:
    """Disjoint, page-aligned memory ranges (some above 2^52) in shuffled order."""
    n = draw(st.integers(0, 12))
    address = draw(st.integers(0, 1 << 20)) * PAGE
    out = []
    for _ in range(n):
        address += draw(st.integers(0, 1 << 22)) * PAGE * draw(st.sampled_from([1, 1, 1 << 20]))
        length = draw(st.integers(1, 1 << 22)) * PAGE
        if address + length >= 1 << 64:
            break
        rtype = draw(st.sampled_from(sorted(H.MEMORY_RESOURCE_TYPES)))
        out.append(ResourceHob(rtype, draw(_attrs), address, length, draw(_guids)))
        address += length
    return draw(st.permutations(out))


_others = st.one_of(
    st.builds(GuidHob, _guids, st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 8))),
    st.builds(CpuHob, st.integers(0, 255), st.integers(0, 255)),
    st.builds(FvHob, st.integers(0, 1 << 40), st.integers(0, 1 << 30)),
    st.builds(
        MemoryAllocationHob,
        st.integers(0, 1 << 40).map(lambda a: a * PAGE),
        st.integers(0, 1 << 20),
        st.sampled_from([0, 4, 7, 15, 0x70000000, 0x80000001]),
    ),
    st.builds(
        RawHob,
        st.sampled_from([HobType.UNUSED, HobType.MEMORY_POOL, 0x0D, 0x7FFF]),
        st.binary(max_size=24).map(lambda b: b + b"\0" * (-len(b) % 8)),
    ),
)


@st.composite
def hob_lists(draw: st.DrawFn) -> list[H.Hob]:
    phit = PhitHob(
        version=draw(st.sampled_from(sorted(H.PHIT_VERSIONS_ACCEPTED))),
        boot_mode=draw(st.sampled_from(list(H.BootMode))),
    )
    body = draw(resource_sets()) + draw(st.lists(_others, max_size=4))
    return [phit] + draw(st.permutations(body))


def check_parsed(parsed: HobList, buf: bytes) -> None:
    """What a successful parse promises."""
    assert isinstance(parsed.hobs[0], PhitHob)
    assert not any(isinstance(h, PhitHob) for h in parsed.hobs[1:])
    assert parsed.size_bytes <= len(buf) and parsed.size_bytes % 8 == 0
    memory = sorted((r.start, r.end) for r in parsed.of_type(ResourceHob) if r.is_memory)
    for r in parsed.of_type(ResourceHob):
        assert r.length > 0 and r.end < 1 << 64 and int(r.attributes) & ~H.RESOURCE_ATTRIBUTE_ALL == 0
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(memory, memory[1:], strict=False))
    # Writing the parsed list back out and reading it again changes nothing.
    again = encode_hob_list(parsed, base_address=parsed.base_address, end_pointer=parsed.end_pointer)
    assert parse_hob_list(again, base_address=parsed.base_address) == parsed


FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(hob_lists(), st.sampled_from(["edk2", "qemu"]), st.integers(0, 1 << 40).map(lambda a: a * 8))
def test_valid_lists_round_trip(records, end_pointer, base):
    raw = encode_hob_list(records, base_address=base, end_pointer=end_pointer)
    parsed = parse_hob_list(raw, base_address=base)
    assert parsed.hobs == records and parsed.end_pointer == end_pointer and parsed.size_bytes == len(raw)
    check_parsed(parsed, raw)


def _hob_offsets(raw: bytes) -> list[int]:
    """Where the HOBs of a (possibly already damaged) list start, as far as their lengths can be followed."""
    offsets, at = [], 0
    while at + 8 <= len(raw):
        offsets.append(at)
        hob_type, length = struct.unpack_from("<HH", raw, at)
        if hob_type == HobType.END_OF_HOB_LIST or length < 8:
            break
        at += length
    return offsets


def _mutate(draw: st.DrawFn, raw: bytearray) -> bytes:
    kinds = ["u16", "u64", "byte", "truncate", "splice", "end", "overlap", "field", "field"]
    kind = draw(st.sampled_from(kinds if len(raw) >= 8 else ["byte", "truncate"]))
    if kind == "field":  # one field of one HOB, at its real offset
        at = draw(st.sampled_from(_hob_offsets(raw)))
        rel, fmt, value = draw(
            st.sampled_from(
                [
                    (2, "H", st.sampled_from([0, 4, 12, 16, 24, 48, 56, 64, 0xFFF8])),  # HobLength
                    (0, "H", st.integers(0, 0x10)),  # HobType
                    (4, "I", st.integers(0, 3)),  # Reserved
                    (24, "I", st.integers(0, 9)),  # ResourceType
                    (28, "I", st.sampled_from([0x7, 0x0400_0007, 0x2000_0007, 0xFFFF_FFFF])),  # ResourceAttribute
                    (32, "Q", st.sampled_from([0, 0x800, 0x800000, TDX_GPA_LIMIT, (1 << 64) - PAGE])),  # PhysicalStart
                    (40, "Q", st.sampled_from([0, 1, PAGE, 1 << 40, (1 << 64) - 1])),  # ResourceLength
                ]
            )
        )
        if at + rel + struct.calcsize(fmt) <= len(raw):
            struct.pack_into("<" + fmt, raw, at + rel, draw(value))
    elif kind == "u16":  # HobType / HobLength and anything else 16 bits wide
        at = draw(st.integers(0, len(raw) - 2))
        value = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 8, 48, 56, 0xFFF8, 0xFFFE, 0xFFFF, 3])))
        struct.pack_into("<H", raw, at, value)
    elif kind == "u64":  # addresses, lengths, EfiEndOfHobList
        at = draw(st.integers(0, (len(raw) - 8) // 8)) * 8
        value = draw(
            st.one_of(
                st.integers(0, (1 << 64) - 1),
                st.sampled_from([0, 1, 0x800, TDX_GPA_LIMIT, TDX_GPA_LIMIT - PAGE, (1 << 64) - PAGE, (1 << 64) - 1]),
            )
        )
        struct.pack_into("<Q", raw, at, value)
    elif kind == "byte":
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    elif kind == "splice":  # repeat a slice: duplicated HOBs, bogus offsets
        a = draw(st.integers(0, len(raw)))
        b = draw(st.integers(a, len(raw)))
        raw[a:a] = raw[a:b] * draw(st.integers(1, 40))
    elif kind == "end":  # no END_OF_HOB_LIST any more
        struct.pack_into("<H", raw, len(raw) - 8, draw(st.sampled_from([0, HobType.UNUSED, 3])))
    else:  # a range overlapping or straddling the others
        start = draw(st.integers(0, 1 << 40))
        extra = encode_hob_list([ResourceHob(SYSTEM, 0, start, draw(st.integers(1, 1 << 40)))], base_address=0)
        at = 56
        raw[at:at] = extra[56:-8]
    return bytes(raw)


@FAST
@given(st.data())
def test_mutated_lists_parse_or_raise_input_error(data):
    records = data.draw(hob_lists())
    raw = bytearray(
        encode_hob_list(records, base_address=BASE, end_pointer=data.draw(st.sampled_from(["edk2", "qemu"])))
    )
    for _ in range(data.draw(st.integers(1, 3))):
        if not raw:
            break
        raw = bytearray(_mutate(data.draw, raw))
    options = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "range_alignment": st.just(PAGE),
                "max_address": st.just(TDX_GPA_LIMIT),
                "max_hobs": st.integers(1, 64),
                "limit": st.integers(max(0, len(raw) - 24), len(raw) + 8),
                "allowed_types": st.just(EDK2_TD_HOB_TYPES),
                "allowed_attributes": st.just(H.EDK2_TD_HOB_ATTRIBUTES),
            },
        )
    )
    try:
        parsed = parse_hob_list(bytes(raw), base_address=BASE, **options)
    except InputError as exc:
        assert exc.field and exc.field.startswith("HOB[") and exc.offset is not None
        assert 0 <= exc.offset <= len(raw)
        return
    check_parsed(parsed, bytes(raw))


@FAST
@given(st.binary(max_size=400), st.integers(0, 1 << 20).map(lambda a: a * 8))
def test_random_bytes_parse_or_raise_input_error(raw, base):
    try:
        parsed = parse_hob_list(raw, base_address=base)
    except InputError:
        return
    check_parsed(parsed, raw)


@settings(max_examples=100, deadline=None)
@given(hob_lists(), st.binary(min_size=1, max_size=64))
def test_bytes_past_the_limit_are_never_read(records, tail):
    raw = encode_hob_list(records, base_address=BASE)
    assert parse_hob_list(raw + tail, base_address=BASE, limit=len(raw)) == parse_hob_list(raw, base_address=BASE)
    with pytest.raises(InputError):
        parse_hob_list(raw[:-1] + tail, base_address=BASE, limit=len(raw) - 1)
