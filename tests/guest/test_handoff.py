"""The handoff record: the table's binary layout, the 6.12 stub model's handoff, and the check against the TDX
truth."""

from __future__ import annotations

import struct

import pytest

from lazyaccept.errors import InputError
from lazyaccept.firmware.dxe.exit import DxeCore, DxePolicy
from lazyaccept.firmware.dxe.gcd import Resource, ResourceType
from lazyaccept.firmware.dxe.pool import SIZE_OF_POOL_HEAD as EDK2_POOL_HEAD_BYTES
from lazyaccept.firmware.sec import parse_policy, run_sec
from lazyaccept.guest.handoff import E820Type, Handoff, check_handoff
from lazyaccept.guest.linux import GuestCrash, Linux, LinuxConfig, reserve_unaccepted_range
from lazyaccept.guest.stub_model import StubConfig, run_stub, run_stub_after_sec
from lazyaccept.guest.unaccepted import (
    UnacceptedTable,
    encode_unaccepted_table,
    parse_unaccepted_table,
    stub_split,
)
from lazyaccept.tdx.module import PageState, TdTerminated
from lazyaccept.units import GiB, MiB, TiB
from lazyaccept.vmm.td import TdConfig, build_td


def booted(ram: int, policy: str = "below-4g", vcpus: int = 4, profile: str = "kvm-2m"):
    td = build_td(TdConfig(ram, vcpus, profile=profile))
    sec = run_sec(td, parse_policy(policy))
    return td, sec


def stub_handoff(td, sec, *, kernel_supports_unaccepted: bool = True, accept_all_at_exit: bool = False) -> Handoff:
    """DXE from SEC's hand-off, then the stub model: what the kernel starts from."""
    _, r = run_stub_after_sec(
        td, sec, StubConfig(unaccepted_memory_support=kernel_supports_unaccepted),
        DxePolicy(accept_all_at_exit=accept_all_at_exit),
    )
    assert r.ok and r.handoff is not None, r.message
    return r.handoff


# ----------------------------------------------------------------------------- binary layout


def table_with(runs, base=4 * GiB, nbytes=64) -> UnacceptedTable:
    t = UnacceptedTable(base, nbytes)
    for u0, u1 in runs:
        t.bits.set(u0, u1, True)
    return t


@pytest.mark.parametrize(
    "runs",
    [[], [(0, 512)], [(3, 5)], [(0, 1), (7, 9), (15, 17), (100, 333), (511, 512)], [(1, 8), (9, 16), (17, 511)]],
)
def test_encode_parse_round_trip(runs):
    t = table_with(runs)
    raw = encode_unaccepted_table(t)
    assert len(raw) == 24 + 64
    version, unit, base, size = struct.unpack_from("<IIQQ", raw)
    assert (version, unit, base, size) == (1, 2 * MiB, 4 * GiB, 64)
    # Bit i is byte i/8, bit i%8, as Linux's unsigned long bitmap on little-endian x86.
    for u0, u1 in runs:
        for u in (u0, u1 - 1):
            assert raw[24 + u // 8] >> (u % 8) & 1
    back = parse_unaccepted_table(raw + b"\xaa" * 8)  # bytes after the bitmap are not the table's
    assert list(back.bits.runs()) == list(t.bits.runs())
    assert (back.phys_base, back.bitmap_bytes, back.unit_size, back.version) == (4 * GiB, 64, 2 * MiB, 1)


def test_round_trip_4tib_table_is_run_based():
    t = UnacceptedTable.covering(4 * GiB, 4 * GiB + 4 * TiB)
    assert t.bitmap_bytes == 4 * TiB // (2 * MiB) // 8 == 262144
    t.mark(4 * GiB + 2 * MiB, 4 * GiB + 4 * TiB - 6 * MiB)
    back = parse_unaccepted_table(encode_unaccepted_table(t))
    assert back.set_ranges() == [(4 * GiB + 2 * MiB, 4 * GiB + 4 * TiB - 6 * MiB)]


def header(version=1, unit=2 * MiB, base=4 * GiB, size=8) -> bytes:
    return struct.pack("<IIQQ", version, unit, base, size)


@pytest.mark.parametrize(
    "raw, field, offset",
    [
        (b"\x01\x00\x00\x00", "struct efi_unaccepted_memory", 0),
        (header(version=2) + bytes(8), "version", 0),
        (header(version=0) + bytes(8), "version", 0),
        (header(unit=0) + bytes(8), "unit_size", 4),
        (header(unit=3 * MiB) + bytes(8), "unit_size", 4),
        (header(unit=1024) + bytes(8), "unit_size", 4),
        (header(base=4 * GiB + 4096) + bytes(8), "phys_base", 8),
        (header(base=1 << 52) + bytes(8), "phys_base", 8),
        (header(size=1 << 62), "size", 16),
        (header(size=4096) + bytes(100), "bitmap", 24),
    ],
    ids=["short", "v2", "v0", "unit0", "unit3M", "unit1K", "base-misaligned", "base-too-high", "size-huge", "trunc"],
)
def test_hostile_tables(raw, field, offset):
    with pytest.raises(InputError) as exc:
        parse_unaccepted_table(raw, base_offset=0x1000 if field != "struct efi_unaccepted_memory" else 0)
    assert exc.value.field == field
    want = offset + (0x1000 if field != "struct efi_unaccepted_memory" else 0)
    assert exc.value.offset == want
    assert field in str(exc.value)


# ----------------------------------------------------------------------------- the stub model


@pytest.mark.parametrize("ram", [4 * GiB, 64 * GiB, 67000 * MiB, 1 * TiB], ids=["4G", "64G", "67000M", "1T"])
def test_stub_handoff_matches_truth(ram):
    td, sec = booted(ram)
    h = stub_handoff(td, sec)
    chk = check_handoff(td.tdx, h)
    assert chk.ok, chk.problems
    above = ram - 2 * GiB
    assert h.table.phys_base == 4 * GiB
    assert h.table.bitmap_bytes == -(-above // (2 * MiB * 8))  # allocate_unaccepted_bitmap's DIV_ROUND_UP
    assert h.table.set_ranges() == [(4 * GiB, 4 * GiB + above)]  # 2 MiB-aligned: all in the bitmap
    assert h.stub_accepted == [] and "stub" not in td.tdx.accepted_by_actor
    assert h.unaccepted_descriptors == [(4 * GiB, 4 * GiB + above)]
    # The table is where AllocatePool puts it, written in accepted memory: a small one (4 GiB: 152 bytes) in the
    # ACPI-reclaim pool page the RNG seed's pool opened, 0xF18 into it (the real stub's run puts it at 0x7fffbf18),
    # a larger one 0x18 into a page of its own.
    small = h.table.encoded_size + EDK2_POOL_HEAD_BYTES < 0x800
    assert h.table_address % 4096 == (0xF00 if small else 0) + EDK2_POOL_HEAD_BYTES
    page = h.table_address - h.table_address % 4096
    assert any(e.type == E820Type.ACPI and e.start <= page < e.end for e in h.e820)
    raw = td.tdx.memory.read(h.table_address, h.table.encoded_size, actor="test")
    assert raw == encode_unaccepted_table(h.table)
    assert parse_unaccepted_table(raw).set_ranges() == h.table.set_ranges()
    assert chk.would_lose_without_support_bytes == above and chk.lost_bytes == 0


def test_stub_accepts_unaligned_head_and_small_ranges():
    """process_unaccepted_memory: the head up to a 2 MiB boundary is the stub's; so is a range under 2 units."""
    td, sec = booted(8 * GiB, policy="257M")  # SEC stops 1 MiB into a 2 MiB unit
    h = stub_handoff(td, sec)
    assert check_handoff(td.tdx, h).ok
    assert h.stub_accepted[0] == (257 * MiB, 258 * MiB)
    assert td.tdx.accepted_by_actor["stub"] == 1 * MiB
    assert h.table.phys_base == 256 * MiB  # the lowest type-15 address rounded down to the unit
    assert not td.tdx.incidents
    # A pending range shorter than 2 units is accepted whole, wherever it is.
    td, _ = booted(8 * GiB)
    resources = [Resource(0, 2 * GiB), Resource(6 * GiB, 3 * MiB, ResourceType.MEMORY_UNACCEPTED)]
    r = run_stub(DxeCore(resources, tdx=td.tdx), StubConfig())
    h = r.handoff
    assert h.stub_accepted == [(6 * GiB, 6 * GiB + 3 * MiB)] and h.table is not None
    assert h.table.set_ranges() == [] and check_handoff(td.tdx, h).ok


@pytest.mark.parametrize(
    ("start", "end", "now", "marked"),
    [
        (4 * GiB, 4 * GiB + 3 * MiB, [(4 * GiB, 4 * GiB + 3 * MiB)], None),  # under two units: all of it
        (4 * GiB + 4096, 8 * GiB - 4096, [(4 * GiB + 4096, 4 * GiB + 2 * MiB), (8 * GiB - 2 * MiB, 8 * GiB - 4096)],
         (4 * GiB + 2 * MiB, 8 * GiB - 2 * MiB)),  # unaligned head, then tail
        (2 * GiB, 8 * GiB, [(2 * GiB, 4 * GiB)], (4 * GiB, 8 * GiB)),  # below phys_base
        (4 * GiB, 12 * GiB, [(8 * GiB, 12 * GiB)], (4 * GiB, 8 * GiB)),  # past the bitmap's end
    ],
)
def test_stub_split_follows_process_unaccepted_memory(start, end, now, marked):
    """libstub process_unaccepted_memory (6.12) with a bitmap over [4 GiB, 8 GiB)."""
    assert stub_split(start, end, 4 * GiB, 8 * GiB) == (now, marked)


def test_stub_panics_where_linux_would_not_where_edk2_succeeds():
    """The stub accepts with Linux's tdx_accept_memory: PAGE_ALREADY_ACCEPTED is a failure (edk2's TdAcceptPages
    counts it as success). A page the VMM's firmware accepted behind the memory map's back halts the stub."""
    td, _ = booted(8 * GiB)
    td.tdx.accept_range(6 * GiB + 2 * MiB, 4096, actor="rogue")
    resources = [Resource(0, 2 * GiB), Resource(6 * GiB, 3 * MiB, ResourceType.MEMORY_UNACCEPTED)]
    r = run_stub(DxeCore(resources, tdx=td.tdx), StubConfig())
    assert not r.ok and "TDX: Failed to accept memory" in r.message and "PAGE_ALREADY_ACCEPTED" in r.message
    assert r.handoff is None


def test_check_catches_a_set_bit_over_accepted_memory():
    td, sec = booted(16 * GiB)
    h = stub_handoff(td, sec)
    td.tdx.accept_range(8 * GiB, 2 * MiB, actor="rogue")  # accepted behind the table's back
    chk = check_handoff(td.tdx, h)
    assert not chk.ok and "already accepted" in chk.problems[0]
    # Linux trusts the bitmap, accepts it again, gets PAGE_ALREADY_ACCEPTED and panics.
    linux = Linux(td.tdx, h, LinuxConfig(prewmark_mm_init_calls=0, prewmark_initcall_calls=0))
    linux.boot()
    with pytest.raises(GuestCrash) as exc:
        linux.alloc(12 * GiB)
    assert exc.value.kind == "panic" and "PAGE_ALREADY_ACCEPTED" in str(exc.value)
    assert exc.value.gpa == 8 * GiB
    assert td.tdx.incidents[-1].kind == "already-accepted"


def test_check_catches_ram_neither_accepted_nor_covered():
    td, sec = booted(16 * GiB)
    h = stub_handoff(td, sec)
    h.table.mark(10 * GiB, 10 * GiB + 4 * MiB, False)  # a stub that forgot two units
    chk = check_handoff(td.tdx, h)
    assert any("neither accepted nor marked" in p and f"{10 * GiB:#x}" in p for p in chk.problems)
    # Linux believes it accepted and hands it out: the first write terminates the TD.
    linux = Linux(td.tdx, h, LinuxConfig(prewmark_mm_init_calls=0, prewmark_initcall_calls=0))
    linux.boot()
    with pytest.raises(TdTerminated) as exc:
        linux.alloc(12 * GiB)
    assert exc.value.termination.gpa == 10 * GiB
    assert "pending" in exc.value.termination.reason or "never mapped" in exc.value.termination.reason


def test_kernel_without_support_loses_type15_memory():
    td, sec = booted(64 * GiB)
    h = stub_handoff(td, sec, kernel_supports_unaccepted=False)
    chk = check_handoff(td.tdx, h)
    assert chk.ok and h.table is None
    assert chk.lost_bytes == chk.would_lose_without_support_bytes == 62 * GiB
    assert all(e.end <= 4 * GiB for e in h.e820)
    assert "lost" in h.notes[0]
    # A firmware that accepts everything at ExitBootServices leaves nothing to lose.
    td, sec = booted(8 * GiB)
    h = stub_handoff(td, sec, kernel_supports_unaccepted=False, accept_all_at_exit=True)
    chk = check_handoff(td.tdx, h)
    assert chk.ok and chk.lost_bytes == 0 and h.unaccepted_descriptors == []
    assert td.tdx.accepted_by_actor["exit-accept-all"] == 6 * GiB


# ----------------------------------------------------------------------------- 67000M: 0862438c9048


def unmapped_tail(ram: int) -> tuple[int, int, int]:
    """(table size, bytes of it reserved by 6.12's reserve_unaccepted, bytes beyond) for a q35 TD above 2.75 GiB,
    its table 0x18 into a page."""
    bitmap = -(-(ram - 2 * GiB) // (2 * MiB * 8))
    size = 24 + bitmap
    address = 0x7D624000 + EDK2_POOL_HEAD_BYTES  # the reporter's table address
    start, end = reserve_unaccepted_range(address, size)
    assert reserve_unaccepted_range(address, size, fixed=True)[1] >= address + size
    reserved = end - address  # from the table's start to the end of the reservation
    return size, reserved, max(0, size - reserved)


@pytest.mark.parametrize(
    "ram_mib, crashes",
    [(67000, True), (66900, True), (67 * 1024, False), (68608, False), (6960, False), (33960, False)],
)
def test_67000m_table_reservation(ram_mib, crashes):
    """LKML/linux-efi 2026-02-12, Moritz Sanft, "[BUG] Fault during memory acceptance for TDX VMs with certain
    memory sizes": -m 66690M, 66900M, 67000M crash in accept_memory from the first memblock allocation; 67G,
    68608M, 6960M, 33960M boot. Fixed by 0862438c9048 "efi: Fix reservation of unaccepted memory table": 6.12's
    reserve_unaccepted reserves (and maps) PAGE_ALIGN(sizeof(table) + size) from the table's page, not up to
    PAGE_ALIGN(its end), and the table starts 0x18 into the page (edk2's pool header; the oops shows the table at
    ...624018 and CR2 ...625008). 67000M: 64952 MiB above 4 GiB -> 32476 units -> 4060 bitmap bytes, table 4084
    bytes, 4096 - 0x18 = 4072 of them in the reserved page: the last 12 are not mapped. 66690M (4041 bitmap bytes,
    4065-byte table) fits in the page by this arithmetic; its reported crash is not explained by it."""
    ram = ram_mib * MiB
    size, reserved, beyond = unmapped_tail(ram)
    td, sec = booted(ram, vcpus=1)
    h = stub_handoff(td, sec)
    assert h.table.encoded_size == size
    linux = Linux(td.tdx, h)
    if crashes:
        assert beyond > 0
        with pytest.raises(GuestCrash) as exc:
            linux.boot()
        assert exc.value.kind == "oops" and "page fault" in str(exc.value)
        page = h.table_address - EDK2_POOL_HEAD_BYTES
        if ram_mib == 67000:
            assert (size, reserved, beyond) == (4084, 4072, 12)
            assert exc.value.gpa == page + 0x1008  # as CR2 ...625008 for a table at ...624018
        # With the fix the whole table is reserved and mapped.
        td, sec = booted(ram, vcpus=1)
        h = stub_handoff(td, sec)
        Linux(td.tdx, h, LinuxConfig(table_reservation_fix=True)).boot()
    else:
        assert beyond == 0
        linux.boot()


def test_pending_pages_state_after_stub():
    td, sec = booted(8 * GiB, policy="257M")
    stub_handoff(td, sec)
    assert td.tdx.pages.get(257 * MiB).state == PageState.ACCEPTED
    assert td.tdx.pages.get(258 * MiB).state == PageState.NOT_PRESENT


@pytest.mark.parametrize(
    ("profile", "tdcalls", "accepted_2m", "accepted_4k", "mismatches"),
    [("kvm-2m", 257, 1, 256, 0), ("kvm-4k", 769, 0, 768, 1)],
)
def test_stub_accepts_with_linux_sequence(profile, tdcalls, accepted_2m, accepted_4k, mismatches):
    """tdx_accept_memory (tdx-shared.c, 6.12) on the stub's [6 GiB, 6 GiB + 3 MiB): 1G is not tried (less than 1 GiB
    left), 2M at the aligned start, 4K for the rest; on a 4K-mapping host the 2M TDCALL fails (PAGE_SIZE_MISMATCH)
    and that 2 MiB goes in 4K steps."""
    td, _ = booted(8 * GiB, profile=profile)
    resources = [Resource(0, 2 * GiB), Resource(6 * GiB, 3 * MiB, ResourceType.MEMORY_UNACCEPTED)]
    h = run_stub(DxeCore(resources, tdx=td.tdx), StubConfig()).handoff
    st = h.stub_stats
    assert (st.accepted_2m, st.accepted_4k, st.mismatches) == (accepted_2m, accepted_4k, mismatches)
    assert st.tdcalls == tdcalls
