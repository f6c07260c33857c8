"""Guest memory handed out as views: same bytes as read, access checked per range, memmove semantics."""

from __future__ import annotations

import pytest

from lazyaccept.cpu.unicorn.backend import UnicornBackend
from lazyaccept.tdx.memory import GuestMemory, SparseBacking, is_zero
from lazyaccept.tdx.module import TdTerminated, TdxModule
from lazyaccept.units import MiB


def test_is_zero_finds_a_byte_anywhere_without_copying() -> None:
    assert is_zero(b"") and is_zero(bytes(3 * MiB + 5)) and is_zero(memoryview(bytearray(70)))
    data = bytearray(3 * MiB + 5)
    data[-1] = 1
    assert not is_zero(data) and not is_zero(memoryview(data)[1:])


def _memory() -> GuestMemory:
    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 16 * MiB)
    tdx.accept_range(0, 8 * MiB)
    return GuestMemory(tdx, SparseBacking())


def test_views_equal_read_and_copy_is_memmove() -> None:
    mem = _memory()
    pattern = bytes(range(256)) * (12 * 1024)  # 3 MiB, across 2 MiB chunks
    mem.write(0x1234, pattern, actor="t")
    assert b"".join(bytes(v) for v in mem.views(0x1000, len(pattern) + 0x1000, actor="t")) == mem.read(
        0x1000, len(pattern) + 0x1000, actor="t"
    )
    mem.copy(4 * MiB, 0x1234, len(pattern), actor="t", chunk=1 * MiB)
    assert mem.read(4 * MiB, len(pattern), actor="t") == pattern
    mem.copy(0x1234 + 100, 0x1234, len(pattern), actor="t")  # overlapping: memmove
    assert mem.read(0x1234 + 100, len(pattern), actor="t") == pattern


def test_views_check_the_whole_range_before_handing_out_a_byte() -> None:
    mem = _memory()
    with pytest.raises(TdTerminated):
        mem.views(7 * MiB, 2 * MiB, actor="t")  # the last MiB is pending


def test_unicorn_writes_from_read_only_views_and_reads_back_as_views() -> None:
    backend = UnicornBackend(client=None)  # type: ignore[arg-type]
    backend.map(0, 4 * MiB)
    data = bytes(range(256)) * 8192
    backend.write(0x10, memoryview(data)[1:])  # read-only, offset: no bytes() copy, same bytes
    backend.write(3 * MiB, bytearray(b"xyz"))
    assert backend.read(0x10, len(data) - 1) == data[1:] and backend.read(3 * MiB, 3) == b"xyz"
    assert b"".join(bytes(v) for v in backend.views(0, 4 * MiB)) == backend.read(0, 4 * MiB)


def test_big_zero_writes_that_begin_in_a_mapped_page_touch_only_the_mapped_bytes() -> None:
    # An unaligned 1 GiB pool buffer is filled 64 MiB at a time: each chunk starts in the page the last one
    # mapped. Zeros there must still be written where memory is mapped, and map nothing new beyond it.
    from lazyaccept.cpu.memory import EmulatedBacking

    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 16 * MiB)
    tdx.accept_range(0, 16 * MiB)
    backing = EmulatedBacking(UnicornBackend(client=None), tdx)  # type: ignore[arg-type]
    mem = GuestMemory(tdx, backing)
    start = 2 * MiB - 0x18  # the tail of a mapped chunk, then untouched memory
    mem.write(start, b"\xff" * 0x18, actor="t")
    mem.write(0x1000, b"kept", actor="t")
    mapped = backing.mapped_bytes
    mem.write(start, bytes(4 * MiB), actor="t")
    assert backing.mapped_bytes == mapped
    assert mem.read(start, 4 * MiB, actor="t") == bytes(4 * MiB) and mem.read(0x1000, 4, actor="t") == b"kept"
    mem.write(start, b"\xee" * 0x18, actor="t")
    mem.copy(start, 8 * MiB, 4 * MiB, actor="t")  # guest to guest from untouched zeros: write_views
    assert backing.mapped_bytes == mapped and mem.read(start, 0x18, actor="t") == bytes(0x18)
    mem.write(start, b"\x01" + bytes(3 * MiB), actor="t")  # not all zero: mapped and written as before
    assert backing.mapped_bytes > mapped and mem.read(start, 3 * MiB + 1, actor="t") == b"\x01" + bytes(3 * MiB)


def test_a_zero_fill_not_page_aligned_keeps_the_other_bytes_of_its_pages() -> None:
    # SetMem(buffer, size, 0) of a pool buffer (systemd-stub does it): unmapping its partial pages would zero
    # their other bytes too (and the KVM backend cannot unmap part of a page at all).
    from lazyaccept.cpu.memory import EmulatedBacking

    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 16 * MiB)
    tdx.accept_range(0, 16 * MiB)
    backing = EmulatedBacking(UnicornBackend(client=None), tdx)  # type: ignore[arg-type]
    mem = GuestMemory(tdx, backing)
    mem.write(0x3000, b"\xaa" * 0x5000, actor="t")
    mem.fill(0x3018, 0x20, 0, actor="t")  # inside one page
    mem.fill(0x4ff0, 0x2020, 0, actor="t")  # a page's tail, a whole page, the next page's head
    want = bytearray(b"\xaa" * 0x5000)
    want[0x18:0x38] = bytes(0x20)
    want[0x1FF0:0x4010] = bytes(0x2020)
    assert mem.read(0x3000, 0x5000, actor="t") == want


def test_fill_with_zeros_of_an_unaligned_range_keeps_its_edge_pages_and_their_bytes() -> None:
    # SetMem(buffer, size, 0) of a pool buffer (systemd-boot does it): the pages it only partly covers stay mapped
    # with their other bytes; whole pages inside are dropped (they read as zeros).
    from lazyaccept.cpu.memory import EmulatedBacking

    tdx = TdxModule("kvm-2m", num_vcpus=1, gpa_width=48)
    tdx.add_ram(0, 16 * MiB)
    tdx.accept_range(0, 16 * MiB)
    backing = EmulatedBacking(UnicornBackend(client=None), tdx)  # type: ignore[arg-type]
    mem = GuestMemory(tdx, backing)
    mem.write(0x1000, b"\xaa" * 0x4000, actor="t")
    mem.fill(0x1018, 0x3000, 0, actor="t")  # from inside the first page to inside the fourth
    assert mem.read(0x1000, 0x18, actor="t") == b"\xaa" * 0x18
    assert mem.read(0x1018, 0x3000, actor="t") == bytes(0x3000)
    assert mem.read(0x4018, 0xFE8, actor="t") == b"\xaa" * 0xFE8
    assert backing.mapped.all_equal(0x1000, 0x2000, bool) and backing.mapped.all_equal(0x4000, 0x5000, bool)
    assert not backing.mapped.all_equal(0x2000, 0x4000, bool)  # the whole pages inside were unmapped
    mem.fill(0x1008, 0x8, 0, actor="t")  # within one page
    assert mem.read(0x1000, 0x18, actor="t") == b"\xaa" * 8 + bytes(8) + b"\xaa" * 8
